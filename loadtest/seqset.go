package loadtest

import "math/bits"

// seqSet is a set of positive integers that arrive mostly in ascending
// order (a subscriber's received publish counters). It is a bitmap that
// drops its leading words once they are full, so it stays a few words long
// while nothing is missing and grows by one bit per number past the first
// hole. Not safe for concurrent use.
type seqSet struct {
	// base is a multiple of 64; every number n with n−1 < base is in the
	// set. Bit j of words[i] stands for n = base + 64·i + j + 1.
	base  uint64
	words []uint64
}

// add inserts n (≥ 1) and reports whether it was new.
func (s *seqSet) add(n uint64) bool {
	x := n - 1
	if x < s.base {
		return false
	}
	off := x - s.base
	w, bit := int(off/64), uint64(1)<<(off%64)
	for len(s.words) <= w {
		s.words = append(s.words, 0)
	}
	if s.words[w]&bit != 0 {
		return false
	}
	s.words[w] |= bit
	for len(s.words) > 0 && s.words[0] == ^uint64(0) {
		s.words = s.words[1:]
		s.base += 64
	}
	if len(s.words) == 0 {
		s.words = nil // let a long-lived set release its old backing array
	}
	return true
}

// has reports whether n (≥ 1) is in the set.
func (s *seqSet) has(n uint64) bool {
	x := n - 1
	if x < s.base {
		return true
	}
	off := x - s.base
	w := int(off / 64)
	return w < len(s.words) && s.words[w]&(1<<(off%64)) != 0
}

// countIn returns how many numbers of the set are in other, a plain bitmap
// (bit j of other[i] stands for n = 64·i + j + 1).
func (s *seqSet) countIn(other []uint64) int64 {
	var c int
	full := int(s.base / 64)
	for i := 0; i < full && i < len(other); i++ {
		c += bits.OnesCount64(other[i])
	}
	for i, w := range s.words {
		if full+i >= len(other) {
			break
		}
		c += bits.OnesCount64(w & other[full+i])
	}
	return int64(c)
}

// bitmapSet sets n (≥ 1) in a plain bitmap of the layout countIn reads and
// reports whether it was new. The bitmap must be long enough.
func bitmapSet(b []uint64, n uint64) bool {
	x := n - 1
	w, bit := x/64, uint64(1)<<(x%64)
	if b[w]&bit != 0 {
		return false
	}
	b[w] |= bit
	return true
}
