package preallocate

import (
	"context"
	"database/sql"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest/catalogtest"
	"github.com/stockd/stockd/shard"
)

type fixture struct {
	db     *sql.DB
	shards *shard.Set
	alloc  *Allocator
	store  *Store
}

func newFixture(t *testing.T, nShards int) *fixture {
	t.Helper()
	c := catalogtest.New(t, nShards, "p")
	if err := NewStore(c.DB).SeedShards(context.Background(), c.Addrs); err != nil {
		t.Fatal(err)
	}
	return &fixture{db: c.DB, shards: c.Shards, alloc: New(DefaultConfig(), c.DB, c.Shards, Hooks{}, slog.Default()), store: NewStore(c.DB)}
}

func (f *fixture) handle(t *testing.T, sku SKU, i int) *shard.Partition {
	t.Helper()
	rp := sku.Partitions[i]
	p, err := f.shards.Partition(sku.Name, rp.ID, rp.Epoch, rp.Shard)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (f *fixture) allocationState(t *testing.T, id int64) string {
	t.Helper()
	var s string
	if err := f.db.QueryRow(`SELECT state FROM allocations WHERE id = ?`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Deducting past the threshold swaps the active sub-domain and asks for the
// drained one to be refilled; the refill comes from the pool, and running
// the same allocation twice applies it once.
func TestSubDomainSwapAndRefillOnce(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	sku, _, err := f.alloc.Provision(ctx, "swap", Spec{Total: 100, Partitions: 1, Chunk: 10, Threshold: 3}, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if sku.Pool != 80 {
		t.Fatalf("pool after provisioning %d, want 80 (two chunks of 10 out)", sku.Pool)
	}
	p := f.handle(t, sku, 0)

	// 10 in a, 10 in b, a active, threshold 3: the 8th unit leaves a at 2.
	var r shard.TakeResult
	for i := 0; i < 8; i++ {
		if r, err = p.Take(ctx, "u"+strconv.Itoa(i), 1, 1, true, ""); err != nil || r.Code != shard.Took {
			t.Fatalf("take %d: %+v %v", i, r, err)
		}
	}
	if r.Levels.Active != 'b' || r.Levels.A != 2 || r.Levels.B != 10 {
		t.Fatalf("after 8 units: %+v, want a=2 b=10 with b active", r.Levels)
	}
	if r.Refill != 'a' {
		t.Fatalf("refill signal %q, want a", r.Refill)
	}

	o, err := f.alloc.Refill(ctx, p, 'a', sku.Chunk, sku.Threshold)
	if err != nil || o.Applied != 10 || o.Levels.A != 12 || o.Pool != 70 {
		t.Fatalf("refill: %+v %v; want 10 applied, a=12, pool 70", o, err)
	}
	var id int64
	if err := f.db.QueryRow(`SELECT MAX(id) FROM allocations WHERE sku='swap' AND kind='fill'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if s := f.allocationState(t, id); s != "applied" {
		t.Fatalf("allocation %d is %s, want applied", id, s)
	}

	// The same allocation again, straight at Redis and through the sweep
	// after pretending the process died before marking it applied.
	again, err := p.Refill(ctx, id, 'a', 10, 1000)
	if err != nil || again.Code != shard.RefillAppliedBefore || again.Levels.A != 12 {
		t.Fatalf("second refill of %d: %+v %v; want applied-earlier, a still 12", id, again, err)
	}
	if _, err := f.db.Exec(`UPDATE allocations SET state='pending' WHERE id = ?`, id); err != nil {
		t.Fatal(err)
	}
	if err := f.alloc.ApplyPending(ctx, 0); err != nil {
		t.Fatal(err)
	}
	st, err := p.Inspect(ctx)
	if err != nil || st.Levels.A != 12 {
		t.Fatalf("after sweep: %+v %v; want a=12", st, err)
	}
	if s := f.allocationState(t, id); s != "applied" {
		t.Fatalf("allocation %d is %s after the sweep, want applied", id, s)
	}
	got, _ := f.store.Get(ctx, "swap")
	if got.Pool+st.Levels.Total()+8 != 100 {
		t.Fatalf("conservation: pool %d + levels %d + sold 8 != 100", got.Pool, st.Levels.Total())
	}
}

// A crash between the allocation's commit and Redis leaves a pending row;
// the sweep applies it exactly once, and never into a partition whose Redis
// lost its state: that allocation is voided and its units return.
func TestPendingAllocationAfterCrash(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 2)
	sku, _, err := f.alloc.Provision(ctx, "crash", Spec{Total: 100, Partitions: 2, Chunk: 10, Threshold: 3}, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	p0, p1 := f.handle(t, sku, 0), f.handle(t, sku, 1)
	// Pending rows as a crash right after the MySQL commit leaves them.
	for _, p := range []*shard.Partition{p0, p1} {
		if _, err := f.db.Exec(`UPDATE skus SET pool = pool - 5 WHERE sku = 'crash'`); err != nil {
			t.Fatal(err)
		}
		if _, err := f.db.Exec(`INSERT INTO allocations (sku, pid, epoch, kind, sub, qty) VALUES ('crash', ?, ?, 'fill', 'a', 5)`, p.ID, p.Epoch); err != nil {
			t.Fatal(err)
		}
	}
	// Partition 1's shard loses its data.
	if err := p1.Shard.Client().Do(ctx, p1.Shard.Client().B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := f.alloc.ApplyPending(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.alloc.ApplyPending(ctx, 0); err != nil {
		t.Fatal(err)
	}
	st0, _ := p0.Inspect(ctx)
	if st0.Levels.A != 15 {
		t.Fatalf("partition 0 a=%d, want 15 (10 + the pending 5, once)", st0.Levels.A)
	}
	got, _ := f.store.Get(ctx, "crash")
	// 100 - 40 provisioned - 10 pending + 5 voided back.
	if got.Pool != 55 {
		t.Fatalf("pool %d, want 55", got.Pool)
	}
	if got.Partitions[1].State != "fenced" {
		t.Fatalf("partition 1 is %s, want fenced", got.Partitions[1].State)
	}
	var pending int
	f.db.QueryRow(`SELECT COUNT(*) FROM allocations WHERE state = 'pending'`).Scan(&pending)
	if pending != 0 {
		t.Fatalf("%d allocations still pending", pending)
	}
}

// A refill refused for good (here: the sub-domain was full) is recorded
// under its allocation id, so a second run of the same allocation (another
// node's sweep racing this one) cannot apply it after its units went back
// to the pool.
func TestRefusedFillNeverAppliesLater(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	sku, _, err := f.alloc.Provision(ctx, "refuse", Spec{Total: 100, Partitions: 1, Chunk: 10, Threshold: 3}, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	p := f.handle(t, sku, 0)
	r, err := p.Refill(ctx, 9999, 'a', 5, 1) // a holds 10 >= cap 1: full
	if err != nil || r.Code != shard.RefillFull {
		t.Fatalf("first run: %+v %v; want full", r, err)
	}
	r, err = p.Refill(ctx, 9999, 'a', 5, 1000) // room now, same allocation
	if err != nil || r.Code != shard.RefillRefused || r.Levels.A != 10 {
		t.Fatalf("second run: %+v %v; want refused earlier, a still 10", r, err)
	}
}

// Units a drain carries back are in neither a partition nor the pool
// until MySQL credits them: PoolState must say stock may still arrive, or
// the tail answers sold_out while a rebalance or a consolidation moves the
// last units.
func TestPoolStateCountsPendingDrains(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	sku, _, err := f.alloc.Provision(ctx, "drainpend", Spec{Total: 20, Partitions: 1, Chunk: 10, Threshold: 1}, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if pool, pending, err := f.store.PoolState(ctx, "drainpend"); err != nil || pool != 0 || pending != 0 {
		t.Fatalf("after provisioning: pool %d pending %d %v; want 0 and 0 (everything in the partition)", pool, pending, err)
	}
	// A drain committed in MySQL, not yet run or settled (the moment a
	// crash, or a slow Redis, can stretch).
	rp := sku.Partitions[0]
	if _, err := f.db.Exec(`INSERT INTO allocations (sku, pid, epoch, kind, sub) VALUES (?, ?, ?, 'drain', '')`, sku.Name, rp.ID, rp.Epoch); err != nil {
		t.Fatal(err)
	}
	if pool, pending, err := f.store.PoolState(ctx, "drainpend"); err != nil || pool != 0 || pending < 1 {
		t.Fatalf("with a pending drain: pool %d pending %d %v; want pending >= 1", pool, pending, err)
	}
}

// The rebalance lock is per SKU spelling: adv-x and ADV-X are two SKUs,
// and holding the lock of one does not hold up the other (on a server
// whose lock names fold case too: the name is a hex hash).
func TestRebalanceLockPerSpelling(t *testing.T) {
	f := newFixture(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	unlock, err := f.alloc.lockSKU(ctx, "adv-x")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	start := time.Now()
	unlockUpper, err := f.alloc.lockSKU(ctx, "ADV-X")
	if err != nil {
		t.Fatalf("lock of ADV-X while adv-x's is held: %v after %s", err, time.Since(start))
	}
	unlockUpper()
}

// A fill that Redis applied while its partition was being fenced: the
// fence counts only applied fills, so a fill still pending then and marked
// applied after must join the doubt, or its units are counted nowhere.
func TestFillAppliedAcrossAFence(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	sku, _, err := f.alloc.Provision(ctx, "across", Spec{Total: 100, Partitions: 1, Chunk: 10, Threshold: 3}, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	p := f.handle(t, sku, 0)
	// A pending fill, as Refill's transaction leaves it, that reached Redis
	// (the reply was lost) just before the partition is fenced.
	if _, err := f.db.Exec(`UPDATE skus SET pool = pool - 5 WHERE sku = 'across'`); err != nil {
		t.Fatal(err)
	}
	res, err := f.db.Exec(`INSERT INTO allocations (sku, pid, epoch, kind, sub, qty) VALUES ('across', ?, ?, 'fill', 'a', 5)`, p.ID, p.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := res.LastInsertId()
	if r, err := p.Refill(ctx, id, 'a', 5, 1000); err != nil || r.Code != shard.RefillApplied {
		t.Fatalf("refill in redis: %+v %v", r, err)
	}
	f.alloc.Fence(ctx, p, ReasonRollback)
	if err := f.alloc.ApplyPending(ctx, 0); err != nil {
		t.Fatal(err)
	}
	var total, pool, inDoubt, doubt int64
	if err := f.db.QueryRow(`SELECT s.total, s.pool, s.in_doubt, p.doubt_units FROM skus s JOIN partitions p USING (sku) WHERE sku = 'across'`).
		Scan(&total, &pool, &inDoubt, &doubt); err != nil {
		t.Fatal(err)
	}
	if s := f.allocationState(t, id); s != "applied" || pool+inDoubt != total || inDoubt != doubt {
		t.Fatalf("allocation %s; pool %d + in_doubt %d != total %d (partition doubt %d)", s, pool, inDoubt, total, doubt)
	}
}

// The doubt resolution's round asks MySQL once for the SKUs that have a
// due doubt (DoubtsDue) and resolves only those: the list must name every
// SKU whose resolution would return units, and no other. Fenced partitions
// in every state: due, fenced too recently, resolved already, open.
func TestDoubtsDueNamesEverySKUWithADueDoubt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1)
	now := time.Now()
	cutoff := now.Add(-30 * time.Minute)
	type part struct {
		fencedAgo time.Duration // 0: open
		resolved  bool
		units     int64
	}
	skus := map[string][]part{
		"dd-due":      {{fencedAgo: time.Hour, units: 5}, {}},
		"dd-recent":   {{fencedAgo: time.Minute, units: 3}, {}},
		"dd-resolved": {{fencedAgo: time.Hour, resolved: true}, {}},
		"dd-open":     {{}, {}},
		"dd-Due":      {{}, {fencedAgo: 2 * time.Hour, units: 1}}, // a case variant: another SKU
		"dd-both":     {{fencedAgo: time.Hour, units: 2}, {fencedAgo: time.Minute, units: 4}},
	}
	for name, parts := range skus {
		if _, _, err := f.alloc.Provision(ctx, name, Spec{Total: 100, Partitions: len(parts), Chunk: 10, Threshold: 3}, Spec{}); err != nil {
			t.Fatal(err)
		}
		var inDoubt int64
		for pid, p := range parts {
			if p.fencedAgo == 0 {
				continue
			}
			var resolvedAt any
			if p.resolved {
				resolvedAt = now
			}
			if _, err := f.db.Exec(`UPDATE partitions SET state = 'fenced', fenced_at = ?, doubt_units = ?, doubt_resolved_at = ? WHERE sku = ? AND pid = ?`,
				now.Add(-p.fencedAgo).UTC(), p.units, resolvedAt, name, pid); err != nil {
				t.Fatal(err)
			}
			inDoubt += p.units
		}
		if _, err := f.db.Exec(`UPDATE skus SET in_doubt = ? WHERE sku = ?`, inDoubt, name); err != nil {
			t.Fatal(err)
		}
	}
	due, err := f.alloc.DoubtsDue(ctx, cutoff)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, s := range due {
		listed[s] = true
	}
	want := map[string]int64{"dd-due": 5, "dd-Due": 1, "dd-both": 2}
	for name := range skus {
		n, err := f.alloc.ResolveDoubts(ctx, name, cutoff, false)
		if err != nil {
			t.Fatal(err)
		}
		if n != want[name] || listed[name] != (n > 0) {
			t.Errorf("%s: listed %v, resolution returned %d units (want %d)", name, listed[name], n, want[name])
		}
	}
	if len(due) != len(want) {
		t.Errorf("DoubtsDue %v, want the %d SKUs with a due doubt", due, len(want))
	}
}
