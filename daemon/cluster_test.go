package daemon

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// startCluster starts n in-process nodes joined into one cluster.
func startCluster(t *testing.T, e *env, n int) []*node {
	t.Helper()
	var nodes []*node
	for i := 0; i < n; i++ {
		nodes = append(nodes, joinNode(t, e, "n"+strconv.Itoa(i+1), nodes))
	}
	waitMembers(t, nodes, n)
	return nodes
}

// joinNode starts a node that joins the cluster of others.
func joinNode(t *testing.T, e *env, name string, others []*node) *node {
	t.Helper()
	cfg := e.config()
	cfg.NodeName = name
	if len(others) > 0 {
		cfg.Join = []string{others[0].d.GossipAddr()}
	}
	return startNode(t, cfg)
}

type clusterAnswer struct {
	Self    string `json:"self"`
	Members []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"members"`
	Owners map[string]struct {
		Partitions []string `json:"partitions"`
		SKUs       []string `json:"skus"`
	} `json:"owners"`
}

func clusterOf(t *testing.T, n *node) clusterAnswer {
	t.Helper()
	var c clusterAnswer
	if code := adminDo(t, n, "GET", "/admin/cluster", "", &c); code != 200 {
		t.Fatalf("GET /admin/cluster: %d", code)
	}
	return c
}

func alive(c clusterAnswer) int {
	k := 0
	for _, m := range c.Members {
		if m.State == "alive" {
			k++
		}
	}
	return k
}

// waitMembers waits until every node sees want alive members.
func waitMembers(t *testing.T, nodes []*node, want int) time.Duration {
	t.Helper()
	took, ok := stocktest.WaitFor(20*time.Second, func() bool {
		for _, n := range nodes {
			if alive(clusterOf(t, n)) != want {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("cluster did not converge to %d members", want)
	}
	return took
}

// waitKnown waits until every node serves sku.
func waitKnown(t *testing.T, nodes []*node, sku string) {
	t.Helper()
	b := stocktest.NewBuyer(4)
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		// (The message is built only on failure: a process node has no n.d.)
		stocktest.Eventually(t, time.Until(deadline), func() (bool, string) {
			req, _ := http.Get("http://" + n.hot + "/v1/stock/" + sku)
			if req != nil {
				req.Body.Close()
				if req.StatusCode == 200 {
					return true, ""
				}
			}
			return false, fmt.Sprintf("node %s does not know %s", n.d.cfg.NodeName, sku)
		})
	}
	_ = b
}

// checkOwnership asserts that all nodes agree on one owner per partition.
func checkOwnership(t *testing.T, nodes []*node, sku string, partitions int) map[string]int {
	t.Helper()
	var first map[string]string
	perNode := map[string]int{}
	for i, n := range nodes {
		c := clusterOf(t, n)
		owner := map[string]string{}
		for name, o := range c.Owners {
			for _, p := range o.Partitions {
				if strings.HasPrefix(p, sku+"/") {
					if prev, dup := owner[p]; dup {
						t.Fatalf("node %s: partition %s owned by %s and %s", c.Self, p, prev, name)
					}
					owner[p] = name
				}
			}
		}
		if len(owner) != partitions {
			t.Fatalf("node %s: %d of %d partitions have an owner", c.Self, len(owner), partitions)
		}
		if i == 0 {
			first = owner
			for _, o := range owner {
				perNode[o]++
			}
		} else {
			for p, o := range owner {
				if first[p] != o {
					t.Fatalf("nodes disagree on the owner of %s: %s vs %s", p, first[p], o)
				}
			}
		}
	}
	return perNode
}

// crowdOver spreads n buyers round-robin over the nodes' hot endpoints.
// Like a gateway, a buyer retries a 503 with the same request id on the
// next node (up to 3 times): three nodes, 10,000 buyers, Redis, MariaDB,
// RabbitMQ and another package's tests share 2 cores under the race
// detector, and a request waiting for a refill can outlast stock_wait.
func crowdOver(t *testing.T, b *stocktest.Buyer, addrs []string, sku string, n int, idPrefix string) *stocktest.Tally {
	t.Helper()
	return crowdOverRetrying(t, b, addrs, sku, n, idPrefix, 3)
}

// crowdOverRetrying is crowdOver where a buyer retries a 503 (up to
// retries times, same request id, next node) as the contract allows.
func crowdOverRetrying(t *testing.T, b *stocktest.Buyer, addrs []string, sku string, n int, idPrefix string, retries int) *stocktest.Tally {
	t.Helper()
	o := stocktest.NewTally()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			id := idPrefix + strconv.Itoa(i)
			a, err := b.Deduct(addrs[i%len(addrs)], sku, 1, id)
			for r := 1; r <= retries && err == nil && a.Code == 503; r++ {
				a, err = b.Deduct(addrs[(i+r)%len(addrs)], sku, 1, id)
			}
			o.Add(t, id, a, err)
		}(i)
	}
	close(start)
	wg.Wait()
	return o
}

func hots(nodes []*node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.hot)
	}
	return out
}

// Three nodes, 10,000 buyers spread over all three, 1,000 units: exactly
// 1,000 sell, MySQL holds exactly 1,000 details, verify passes, and the
// nodes agree on who owns each partition's background work.
func TestClusterTenThousandBuyers(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startCluster(t, e, 3)
	putSKU(t, nodes[0], "c1", 1000, 4, 50, 10)
	waitKnown(t, nodes, "c1")
	perNode := checkOwnership(t, nodes, "c1", 4)

	o := crowdOver(t, stocktest.NewBuyer(512), hots(nodes), "c1", 10000, "b-")
	if len(o.Errs) > 0 || len(o.Other) > 0 {
		t.Fatalf("errors %d (%v), statuses %v", len(o.Errs), firstErr(o.Errs), o.Other)
	}
	if o.OK != 1000 || o.SoldOut != 9000 {
		t.Fatalf("ok %d, sold_out %d; want 1000 and 9000", o.OK, o.SoldOut)
	}
	r := waitSynced(t, nodes[1], "c1", 5*time.Second)
	var rows int64
	e.db.QueryRow(`SELECT COUNT(*) FROM deductions WHERE sku = 'c1'`).Scan(&rows)
	if rows != 1000 || r.Reserved != 1000 || r.Doubled != 0 {
		t.Fatalf("%d detail rows, reserved %d, doubled %d; want 1000, 1000, 0", rows, r.Reserved, r.Doubled)
	}
	t.Logf("partitions owned per node: %v", perNode)
}

func firstErr(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

// A fourth node joins in the middle of a sale: ownership spreads to it,
// the nodes agree, and the sale ends with exactly the total sold.
func TestClusterNodeJoinsMidSale(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startCluster(t, e, 3)
	const total = 3000
	putSKU(t, nodes[0], "grow", total, 8, 50, 10)
	waitKnown(t, nodes, "grow")
	b := stocktest.NewBuyer(256)

	var wg sync.WaitGroup
	var first *stocktest.Tally
	wg.Add(1)
	go func() {
		defer wg.Done()
		first = crowdOver(t, b, hots(nodes), "grow", 2000, "a-")
	}()
	// n4 joins while the crowd is buying.
	stocktest.Until(t, 30*time.Second, "the crowd's first answers", func() bool {
		for _, n := range nodes {
			if metric(t, n, `stockd_deductions_total{outcome="ok"}`) > 0 {
				return true
			}
		}
		return false
	})
	n4 := joinNode(t, e, "n4", nodes)
	all := append(nodes, n4)
	joined := waitMembers(t, all, 4)
	wg.Wait()
	waitKnown(t, all, "grow")
	perNode := checkOwnership(t, all, "grow", 8)
	if perNode["n4"] == 0 {
		t.Logf("n4 won no partition of 8 (possible with rendezvous hashing); owners %v", perNode)
	}
	second := crowdOver(t, b, hots(all), "grow", 3000, "b-")
	for _, o := range []*stocktest.Tally{first, second} {
		if len(o.Errs) > 0 || len(o.Other) > 0 {
			t.Fatalf("errors %v, statuses %v", firstErr(o.Errs), o.Other)
		}
	}
	if sold := first.Units + second.Units; sold != total {
		t.Fatalf("sold %d of %d", sold, total)
	}
	r := waitSynced(t, n4, "grow", 10*time.Second)
	if r.Reserved != total || r.Doubled != 0 {
		t.Fatalf("verify: %+v", r)
	}
	c := clusterOf(t, n4)
	t.Logf("n4 converged %s after joining; owners per node %v; n4 owns %d partitions, skus %v", joined, perNode, len(c.Owners["n4"].Partitions), c.Owners["n4"].SKUs)
}

// metric reads one counter or gauge from a node's /metrics.
func metric(t *testing.T, n *node, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(scrape(t, n), "\n") {
		if strings.HasPrefix(line, name+" ") {
			v, _ := strconv.ParseFloat(strings.TrimPrefix(line, name+" "), 64)
			return v
		}
	}
	return 0
}

// Sold out, learned by one node, reaches the others: they answer sold_out
// from memory, without Redis calls (counted by their own metrics).
func TestClusterSoldOutSpreads(t *testing.T) {
	e := newEnv(t, 2)
	nodes := startCluster(t, e, 3)
	putSKU(t, nodes[0], "so", 200, 4, 20, 5)
	waitKnown(t, nodes, "so")
	b := stocktest.NewBuyer(64)
	o := crowdOver(t, b, []string{nodes[0].hot}, "so", 400, "a-")
	if o.OK != 200 {
		t.Fatalf("%d sold through node 1, want 200", o.OK)
	}
	// Node 1 knows; the notice reaches nodes 2 and 3.
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes[1:] {
		stocktest.Eventually(t, time.Until(deadline), func() (bool, string) {
			if resp, err := http.Get("http://" + n.hot + "/v1/stock/so"); err == nil {
				var body [64]byte
				k, _ := resp.Body.Read(body[:])
				resp.Body.Close()
				if strings.Contains(string(body[:k]), `"sold_out":true`) && metric(t, n, "stockd_scheduler_sold_out_from_memory_total") >= 0 &&
					soldOutKnown(t, n) {
					return true, ""
				}
			}
			return false, fmt.Sprintf("node %s did not learn the sell-out", n.d.cfg.NodeName)
		})
	}
	for _, n := range nodes[1:] {
		takes := metric(t, n, `stockd_scheduler_redis_calls_total{script="take"}`)
		points := metric(t, n, `stockd_scheduler_redis_calls_total{script="point"}`)
		late := crowdOver(t, b, []string{n.hot}, "so", 1000, "late-"+n.d.cfg.NodeName+"-")
		if late.SoldOut != 1000 {
			t.Fatalf("late buyers on %s: %d sold_out of 1000 (ok %d, other %v)", n.d.cfg.NodeName, late.SoldOut, late.OK, late.Other)
		}
		dt := metric(t, n, `stockd_scheduler_redis_calls_total{script="take"}`) - takes
		dp := metric(t, n, `stockd_scheduler_redis_calls_total{script="point"}`) - points
		// The Bloom filter of the 200 successful ids sends its ~1% false
		// positives to Redis; everything else is answered from memory.
		if dt+dp > 30 {
			t.Fatalf("node %s made %v take and %v point calls for 1000 late requests", n.d.cfg.NodeName, dt, dp)
		}
		t.Logf("node %s: 1000 late requests, %v take + %v point calls to Redis", n.d.cfg.NodeName, dt, dp)
	}
}

// soldOutKnown tells whether n answers from memory: one probe request
// must not touch Redis.
func soldOutKnown(t *testing.T, n *node) bool {
	before := metric(t, n, "stockd_scheduler_sold_out_from_memory_total")
	a, err := stocktest.NewBuyer(1).Deduct(n.hot, "so", 1, fmt.Sprintf("probe-%d", time.Now().UnixNano()))
	if err != nil || a.Code != 409 {
		return false
	}
	return metric(t, n, "stockd_scheduler_sold_out_from_memory_total") > before
}

// The same request id sent to two nodes at once deducts once.
func TestClusterRetryOnTwoNodes(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startCluster(t, e, 3)
	putSKU(t, nodes[0], "twice", 1000, 4, 30, 5)
	waitKnown(t, nodes, "twice")
	b := stocktest.NewBuyer(128)
	const ids = 300
	var mu sync.Mutex
	got := map[string][]string{}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for i := 0; i < ids; i++ {
		id := "both-" + strconv.Itoa(i)
		for k := 0; k < 2; k++ {
			wg.Add(1)
			go func(addr string) {
				defer wg.Done()
				a, err := b.Deduct(addr, "twice", 2, id)
				if err != nil || a.Code != 200 {
					bad.Add(1)
					return
				}
				mu.Lock()
				got[id] = append(got[id], a.Reservation)
				mu.Unlock()
			}(nodes[(i+k)%3].hot)
		}
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d requests failed", bad.Load())
	}
	for id, rs := range got {
		sort.Strings(rs)
		if len(rs) != 2 || rs[0] != rs[1] {
			t.Fatalf("%s: reservations %v", id, rs)
		}
	}
	r := waitSynced(t, nodes[2], "twice", 10*time.Second)
	if r.Reserved != 2*ids || r.Doubled != 0 {
		t.Fatalf("reserved %d, doubled %d; want %d and 0", r.Reserved, r.Doubled, 2*ids)
	}
}

// gatewaySale buys like a gateway in front of several nodes: request i
// goes to node i mod n, and a transport error (the node died) is retried
// with the same request id on the next node.
func gatewaySale(t *testing.T, b *stocktest.Buyer, addrs []string, sku, idPrefix string, workers int, stop <-chan struct{}) (*stocktest.Tally, *sync.WaitGroup) {
	o := stocktest.NewTally()
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := seq.Add(1)
				id := idPrefix + strconv.FormatInt(i, 10)
				var a stocktest.Answer
				var err error
				for try := 0; try < len(addrs)+2; try++ {
					a, err = b.Deduct(addrs[(int(i)+try)%len(addrs)], sku, 1, id)
					if err == nil && a.Code != 503 {
						break
					}
					time.Sleep(20 * time.Millisecond) // pacing: a gateway's backoff before the next node
				}
				o.Add(t, id, a, err)
			}
		}()
	}
	return o, &wg
}

// kill -9 one node of three in the middle of a sale: the other two carry
// on, its partitions' background work moves to them, its backlog reaches
// MySQL, and nothing is oversold, lost or doubled.
func TestClusterKillNineMidSale(t *testing.T) {
	e := newEnv(t, 3)
	base := e.config()
	procs, _ := startProcCluster(t, base, 3)
	admin := &node{t: t, admin: procs[0].admin}
	stocktest.Until(t, 20*time.Second, "cluster of 3 processes did not form", func() bool { return alive(clusterOf(t, admin)) == 3 })
	const total = 100000
	putSKU(t, admin, "k9c", total, 8, 100, 20)
	nodes := []*node{admin, {t: t, admin: procs[1].admin, hot: procs[1].hot}, {t: t, admin: procs[2].admin, hot: procs[2].hot}}
	admin.hot = procs[0].hot
	for _, n := range nodes {
		stocktest.Until(t, 30*time.Second, "node "+n.hot+" serves k9c", func() bool {
			resp, err := http.Get("http://" + n.hot + "/v1/stock/k9c")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	before := clusterOf(t, admin)
	victim := "n2"
	victimOwned := before.Owners[victim].Partitions

	b := stocktest.NewBuyer(32)
	stop := make(chan struct{})
	o, wg := gatewaySale(t, b, hots(nodes), "k9c", "g-", 6, stop)
	// The kill lands mid-sale, and the sale goes on after the move.
	soldMore := func(what string, n int) {
		t.Helper()
		from := o.Snapshot().OK
		stocktest.Until(t, 60*time.Second, what, func() bool { return o.Snapshot().OK >= from+n })
	}
	soldMore("the sale under way before the kill", 500)
	procs[1].kill9()
	// Ownership moves once the others declare the victim dead.
	moved, ok := stocktest.WaitFor(30*time.Second, func() bool {
		c := clusterOf(t, admin)
		_, still := c.Owners[victim]
		return !still && alive(c) == 2
	})
	if !ok {
		t.Fatal("ownership did not move within 30s of the kill")
	}
	soldMore("the survivors selling after the move", 500)
	close(stop)
	wg.Wait()
	stopped := time.Now()
	r := waitSynced(t, admin, "k9c", 30*time.Second)
	synced := time.Since(stopped)

	if o.Units > total {
		t.Fatalf("oversold: %d of %d", o.Units, total)
	}
	for tok := range o.Reservations {
		parts := strings.Split(tok, ":")
		var qty int64
		if err := e.db.QueryRow(`SELECT qty FROM deductions WHERE detail_id = ?`, strings.Join(parts[:4], ":")).Scan(&qty); err != nil {
			t.Fatalf("acknowledged reservation %s has no detail row: %v", tok, err)
		}
	}
	if r.Doubled != 0 || r.Reserved < o.Units {
		t.Fatalf("verify %+v; acknowledged %d", r, o.Units)
	}
	t.Logf("victim owned %v; ownership moved %s after the kill; backlog in MySQL %s after the sale stopped; %d ok, %d transport errors retried away, other %v",
		victimOwned, moved.Round(time.Millisecond), synced.Round(time.Millisecond), o.OK, len(o.Errs), o.Other)
}

func freePort(t *testing.T) int {
	t.Helper()
	return stocktest.FreePort(t)
}

// Every background step is idempotent, so two owners at once do no harm:
// two nodes that do not know each other (each a cluster of one, so each
// owns every partition and SKU) sell, publish the same streams (each
// trimming what it got confirmed), sweep allocations and expire
// reservations of the same SKU at the same time; the books still balance
// and nothing is doubled.
func TestTwoOwnersAtOnce(t *testing.T) {
	e := newEnv(t, 3)
	var nodes []*node
	for _, name := range []string{"left", "right"} {
		cfg := e.config()
		cfg.NodeName = name
		cfg.Sync.BatchInterval = 1500 * time.Millisecond // both nodes hold the same entries in open batches
		cfg.Sync.ReservationTTL = 20 * time.Second       // longer than the first crowd takes
		cfg.Sync.ExpireEvery = 100 * time.Millisecond
		cfg.Preallocate.PendingEvery = 100 * time.Millisecond
		cfg.Preallocate.PendingAge = time.Millisecond
		nodes = append(nodes, startNode(t, cfg))
	}
	for _, n := range nodes {
		if c := clusterOf(t, n); alive(c) != 1 || len(c.Owners[c.Self].SKUs) != 0 {
			t.Fatalf("%s should be alone: %+v", c.Self, c)
		}
	}
	const total = 2000
	putSKU(t, nodes[0], "two", total, 4, 20, 5)
	waitKnown(t, nodes, "two")
	for _, n := range nodes {
		c := clusterOf(t, n)
		if len(c.Owners[c.Self].Partitions) != 4 {
			t.Fatalf("%s owns %v, want all 4 partitions", c.Self, c.Owners[c.Self].Partitions)
		}
	}
	b := stocktest.NewBuyer(128)
	// Two owners refill the same sub-domains against each other; a buyer
	// may wait out stock_wait and get 503, which it retries as allowed.
	o := crowdOverRetrying(t, b, hots(nodes), "two", total+500, "x-", 3)
	if len(o.Errs) > 0 || len(o.Other) > 0 || o.Units != total {
		t.Fatalf("sold %d of %d, errors %v, statuses %v", o.Units, total, firstErr(o.Errs), o.Other)
	}
	// Confirm a third; the rest expire on both nodes at once.
	k := 0
	for tok := range o.Reservations {
		if k%3 == 0 {
			if a, err := b.Post(nodes[k%2].hot, "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, tok)); err != nil || a.Code != 200 {
				t.Fatalf("confirm: %+v %v", a, err)
			}
		}
		k++
	}
	confirmed := int64((len(o.Reservations) + 2) / 3)
	stocktest.Eventually(t, 60*time.Second, func() (bool, string) {
		r := verify(t, nodes[1], "two")
		if r.OK && r.InFlightDetails == 0 && r.Released == total-confirmed {
			if r.Confirmed != confirmed || r.Doubled != 0 || r.Reserved != 0 {
				t.Fatalf("verify %+v; want confirmed %d, released %d", r, confirmed, total-confirmed)
			}
			return true, ""
		}
		return false, fmt.Sprintf("books did not settle: %+v", r)
	})
	// The expired units sold again, once, through both nodes.
	again := crowdOverRetrying(t, b, hots(nodes), "two", 3000, "y-", 3)
	if again.Units != total-confirmed {
		t.Fatalf("after expiry %d sold again, want %d", again.Units, total-confirmed)
	}
	r := waitSynced(t, nodes[0], "two", 10*time.Second)
	if r.Doubled != 0 || r.Reserved+r.Confirmed != total {
		t.Fatalf("final verify %+v", r)
	}
}
