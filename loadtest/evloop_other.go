//go:build !linux

package loadtest

import (
	"bufio"
	"errors"
	"net"
)

const (
	haveEpoll         = false
	defaultClientLoop = ClientLoopGoroutine
)

// errNoEpoll: event loops exist on Linux only.
var errNoEpoll = errors.New("loadtest: the epoll client loop needs Linux")

// eventLoops is never made off Linux; resolveClientLoop refuses "epoll".
type eventLoops struct{}

func newEventLoops(int) (*eventLoops, error) { return nil, errNoEpoll }

func (*eventLoops) stop() {}

func (*eventLoops) add(int, *clientConn, loopHandler, *loopOpts, bool, []byte) {}

func takeConn(nc net.Conn, _ *bufio.Reader) (*clientConn, []byte, error) {
	_ = nc.Close()
	return nil, nil, errNoEpoll
}

func writeFd(int, ...[]byte) error { return errNoEpoll }

func shutdownFd(int) error { return errNoEpoll }
