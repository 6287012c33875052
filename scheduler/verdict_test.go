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
