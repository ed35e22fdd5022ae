package topics

import (
	"errors"
	"hash/maphash"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/ants/v2"

	"github.com/surgepush/surge/conn"
)

// Errors returned by the registry.
var (
	ErrTopicName = errors.New("topics: invalid topic name: 1-128 characters of A-Z a-z 0-9 . _ - : / @")
	ErrClosed    = errors.New("topics: registry closed")
)

// MaxTopicLen is the longest accepted topic name.
const MaxTopicLen = 128

// MaxHistory bounds a topic's history ring (its slots are allocated on the
// first publish: 24 bytes each, plus the retained messages).
const MaxHistory = 100_000

// Subscriber is a connection as the registry sees it. *conn.Conn implements it.
type Subscriber interface {
	// SendMessages queues ms in order without blocking and writes them
	// together; it returns how many, from the first, were queued. The
	// messages are shared and read-only.
	SendMessages(ms []*conn.Message) int
	// Deflate reports whether the subscriber negotiated permessage-deflate.
	Deflate() bool
}

var _ Subscriber = (*conn.Conn)(nil)

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

// Rule configures the topics whose names start with Prefix.
type Rule struct {
	Prefix string
	// Policy applies when a subscriber's write queue is full.
	Policy conn.Policy
	// HistorySize is how many recent messages are kept for `since` recovery
	// (0: none).
	HistorySize int
	// HistoryTTL drops retained messages older than this (0: no age limit).
	HistoryTTL time.Duration
}

// ParseRules parses "prefix:key=value,key=value;prefix2:…" where keys are
// policy (disconnect | drop-oldest | conflate), history (count) and ttl
// (duration). Unset keys inherit from def. An empty prefix is allowed.
func ParseRules(s string, def Rule) ([]Rule, error) {
	var rules []Rule
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		// Split at the last ':' (topic names, and so prefixes, may contain ':';
		// options never do).
		i := strings.LastIndex(part, ":")
		prefix, opts, ok := part[:max(i, 0)], part[i+1:], i >= 0
		if !ok {
			return nil, errors.New("topics: rule " + strconv.Quote(part) + ": want prefix:key=value,…")
		}
		r := def
		r.Prefix = strings.TrimSpace(prefix)
		for _, kv := range strings.Split(opts, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			if !ok {
				return nil, errors.New("topics: rule " + strconv.Quote(part) + ": " + strconv.Quote(kv) + " is not key=value")
			}
			switch k {
			case "policy":
				p, ok := conn.ParsePolicy(v)
				if !ok {
					return nil, errors.New("topics: rule " + strconv.Quote(part) + ": policy must be disconnect, drop-oldest or conflate")
				}
				r.Policy = p
			case "history":
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 || n > MaxHistory {
					return nil, errors.New("topics: rule " + strconv.Quote(part) + ": history must be a count from 0 to " + strconv.Itoa(MaxHistory))
				}
				r.HistorySize = n
			case "ttl":
				d, err := time.ParseDuration(v)
				if err != nil || d < 0 {
					return nil, errors.New("topics: rule " + strconv.Quote(part) + ": ttl must be a duration")
				}
				r.HistoryTTL = d
			default:
				return nil, errors.New("topics: rule " + strconv.Quote(part) + ": unknown key " + strconv.Quote(k))
			}
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// Config configures a Registry. The zero value is valid.
type Config struct {
	// Default applies to topics no rule matches. Its zero value: disconnect
	// policy, no history.
	Default Rule
	// Rules override Default by topic-name prefix; the longest match wins.
	Rules []Rule
	// ShardSize is the number of subscribers one fan-out task serves; a topic
	// with at most this many subscribers is delivered inline by the
	// publisher without the pool. Default 512.
	ShardSize int
	// Workers bounds the fan-out pool. Default 8.
	Workers int
	// DeflateThreshold: messages whose frame payload is at least this many
	// bytes are also compressed once (when any subscriber negotiated
	// permessage-deflate). Default 512; negative disables compression.
	DeflateThreshold int
	// IdleTTL: a topic with no subscribers and no publish for this long is
	// reclaimed (with its sequence and history). Default 2 minutes, and never
	// less than the longest history TTL.
	IdleTTL time.Duration
	// Deflater compresses frames; New allocates one when nil.
	Deflater *conn.Deflater
	// Broker, when set, shares topics with other nodes: Publish goes through
	// it and messages come back through Deliver (see Broker). New calls its
	// Start; the caller closes it after the registry. Default nil: this
	// registry assigns seq itself (single node).
	Broker Broker
	// BrokerTimeout bounds each call into the Broker. Default 5s.
	BrokerTimeout time.Duration
}

// Counters are the registry's totals (read with atomic loads).
type Counters struct {
	Published        atomic.Int64 // messages published
	Deliveries       atomic.Int64 // subscriber queue appends
	DeliveryBytes    atomic.Int64 // bytes of frames queued, counted at their plain size
	CompressedFrames atomic.Int64 // messages compressed (once each)
	Replayed         atomic.Int64 // history messages replayed on subscribe
	Reclaimed        atomic.Int64 // topics reclaimed
	BrokerDelivered  atomic.Int64 // messages delivered by the broker
	BrokerDuplicates atomic.Int64 // broker deliveries dropped as already seen
	BrokerRecovered  atomic.Int64 // messages fetched from the broker for since-recovery
}

const numShards = 64

// Registry maps topic names to topics. Create with New; safe for
// concurrent use.
type Registry struct {
	cfg    Config
	seed   maphash.Seed
	pool   *ants.Pool
	broker Broker // nil: single node
	shards [numShards]shard
	Stats  Counters

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
	start    time.Time
}

type shard struct {
	mu sync.RWMutex
	m  map[string]*Topic
}

// New returns an empty registry with its fan-out pool; call Close when done.
func New(cfg Config) (*Registry, error) {
	if cfg.ShardSize <= 0 {
		cfg.ShardSize = 512
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.DeflateThreshold == 0 {
		cfg.DeflateThreshold = 512
	}
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = 2 * time.Minute
	}
	cfg.Default.HistorySize = min(cfg.Default.HistorySize, MaxHistory)
	for _, r := range append([]Rule{cfg.Default}, cfg.Rules...) {
		cfg.IdleTTL = max(cfg.IdleTTL, r.HistoryTTL)
	}
	if cfg.Deflater == nil {
		cfg.Deflater = new(conn.Deflater)
	}
	// Longest prefix first, so the first match is the longest.
	cfg.Rules = append([]Rule(nil), cfg.Rules...)
	sort.SliceStable(cfg.Rules, func(i, j int) bool { return len(cfg.Rules[i].Prefix) > len(cfg.Rules[j].Prefix) })
	pool, err := ants.NewPool(cfg.Workers, ants.WithExpiryDuration(10*time.Second))
	if err != nil {
		return nil, err
	}
	r := &Registry{cfg: cfg, seed: maphash.MakeSeed(), pool: pool, stop: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	for i := range r.shards {
		r.shards[i].m = make(map[string]*Topic)
	}
	if cfg.Broker != nil {
		if cfg.BrokerTimeout <= 0 {
			r.cfg.BrokerTimeout = 5 * time.Second
		}
		r.broker = cfg.Broker
		if err := r.broker.Start(r); err != nil {
			pool.Release()
			return nil, err
		}
	}
	return r, nil
}

// Run reclaims idle empty topics until Close. It is the registry's one goroutine.
func (r *Registry) Run() {
	defer close(r.done)
	t := time.NewTicker(max(r.cfg.IdleTTL/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.Reclaim(r.now())
		}
	}
}

// Close stops Run (if started) and releases the fan-out pool.
func (r *Registry) Close(started bool) {
	r.stopOnce.Do(func() { close(r.stop) })
	if started {
		<-r.done
	}
	r.pool.Release()
}

// Pool returns the running workers and the capacity of the fan-out pool.
func (r *Registry) Pool() (running, capacity int) { return r.pool.Running(), r.pool.Cap() }

func (r *Registry) now() int64 { return time.Since(r.start).Milliseconds() }

// newEpoch returns a short random token naming a topic's lifetime.
func (r *Registry) newEpoch() string {
	if r.broker != nil {
		return "" // the broker names lifetimes (see Topic.syncLocked)
	}
	return strconv.FormatUint(rand.Uint64()>>16, 36)
}

func (r *Registry) rule(name string) *Rule {
	for i := range r.cfg.Rules {
		if strings.HasPrefix(name, r.cfg.Rules[i].Prefix) {
			return &r.cfg.Rules[i]
		}
	}
	return &r.cfg.Default
}

func (r *Registry) shard(name string) *shard {
	return &r.shards[maphash.String(r.seed, name)%numShards]
}

// getTopic returns topic name, creating it if needed; it may be reclaimed
// (dead) by the time the caller locks it.
func (r *Registry) getTopic(name string) *Topic {
	sh := r.shard(name)
	sh.mu.RLock()
	t := sh.m[name]
	sh.mu.RUnlock()
	if t == nil {
		sh.mu.Lock()
		if t = sh.m[name]; t == nil {
			t = newTopic(r, name)
			sh.m[name] = t
		}
		sh.mu.Unlock()
	}
	return t
}

// lockTopic returns the live topic name, creating it if needed, with t.mu held.
func (r *Registry) lockTopic(name string) *Topic {
	for {
		t := r.getTopic(name)
		t.mu.Lock()
		if !t.dead {
			return t
		}
		t.mu.Unlock() // reclaimed between the lookup and the lock
	}
}

// Reclaim removes topics that have had no subscriber and no publish since
// now-IdleTTL (registry clock, ms). Run calls it periodically.
func (r *Registry) Reclaim(now int64) int {
	cutoff := now - r.cfg.IdleTTL.Milliseconds()
	n := 0
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for name, t := range sh.m {
			t.mu.Lock()
			t.qmu.Lock()
			if len(t.subs) == 0 && t.lastActive <= cutoff && t.bstate == bNone && len(t.inbox) == 0 {
				t.dead = true
				delete(sh.m, name)
				n++
			}
			t.qmu.Unlock()
			t.mu.Unlock()
		}
		sh.mu.Unlock()
	}
	r.Stats.Reclaimed.Add(int64(n))
	return n
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

// TopicInfo describes one topic for listings.
type TopicInfo struct {
	Name        string  `json:"topic"`
	Subscribers int     `json:"subscribers"`
	Seq         uint64  `json:"seq"`
	Rate        float64 `json:"rate"` // publishes per second, 10-second decaying average
	Retained    int     `json:"retained"`
	Policy      string  `json:"policy"`
}

// Top returns up to n topics with the most subscribers.
func (r *Registry) Top(n int) []TopicInfo { return r.TopBy(n, false) }

// TopBy returns up to n topics with the most subscribers, or with the
// highest publish rate when byRate.
func (r *Registry) TopBy(n int, byRate bool) []TopicInfo {
	var all []TopicInfo
	now := r.now()
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.RLock()
		for _, t := range sh.m {
			t.mu.Lock()
			all = append(all, TopicInfo{Name: t.name, Subscribers: len(t.subs), Seq: t.seq, Rate: t.rate.value(now),
				Retained: t.hist.len(), Policy: t.rule.Policy.String()})
			t.mu.Unlock()
		}
		sh.mu.RUnlock()
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if byRate && a.Rate != b.Rate {
			return a.Rate > b.Rate
		}
		if a.Subscribers != b.Subscribers {
			return a.Subscribers > b.Subscribers
		}
		return a.Name < b.Name
	})
	if n < 0 {
		n = 0
	}
	if len(all) > n {
		all = all[:n]
	}
	return all
}

// EncodeMessage builds the delivery frame for one JSON message: a complete
// text frame whose payload is {"op":"message","topic":name,"seq":seq,"data":data}.
// name must be valid (no JSON escaping needed) and data valid JSON.
func EncodeMessage(name string, seq uint64, data []byte) []byte {
	var digits [20]byte
	n := len(`{"op":"message","topic":"","seq":,"data":}`) + len(name) + len(data)
	n += len(strconv.AppendUint(digits[:0], seq, 10))
	p := make([]byte, 0, conn.HeaderSize(n)+n)
	p = conn.AppendHeader(p, ws.OpText, true, false, n)
	p = append(p, `{"op":"message","topic":"`...)
	p = append(p, name...)
	p = append(p, `","seq":`...)
	p = strconv.AppendUint(p, seq, 10)
	p = append(p, `,"data":`...)
	p = append(p, data...)
	return append(p, '}')
}

// BinaryVersion is the first byte of every binary delivery.
const BinaryVersion = 1

// EncodeBinary builds the delivery frame for a binary publish: a binary
// frame whose payload is
//
//	byte 0       BinaryVersion (1)
//	byte 1       topic name length L (1–128)
//	bytes 2…L+1  topic name (ASCII)
//	8 bytes      seq, big-endian unsigned
//	the rest     the published bytes, unchanged
func EncodeBinary(name string, seq uint64, data []byte) []byte {
	n := 2 + len(name) + 8 + len(data)
	p := make([]byte, 0, conn.HeaderSize(n)+n)
	p = conn.AppendHeader(p, ws.OpBinary, true, false, n)
	p = append(p, BinaryVersion, byte(len(name)))
	p = append(p, name...)
	p = append(p, byte(seq>>56), byte(seq>>48), byte(seq>>40), byte(seq>>32), byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq))
	return append(p, data...)
}

// DecodeBinary parses a binary delivery payload (for clients and tests).
func DecodeBinary(p []byte) (name string, seq uint64, data []byte, ok bool) {
	if len(p) < 2 || p[0] != BinaryVersion {
		return "", 0, nil, false
	}
	l := int(p[1])
	if l == 0 || len(p) < 2+l+8 {
		return "", 0, nil, false
	}
	name = string(p[2 : 2+l])
	b := p[2+l:]
	for i := 0; i < 8; i++ {
		seq = seq<<8 | uint64(b[i])
	}
	return name, seq, b[8:], true
}
