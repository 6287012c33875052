package client

// Unit tests of the retry policy, the outcome mapping and endpoint
// selection, against httptest servers standing in for stockd nodes (the
// tests against the real daemon are in stockd_test.go).

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// fakeNode is an httptest stockd node whose answers are func fields; it
// records the bodies it received.
type fakeNode struct {
	srv *httptest.Server
	// answer answers a hot endpoint request (not /readyz); n counts
	// them from 1.
	answer func(w http.ResponseWriter, r *http.Request, n int)
	// ready answers /readyz (default: 200).
	ready atomic.Bool

	mu     sync.Mutex
	bodies []map[string]any
	n      int
}

func newFakeNode(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, n int)) *fakeNode {
	t.Helper()
	f := &fakeNode{answer: answer}
	f.ready.Store(true)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			if f.ready.Load() {
				io.WriteString(w, `{"status":"ready"}`)
			} else {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			return
		}
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		json.Unmarshal(b, &body)
		f.mu.Lock()
		f.n++
		n := f.n
		f.bodies = append(f.bodies, body)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		f.answer(w, r, n)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeNode) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *fakeNode) received() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.bodies...)
}

func answerOK(w http.ResponseWriter, r *http.Request, n int) {
	io.WriteString(w, `{"status":"ok","reservation":"S1:1:7:42:1:sig","sku":"S1","qty":1}`)
}

func answerStatus(code int, body string) func(http.ResponseWriter, *http.Request, int) {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		if code == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		w.WriteHeader(code)
		io.WriteString(w, body)
	}
}

// newTestClient is a client of the given nodes with short waits.
func newTestClient(t *testing.T, cfg Config, nodes ...*fakeNode) *Client {
	t.Helper()
	for _, n := range nodes {
		cfg.Endpoints = append(cfg.Endpoints, n.srv.URL)
	}
	if cfg.BaseBackoff == 0 {
		cfg.BaseBackoff = time.Millisecond
		cfg.MaxBackoff = 10 * time.Millisecond
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = 20 * time.Millisecond
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRetrySameRequestID: 503s are retried with the same request id and
// exactly the keys the server accepts.
func TestRetrySameRequestID(t *testing.T) {
	node := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n <= 2 {
			answerStatus(503, `{"error":"unavailable, retry with the same request_id"}`)(w, r, n)
			return
		}
		answerOK(w, r, n)
	})
	c := newTestClient(t, Config{}, node)
	for _, tc := range []struct {
		name string
		req  DeductRequest
		keys string
	}{
		{"given id", DeductRequest{SKU: "S1", Qty: 1, RequestID: "order-1", UserID: "u-1"}, "qty,request_id,sku,user_id"},
		{"generated id", DeductRequest{SKU: "S1", Qty: 1}, "qty,request_id,sku"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node.mu.Lock()
			node.n, node.bodies = 0, nil
			node.mu.Unlock()
			res, err := c.Deduct(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Attempts != 3 || res.Token == "" || res.Qty != 1 {
				t.Fatalf("reservation %+v, want 3 attempts and a token", res)
			}
			if tc.req.RequestID != "" && res.RequestID != tc.req.RequestID {
				t.Fatalf("request id %q, want %q", res.RequestID, tc.req.RequestID)
			}
			bodies := node.received()
			if len(bodies) != 3 {
				t.Fatalf("%d bodies, want 3", len(bodies))
			}
			for _, b := range bodies {
				var keys []string
				for k := range b {
					keys = append(keys, k)
				}
				slices.Sort(keys)
				if strings.Join(keys, ",") != tc.keys {
					t.Fatalf("keys %v, want %s", keys, tc.keys)
				}
				if b["request_id"] != res.RequestID {
					t.Fatalf("attempt sent request_id %v, want %s on every attempt", b["request_id"], res.RequestID)
				}
			}
		})
	}
}

// TestDefiniteOutcomes: every 4xx outcome is returned after one attempt,
// as its sentinel and as an *APIError.
func TestDefiniteOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		op     string
		code   int
		body   string
		want   error // nil: an APIError without sentinel
		field  string
		apiErr string // the APIError's Code
	}{
		{"sold out", "deduct", 409, `{"status":"sold_out"}`, ErrSoldOut, "", "sold_out"},
		{"unknown sku", "deduct", 404, `{"error":"sku: unknown"}`, ErrUnknownSKU, "", ""},
		{"limit reached", "deduct", 409, `{"status":"limit_reached"}`, ErrLimitReached, "", "limit_reached"},
		{"not open", "deduct", 409, `{"status":"not_open"}`, ErrNotOpen, "", "not_open"},
		{"closed", "deduct", 409, `{"status":"closed"}`, ErrClosed, "", "closed"},
		{"request id reused", "deduct", 422, `{"error":"request_id: reused with another qty","code":"request_id_reused"}`, ErrRequestIDReused, "", "request_id_reused"},
		{"bad input", "deduct", 400, `{"error":"qty: must be between 1 and 100","code":"invalid_argument","field":"qty"}`, nil, "qty", "invalid_argument"},
		{"too large", "deduct", 413, `{"error":"body: larger than 4096 bytes"}`, nil, "", ""},
		{"confirm unknown", "confirm", 404, `{"error":"reservation: unknown"}`, ErrNotFound, "", ""},
		{"confirm released", "confirm", 409, `{"status":"released","error":"reservation: already released, cannot confirm"}`, ErrReleased, "", "released"},
		{"release confirmed", "release", 409, `{"status":"confirmed","error":"reservation: already confirmed, cannot release"}`, ErrConfirmed, "", "confirmed"},
		{"release unknown", "release", 404, `{"error":"reservation: unknown"}`, ErrNotFound, "", ""},
		{"extend released", "extend", 409, `{"status":"released","error":"reservation: released"}`, ErrReleased, "", "released"},
		{"stock unknown", "stock", 404, `{"error":"sku: unknown"}`, ErrUnknownSKU, "", ""},
		{"extend without server support", "extend", 404, `{"error":"no such route"}`, nil, "", ""},
		// The same answers with their error codes (servers since the codes).
		{"coded unknown sku", "deduct", 404, `{"error":"sku: unknown","code":"unknown_sku","field":"sku"}`, ErrUnknownSKU, "sku", "unknown_sku"},
		{"coded stock unknown", "stock", 404, `{"error":"sku: unknown","code":"unknown_sku","field":"sku"}`, ErrUnknownSKU, "sku", "unknown_sku"},
		{"coded too large", "deduct", 413, `{"error":"body: larger than 4096 bytes","code":"body_too_large","field":"body"}`, nil, "body", "body_too_large"},
		{"coded confirm unknown", "confirm", 404, `{"error":"reservation: unknown","code":"unknown_reservation","field":"reservation"}`, ErrNotFound, "reservation", "unknown_reservation"},
		{"coded confirm released", "confirm", 409, `{"status":"released","error":"reservation: already released, cannot confirm","code":"conflict"}`, ErrReleased, "", "released"},
		{"coded release confirmed", "release", 409, `{"status":"confirmed","error":"reservation: already confirmed, cannot release","code":"conflict"}`, ErrConfirmed, "", "confirmed"},
		{"coded no such route", "confirm", 404, `{"error":"no such route","code":"not_found"}`, nil, "", "not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := newFakeNode(t, answerStatus(tc.code, tc.body))
			c := newTestClient(t, Config{}, node)
			ctx := context.Background()
			var err error
			switch tc.op {
			case "deduct":
				_, err = c.Deduct(ctx, DeductRequest{SKU: "S1", Qty: 1, RequestID: "r1"})
			case "confirm":
				err = c.Confirm(ctx, "tok")
			case "release":
				err = c.Release(ctx, "tok")
			case "extend":
				_, err = c.Extend(ctx, "tok", time.Minute)
			case "stock":
				_, err = c.Stock(ctx, "S1")
			}
			if err == nil {
				t.Fatal("no error")
			}
			if node.calls() != 1 {
				t.Fatalf("%d attempts, want 1 (a definite outcome is never retried)", node.calls())
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			for _, s := range sentinels {
				if s != tc.want && errors.Is(err, s) {
					t.Fatalf("err %v is also %v", err, s)
				}
			}
			var api *APIError
			if !errors.As(err, &api) {
				t.Fatalf("err %v is not an *APIError", err)
			}
			if api.Status != tc.code || api.Field != tc.field || api.Code != tc.apiErr {
				t.Fatalf("APIError %+v, want status %d code %q field %q", api, tc.code, tc.apiErr, tc.field)
			}
			if tc.op == "deduct" && RequestID(err) != "r1" {
				t.Fatalf("RequestID(err) = %q, want r1", RequestID(err))
			}
		})
	}
}

var sentinels = []error{ErrSoldOut, ErrUnknownSKU, ErrNotFound, ErrReleased, ErrConfirmed,
	ErrRequestIDReused, ErrLimitReached, ErrNotOpen, ErrClosed, ErrUnavailable, ErrClientClosed}

// TestRetryAfter: a 429 is retried after its Retry-After (1 s here), not
// sooner.
func TestRetryAfter(t *testing.T) {
	var first, gap atomic.Int64
	node := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 1 {
			first.Store(time.Now().UnixNano())
			answerStatus(429, `{"error":"too many requests from this client, slow down"}`)(w, r, n)
			return
		}
		gap.Store(time.Now().UnixNano() - first.Load())
		answerOK(w, r, n)
	})
	c := newTestClient(t, Config{}, node)
	res, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 2 {
		t.Fatalf("%d attempts, want 2", res.Attempts)
	}
	// A lower bound only: the retry came no sooner than Retry-After said.
	if g := time.Duration(gap.Load()); g < time.Second {
		t.Fatalf("retried %s after a 429 with Retry-After: 1", g)
	}
}

// TestRetryAfterBeyondDeadline: when Retry-After would outlast the
// caller's deadline, the call ends at once with the request id.
func TestRetryAfterBeyondDeadline(t *testing.T) {
	node := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(429)
	})
	c := newTestClient(t, Config{}, node)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Deduct(ctx, DeductRequest{SKU: "S1", Qty: 1, RequestID: "r-deadline"})
	if !errors.Is(err, context.DeadlineExceeded) || RequestID(err) != "r-deadline" {
		t.Fatalf("err %v (id %q), want deadline exceeded with the request id", err, RequestID(err))
	}
	if ctx.Err() != nil {
		t.Fatal("the call slept into the deadline instead of returning")
	}
	if node.calls() != 1 {
		t.Fatalf("%d attempts, want 1", node.calls())
	}
}

// TestMaxAttempts: a node that never decides exhausts MaxAttempts; the
// error says the outcome is unknown and carries the request id.
func TestMaxAttempts(t *testing.T) {
	node := newFakeNode(t, answerStatus(503, `{"error":"unavailable, retry with the same request_id"}`))
	c := newTestClient(t, Config{MaxAttempts: 4}, node)
	_, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1})
	var re *RequestError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &re) {
		t.Fatalf("err %v, want ErrUnavailable", err)
	}
	if re.Attempts != 4 || node.calls() != 4 {
		t.Fatalf("attempts %d, node saw %d, want 4", re.Attempts, node.calls())
	}
	bodies := node.received()
	if re.RequestID == "" || bodies[0]["request_id"] != re.RequestID {
		t.Fatalf("error request id %q, sent %v", re.RequestID, bodies[0]["request_id"])
	}
	var api *APIError
	if !errors.As(err, &api) || api.Status != 503 {
		t.Fatalf("last failure %v, want the 503", err)
	}
}

// TestTimeoutRetried: an attempt that outlives AttemptTimeout is retried
// with the same request id, on the other node.
func TestTimeoutRetried(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	slow := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	fast := newFakeNode(t, answerOK)
	c := newTestClient(t, Config{AttemptTimeout: 200 * time.Millisecond}, slow, fast)
	seen := 0
	for i := 0; i < 4; i++ {
		res, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1})
		if err != nil {
			t.Fatal(err)
		}
		if res.Attempts > 1 {
			seen++
		}
	}
	if seen == 0 || slow.calls() == 0 {
		t.Fatal("no call met the slow node")
	}
	ids := map[any]bool{}
	for _, b := range slow.received() {
		ids[b["request_id"]] = true
	}
	for _, b := range fast.received() {
		delete(ids, b["request_id"])
	}
	if len(ids) != 0 {
		t.Fatalf("request ids %v timed out on the slow node and were not retried with the same id", ids)
	}
}

// TestCancelEndsRetries: cancelling the context ends a call promptly,
// in an attempt or between two, and the error carries the request id.
func TestCancelEndsRetries(t *testing.T) {
	arrived := make(chan struct{}, 16)
	hang := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		arrived <- struct{}{}
		<-r.Context().Done()
	})
	busy := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		arrived <- struct{}{}
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(503)
	})
	for _, tc := range []struct {
		name string
		node *fakeNode
	}{{"in an attempt", hang}, {"between attempts", busy}} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, Config{AttemptTimeout: time.Minute}, tc.node)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := c.Deduct(ctx, DeductRequest{SKU: "S1", Qty: 1, RequestID: "r-cancel"})
				done <- err
			}()
			<-arrived
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) || RequestID(err) != "r-cancel" {
					t.Fatalf("err %v, want context.Canceled carrying r-cancel", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the call did not end after cancel")
			}
		})
	}
}

// TestRoundRobin: healthy nodes share the calls evenly.
func TestRoundRobin(t *testing.T) {
	nodes := []*fakeNode{newFakeNode(t, answerOK), newFakeNode(t, answerOK), newFakeNode(t, answerOK)}
	c := newTestClient(t, Config{}, nodes...)
	for i := 0; i < 30; i++ {
		if _, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range nodes {
		if n.calls() != 10 {
			t.Fatalf("node %d got %d of 30 calls, want 10", i, n.calls())
		}
	}
}

// TestFailover: a node that answers 503 is left for the healthy one, and
// comes back once its /readyz answers 200; a node that refuses connections
// is left too.
func TestFailover(t *testing.T) {
	var sick atomic.Bool
	sick.Store(true)
	a := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if sick.Load() {
			answerStatus(503, `{"error":"unavailable, retry"}`)(w, r, n)
			return
		}
		answerOK(w, r, n)
	})
	a.ready.Store(false)
	b := newFakeNode(t, answerOK)
	// A node nobody listens on: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()

	c := newTestClient(t, Config{Endpoints: []string{dead}}, a, b)
	for i := 0; i < 20; i++ {
		if _, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if a.calls() > 2 {
		t.Fatalf("the 503 node got %d calls, want it left after its first", a.calls())
	}
	if b.calls() != 20 {
		t.Fatalf("the healthy node answered %d of 20", b.calls())
	}
	// Heal a: the prober sees /readyz 200 and calls reach it again.
	sick.Store(false)
	a.ready.Store(true)
	before := a.calls()
	stocktest.Until(t, 10*time.Second, "calls reach the healed node", func() bool {
		if _, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1}); err != nil {
			t.Fatal(err)
		}
		return a.calls() > before
	})
}

// TestAllNodesDown: with every node down the client still tries them, and
// succeeds once one is back.
func TestAllNodesDown(t *testing.T) {
	var up atomic.Bool
	node := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if !up.Load() {
			answerStatus(503, `{}`)(w, r, n)
			return
		}
		answerOK(w, r, n)
	})
	node.ready.Store(false)
	c := newTestClient(t, Config{MaxAttempts: 1000}, node)
	go func() {
		for node.calls() < 5 {
			time.Sleep(5 * time.Millisecond)
		}
		up.Store(true)
	}()
	res, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1})
	if err != nil || res.Attempts < 5 {
		t.Fatalf("res %+v err %v, want success after at least 5 attempts", res, err)
	}
}

// TestExtend runs Extend against the contract text of POST /v1/extend (no
// stockd serves it yet).
func TestExtend(t *testing.T) {
	at := time.Date(2026, 11, 29, 20, 0, 0, 0, time.UTC)
	node := newFakeNode(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if r.URL.Path != "/v1/extend" {
			w.WriteHeader(404)
			return
		}
		io.WriteString(w, `{"status":"reserved","expires_at":"`+at.Format(time.RFC3339)+`"}`)
	})
	c := newTestClient(t, Config{}, node)
	got, err := c.Extend(context.Background(), "tok", 90*time.Second)
	if err != nil || !got.Equal(at) {
		t.Fatalf("Extend = %v, %v; want %v", got, err, at)
	}
	b := node.received()[0]
	if len(b) != 2 || b["reservation"] != "tok" || b["seconds"] != float64(90) {
		t.Fatalf("body %v, want exactly reservation and seconds", b)
	}
	if _, err := c.Extend(context.Background(), "tok", 0); err == nil {
		t.Fatal("Extend by 0 accepted")
	}
}

// TestClose: calls after Close fail without an attempt.
func TestClose(t *testing.T) {
	node := newFakeNode(t, answerOK)
	c := newTestClient(t, Config{}, node)
	c.Close()
	if _, err := c.Deduct(context.Background(), DeductRequest{SKU: "S1", Qty: 1}); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("err %v, want ErrClientClosed", err)
	}
	if node.calls() != 0 {
		t.Fatal("a closed client made an attempt")
	}
}

func TestNewRequestID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	prev := NewRequestID()
	for i := 0; i < 10000; i++ {
		id := NewRequestID()
		if !re.MatchString(id) {
			t.Fatalf("%q is not a UUIDv7", id)
		}
		if seen[id] {
			t.Fatalf("%q twice", id)
		}
		seen[id] = true
		// Time-ordered at millisecond precision: the 48-bit prefix never
		// goes back.
		if strings.ReplaceAll(id[:13], "-", "") < strings.ReplaceAll(prev[:13], "-", "") {
			t.Fatalf("%q sorts before the earlier %q", id, prev)
		}
		prev = id
	}
}

func TestBackoff(t *testing.T) {
	base, maxB := 10*time.Millisecond, 200*time.Millisecond
	for n := 1; n < 12; n++ {
		step := min(base<<(n-1), maxB)
		for i := 0; i < 100; i++ {
			if d := backoff(n, base, maxB); d < step/2 || d > step {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s]", n, d, step/2, step)
			}
		}
	}
}

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2026, 11, 29, 20, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0}, {"1", time.Second}, {"3", 3 * time.Second}, {"-1", 0}, {"soon", 0},
		{now.Add(2 * time.Second).Format(http.TimeFormat), 2 * time.Second},
	} {
		h := http.Header{}
		if tc.v != "" {
			h.Set("Retry-After", tc.v)
		}
		if got := retryAfter(h, now); got != tc.want {
			t.Errorf("Retry-After %q = %s, want %s", tc.v, got, tc.want)
		}
	}
}

func TestNewConfig(t *testing.T) {
	for _, bad := range [][]string{nil, {"ftp://x:1"}, {"http://"}} {
		if _, err := New(Config{Endpoints: bad}); err == nil {
			t.Errorf("New accepted endpoints %q", bad)
		}
	}
}
