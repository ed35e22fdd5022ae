package topics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSBroker shares topics between Surge processes through NATS JetStream.
//
// Layout: one stream (Stream, default "SURGE") stores every publication
// under the subject <prefix>.t.<topic> (prefix: the stream name in lower
// case; see SubjectFor), keeping HistorySize messages per subject for at
// most MaxAge, and republishes each stored message to <prefix>.d.<topic>
// with its stream sequence (Nats-Sequence) and the stream sequence of the
// subject's previous message (Nats-Last-Sequence).
//
// Seq: the publishing node sends Surge-Seq = last + 1 with
// Nats-Expected-Last-Subject-Sequence = the stream sequence of the topic's
// last message, both from a per-topic cache; JetStream stores it only if no
// other message got in first, so Surge-Seq is exactly +1 per topic across
// all nodes. On a conflict the node re-reads the subject's last message and
// retries. Surge-Epoch names the topic's lifetime: a publish that finds no
// retained message (the topic is new, or everything aged out) starts a new
// epoch at seq 1.
//
// Delivery: a node subscribes (core NATS, one subscription per topic with
// local subscribers) to the republished subject. Republished messages
// arrive in stream order; one whose Nats-Last-Sequence is not the last one
// this node saw reveals a gap (a slow-consumer drop, a reconnect), which is
// filled from the stream with one batched direct get before the message is
// delivered; anything already seen is dropped. After a reconnect or a
// slow-consumer report each subscribed topic is compared with its last
// stored message and caught up the same way.
//
// While NATS is unreachable Publish fails fast with ErrBrokerUnavailable,
// Healthy reports it, and nats.go reconnects with backoff; local
// connections stay up. Messages retained by the stream are delivered after
// the reconnect; older ones are lost to this node's subscribers (clients
// see the seq jump and may resubscribe with since).
type NATSBroker struct {
	cfg     NATSConfig
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	tPrefix string // <prefix>.t.
	dPrefix string // <prefix>.d.
	seed    maphash.Seed

	ready   atomic.Bool // connected and the stream is in place
	lastErr atomic.Pointer[string]
	kick    chan struct{} // (re)connected: ensure the stream, resync topics
	stop    chan struct{}
	wg      sync.WaitGroup
	shards  []natsShard

	mu      sync.Mutex
	h       BrokerHandler
	subs    map[string]*natsTopic // by delivery subject
	closed  bool
	started bool

	pmu  sync.Mutex
	pubs map[string]*natsPub // publisher cache by topic

	published, received, duplicates, repaired, lost, conflicts, reconnects atomic.Int64
	resyncAll                                                              atomic.Bool
}

var (
	_ Broker        = (*NATSBroker)(nil)
	_ BrokerHealth  = (*NATSBroker)(nil)
	_ BrokerStatser = (*NATSBroker)(nil)
)

// NATSConfig configures a NATSBroker. URL is required.
type NATSConfig struct {
	// URL is the NATS server (comma-separated for a cluster), e.g.
	// nats://127.0.0.1:4222; user:password@ or a token in it work as in nats.go.
	URL string
	// Name is the client connection name. Default "surge".
	Name string
	// Stream is the JetStream stream. Default "SURGE".
	Stream string
	// HistorySize is how many messages the stream keeps per topic (its
	// MaxMsgsPerSubject); at least 1, since the last message carries the seq.
	HistorySize int
	// MaxAge drops stored messages older than this (0: no age limit). A
	// topic whose messages have all aged out starts a new epoch at seq 1.
	MaxAge time.Duration
	// Replicas of the stream in a NATS cluster. Default 1.
	Replicas int
	// MemoryStorage keeps the stream in memory instead of on disk. Default false.
	MemoryStorage bool
	// CredsFile is a NATS credentials file (JWT and NKey seed). Default none.
	CredsFile string
	// CAFile, CertFile and KeyFile configure TLS: the CA to trust and a
	// client certificate. Default none (TLS still works with tls:// URLs and
	// the system roots).
	CAFile, CertFile, KeyFile string
	// Timeout bounds each request to NATS. Default 2s.
	Timeout time.Duration
	// ReconnectWait is the pause between reconnect attempts (plus up to 1s
	// of jitter). Default 1s.
	ReconnectWait time.Duration
	// Shards is the number of goroutines that receive and deliver messages
	// (a topic always goes to the same one). Default GOMAXPROCS.
	Shards int
	// Log receives connection events. Default: discarded.
	Log *slog.Logger
}

// Message headers.
const (
	hdrSeq      = "Surge-Seq"
	hdrEpoch    = "Surge-Epoch"
	hdrBinary   = "Surge-Binary"
	hdrKey      = "Surge-Key"
	hdrStreamSq = "Nats-Sequence"
	hdrPrevSq   = "Nats-Last-Sequence"
	hdrTime     = "Nats-Time-Stamp"
)

type natsShard struct {
	msgs   chan *nats.Msg
	resync chan string // delivery subjects to compare with the stream
}

// natsTopic is one topic this node is subscribed to.
type natsTopic struct {
	name, tSubj, dSubj string
	shard              *natsShard

	mu     sync.Mutex // held while a message of the topic is handled
	sub    *nats.Subscription
	synced bool   // last, stream and epoch are known
	last   uint64 // Surge-Seq of the last message delivered
	stream uint64 // its stream sequence
	epoch  string
}

// natsPub is the publisher's cache for one topic.
type natsPub struct {
	mu     sync.Mutex // serialises this node's publishes to the topic
	known  bool
	stream uint64 // stream sequence of the topic's last message
	seq    uint64
	epoch  string
	used   atomic.Int64 // unix ms
}

// NewNATSBroker connects to NATS and makes sure the stream exists. If the
// server cannot be reached yet it keeps trying in the background (Healthy
// reports it) rather than failing; a stream that cannot be created on a
// reachable server is an error.
func NewNATSBroker(cfg NATSConfig) (*NATSBroker, error) {
	if cfg.URL == "" {
		return nil, errors.New("topics: NATS broker needs a URL")
	}
	if cfg.Name == "" {
		cfg.Name = "surge"
	}
	if cfg.Stream == "" {
		cfg.Stream = "SURGE"
	}
	if strings.ContainsAny(cfg.Stream, ".*> \t\r\n/\\") {
		return nil, fmt.Errorf("topics: NATS stream name %q: no '.', '*', '>', '/' or spaces", cfg.Stream)
	}
	cfg.HistorySize = min(max(cfg.HistorySize, 1), MaxHistory)
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.ReconnectWait <= 0 {
		cfg.ReconnectWait = time.Second
	}
	if cfg.Shards <= 0 {
		cfg.Shards = runtime.GOMAXPROCS(0)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	prefix := strings.ToLower(cfg.Stream)
	b := &NATSBroker{
		cfg: cfg, log: cfg.Log, tPrefix: prefix + ".t.", dPrefix: prefix + ".d.", seed: maphash.MakeSeed(),
		kick: make(chan struct{}, 1), stop: make(chan struct{}),
		subs: make(map[string]*natsTopic), pubs: make(map[string]*natsPub),
	}
	b.shards = make([]natsShard, cfg.Shards)
	for i := range b.shards {
		b.shards[i] = natsShard{msgs: make(chan *nats.Msg, 8192), resync: make(chan string, 1024)}
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(cfg.ReconnectWait),
		nats.ReconnectJitter(cfg.ReconnectWait, cfg.ReconnectWait),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1), // fail publishes at once while disconnected
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.Timeout(cfg.Timeout),
		nats.ConnectHandler(func(*nats.Conn) {
			if !b.ready.Load() { // not already set up by NewNATSBroker
				b.poke()
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.reconnects.Add(1)
			b.log.Info("broker reconnected", "url", nc.ConnectedUrlRedacted())
			b.poke()
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			b.ready.Store(false)
			b.setErr("disconnected from NATS")
			if !b.isClosed() {
				b.log.Warn("broker disconnected; cross-node delivery paused", "err", err)
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { b.ready.Store(false) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) && sub != nil {
				b.log.Warn("broker slow consumer: messages dropped, catching up from the stream", "subject", sub.Subject)
				b.requestResync(sub.Subject)
				return
			}
			b.log.Warn("broker error", "err", err)
		}),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	if cfg.CertFile != "" || cfg.KeyFile != "" {
		opts = append(opts, nats.ClientCert(cfg.CertFile, cfg.KeyFile))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("topics: NATS %s: %w", redact(cfg.URL), err)
	}
	b.nc = nc
	if b.js, err = jetstream.New(nc); err != nil {
		nc.Close()
		return nil, err
	}
	if nc.IsConnected() {
		if err := b.ensureStream(); err != nil {
			nc.Close()
			return nil, err
		}
	} else {
		b.setErr("connecting to NATS")
		b.log.Warn("broker not reachable yet; retrying", "url", redact(cfg.URL))
	}
	return b, nil
}

// SubjectFor returns the NATS subject that stores topic.
func (b *NATSBroker) SubjectFor(topic string) string { return b.tPrefix + EncodeSubject(topic) }

// EncodeSubject maps a topic name to NATS subject tokens: '.' separates
// tokens as in the name, ':' '/' '@' and '%' become %3A %2F %40 %25, and an
// empty token (a leading, trailing or doubled '.') becomes "%". The mapping
// is one to one (see DecodeSubject).
func EncodeSubject(topic string) string {
	var b strings.Builder
	b.Grow(len(topic) + 8)
	for i, tok := range strings.Split(topic, ".") {
		if i > 0 {
			b.WriteByte('.')
		}
		if tok == "" {
			b.WriteByte('%')
			continue
		}
		for j := 0; j < len(tok); j++ {
			switch c := tok[j]; c {
			case ':', '/', '@', '%', '*', '>', ' ':
				b.WriteByte('%')
				b.WriteByte("0123456789ABCDEF"[c>>4])
				b.WriteByte("0123456789ABCDEF"[c&15])
			default:
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}

// DecodeSubject reverses EncodeSubject.
func DecodeSubject(s string) (string, bool) {
	var b strings.Builder
	for i, tok := range strings.Split(s, ".") {
		if i > 0 {
			b.WriteByte('.')
		}
		if tok == "%" {
			continue
		}
		for j := 0; j < len(tok); j++ {
			if tok[j] != '%' {
				b.WriteByte(tok[j])
				continue
			}
			if j+2 >= len(tok) {
				return "", false
			}
			v, err := strconv.ParseUint(tok[j+1:j+3], 16, 8)
			if err != nil {
				return "", false
			}
			b.WriteByte(byte(v))
			j += 2
		}
	}
	return b.String(), true
}

func redact(url string) string {
	var out []string
	for _, u := range strings.Split(url, ",") {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			scheme := ""
			if i := strings.Index(u, "://"); i >= 0 && i < at {
				scheme = u[:i+3]
			}
			u = scheme + "***@" + u[at+1:]
		}
		out = append(out, u)
	}
	return strings.Join(out, ",")
}

func (b *NATSBroker) setErr(s string) { b.lastErr.Store(&s) }

// poke asks the run loop to (re)establish the stream and resync.
func (b *NATSBroker) poke() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// ensureStream creates or updates the stream.
func (b *NATSBroker) ensureStream() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*b.cfg.Timeout)
	defer cancel()
	storage := jetstream.FileStorage
	if b.cfg.MemoryStorage {
		storage = jetstream.MemoryStorage
	}
	_, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              b.cfg.Stream,
		Description:       "Surge topics (surge serve --broker)",
		Subjects:          []string{b.tPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		MaxMsgsPerSubject: int64(b.cfg.HistorySize),
		MaxAge:            b.cfg.MaxAge,
		Storage:           storage,
		Replicas:          b.cfg.Replicas,
		Discard:           jetstream.DiscardOld,
		AllowDirect:       true,
		RePublish:         &jetstream.RePublish{Source: b.tPrefix + ">", Destination: b.dPrefix + ">"},
	})
	if err != nil {
		b.setErr("stream " + b.cfg.Stream + ": " + err.Error())
		return fmt.Errorf("topics: NATS stream %s: %w", b.cfg.Stream, err)
	}
	if b.nc.IsConnected() {
		b.ready.Store(true)
	}
	return nil
}

// Start implements Broker: it starts the receive goroutines.
func (b *NATSBroker) Start(h BrokerHandler) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrBrokerClosed
	}
	if b.started {
		return errors.New("topics: NATS broker already started")
	}
	b.h, b.started = h, true
	for i := range b.shards {
		b.wg.Add(1)
		go b.receive(&b.shards[i])
	}
	b.wg.Add(1)
	go b.run()
	return nil
}

// run re-establishes the stream after (re)connects, resyncs every topic,
// and forgets idle publisher cache entries.
func (b *NATSBroker) run() {
	defer b.wg.Done()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	retry := false
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
			retry = b.reestablish()
		case <-tick.C:
			if retry && b.nc.IsConnected() {
				retry = b.reestablish()
			}
			if b.resyncAll.Swap(false) {
				b.resyncTopics()
			}
			b.sweepPubs(time.Now().Add(-time.Minute).UnixMilli())
		}
	}
}

// reestablish runs after a (re)connect; it reports whether to try again.
func (b *NATSBroker) reestablish() bool {
	if !b.nc.IsConnected() {
		return false
	}
	if err := b.ensureStream(); err != nil {
		b.log.Warn("broker stream not ready; retrying", "err", err)
		return true
	}
	// The publisher cache needs no reset: a stale entry fails the
	// expected-last-sequence check and is re-read.
	b.resyncTopics()
	return false
}

func (b *NATSBroker) resyncTopics() {
	b.mu.Lock()
	subjects := make([]string, 0, len(b.subs))
	for s := range b.subs {
		subjects = append(subjects, s)
	}
	b.mu.Unlock()
	for _, s := range subjects {
		b.requestResyncWait(s)
	}
}

func (b *NATSBroker) shardFor(dSubj string) *natsShard {
	return &b.shards[maphash.String(b.seed, dSubj)%uint64(len(b.shards))]
}

// requestResync asks the topic's shard to catch up with the stream, from a
// callback that must not block.
func (b *NATSBroker) requestResync(dSubj string) {
	select {
	case b.shardFor(dSubj).resync <- dSubj:
	default:
		b.resyncAll.Store(true)
	}
}

func (b *NATSBroker) requestResyncWait(dSubj string) {
	select {
	case b.shardFor(dSubj).resync <- dSubj:
	case <-b.stop:
	}
}

func (b *NATSBroker) sweepPubs(cutoff int64) {
	b.pmu.Lock()
	defer b.pmu.Unlock()
	for name, p := range b.pubs {
		if p.used.Load() < cutoff && p.mu.TryLock() {
			delete(b.pubs, name)
			p.mu.Unlock()
		}
	}
}

func (b *NATSBroker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Healthy implements BrokerHealth.
func (b *NATSBroker) Healthy() error {
	switch {
	case b.isClosed():
		return ErrBrokerClosed
	case !b.nc.IsConnected():
		return fmt.Errorf("%w: not connected to NATS", ErrBrokerUnavailable)
	case !b.ready.Load():
		msg := "stream not ready"
		if p := b.lastErr.Load(); p != nil {
			msg = *p
		}
		return fmt.Errorf("%w: %s", ErrBrokerUnavailable, msg)
	}
	return nil
}

// BrokerStats implements BrokerStatser.
func (b *NATSBroker) BrokerStats() BrokerStats {
	b.mu.Lock()
	n := len(b.subs)
	b.mu.Unlock()
	st := BrokerStats{
		Connected: b.Healthy() == nil,
		Published: b.published.Load(), Received: b.received.Load(), Duplicates: b.duplicates.Load(),
		Repaired: b.repaired.Load(), Lost: b.lost.Load(), Conflicts: b.conflicts.Load(),
		Reconnects: b.reconnects.Load(), Topics: n,
	}
	if err := b.Healthy(); err != nil {
		st.Error = err.Error()
	}
	return st
}

// Publish implements Broker.
func (b *NATSBroker) Publish(ctx context.Context, p Publication) (Position, error) {
	if !ValidName(p.Topic) {
		return Position{}, ErrTopicName
	}
	if err := b.Healthy(); err != nil {
		return Position{}, err
	}
	// Headers: the subject, key and a few numbers besides the data.
	if n, limit := int64(len(p.Data)+len(p.Key)+2*len(p.Topic)+256), b.nc.MaxPayload(); n > limit {
		return Position{}, fmt.Errorf("%w: %d bytes with headers, the NATS server takes at most %d", ErrMessageTooLarge, n, limit)
	}
	b.pmu.Lock()
	st := b.pubs[p.Topic]
	if st == nil {
		st = new(natsPub)
		b.pubs[p.Topic] = st
	}
	b.pmu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	st.used.Store(time.Now().UnixMilli())
	subj := b.SubjectFor(p.Topic)
	for attempt := 0; attempt < 16; attempt++ {
		if attempt >= 3 {
			// Several nodes are racing for this topic: back off a little.
			select {
			case <-ctx.Done():
				return Position{}, fmt.Errorf("%w: %v", ErrBrokerUnavailable, ctx.Err())
			case <-time.After(time.Duration(rand.IntN(1000*attempt)) * time.Microsecond):
			}
		}
		if !st.known {
			d, sseq, err := b.lastMsg(ctx, subj)
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
				st.stream, st.seq, st.epoch = 0, 0, strconv.FormatUint(rand.Uint64()>>16, 36)
			case err != nil:
				return Position{}, fmt.Errorf("%w: %v", ErrBrokerUnavailable, err)
			default:
				st.stream, st.seq, st.epoch = sseq, d.Seq, d.Epoch
			}
			st.known = true
		}
		m := &nats.Msg{Subject: subj, Data: p.Data, Header: nats.Header{}}
		m.Header.Set(hdrSeq, strconv.FormatUint(st.seq+1, 10))
		m.Header.Set(hdrEpoch, st.epoch)
		if p.Binary {
			m.Header.Set(hdrBinary, "1")
		}
		if p.Key != "" {
			m.Header.Set(hdrKey, p.Key)
		}
		ack, err := b.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(st.stream), jetstream.WithExpectStream(b.cfg.Stream))
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			b.conflicts.Add(1)
			st.known = false
			continue
		}
		if err != nil {
			st.known = false // it may have been stored all the same
			return Position{}, fmt.Errorf("%w: %v", ErrBrokerUnavailable, err)
		}
		st.stream, st.seq = ack.Sequence, st.seq+1
		b.published.Add(1)
		return Position{Seq: st.seq, Epoch: st.epoch}, nil
	}
	return Position{}, ErrBrokerConflict
}

// ErrMessageTooLarge: the message does not fit the broker's limit.
var ErrMessageTooLarge = errors.New("topics: message too large for the broker")

// lastMsg reads the last stored message of a subject (a direct get).
func (b *NATSBroker) lastMsg(ctx context.Context, subj string) (Delivery, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	m, err := b.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+b.cfg.Stream+"."+subj, nil)
	if err != nil {
		return Delivery{}, 0, err
	}
	switch st := m.Header.Get("Status"); st {
	case "":
	case "404":
		return Delivery{}, 0, jetstream.ErrMsgNotFound
	default:
		return Delivery{}, 0, fmt.Errorf("direct get %s: status %s %s", subj, st, m.Header.Get("Description"))
	}
	d, sseq, ok := parseDelivery("", m)
	if !ok {
		return Delivery{}, 0, fmt.Errorf("direct get %s: message without Surge headers", subj)
	}
	return d, sseq, nil
}

// fetch reads up to batch stored messages of subj from stream sequence
// from on, oldest first, in one batched direct get.
func (b *NATSBroker) fetch(ctx context.Context, subj string, from uint64, batch int) ([]*nats.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	req, _ := json.Marshal(struct {
		Seq     uint64 `json:"seq,omitempty"`
		NextFor string `json:"next_by_subj"`
		Batch   int    `json:"batch"`
	}{from, subj, batch})
	inbox := b.nc.NewInbox()
	sub, err := b.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := b.nc.PublishRequest("$JS.API.DIRECT.GET."+b.cfg.Stream, inbox, req); err != nil {
		return nil, err
	}
	var out []*nats.Msg
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return out, err
		}
		switch st := m.Header.Get("Status"); st {
		case "":
			out = append(out, m)
		case "204", "404": // end of batch; nothing (more) stored
			return out, nil
		default:
			return out, fmt.Errorf("direct get %s: status %s %s", subj, st, m.Header.Get("Description"))
		}
	}
}

// parseDelivery reads a stored or republished message; topic may be empty.
func parseDelivery(topic string, m *nats.Msg) (Delivery, uint64, bool) {
	seq, err1 := strconv.ParseUint(m.Header.Get(hdrSeq), 10, 64)
	sseq, err2 := strconv.ParseUint(m.Header.Get(hdrStreamSq), 10, 64)
	if err1 != nil || err2 != nil || seq == 0 {
		return Delivery{}, 0, false
	}
	d := Delivery{Topic: topic, Seq: seq, Epoch: m.Header.Get(hdrEpoch), Data: m.Data,
		Binary: m.Header.Get(hdrBinary) == "1", Key: m.Header.Get(hdrKey)}
	if ts := m.Header.Get(hdrTime); ts != "" {
		d.Time, _ = time.Parse(time.RFC3339Nano, ts)
	}
	return d, sseq, true
}

// Subscribe implements Broker.
func (b *NATSBroker) Subscribe(ctx context.Context, topic string) (Position, error) {
	if !ValidName(topic) {
		return Position{}, ErrTopicName
	}
	enc := EncodeSubject(topic)
	nt := &natsTopic{name: topic, tSubj: b.tPrefix + enc, dSubj: b.dPrefix + enc}
	nt.shard = b.shardFor(nt.dSubj)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return Position{}, ErrBrokerClosed
	}
	old := b.subs[nt.dSubj]
	b.subs[nt.dSubj] = nt
	nt.mu.Lock() // before anything can arrive for it
	b.mu.Unlock()
	if old != nil {
		_ = old.sub.Unsubscribe()
	}
	sub, err := b.nc.ChanSubscribe(nt.dSubj, nt.shard.msgs)
	if err != nil {
		nt.mu.Unlock()
		b.mu.Lock()
		if b.subs[nt.dSubj] == nt {
			delete(b.subs, nt.dSubj)
		}
		b.mu.Unlock()
		return Position{}, fmt.Errorf("topics: NATS subscribe %s: %w", topic, err)
	}
	nt.sub = sub
	nt.mu.Unlock()
	if err := b.Healthy(); err != nil {
		return Position{}, err // registered; resync after the reconnect sets the position
	}
	// The subscription is registered at the server before this request is
	// served (same connection, in order), so every message stored after the
	// read below arrives through it; earlier ones are dropped as seen.
	d, sseq, err := b.lastMsg(ctx, nt.tSubj)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return Position{}, fmt.Errorf("%w: %v", ErrBrokerUnavailable, err)
	}
	nt.mu.Lock()
	defer nt.mu.Unlock()
	if !nt.synced {
		nt.synced, nt.last, nt.stream, nt.epoch = true, d.Seq, sseq, d.Epoch
	}
	return Position{Seq: nt.last, Epoch: nt.epoch}, nil
}

// Unsubscribe implements Broker.
func (b *NATSBroker) Unsubscribe(topic string) {
	dSubj := b.dPrefix + EncodeSubject(topic)
	b.mu.Lock()
	nt := b.subs[dSubj]
	delete(b.subs, dSubj)
	b.mu.Unlock()
	if nt != nil && nt.sub != nil {
		_ = nt.sub.Unsubscribe()
	}
}

// History implements Broker.
func (b *NATSBroker) History(ctx context.Context, topic string, since uint64, limit int) ([]Delivery, Position, error) {
	if !ValidName(topic) {
		return nil, Position{}, ErrTopicName
	}
	if err := b.Healthy(); err != nil {
		return nil, Position{}, err
	}
	msgs, err := b.fetch(ctx, b.SubjectFor(topic), 0, b.cfg.HistorySize)
	if err != nil {
		return nil, Position{}, fmt.Errorf("%w: %v", ErrBrokerUnavailable, err)
	}
	var all []Delivery
	for _, m := range msgs {
		if d, _, ok := parseDelivery(topic, m); ok {
			all = append(all, d)
		}
	}
	if len(all) == 0 {
		return nil, Position{}, nil
	}
	pos := Position{Seq: all[len(all)-1].Seq, Epoch: all[len(all)-1].Epoch}
	var out []Delivery
	for _, d := range all {
		if d.Epoch == pos.Epoch && d.Seq > since {
			out = append(out, d)
		}
	}
	if limit >= 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, pos, nil
}

// receive is one shard's goroutine: it handles the messages and resync
// requests of its topics, one at a time.
func (b *NATSBroker) receive(sh *natsShard) {
	defer b.wg.Done()
	for {
		select {
		case <-b.stop:
			return
		case m := <-sh.msgs:
			b.handle(m)
		case dSubj := <-sh.resync:
			b.resync(dSubj)
		}
	}
}

func (b *NATSBroker) topic(dSubj string) *natsTopic {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[dSubj]
}

// handle delivers one republished message, first filling any gap before it.
func (b *NATSBroker) handle(m *nats.Msg) {
	nt := b.topic(m.Subject)
	if nt == nil {
		return // unsubscribed meanwhile
	}
	nt.mu.Lock()
	defer nt.mu.Unlock()
	if m.Sub != nt.sub {
		return // from an earlier subscription to the topic
	}
	d, sseq, ok := parseDelivery(nt.name, m)
	if !ok {
		b.log.Warn("broker: message without Surge headers", "subject", m.Subject)
		return
	}
	if nt.synced && (d.Epoch != nt.epoch || sseq > nt.stream) {
		if prev, err := strconv.ParseUint(m.Header.Get(hdrPrevSq), 10, 64); err == nil && prev != nt.stream &&
			!b.catchUpLocked(nt, sseq, d.Epoch) {
			// The gap could not be read now: hold this message back too,
			// so the next resync delivers the gap and it in order.
			b.resyncAll.Store(true)
			return
		}
	}
	b.acceptLocked(nt, d, sseq)
}

// acceptLocked delivers d unless it was delivered already. nt.mu must be held.
func (b *NATSBroker) acceptLocked(nt *natsTopic, d Delivery, sseq uint64) bool {
	if nt.synced && d.Epoch == nt.epoch && sseq <= nt.stream {
		b.duplicates.Add(1)
		return false
	}
	nt.synced, nt.last, nt.stream, nt.epoch = true, d.Seq, sseq, d.Epoch
	b.received.Add(1)
	b.h.Deliver(d) // set by Start before the receive goroutines run
	return true
}

// catchUpLocked delivers the stored messages of nt this node has not seen
// and that precede stream sequence before; false when the stream could not
// be read. nt.mu must be held.
func (b *NATSBroker) catchUpLocked(nt *natsTopic, before uint64, epoch string) bool {
	from := nt.stream + 1
	if epoch != nt.epoch {
		from = 0 // a new lifetime (or a new stream): look at all that is kept
	}
	if from >= before {
		return true
	}
	msgs, err := b.fetch(context.Background(), nt.tSubj, from, b.cfg.HistorySize)
	if err != nil {
		b.log.Warn("broker: cannot fill a gap from the stream yet; retrying", "topic", nt.name, "err", err)
		return false
	}
	n := 0
	for _, m := range msgs {
		d, sseq, ok := parseDelivery(nt.name, m)
		if !ok || sseq >= before {
			continue
		}
		if nt.synced && d.Epoch == nt.epoch && d.Seq > nt.last+1 {
			b.lost.Add(int64(d.Seq - nt.last - 1)) // no longer retained
		}
		if b.acceptLocked(nt, d, sseq) {
			n++
		}
	}
	b.repaired.Add(int64(n))
	return true
}

// resync compares a subscribed topic with its last stored message and
// catches up (after a reconnect or a slow-consumer drop).
func (b *NATSBroker) resync(dSubj string) {
	nt := b.topic(dSubj)
	if nt == nil || !b.nc.IsConnected() {
		return
	}
	d, sseq, err := b.lastMsg(context.Background(), nt.tSubj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return
	}
	if err != nil {
		b.resyncAll.Store(true) // try again on the next tick
		return
	}
	nt.mu.Lock()
	defer nt.mu.Unlock()
	if b.topic(dSubj) != nt {
		return
	}
	d.Topic = nt.name
	switch {
	case !nt.synced:
		// No position yet (Subscribe is reading it, or could not): start
		// after the newest stored message. Delivering it here would hand
		// the subscriber a message its Subscribe position says it has.
		nt.synced, nt.last, nt.stream, nt.epoch = true, d.Seq, sseq, d.Epoch
	case d.Epoch != nt.epoch || sseq > nt.stream:
		if !b.catchUpLocked(nt, sseq+1, d.Epoch) {
			b.resyncAll.Store(true) // try again on the next tick
		}
	}
}

// Close implements Broker.
func (b *NATSBroker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	clear(b.subs)
	b.mu.Unlock()
	close(b.stop)
	b.nc.Close()
	b.wg.Wait()
	return nil
}
