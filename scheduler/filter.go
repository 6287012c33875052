package scheduler

import "math"

// filter is a Bloom filter of request ids. Once a SKU is sold out its set of
// successful request ids is final; the filter answers "certainly not among
// them" without I/O for almost every late request, and "maybe" sends the
// rest to Redis, where their records give the true answer.
type filter struct {
	bits []uint64
	m    uint64
	k    int
}

// newFilter sizes a filter for n ids at about 1% false positives.
func newFilter(n int) *filter {
	if n < 1 {
		n = 1
	}
	m := uint64(math.Ceil(float64(n) * 9.6)) // bits per id for 1%
	m = (m + 63) &^ 63
	return &filter{bits: make([]uint64, m/64), m: m, k: 7}
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
	h := fnv64(s)
	return h, mix64(h) | 1
}

// fnv64 is FNV-1a. Partition homes depend on it across nodes and versions:
// changing it would send retries of in-flight requests to other homes.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is the splitmix64 finalizer.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
