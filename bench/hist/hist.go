// Package hist is a small HDR-style latency histogram.
//
// Values are durations recorded in nanoseconds into log-linear buckets: every
// power-of-two range [2^k, 2^(k+1)) is split into 128 equal sub-buckets, so a
// bucket is at most 1/128 (~0.78%) of its lower bound wide, and a quantile
// reported as the bucket midpoint is within ~0.4% of the true sample value.
// Values below 256ns are recorded exactly. The trackable range is 1ns..60s;
// larger values are clamped to 60s (the exact maximum is still kept).
//
// A Histogram is not safe for concurrent use: give every goroutine its own
// and Merge them at the end. Record never allocates and takes no lock.
package hist

import (
	"math"
	"math/bits"
	"time"
)

const (
	subBits  = 7
	subCount = 1 << subBits // sub-buckets per octave (upper half)
	// values < 2*subCount are stored exactly (shift 0)
	exactCount = 2 * subCount

	// MaxValue is the largest trackable value; larger values are clamped.
	MaxValue = 60 * time.Second
)

// numBuckets is the index of MaxValue plus one.
var numBuckets = index(int64(MaxValue)) + 1

// Histogram records durations. The zero value is not usable; call New.
type Histogram struct {
	counts []uint64
	total  uint64
	sum    float64 // ns, for the mean
	min    int64
	max    int64
}

// New returns an empty histogram.
func New() *Histogram {
	return &Histogram{counts: make([]uint64, numBuckets), min: math.MaxInt64}
}

// index maps a non-negative value (ns) to its bucket.
func index(v int64) int {
	u := uint64(v)
	if u < exactCount {
		return int(u)
	}
	shift := bits.Len64(u) - (subBits + 1) // >= 1; u>>shift in [subCount, 2*subCount)
	return exactCount + (shift-1)*subCount + int(u>>uint(shift)) - subCount
}

// bounds returns the [lo, hi] range of values (ns) mapping to bucket i.
func bounds(i int) (lo, hi int64) {
	if i < exactCount {
		return int64(i), int64(i)
	}
	j := i - exactCount
	shift := j/subCount + 1
	sub := int64(j%subCount + subCount)
	lo = sub << uint(shift)
	hi = lo + (1 << uint(shift)) - 1
	return lo, hi
}

// Record adds one observation. Negative durations count as 0.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.total++
	h.sum += float64(v)
	if v > int64(MaxValue) {
		v = int64(MaxValue)
	}
	h.counts[index(v)]++
}

// Merge adds all observations of o to h. o is not modified.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.total == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.sum += o.sum
	if o.min < h.min {
		h.min = o.min
	}
	if o.max > h.max {
		h.max = o.max
	}
}

// Reset empties the histogram.
func (h *Histogram) Reset() {
	clear(h.counts)
	h.total, h.sum, h.min, h.max = 0, 0, math.MaxInt64, 0
}

// Count is the number of recorded observations.
func (h *Histogram) Count() uint64 { return h.total }

// Min is the exact smallest observation (0 if empty).
func (h *Histogram) Min() time.Duration {
	if h.total == 0 {
		return 0
	}
	return time.Duration(h.min)
}

// Max is the exact largest observation (0 if empty).
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the exact arithmetic mean (0 if empty).
func (h *Histogram) Mean() time.Duration {
	if h.total == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.total))
}

// Quantile returns the value at quantile q (0..1), i.e. the smallest
// recorded value v such that at least q of all observations are <= v,
// approximated by the midpoint of its bucket and clamped to [Min, Max].
// Returns 0 if the histogram is empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	if q <= 0 {
		return time.Duration(h.min)
	}
	if q >= 1 {
		return time.Duration(h.max)
	}
	rank := uint64(math.Ceil(q * float64(h.total)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		if c == 0 {
			continue
		}
		seen += c
		if seen >= rank {
			lo, hi := bounds(i)
			v := lo + (hi-lo)/2
			if v < h.min {
				v = h.min
			}
			if v > h.max {
				v = h.max
			}
			return time.Duration(v)
		}
	}
	return time.Duration(h.max)
}
