//go:build faults

package faults

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// Case 6 (the rest; the client flood and the gossip key are in the fast
// subset): limits.sku_inflight sheds a herd on one SKU with 429 while
// Redis is slow, and the herd, retrying, still gets every unit exactly
// once.
func TestSKUInflightLimit(t *testing.T) {
	const (
		sku   = "herd"
		total = 2000
	)
	e := newEnv(t, envOpts{shards: 2, proxyShards: true})
	d := e.startStockd(nodeOpts{env: map[string]string{"STOCKD_LIMITS_SKU_INFLIGHT": "4"}})
	d.putSKU(sku, total, 4, 100, 20)
	for _, s := range e.shards {
		s.Proxy.slow(20) // every call 20 ms: requests pile up
	}
	h := newHistory()
	w := watchDoubt(e, sku)
	b := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second}), sku, h, d.hot)
	b.closedLoop(64, &ids{prefix: "herd-", n: 2500}, 1, nil, false)()
	for _, s := range e.shards {
		s.Proxy.clear()
	}
	b.checkAnswers()
	shed, shedOps := 0, 0
	for _, o := range h.snapshot() {
		if o.Codes[429] > 0 {
			shedOps++
			shed += o.Codes[429]
		}
	}
	if shed == 0 {
		t.Errorf("64 buyers against sku_inflight 4 and 20 ms Redis: no 429")
	}
	r := settle(t, e, d, sku, h, w, settleOpts{total: total, linearizable: true})
	if r.Held != total {
		t.Errorf("sold %d of %d", r.Held, total)
	}
	r.RecoveryWhat = "n/a (no fault to end)"
	r.Extra["shed"] = fmt.Sprintf("%d answers 429 to %d requests, all retried to a definite answer", shed, shedOps)
	r.Log(t)
}

// Bodies the hot endpoint must refuse without touching stock: over 4 KiB
// (413), malformed or invalid (400), wrong method (405), unknown SKU
// (404), garbage that is not HTTP (400). A body of exactly 4096 bytes is
// read. Afterwards only the valid requests have rows and the books
// balance.
func TestHostileBodies(t *testing.T) {
	const sku = "hard"
	e := newEnv(t, envOpts{shards: 1})
	d := e.startStockd(nodeOpts{})
	d.putSKU(sku, 100, 2, 10, 2)
	c := stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second})

	pad := func(body string, size int) string { return body + strings.Repeat(" ", size-len(body)) }
	cases := []struct {
		name, body string
		want       int
	}{
		{"4097 bytes", pad(`{"sku":"hard","qty":1,"request_id":"big"}`, 4097), 413},
		{"64 KiB", `{"sku":"hard","qty":1,"request_id":"huge","user_id":"` + strings.Repeat("x", 64<<10) + `"}`, 413},
		{"not json", `sku=hard&qty=1`, 400},
		{"truncated", `{"sku":"hard","qty":1,"request_id":"tr`, 400},
		{"empty", ``, 400},
		{"array", `[{"sku":"hard","qty":1,"request_id":"arr"}]`, 400},
		{"null", `null`, 400},
		{"qty string", `{"sku":"hard","qty":"1","request_id":"qs"}`, 400},
		{"qty zero", `{"sku":"hard","qty":0,"request_id":"q0"}`, 400},
		{"qty negative", `{"sku":"hard","qty":-5,"request_id":"qn"}`, 400},
		{"qty float", `{"sku":"hard","qty":1.5,"request_id":"qf"}`, 400},
		{"qty over max", `{"sku":"hard","qty":101,"request_id":"qm"}`, 400},
		{"qty huge", `{"sku":"hard","qty":99999999999999999999999,"request_id":"qh"}`, 400},
		{"no request_id", `{"sku":"hard","qty":1}`, 400},
		{"request_id not a string", `{"sku":"hard","qty":1,"request_id":7}`, 400},
		{"request_id too long", `{"sku":"hard","qty":1,"request_id":"` + strings.Repeat("r", 300) + `"}`, 400},
		{"request_id control chars", `{"sku":"hard","qty":1,"request_id":"a\u0000b"}`, 400},
		{"sku missing", `{"qty":1,"request_id":"nosku"}`, 400},
		{"sku with braces", `{"sku":"ha{rd}","qty":1,"request_id":"br"}`, 400},
		{"unknown sku", `{"sku":"nosuch","qty":1,"request_id":"unk"}`, 404},
	}
	for _, tc := range cases {
		a, err := c.Post(d.hot, "/v1/deduct", tc.body)
		if a.Code != tc.want {
			t.Errorf("%s: status %d (%v), want %d", tc.name, a.Code, err, tc.want)
		} else if err != nil || a.Error == "" {
			t.Errorf("%s: %d without a JSON error: %v", tc.name, a.Code, err)
		}
	}
	// Exactly 4096 bytes is read (and sells).
	if a, err := c.Post(d.hot, "/v1/deduct", pad(`{"sku":"hard","qty":1,"request_id":"exact"}`, 4096)); err != nil || a.Code != 200 {
		t.Errorf("a 4096-byte body: %d %+v %v, want 200", a.Code, a, err)
	}
	// Wrong method.
	req, _ := net.Dial("tcp", d.hot)
	fmt.Fprintf(req, "GET /v1/deduct HTTP/1.1\r\nHost: x\r\n\r\n")
	if line, _ := bufio.NewReader(req).ReadString('\n'); !strings.Contains(line, " 405 ") {
		t.Errorf("GET /v1/deduct: %q, want 405", line)
	}
	req.Close()
	// Not HTTP at all.
	raw, err := net.Dial("tcp", d.hot)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(raw, "\x16\x03\x01garbage that is not HTTP\r\n\r\n")
	if line, _ := bufio.NewReader(raw).ReadString('\n'); !strings.Contains(line, " 400 ") {
		t.Errorf("garbage: %q, want 400", line)
	}
	raw.Close()
	// Still serving; only the valid requests took stock.
	if a, err := c.Deduct(d.hot, sku, 1, "after"); err != nil || a.Code != 200 {
		t.Fatalf("a valid request after the hostile ones: %+v %v", a, err)
	}
	var rows int
	var ids string
	if _, ok := stocktest.WaitFor(10*time.Second, func() bool {
		e.db.QueryRow(`SELECT COUNT(*), COALESCE(GROUP_CONCAT(request_id ORDER BY request_id), '') FROM deductions WHERE sku = ?`, sku).Scan(&rows, &ids)
		return rows == 2
	}); !ok || ids != "after,exact" {
		t.Errorf("detail rows %d (%s); want only after and exact", rows, ids)
	}
	rep, err := d.verify(sku)
	if err != nil || !rep.OK || rep.Reserved != 2 {
		t.Errorf("verify: %+v %v", rep, err)
	}
}
