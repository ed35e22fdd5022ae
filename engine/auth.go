package engine

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Authentication: clients present a JWT, checked before the upgrade (401
// when missing or invalid). Claims:
//
//	sub        the user id
//	subscribe  topic patterns the client may subscribe to
//	publish    topic patterns the client may publish to (with --allow-publish)
//	exp, nbf   checked; a connection whose token expires is closed 1008
//	aud, iss   checked when --auth-audience / --auth-issuer are set
//
// A pattern is an exact topic name, a prefix ending in '*' ("prices.*"
// matches "prices.AAPL" and "prices.x.y"), or "*" for every topic.
//
// The token is taken from, in order: the Authorization: Bearer header, the
// token query parameter, or — for browsers, which cannot set headers on a
// WebSocket — the Sec-WebSocket-Protocol list: new WebSocket(url,
// ["surge.jwt", token]); the server then answers with the subprotocol
// "surge.jwt" (never the token).

// Errors of authentication.
var (
	ErrNoToken   = errors.New("engine: missing token")
	ErrBadToken  = errors.New("engine: invalid token")
	ErrForbidden = errors.New("engine: forbidden by token claims")
)

// JWTSubprotocol is the Sec-WebSocket-Protocol value that marks the next
// list element as a token.
const JWTSubprotocol = "surge.jwt"

// Claims are Surge's JWT claims.
type Claims struct {
	jwt.RegisteredClaims
	Subscribe []string `json:"subscribe,omitempty"`
	Publish   []string `json:"publish,omitempty"`
}

// Grant is what an authenticated client may do.
type Grant struct {
	User      string
	Subscribe []string
	Publish   []string
	Expires   time.Time // zero: no expiry
}

// Allows reports whether topic matches one of patterns.
func Allows(patterns []string, topic string) bool {
	for _, p := range patterns {
		switch {
		case p == "*":
			return true
		case strings.HasSuffix(p, "*"):
			if strings.HasPrefix(topic, p[:len(p)-1]) {
				return true
			}
		case p == topic:
			return true
		}
	}
	return false
}

// authenticator verifies tokens; nil means authentication is off.
type authenticator struct {
	keyFunc jwt.Keyfunc
	parser  *jwt.Parser
}

func newAuthenticator(cfg *Config) (*authenticator, error) {
	var keys []jwt.VerificationKey
	methods := []string{}
	if cfg.AuthHS256SecretFile != "" {
		b, err := os.ReadFile(cfg.AuthHS256SecretFile)
		if err != nil {
			return nil, fmt.Errorf("engine: auth secret: %w", err)
		}
		b = bytes.TrimSpace(b)
		if len(b) < 32 {
			return nil, errors.New("engine: auth secret: want at least 32 bytes")
		}
		keys = append(keys, b)
		methods = append(methods, "HS256")
	}
	if cfg.AuthPublicKeyFile != "" {
		b, err := os.ReadFile(cfg.AuthPublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("engine: auth public key: %w", err)
		}
		k, err := parsePublicKeys(b)
		if err != nil {
			return nil, fmt.Errorf("engine: auth public key %s: %w", cfg.AuthPublicKeyFile, err)
		}
		for _, x := range k {
			keys = append(keys, x)
		}
		methods = append(methods, "RS256", "ES256")
	}
	if len(keys) == 0 {
		return nil, nil
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithLeeway(5 * time.Second)}
	if cfg.AuthAudience != "" {
		opts = append(opts, jwt.WithAudience(cfg.AuthAudience))
	}
	if cfg.AuthIssuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.AuthIssuer))
	}
	return &authenticator{
		parser: jwt.NewParser(opts...),
		keyFunc: func(t *jwt.Token) (any, error) {
			return jwt.VerificationKeySet{Keys: keys}, nil
		},
	}, nil
}

// parsePublicKeys reads PEM public keys (PKIX: RSA or ECDSA) or a JWKS
// document ({"keys":[…]}) of RSA and EC P-256 keys.
func parsePublicKeys(b []byte) ([]any, error) {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		return parseJWKS(t)
	}
	var keys []any
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, err
		}
		if _, ok := k.(crypto.PublicKey); !ok {
			return nil, errors.New("not a public key")
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}

// TokenFrom extracts a token from a request: Authorization header, token
// query parameter, or the Sec-WebSocket-Protocol list after "surge.jwt".
// It returns "" when none is present.
func TokenFrom(authorization, rawQuery, protocols string) string {
	if a := strings.TrimSpace(authorization); len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	if rawQuery != "" {
		if q, err := url.ParseQuery(rawQuery); err == nil {
			if t := strings.TrimSpace(q.Get("token")); t != "" {
				return t
			}
		}
	}
	parts := strings.Split(protocols, ",")
	for i := 0; i+1 < len(parts); i++ {
		if strings.TrimSpace(parts[i]) == JWTSubprotocol {
			return strings.TrimSpace(parts[i+1])
		}
	}
	return ""
}

// verify checks a token and returns the grant.
func (a *authenticator) verify(token string) (Grant, error) {
	if token == "" {
		return Grant{}, ErrNoToken
	}
	var c Claims
	if _, err := a.parser.ParseWithClaims(token, &c, a.keyFunc); err != nil {
		return Grant{}, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	g := Grant{User: c.Subject, Subscribe: c.Subscribe, Publish: c.Publish}
	if c.ExpiresAt != nil {
		g.Expires = c.ExpiresAt.Time
	}
	return g, nil
}

// jwks is the subset of RFC 7517 Surge reads.
type jwks struct {
	Keys []json.RawMessage `json:"keys"`
}
