package daemon

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/internal/stocktest"
)

func verify(t *testing.T, n *node, sku string) audit.Report {
	t.Helper()
	var r audit.Report
	if code := adminDo(t, n, "GET", "/admin/skus/"+sku+"/verify", "", &r); code != 200 {
		t.Fatalf("verify: status %d", code)
	}
	return r
}

// waitSynced waits until write-back has drained (nothing in flight) and
// verify passes, and returns the report; it fails the test after within.
func waitSynced(t *testing.T, n *node, sku string, within time.Duration) audit.Report {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := verify(t, n, sku)
		if r.OK && r.InFlightDetails == 0 {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("not synced within %s: %+v", within, r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkConserved waits for write-back and asserts that every unit of sku
// is accounted for and that MySQL holds exactly what callers were told.
func checkConserved(t *testing.T, e *env, n *node, sku string, soldUnits int64) audit.Report {
	t.Helper()
	r := waitSynced(t, n, sku, 10*time.Second)
	if got := r.Reserved + r.Confirmed; got != soldUnits {
		t.Errorf("MySQL holds %d sold units, callers were told %d", got, soldUnits)
	}
	return r
}

// Ten thousand buyers, a thousand units: exactly a thousand sell, everyone
// else hears sold_out, and nothing is left anywhere.
func TestTenThousandBuyers(t *testing.T) {
	e := newEnv(t, 3)
	n := startNode(t, e.config())
	putSKU(t, n, "hot", 1000, 4, 50, 10)

	b := stocktest.NewBuyer(512)
	o := stocktest.Crowd(t, b, n.hot, "hot", 10000, "buyer-", func(int) int64 { return 1 })

	if len(o.Errs) > 0 {
		t.Fatalf("%d transport errors, first: %v", len(o.Errs), o.Errs[0])
	}
	if o.OK != 1000 || o.SoldOut != 9000 || len(o.Other) > 0 {
		t.Fatalf("ok %d, sold_out %d, other %v; want 1000 ok and 9000 sold_out", o.OK, o.SoldOut, o.Other)
	}
	if len(o.Reservations) != 1000 {
		t.Fatalf("%d distinct reservations, want 1000", len(o.Reservations))
	}
	// Write-back: within 3 s of the last answer MySQL holds every detail.
	r := waitSynced(t, n, "hot", 3*time.Second)
	var rows, units int64
	if err := e.db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(qty),0) FROM deductions WHERE sku = 'hot'`).Scan(&rows, &units); err != nil {
		t.Fatal(err)
	}
	if rows != 1000 || units != 1000 || r.Reserved != 1000 {
		t.Fatalf("MySQL: %d detail rows, %d units, reserved counter %d; want 1000 each", rows, units, r.Reserved)
	}
	l := e.ledger("hot")
	if l.pool != 0 || l.pendingFills != 0 {
		t.Errorf("pool %d, pending fills %d; want both 0", l.pool, l.pendingFills)
	}
	for i, v := range l.subDomains {
		if v != 0 {
			t.Errorf("sub-domain %d holds %d, want 0", i, v)
		}
	}
	// Late arrivals are answered from memory.
	a, err := b.Deduct(n.hot, "hot", 1, "late-1")
	if err != nil || a.Code != 409 {
		t.Fatalf("late buyer: %+v %v", a, err)
	}
}

// Mixed quantities, then single units until sold out: every unit sells, no
// remainder stays stranded in some partition.
func TestMixedQuantitiesSellThrough(t *testing.T) {
	e := newEnv(t, 3)
	n := startNode(t, e.config())
	const total = 1000
	putSKU(t, n, "mix", total, 4, 50, 10)

	b := stocktest.NewBuyer(512)
	o := stocktest.Crowd(t, b, n.hot, "mix", 10000, "m-", func(i int) int64 { return int64(1 + i%5) })
	if len(o.Errs) > 0 || len(o.Other) > 0 {
		t.Fatalf("errors %v, unexpected statuses %v", o.Errs, o.Other)
	}
	if o.Units > total {
		t.Fatalf("oversold: %d units acknowledged of %d", o.Units, total)
	}
	sold := o.Units
	for i := 0; ; i++ {
		a, err := b.Deduct(n.hot, "mix", 1, "tail-"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		if a.Code == 409 {
			break
		}
		if a.Code != 200 {
			t.Fatalf("tail request: %+v", a)
		}
		sold += a.Qty
		if sold > total {
			t.Fatalf("oversold: %d of %d", sold, total)
		}
	}
	if sold != total {
		t.Fatalf("sold %d units of %d: %d stranded", sold, total, total-sold)
	}
	checkConserved(t, e, n, "mix", sold)
}

// The same request id sent twice at once returns one reservation and
// deducts once; so does a retry much later.
func TestRetrySameRequestID(t *testing.T) {
	e := newEnv(t, 3)
	n := startNode(t, e.config())
	putSKU(t, n, "retry", 100, 4, 10, 2)
	b := stocktest.NewBuyer(64)

	var reqs []string
	for i := 0; i < 40; i++ {
		reqs = append(reqs, "dup-"+strconv.Itoa(i))
	}
	first := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, id := range reqs {
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				a, err := b.Deduct(n.hot, "retry", 2, id)
				if err != nil || a.Code != 200 {
					t.Errorf("%s: %+v %v", id, a, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if prev, ok := first[id]; ok && prev != a.Reservation {
					t.Errorf("%s got two reservations: %s and %s", id, prev, a.Reservation)
				}
				first[id] = a.Reservation
			}(id)
		}
	}
	wg.Wait()
	// 40 requests x 2 units: the other 20 units are still there.
	checkConserved(t, e, n, "retry", 80)
	for _, id := range reqs[:5] {
		a, err := b.Deduct(n.hot, "retry", 2, id)
		if err != nil || a.Reservation != first[id] {
			t.Fatalf("late retry of %s: %+v %v, want %s", id, a, err, first[id])
		}
	}
	checkConserved(t, e, n, "retry", 80)
}

// Stop the daemon in the middle of a sale and start it again: the sale goes
// on, retries of requests from before the stop get their first answer, and
// the total is never exceeded.
func TestRestartMidSale(t *testing.T) {
	e := newEnv(t, 3)
	cfg := e.config()
	n := startNode(t, cfg)
	const total = 2000
	putSKU(t, n, "restart", total, 4, 50, 10)
	b := stocktest.NewBuyer(256)

	all := stocktest.NewTally()
	var mu sync.Mutex
	answered := map[string]stocktest.Answer{}
	buy := func(addr string, from, to int) {
		var wg sync.WaitGroup
		for i := from; i < to; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				id := "r-" + strconv.Itoa(i)
				a, err := b.Deduct(addr, "restart", int64(1+i%3), id)
				if err == nil && a.Code == 200 {
					mu.Lock()
					answered[id] = a
					mu.Unlock()
				}
				all.Add(t, id, a, err)
			}(i)
		}
		wg.Wait()
	}
	// First half of the crowd, then stop while a second wave is running.
	buy(n.hot, 0, 300)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); buy(n.hot, 300, 900) }()
	time.Sleep(20 * time.Millisecond)
	n.stop()
	wg.Wait()

	n2 := startNode(t, cfg)
	// Retries of everything acknowledged before the stop get the same answer.
	mu.Lock()
	before := make(map[string]stocktest.Answer, len(answered))
	for k, v := range answered {
		before[k] = v
	}
	mu.Unlock()
	for id, a := range before {
		var i int
		fmt.Sscanf(id, "r-%d", &i)
		r, err := b.Deduct(n2.hot, "restart", int64(1+i%3), id)
		if err != nil || r.Reservation != a.Reservation {
			t.Fatalf("retry of %s after restart: %+v %v, want %s", id, r, err, a.Reservation)
		}
	}
	// Sell the rest.
	rest := stocktest.Crowd(t, b, n2.hot, "restart", 3000, "after-", func(i int) int64 { return int64(1 + rand.IntN(3)) })
	if len(rest.Errs) > 0 || len(rest.Other) > 0 {
		t.Fatalf("after restart: errors %v, statuses %v", rest.Errs, rest.Other)
	}
	sold := all.Units + rest.Units
	if sold > total {
		t.Fatalf("oversold: %d of %d", sold, total)
	}
	// Requests cut off by the stop may have succeeded without their caller
	// hearing it; the details are the truth, and callers heard no more.
	r := waitSynced(t, n2, "restart", 10*time.Second)
	if r.Reserved < sold || r.Reserved > total {
		t.Fatalf("callers were told %d units, details hold %d of %d", sold, r.Reserved, total)
	}
	t.Logf("sold %d units (%d acknowledged) of %d; %d transport errors during the stop", r.Reserved, sold, total, len(all.Errs))
}
