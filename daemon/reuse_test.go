package daemon

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// rawDeduct sends a deduction and returns the status and the exact body.
func rawDeduct(t *testing.T, b *stocktest.Buyer, addr, sku string, qty int64, reqID string) (int, string) {
	t.Helper()
	code, body, err := b.PostRaw(addr, "/v1/deduct", fmt.Sprintf(`{"sku":%q,"qty":%d,"request_id":%q}`, sku, qty, reqID))
	if err != nil {
		t.Fatal(err)
	}
	return code, string(body)
}

const reusedBody = `{"error":"request_id: reused with another qty","code":"request_id_reused"}`

// Issue 12 item 6. A request id that took, sent again with another qty (to
// the node that served it, to another node, and after the SKU sold out,
// when the sold-out filter sends it to Redis), is 422 request_id_reused
// and deducts nothing; the same qty still gets the first reservation.
func TestDeductReusedWithAnotherQty(t *testing.T) {
	e := newEnv(t, 2)
	nodes := startCluster(t, e, 2)
	const sku, total = "reuse", 12
	putSKU(t, nodes[0], sku, total, 2, 6, 1)
	waitKnown(t, nodes, sku)
	b := stocktest.NewBuyer(8)

	first, err := b.Deduct(nodes[0].hot, sku, 2, "r1")
	if err != nil || first.Code != 200 {
		t.Fatalf("first deduction: %+v %v", first, err)
	}
	r0 := waitSynced(t, nodes[0], sku, 10*time.Second)
	l0 := e.ledger(sku)
	rows := func() int64 {
		var n int64
		if err := e.db.QueryRow(`SELECT COUNT(*) FROM deductions WHERE sku = ?`, sku).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	rows0 := rows()

	for _, c := range []struct {
		node int
		qty  int64
	}{{0, 42}, {0, 1}, {1, 3}, {1, 1}} {
		code, body := rawDeduct(t, b, nodes[c.node].hot, sku, c.qty, "r1")
		if code != 422 || body != reusedBody {
			t.Fatalf("r1 again with qty %d on node %d: %d %s; want 422 %s", c.qty, c.node, code, body, reusedBody)
		}
	}
	r1 := waitSynced(t, nodes[1], sku, 10*time.Second)
	l1 := e.ledger(sku)
	if l1.levels != l0.levels || l1.pool != l0.pool || r1.Reserved != r0.Reserved || rows() != rows0 {
		t.Fatalf("a reused id changed stock: levels %d→%d, pool %d→%d, reserved %d→%d, rows %d→%d",
			l0.levels, l1.levels, l0.pool, l1.pool, r0.Reserved, r1.Reserved, rows0, rows())
	}
	for _, n := range nodes {
		again, err := b.Deduct(n.hot, sku, 2, "r1")
		if err != nil || again.Code != 200 || again.Reservation != first.Reservation {
			t.Fatalf("same qty retry on %s: %+v %v, want %s", n.hot, again, err, first.Reservation)
		}
	}

	// Sell the rest; then r1 passes the sold-out filter (it took) and is
	// still told it reused its id.
	sold := first.Qty
	for i := 0; ; i++ {
		a, err := b.Deduct(nodes[i%2].hot, sku, 1, "rest-"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		if a.Code == 409 {
			break
		}
		if a.Code != 200 {
			t.Fatalf("rest: %+v", a)
		}
		sold += a.Qty
	}
	if sold != total {
		t.Fatalf("sold %d of %d", sold, total)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		// A probe answered sold_out from memory: the node holds the
		// filter of ids that took.
		for {
			before := metric(t, n, "stockd_scheduler_sold_out_from_memory_total")
			a, err := b.Deduct(n.hot, sku, 1, "probe-"+strconv.FormatInt(time.Now().UnixNano(), 10))
			if err == nil && a.Code == 409 && metric(t, n, "stockd_scheduler_sold_out_from_memory_total") > before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s never answers sold_out from memory", n.hot)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if code, body := rawDeduct(t, b, n.hot, sku, 5, "r1"); code != 422 || body != reusedBody {
			t.Fatalf("r1 with another qty after the sell-out on %s: %d %s", n.hot, code, body)
		}
		if a, err := b.Deduct(n.hot, sku, 2, "r1"); err != nil || a.Reservation != first.Reservation {
			t.Fatalf("r1 after the sell-out on %s: %+v %v", n.hot, a, err)
		}
	}
	if r := waitSynced(t, nodes[0], sku, 10*time.Second); r.Reserved != total || r.Doubled != 0 {
		t.Fatalf("verify %+v", r)
	}
}
