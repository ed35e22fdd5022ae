package topics

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// MemoryConfig configures a MemoryBroker. The zero value keeps no history.
type MemoryConfig struct {
	// HistorySize is how many messages each topic retains for History.
	HistorySize int
	// HistoryTTL drops retained messages older than this (0: no age limit).
	HistoryTTL time.Duration
	// IdleTTL: a topic with no subscribed node and no publish for this long
	// is forgotten, seq and epoch included. Default 2 minutes, and never
	// less than HistoryTTL.
	IdleTTL time.Duration
}

// MemoryBroker is the in-process Broker: seq is assigned under one lock per
// topic and deliveries are synchronous, so Publish returns after every
// subscribed node's Deliver has returned. Several registries in one process
// share topics through brokers made with Peer; alone it behaves like a
// Registry without a broker.
type MemoryBroker struct {
	hub *memoryHub

	mu     sync.Mutex
	h      BrokerHandler
	topics map[string]struct{} // subscribed
	closed bool

	published, received atomic.Int64
}

var (
	_ Broker        = (*MemoryBroker)(nil)
	_ BrokerStatser = (*MemoryBroker)(nil)
)

type memoryHub struct {
	cfg MemoryConfig

	mu     sync.Mutex
	topics map[string]*memoryTopic
	ops    int // publishes and subscribes since the last sweep
}

type memoryTopic struct {
	mu    sync.Mutex // serialises seq assignment and delivery (the order)
	dead  bool       // swept; lookups retry
	seq   uint64
	epoch string
	hist  []Delivery // oldest first, at most HistorySize
	nodes []*MemoryBroker
	last  time.Time // last publish or unsubscribe
}

// NewMemoryBroker returns a broker with a hub of its own.
func NewMemoryBroker(cfg MemoryConfig) *MemoryBroker {
	cfg.HistorySize = min(max(cfg.HistorySize, 0), MaxHistory)
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = 2 * time.Minute
	}
	cfg.IdleTTL = max(cfg.IdleTTL, cfg.HistoryTTL)
	hub := &memoryHub{cfg: cfg, topics: make(map[string]*memoryTopic)}
	return &MemoryBroker{hub: hub, topics: make(map[string]struct{})}
}

// Peer returns another node on b's hub: what one publishes, the other's
// subscribers receive, with one seq per topic.
func (b *MemoryBroker) Peer() *MemoryBroker {
	return &MemoryBroker{hub: b.hub, topics: make(map[string]struct{})}
}

// Start implements Broker.
func (b *MemoryBroker) Start(h BrokerHandler) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrBrokerClosed
	}
	b.h = h
	return nil
}

// lock returns the live topic name, creating it if needed, with its mu held.
func (hub *memoryHub) lock(name string) *memoryTopic {
	for {
		hub.mu.Lock()
		t := hub.topics[name]
		if t == nil {
			t = &memoryTopic{epoch: strconv.FormatUint(rand.Uint64()>>16, 36), last: time.Now()}
			hub.topics[name] = t
		}
		if hub.ops++; hub.ops >= 1024 {
			hub.ops = 0
			hub.sweepLocked(time.Now())
		}
		hub.mu.Unlock()
		t.mu.Lock()
		if !t.dead {
			return t
		}
		t.mu.Unlock()
	}
}

// sweepLocked forgets idle topics. hub.mu must be held.
func (hub *memoryHub) sweepLocked(now time.Time) {
	for name, t := range hub.topics {
		if !t.mu.TryLock() {
			continue // busy, so not idle
		}
		if len(t.nodes) == 0 && now.Sub(t.last) > hub.cfg.IdleTTL {
			t.dead = true
			delete(hub.topics, name)
		}
		t.mu.Unlock()
	}
}

func (t *memoryTopic) expire(now time.Time, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	i := 0
	for i < len(t.hist) && now.Sub(t.hist[i].Time) > ttl {
		i++
	}
	if i > 0 {
		t.hist = slices.Delete(t.hist, 0, i)
	}
}

// Publish implements Broker: it delivers to every subscribed node before it
// returns.
func (b *MemoryBroker) Publish(_ context.Context, p Publication) (Position, error) {
	if !ValidName(p.Topic) {
		return Position{}, ErrTopicName
	}
	if b.isClosed() {
		return Position{}, ErrBrokerClosed
	}
	t := b.hub.lock(p.Topic)
	defer t.mu.Unlock()
	t.seq++
	now := time.Now()
	t.last = now
	d := Delivery{Topic: p.Topic, Seq: t.seq, Epoch: t.epoch, Data: p.Data, Binary: p.Binary, Key: p.Key, Time: now}
	if size := b.hub.cfg.HistorySize; size > 0 {
		kept := d
		kept.Data = slices.Clone(p.Data)
		if len(t.hist) >= size {
			t.hist = slices.Delete(t.hist, 0, len(t.hist)-size+1)
		}
		t.hist = append(t.hist, kept)
		t.expire(now, b.hub.cfg.HistoryTTL)
	}
	for _, n := range t.nodes {
		if h := n.handler(); h != nil {
			n.received.Add(1)
			h.Deliver(d)
		}
	}
	b.published.Add(1)
	return Position{Seq: t.seq, Epoch: t.epoch}, nil
}

// Subscribe implements Broker.
func (b *MemoryBroker) Subscribe(_ context.Context, topic string) (Position, error) {
	if !ValidName(topic) {
		return Position{}, ErrTopicName
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return Position{}, ErrBrokerClosed
	}
	_, dup := b.topics[topic]
	b.topics[topic] = struct{}{}
	b.mu.Unlock()
	t := b.hub.lock(topic)
	defer t.mu.Unlock()
	if !dup {
		t.nodes = append(t.nodes, b)
	}
	return Position{Seq: t.seq, Epoch: t.epoch}, nil
}

// Unsubscribe implements Broker.
func (b *MemoryBroker) Unsubscribe(topic string) {
	b.mu.Lock()
	_, ok := b.topics[topic]
	delete(b.topics, topic)
	b.mu.Unlock()
	if ok {
		b.hub.leave(topic, b)
	}
}

func (hub *memoryHub) leave(topic string, b *MemoryBroker) {
	t := hub.lock(topic)
	defer t.mu.Unlock()
	if i := slices.Index(t.nodes, b); i >= 0 {
		t.nodes = slices.Delete(t.nodes, i, i+1)
	}
	t.last = time.Now()
}

// History implements Broker.
func (b *MemoryBroker) History(_ context.Context, topic string, since uint64, limit int) ([]Delivery, Position, error) {
	if !ValidName(topic) {
		return nil, Position{}, ErrTopicName
	}
	if b.isClosed() {
		return nil, Position{}, ErrBrokerClosed
	}
	t := b.hub.lock(topic)
	defer t.mu.Unlock()
	t.expire(time.Now(), b.hub.cfg.HistoryTTL)
	var out []Delivery
	for _, d := range t.hist {
		if d.Seq > since {
			out = append(out, d)
		}
	}
	if limit >= 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, Position{Seq: t.seq, Epoch: t.epoch}, nil
}

// Close implements Broker: this node stops receiving; the hub and its
// other nodes carry on.
func (b *MemoryBroker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	names := make([]string, 0, len(b.topics))
	for name := range b.topics {
		names = append(names, name)
	}
	clear(b.topics)
	b.mu.Unlock()
	for _, name := range names {
		b.hub.leave(name, b)
	}
	return nil
}

// BrokerStats implements BrokerStatser.
func (b *MemoryBroker) BrokerStats() BrokerStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BrokerStats{Connected: !b.closed, Published: b.published.Load(), Received: b.received.Load(), Topics: len(b.topics)}
}

func (b *MemoryBroker) handler() BrokerHandler {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	return b.h
}

func (b *MemoryBroker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}
