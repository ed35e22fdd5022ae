package topics

import (
	"hash/maphash"
	"sync"

	"github.com/gobwas/ws"

	"github.com/surgepush/surge/conn"
)

// Topic is one named stream: its subscribers, sequence counter and history.
type Topic struct {
	name string
	r    *Registry
	rule *Rule

	mu         sync.Mutex // serialises publish (seq order) and membership
	dead       bool       // reclaimed; lookups retry
	seq        uint64
	subs       []*Sub
	deflaters  int   // subscribers that negotiated permessage-deflate
	lastActive int64 // registry ms of the last publish or unsubscribe
	hist       ring
	rate       rate // publishes per second, decaying average
	epoch      string

	// With a Broker (see broker.go): bstate is bNone, bBusy or bActive;
	// bwait is closed when a bBusy state ends; bdeliv counts deliveries
	// since the last Subscribe at the broker began.
	bstate uint8
	bwait  chan struct{}
	bdeliv uint32

	// Publishes waiting for t.mu queue here (see Publish); whoever holds
	// t.mu next fans out every queued one together. dead is also set
	// under qmu, so nothing is queued on a reclaimed topic.
	qmu   sync.Mutex
	inbox []*pubReq
	spare []*pubReq       // the other inbox buffer; t.mu
	batch []*conn.Message // reused per batch; t.mu
	sent  []int           // reused per batch: sent[i] subscribers took i+1 messages; t.mu
}

// pubReq is one publish waiting in a topic's inbox. res and done are
// written under the topic lock by whichever publisher fans it out.
type pubReq struct {
	p    Publication
	res  Result
	done bool
}

// Sub is one subscription of one subscriber to one topic.
type Sub struct {
	s   Subscriber
	t   *Topic
	idx int // position in t.subs; -1 when removed
}

// Topic returns the subscription's topic.
func (s *Sub) Topic() *Topic { return s.t }

// Name returns the topic's name.
func (t *Topic) Name() string { return t.name }

func newTopic(r *Registry, name string) *Topic {
	t := &Topic{name: name, r: r, rule: r.rule(name), lastActive: r.now(), epoch: r.newEpoch()}
	t.hist.init(t.rule.HistorySize)
	return t
}

// Recovery reports what a subscribe with `since` replayed.
type Recovery struct {
	Requested bool   // since was given
	Complete  bool   // every message after since was replayed (no gap)
	Replayed  int    // messages replayed
	Seq       uint64 // the topic's current seq
	Oldest    uint64 // oldest retained seq (0: none)
	Epoch     string // the topic's lifetime; changes when it is reclaimed and made anew
}

// Subscribe adds s to topic name, creating the topic on first use. With
// since non-nil it first replays retained messages with seq > *since, under
// the topic lock, so no live message can slip in between (no gap, no
// duplicate at the seam). Recovery.Complete is false when messages after
// *since are no longer retained (or *since is ahead of the topic, as after
// the topic was reclaimed); the subscription is made anyway.
//
// ready, when not nil, is called under the topic lock after the recovery is
// assessed and before anything is replayed, so a reply it sends precedes
// the replayed and live messages.
//
// epoch, when not empty, is the topic epoch the client saw with since; a
// different epoch (the topic was reclaimed and its seq restarted) makes the
// recovery incomplete.
func (r *Registry) Subscribe(name string, s Subscriber, since *uint64, ready func(Recovery)) (*Sub, Recovery, error) {
	return r.SubscribeEpoch(name, s, since, "", ready)
}

// SubscribeEpoch is Subscribe with the epoch the client last saw.
func (r *Registry) SubscribeEpoch(name string, s Subscriber, since *uint64, epoch string, ready func(Recovery)) (*Sub, Recovery, error) {
	if !ValidName(name) {
		return nil, Recovery{}, ErrTopicName
	}
	t := r.lockTopic(name)
	if r.broker != nil {
		t = r.attachLocked(t)
		if since != nil && t.bstate == bActive {
			t = r.recoverLocked(t, *since, epoch)
		}
	}
	defer t.mu.Unlock()
	var rec Recovery
	if since != nil {
		rec = t.assessLocked(*since)
		if epoch != "" && epoch != t.epoch {
			rec.Complete = false
			zero := uint64(0)
			since = &zero // a new lifetime: everything retained is new to the client
		}
	}
	rec.Seq, rec.Epoch = t.seq, t.epoch
	if ready != nil {
		ready(rec)
	}
	if since != nil {
		rec.Replayed = t.replayLocked(s, *since)
	}
	sub := &Sub{s: s, t: t, idx: len(t.subs)}
	t.subs = append(t.subs, sub)
	if s.Deflate() {
		t.deflaters++
	}
	return sub, rec, nil
}

func (t *Topic) assessLocked(since uint64) Recovery {
	rec := Recovery{Requested: true}
	t.hist.expire(t.r.now(), t.rule.HistoryTTL)
	oldest := t.hist.oldest()
	rec.Oldest = oldest
	switch {
	case since > t.seq:
		rec.Complete = false
	case since == t.seq:
		rec.Complete = true
	case oldest == 0:
		rec.Complete = false
	default:
		rec.Complete = since+1 >= oldest
	}
	return rec
}

// replayLocked sends s the retained messages after since, in one
// SendMessages call, and returns how many it took. t.mu must be held.
func (t *Topic) replayLocked(s Subscriber, since uint64) int {
	var ms []*conn.Message
	t.hist.each(func(e *entry) {
		if e.seq > since {
			ms = append(ms, e.msg)
		}
	})
	if len(ms) == 0 {
		return 0
	}
	n := s.SendMessages(ms)
	t.r.Stats.Replayed.Add(int64(n))
	return n
}

// Unsubscribe removes the subscription; safe to call more than once.
func (r *Registry) Unsubscribe(sub *Sub) {
	t := sub.t
	t.mu.Lock()
	defer t.mu.Unlock()
	i := sub.idx
	if i < 0 {
		return
	}
	last := len(t.subs) - 1
	t.subs[i] = t.subs[last]
	t.subs[i].idx = i
	t.subs[last] = nil
	t.subs = t.subs[:last]
	sub.idx = -1
	if sub.s.Deflate() {
		t.deflaters--
	}
	t.lastActive = r.now()
	if cap(t.subs) > 64 && len(t.subs) < cap(t.subs)/4 {
		t.subs = append([]*Sub(nil), t.subs...)
	}
	r.detachLocked(t)
}

// Publication is one message to publish.
type Publication struct {
	Topic  string
	Data   []byte // JSON value (text delivery) or raw bytes (Binary)
	Binary bool
	// Key is the conflation key; empty means the topic name.
	Key string
}

// Result reports one publish.
type Result struct {
	Seq       uint64
	Delivered int // subscribers whose queue took the message
}

// Publish assigns the next seq of p.Topic, encodes the delivery frame once
// (and compresses it once if any subscriber negotiated permessage-deflate
// and it is above the threshold), retains it in the history ring, and
// appends the same bytes to every subscriber's write queue. Topics with up
// to ShardSize subscribers are served inline; larger ones are split into
// shards run on the bounded fan-out pool, and Publish returns when every
// subscriber has been served, so per-topic order holds for every subscriber.
//
// With a Broker, Publish hands p to it and returns the seq it assigned
// (Result.Delivered is 0): the message reaches the subscribers of every
// node, this one included, through Deliver.
func (r *Registry) Publish(p Publication) (Result, error) {
	if !ValidName(p.Topic) {
		return Result{}, ErrTopicName
	}
	if r.broker != nil {
		return r.publishBroker(p)
	}
	req := &pubReq{p: p}
	t := r.enqueue(req)
	t.mu.Lock()
	for !req.done {
		r.combineLocked(t)
	}
	t.mu.Unlock()
	return req.res, nil
}

// maxCombine bounds the publishes one lock holder fans out together, and so
// the wait of the first of them.
const maxCombine = 64

// enqueue queues req in the inbox of the live topic req.p.Topic, creating
// the topic if needed, and returns the topic.
func (r *Registry) enqueue(req *pubReq) *Topic {
	for {
		t := r.getTopic(req.p.Topic)
		t.qmu.Lock()
		if !t.dead {
			t.inbox = append(t.inbox, req)
			t.qmu.Unlock()
			return t
		}
		t.qmu.Unlock() // reclaimed between the lookup and the lock
	}
}

// combineLocked takes up to maxCombine publishes from t's inbox (the
// caller's among them, since it is not done and the inbox is FIFO), gives
// them consecutive seqs and fans them out together: each subscriber gets
// the batch in one SendMessages call, so a backlog of publishes to a busy
// topic costs each subscriber one write instead of one per message. With
// no backlog the batch is the caller's publish alone.
// Every publisher left in the inbox is waiting for t.mu and serves the rest.
// t.mu must be held.
func (r *Registry) combineLocked(t *Topic) {
	t.qmu.Lock()
	n := min(len(t.inbox), maxCombine)
	reqs := append(t.spare[:0], t.inbox[:n]...)
	rest := copy(t.inbox, t.inbox[n:])
	clear(t.inbox[rest:])
	t.inbox = t.inbox[:rest]
	t.qmu.Unlock()

	now := r.now()
	ms := t.batch[:0]
	for _, req := range reqs {
		t.seq++
		req.res.Seq = t.seq
		ms = append(ms, r.recordLocked(t, req.p.Data, req.p.Binary, req.p.Key, now))
	}
	for i, n := range r.sendLocked(t, ms, now) {
		reqs[i].res.Delivered = n
		reqs[i].done = true
	}
	clear(ms)
	t.batch = ms[:0]
	r.Stats.Published.Add(int64(len(reqs)))
	clear(reqs)
	t.spare = reqs
}

// emitLocked encodes the message at t.seq once, retains it and fans it out.
// t.mu must be held.
func (r *Registry) emitLocked(t *Topic, data []byte, binary bool, key string) Result {
	now := r.now()
	ms := append(t.batch[:0], r.recordLocked(t, data, binary, key, now))
	n := r.sendLocked(t, ms, now)[0]
	clear(ms)
	t.batch = ms[:0]
	return Result{Seq: t.seq, Delivered: n}
}

// recordLocked encodes the message at t.seq once and retains it in the
// history. t.mu must be held.
func (r *Registry) recordLocked(t *Topic, data []byte, binary bool, key string, now int64) *conn.Message {
	m := r.encode(t, t.seq, data, binary, key)
	t.rate.add(now)
	if t.rule.HistorySize > 0 {
		t.hist.push(t.seq, m, now)
	}
	return m
}

// sendLocked sends ms, in order, to every subscriber of t in one
// SendMessages call each, and returns how many subscribers took each
// message (valid until the next call). t.mu must be held.
func (r *Registry) sendLocked(t *Topic, ms []*conn.Message, now int64) []int {
	t.lastActive = now
	if t.rule.HistorySize > 0 {
		t.hist.expire(now, t.rule.HistoryTTL)
	}
	if cap(t.sent) < len(ms) {
		t.sent = make([]int, len(ms))
	}
	sent := t.sent[:len(ms)]
	clear(sent)
	r.fanout(t.subs, ms, sent)
	// sent[k] subscribers took exactly k+1 messages; message i reached
	// every subscriber that took more than i.
	var delivered, bytes int64
	for i, total := len(ms)-1, 0; i >= 0; i-- {
		total += sent[i]
		sent[i] = total
		delivered += int64(total)
		bytes += int64(total) * int64(len(ms[i].Frame))
	}
	r.Stats.Deliveries.Add(delivered)
	r.Stats.DeliveryBytes.Add(bytes)
	return sent
}

// encode builds the shared message for t at seq: the frame, encoded once,
// and its compressed form when a subscriber of t negotiated
// permessage-deflate and the payload reaches the threshold. t.mu must be held.
func (r *Registry) encode(t *Topic, seq uint64, data []byte, binary bool, key string) *conn.Message {
	m := new(conn.Message)
	op := ws.OpText
	if binary {
		m.Frame = EncodeBinary(t.name, seq, data)
		op = ws.OpBinary
	} else {
		m.Frame = EncodeMessage(t.name, seq, data)
	}
	if key == "" {
		key = t.name
	}
	m.Key = maphash.String(r.seed, key)
	m.Policy = t.rule.Policy
	if t.deflaters > 0 && r.cfg.DeflateThreshold > 0 {
		if payload := framePayload(m.Frame); len(payload) >= r.cfg.DeflateThreshold {
			m.Deflated = r.cfg.Deflater.CompressFrame(op, payload)
			r.Stats.CompressedFrames.Add(1)
		}
	}
	return m
}

// fanout sends ms to every subscriber in subs, and counts in sent[k-1] the
// subscribers that took k messages. Up to ShardSize subscribers are served
// inline; beyond, the publisher serves the first shard and the pool the
// rest, each shard counting into its own part of one slice.
func (r *Registry) fanout(subs []*Sub, ms []*conn.Message, sent []int) {
	size := r.cfg.ShardSize
	if len(subs) <= size {
		sendAll(subs, ms, sent)
		return
	}
	shards := (len(subs) + size - 1) / size
	counts := make([]int, (shards-1)*len(ms))
	var wg sync.WaitGroup
	for i := 1; i < shards; i++ {
		part := subs[i*size : min((i+1)*size, len(subs))]
		mine := counts[(i-1)*len(ms) : i*len(ms)]
		wg.Add(1)
		task := func() {
			sendAll(part, ms, mine)
			wg.Done()
		}
		if err := r.pool.Submit(task); err != nil {
			task() // pool released: serve it here
		}
	}
	sendAll(subs[:size], ms, sent) // the publisher serves the first shard itself
	wg.Wait()
	for i, v := range counts {
		sent[i%len(ms)] += v
	}
}

// sendAll sends ms to each of subs in one call and counts in sent[k-1] the
// subscribers that took k messages.
func sendAll(subs []*Sub, ms []*conn.Message, sent []int) {
	for _, s := range subs {
		if k := s.s.SendMessages(ms); k > 0 {
			sent[k-1]++
		}
	}
}

// framePayload returns the payload of a complete unmasked server frame.
func framePayload(f []byte) []byte {
	switch l := f[1] & 0x7f; l {
	case 126:
		return f[4:]
	case 127:
		return f[10:]
	default:
		return f[2:]
	}
}
