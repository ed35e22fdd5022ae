package poller

import (
	"reflect"
	"sync"
	"unsafe"

	"github.com/cloudwego/netpoll"
)

// netpoll gives every connection buffers for APIs Surge does not use: an
// iovec "barrier" of ~1.4 KiB for its own output path (Surge writes with
// writev on the fd, see write_linux.go) and two notification channels for
// blocking reads and flushes (Surge only reads bytes already buffered and
// never calls Flush). Together they are over half of netpoll's idle cost per
// connection. trimmer drops them right after accept, before the connection
// is registered with a poller:
//
//   - outputBarrier = nil: only connection.flush uses it, reached from Flush
//     and Write, which Surge never calls; closeBuffer's barrierPool.Put(nil)
//     is a no-op.
//   - readTrigger, writeTrigger = nil: they are only sent to in
//     select-with-default (a nil channel takes the default) and received
//     from in waitRead/waitFlush, which run only when a read asks for more
//     bytes than are buffered or a flush blocks: never in Surge.
//
// The field layout is found by reflection on the concrete type, once; if
// netpoll's struct ever changes shape the trim is skipped (and a test in
// this package fails), never applied blindly.
type trimmer struct {
	once    sync.Once
	ok      bool
	offsets [3]uintptr
}

func (t *trimmer) trim(nc netpoll.Connection) {
	t.once.Do(func() { t.ok = t.detect(nc) })
	if !t.ok {
		return
	}
	base := unsafe.Pointer(reflect.ValueOf(nc).Pointer())
	for _, off := range t.offsets {
		*(*unsafe.Pointer)(unsafe.Add(base, off)) = nil
	}
}

func (t *trimmer) detect(nc netpoll.Connection) bool {
	v := reflect.ValueOf(nc)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return false
	}
	typ := v.Elem().Type()
	if typ.PkgPath() != "github.com/cloudwego/netpoll" || typ.Name() != "connection" {
		return false
	}
	want := [3]struct {
		name string
		kind reflect.Kind
	}{{"outputBarrier", reflect.Pointer}, {"readTrigger", reflect.Chan}, {"writeTrigger", reflect.Chan}}
	for i, w := range want {
		f, ok := typ.FieldByName(w.name)
		if !ok || f.Type.Kind() != w.kind || len(f.Index) != 1 || f.Type.Size() != unsafe.Sizeof(uintptr(0)) {
			return false
		}
		t.offsets[i] = f.Offset
	}
	return true
}
