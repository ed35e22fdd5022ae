//go:build !linux

package poller

import "errors"

var errUnsupported = errors.New("poller: only Linux is supported")

func writev(int, [][]byte) (int, error) { return 0, errUnsupported }
func shutdownWrite(int) error           { return errUnsupported }

type writePoller struct{}

func newWritePoller(func(func())) (*writePoller, error) { return nil, errUnsupported }
func (*writePoller) arm(*Conn) error                    { return errUnsupported }
func (*writePoller) remove(*Conn)                       {}
func (*writePoller) run()                               {}
func (*writePoller) close()                             {}
