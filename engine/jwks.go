package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
)

// parseJWKS reads RSA ("kty":"RSA": n, e) and EC P-256 ("kty":"EC": x, y)
// public keys from a JWKS document. Other key types are skipped.
func parseJWKS(b []byte) ([]any, error) {
	var set jwks
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, err
	}
	var keys []any
	for _, raw := range set.Keys {
		var k struct {
			Kty, Crv, N, E, X, Y string
		}
		if err := json.Unmarshal(raw, &k); err != nil {
			return nil, err
		}
		dec := func(s string) (*big.Int, error) {
			p, err := base64.RawURLEncoding.DecodeString(s)
			if err != nil {
				return nil, err
			}
			return new(big.Int).SetBytes(p), nil
		}
		switch k.Kty {
		case "RSA":
			n, err := dec(k.N)
			if err != nil {
				return nil, err
			}
			e, err := dec(k.E)
			if err != nil || !e.IsInt64() {
				return nil, errors.New("bad RSA exponent")
			}
			keys = append(keys, &rsa.PublicKey{N: n, E: int(e.Int64())})
		case "EC":
			if k.Crv != "P-256" {
				continue
			}
			x, err := dec(k.X)
			if err != nil {
				return nil, err
			}
			y, err := dec(k.Y)
			if err != nil {
				return nil, err
			}
			keys = append(keys, &ecdsa.PublicKey{Curve: elliptic.P256(), X: x, Y: y})
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable keys in JWKS")
	}
	return keys, nil
}
