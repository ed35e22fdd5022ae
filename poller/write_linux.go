//go:build linux

package poller

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// writev writes bufs to the non-blocking fd. A full socket returns the bytes
// written so far and a nil error.
func writev(fd int, bufs [][]byte) (int, error) {
	for {
		var (
			n   int
			err error
		)
		if len(bufs) == 1 {
			n, err = unix.Write(fd, bufs[0])
		} else {
			if len(bufs) > 64 {
				bufs = bufs[:64]
			}
			n, err = unix.Writev(fd, bufs)
		}
		switch err {
		case nil:
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		default:
			return 0, os.NewSyscallError("writev", err)
		}
	}
}

func shutdownWrite(fd int) error {
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return os.NewSyscallError("shutdown", err)
	}
	return nil
}

// writePoller is an epoll instance used only for write readiness of sockets
// whose send buffer filled up; netpoll's own loops keep reading them.
type writePoller struct {
	epfd   int
	wakefd int
	submit func(func())

	mu    sync.Mutex
	conns map[int32]*Conn
}

func newWritePoller(submit func(func())) (*writePoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	return &writePoller{epfd: epfd, wakefd: wakefd, submit: submit, conns: make(map[int32]*Conn)}, nil
}

// arm asks for one EPOLLOUT notification for c.
func (w *writePoller) arm(c *Conn) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conns == nil {
		return errClosed
	}
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT, Fd: c.fd}
	op := unix.EPOLL_CTL_MOD
	if !c.wreg.Load() {
		op = unix.EPOLL_CTL_ADD
	}
	if err := unix.EpollCtl(w.epfd, op, int(c.fd), &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	c.wreg.Store(true)
	w.conns[c.fd] = c
	return nil
}

// remove deregisters c before its fd is closed.
func (w *writePoller) remove(c *Conn) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !c.wreg.Load() || w.conns == nil {
		return
	}
	c.wreg.Store(false)
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(c.fd), nil)
	if w.conns[c.fd] == c {
		delete(w.conns, c.fd)
	}
}

func (w *writePoller) run() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			if fd == int32(w.wakefd) {
				w.mu.Lock()
				unix.Close(w.epfd)
				unix.Close(w.wakefd)
				w.mu.Unlock()
				return
			}
			w.mu.Lock()
			c := w.conns[fd]
			w.mu.Unlock()
			if c != nil {
				w.submit(c.ev.OnWritable)
			}
		}
	}
}

// close stops run; it closes the epoll fd on its way out.
func (w *writePoller) close() {
	w.mu.Lock()
	if w.conns == nil {
		w.mu.Unlock()
		return
	}
	w.conns = nil
	w.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(w.wakefd, one[:])
}
