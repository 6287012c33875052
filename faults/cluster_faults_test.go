//go:build faults

package faults

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// A node frozen (SIGSTOP, a stalled VM or a very long GC pause) for 12 s
// in the middle of a sale on a two-node cluster, then thawed. It freezes
// holding unacknowledged batches, open MySQL transactions and the
// ownership of half the partitions; the broker redelivers its batches to
// the other node once its heartbeat times out, the other node takes over
// its partitions and streams, and when it thaws it carries on from where
// it stopped, for a moment a second owner. Buyers send each attempt to
// either node and retry on the other. Lost 0, doubled 0, linearizable.
func TestNodeFrozen(t *testing.T) {
	const (
		sku   = "frozen"
		total = 1000000
	)
	e := newEnv(t, envOpts{shards: 3})
	a := e.startStockd(nodeOpts{name: "a"})
	b := e.startStockd(nodeOpts{name: "b", env: map[string]string{"STOCKD_JOIN": a.gossip}})
	if _, ok := stocktest.WaitFor(20*time.Second, func() bool { m, _ := b.members(); return len(m) == 2 }); !ok {
		t.Fatal("the two nodes did not join")
	}
	a.putSKU(sku, total, 6, 2000, 400)
	if _, ok := stocktest.WaitFor(10*time.Second, func() bool {
		resp, err := http.Get("http://" + b.hot + "/v1/stock/" + sku)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}); !ok {
		t.Fatal("b does not know the SKU")
	}

	h := newHistory()
	w := watchDoubt(e, sku)
	buyers := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 2 * time.Second}), sku, h, a.hot, b.hot)
	stop := make(chan struct{})
	done := buyers.closedLoop(16, &ids{prefix: "buyer-", n: -1}, 1, stop, false)
	time.Sleep(3 * time.Second)
	okBefore, _, _, _ := h.count()
	a.signal(syscall.SIGSTOP)
	frozen := time.Now()
	time.Sleep(12 * time.Second)
	okDuring, _, _, _ := h.count()
	a.signal(syscall.SIGCONT)
	thawed := time.Now()
	// a serves again: one probe after another, straight to a.
	probe := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 2 * time.Second}), sku, h, a.hot)
	probe.giveUp = 0
	recovery, served := stocktest.WaitFor(30*time.Second, func() bool {
		return probe.buy(99, fmt.Sprintf("probe-%d", time.Now().UnixNano()), 1).Status == statusOK
	})
	if !served {
		t.Errorf("a did not sell again within 30s of SIGCONT")
	}
	time.Sleep(3 * time.Second) // both nodes sell, a as a stale owner at first
	close(stop)
	done()
	buyers.checkAnswers()
	drain, recovered := stocktest.WaitFor(90*time.Second, func() bool {
		v, err := b.verify(sku)
		return err == nil && v.OK && v.InFlightDetails == 0
	})
	if !recovered {
		t.Errorf("write-back did not catch up within 90s")
	}
	asked, _ := buyers.reask(nil)
	r := settle(t, e, b, sku, h, w, settleOpts{total: total, linearizable: true})
	r.Recovery, r.RecoveryWhat = recovery, "SIGCONT -> first ok answered by the thawed node"
	r.Extra["write-back caught up"] = fmt.Sprintf("%s after the buyers stopped (3 s after the thaw)", drain.Round(time.Millisecond))
	r.Extra["fault"] = fmt.Sprintf("node a frozen (SIGSTOP) for %s of a two-node cluster", thawed.Sub(frozen).Round(time.Millisecond))
	r.Extra["sold while a was frozen"] = fmt.Sprintf("%d deductions (by b; buyers give an attempt 2 s)", okDuring-okBefore)
	r.Extra["re-asked acknowledged ids"] = fmt.Sprint(asked)
	if okDuring-okBefore < 100 {
		t.Errorf("only %d deductions while a was frozen: b did not carry the sale", okDuring-okBefore)
	}
	r.Log(t)
}
