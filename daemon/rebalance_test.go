package daemon

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/internal/stocktest"
)

func rebalance(t *testing.T, n *node, sku, body string) {
	t.Helper()
	var out map[string]any
	if code := adminDo(t, n, "POST", "/admin/skus/"+sku+"/rebalance", body, &out); code != 200 {
		t.Fatalf("rebalance %s: status %d", body, code)
	}
}

func openOn(v admin.SKUView) (open int, byShard map[string]int) {
	byShard = map[string]int{}
	for _, p := range v.Partitions {
		if p.State == "open" {
			open++
			byShard[p.Shard]++
		}
	}
	return open, byShard
}

// Rebalance 4 → 8 → 2 partitions while 5,000 buyers hit the SKU: exactly
// the total sells, nothing is lost or doubled, and requests answered
// before the changes get their first answer when retried after them.
func TestRebalanceUnderLoad(t *testing.T) {
	e := newEnv(t, 3)
	n := startNode(t, e.config())
	const total = 3000
	putSKU(t, n, "rb", total, 4, 50, 10)
	b := stocktest.NewBuyer(256)

	// Requests answered under the first partition set.
	pre := stocktest.Crowd(t, b, n.hot, "rb", 200, "pre-", func(int) int64 { return 1 })
	if pre.OK != 200 {
		t.Fatalf("first 200: %d ok", pre.OK)
	}

	var wg sync.WaitGroup
	var during *stocktest.Tally
	wg.Add(1)
	go func() {
		defer wg.Done()
		// After the shrink, 5,000 buyers wait on two partitions refilled 50
		// units at a time; on 2 cores under -race some wait out
		// stock_wait and get 503, which they retry with the same id.
		during = crowdOverRetrying(t, b, []string{n.hot}, "rb", 5000, "mid-", 5)
	}()
	time.Sleep(50 * time.Millisecond)
	rebalance(t, n, "rb", `{"partitions":8}`)
	if open, _ := openOn(getSKU(t, n, "rb")); open != 8 {
		t.Fatalf("%d open partitions after growing to 8", open)
	}
	rebalance(t, n, "rb", `{"partitions":2}`)
	wg.Wait()
	if len(during.Errs) > 0 || len(during.Other) > 0 {
		t.Fatalf("during the rebalances: errors %v, statuses %v", firstErr(during.Errs), during.Other)
	}
	v := getSKU(t, n, "rb")
	if open, _ := openOn(v); open != 2 {
		t.Fatalf("%d open partitions after shrinking to 2: %+v", open, v.Partitions)
	}
	for _, p := range v.Partitions {
		if p.State == "closed" && p.A+p.B != 0 {
			t.Fatalf("closed partition %d still holds %d units", p.ID, p.A+p.B)
		}
	}

	// Retries of the first 200 ids meet their first answers, although their
	// homes may have moved or closed.
	for id, tok := range reservationsByID(pre) {
		a, err := b.Deduct(n.hot, "rb", 1, id)
		if err != nil || a.Reservation != tok {
			t.Fatalf("retry of %s after the rebalances: %+v %v, want %s", id, a, err, tok)
		}
	}

	// Sell the rest one unit at a time: exactly the total sells.
	sold := pre.Units + during.Units
	for i := 0; sold < total+1; i++ {
		a, err := b.Deduct(n.hot, "rb", 1, "tail-"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		if a.Code == 409 {
			break
		}
		if a.Code != 200 {
			t.Fatalf("tail: %+v", a)
		}
		sold += a.Qty
	}
	if sold != total {
		t.Fatalf("sold %d of %d", sold, total)
	}
	r := waitSynced(t, n, "rb", 10*time.Second)
	if r.Reserved != total || r.Doubled != 0 || r.Pool != 0 {
		t.Fatalf("verify %+v", r)
	}
}

func reservationsByID(o *stocktest.Tally) map[string]string {
	out := map[string]string{}
	for tok, id := range o.Reservations {
		out[id] = tok
	}
	return out
}

// Drain a shard while buyers hit the SKU: afterwards no partition lives on
// it, the books balance, and once its details are written back it can be
// removed.
func TestDrainShardUnderLoad(t *testing.T) {
	e := newEnv(t, 3)
	n := startNode(t, e.config())
	const total = 2000
	putSKU(t, n, "dr", total, 6, 50, 10)
	_, before := openOn(getSKU(t, n, "dr"))
	if before["s1"] == 0 {
		t.Fatalf("no partition on s1 to drain: %v", before)
	}
	b := stocktest.NewBuyer(256)
	var wg sync.WaitGroup
	var o *stocktest.Tally
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Buyers retry a 503 with the same id, as the contract allows
		// (moving partitions while a herd waits on refills, on 2 cores).
		o = crowdOverRetrying(t, b, []string{n.hot}, "dr", 3000, "x-", 5)
	}()
	time.Sleep(50 * time.Millisecond)
	var moved map[string]any
	if code := adminDo(t, n, "POST", "/admin/shards/s1/drain", "", &moved); code != 200 {
		t.Fatalf("drain: %d", code)
	}
	wg.Wait()
	if len(o.Errs) > 0 || len(o.Other) > 0 || o.Units != total {
		t.Fatalf("sold %d of %d, errors %v, statuses %v", o.Units, total, firstErr(o.Errs), o.Other)
	}
	v := getSKU(t, n, "dr")
	open, after := openOn(v)
	if after["s1"] != 0 || open != 6 {
		t.Fatalf("after the drain: %d open, per shard %v", open, after)
	}
	r := waitSynced(t, n, "dr", 10*time.Second)
	if r.Reserved != total || r.Doubled != 0 {
		t.Fatalf("verify %+v", r)
	}
	var shards []struct {
		ID, State string
	}
	adminDo(t, n, "GET", "/admin/shards", "", &shards)
	if fmt.Sprint(shards) == "" {
		t.Fatal("no shards listed")
	}
	for _, s := range shards {
		if s.ID == "s1" && s.State != "draining" {
			t.Fatalf("s1 is %s after the drain", s.State)
		}
	}
	if code := adminDo(t, n, "DELETE", "/admin/shards/s1", "", nil); code != 200 {
		t.Fatalf("remove drained shard: %d", code)
	}
	// A new SKU avoids the removed shard.
	nv := putSKU(t, n, "after", 100, 4, 10, 2)
	if _, per := openOn(nv); per["s1"] != 0 {
		t.Fatalf("new SKU put a partition on the removed shard: %v", per)
	}
}
