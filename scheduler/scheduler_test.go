package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/stocktest/catalogtest"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/shard"
)

// rig is a scheduler over real Redis shards and a real MySQL pool, wired
// the way the daemon wires it.
type rig struct {
	sched *Scheduler
	alloc *preallocate.Allocator
	store *preallocate.Store
	set   *shard.Set
	run   context.CancelFunc
}

func newRig(t *testing.T, nShards int) *rig {
	t.Helper()
	ctx := context.Background()
	c := catalogtest.New(t, nShards, "s")
	db, set := c.DB, c.Shards
	r := &rig{set: set, store: preallocate.NewStore(db)}
	if err := r.store.SeedShards(ctx, c.Addrs); err != nil {
		t.Fatal(err)
	}
	r.alloc = preallocate.New(preallocate.DefaultConfig(), db, set, preallocate.Hooks{}, slog.Default())
	r.sched = New(DefaultConfig(), NewRegistry(), Hooks{
		Refill:      r.alloc.Request,
		PoolState:   r.store.PoolState,
		Consolidate: r.alloc.Consolidate,
	}, slog.Default())
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.alloc.Run(rctx); close(done) }()
	r.run = cancel
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *rig) provision(t *testing.T, name string, spec preallocate.Spec) *SKU {
	t.Helper()
	ctx := context.Background()
	sku, _, err := r.alloc.Provision(ctx, name, spec, preallocate.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	info := SKUInfo{Name: name, Chunk: sku.Chunk, Threshold: sku.Threshold, Pool: sku.Pool, Version: sku.Version}
	for _, rp := range sku.Partitions {
		h, err := r.set.Partition(name, rp.ID, rp.Epoch, rp.Shard)
		if err != nil {
			t.Fatal(err)
		}
		info.Partitions = append(info.Partitions, PartitionInfo{Handle: h, Open: true})
	}
	s := r.sched.Registry().Upsert(info)
	if err := r.sched.Refresh(ctx, name); err != nil {
		t.Fatal(err)
	}
	return s
}

// idHomedOn finds a request id whose home is partition pid.
func idHomedOn(sku *SKU, pid int, prefix string) string {
	for i := 0; ; i++ {
		id := prefix + strconv.Itoa(i)
		if sku.home(id).Handle.ID == pid {
			return id
		}
	}
}

// The hard case from DESIGN.md: request X finds its home short and succeeds
// elsewhere; the home is refilled; the retry of X must meet its first
// outcome, not deduct again at the refilled home.
func TestRetryAfterRefillMeetsFirstOutcome(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2)
	sku := r.provision(t, "hard", preallocate.Spec{Total: 40, Partitions: 2, Chunk: 5, Threshold: 1})
	p0 := sku.Slot(0)

	// Empty partition 0 by draining it back to the pool and hold the pool
	// back, so partition 0 stays short while partition 1 sells.
	if _, err := r.alloc.Drain(ctx, p0.Handle, false); err != nil {
		t.Fatal(err)
	}
	pool, _, _ := r.store.PoolState(ctx, "hard")
	r.sched.Invalidate("hard", 0) // the node believes the pool is empty: no refill races the test
	p0.setLevels(stockd.Levels{Active: 'a'})

	x := idHomedOn(sku, 0, "x-")
	first, err := r.sched.Deduct(ctx, "hard", 2, x, "")
	if err != nil || first.Status != OK || first.Partition.ID != 1 {
		t.Fatalf("first attempt: %+v %v; want OK on partition 1", first, err)
	}

	// Refill partition 0 from the pool.
	if o, err := r.alloc.Refill(ctx, p0.Handle, 'a', 5, 1); err != nil || o.Applied != 5 {
		t.Fatalf("refill: %+v %v (pool was %d)", o, err, pool)
	}
	r.sched.Invalidate("hard", -1)
	if err := r.sched.Refresh(ctx, "hard"); err != nil {
		t.Fatal(err)
	}

	retry, err := r.sched.Deduct(ctx, "hard", 2, x, "")
	if err != nil || retry.Status != OK || retry.Partition.ID != first.Partition.ID || retry.Seq != first.Seq {
		t.Fatalf("retry: %+v %v; want the first outcome %+v", retry, err, first)
	}
	// Every deduction raises the partition's sequence. (Its levels are no
	// proof: the refresh above may refill the idle sub-domain meanwhile.)
	st, _ := p0.Handle.Inspect(ctx)
	if st.Seq != 0 || st.Levels.A < 5 {
		t.Fatalf("partition 0 after the retry: %+v; want no deduction (sequence 0, the 5 refilled units still there)", st)
	}
}

// Many concurrent attempts per request id while partitions run short, swap,
// refill and consolidate: every id takes at most once, every OK answer for
// an id names the same deduction, and the units add up.
func TestConcurrentRetriesTakeOnce(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 2)
	const total = 300
	r.provision(t, "storm", preallocate.Spec{Total: total, Partitions: 4, Chunk: 8, Threshold: 2})

	const ids, attempts = 400, 4
	var mu sync.Mutex
	got := map[string]string{}
	units := map[string]int64{}
	var wg sync.WaitGroup
	for i := 0; i < ids; i++ {
		for k := 0; k < attempts; k++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				id := "id-" + strconv.Itoa(i)
				qty := int64(1 + i%3)
				// ErrUnavailable (a 503 to the caller) means "retry with the
				// same id": under this much contention on 2 cores with the
				// race detector a refill can take longer than StockWait.
				var res Result
				var err error
				for try := 0; try < 20; try++ {
					if res, err = r.sched.Deduct(ctx, "storm", qty, id, ""); !errors.Is(err, ErrUnavailable) {
						break
					}
					time.Sleep(50 * time.Millisecond) // pacing: a caller's backoff before retrying the same id
				}
				if err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
				if res.Status != OK {
					return
				}
				key := fmt.Sprintf("%d/%d", res.Partition.ID, res.Seq)
				mu.Lock()
				defer mu.Unlock()
				if prev, ok := got[id]; ok && prev != key {
					t.Errorf("%s took twice: %s and %s", id, prev, key)
				}
				got[id] = key
				units[id] = res.Qty
			}(i)
		}
	}
	wg.Wait()

	var sold int64
	for _, q := range units {
		sold += q
	}
	if sold > total {
		t.Fatalf("oversold: %d of %d", sold, total)
	}
	// Each id has at most one took-record across all partitions, and the
	// partitions' sequences count exactly the deductions answered OK.
	tookBy := map[string]int{}
	var seqs int64
	for _, p := range r.sched.Registry().Get("storm").Slots() {
		if err := p.Handle.Successes(ctx, func(id string) { tookBy[id]++ }); err != nil {
			t.Fatal(err)
		}
		st, _ := p.Handle.Inspect(ctx)
		seqs += st.Seq
	}
	for id, n := range tookBy {
		if n > 1 {
			t.Errorf("%s has %d took-records", id, n)
		}
		if _, ok := got[id]; !ok {
			t.Errorf("%s took but no attempt heard OK", id)
		}
	}
	if int(seqs) != len(got) {
		t.Fatalf("%d deductions recorded, %d ids answered OK", seqs, len(got))
	}
	// Demand exceeded supply: single units sweep up whatever larger
	// requests left, until everything is sold.
	for i := 0; ; i++ {
		res, err := r.sched.Deduct(ctx, "storm", 1, "tail-"+strconv.Itoa(i), "")
		if err != nil {
			t.Fatal(err)
		}
		if res.Status == SoldOut {
			break
		}
		sold++
	}
	if sold != total {
		t.Fatalf("sold %d of %d with demand left over", sold, total)
	}
}

// A pointer that names a partition this node has not loaded (another node
// just added it) must not be taken for short: the request may have taken
// there. The node answers unavailable until it knows the partition; a
// pointer to a retired partition (out of the home set) is short.
func TestPointerToUnknownPartition(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, 1)
	sku := r.provision(t, "unk", preallocate.Spec{Total: 100, Partitions: 2, Chunk: 10, Threshold: 1})
	x := idHomedOn(sku, 0, "x-")
	home := sku.Slot(0)
	if pr, err := home.Handle.Point(ctx, x, "0:1", "7:1"); err != nil || pr.Code != shard.PointMoved {
		t.Fatalf("point: %+v %v", pr, err)
	}
	before := [2]int64{sku.Slot(0).level(), sku.Slot(1).level()}
	if res, err := r.sched.Deduct(ctx, "unk", 1, x, ""); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("pointer to an unknown partition: %+v %v; want unavailable", res, err)
	}
	if after := [2]int64{sku.Slot(0).level(), sku.Slot(1).level()}; after != before {
		t.Fatalf("levels %v -> %v: the request took although its pointer names a partition not loaded", before, after)
	}

	info := SKUInfo{Name: "unk", Chunk: 10, Threshold: 1, Pool: sku.Pool(), Version: sku.Version(), Retired: []int{7}}
	for _, p := range sku.Slots() {
		info.Partitions = append(info.Partitions, PartitionInfo{Handle: p.Handle, Open: true})
	}
	r.sched.Registry().Upsert(info)
	if res, err := r.sched.Deduct(ctx, "unk", 1, x, ""); err != nil || res.Status != OK {
		t.Fatalf("pointer to a retired partition: %+v %v; want it treated as short and the request served", res, err)
	}
}
