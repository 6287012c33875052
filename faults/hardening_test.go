package faults

// Case 6 (hardening), the parts in the fast subset: a per-client flood
// answered 429, and a node with the wrong gossip key kept out.

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// One client floods the hot endpoint from 127.0.0.2 with 32 connections
// for 3 s; limits.client_rps is 100 (burst 100). The flood is answered
// 429 {"error":...} beyond its budget, nothing it was refused touched
// stock, and another client (127.0.0.3) is served throughout.
func TestFastClientFlood429(t *testing.T) {
	const (
		sku   = "flood"
		total = 100000
		rps   = 100
		burst = 100
		run   = 3 * time.Second
	)
	e := newEnv(t, envOpts{shards: 2})
	d := e.startStockd(nodeOpts{env: map[string]string{
		"STOCKD_LIMITS_CLIENT_RPS":   fmt.Sprint(rps),
		"STOCKD_LIMITS_CLIENT_BURST": fmt.Sprint(burst),
	}})
	d.putSKU(sku, total, 4, 1000, 200)
	h := newHistory()
	w := watchDoubt(e, sku)
	flooder := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second, LocalAddr: "127.0.0.2"}), sku, h, d.hot)
	polite := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second, LocalAddr: "127.0.0.3"}), sku, h, d.hot)

	var ok, shed, other atomic.Int64
	var badShed atomic.Value
	var mu sync.Mutex
	var shedIDs []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var seq atomic.Int64
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := flooder.begin(i, fmt.Sprintf("flood-%d", seq.Add(1)), 1)
				a, err := flooder.c.Deduct(d.hot, sku, 1, o.ID)
				switch {
				case err == nil && a.Code == 200 && a.Status == "ok":
					ok.Add(1)
					o.Status, o.Token, o.Return, o.End, o.Attempts = statusOK, a.Reservation, h.now(), h.now(), 1
					h.add(o)
				case err == nil && a.Code == 429:
					shed.Add(1)
					if a.Error == "" {
						badShed.Store(fmt.Sprintf("%+v", a))
					}
					mu.Lock()
					shedIDs = append(shedIDs, o.ID)
					mu.Unlock()
				default:
					other.Add(1)
				}
			}
		}()
	}
	// The polite client: 20 a second, every one served.
	politeBad := 0
	start := time.Now()
	for i := 0; time.Since(start) < run; i++ {
		if o := polite.buy(100, fmt.Sprintf("polite-%d", i), 1); o.Status != statusOK || o.Attempts != 1 {
			politeBad++
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	floodEnd := time.Now()
	elapsed := floodEnd.Sub(start)
	// The flooder's budget refills: it is served again within a second.
	recovery, recovered := stocktest.WaitFor(5*time.Second, func() bool {
		return flooder.buy(0, fmt.Sprintf("after-%d", seq.Add(1)), 1).Status == statusOK
	})

	if politeBad > 0 {
		t.Errorf("the polite client was refused or retried %d times during another client's flood", politeBad)
	}
	if shed.Load() == 0 {
		t.Fatalf("no 429 in a flood of %d requests over %s", ok.Load()+shed.Load(), elapsed)
	}
	if v := badShed.Load(); v != nil {
		t.Errorf("429 without an error message: %v", v)
	}
	budget := int64(burst + rps*elapsed.Seconds()*1.1 + 10)
	if ok.Load() > budget {
		t.Errorf("the flooder got %d deductions through in %s, more than its budget %d", ok.Load(), elapsed, budget)
	}
	if other.Load() > 0 {
		t.Errorf("%d flood requests answered neither ok nor 429", other.Load())
	}
	if !recovered {
		t.Errorf("the flooder was not served again within 5s of the flood's end")
	}
	// Refused requests touched no stock.
	var leaked int
	for _, chunk := range slices.Collect(slices.Chunk(shedIDs, 500)) {
		args := []any{sku}
		q := `SELECT COUNT(*) FROM deductions WHERE sku = ? AND request_id IN (?`
		for i, id := range chunk {
			if i > 0 {
				q += ",?"
			}
			args = append(args, id)
		}
		var n int
		if err := e.db.QueryRow(q+`)`, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		leaked += n
	}
	flooder.checkAnswers()
	polite.checkAnswers()
	r := settle(t, e, d, sku, h, w, settleOpts{total: total, linearizable: true})
	if leaked > 0 {
		t.Errorf("%d requests answered 429 have detail rows", leaked)
	}
	r.Recovery, r.RecoveryWhat = recovery, "flood over -> the flooding client served again"
	r.Extra["flood"] = fmt.Sprintf("%d ok, %d answered 429 in %s (budget %d: burst %d + %d/s); refused requests with rows: %d",
		ok.Load(), shed.Load(), elapsed.Round(time.Millisecond), budget, burst, rps, leaked)
	r.Extra["other client"] = fmt.Sprintf("%d refused or retried", politeBad)
	r.Log(t)
}

// A node with another gossip key cannot join: its /admin/cluster shows
// only itself, and the two nodes that share a key never list it (nor a
// node without a key).
func TestFastWrongGossipKey(t *testing.T) {
	key := func() string {
		b := make([]byte, 32)
		rand.Read(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	right, wrong := key(), key()
	e := newEnv(t, envOpts{shards: 1})
	a := e.startStockd(nodeOpts{name: "a", env: map[string]string{"STOCKD_GOSSIP_KEY": right}})
	b := e.startStockd(nodeOpts{name: "b", env: map[string]string{"STOCKD_GOSSIP_KEY": right, "STOCKD_JOIN": a.gossip}})
	c := e.startStockd(nodeOpts{name: "c", env: map[string]string{"STOCKD_GOSSIP_KEY": wrong, "STOCKD_JOIN": a.gossip + "," + b.gossip}})
	plain := e.startStockd(nodeOpts{name: "plain", env: map[string]string{"STOCKD_JOIN": a.gossip}})

	took, ok := stocktest.WaitFor(20*time.Second, func() bool {
		ma, err1 := a.members()
		mb, err2 := b.members()
		return err1 == nil && err2 == nil && slices.Equal(ma, []string{"a", "b"}) && slices.Equal(mb, []string{"a", "b"})
	})
	if !ok {
		ma, _ := a.members()
		mb, _ := b.members()
		t.Fatalf("a and b (same key) did not see each other within 20s: a %v, b %v", ma, mb)
	}
	// The outsiders keep trying to join in the background; watch for 5 s.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range []*stockd{a, b} {
			if m, err := n.members(); err != nil || !slices.Equal(m, []string{"a", "b"}) {
				t.Fatalf("%s lists %v (%v); want only a and b", n.name, m, err)
			}
		}
		for _, n := range []*stockd{c, plain} {
			if m, err := n.members(); err != nil || !slices.Equal(m, []string{n.name}) {
				t.Fatalf("%s lists %v (%v); want only itself", n.name, m, err)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("a and b joined in %s; c (wrong key) and plain (no key) stayed alone for 5s", took.Round(time.Millisecond))
}
