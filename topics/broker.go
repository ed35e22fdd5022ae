package topics

import (
	"context"
	"errors"
	"time"
)

// A Broker carries publications between Surge nodes, so that a message
// published on any node reaches the subscribers of every node, once each,
// in order, with one seq per topic for the whole cluster.
//
// A Registry without a Broker (the default) assigns seq itself: that is the
// single-node, in-memory behaviour, and MemoryBroker implements the same
// contract behind this interface (for tests, and for several registries in
// one process). NATSBroker shares topics between processes through NATS
// JetStream.
//
// The registry calls Subscribe when a topic gets its first local subscriber
// and Unsubscribe when the last one leaves, never both at once for one
// topic, and never while it holds a topic lock; the broker then calls the
// handler's Deliver for every message of the subscribed topics, including
// the ones this node published. Implementations are safe for concurrent
// use.
type Broker interface {
	// Start binds the broker to h, which receives the messages of every
	// subscribed topic: in seq order per topic, one call at a time per
	// topic. Registry.New calls it.
	Start(h BrokerHandler) error
	// Publish assigns the next seq of p.Topic and sends the message to every
	// node subscribed to it. It returns the seq and epoch assigned; the
	// local delivery happens through Deliver like everyone else's.
	Publish(ctx context.Context, p Publication) (Position, error)
	// Subscribe starts delivery of topic to this node and returns the
	// topic's current position: the next message delivered is Seq+1 (or
	// the first of a new epoch). An error wrapping ErrBrokerUnavailable
	// means the interest is registered but the position is unknown (the
	// broker is unreachable; delivery resumes when it is back); any other
	// error means nothing was registered.
	Subscribe(ctx context.Context, topic string) (Position, error)
	// Unsubscribe stops delivery of topic to this node.
	Unsubscribe(topic string)
	// History returns the retained messages of topic with seq > since, oldest
	// first, at most limit (the newest ones), in the topic's current epoch.
	History(ctx context.Context, topic string, since uint64, limit int) ([]Delivery, Position, error)
	// Close stops delivery and releases the broker's resources.
	Close() error
}

// BrokerHandler receives what a Broker delivers. *Registry implements it.
type BrokerHandler interface {
	// Deliver hands one message to this node. d.Data is valid only until
	// Deliver returns.
	Deliver(d Delivery)
}

// BrokerHealth is implemented by brokers that can be unreachable.
type BrokerHealth interface {
	// Healthy returns nil while messages flow between nodes, or why not.
	Healthy() error
}

// BrokerStatser is implemented by brokers that count what they do.
type BrokerStatser interface {
	BrokerStats() BrokerStats
}

// BrokerStats are a broker's totals.
type BrokerStats struct {
	Connected  bool   `json:"connected"`
	Published  int64  `json:"published"`  // messages this node put into the broker
	Received   int64  `json:"received"`   // messages delivered to this node (including repairs)
	Duplicates int64  `json:"duplicates"` // messages received twice and dropped
	Repaired   int64  `json:"repaired"`   // messages fetched from the stream to fill a gap
	Lost       int64  `json:"lost"`       // messages of a gap no longer retained by the stream
	Conflicts  int64  `json:"conflicts"`  // publishes retried because another node published first
	Reconnects int64  `json:"reconnects"` // connections re-established
	Topics     int    `json:"topics"`     // topics this node is subscribed to
	Error      string `json:"error,omitempty"`
}

// Position is where a topic stands: its last seq, within its epoch.
type Position struct {
	Seq uint64
	// Epoch names the topic's lifetime; seq restarts at 1 in a new epoch.
	// Empty: the topic has no messages at the broker.
	Epoch string
}

// Delivery is one message as a broker delivers it.
type Delivery struct {
	Topic  string
	Seq    uint64
	Epoch  string
	Data   []byte
	Binary bool
	Key    string
	Time   time.Time // when it was published; zero if unknown
}

// Broker errors.
var (
	// ErrBrokerUnavailable: the broker cannot be reached; publishing fails
	// fast rather than assigning a seq the other nodes do not know.
	ErrBrokerUnavailable = errors.New("topics: broker unavailable")
	// ErrBrokerConflict: a publish lost the race for the next seq too often.
	ErrBrokerConflict = errors.New("topics: broker: too many concurrent publishers on one topic, try again")
	// ErrBrokerClosed: the broker was closed.
	ErrBrokerClosed = errors.New("topics: broker closed")
)

// A topic's state at the broker (Topic.bstate).
const (
	bNone   uint8 = iota // not subscribed at the broker
	bBusy                // a Subscribe or Unsubscribe is in flight; wait on bwait
	bActive              // subscribed: messages arrive through Deliver
)

// publishBroker hands p to the broker; the message comes back (to this node
// too) through Deliver.
func (r *Registry) publishBroker(p Publication) (Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.BrokerTimeout)
	defer cancel()
	pos, err := r.broker.Publish(ctx, p)
	if err != nil {
		return Result{}, err
	}
	r.Stats.Published.Add(1)
	return Result{Seq: pos.Seq}, nil
}

// Deliver implements BrokerHandler: it encodes the message once and fans it
// out to this node's subscribers, like Publish but with the broker's seq.
// A seq not above the topic's (in the same epoch) is a duplicate and
// dropped; a seq that skips ahead or a new epoch restarts the history ring,
// so that it never holds a gap.
func (r *Registry) Deliver(d Delivery) {
	if !ValidName(d.Topic) {
		return
	}
	t := r.lockTopic(d.Topic)
	defer t.mu.Unlock()
	if d.Epoch != "" && d.Epoch != t.epoch {
		t.epoch = d.Epoch
		t.hist.clear()
	} else if d.Seq <= t.seq {
		r.Stats.BrokerDuplicates.Add(1)
		return
	} else if d.Seq != t.seq+1 {
		t.hist.clear()
	}
	t.bdeliv++
	t.seq = d.Seq
	r.emitLocked(t, d.Data, d.Binary, d.Key)
	r.Stats.BrokerDelivered.Add(1)
}

// attachLocked makes sure this node is subscribed to t at the broker. It is
// called and returns with t.mu held, but releases it while the broker works,
// so it returns the topic live now (the same one: a topic being attached is
// never reclaimed). On a hard broker failure the topic stays local (bNone).
func (r *Registry) attachLocked(t *Topic) *Topic {
	for {
		switch t.bstate {
		case bActive:
			return t
		case bBusy:
			ch, name := t.bwait, t.name
			t.mu.Unlock()
			<-ch
			t = r.lockTopic(name)
		default:
			ch := make(chan struct{})
			t.bstate, t.bwait, t.bdeliv = bBusy, ch, 0
			t.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.BrokerTimeout)
			pos, err := r.broker.Subscribe(ctx, t.name)
			cancel()
			t.mu.Lock()
			switch {
			case err == nil:
				t.bstate = bActive
				t.syncLocked(pos)
			case errors.Is(err, ErrBrokerUnavailable):
				t.bstate = bActive // registered; the position arrives with the next message
			default:
				t.bstate = bNone
			}
			t.bwait = nil
			close(ch)
			return t
		}
	}
}

// syncLocked adopts the broker's position of t after a Subscribe, unless a
// delivery since the Subscribe began already moved t past it.
func (t *Topic) syncLocked(pos Position) {
	if t.bdeliv > 0 {
		return // Deliver ran after the broker took pos: t is at or beyond it
	}
	// An empty Epoch (nothing stored) stays empty until the first message
	// names the lifetime, so no client is told an epoch that will not last.
	if pos.Epoch != t.epoch || pos.Seq != t.seq {
		t.epoch, t.seq = pos.Epoch, pos.Seq
		t.hist.clear()
	}
}

// detachLocked unsubscribes t at the broker once it has no local
// subscriber. Called and returns with t.mu held; releases it meanwhile.
func (r *Registry) detachLocked(t *Topic) {
	if r.broker == nil || len(t.subs) > 0 || t.bstate != bActive {
		return
	}
	ch := make(chan struct{})
	t.bstate, t.bwait = bBusy, ch
	t.mu.Unlock()
	r.broker.Unsubscribe(t.name)
	t.mu.Lock()
	t.bstate, t.bwait = bNone, nil
	close(ch)
}

// recoverLocked fills t's history ring from the broker when a subscriber
// asks for messages after since that this node no longer (or never)
// retained, e.g. after reconnecting to another node. Called and returns with
// t.mu held (releases it during the fetch); returns the live topic.
func (r *Registry) recoverLocked(t *Topic, since uint64, epoch string) *Topic {
	size := t.rule.HistorySize
	if size <= 0 || since >= t.seq || epoch != "" && epoch != t.epoch {
		return t
	}
	t.hist.expire(r.now(), t.rule.HistoryTTL)
	if o := t.hist.oldest(); o != 0 && o <= since+1 {
		return t // the ring covers it
	}
	name := t.name
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.BrokerTimeout)
	ds, _, err := r.broker.History(ctx, name, since, size)
	cancel()
	t = r.attachLocked(r.lockTopic(name))
	if err != nil || len(ds) == 0 {
		return t
	}
	r.mergeHistoryLocked(t, ds)
	return t
}

// mergeHistoryLocked puts messages fetched from the broker in front of t's
// ring, keeping it free of gaps: only the contiguous run of t's epoch that
// ends right before the ring's oldest message (or at t.seq) is taken, less
// what is older than the history TTL.
func (r *Registry) mergeHistoryLocked(t *Topic, ds []Delivery) {
	first := t.hist.oldestOr(t.seq + 1)
	cand := make([]Delivery, 0, len(ds))
	for _, d := range ds {
		if d.Epoch == t.epoch && d.Seq > 0 && d.Seq < first {
			cand = append(cand, d)
		}
	}
	k, want := len(cand), first-1
	for k > 0 && cand[k-1].Seq == want {
		k--
		want--
	}
	now, wall := r.now(), time.Now()
	ttl := t.rule.HistoryTTL.Milliseconds()
	run := make([]entry, 0, len(cand)-k)
	for _, d := range cand[k:] {
		at := now
		if !d.Time.IsZero() {
			at = now - max(wall.Sub(d.Time).Milliseconds(), 0)
		}
		if ttl > 0 && now-at > ttl {
			run = run[:0] // too old; keep the run contiguous
			continue
		}
		run = append(run, entry{seq: d.Seq, msg: r.encode(t, d.Seq, d.Data, d.Binary, d.Key), at: at})
	}
	if len(run) == 0 {
		return
	}
	r.Stats.BrokerRecovered.Add(int64(len(run)))
	t.hist.each(func(e *entry) { run = append(run, *e) })
	t.hist.clear()
	for _, e := range run {
		t.hist.push(e.seq, e.msg, e.at)
	}
}

// clear empties the ring (keeping its slots).
func (r *ring) clear() {
	clear(r.buf)
	r.start, r.n = 0, 0
}

// oldestOr returns the oldest retained seq, or def when empty.
func (r *ring) oldestOr(def uint64) uint64 {
	if r.n == 0 {
		return def
	}
	return r.buf[r.start].seq
}
