package topics

import (
	"errors"
	"hash/maphash"
	"strconv"
	"sync"

	"github.com/gobwas/ws"

	"github.com/surgepush/surge/conn"
)

// Errors returned by the registry.
var (
	ErrTopicName = errors.New("topics: invalid topic name: 1-128 characters of A-Z a-z 0-9 . _ - : / @")
)

// MaxTopicLen is the longest accepted topic name.
const MaxTopicLen = 128

// Subscriber receives frames. Send must not block and must not retain a
// reference it may modify: frame is shared by every subscriber.
type Subscriber interface {
	Send(frame []byte) bool
}

// ValidName reports whether name is an acceptable topic name.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > MaxTopicLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.' || c == '_' || c == '-' || c == ':' || c == '/' || c == '@':
		default:
			return false
		}
	}
	return true
}

const numShards = 64

// Registry maps topic names to topics. The zero value is not usable; use New.
type Registry struct {
	seed   maphash.Seed
	shards [numShards]shard
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*Topic
}

// Topic is one named stream with its subscribers and sequence counter.
type Topic struct {
	name string
	mu   sync.Mutex
	seq  uint64
	subs map[Subscriber]struct{}
}

// Name returns the topic's name.
func (t *Topic) Name() string { return t.name }

// New returns an empty registry.
func New() *Registry {
	r := &Registry{seed: maphash.MakeSeed()}
	for i := range r.shards {
		r.shards[i].m = make(map[string]*Topic)
	}
	return r
}

func (r *Registry) shard(name string) *shard {
	return &r.shards[maphash.String(r.seed, name)%numShards]
}

// Subscribe adds s to the topic name, creating it on first use.
func (r *Registry) Subscribe(name string, s Subscriber) (*Topic, error) {
	if !ValidName(name) {
		return nil, ErrTopicName
	}
	sh := r.shard(name)
	for {
		sh.mu.Lock()
		t := sh.m[name]
		if t == nil {
			t = &Topic{name: name, subs: make(map[Subscriber]struct{})}
			sh.m[name] = t
		}
		sh.mu.Unlock()
		t.mu.Lock()
		if t.subs == nil { // reclaimed between the two locks
			t.mu.Unlock()
			continue
		}
		t.subs[s] = struct{}{}
		t.mu.Unlock()
		return t, nil
	}
}

// Unsubscribe removes s from t; a topic left without subscribers is reclaimed.
func (r *Registry) Unsubscribe(t *Topic, s Subscriber) {
	t.mu.Lock()
	delete(t.subs, s)
	empty := len(t.subs) == 0
	t.mu.Unlock()
	if !empty {
		return
	}
	sh := r.shard(t.name)
	sh.mu.Lock()
	t.mu.Lock()
	if len(t.subs) == 0 && sh.m[t.name] == t {
		delete(sh.m, t.name)
		t.subs = nil
	}
	t.mu.Unlock()
	sh.mu.Unlock()
}

// Publish assigns the next sequence number of topic name and sends data (a
// JSON value) to every subscriber as one text frame
// {"op":"message","topic":…,"seq":…,"data":…}, encoded once.
// It returns the sequence number and the number of subscribers reached.
func (r *Registry) Publish(name string, data []byte) (seq uint64, delivered int, err error) {
	if !ValidName(name) {
		return 0, 0, ErrTopicName
	}
	sh := r.shard(name)
	sh.mu.Lock()
	t := sh.m[name]
	if t == nil {
		t = &Topic{name: name, subs: make(map[Subscriber]struct{})}
		sh.m[name] = t
	}
	sh.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	frame := EncodeMessage(name, t.seq, data)
	for s := range t.subs {
		if s.Send(frame) {
			delivered++
		}
	}
	return t.seq, delivered, nil
}

// Count returns the number of topics and subscriptions.
func (r *Registry) Count() (topics, subscriptions int) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		for _, t := range sh.m {
			topics++
			t.mu.Lock()
			subscriptions += len(t.subs)
			t.mu.Unlock()
		}
		sh.mu.RUnlock()
	}
	return topics, subscriptions
}

// EncodeMessage builds the delivery frame for one message: a complete text
// frame whose payload is {"op":"message","topic":name,"seq":seq,"data":data}.
// name must be valid (no JSON escaping needed) and data valid JSON.
func EncodeMessage(name string, seq uint64, data []byte) []byte {
	n := len(`{"op":"message","topic":"","seq":,"data":}`) + len(name) + 20 + len(data)
	p := make([]byte, 0, conn.HeaderSize(n)+n)
	p = conn.AppendHeader(p, ws.OpText, true, false, 0) // placeholder, fixed below
	hdr := len(p)
	p = append(p, `{"op":"message","topic":"`...)
	p = append(p, name...)
	p = append(p, `","seq":`...)
	p = strconv.AppendUint(p, seq, 10)
	p = append(p, `,"data":`...)
	p = append(p, data...)
	p = append(p, '}')
	payload := len(p) - hdr
	need := conn.HeaderSize(payload)
	if need != hdr {
		p = append(p, make([]byte, need-hdr)...)
		copy(p[need:], p[hdr:hdr+payload])
	}
	conn.AppendHeader(p[:0], ws.OpText, true, false, payload)
	return p
}
