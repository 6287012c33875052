package client

// The client against real stockd processes: sell-out through one node,
// a kill -9 of one of three nodes while requests are retried, 429 with
// Retry-After, and a caller's context ending mid-retry.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/internal/stocktest"
)

// op is one logical deduction: every attempt of one request id.
type op struct {
	id       string
	token    string
	outcome  string // "ok", "sold_out", or the error of an unknown outcome
	attempts int
}

// crowd is a set of buyers deducting one unit at a time, each with its own
// request ids, until each meets sold out.
type crowd struct {
	mu  sync.Mutex
	ops []op
	ok  atomic.Int64
}

func (cr *crowd) buy(c *Client, sku, prefix string, workers int, perCall time.Duration) {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := fmt.Sprintf("%s-w%d-%d", prefix, w, i)
				ctx, cancel := context.WithTimeout(context.Background(), perCall)
				res, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1, RequestID: id})
				cancel()
				o := op{id: id, token: res.Token, attempts: res.Attempts}
				var re *RequestError
				if errors.As(err, &re) {
					o.attempts = re.Attempts
				}
				switch {
				case err == nil:
					o.outcome = "ok"
					cr.ok.Add(1)
				case errors.Is(err, ErrSoldOut):
					o.outcome = "sold_out"
				default:
					o.outcome = err.Error()
				}
				cr.mu.Lock()
				cr.ops = append(cr.ops, o)
				cr.mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
}

// figures counts the ops by outcome and the retries.
func (cr *crowd) figures() (ok, soldOut int, unknown []op, retried, retries int) {
	for _, o := range cr.ops {
		switch o.outcome {
		case "ok":
			ok++
		case "sold_out":
			soldOut++
		default:
			unknown = append(unknown, o)
		}
		if o.attempts > 1 {
			retried++
			retries += o.attempts - 1
		}
	}
	return
}

// checkLanded waits until MySQL holds one deduction row per successful
// request id and no other, and verify is ok.
func checkLanded(t *testing.T, cl *cluster, admin *stockd, sku string, cr *crowd) {
	t.Helper()
	want := map[string]bool{}
	for _, o := range cr.ops {
		if o.outcome == "ok" {
			want[o.id] = true
		}
	}
	var rows map[string]int
	var units int64
	var v audit.Report
	var vb string
	_, landed := stocktest.WaitFor(120*time.Second, func() bool {
		rows, units = cl.rows(sku)
		if len(rows) < len(want) {
			return false
		}
		v, vb = admin.verify(sku)
		return v.OK && v.InFlight == 0
	})
	if !landed {
		t.Fatalf("not landed: %d rows (%d units) for %d successes; verify %s", len(rows), units, len(want), vb)
	}
	for id, n := range rows {
		if n != 1 {
			t.Errorf("request id %s has %d deduction rows", id, n)
		}
		if !want[id] {
			t.Errorf("request id %s has a deduction row but its caller did not see ok", id)
		}
	}
	for id := range want {
		if rows[id] == 0 {
			t.Errorf("request id %s succeeded but has no deduction row", id)
		}
	}
	if units != int64(len(want)) || v.Doubled != 0 {
		t.Fatalf("%d units in rows for %d successes, %d doubled; verify %s", units, len(want), v.Doubled, vb)
	}
}

// TestSellOutOneNode: a crowd buying through the client from one node gets
// exactly the total, then ErrSoldOut; every success has its row.
func TestSellOutOneNode(t *testing.T) {
	cl := newCluster(t, 1, 2, nil)
	n := cl.nodes[0]
	const sku, total = "sell-out", 300
	n.putSKU(sku, total, 4, 20, 5)
	c, err := New(Config{Endpoints: cl.endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	cr := &crowd{}
	cr.buy(c, sku, "so", 50, 30*time.Second)
	ok, soldOut, unknown, retried, retries := cr.figures()
	t.Logf("sell-out: %d requests, %d ok, %d sold out, %d unknown; %d requests retried (%d retries)",
		len(cr.ops), ok, soldOut, len(unknown), retried, retries)
	if len(unknown) > 0 {
		t.Fatalf("%d requests without an outcome, e.g. %+v", len(unknown), unknown[0])
	}
	if ok != total || soldOut != 50 {
		t.Fatalf("%d ok, %d sold out; want %d ok, then sold out for each of the 50 buyers", ok, soldOut, total)
	}
	checkLanded(t, cl, n, sku, cr)

	st, err := c.Stock(context.Background(), sku)
	if err != nil || !st.SoldOut || st.Available != 0 {
		t.Fatalf("stock %+v, %v; want sold out", st, err)
	}
}

// TestOutcomesRealNode maps the real daemon's answers to the client's
// outcomes.
func TestOutcomesRealNode(t *testing.T) {
	cl := newCluster(t, 1, 1, nil)
	n := cl.nodes[0]
	const sku = "outcomes"
	n.putSKU(sku, 10, 1, 5, 1)
	c, err := New(Config{Endpoints: cl.endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	a, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 2, UserID: "u-1"})
	if err != nil || a.Qty != 2 || a.SKU != sku || a.RequestID == "" {
		t.Fatalf("deduct: %+v, %v", a, err)
	}
	again, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 2, UserID: "u-1", RequestID: a.RequestID})
	if err != nil || again.Token != a.Token {
		t.Fatalf("the same request id again: %+v, %v; want the first reservation %s", again, err, a.Token)
	}
	b, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		call func() error
		want error
		code string // the APIError's Code: the server's error code, or a 409's status
	}{
		{"confirm", func() error { return c.Confirm(ctx, a.Token) }, nil, ""},
		{"confirm again", func() error { return c.Confirm(ctx, a.Token) }, nil, ""},
		{"release confirmed", func() error { return c.Release(ctx, a.Token) }, ErrConfirmed, "confirmed"},
		{"release", func() error { return c.Release(ctx, b.Token) }, nil, ""},
		{"release again", func() error { return c.Release(ctx, b.Token) }, nil, ""},
		{"confirm released", func() error { return c.Confirm(ctx, b.Token) }, ErrReleased, "released"},
		{"confirm unknown", func() error { return c.Confirm(ctx, "no-such-token") }, ErrNotFound, "unknown_reservation"},
		{"unknown sku", func() error { _, err := c.Deduct(ctx, DeductRequest{SKU: "nope", Qty: 1}); return err }, ErrUnknownSKU, "unknown_sku"},
		{"stock unknown sku", func() error { _, err := c.Stock(ctx, "nope"); return err }, ErrUnknownSKU, "unknown_sku"},
	}
	for _, s := range steps {
		err := s.call()
		if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
			t.Fatalf("%s: %v, want %v", s.name, err, s.want)
		}
		var api *APIError
		if s.code != "" && (!errors.As(err, &api) || api.Code != s.code) {
			t.Fatalf("%s: %v, want code %q", s.name, err, s.code)
		}
	}
	// Bad input: a 400 naming the field, never retried.
	_, err = c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 0, RequestID: "bad-qty"})
	var api *APIError
	if !errors.As(err, &api) || api.Status != 400 || api.Code != "invalid_argument" || api.Field != "qty" {
		t.Fatalf("qty 0: %v, want a 400 invalid_argument naming qty", err)
	}
	if re := (*RequestError)(nil); !errors.As(err, &re) || re.Attempts != 1 || re.RequestID != "bad-qty" {
		t.Fatalf("qty 0: %+v, want one attempt carrying the request id", err)
	}
	// Extend's definite outcomes (its success is TestSaleRulesRealNode's).
	for _, s := range []struct {
		name, token string
		want        error
		code        string
	}{
		{"extend confirmed", a.Token, ErrConfirmed, "confirmed"},
		{"extend released", b.Token, ErrReleased, "released"},
		{"extend unknown", "no-such-token", ErrNotFound, "unknown_reservation"},
	} {
		_, err := c.Extend(ctx, s.token, time.Minute)
		if !errors.Is(err, s.want) || !errors.As(err, &api) || api.Code != s.code {
			t.Fatalf("%s: %v, want %v with code %q", s.name, err, s.want, s.code)
		}
	}
	st, err := c.Stock(ctx, sku)
	if err != nil || st.SKU != sku || st.Available > 10-2 {
		t.Fatalf("stock %+v, %v", st, err)
	}
}

// TestSaleRulesRealNode runs the client against a real node's sale rules
// (issue 15): a deduction before opens_at is ErrNotOpen, one beyond the
// per-user limit ErrLimitReached, one after closes_at ErrClosed, one
// without a user on a limited SKU a 400 naming user_id; Extend pushes a
// reservation's expiry out, capped at sync.max_extension.
func TestSaleRulesRealNode(t *testing.T) {
	const maxExtension = 2 * time.Minute
	cl := newCluster(t, 1, 1, map[string]string{"STOCKD_SYNC_MAX_EXTENSION": maxExtension.String()})
	n := cl.nodes[0]
	const sku, limit = "rules", 2
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	put := func(body string) {
		t.Helper()
		if code, b := n.adminDo("PUT", "/admin/skus/"+sku, body, nil); code != 200 && code != 201 {
			t.Fatalf("PUT %s: %d %s", body, code, b)
		}
	}
	put(fmt.Sprintf(`{"total":10,"partitions":1,"chunk":5,"threshold":1,"per_user_limit":%d,"opens_at":%q}`, limit, at(time.Hour)))
	c, err := New(Config{Endpoints: cl.endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	var api *APIError

	_, err = c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1, UserID: "u-1"})
	if !errors.Is(err, ErrNotOpen) || !errors.As(err, &api) || api.Code != "not_open" {
		t.Fatalf("deduct before opens_at: %v, want ErrNotOpen", err)
	}
	put(`{"total":10,"opens_at":null}`)
	_, err = c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1})
	if !errors.As(err, &api) || api.Status != 400 || api.Field != "user_id" {
		t.Fatalf("deduct without a user on a limited sku: %v, want a 400 naming user_id", err)
	}
	held, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: limit, UserID: "u-1"})
	if err != nil {
		t.Fatalf("deduct up to the limit: %v", err)
	}
	_, err = c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1, UserID: "u-1"})
	if !errors.Is(err, ErrLimitReached) || !errors.As(err, &api) || api.Code != "limit_reached" {
		t.Fatalf("deduct beyond the limit: %v, want ErrLimitReached", err)
	}
	if _, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1, UserID: "u-2"}); err != nil {
		t.Fatalf("another user: %v, want a reservation", err)
	}
	again, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: limit, UserID: "u-1", RequestID: held.RequestID})
	if err != nil || again.Token != held.Token {
		t.Fatalf("retry of the request that took the allowance: %+v, %v; want its first reservation", again, err)
	}

	// Extend: now + d, and at most now + sync.max_extension.
	for _, d := range []time.Duration{time.Minute, 10 * maxExtension} {
		granted := min(d, maxExtension)
		before := time.Now()
		until, err := c.Extend(ctx, held.Token, d)
		after := time.Now()
		if err != nil {
			t.Fatalf("extend by %v: %v", d, err)
		}
		if until.Before(before.Add(granted).Add(-time.Second)) || until.After(after.Add(granted)) {
			t.Fatalf("extend by %v: expires at %v, want now + %v (between %v and %v)", d, until, granted, before.Add(granted), after.Add(granted))
		}
	}
	if err := c.Confirm(ctx, held.Token); err != nil {
		t.Fatalf("confirm the extended reservation: %v", err)
	}

	put(fmt.Sprintf(`{"total":10,"opens_at":%q,"closes_at":%q}`, at(-2*time.Hour), at(-time.Hour)))
	_, err = c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1, UserID: "u-3"})
	if !errors.Is(err, ErrClosed) || !errors.As(err, &api) || api.Code != "closed" {
		t.Fatalf("deduct after closes_at: %v, want ErrClosed", err)
	}
}

// TestKillNodeWhileRetrying: three nodes, a crowd buying through a client
// of all three; one node is killed with SIGKILL when a third of the stock
// is sold. Every request ends with exactly one outcome, a repeat of each
// request id answers the same, and MySQL holds one row per success.
func TestKillNodeWhileRetrying(t *testing.T) {
	faultSale(t, "kill -9", Config{MaxAttempts: 200}, func(d *stockd) { d.kill9() }, nil)
}

// TestFreezeNodeWhileRetrying: the same with a node frozen (SIGSTOP) for
// 3 s mid-sale: its attempts time out (AttemptTimeout 1s) and are retried
// elsewhere with the same request id; thawed, it finishes the attempts it
// had read, which must change nothing.
//
// The freeze is bounded because a node frozen inside a refill holds the
// SKU's row lock in MySQL (its connection stays open), and every other
// node's refill waits on it: the sale stalls until the thaw. That is the
// daemon's to fix, not the client's.
func TestFreezeNodeWhileRetrying(t *testing.T) {
	faultSale(t, "SIGSTOP 3s", Config{MaxAttempts: 200, AttemptTimeout: time.Second},
		func(d *stockd) { d.freeze(); time.AfterFunc(3*time.Second, d.thaw) }, nil)
}

// faultSale sells 1200 units to 48 buyers through a client of three nodes,
// applies fault to the third node once a third is sold, and heal (if any)
// after the sale; then checks every request's outcome, a repeat of every
// request id, and MySQL's rows.
func faultSale(t *testing.T, name string, cfg Config, fault, heal func(*stockd)) {
	cl := newCluster(t, 3, 3, nil)
	const sku, total, workers = "fault-sale", 1200, 48
	cl.nodes[0].putSKU(sku, total, 6, 20, 5)
	cl.waitKnown(sku)
	cfg.Endpoints = cl.endpoints()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	victim := cl.nodes[2]

	cr := &crowd{}
	start := time.Now()
	var faultAt time.Duration
	var faultOK int64
	faulted := make(chan struct{})
	go func() {
		defer close(faulted)
		stocktest.WaitFor(2*time.Minute, func() bool { return cr.ok.Load() >= total/3 })
		faultOK = cr.ok.Load()
		faultAt = time.Since(start)
		fault(victim)
	}()
	cr.buy(c, sku, "fs", workers, 2*time.Minute)
	<-faulted
	sale := time.Since(start)
	if heal != nil {
		heal(victim)
	}
	ok, soldOut, unknown, retried, retries := cr.figures()
	t.Logf("%s: %d requests by %d buyers, %d ok, %d sold out, %d unknown; %d requests retried (%d retries); node %s hit at %s after %d successes, sale took %s",
		name, len(cr.ops), workers, ok, soldOut, len(unknown), retried, retries, victim.name,
		faultAt.Round(time.Millisecond), faultOK, sale.Round(time.Millisecond))
	if len(unknown) > 0 {
		t.Fatalf("%d requests without an outcome, e.g. %+v", len(unknown), unknown[0])
	}
	if ok > total {
		t.Fatalf("oversold: %d ok of %d", ok, total)
	}
	if ok != total || soldOut != workers {
		t.Fatalf("%d ok, %d sold out; want the whole %d sold, then sold out for each buyer", ok, soldOut, total)
	}
	if retried == 0 {
		t.Fatal("no request was retried: the fault did not meet any traffic")
	}

	// Every request id again: its first outcome, never a second deduction.
	var wg sync.WaitGroup
	var mismatches atomic.Int64
	ops := make(chan op)
	for range 16 {
		wg.Go(func() {
			for o := range ops {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				res, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1, RequestID: o.id})
				cancel()
				same := (o.outcome == "ok" && err == nil && res.Token == o.token) ||
					(o.outcome == "sold_out" && errors.Is(err, ErrSoldOut))
				if !same {
					if mismatches.Add(1) <= 5 {
						t.Errorf("request %s: first %s %s, repeat %q %v", o.id, o.outcome, o.token, res.Token, err)
					}
				}
			}
		})
	}
	for _, o := range cr.ops {
		ops <- o
	}
	close(ops)
	wg.Wait()
	if m := mismatches.Load(); m > 0 {
		t.Fatalf("%d of %d repeats answered differently from the first outcome", m, len(cr.ops))
	}
	checkLanded(t, cl, cl.nodes[0], sku, cr)
}

// TestRetryAfterRealNode: a node with a per-client limit of 1 deduction a
// second answers 429 with Retry-After: 1; the client waits and succeeds.
func TestRetryAfterRealNode(t *testing.T) {
	cl := newCluster(t, 1, 1, map[string]string{"STOCKD_LIMITS_CLIENT_RPS": "1", "STOCKD_LIMITS_CLIENT_BURST": "1"})
	n := cl.nodes[0]
	const sku = "limited"
	n.putSKU(sku, 100, 1, 20, 5)
	c, err := New(Config{Endpoints: cl.endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	attempts := 0
	var ids []string
	for i := range 3 {
		res, err := c.Deduct(context.Background(), DeductRequest{SKU: sku, Qty: 1, RequestID: fmt.Sprintf("rl-%d", i)})
		if err != nil {
			t.Fatalf("deduct %d: %v", i, err)
		}
		attempts += res.Attempts
		ids = append(ids, res.RequestID)
	}
	elapsed := time.Since(start)
	t.Logf("429: 3 deductions took %d attempts in %s", attempts, elapsed.Round(time.Millisecond))
	// Three deductions through a bucket of one token a second: at least
	// one was shed and retried, no sooner than Retry-After (1 s) later.
	if attempts <= 3 || elapsed < time.Second {
		t.Fatalf("%d attempts in %s: want a 429 honoured", attempts, elapsed)
	}

	// A deadline shorter than Retry-After: the call ends at once, with its
	// request id; the caller retries it later and it lands once.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1}) // spends the token...
	if err == nil {
		_, err = c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1}) // ...so this one is shed
	}
	id := RequestID(err)
	if !errors.Is(err, context.DeadlineExceeded) || id == "" {
		t.Fatalf("err %v, want deadline exceeded with the request id", err)
	}
	res, err := c.Deduct(context.Background(), DeductRequest{SKU: sku, Qty: 1, RequestID: id})
	if err != nil || res.RequestID != id {
		t.Fatalf("retry later with %s: %+v %v", id, res, err)
	}
	ids = append(ids, id)
	stocktest.WaitFor(60*time.Second, func() bool { rows, _ := cl.rows(sku); return rows[id] > 0 })
	rows, _ := cl.rows(sku)
	for _, id := range ids {
		if rows[id] != 1 {
			t.Fatalf("request %s has %d rows, want 1", id, rows[id])
		}
	}
}

// TestCancelRealNode: with the only node killed, a call retries until its
// context is cancelled, then returns promptly with its request id; once
// the node is back, the same id deducts once.
func TestCancelRealNode(t *testing.T) {
	cl := newCluster(t, 1, 1, nil)
	n := cl.nodes[0]
	const sku = "cancel"
	n.putSKU(sku, 10, 1, 5, 1)
	c, err := New(Config{Endpoints: cl.endpoints(), MaxAttempts: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n.kill9()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Deduct(ctx, DeductRequest{SKU: sku, Qty: 1})
		done <- err
	}()
	var re *RequestError
	// Cancel once the call has retried a few times.
	time.AfterFunc(500*time.Millisecond, cancel)
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the call did not end after cancel")
	}
	if !errors.Is(err, context.Canceled) || !errors.As(err, &re) || re.RequestID == "" || re.Attempts < 2 {
		t.Fatalf("err %v, want canceled after retries, with the request id", err)
	}
	t.Logf("cancel: %d attempts against a dead node, then %v", re.Attempts, err)

	n.restart()
	res, err := c.Deduct(context.Background(), DeductRequest{SKU: sku, Qty: 1, RequestID: re.RequestID})
	if err != nil {
		t.Fatal(err)
	}
	_, ok := stocktest.WaitFor(60*time.Second, func() bool { rows, _ := cl.rows(sku); return rows[re.RequestID] > 0 })
	rows, _ := cl.rows(sku)
	if !ok || rows[re.RequestID] != 1 || len(rows) != 1 {
		t.Fatalf("rows %v, want one row for %s (reservation %s)", rows, re.RequestID, res.Token)
	}
}
