package hist

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// exactQuantile uses the same definition as Quantile: smallest value with
// at least q of the samples <= it.
func exactQuantile(sorted []int64, q float64) int64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func checkQuantiles(t *testing.T, name string, h *Histogram, samples []int64) {
	t.Helper()
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	for _, q := range []float64{0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999} {
		want := exactQuantile(sorted, q)
		got := int64(h.Quantile(q))
		if rel := math.Abs(float64(got-want)) / float64(want); rel > 0.01 {
			t.Errorf("%s: q=%v got %v want %v (rel err %.4f)", name, q,
				time.Duration(got), time.Duration(want), rel)
		}
	}
	if h.Min() != time.Duration(sorted[0]) || h.Max() != time.Duration(sorted[len(sorted)-1]) {
		t.Errorf("%s: min/max %v/%v want %v/%v", name, h.Min(), h.Max(),
			time.Duration(sorted[0]), time.Duration(sorted[len(sorted)-1]))
	}
	if h.Count() != uint64(len(samples)) {
		t.Errorf("%s: count %d want %d", name, h.Count(), len(samples))
	}
}

func distributions() map[string]func(r *rand.Rand) int64 {
	return map[string]func(r *rand.Rand) int64{
		// 1µs .. 10ms uniform
		"uniform": func(r *rand.Rand) int64 { return 1000 + r.Int64N(10_000_000) },
		// exponential, mean 1ms, floor 1µs
		"exponential": func(r *rand.Rand) int64 { return 1000 + int64(r.ExpFloat64()*1e6) },
		// log-normal around 500µs with a heavy tail
		"lognormal": func(r *rand.Rand) int64 { return int64(math.Exp(math.Log(5e5) + 1.5*r.NormFloat64())) },
		// bimodal: fast path ~200µs, slow path ~40ms
		"bimodal": func(r *rand.Rand) int64 {
			if r.IntN(100) < 95 {
				return 150_000 + r.Int64N(100_000)
			}
			return 30_000_000 + r.Int64N(20_000_000)
		},
	}
}

func TestQuantilesKnownDistributions(t *testing.T) {
	for name, gen := range distributions() {
		r := rand.New(rand.NewPCG(1, 2))
		h := New()
		samples := make([]int64, 100_000)
		for i := range samples {
			v := gen(r)
			if v < 1000 {
				v = 1000
			}
			if v > int64(MaxValue) {
				v = int64(MaxValue)
			}
			samples[i] = v
			h.Record(time.Duration(v))
		}
		checkQuantiles(t, name, h, samples)
	}
}

func TestMerge(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	gen := distributions()["lognormal"]
	parts := make([]*Histogram, 4)
	for i := range parts {
		parts[i] = New()
	}
	all := New()
	var samples []int64
	for i := 0; i < 100_000; i++ {
		v := max(gen(r), 1000)
		samples = append(samples, v)
		parts[i%len(parts)].Record(time.Duration(v))
		all.Record(time.Duration(v))
	}
	merged := New()
	for _, p := range parts {
		merged.Merge(p)
	}
	merged.Merge(New()) // empty merge is a no-op
	merged.Merge(nil)
	checkQuantiles(t, "merged", merged, samples)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		if merged.Quantile(q) != all.Quantile(q) {
			t.Errorf("q=%v merged %v single %v", q, merged.Quantile(q), all.Quantile(q))
		}
	}
	if merged.Mean() != all.Mean() {
		t.Errorf("mean merged %v single %v", merged.Mean(), all.Mean())
	}
	merged.Reset()
	if merged.Count() != 0 || merged.Quantile(0.5) != 0 || merged.Max() != 0 {
		t.Errorf("reset did not empty histogram")
	}
}

func TestBucketBoundsAndPrecision(t *testing.T) {
	// Every bucket's bounds map back to it, buckets are contiguous, and
	// above the exact range the width is at most 1/128 of the lower bound.
	prevHi := int64(-1)
	for i := 0; i < numBuckets; i++ {
		lo, hi := bounds(i)
		if lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if index(lo) != i || index(hi) != i {
			t.Fatalf("bucket %d [%d,%d] maps to %d/%d", i, lo, hi, index(lo), index(hi))
		}
		if lo >= exactCount && float64(hi-lo+1)/float64(lo) > 1.0/subCount+1e-12 {
			t.Fatalf("bucket %d too wide: [%d,%d]", i, lo, hi)
		}
		prevHi = hi
	}
	if _, hi := bounds(numBuckets - 1); hi < int64(MaxValue) {
		t.Fatalf("last bucket ends at %d < MaxValue", hi)
	}
}

func TestEdgeValues(t *testing.T) {
	h := New()
	if h.Quantile(0.5) != 0 || h.Min() != 0 || h.Mean() != 0 {
		t.Fatal("empty histogram should report zeros")
	}
	h.Record(-5)
	h.Record(2 * time.Minute) // clamped bucket, exact max
	if h.Min() != 0 || h.Max() != 2*time.Minute {
		t.Fatalf("min/max %v %v", h.Min(), h.Max())
	}
	if q := h.Quantile(0.99); q < MaxValue-MaxValue/100 {
		t.Fatalf("p99 of clamped value = %v", q)
	}
	h2 := New()
	h2.Record(time.Microsecond)
	if h2.Quantile(0.5) != time.Microsecond {
		t.Fatalf("single value quantile %v", h2.Quantile(0.5))
	}
}

func TestRecordNoAlloc(t *testing.T) {
	h := New()
	if n := testing.AllocsPerRun(1000, func() { h.Record(1234 * time.Microsecond) }); n != 0 {
		t.Fatalf("Record allocates %v", n)
	}
}

func BenchmarkRecord(b *testing.B) {
	h := New()
	for i := 0; b.Loop(); i++ {
		h.Record(time.Duration(1000 + i&0xfffff))
	}
}
