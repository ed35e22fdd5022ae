//go:build linux

package loadtest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

const (
	haveEpoll         = true
	defaultClientLoop = ClientLoopEpoll
)

// errWouldBlock: a write to an event-loop socket found its send buffer
// full. The client only writes control frames and the odd subscribe op, so
// this means the server stopped reading; the connection is failed instead
// of queueing.
var errWouldBlock = errors.New("loadtest: socket send buffer full")

// eventLoops is a few epoll event loops that read the subscriber side of a
// run's connections. add may be called from any goroutine; stop once, after
// every connection has ended.
type eventLoops struct {
	loops []*eventLoop
}

// eventLoop is one epoll instance and the goroutine that waits on it.
type eventLoop struct {
	epfd   int
	ep     *os.File // epfd, as Go's netpoller waits for it
	wakefd int      // eventfd: written by stop
	done   chan struct{}
	buf    []byte // the read buffer every connection of the loop shares

	// afterRead, when set (tests), is called on the loop goroutine after
	// each read of a connection and the parsing of its bytes.
	afterRead func()

	mu    sync.Mutex // guards conns
	conns map[int32]*loopConn
}

// newEventLoops starts n event loops.
func newEventLoops(n int) (*eventLoops, error) { return newEventLoopsHooked(n, nil) }

// newEventLoopsHooked is newEventLoops with an afterRead hook (tests).
func newEventLoopsHooked(n int, afterRead func()) (*eventLoops, error) {
	ls := &eventLoops{}
	for range max(n, 1) {
		l, err := newEventLoop()
		if err != nil {
			for _, l := range ls.loops {
				_ = l.ep.Close()
				_ = unix.Close(l.wakefd)
			}
			return nil, err
		}
		l.afterRead = afterRead
		ls.loops = append(ls.loops, l)
	}
	for _, l := range ls.loops {
		go l.run()
	}
	return ls, nil
}

func newEventLoop() (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// Non-blocking, so that os.NewFile hands it to the netpoller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	return &eventLoop{
		epfd:   epfd,
		ep:     os.NewFile(uintptr(epfd), "epoll"),
		wakefd: wakefd,
		done:   make(chan struct{}),
		buf:    make([]byte, loopReadBuffer),
		conns:  map[int32]*loopConn{},
	}, nil
}

// stop ends every loop and waits for it. A connection still open is
// closed and ended with net.ErrClosed.
func (ls *eventLoops) stop() {
	for _, l := range ls.loops {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1) // eventfd adds a host-endian uint64
		_, _ = unix.Write(l.wakefd, one[:])
	}
	for _, l := range ls.loops {
		<-l.done
		_ = l.ep.Close()
		_ = unix.Close(l.wakefd)
	}
	ls.loops = nil
}

// takeConn moves a dialed connection out of Go's netpoller: it duplicates
// the socket's descriptor (close-on-exec, so --procs children do not
// inherit it), closes nc and returns a clientConn that owns the duplicate,
// together with the bytes the handshake read past the 101 response (br:
// gobwas's reader, nil when there were none), which the caller must feed
// first. On error nc is closed too.
func takeConn(nc net.Conn, br *bufio.Reader) (*clientConn, []byte, error) {
	var pending []byte
	if br != nil {
		pending = make([]byte, br.Buffered())
		n, _ := io.ReadFull(br, pending)
		pending = pending[:n]
		ws.PutReader(br)
	}
	defer nc.Close()
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, nil, errors.New("loadtest: connection has no socket descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, nil, err
	}
	if derr != nil {
		return nil, nil, os.NewSyscallError("fcntl F_DUPFD_CLOEXEC", derr)
	}
	// O_NONBLOCK belongs to the open file, which the duplicate shares with
	// nc (Go set it); set it anyway, for when it stops being so.
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	// Closing nc closes only Go's descriptor: the socket stays open (and
	// without a FIN) as long as fd does.
	return &clientConn{fd: fd}, pending, nil
}

// add hands connection c (from takeConn) to loop i mod len(loops): first
// pending, the bytes the handshake read past the 101 response, are parsed
// on the calling goroutine, then the socket is registered. From then on
// only the loop touches lc (but for c's writes); every outcome, including
// a failure to register, ends in exactly one h.onEnd.
func (ls *eventLoops) add(i int, c *clientConn, h loopHandler, opts *loopOpts, rsv1 bool, pending []byte) {
	l := ls.loops[i%len(ls.loops)]
	lc := &loopConn{c: c, h: h, opts: opts, rsv1: rsv1}
	if len(pending) > 0 {
		if done, code, err := lc.feed(pending, time.Now()); done {
			l.finish(lc, code, err, false)
			return
		}
	}
	fd := int32(c.fd)
	l.mu.Lock()
	l.conns[fd] = lc
	l.mu.Unlock()
	// Level-triggered: a socket with unread bytes is reported again, so
	// one read per readiness leaves nothing behind.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: fd}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		l.mu.Lock()
		delete(l.conns, fd)
		l.mu.Unlock()
		l.finish(lc, 0, os.NewSyscallError("epoll_ctl", err), false)
	}
}

// run waits for readiness and reads until stop.
//
// The loop goroutine does not block in epoll_wait: the epoll descriptor is
// itself registered with Go's netpoller (l.ep), and the loop parks there
// until the epoll set has something ready, then drains it with
// non-blocking epoll_waits. A thread blocked in a system call would lose
// its P and have to win one back on every wake-up; parked, the goroutine
// is woken by the scheduler's own netpoll, which also lets readiness pile
// up into bigger batches while the CPUs are busy.
func (l *eventLoop) run() {
	defer close(l.done)
	events := make([]unix.EpollEvent, 256)
	ready := make([]*loopConn, 0, len(events))
	var werr error
	stop := false
	rc, err := l.ep.SyscallConn()
	if err == nil {
		err = rc.Read(func(uintptr) bool {
			for !stop {
				n, err := unix.EpollWait(l.epfd, events, 0)
				switch {
				case err == unix.EINTR:
					continue
				case err != nil:
					werr = os.NewSyscallError("epoll_wait", err)
					return true
				case n == 0:
					return false // park until the set has something ready
				}
				ready = ready[:0]
				l.mu.Lock()
				for _, ev := range events[:n] {
					if int(ev.Fd) == l.wakefd {
						stop = true
					} else if lc := l.conns[ev.Fd]; lc != nil {
						ready = append(ready, lc)
					}
				}
				l.mu.Unlock()
				for _, lc := range ready {
					l.read(lc)
				}
				clear(ready)
			}
			return true
		})
	}
	if werr == nil {
		werr = err
	}
	if werr == nil {
		werr = net.ErrClosed
	}
	l.closeAll(werr)
}

// read does one read from lc's socket into the loop's buffer and parses
// what came.
func (l *eventLoop) read(lc *loopConn) {
	n, err := unix.Read(lc.c.fd, l.buf)
	now := time.Now() // the delivery time of every message in this read
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		// Spurious readiness: level-triggered, so it comes back.
	case err != nil:
		l.finish(lc, 0, os.NewSyscallError("read", err), true)
	case n == 0:
		l.finish(lc, 0, io.EOF, true)
	default:
		if done, code, err := lc.feed(l.buf[:n], now); done {
			l.finish(lc, code, err, true)
		}
	}
	if l.afterRead != nil {
		l.afterRead()
	}
}

// finish ends lc as the goroutine-per-connection readers do: answers the
// server's close frame with the same code, or fails the connection with
// code when it is a protocol error (none once the client has sent its own
// close), then closes the socket and calls onEnd. registered: lc is in
// the loop's epoll set and map.
func (l *eventLoop) finish(lc *loopConn, code ws.StatusCode, err error, registered bool) {
	c := lc.c
	if !c.closing.Load() && (err == nil || code != 0) {
		_ = c.writeClose(code)
	}
	c.wmu.Lock()
	fd := c.fd
	c.fd = -1
	c.wmu.Unlock()
	if registered {
		_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		l.mu.Lock()
		delete(l.conns, int32(fd))
		l.mu.Unlock()
	}
	_ = unix.Close(fd)
	lc.release()
	lc.h.onEnd(code, err)
}

// closeAll ends every connection still on the loop with err.
func (l *eventLoop) closeAll(err error) {
	l.mu.Lock()
	left := make([]*loopConn, 0, len(l.conns))
	for _, lc := range l.conns {
		left = append(left, lc)
	}
	l.mu.Unlock()
	for _, lc := range left {
		l.finish(lc, 0, err, true)
	}
}

// writeFd writes bufs to the non-blocking socket fd in one system call.
// A write that would block, or that only partly succeeds, is an error
// (errWouldBlock): see there.
func writeFd(fd int, bufs ...[]byte) error {
	if fd < 0 {
		return net.ErrClosed
	}
	want := 0
	for _, b := range bufs {
		want += len(b)
	}
	for {
		var n int
		var err error
		if len(bufs) == 1 {
			n, err = unix.Write(fd, bufs[0])
		} else {
			n, err = unix.Writev(fd, bufs)
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return errWouldBlock
		case err != nil:
			return os.NewSyscallError("write", err)
		case n < want:
			return errWouldBlock
		}
		return nil
	}
}

// shutdownFd shuts socket fd down in both directions without closing it.
func shutdownFd(fd int) error {
	return os.NewSyscallError("shutdown", unix.Shutdown(fd, unix.SHUT_RDWR))
}
