package engine

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParseOp: the client op parser never panics, and whatever it accepts
// re-encodes to JSON that parses to the same op.
func FuzzParseOp(f *testing.F) {
	for _, s := range []string{
		`{"op":"subscribe","topic":"prices.AAPL","since":1200,"id":"1"}`,
		`{"op":"unsubscribe","topic":"prices.AAPL","id":"2"}`,
		`{"op":"publish","topic":"lobby.7","data":{"move":"e4"},"id":3,"key":"k"}`,
		`{"op":"subscribe","topic":"x","since":18446744073709551615,"epoch":"abc"}`,
		`{"op":1}`, `[]`, `null`, `{"since":-1}`, `{"data":`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := parseOp(b)
		if err != nil {
			return
		}
		again, err := json.Marshal(op)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", op, err)
		}
		op2, err := parseOp(again)
		if err != nil || op2.Op != op.Op || op2.Topic != op.Topic || (op.Since == nil) != (op2.Since == nil) {
			t.Fatalf("round trip %q → %q: %+v vs %+v (%v)", b, again, op, op2, err)
		}
	})
}

// FuzzTokenFrom: token extraction never panics, never returns surrounding
// whitespace, and a token found in the Sec-WebSocket-Protocol list is an
// element of that list.
func FuzzTokenFrom(f *testing.F) {
	f.Add("Bearer abc.def.ghi", "", "")
	f.Add("", "token=abc.def&topic=x", "")
	f.Add("", "", "surge.jwt, abc.def.ghi")
	f.Add("bearer", "token=%zz", "surge.jwt")
	f.Add("Basic xyz", "token=", "a, surge.jwt,  b ")
	f.Fuzz(func(t *testing.T, auth, query, protocols string) {
		tok := TokenFrom(auth, query, protocols)
		if tok != strings.TrimSpace(tok) {
			t.Fatalf("token %q has surrounding space", tok)
		}
		if tok == "" || strings.HasPrefix(strings.ToLower(strings.TrimSpace(auth)), "bearer ") || strings.Contains(query, "token=") {
			return
		}
		found := false
		for _, p := range strings.Split(protocols, ",") {
			if strings.TrimSpace(p) == tok {
				found = true
			}
		}
		if !found {
			t.Fatalf("token %q is not an element of %q", tok, protocols)
		}
	})
}
