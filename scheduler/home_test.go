package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/stockd/stockd/preallocate"

	"github.com/stockd/stockd/shard"
)

// HomeOf is what tools and the fault suite use to predict where a request
// lands; it must agree with the scheduler's own choice for every id.
func TestHomeOfAgreesWithScheduler(t *testing.T) {
	r := NewRegistry()
	info := SKUInfo{Name: "home-sku"}
	pids := []int{0, 1, 2, 5, 9}
	for _, id := range pids {
		info.Partitions = append(info.Partitions, PartitionInfo{Handle: &shard.Partition{SKU: "home-sku", ID: id}, Open: true})
	}
	s := r.Upsert(info)
	seen := map[int]int{}
	for i := 0; i < 5000; i++ {
		id := "req-" + strconv.Itoa(i)
		want := s.home(id).Handle.ID
		if got := HomeOf("home-sku", id, pids); got != want {
			t.Fatalf("HomeOf(%q) = %d, scheduler chose %d", id, got, want)
		}
		seen[want]++
	}
	if len(seen) != len(pids) {
		t.Fatalf("5000 ids reached only partitions %v", seen)
	}
	if got := HomeOf("home-sku", "x", nil); got != -1 {
		t.Fatalf("HomeOf with no partitions = %d, want -1", got)
	}
}

// A request's copies served by nodes with different views of a rebalance
// (generations not yet loaded, or already merged into the settled set at
// the end of their lifetime) end at one home and one outcome. The views
// are those that can meet within the retry window (ARCHITECTURE 4.2): a
// view that merged a generation never meets one that has not loaded it.
// Partitions 0-3 are the settled set, 4-5 the first rebalance's, 6-7 the
// second's.
func TestHomeChainAgreesAcrossViews(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 3)
	const name = "views"
	base := r.provision(t, name, preallocate.Spec{Total: 6000, Partitions: 8, Chunk: 300, Threshold: 1})
	views := map[string]map[int]int{ // pid -> generation; absent: not loaded
		"a": {0: 0, 1: 0, 2: 0, 3: 0},
		"b": {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 1},
		"c": {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 2},
		"d": {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 1, 7: 1},
		"e": {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0},
		"f": {0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0},
	}
	node := map[string]*Scheduler{}
	for v, gens := range views {
		s := New(DefaultConfig(), NewRegistry(), Hooks{}, slog.Default())
		info := SKUInfo{Name: name, Chunk: 300, Threshold: 1}
		for _, p := range base.Slots() {
			g, ok := gens[p.Handle.ID]
			if !ok {
				continue
			}
			h, err := r.set.Partition(name, p.Handle.ID, p.Handle.Epoch, p.Handle.Shard.ID)
			if err != nil {
				t.Fatal(err)
			}
			info.Partitions = append(info.Partitions, PartitionInfo{Handle: h, Open: true, Gen: g})
		}
		s.Registry().Upsert(info)
		if err := s.Refresh(ctx, name); err != nil {
			t.Fatal(err)
		}
		node[v] = s
	}
	pairs := []string{"ab", "ac", "bc", "bd", "be", "cd", "ce", "cf", "de", "df", "cc"}
	const ids = 120
	type outcome struct {
		pid     int
		seq     int64
		st      Status
		err     error
		retried bool
	}
	var wg sync.WaitGroup
	res := make([][2]outcome, len(pairs)*ids)
	for k, pair := range pairs {
		for i := 0; i < ids; i++ {
			id := fmt.Sprintf("%s-%d", pair, i)
			for c := 0; c < 2; c++ {
				wg.Add(1)
				go func(slot *outcome, s *Scheduler) {
					defer wg.Done()
					res, err := s.Deduct(ctx, name, 1, id, "")
					if errors.Is(err, ErrUnavailable) {
						// A redirect to a partition this view has not
						// loaded: the caller retries, and the retry meets
						// a node that has (view c has every generation).
						res, err = node["c"].Deduct(ctx, name, 1, id, "")
						slot.retried = true
					}
					slot.st, slot.err = res.Status, err
					if res.Partition != nil {
						slot.pid, slot.seq = res.Partition.ID, res.Seq
					}
				}(&res[k*ids+i][c], node[string(pair[c])])
			}
		}
	}
	wg.Wait()
	var retried int
	for k, pair := range pairs {
		for i := 0; i < ids; i++ {
			a, b := res[k*ids+i][0], res[k*ids+i][1]
			if a.err != nil || b.err != nil {
				t.Fatalf("%s-%d: %v / %v", pair, i, a.err, b.err)
			}
			if a.retried || b.retried {
				retried++
			}
			if a.st != OK || b.st != OK || a.pid != b.pid || a.seq != b.seq {
				t.Errorf("%s-%d: views %c and %c disagree: %+v vs %+v", pair, i, pair[0], pair[1], a, b)
			}
		}
	}
	claims := 0.0
	for _, s := range node {
		var m dto.Metric
		if err := s.claimCalls.Write(&m); err != nil {
			t.Fatal(err)
		}
		claims += m.GetCounter().GetValue()
	}
	t.Logf("%d pairs, %d with a copy retried after a 503 (a redirect to a partition its view lacks), %.0f claims", len(pairs)*ids, retried, claims)
	if claims == 0 {
		t.Fatal("no request walked a home chain")
	}
}

// A node that has not loaded a partition another node just added and
// filled sees every partition it knows empty and the pool at 0; before it
// answers sold_out it catches up with MySQL, and sells from the new
// partition instead (issue 12: "200 on one node, sold_out on the other").
func TestStaleRegistryCatchesUpBeforeSoldOut(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2)
	const name = "stale"
	base := r.provision(t, name, preallocate.Spec{Total: 10, Partitions: 1, Chunk: 5, Threshold: 1})

	// The stale node knows partition 0 only, at the version it loaded.
	load := func(s *Scheduler) {
		t.Helper()
		sku, err := r.store.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info := SKUInfo{Name: name, Chunk: sku.Chunk, Threshold: sku.Threshold, Pool: sku.Pool, Version: sku.Version}
		for _, rp := range sku.Partitions {
			h, err := r.set.Partition(name, rp.ID, rp.Epoch, rp.Shard)
			if err != nil {
				t.Fatal(err)
			}
			info.Partitions = append(info.Partitions, PartitionInfo{Handle: h, Open: rp.State == "open"})
		}
		s.Registry().Upsert(info)
		if err := s.Refresh(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	caughtUp := 0
	var stale *Scheduler
	stale = New(DefaultConfig(), NewRegistry(), Hooks{
		PoolState: r.store.PoolState,
		Head:      r.store.VersionedPoolState,
		Reload: func(ctx context.Context, sku string) error {
			caughtUp++
			load(stale)
			return nil
		},
	}, slog.Default())
	load(stale)

	// Elsewhere: partition 0's units go back to the pool, and a new
	// partition takes them.
	if _, err := r.alloc.Drain(ctx, base.Slot(0).Handle, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.alloc.AddPartitions(ctx, name, 1, nil); err != nil {
		t.Fatal(err)
	}
	if pool, pending, err := r.store.PoolState(ctx, name); err != nil || pool != 0 || pending != 0 {
		t.Fatalf("pool %d, pending %d, %v: want everything in the new partition", pool, pending, err)
	}

	res, err := stale.Deduct(ctx, name, 1, "x", "")
	if err != nil || res.Status != OK || res.Partition.ID != 1 || caughtUp != 1 {
		t.Fatalf("deduct on the stale node: %+v %v, caught up %d times; want ok from partition 1 after one catch-up", res, err, caughtUp)
	}
}
