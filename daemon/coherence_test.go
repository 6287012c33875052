package daemon

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// Read-your-writes across the cluster (DESIGN invariant 7): once an admin
// change answered 2xx, no live node answers 404 for a created SKU or
// sold_out after a restock. These tests send their buyers the moment the
// admin call returned and count the stale answers.

// definite sends request id to addrs[first], retrying a 503 with the same
// id on the next node until the outcome is definite (or 60 s passed).
func definite(b *stocktest.Buyer, addrs []string, first int, sku, id string) (stocktest.Answer, error) {
	deadline := time.Now().Add(60 * time.Second)
	for try := 0; ; try++ {
		a, err := b.Deduct(addrs[(first+try)%len(addrs)], sku, 1, id)
		if (err == nil && a.Code != 503) || time.Now().After(deadline) {
			return a, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// staleClock records when stale answers were seen, relative to when the
// admin call returned.
type staleClock struct {
	mu       sync.Mutex
	returned time.Time
	n        int
	last     time.Duration
}

func (c *staleClock) saw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	c.last = max(c.last, time.Since(c.returned))
}

// Create a SKU through node 1 and, the moment the call returns, burst
// 3,000 buyers over all three nodes plus 150 request ids sent three times
// each to different nodes: no 404, every id one outcome on every copy,
// exactly the total sold, verify ok.
func TestClusterCreateThenBuyEverywhere(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startCluster(t, e, 3)
	addrs := hots(nodes)
	b := stocktest.NewBuyer(256)
	const total, buyers, triples = 1000, 3000, 150

	var put putAnswer
	began := time.Now()
	if code := adminDo(t, nodes[0], "PUT", "/admin/skus/fresh", `{"total":1000,"partitions":4,"chunk":50,"threshold":10}`, &put); code != 201 {
		t.Fatalf("create: status %d", code)
	}
	stale := &staleClock{returned: time.Now()}
	t.Logf("create answered in %s", stale.returned.Sub(began).Round(time.Millisecond))
	var first503 atomic.Int64
	defer func() { t.Logf("%d first answers were 503 (retried until definite)", first503.Load()) }()
	o := stocktest.NewTally()
	var mu sync.Mutex
	copies := map[string][]stocktest.Answer{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < buyers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			id := "c-" + strconv.Itoa(i)
			a, err := b.Deduct(addrs[i%3], "fresh", 1, id)
			if err == nil && a.Code == 404 {
				stale.saw()
			}
			if err == nil && a.Code == 503 {
				first503.Add(1)
				a, err = definite(b, addrs, i%3+1, "fresh", id)
			}
			o.Add(t, id, a, err)
		}(i)
	}
	for i := 0; i < triples; i++ {
		for k := 0; k < 3; k++ {
			wg.Add(1)
			go func(i, k int) {
				defer wg.Done()
				<-start
				id := "t-" + strconv.Itoa(i)
				a, err := b.Deduct(addrs[(i+k)%3], "fresh", 1, id)
				if err == nil && a.Code == 404 {
					stale.saw()
				}
				if err == nil && a.Code == 503 {
					first503.Add(1)
					a, err = definite(b, addrs, (i+k)%3+1, "fresh", id)
				}
				if err != nil {
					t.Errorf("%s: %v", id, err)
					return
				}
				mu.Lock()
				copies[id] = append(copies[id], a)
				mu.Unlock()
			}(i, k)
		}
	}
	close(start)
	wg.Wait()
	t.Logf("after create: %d answers 404, the last %s after the admin call returned; unconfirmed %v", stale.n, stale.last.Round(time.Millisecond), put.Unconfirmed)

	var units int64 = o.Units
	differ := 0
	for id, as := range copies {
		if len(as) != 3 {
			t.Fatalf("%s: %d answers", id, len(as))
		}
		if as[0].Code == 200 {
			units++
		}
		for _, a := range as[1:] {
			if a.Code != as[0].Code || a.Status != as[0].Status || a.Reservation != as[0].Reservation {
				differ++
				if differ <= 5 {
					t.Logf("%s: outcomes differ across copies: %d %s vs %d %s", id, as[0].Code, as[0].Status, a.Code, a.Status)
				}
				break
			}
		}
	}
	if stale.n > 0 || differ > 0 || len(o.Errs) > 0 || len(o.Other) > 0 {
		t.Fatalf("%d answers 404, %d of %d ids with different outcomes across copies; errors %v, other statuses %v",
			stale.n, differ, triples, firstErr(o.Errs), o.Other)
	}
	if units != total {
		t.Fatalf("sold %d of %d", units, total)
	}
	r := waitSynced(t, nodes[1], "fresh", 20*time.Second)
	if r.Reserved != total || r.Doubled != 0 {
		t.Fatalf("verify %+v", r)
	}
}

// putAnswer is the part of a PUT /admin/skus answer these tests read.
type putAnswer struct {
	Version     int64    `json:"version"`
	Unconfirmed []string `json:"unconfirmed"`
}

// waitSoldOutEverywhere waits until every node answers sku's sold_out from
// memory (its verdict is installed).
func waitSoldOutEverywhere(t *testing.T, nodes []*node, sku string) {
	t.Helper()
	b := stocktest.NewBuyer(1)
	deadline := time.Now().Add(20 * time.Second)
	for _, n := range nodes {
		for {
			before := metric(t, n, "stockd_scheduler_sold_out_from_memory_total")
			a, err := b.Deduct(n.hot, sku, 1, fmt.Sprintf("probe-%d", time.Now().UnixNano()))
			if err == nil && a.Code == 409 && metric(t, n, "stockd_scheduler_sold_out_from_memory_total") > before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node at %s does not answer %s sold out from memory", n.hot, sku)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Sell out, restock through node 1 and, the moment the call returns, send
// exactly as many qty-1 requests as units were added to nodes 2 and 3:
// every one must take (no false sold_out while units remain).
func TestClusterRestockThenBuyElsewhere(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startCluster(t, e, 3)
	const first, added = 200, 300
	putSKU(t, nodes[0], "again", first, 4, 20, 5)
	waitKnown(t, nodes, "again")
	b := stocktest.NewBuyer(128)
	o := crowdOverRetrying(t, b, hots(nodes), "again", 2*first, "a-", 10)
	if o.Units != first {
		t.Fatalf("first sale sold %d of %d (other %v)", o.Units, first, o.Other)
	}
	waitSoldOutEverywhere(t, nodes, "again")

	var put putAnswer
	began := time.Now()
	if code := adminDo(t, nodes[0], "PUT", "/admin/skus/again", fmt.Sprintf(`{"total":%d}`, first+added), &put); code != 200 {
		t.Fatalf("restock: status %d", code)
	}
	stale := &staleClock{returned: time.Now()}
	t.Logf("restock answered in %s", stale.returned.Sub(began).Round(time.Millisecond))
	others := hots(nodes[1:])
	second := stocktest.NewTally()
	var wg sync.WaitGroup
	for i := 0; i < added; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := "r-" + strconv.Itoa(i)
			a, err := b.Deduct(others[i%2], "again", 1, id)
			if err == nil && a.Code == 409 {
				stale.saw()
			}
			if err == nil && a.Code == 503 {
				a, err = definite(b, others, i%2+1, "again", id)
			}
			second.Add(t, id, a, err)
		}(i)
	}
	wg.Wait()
	t.Logf("after restock: %d of %d answers sold_out while units remained, the last %s after the admin call returned; unconfirmed %v",
		stale.n, added, stale.last.Round(time.Millisecond), put.Unconfirmed)
	if stale.n > 0 || second.SoldOut > 0 || second.Units != added || len(second.Errs) > 0 || len(second.Other) > 0 {
		t.Fatalf("after restock: %d ok, %d sold_out of %d with %d units added; errors %v, other %v",
			second.OK, second.SoldOut, added, added, firstErr(second.Errs), second.Other)
	}
	// And sold out again once they are gone.
	late := crowdOverRetrying(t, b, hots(nodes), "again", 100, "late-", 10)
	if late.SoldOut != 100 {
		t.Fatalf("after the restocked units: %d sold_out of 100 (ok %d, other %v)", late.SoldOut, late.OK, late.Other)
	}
	r := waitSynced(t, nodes[2], "again", 20*time.Second)
	if r.Reserved != first+added || r.Doubled != 0 {
		t.Fatalf("verify %+v", r)
	}
}

// Node 3 (a process) is frozen with SIGSTOP while a SKU is restocked and
// another created through node 1. The admin answers name node 3 as
// unconfirmed and come back; after SIGCONT node 3's first answers are
// neither a stale sold_out nor a stale 404.
func TestClusterFrozenNodeReadYourWrites(t *testing.T) {
	e := newEnv(t, 3)
	n1 := joinNode(t, e, "n1", nil)
	n2 := joinNode(t, e, "n2", []*node{n1})
	cfg := e.config()
	cfg.NodeName = "n3"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.Join = []string{n1.d.GossipAddr()}
	p3 := startProc(t, cfg)
	n3 := &node{t: t, hot: p3.hot, admin: p3.admin}
	nodes := []*node{n1, n2, n3}
	deadline := time.Now().Add(20 * time.Second)
	for alive(clusterOf(t, n1)) != 3 || alive(clusterOf(t, n3)) != 3 {
		if time.Now().After(deadline) {
			t.Fatal("cluster of 3 did not form")
		}
		time.Sleep(50 * time.Millisecond)
	}
	const first, added = 100, 60
	putSKU(t, n1, "frz", first, 4, 10, 2)
	waitKnown(t, nodes, "frz")
	b := stocktest.NewBuyer(64)
	if o := crowdOverRetrying(t, b, hots(nodes), "frz", 2*first, "a-", 10); o.Units != first {
		t.Fatalf("first sale sold %d of %d (other %v)", o.Units, first, o.Other)
	}
	waitSoldOutEverywhere(t, nodes, "frz")

	if err := p3.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := true
	t.Cleanup(func() {
		if frozen {
			p3.cmd.Process.Signal(syscall.SIGCONT)
		}
	})
	var restock, create putAnswer
	began := time.Now()
	if code := adminDo(t, n1, "PUT", "/admin/skus/frz", fmt.Sprintf(`{"total":%d}`, first+added), &restock); code != 200 {
		t.Fatalf("restock: status %d", code)
	}
	if code := adminDo(t, n1, "PUT", "/admin/skus/frz2", `{"total":50,"partitions":2,"chunk":10,"threshold":2}`, &create); code != 201 {
		t.Fatalf("create: status %d", code)
	}
	took := time.Since(began)
	p3.cmd.Process.Signal(syscall.SIGCONT)
	frozen = false
	resumed := time.Now()

	// node 3's first answers, right after it resumed.
	var wg sync.WaitGroup
	o := stocktest.NewTally()
	stale := &staleClock{returned: resumed}
	for i := 0; i < added; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := "z-" + strconv.Itoa(i)
			a, err := b.Deduct(n3.hot, "frz", 1, id)
			if err == nil && a.Code == 409 {
				stale.saw()
			}
			if err == nil && a.Code == 503 {
				a, err = definite(b, []string{n3.hot}, 0, "frz", id)
			}
			o.Add(t, id, a, err)
		}(i)
	}
	wg.Add(1)
	var created stocktest.Answer
	var createdErr error
	go func() {
		defer wg.Done()
		created, createdErr = b.Deduct(n3.hot, "frz2", 1, "new-1")
		if createdErr == nil && created.Code == 503 {
			created, createdErr = definite(b, []string{n3.hot}, 0, "frz2", "new-1")
		}
	}()
	wg.Wait()
	t.Logf("two admin calls with node 3 frozen took %s; unconfirmed %v and %v; after SIGCONT %d stale sold_out (last %s after resume), new SKU answered %d",
		took.Round(time.Millisecond), restock.Unconfirmed, create.Unconfirmed, stale.n, stale.last.Round(time.Millisecond), created.Code)
	if !slices.Contains(restock.Unconfirmed, "n3") || !slices.Contains(create.Unconfirmed, "n3") {
		t.Errorf("the answers do not name the frozen node: restock %v, create %v", restock.Unconfirmed, create.Unconfirmed)
	}
	if createdErr != nil || created.Code != 200 {
		t.Errorf("node 3 on the SKU created while it was frozen: %+v %v", created, createdErr)
	}
	if stale.n > 0 || o.Units != added || len(o.Errs) > 0 || len(o.Other) > 0 {
		t.Errorf("node 3 after SIGCONT: %d ok, %d sold_out of %d (units added %d); errors %v, other %v",
			o.OK, o.SoldOut, added, added, firstErr(o.Errs), o.Other)
	}
	r := waitSynced(t, n1, "frz", 20*time.Second)
	if r.Reserved != first+added || r.Doubled != 0 {
		t.Fatalf("verify %+v", r)
	}
}

// A flood of made-up SKU names costs at most one catalogue read per
// view_max_age, and every one of them is answered 404.
func TestUnknownSKUFloodReadsTheCatalogueOncePerInterval(t *testing.T) {
	e := newEnv(t, 1)
	n := startNode(t, e.config())
	maxAge := n.d.cfg.Cluster.ViewMaxAge
	b := stocktest.NewBuyer(32)
	before := metric(t, n, "stockd_catalogue_reads_total")
	start := time.Now()
	var wg sync.WaitGroup
	var asked, notFound atomic.Int64
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Since(start) < 5*maxAge; i++ {
				a, err := b.Deduct(n.hot, fmt.Sprintf("nope-%d-%d", w, i), 1, "r-1")
				asked.Add(1)
				if err == nil && a.Code == 404 {
					notFound.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	reads := metric(t, n, "stockd_catalogue_reads_total") - before
	t.Logf("%d requests for unknown SKUs in %s: %d answered 404, %v catalogue reads", asked.Load(), elapsed.Round(time.Millisecond), notFound.Load(), reads)
	if notFound.Load() != asked.Load() {
		t.Fatalf("%d of %d answered 404", notFound.Load(), asked.Load())
	}
	if limit := float64(elapsed/maxAge) + 2; reads > limit {
		t.Fatalf("%v catalogue reads in %s, at most %v (one per %s)", reads, elapsed, limit, maxAge)
	}
}
