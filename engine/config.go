package engine

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/surgepush/surge/conn"
	"github.com/surgepush/surge/poller"
)

// Config is the whole server configuration. The zero value is valid: New
// fills every unset field with the default named in its comment. Every field
// can also be set from a YAML config file (key = the yaml tag), an
// environment variable (SURGE_ + the tag in upper case, '-' as '_') and a
// command-line flag (--the tag); flags win over the environment, which wins
// over the file.
type Config struct {
	// Listen is the TCP address for WebSocket and HTTP. Default ":8080".
	Listen string `yaml:"listen" help:"address to listen on (WebSocket and HTTP API)"`
	// Echo enables the conformance echo endpoint GET /echo. Default false.
	Echo bool `yaml:"echo" help:"enable the /echo conformance endpoint"`
	// AllowPublish lets WebSocket clients use the publish op. Default false.
	AllowPublish bool `yaml:"allow-publish" help:"allow clients to publish over WebSocket"`
	// PublishPrefixes limits client publishing to topics starting with one
	// of these comma-separated prefixes. Default "" (any topic, when allowed).
	PublishPrefixes string `yaml:"publish-prefixes" help:"comma-separated topic prefixes clients may publish to (empty: all, when allowed)"`

	// Deflate negotiates permessage-deflate (RFC 7692) when clients offer it.
	// Default true; set false to refuse it.
	Deflate *bool `yaml:"deflate" help:"negotiate permessage-deflate when offered"`
	// DeflateThreshold: frames with payloads at least this long are
	// compressed (once per message). Default 512 bytes.
	DeflateThreshold int `yaml:"deflate-threshold" help:"compress messages whose payload is at least this many bytes"`

	// SlowPolicy is what a full write queue does with a new message:
	// disconnect (close 1008 "slow consumer"), drop-oldest or conflate.
	// Default disconnect. Per-prefix overrides go in TopicRules.
	SlowPolicy string `yaml:"slow-policy" help:"on a full write queue: disconnect, drop-oldest or conflate"`
	// HistorySize is how many recent messages each topic keeps for
	// `since` recovery. Default 64; 0 turns history off.
	HistorySize *int `yaml:"history-size" help:"messages retained per topic for since-recovery (0: off)"`
	// HistoryTTL drops retained messages older than this. Default 2m.
	HistoryTTL time.Duration `yaml:"history-ttl" help:"age limit of retained messages"`
	// TopicRules overrides policy and history by topic prefix, e.g.
	// "prices.:policy=conflate,history=0;lobby.:history=200,ttl=10m".
	TopicRules string `yaml:"topic-rules" help:"per-prefix overrides: prefix:policy=…,history=N,ttl=D;…"`
	// TopicIdleTTL: a topic with no subscriber and no publish for this long
	// is reclaimed with its seq and history. Default 2m (at least the history TTL).
	TopicIdleTTL time.Duration `yaml:"topic-idle-ttl" help:"reclaim topics idle and unsubscribed for this long"`
	// FanoutShard is the number of subscribers one fan-out task serves;
	// smaller topics are delivered inline. Default 512.
	FanoutShard int `yaml:"fanout-shard" help:"subscribers per fan-out task (smaller topics are served inline)"`
	// FanoutWorkers bounds the fan-out pool. Default 4 × GOMAXPROCS.
	FanoutWorkers int `yaml:"fanout-workers" help:"fan-out pool size" default:"4 × GOMAXPROCS"`

	// Broker is the NATS server (nats://host:4222, comma-separated for a
	// cluster) through which several Surge processes share topics, with one
	// seq per topic for all of them. Default "" (single node).
	Broker string `yaml:"broker" help:"NATS URL (nats://host:4222) to share topics with other Surge nodes; empty: single node"`
	// BrokerCreds is a NATS credentials file. Default none.
	BrokerCreds string `yaml:"broker-creds" help:"NATS credentials file (JWT + NKey) for --broker"`
	// BrokerTLSCA, BrokerTLSCert and BrokerTLSKey configure TLS to NATS
	// (a tls:// URL with the system roots needs none of them).
	BrokerTLSCA   string `yaml:"broker-tls-ca" help:"CA file to verify the NATS server"`
	BrokerTLSCert string `yaml:"broker-tls-cert" help:"client certificate file for NATS"`
	BrokerTLSKey  string `yaml:"broker-tls-key" help:"client key file for NATS"`
	// BrokerStream is the JetStream stream that holds the topics; its
	// subjects are <lower-case name>.t.<topic>. Default "SURGE".
	BrokerStream string `yaml:"broker-stream" help:"JetStream stream for --broker (subjects: its lower-case name + .t.<topic>)"`

	// MaxMessageSize bounds one received WebSocket message (close 1009). Default 1 MiB.
	MaxMessageSize int64 `yaml:"max-message-size" help:"largest client message in bytes (close 1009 above)"`
	// MaxHeaderBytes bounds an HTTP request head (431). Default 8 KiB.
	MaxHeaderBytes int `yaml:"max-header-bytes" help:"largest HTTP request head in bytes (431 above)"`
	// MaxBodyBytes bounds an HTTP request body (413). Default 1 MiB.
	MaxBodyBytes int64 `yaml:"max-body-bytes" help:"largest HTTP request body in bytes (413 above)"`
	// WriteQueueFrames bounds frames waiting for one socket. Default 1024.
	WriteQueueFrames int `yaml:"write-queue-frames" help:"frames queued per connection before it is closed as a slow consumer"`
	// WriteQueueBytes bounds bytes waiting for one socket. Default 4 MiB.
	WriteQueueBytes int `yaml:"write-queue-bytes" help:"bytes queued per connection before it is closed as a slow consumer"`

	// PingInterval: a connection silent this long is pinged. Default 25s.
	PingInterval time.Duration `yaml:"ping-interval" help:"ping connections silent for this long"`
	// PongTimeout: a pinged connection silent this long is closed. Default 10s.
	PongTimeout time.Duration `yaml:"pong-timeout" help:"close pinged connections silent for this long"`
	// HandshakeTimeout bounds the HTTP request phase. Default 5s.
	HandshakeTimeout time.Duration `yaml:"handshake-timeout" help:"deadline for a complete HTTP request head"`
	// CloseTimeout bounds the closing handshake. Default 3s.
	CloseTimeout time.Duration `yaml:"close-timeout" help:"deadline for the closing handshake"`
	// ShutdownTimeout bounds a graceful shutdown (used by cmd/surge). Default 15s.
	ShutdownTimeout time.Duration `yaml:"shutdown-timeout" help:"how long shutdown may take in all"`
	// DrainWindow spreads the 1001 closes of a shutdown evenly over this
	// long, so clients are not all disconnected at once. Default 5s (cut to
	// fit the shutdown timeout).
	DrainWindow time.Duration `yaml:"drain-window" help:"spread shutdown closes evenly over this long"`
	// ReconnectJitter: each shutdown close reason carries
	// {"reconnect_after_ms":N} with N uniform in [0, ReconnectJitter), so
	// clients come back spread out. Default 10s.
	ReconnectJitter time.Duration `yaml:"reconnect-jitter" help:"spread of the reconnect hints sent on shutdown"`

	// Workers bounds the handler pool (process-wide). Default 64 × GOMAXPROCS
	// (the docs show the value on the machine that generated them).
	Workers int `yaml:"workers" help:"handler pool size" default:"64 × GOMAXPROCS"`
	// ReadBufferSize is netpoll's per-connection buffer node size (process-wide). Default 256.
	ReadBufferSize int `yaml:"read-buffer-size" help:"per-connection read buffer node size in bytes"`

	// PprofListen, when set, serves net/http/pprof on a separate admin
	// listener (e.g. 127.0.0.1:6060). Default off.
	PprofListen string `yaml:"pprof-listen" help:"admin address for /debug/pprof (off when empty; bind it to localhost)"`

	// AuthHS256SecretFile holds the HS256 secret (≥ 32 bytes) that signs
	// client JWTs. Setting it (or AuthPublicKeyFile) turns authentication on.
	// Default off.
	AuthHS256SecretFile string `yaml:"auth-hs256-secret-file" help:"file with the HS256 JWT secret (turns auth on)"`
	// AuthPublicKeyFile holds PEM public keys (RSA or ECDSA P-256) or a JWKS
	// document for RS256/ES256 JWTs. Default off.
	AuthPublicKeyFile string `yaml:"auth-public-key-file" help:"file with PEM public keys or a JWKS for RS256/ES256 JWTs (turns auth on)"`
	// AuthAudience, when set, must appear in the token's aud.
	AuthAudience string `yaml:"auth-audience" help:"required JWT audience"`
	// AuthIssuer, when set, must equal the token's iss.
	AuthIssuer string `yaml:"auth-issuer" help:"required JWT issuer"`
	// PublishKeyFile holds the API key for POST /v1/publish (sent as
	// Authorization: Bearer KEY). With auth on, a JWT with publish claims is
	// accepted too. Default: the publish API is open when auth is off.
	PublishKeyFile string `yaml:"publish-key-file" help:"file with the API key POST /v1/publish requires"`
	// AllowedOrigins lists browser origins allowed to connect, comma
	// separated, exact ("https://app.example.com") or with a wildcard host
	// ("https://*.example.com"); others get 403. Requests without Origin
	// (non-browser clients) are allowed. Default "" (any origin).
	AllowedOrigins string `yaml:"allowed-origins" help:"comma-separated allowed Origin values (wildcards like https://*.example.com); empty: any"`

	// TLSListen, when set, serves wss:// and https:// on this address too
	// (e.g. ":8443") with TLSCertFile and TLSKeyFile; SIGHUP reloads them.
	// Default off. See tuning/README.md for the per-connection cost and for
	// terminating TLS in a proxy instead.
	TLSListen string `yaml:"tls-listen" help:"address for the TLS listener (wss://, https://); off when empty"`
	// TLSCertFile is the PEM certificate chain for TLSListen.
	TLSCertFile string `yaml:"tls-cert-file" help:"PEM certificate chain for --tls-listen"`
	// TLSKeyFile is the PEM private key for TLSListen.
	TLSKeyFile string `yaml:"tls-key-file" help:"PEM private key for --tls-listen"`

	// MaxConnections bounds open sockets; more get 503 with Retry-After.
	// Default 0 (no limit besides the fd limit).
	MaxConnections int `yaml:"max-connections" help:"maximum open sockets (503 above; 0: no limit)"`
	// ConnRate bounds new connections per second in total (429 above).
	// Default 0 (no limit).
	ConnRate int `yaml:"conn-rate" help:"new connections per second in total (429 above; 0: no limit)"`
	// ConnRatePerIP bounds new connections per second per source IP (429
	// above). Default 0 (no limit).
	ConnRatePerIP int `yaml:"conn-rate-per-ip" help:"new connections per second per source IP (429 above; 0: no limit)"`
	// OpsPerSecond bounds in-band client ops per connection (burst twice
	// that); a client above it is closed 1008. Default 50.
	OpsPerSecond int `yaml:"ops-per-second" help:"client ops per second per connection (close 1008 above)"`
	// MaxSubscriptions bounds topics per connection. Default 1000.
	MaxSubscriptions int `yaml:"max-subscriptions" help:"subscriptions per connection"`

	// LogLevel is debug, info, warn or error. Default info. Used by cmd/surge.
	LogLevel string `yaml:"log-level" help:"debug, info, warn or error"`
	// LogSample bounds log records per second per (message, reason) group,
	// so a storm of bad clients cannot flood the log. Default 10.
	LogSample int `yaml:"log-sample" help:"log records per second per message and reason (the rest are counted)"`
	// LogFormat is text or json. Default text. Used by cmd/surge.
	LogFormat string `yaml:"log-format" help:"text or json"`
}

// Normalize fills the defaults of unset fields that the engine itself owns;
// component defaults (conn, poller) are filled by New.
func (c *Config) Normalize() {
	if c.Listen == "" {
		c.Listen = ":8080"
	}
	// Component defaults live with the components; copy them here so that
	// help, docs and /v1/stats show the values in force.
	var cc conn.Config
	cc.Normalize()
	setDefault(&c.MaxMessageSize, cc.MaxMessageSize)
	setDefault(&c.MaxHeaderBytes, cc.MaxHeaderBytes)
	setDefault(&c.MaxBodyBytes, cc.MaxBodyBytes)
	setDefault(&c.WriteQueueFrames, cc.WriteQueueFrames)
	setDefault(&c.WriteQueueBytes, cc.WriteQueueBytes)
	setDefault(&c.PingInterval, cc.PingInterval)
	setDefault(&c.PongTimeout, cc.PongTimeout)
	setDefault(&c.HandshakeTimeout, cc.HandshakeTimeout)
	setDefault(&c.CloseTimeout, cc.CloseTimeout)
	if c.Deflate == nil {
		t := true
		c.Deflate = &t
	}
	setDefault(&c.DeflateThreshold, 512)
	if c.SlowPolicy == "" {
		c.SlowPolicy = "disconnect"
	}
	if c.HistorySize == nil {
		n := 64
		c.HistorySize = &n
	}
	setDefault(&c.HistoryTTL, 2*time.Minute)
	setDefault(&c.TopicIdleTTL, max(2*time.Minute, c.HistoryTTL))
	setDefault(&c.FanoutShard, 512)
	setDefault(&c.FanoutWorkers, 4*runtime.GOMAXPROCS(0))
	if c.BrokerStream == "" {
		c.BrokerStream = "SURGE"
	}
	var pc poller.Config
	pc.Normalize()
	setDefault(&c.Workers, pc.Workers)
	setDefault(&c.ReadBufferSize, pc.BufferSize)
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 15 * time.Second
	}
	setDefault(&c.DrainWindow, 5*time.Second)
	setDefault(&c.ReconnectJitter, 10*time.Second)
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	setDefault(&c.LogSample, 10)
	setDefault(&c.OpsPerSecond, 50)
	setDefault(&c.MaxSubscriptions, 1000)
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
}

func setDefault[T int | int64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// BindFlags registers one flag per Config field on fs, writing into c.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	eachField(c, func(name, help string, v reflect.Value) {
		fs.Var(fieldValue{v}, name, help)
	})
}

// LoadFile reads a YAML config file into c (unknown keys are an error).
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("engine: config file: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("engine: config file %s: %w", path, err)
	}
	known := map[string]reflect.Value{}
	eachField(c, func(name, _ string, v reflect.Value) { known[name] = v })
	for k, val := range raw {
		v, ok := known[k]
		if !ok {
			return fmt.Errorf("engine: config file %s: unknown setting %q", path, k)
		}
		if err := (fieldValue{v}).Set(fmt.Sprint(val)); err != nil {
			return fmt.Errorf("engine: config file %s: %s: %w", path, k, err)
		}
	}
	return nil
}

// LoadEnv applies SURGE_* variables found by lookup (os.LookupEnv in production).
func (c *Config) LoadEnv(lookup func(string) (string, bool)) error {
	var err error
	eachField(c, func(name, _ string, v reflect.Value) {
		key := EnvName(name)
		if s, ok := lookup(key); ok && err == nil {
			if e := (fieldValue{v}).Set(s); e != nil {
				err = fmt.Errorf("engine: %s: %w", key, e)
			}
		}
	})
	return err
}

// EnvName returns the environment variable for a setting name.
func EnvName(name string) string {
	return "SURGE_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Settings describes every setting with its default, for documentation.
func Settings() []Setting {
	var d Config
	d.Normalize()
	var out []Setting
	rt := reflect.TypeOf(d)
	eachField(&d, func(name, help string, v reflect.Value) {
		def := fieldValue{v}.String()
		for i := 0; i < rt.NumField(); i++ {
			if f := rt.Field(i); f.Tag.Get("yaml") == name && f.Tag.Get("default") != "" {
				def = f.Tag.Get("default") // machine-dependent defaults
			}
		}
		out = append(out, Setting{Name: name, Env: EnvName(name), Help: help, Default: def})
	})
	return out
}

// Setting documents one configuration setting.
type Setting struct{ Name, Env, Help, Default string }

func eachField(c *Config, f func(name, help string, v reflect.Value)) {
	rv := reflect.ValueOf(c).Elem()
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		sf := rt.Field(i)
		name := sf.Tag.Get("yaml")
		if name == "" || name == "-" {
			continue
		}
		f(name, sf.Tag.Get("help"), rv.Field(i))
	}
}

// fieldValue adapts a Config field to flag.Value.
type fieldValue struct{ v reflect.Value }

func (f fieldValue) String() string {
	if !f.v.IsValid() {
		return ""
	}
	if f.v.Kind() == reflect.Pointer {
		if f.v.IsNil() {
			return ""
		}
		return fieldValue{f.v.Elem()}.String()
	}
	switch x := f.v.Interface().(type) {
	case time.Duration:
		return x.String()
	default:
		return fmt.Sprint(x)
	}
}

func (f fieldValue) IsBoolFlag() bool {
	if !f.v.IsValid() {
		return false
	}
	k := f.v.Kind()
	return k == reflect.Bool || k == reflect.Pointer && f.v.Type().Elem().Kind() == reflect.Bool
}

func (f fieldValue) Set(s string) error {
	if f.v.Kind() == reflect.Pointer {
		if f.v.IsNil() {
			f.v.Set(reflect.New(f.v.Type().Elem()))
		}
		return fieldValue{f.v.Elem()}.Set(s)
	}
	switch f.v.Interface().(type) {
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		f.v.SetInt(int64(d))
		return nil
	}
	switch f.v.Kind() {
	case reflect.String:
		f.v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		f.v.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := parseSize(s)
		if err != nil {
			return err
		}
		f.v.SetInt(n)
	default:
		return fmt.Errorf("unsupported setting type %s", f.v.Kind())
	}
	return nil
}

// parseSize accepts plain integers and the suffixes KiB, MiB, GiB (or K, M, G).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSuffix(s, u.suf), u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return n * mult, nil
}

// MarshalJSON renders durations as strings so reports stay readable.
func (c Config) MarshalJSON() ([]byte, error) {
	m := map[string]string{}
	eachField(&c, func(name, _ string, v reflect.Value) { m[name] = fieldValue{v}.String() })
	return json.Marshal(m)
}
