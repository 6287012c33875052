package hotstats

import (
	"math"
	"sync"
	"testing"
	"time"
)

func TestBucketOf(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int
	}{
		{0, 0},
		{-time.Second, 0},
		{time.Duration(1<<minShift) - 1, 0},
		{time.Duration(1 << minShift), 1},
		{time.Millisecond, 4},       // 2^19 ns = 524 µs <= 1 ms < 2^20 ns
		{time.Hour, NumBuckets - 1}, // the open bucket
	} {
		if got := bucketOf(c.d); got != c.want {
			t.Errorf("bucketOf(%s) = %d, want %d", c.d, got, c.want)
		}
		if i := bucketOf(c.d); i < NumBuckets-1 && c.d.Seconds() >= BucketUpper(i) {
			t.Errorf("%s is in bucket %d, whose upper bound is %gs", c.d, i, BucketUpper(i))
		}
	}
}

// Every increment made while Take runs lands in one sample: none lost,
// none counted twice.
func TestTakeLosesNothing(t *testing.T) {
	var c Counters
	const writers, each = 4, 20000
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				c.Observe(OK, time.Duration(i)*time.Microsecond)
			}
		}()
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	var total, lat uint64
	take := func() {
		s, _ := c.Take()
		total += uint64(s.N[OK])
		for _, n := range s.Lat {
			lat += uint64(n)
		}
	}
	for running := true; running; {
		select {
		case <-writersDone:
			running = false
		default:
		}
		take() // after the writers ended: the rest
	}
	if total != writers*each || lat != writers*each {
		t.Fatalf("taken %d outcomes and %d latencies, want %d", total, lat, writers*each)
	}
}

func TestQuantile(t *testing.T) {
	lat := make([]uint64, NumBuckets)
	if q := Quantile(0.99, lat); !math.IsNaN(q) {
		t.Errorf("no observations: %v, want NaN", q)
	}
	// 99 fast ones in bucket 0, one slow in bucket 10: p99 is in bucket 0,
	// p100 in bucket 10.
	lat[0], lat[10] = 99, 1
	if q := Quantile(0.99, lat); q <= 0 || q > BucketUpper(0) {
		t.Errorf("p99 = %v, want within bucket 0 (<= %v)", q, BucketUpper(0))
	}
	if q := Quantile(1, lat); q <= BucketUpper(9) || q > BucketUpper(10) {
		t.Errorf("p100 = %v, want within bucket 10", q)
	}
	lat[0], lat[10], lat[NumBuckets-1] = 0, 0, 5
	if q := Quantile(0.99, lat); q != BucketUpper(NumBuckets-2) {
		t.Errorf("all in the open bucket: %v, want its lower bound %v", q, BucketUpper(NumBuckets-2))
	}
}

// A ring keeps the last Window samples, oldest first, and says when it
// saw nothing for a whole window.
func TestRing(t *testing.T) {
	var r Ring
	for i := 1; i <= Window+5; i++ {
		var s Sample
		s.N[OK] = uint32(i)
		s.Lat[0] = uint32(i)
		r.Add(s)
	}
	if r.Len() != Window {
		t.Fatalf("len %d, want %d", r.Len(), Window)
	}
	v := r.View(time.Second)
	if len(v.Deductions) != Window || v.Deductions[0] != 6 || v.Deductions[Window-1] != Window+5 {
		t.Fatalf("series %v", v.Deductions)
	}
	var sum uint64
	for i := 6; i <= Window+5; i++ {
		sum += uint64(i)
	}
	if v.Minute.Answers != sum || float64(v.Minute.Deductions) != float64(sum)/Window || v.Minute.Seconds != Window {
		t.Fatalf("minute %+v, want %d answers over %d s", v.Minute, sum, Window)
	}
	for i := 0; i < Window-1; i++ {
		r.Add(Sample{})
		if r.Idle() {
			t.Fatalf("idle after %d empty samples", i+1)
		}
	}
	r.Add(Sample{})
	if !r.Idle() {
		t.Fatal("not idle after a window of empty samples")
	}
	if v := r.View(time.Second); !math.IsNaN(float64(v.Minute.P99)) {
		t.Fatalf("p99 of an empty window: %v", v.Minute.P99)
	}
}

func TestNumJSON(t *testing.T) {
	for _, c := range []struct {
		n    Num
		want string
	}{{Num(math.NaN()), "null"}, {Num(math.Inf(1)), "null"}, {1.5, "1.5"}, {0, "0"}, {1234567, "1.23457e+06"}} {
		b, _ := c.n.MarshalJSON()
		if string(b) != c.want {
			t.Errorf("%v: %s, want %s", float64(c.n), b, c.want)
		}
	}
}

// What the hot path pays per deduction: one Observe (two atomic adds).
// Parallel: every goroutine on the same SKU, as in a flash sale.
func BenchmarkObserve(b *testing.B) {
	var c Counters
	d := 300 * time.Microsecond
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Observe(OK, d)
	}
}

func BenchmarkObserveParallel(b *testing.B) {
	var c Counters
	d := 300 * time.Microsecond
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Observe(OK, d)
		}
	})
}
