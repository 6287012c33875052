package daemon

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// pairOutcome is the definite answer one copy of a request got: a
// reservation token, or "sold_out".
type pairOutcome struct {
	final   string
	qty     int64
	retries int // 503 answers retried
	err     error
}

// deductUntilDefinite sends one copy of a request and retries a 503 with
// the same id on the same node (the contract's rule) until the answer is
// definite: 200 or 409 sold_out.
func deductUntilDefinite(b *stocktest.Buyer, addr, sku string, qty int64, id string, within time.Duration) pairOutcome {
	deadline := time.Now().Add(within)
	for retries := 0; ; retries++ {
		a, err := b.Deduct(addr, sku, qty, id)
		switch {
		case err != nil:
			return pairOutcome{err: err}
		case a.Code == 200 && a.Status == "ok":
			return pairOutcome{final: a.Reservation, qty: a.Qty, retries: retries}
		case a.Code == 409 && a.Status == "sold_out":
			return pairOutcome{final: "sold_out", retries: retries}
		case a.Code != 503:
			return pairOutcome{err: fmt.Errorf("status %d %+v", a.Code, a)}
		}
		if time.Now().After(deadline) {
			return pairOutcome{err: fmt.Errorf("still 503 after %s", within)}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Issue 12 item 3. Two copies of one request id, sent at once to two
// different nodes, while a third node grows and shrinks the SKU's
// partitions (4 → 6 → 8 → 10 → 6 → 4 and round again): the nodes load
// each new generation at different moments, so the copies see different
// home sets. Every pair must get one outcome (the same reservation, or
// sold_out on both), MySQL must hold one row per request id and nothing
// doubled, and callers never hold more than the total.
func TestRebalanceRetryPairsOnTwoNodes(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startCluster(t, e, 3)
	const (
		sku   = "pairs"
		pairs = 5000
		total = 4700 // most pairs succeed; the last few hundred meet the sell-out
	)
	putSKU(t, nodes[2], sku, total, 4, 40, 10)
	waitKnown(t, nodes, sku)
	b := stocktest.NewBuyer(256)

	// One cycle of partition changes through the third node, about a
	// second apart; the pairs are spread over it.
	steps := []int{6, 8, 10, 6, 4}
	rebalanced := make(chan struct{})
	var changes atomic.Int64
	var rbErr atomic.Value
	go func() {
		defer close(rebalanced)
		for _, n := range steps {
			time.Sleep(time.Second)
			body := `{"partitions":` + strconv.Itoa(n) + `}`
			var out map[string]any
			if code := adminDo(t, nodes[2], "POST", "/admin/skus/"+sku+"/rebalance", body, &out); code != 200 {
				rbErr.Store(fmt.Sprintf("rebalance %s: status %d", body, code))
				return
			}
			changes.Add(1)
		}
	}()

	res := make([][2]pairOutcome, pairs)
	feed := make(chan int)
	go func() {
		defer close(feed)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < pairs; i++ {
			select {
			case <-rebalanced:
			case <-tick.C:
			}
			feed <- i
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range feed {
				id := "pair-" + strconv.Itoa(i)
				var pw sync.WaitGroup
				start := make(chan struct{})
				for k := 0; k < 2; k++ {
					pw.Add(1)
					go func(k int) {
						defer pw.Done()
						<-start
						res[i][k] = deductUntilDefinite(b, nodes[k].hot, sku, 1, id, 30*time.Second)
					}(k)
				}
				close(start)
				pw.Wait()
			}
		}()
	}
	wg.Wait()
	<-rebalanced
	if v := rbErr.Load(); v != nil {
		t.Fatal(v)
	}
	if changes.Load() != int64(len(steps)) {
		t.Fatalf("%d of %d partition changes happened", changes.Load(), len(steps))
	}

	var disagree, doubles, okSold, okCount, soldBoth, retried int
	var held int64
	tokens := map[string]string{} // request id -> reservation
	var examples []string
	for i, r := range res {
		for _, c := range r {
			if c.err != nil {
				t.Fatalf("pair %d: %v", i, c.err)
			}
			retried += c.retries
		}
		id := "pair-" + strconv.Itoa(i)
		a, c := r[0].final, r[1].final
		switch {
		case a == c && a == "sold_out":
			soldBoth++
		case a == c:
			okCount++
			tokens[id] = a
			held += r[0].qty
		default:
			disagree++
			if a != "sold_out" && c != "sold_out" {
				doubles++
				held += r[0].qty + r[1].qty
			} else {
				okSold++
				held += r[0].qty + r[1].qty
			}
			if len(examples) < 5 {
				examples = append(examples, fmt.Sprintf("%s: %q vs %q", id, a, c))
			}
		}
	}
	claims := metric(t, nodes[0], `stockd_scheduler_redis_calls_total{script="claim"}`) +
		metric(t, nodes[1], `stockd_scheduler_redis_calls_total{script="claim"}`)
	t.Logf("%d pairs during %d partition changes (%.0f claim calls, %d 503s retried): %d same reservation, %d both sold_out, %d disagree (%d two reservations, %d 200 vs sold_out)",
		pairs, changes.Load(), claims, retried, okCount, soldBoth, disagree, doubles, okSold)
	if disagree > 0 {
		t.Errorf("%d of %d pairs disagree (%d doubles, %d 200 vs sold_out), e.g. %v", disagree, pairs, doubles, okSold, examples)
	}
	if held > total {
		t.Errorf("callers hold %d units of %d", held, total)
	}
	if okCount == 0 || soldBoth == 0 {
		t.Errorf("want both successes and a sold-out tail: %d ok, %d sold_out", okCount, soldBoth)
	}

	r := waitSynced(t, nodes[0], sku, 30*time.Second)
	if r.Doubled != 0 || r.Reserved != held {
		t.Errorf("verify: reserved %d (callers hold %d), doubled %d: %+v", r.Reserved, held, r.Doubled, r)
	}
	var rows, ids, doubled int64
	if err := e.db.QueryRow(`SELECT COUNT(*), COUNT(DISTINCT request_id) FROM deductions WHERE sku = ?`, sku).Scan(&rows, &ids); err != nil {
		t.Fatal(err)
	}
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM doubled_deductions WHERE sku = ?`, sku).Scan(&doubled); err != nil {
		t.Fatal(err)
	}
	if rows != ids || doubled != 0 || rows != int64(len(tokens)+2*doubles+okSold) {
		t.Errorf("MySQL: %d rows, %d request ids, %d doubled; callers hold %d reservations", rows, ids, doubled, len(tokens)+2*doubles+okSold)
	}
	// Each row is the reservation its request id was answered with.
	got := map[string]string{}
	q, err := e.db.Query(`SELECT request_id, detail_id FROM deductions WHERE sku = ?`, sku)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for q.Next() {
		var id, detail string
		if err := q.Scan(&id, &detail); err != nil {
			t.Fatal(err)
		}
		got[id] = detail
	}
	for id, tok := range tokens {
		if d, ok := got[id]; !ok || !strings.HasPrefix(tok, d+":") {
			t.Errorf("%s answered %s, MySQL holds %q", id, tok, d)
			break
		}
	}
}
