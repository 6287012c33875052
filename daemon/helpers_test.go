package daemon

import (
	"context"
	"database/sql"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

const testToken = "test-token-123"

// env is one test's services: its Redis shards, database and key prefix.
type env struct {
	t      *testing.T
	shards []*stocktest.Redis
	dsn    string
	prefix string
	queue  string
	db     *sql.DB
}

func newEnv(t *testing.T, nShards int) *env {
	t.Helper()
	e := &env{t: t, dsn: stocktest.Database(t), prefix: stocktest.Name("t"), queue: stocktest.Queue(t)}
	for i := 0; i < nShards; i++ {
		e.shards = append(e.shards, stocktest.StartRedis(t))
	}
	e.db = stocktest.OpenDB(t, e.dsn)
	return e
}

func (e *env) config() Config {
	cfg := DefaultConfig()
	cfg.NodeName = "test"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.AdminAddr = "127.0.0.1:0"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.GossipFast = true
	cfg.AdminToken = testToken
	cfg.ReservationSecret = testSecret
	cfg.MySQLDSN = e.dsn
	cfg.AMQPURL = stocktest.AMQPURL()
	cfg.KeyPrefix = e.prefix
	cfg.LogLevel = "warn"
	if os.Getenv("STOCKD_TEST_DEBUG") != "" {
		cfg.LogLevel = "debug"
	}
	cfg.ReloadEvery = 500 * time.Millisecond
	cfg.Sync.Queue = e.queue
	cfg.Shards = nil
	for i, r := range e.shards {
		cfg.Shards = append(cfg.Shards, shard.Config{ID: "s" + strconv.Itoa(i+1), Addr: r.Addr})
	}
	return cfg
}

// node is a daemon running in the test process.
type node struct {
	t      *testing.T
	d      *Daemon
	cancel context.CancelFunc
	done   chan error
	hot    string
	admin  string
}

func startNode(t *testing.T, cfg Config) *node {
	t.Helper()
	d, err := New(cfg, NewLogger(newTestWriter(t), cfg.LogLevel))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{t: t, d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-n.done:
		t.Fatalf("daemon exited at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon not ready after 30s")
	}
	n.hot, n.admin = d.Addrs()
	t.Cleanup(func() { n.stop() })
	return n
}

// stop stops the daemon gracefully and waits for it.
func (n *node) stop() {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	select {
	case err := <-n.done:
		if err != nil {
			n.t.Errorf("daemon stopped with error: %v", err)
		}
	case <-time.After(30 * time.Second):
		// The stacks say what the node waits for.
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		n.t.Errorf("daemon did not stop within 30s; goroutines:\n%s", buf)
	}
}

// testWriter sends a node's log lines to its test's log until the test
// ends. memberlist's goroutines may log a line after the node stopped,
// and testing forbids a Log after the test finished (the race detector
// flags it): the gate closes in the test's last cleanup, and a line
// being written holds it open until it is done.
type testWriter struct{ g *logGate }

type logGate struct {
	mu   sync.RWMutex
	t    *testing.T
	done bool
}

func newTestWriter(t *testing.T) testWriter {
	g := &logGate{t: t}
	t.Cleanup(func() {
		g.mu.Lock()
		g.done = true
		g.mu.Unlock()
	})
	return testWriter{g}
}

func (w testWriter) Write(p []byte) (int, error) {
	w.g.mu.RLock()
	defer w.g.mu.RUnlock()
	if !w.g.done {
		w.g.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// adminAPI is the node's admin API as the test's operator.
func (n *node) adminAPI() stocktest.Admin { return stocktest.Admin{Addr: n.admin, Token: testToken} }

// adminDo sends an admin request and decodes the JSON answer into out.
func adminDo(t *testing.T, n *node, method, path, body string, out any) int {
	t.Helper()
	code, _, err := n.adminAPI().Do(method, path, body, out)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func putSKU(t *testing.T, n *node, sku string, total int64, partitions int, chunk, threshold int64) admin.SKUView {
	t.Helper()
	var v admin.SKUView
	n.adminAPI().PutSKU(t, sku, total, partitions, chunk, threshold, &v)
	return v
}

func getSKU(t *testing.T, n *node, sku string) admin.SKUView {
	t.Helper()
	var v admin.SKUView
	if code := adminDo(t, n, "GET", "/admin/skus/"+sku, "", &v); code != 200 {
		t.Fatalf("get sku: status %d", code)
	}
	return v
}

// ledger is what Redis and MySQL hold for a SKU, read directly.
type ledger struct {
	total, pool, pendingFills int64
	levels                    int64 // Σ sub-domains of every partition
	streamUnits               int64 // Σ qty of details still in Redis streams
	streamEntries             int64
	subDomains                []int64
}

func (e *env) ledger(sku string) ledger {
	e.t.Helper()
	var l ledger
	if err := e.db.QueryRow(`SELECT total, pool FROM skus WHERE sku = ?`, sku).Scan(&l.total, &l.pool); err != nil {
		e.t.Fatal(err)
	}
	if err := e.db.QueryRow(`SELECT COALESCE(SUM(qty),0) FROM allocations WHERE sku = ? AND kind='fill' AND state='pending'`, sku).Scan(&l.pendingFills); err != nil {
		e.t.Fatal(err)
	}
	rows, err := e.db.Query(`SELECT pid, shard, epoch FROM partitions WHERE sku = ?`, sku)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	clients := map[string]rueidis.Client{}
	for i, r := range e.shards {
		clients["s"+strconv.Itoa(i+1)] = r.Client()
	}
	ctx := context.Background()
	for rows.Next() {
		var pid int
		var sh string
		var epoch int64
		if err := rows.Scan(&pid, &sh, &epoch); err != nil {
			e.t.Fatal(err)
		}
		c := clients[sh]
		tag := "{" + e.prefix + ":" + sku + ":" + strconv.Itoa(pid) + "}"
		vals, err := c.Do(ctx, c.B().Hmget().Key(tag+":s").Field("a", "b").Build()).AsIntSlice()
		if err != nil {
			e.t.Fatalf("levels of %s: %v", tag, err)
		}
		l.levels += vals[0] + vals[1]
		l.subDomains = append(l.subDomains, vals[0], vals[1])
		entries, err := c.Do(ctx, c.B().Xrange().Key(tag+":x").Start("-").End("+").Build()).AsXRange()
		if err != nil {
			e.t.Fatal(err)
		}
		for _, en := range entries {
			q, _ := strconv.ParseInt(en.FieldValues["q"], 10, 64)
			l.streamUnits += q
			l.streamEntries++
		}
	}
	return l
}
