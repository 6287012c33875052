// Package hotstats counts the hot endpoint's answers per SKU for the
// status page, and keeps the last minute of them as per-second samples in
// fixed-size rings (Window), so that the page shows rates and latency
// without Prometheus.
//
// Counters is written on the hot path: one atomic add for the outcome and
// one for the latency bucket, no lock, no allocation. The sampler (one
// goroutine, Series.Add) takes the counts with Swap once a second, so the
// counters are not monotonic and have one reader only; Prometheus keeps
// its own counters (stockd_deductions_total).
package hotstats

import (
	"math"
	"math/bits"
	"strconv"
	"sync/atomic"
	"time"
)

// Outcome is what a deduction was answered.
type Outcome int

// The outcomes the status page shows.
const (
	OK          Outcome = iota // 200, units taken
	SoldOut                    // 409 sold_out
	Unavailable                // 503
	Shed                       // 429, not admitted
	NumOutcomes
)

// Latency buckets: bucket i holds durations below 2^(minShift+i) ns, the
// last one everything longer. 2^16 ns is 65.5 µs; bucket 17 ends at 8.6 s.
const (
	minShift   = 16
	NumBuckets = 18
)

// BucketUpper is the upper bound of bucket i, in seconds (+Inf for the last).
func BucketUpper(i int) float64 {
	if i >= NumBuckets-1 {
		return math.Inf(1)
	}
	return float64(uint64(1)<<(minShift+i)) / 1e9
}

func bucketOf(d time.Duration) int {
	if d < 0 {
		d = 0
	}
	i := bits.Len64(uint64(d) >> minShift)
	if i >= NumBuckets {
		i = NumBuckets - 1
	}
	return i
}

// Counters are one SKU's answers since the sampler last took them.
type Counters struct {
	n   [NumOutcomes]atomic.Uint64
	lat [NumBuckets]atomic.Uint64
}

// Count records an answer that did not wait for a decision (a 429).
func (c *Counters) Count(o Outcome) { c.n[o].Add(1) }

// Observe records a decided deduction and how long it took.
func (c *Counters) Observe(o Outcome, d time.Duration) {
	c.n[o].Add(1)
	c.lat[bucketOf(d)].Add(1)
}

// Sample is one interval's counts.
type Sample struct {
	N   [NumOutcomes]uint32
	Lat [NumBuckets]uint32
}

// Take moves the counts into a Sample and zeroes them. Increments that
// race with it land in this sample or the next, never in neither.
func (c *Counters) Take() (s Sample, any bool) {
	for i := range c.n {
		if c.n[i].Load() != 0 {
			any = true
			break
		}
	}
	if !any {
		return s, false
	}
	for i := range c.n {
		s.N[i] = sat32(c.n[i].Swap(0))
	}
	for i := range c.lat {
		s.Lat[i] = sat32(c.lat[i].Swap(0))
	}
	return s, true
}

func sat32(v uint64) uint32 {
	if v > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(v)
}

// Merge adds o to s (a node-wide sample from per-SKU ones).
func (s *Sample) Merge(o *Sample) {
	for i := range s.N {
		s.N[i] = satAdd(s.N[i], o.N[i])
	}
	for i := range s.Lat {
		s.Lat[i] = satAdd(s.Lat[i], o.Lat[i])
	}
}

func satAdd(a, b uint32) uint32 {
	if a > math.MaxUint32-b {
		return math.MaxUint32
	}
	return a + b
}

// Quantile estimates the q-quantile of latency, in seconds, from bucket
// counts, interpolating linearly inside the bucket as Prometheus's
// histogram_quantile does; NaN without observations. A quantile in the
// last (open) bucket is reported as that bucket's lower bound.
func Quantile(q float64, lat []uint64) float64 {
	var total uint64
	for _, n := range lat {
		total += n
	}
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	var cum uint64
	for i, n := range lat {
		if n == 0 {
			continue
		}
		if float64(cum+n) >= rank {
			lo := 0.0
			if i > 0 {
				lo = BucketUpper(i - 1)
			}
			hi := BucketUpper(i)
			if math.IsInf(hi, 1) {
				return lo
			}
			return lo + (hi-lo)*(rank-float64(cum))/float64(n)
		}
		cum += n
	}
	return BucketUpper(len(lat) - 2)
}

// Window is how many samples a series keeps: a minute of one-second
// samples.
const Window = 60

// Ring is a series of the last Window samples. The sampler owns it (no
// locking of its own).
type Ring struct {
	s    [Window]Sample
	n    int // samples held, up to Window
	next int // where the next one goes
	// empty counts the samples in a row without any answer: a ring that
	// saw nothing for a whole window can be dropped.
	empty int
}

// Add appends a sample, dropping the oldest when full.
func (r *Ring) Add(s Sample) {
	r.s[r.next] = s
	r.next = (r.next + 1) % Window
	if r.n < Window {
		r.n++
	}
	if s.N == ([NumOutcomes]uint32{}) {
		r.empty++
	} else {
		r.empty = 0
	}
}

// Idle tells whether the ring saw no answer for a whole window.
func (r *Ring) Idle() bool { return r.empty >= Window }

// Len is the number of samples held.
func (r *Ring) Len() int { return r.n }

// Each calls f with the samples, oldest first.
func (r *Ring) Each(f func(*Sample)) {
	start := (r.next - r.n + Window) % Window
	for i := 0; i < r.n; i++ {
		f(&r.s[(start+i)%Window])
	}
}

// Floats is a series of the last Window values of a gauge; NaN is "no
// value in that interval".
type Floats struct {
	v    [Window]float64
	n    int
	next int
}

// Add appends a value, dropping the oldest when full.
func (f *Floats) Add(v float64) {
	f.v[f.next] = v
	f.next = (f.next + 1) % Window
	if f.n < Window {
		f.n++
	}
}

// Values returns the values, oldest first.
func (f *Floats) Values() []float64 {
	out := make([]float64, 0, f.n)
	start := (f.next - f.n + Window) % Window
	for i := 0; i < f.n; i++ {
		out = append(out, f.v[(start+i)%Window])
	}
	return out
}

// Num is a number in JSON, null when NaN or infinite ("no value").
type Num float64

// MarshalJSON implements json.Marshaler.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'g', 6, 64), nil
}

// Nums converts values.
func Nums(v []float64) []Num {
	out := make([]Num, len(v))
	for i, x := range v {
		out[i] = Num(x)
	}
	return out
}

// View is a ring as the status page reads it: per-interval series,
// oldest first, and figures over the whole window.
type View struct {
	Deductions  []Num `json:"deductions_per_second"`
	SoldOut     []Num `json:"sold_out_per_second"`
	Unavailable []Num `json:"unavailable_per_second"`
	Shed        []Num `json:"shed_per_second"`
	// P99 is each interval's 99th percentile of deduction latency
	// (decided deductions; null when there were none).
	P99    []Num   `json:"p99_seconds"`
	Minute Summary `json:"minute"`
}

// Summary is a window's rates and latency.
type Summary struct {
	// Seconds is the span the figures cover (up to a minute; less on a
	// node that started within it).
	Seconds     float64 `json:"seconds"`
	Deductions  Num     `json:"deductions_per_second"`
	SoldOut     Num     `json:"sold_out_per_second"`
	Unavailable Num     `json:"unavailable_per_second"`
	Shed        Num     `json:"shed_per_second"`
	P99         Num     `json:"p99_seconds"`
	// Answers counts the window's answers of the four kinds.
	Answers uint64 `json:"answers"`
}

// View returns the ring's series; interval is the sampling interval.
func (r *Ring) View(interval time.Duration) View {
	sec := interval.Seconds()
	v := View{
		Deductions: make([]Num, 0, r.n), SoldOut: make([]Num, 0, r.n), Unavailable: make([]Num, 0, r.n),
		Shed: make([]Num, 0, r.n), P99: make([]Num, 0, r.n),
	}
	var tot [NumOutcomes]uint64
	var lat, one [NumBuckets]uint64
	r.Each(func(s *Sample) {
		v.Deductions = append(v.Deductions, Num(float64(s.N[OK])/sec))
		v.SoldOut = append(v.SoldOut, Num(float64(s.N[SoldOut])/sec))
		v.Unavailable = append(v.Unavailable, Num(float64(s.N[Unavailable])/sec))
		v.Shed = append(v.Shed, Num(float64(s.N[Shed])/sec))
		for i, n := range s.N {
			tot[i] += uint64(n)
		}
		for i, n := range s.Lat {
			one[i] = uint64(n)
			lat[i] += uint64(n)
		}
		v.P99 = append(v.P99, Num(Quantile(0.99, one[:])))
	})
	span := float64(r.n) * sec
	v.Minute = Summary{Seconds: span, P99: Num(Quantile(0.99, lat[:]))}
	if span > 0 {
		v.Minute.Deductions = Num(float64(tot[OK]) / span)
		v.Minute.SoldOut = Num(float64(tot[SoldOut]) / span)
		v.Minute.Unavailable = Num(float64(tot[Unavailable]) / span)
		v.Minute.Shed = Num(float64(tot[Shed]) / span)
	}
	for _, n := range tot {
		v.Minute.Answers += n
	}
	return v
}
