package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/mono"
	"github.com/stockd/stockd/preallocate"
)

// A sold-out verdict answers from memory only while MySQL confirmed it
// within VerdictMaxAge: a flood of late requests costs at most one read
// per interval, a restock made behind the scheduler's back (another node)
// ends the verdict at the first request after the interval, and a read
// that fails answers unavailable, not sold_out.
func TestSoldOutVerdictIsConfirmedWithMySQL(t *testing.T) {
	r := newRig(t, 2)
	const maxAge = 50 * time.Millisecond
	var reads atomic.Int64
	var broken atomic.Bool
	r.sched.cfg.VerdictMaxAge = maxAge
	r.sched.hooks.Head = func(ctx context.Context, sku string) (int64, int64, int64, error) {
		reads.Add(1)
		if broken.Load() {
			return 0, 0, 0, errors.New("mysql away")
		}
		return r.store.VersionedPoolState(ctx, sku)
	}
	ctx := context.Background()
	sku := r.provision(t, "conf", preallocate.Spec{Total: 20, Partitions: 2, Chunk: 5, Threshold: 1})
	sold := 0
	for i := 0; !sku.SoldOut(); i++ {
		res, err := r.sched.Deduct(ctx, "conf", 1, "a-"+strconv.Itoa(i), "")
		if err != nil {
			t.Fatal(err)
		}
		if res.Status == OK {
			sold++
		}
		if i > 1000 {
			t.Fatal("no sold-out verdict after 1000 requests")
		}
	}
	if sold != 20 {
		t.Fatalf("sold %d of 20", sold)
	}

	// A flood of late requests: one read per interval at most.
	reads.Store(0)
	start := time.Now()
	var wg sync.WaitGroup
	var soldOut atomic.Int64
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Since(start) < 6*maxAge; i++ {
				id := "late-" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if r.sched.SoldOutFromMemory("conf", id) {
					soldOut.Add(1)
					continue
				}
				res, err := r.sched.Deduct(ctx, "conf", 1, id, "")
				if err != nil || res.Status != SoldOut {
					t.Errorf("late request %s: %+v %v", id, res, err)
					return
				}
				soldOut.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if limit := int64(elapsed/maxAge) + 2; reads.Load() > limit {
		t.Fatalf("%d reads for %d late requests in %s; at most %d (one per %s)", reads.Load(), soldOut.Load(), elapsed, limit, maxAge)
	}
	t.Logf("%d late requests answered sold_out with %d MySQL reads in %s", soldOut.Load(), reads.Load(), elapsed.Round(time.Millisecond))

	// Restocked elsewhere: MySQL changes, nobody tells this scheduler.
	if _, _, err := r.store.Put(ctx, "conf", preallocate.Spec{Total: 30}, preallocate.Spec{}, []string{"s1", "s2"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(maxAge) // pacing: the verdict's last confirmation is now older than maxAge, which the scheduler measures
	res, err := r.sched.Deduct(ctx, "conf", 1, "after-restock", "")
	if err != nil || res.Status != OK {
		t.Fatalf("first request after the restock: %+v %v", res, err)
	}

	// Sell out again, then MySQL stops answering: no sold_out it cannot
	// confirm.
	for i := 0; !sku.SoldOut(); i++ {
		if _, err := r.sched.Deduct(ctx, "conf", 1, "b-"+strconv.Itoa(i), ""); err != nil {
			t.Fatal(err)
		}
		if i > 1000 {
			t.Fatal("no second verdict")
		}
	}
	broken.Store(true)
	time.Sleep(maxAge) // pacing: as above, so the next sold_out needs a confirmation from MySQL
	if _, err := r.sched.Deduct(ctx, "conf", 1, "while-broken", ""); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("with MySQL away: %v, want ErrUnavailable", err)
	}
}

// The sold-out path with and without the freshness bound: the bound adds
// an atomic load and a monotonic clock read, no lock and no allocation.
func BenchmarkSoldOutFromMemory(b *testing.B) {
	for _, maxAge := range []time.Duration{0, time.Hour} {
		b.Run("max_age="+maxAge.String(), func(b *testing.B) {
			reg := NewRegistry()
			sku := reg.Upsert(SKUInfo{Name: "bench"})
			so := &soldOut{successes: newFilter(1000), installed: mono.Now()}
			so.checked.Store(mono.Now())
			sku.soldOut.Store(so)
			cfg := DefaultConfig()
			cfg.VerdictMaxAge = maxAge
			s := New(cfg, reg, Hooks{Head: func(context.Context, string) (int64, int64, int64, error) { return 0, 0, 0, nil }}, slog.Default())
			ids := make([]string, 1024)
			for i := range ids {
				ids[i] = "late-" + strconv.Itoa(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if !s.SoldOutFromMemory("bench", ids[i&1023]) {
					b.Fatal("not sold out")
				}
			}
		})
	}
}

// The filter of successful ids cannot rule out every late id: about one in
// a thousand it lets through (a false positive) takes the normal path
// beside the real successes retried. Late callers who hit those ids on
// purpose get sold_out, and the real successes their first outcome, with
// no MySQL read while the verdict is fresh; once it is stale, the walk
// looks at the truth again, so a restock made behind the scheduler's back
// sells to such an id.
func TestFilterFalsePositivesAreAnsweredByTheVerdict(t *testing.T) {
	r := newRig(t, 2)
	var heads, pools atomic.Int64
	r.sched.cfg.VerdictMaxAge = time.Hour
	r.sched.hooks.Head = func(ctx context.Context, sku string) (int64, int64, int64, error) {
		heads.Add(1)
		return r.store.VersionedPoolState(ctx, sku)
	}
	r.sched.hooks.PoolState = func(ctx context.Context, sku string) (int64, int64, error) {
		pools.Add(1)
		return r.store.PoolState(ctx, sku)
	}
	ctx := context.Background()
	sku := r.provision(t, "fp", preallocate.Spec{Total: 20, Partitions: 2, Chunk: 5, Threshold: 1})
	first := map[string]Result{}
	for i := 0; !sku.SoldOut(); i++ {
		id := "buy-" + strconv.Itoa(i)
		res, err := r.sched.Deduct(ctx, "fp", 1, id, "")
		if err != nil {
			t.Fatal(err)
		}
		if res.Status == OK {
			first[id] = res
		}
		if i > 1000 {
			t.Fatal("no sold-out verdict after 1000 requests")
		}
	}
	if len(first) != 20 {
		t.Fatalf("sold %d of 20", len(first))
	}
	so := sku.soldOut.Load()
	var fps []string
	for i := 0; len(fps) < 40; i++ {
		if id := "late-" + strconv.Itoa(i); so.successes.mayContain(id) {
			fps = append(fps, id)
		}
		if i > 10_000_000 {
			t.Fatal("no false positives in 10,000,000 ids")
		}
	}

	heads.Store(0)
	pools.Store(0)
	var wg sync.WaitGroup
	for _, id := range fps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				if r.sched.SoldOutFromMemory("fp", id) {
					t.Errorf("%s: the filter let it through once, then ruled it out", id)
					return
				}
				res, err := r.sched.Deduct(ctx, "fp", 1, id, "")
				if err != nil || res.Status != SoldOut {
					t.Errorf("false positive %s: %+v %v, want sold_out", id, res, err)
					return
				}
			}
		}()
	}
	for id, was := range first {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.sched.Deduct(ctx, "fp", 1, id, "")
			if err != nil || res.Status != OK || res.Partition != was.Partition || res.Seq != was.Seq {
				t.Errorf("retry of %s: %+v %v, want its first outcome %+v", id, res, err, was)
			}
		}()
	}
	wg.Wait()
	if n := heads.Load() + pools.Load(); n != 0 {
		t.Fatalf("%d MySQL reads for %d false positives and %d retries under a fresh verdict; want 0", n, 3*len(fps), len(first))
	}

	// Restocked elsewhere; the verdict's confirmation is older than the
	// bound: a false positive looks at the truth and buys.
	if _, _, err := r.store.Put(ctx, "fp", preallocate.Spec{Total: 25}, preallocate.Spec{}, []string{"s1", "s2"}); err != nil {
		t.Fatal(err)
	}
	so.checked.Store(mono.Now() - int64(2*time.Hour))
	res, err := r.sched.Deduct(ctx, "fp", 1, fps[0], "")
	if err != nil || res.Status != OK {
		t.Fatalf("false positive after a restock and a stale verdict: %+v %v, want ok", res, err)
	}
}
