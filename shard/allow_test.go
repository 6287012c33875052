package shard

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"testing"

	"github.com/redis/rueidis"
	"github.com/stockd/stockd/internal/stocktest"
)

func oneAllowance(t *testing.T) *Allowance {
	t.Helper()
	set, err := Open(context.Background(), []Config{{ID: "s1", Addr: stocktest.StartRedis(t).Addr}}, Options{Prefix: stocktest.Name("allow")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	a, err := set.Allowance("sku", "s1")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func held(t *testing.T, a *Allowance, user string) int64 {
	t.Helper()
	c := a.Shard.client()
	n, err := c.Do(context.Background(), c.B().Hget().Key(a.key).Field("u:"+user).Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fullState reads the whole hash with Scan, a few fields a step (so that
// a hash of more than one step is read in several).
func fullState(t *testing.T, a *Allowance) AllowState {
	t.Helper()
	all := AllowState{Details: map[string]string{}}
	seen := map[string]bool{}
	for cursor, first := uint64(0), true; first || cursor != 0; first = false {
		st, next, err := a.Scan(context.Background(), cursor, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range st.Entries {
			if !seen[e.ReqID] { // HSCAN may return a field twice
				seen[e.ReqID] = true
				all.Entries = append(all.Entries, e)
			}
		}
		for d, r := range st.Details {
			all.Details[d] = r
		}
		cursor = next
	}
	return all
}

// The allowance's life: taken, retried, refused at the limit, settled,
// given back (pending by request id, held by detail), and what a retry of
// each finds.
func TestAllowanceLifecycle(t *testing.T) {
	ctx := context.Background()
	a := oneAllowance(t)
	take := func(req string, qty int64, want AllowCode, wantHeld int64) {
		t.Helper()
		code, h, err := a.Take(ctx, req, "u:1", qty, 3)
		if err != nil || code != want || h != wantHeld {
			t.Fatalf("take %s qty %d: code %d held %d err %v; want %d held %d", req, qty, code, h, err, want, wantHeld)
		}
	}
	take("r1", 2, AllowTaken, 2)
	take("r1", 2, AllowAgain, 2) // a retry counts nothing
	take("r2", 2, AllowLimit, 2) // 2 + 2 > 3: nothing written
	take("r3", 1, AllowTaken, 3)
	if err := a.Settle(ctx, "r1", "u:1", 2, "sku:0:42:7"); err != nil {
		t.Fatal(err)
	}
	// A request that found no stock gives its pending units back; a held
	// entry is not given back that way.
	if ok, err := a.GiveBack(ctx, "r3"); !ok || err != nil {
		t.Fatalf("give back pending r3: %v %v", ok, err)
	}
	if ok, _ := a.GiveBack(ctx, "r1"); ok {
		t.Fatal("a held entry was given back as if its take found no stock")
	}
	if h := held(t, a, "u:1"); h != 2 {
		t.Fatalf("held %d, want 2", h)
	}
	// Release by detail: the entry becomes a tombstone, twice is once.
	for i := 0; i < 2; i++ {
		ok, err := a.GiveBackDetail(ctx, "sku:0:42:7")
		if err != nil || ok != (i == 0) {
			t.Fatalf("give back detail #%d: %v %v", i, ok, err)
		}
	}
	if h := held(t, a, "u:1"); h != 0 {
		t.Fatalf("held %d after the release, want 0", h)
	}
	take("r1", 2, AllowGivenBack, 0) // a retry of the released request
	take("r3", 3, AllowTaken, 3)     // r3 was deleted: counted anew
	st := fullState(t, a)
	var kinds string
	for _, e := range st.Entries {
		kinds += e.ReqID + "=" + string(e.Kind) + " "
		if e.ReqID == "r3" && (e.Qty != 3 || e.User != "u:1") {
			t.Fatalf("r3 parsed as %+v", e)
		}
	}
	if len(st.Entries) != 2 || len(st.Details) != 0 {
		t.Fatalf("entries %s details %v", kinds, st.Details)
	}
	// Settle of an entry the sweep dropped records it again: the
	// deduction exists, so it counts.
	if err := a.Settle(ctx, "r9", "u:2", 2, "sku:1:5:1"); err != nil {
		t.Fatal(err)
	}
	if h := held(t, a, "u:2"); h != 2 {
		t.Fatalf("u:2 held %d after a settle without entry, want 2", h)
	}
	// Compare-and-give: a stale read gives nothing.
	if ok, _ := a.GiveBackEntry(ctx, "r3", "p:3:0:u:1", false); ok {
		t.Fatal("gave back an entry that no longer reads as expected")
	}
}

// Concurrent takes of one user never pass the limit.
func TestAllowanceConcurrentTakes(t *testing.T) {
	a := oneAllowance(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var units int64
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			qty := int64(1 + i%2)
			code, _, err := a.Take(context.Background(), "r"+strconv.Itoa(i), "u", qty, 5)
			if err != nil {
				t.Error(err)
				return
			}
			if code == AllowTaken {
				mu.Lock()
				units += qty
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if h := held(t, a, "u"); units > 5 || h != units {
		t.Fatalf("taken %d units, count %d, limit 5", units, h)
	}
}

// Takes and settles that arrive together share calls (allow.lua's batch
// op) and count exactly as separate calls would: the limit holds across a
// batch, a settle after its take in the same batch holds the entry, and
// retries meet their entries.
func TestAllowanceBatchesCountExactly(t *testing.T) {
	ctx := context.Background()
	a := oneAllowance(t)
	const n, limit = 40, 7
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[AllowCode]int{}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "r" + strconv.Itoa(i)
			code, _, err := a.Take(ctx, id, "u1", 1, limit)
			if err != nil {
				t.Error(err)
				return
			}
			if code == AllowTaken {
				if err := a.Settle(ctx, id, "u1", 1, "sku:0:1:"+strconv.Itoa(i+1)); err != nil {
					t.Error(err)
				}
			}
			// Another user in the same batches, under no pressure.
			if code, _, err := a.Take(ctx, "s"+id, "u2", 1, 1000); err != nil || code != AllowTaken {
				t.Errorf("take %s for u2: %d %v", id, code, err)
			}
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[AllowTaken] != limit || codes[AllowLimit] != n-limit {
		t.Fatalf("codes %v; want %d taken and %d at the limit", codes, limit, n-limit)
	}
	if h := held(t, a, "u1"); h != limit {
		t.Fatalf("u1 holds %d; want %d", h, limit)
	}
	if h := held(t, a, "u2"); h != n {
		t.Fatalf("u2 holds %d; want %d", h, n)
	}
	st := fullState(t, a)
	if len(st.Details) != limit {
		t.Fatalf("%d held entries; want %d", len(st.Details), limit)
	}
	for i := range n {
		if code, _, err := a.Take(ctx, "r"+strconv.Itoa(i), "u1", 1, limit); err != nil || (code != AllowAgain && code != AllowLimit) {
			t.Fatalf("retry r%d: %d %v", i, code, err)
		}
	}
}
