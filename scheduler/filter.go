package scheduler

import (
	"math"

	"github.com/stockd/stockd/internal/hashx"
)

// filter is a Bloom filter of request ids. Once a SKU is sold out its set of
// successful request ids is final; the filter answers "certainly not among
// them" without I/O for almost every late request, and "maybe" sends the
// rest to Redis, where their records give the true answer.
type filter struct {
	bits []uint64
	m    uint64
	k    int
}

// newFilter sizes a filter for n ids at about 0.1% false positives: 14.4
// bits (1.8 bytes) per id. A false positive costs a take script call and
// a request to the walk; at 1% (9.6 bits) they were most of the Redis
// work of a sold-out SKU under load (issue 13).
func newFilter(n int) *filter {
	if n < 1 {
		n = 1
	}
	m := uint64(math.Ceil(float64(n) * 14.4)) // bits per id for 0.1%
	m = (m + 63) &^ 63
	return &filter{bits: make([]uint64, m/64), m: m, k: 10}
}

func (f *filter) add(id string) {
	h1, h2 := hash2(id)
	for i := 0; i < f.k; i++ {
		b := (h1 + uint64(i)*h2) % f.m
		f.bits[b/64] |= 1 << (b % 64)
	}
}

func (f *filter) mayContain(id string) bool {
	h1, h2 := hash2(id)
	for i := 0; i < f.k; i++ {
		b := (h1 + uint64(i)*h2) % f.m
		if f.bits[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

// hash2 gives two independent 64-bit hashes (double hashing).
func hash2(s string) (uint64, uint64) {
	h := hashx.FNV64(s)
	return h, hashx.Mix64(h) | 1
}
