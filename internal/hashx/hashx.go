// Package hashx holds the hashes that placement depends on: request homes
// (rendezvous over partitions) and work ownership (rendezvous over cluster
// members). Every node, and every version, must compute the same values,
// so they never change.
package hashx

// FNV64 is FNV-1a over s.
func FNV64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// Mix64 is the splitmix64 finalizer.
func Mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
