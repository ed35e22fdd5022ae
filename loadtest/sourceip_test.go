package loadtest

import (
	"net/netip"
	"slices"
	"testing"
)

func TestParseSourceIPs(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	tests := []struct {
		in      string
		want    []netip.Addr
		wantErr bool
	}{
		{
			in:   "",
			want: nil,
		},
		{
			in:   "127.0.0.2",
			want: addrs("127.0.0.2"),
		},
		{
			in:   "127.0.0.2-127.0.0.5",
			want: addrs("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"),
		},
		{
			in:   "127.0.0.9-127.0.0.9",
			want: addrs("127.0.0.9"),
		},
		{
			in:   "127.0.0.2,127.0.0.7",
			want: addrs("127.0.0.2", "127.0.0.7"),
		},
		{
			in:   " 127.0.0.254 - 127.0.1.1 , 127.0.2.1 ,",
			want: addrs("127.0.0.254", "127.0.0.255", "127.0.1.0", "127.0.1.1", "127.0.2.1"),
		},
		{
			in:   "::1",
			want: addrs("::1"),
		},
		{
			in:   "::ffff:127.0.0.2",
			want: addrs("127.0.0.2"),
		},
		{
			in:      "127.0.0.5-127.0.0.2",
			wantErr: true,
		},
		{
			in:      "127.0.0.1-::1",
			wantErr: true,
		},
		{
			in:      "127.0.0.1-",
			wantErr: true,
		},
		{
			in:      "localhost",
			wantErr: true,
		},
		{
			in:      "127.0.0.300",
			wantErr: true,
		},
		{
			in:      "127.0.0.0-127.255.255.255",
			wantErr: true, // over maxSourceIPs
		},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSourceIPs(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseSourceIPs(%q) = %v, want an error", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSourceIPs(%q): %v", tc.in, err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ParseSourceIPs(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}
