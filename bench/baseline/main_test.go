package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/stockd/stockd/internal/stocktest"
)

// fakeEngine answers from a counter: ok while stock lasts, or fails.
type fakeEngine struct {
	stock atomic.Int64
	fail  bool
}

func (e *fakeEngine) take(_ context.Context, _, _ string, qty int64) (bool, error) {
	if e.fail {
		return false, errors.New("boom")
	}
	if e.stock.Add(-qty) < 0 {
		e.stock.Add(qty)
		return false, nil
	}
	return true, nil
}

func (e *fakeEngine) close() {}

// serve runs handler on a loopback port and returns a client for it.
func serve(t *testing.T, handler fasthttp.RequestHandler) (*fasthttp.HostClient, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return &fasthttp.HostClient{Addr: ln.Addr().String()}, "http://" + ln.Addr().String()
}

func post(t *testing.T, c *fasthttp.HostClient, url, body string) (int, string) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod("POST")
	req.SetBodyString(body)
	if err := c.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode(), string(resp.Body())
}

type okAnswer struct {
	Status      string `json:"status"`
	Reservation string `json:"reservation"`
	SKU         string `json:"sku"`
	Qty         int64  `json:"qty"`
}

func TestFrontAnswersLikeStockd(t *testing.T) {
	eng := &fakeEngine{}
	eng.stock.Store(3)
	f := &front{eng: eng, timeout: time.Second}
	c, base := serve(t, f.handle)
	url := base + "/v1/deduct"

	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		code, body := post(t, c, url, `{"sku":"s1","qty":1,"request_id":"r`+string(rune('a'+i))+`"}`)
		var a okAnswer
		if code != 200 || json.Unmarshal([]byte(body), &a) != nil || a.Status != "ok" || a.SKU != "s1" || a.Qty != 1 || a.Reservation == "" {
			t.Fatalf("deduct %d: %d %s", i, code, body)
		}
		if seen[a.Reservation] {
			t.Fatalf("reservation %q returned twice", a.Reservation)
		}
		seen[a.Reservation] = true
	}
	if code, body := post(t, c, url, `{"sku":"s1","qty":1,"request_id":"rz"}`); code != 409 || body != `{"status":"sold_out"}` {
		t.Fatalf("sold out: %d %s", code, body)
	}
	for _, bad := range []string{`{`, `{"qty":1,"request_id":"x"}`, `{"sku":"s","qty":0,"request_id":"x"}`, `{"sku":"s","qty":101,"request_id":"x"}`, `{"sku":"s","qty":"1","request_id":"x"}`, `{"sku":"s","qty":1}`} {
		if code, body := post(t, c, url, bad); code != 400 || !strings.Contains(body, `"error"`) {
			t.Fatalf("%s: %d %s", bad, code, body)
		}
	}
	if code, _ := post(t, c, base+"/v1/other", `{}`); code != 404 {
		t.Fatalf("unknown route: %d", code)
	}

	eng.fail = true
	if code, body := post(t, c, url, `{"sku":"s1","qty":1,"request_id":"r9"}`); code != 503 || !strings.Contains(body, `"request_id":"r9"`) {
		t.Fatalf("engine error: %d %s", code, body)
	}
}

func TestFloor(t *testing.T) {
	f := &front{}
	c, base := serve(t, f.floor)
	var last string
	for i := 0; i < 2; i++ {
		code, body := post(t, c, base+"/v1/deduct", `not even json`)
		var a okAnswer
		if code != 200 || json.Unmarshal([]byte(body), &a) != nil || a.Status != "ok" || a.Qty != 1 || a.Reservation == last {
			t.Fatalf("floor: %d %s", code, body)
		}
		last = a.Reservation
	}
}

func TestRedisEngine(t *testing.T) {
	r := stocktest.StartRedis(t)
	ctx := context.Background()
	// The engine takes 1 unit itself at start to load the script.
	e, err := newRedisEngine(ctx, options{redis: r.Addr, key: stocktest.Name("k"), stock: 6})
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	// 5 units left: 2 ok, 4 short, 3 ok, then nothing.
	for i, step := range []struct {
		qty  int64
		want bool
	}{{2, true}, {4, false}, {3, true}, {1, false}} {
		ok, err := e.take(ctx, "s", "r"+strconv.Itoa(i), step.qty)
		if err != nil || ok != step.want {
			t.Fatalf("take %d: %v %v, want %v", step.qty, ok, err, step.want)
		}
	}
}

func TestSQLEngines(t *testing.T) {
	dsn := stocktest.Database(t)
	ctx := context.Background()
	for _, mode := range []string{"rowlock", "condupdate"} {
		t.Run(mode, func(t *testing.T) {
			e, err := newSQLEngine(ctx, options{mode: mode, dsn: dsn, table: "stock_" + mode, stock: 5, dbConns: 4, interp: true})
			if err != nil {
				t.Fatal(err)
			}
			defer e.close()
			// 5 units, 20 concurrent takes of 1: exactly 5 succeed.
			var oks atomic.Int64
			errs := make(chan error, 20)
			for i := 0; i < 20; i++ {
				go func() {
					ok, err := e.take(ctx, "s", "r", 1)
					if ok {
						oks.Add(1)
					}
					errs <- err
				}()
			}
			for i := 0; i < 20; i++ {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if oks.Load() != 5 {
				t.Fatalf("%d ok takes of 5 units", oks.Load())
			}
			var left int64
			if err := e.db.QueryRow("SELECT stock FROM stock_" + mode + " WHERE id = 1").Scan(&left); err != nil || left != 0 {
				t.Fatalf("stock left %d, %v", left, err)
			}
		})
	}
}

// mqpeer sells exactly its stock, answers a replayed request id with its
// first outcome without taking again, and its consumers write exactly one
// order row per ok request id.
func TestMQPeerEngine(t *testing.T) {
	r := stocktest.StartRedis(t)
	dsn := stocktest.Database(t)
	queue := stocktest.Queue(t)
	ctx := context.Background()
	e, err := newMQEngine(ctx, options{redis: r.Addr, key: stocktest.Name("k"), stock: 5, dsn: dsn, orders: "orders", dbConns: 4, interp: true,
		queue: queue, amqp: stocktest.AMQPURL(), dedupTTL: time.Minute, mqChannels: 2, consumers: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	// 5 units, 20 concurrent requests of 1, each sent twice: 5 request ids ok.
	var mu sync.Mutex
	okIDs := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "r" + strconv.Itoa(i)
			first, err := e.take(ctx, "s1", id, 1)
			if err != nil {
				t.Error(err)
				return
			}
			again, err := e.take(ctx, "s1", id, 1)
			if err != nil || again != first {
				t.Errorf("%s: replay answered %v (%v), first %v", id, again, err, first)
			}
			if first {
				mu.Lock()
				okIDs[id]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(okIDs) != 5 {
		t.Fatalf("%d ok request ids for 5 units: %v", len(okIDs), okIDs)
	}
	db := stocktest.OpenDB(t, dsn)
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		var n int
		if err := db.QueryRow("SELECT COUNT(*) FROM orders").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > len(okIDs) {
			t.Fatalf("%d order rows for %d ok request ids", n, len(okIDs))
		}
		return n == len(okIDs), fmt.Sprintf("%d order rows for %d ok request ids", n, len(okIDs))
	})
	rows, err := db.Query("SELECT request_id, sku, qty FROM orders")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, sku string
		var qty int
		if err := rows.Scan(&id, &sku, &qty); err != nil {
			t.Fatal(err)
		}
		if okIDs[id] != 1 || sku != "s1" || qty != 1 {
			t.Fatalf("order row %s %s %d: not an ok request", id, sku, qty)
		}
	}
}
