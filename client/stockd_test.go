package client

// A small launcher of real stockd processes for the client's tests: the
// client is tested against the binary of this tree, across process
// boundaries, with the test's own Redis processes, database and queue from
// internal/stocktest. (faults/harness_test.go has the full harness, with
// toxiproxy; it lives in another package's test files.)

import (
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/internal/stocktest"
)

const testAdminToken = "client-test-admin-token"

type cluster struct {
	t      testing.TB
	db     *sql.DB
	dsn    string
	prefix string
	queue  string
	shards string // STOCKD_SHARDS
	nodes  []*stockd
}

// newCluster starts nShards Redis processes and n stockd nodes, the others
// joining the first; env are extra STOCKD_* settings of every node.
func newCluster(t testing.TB, n, nShards int, env map[string]string) *cluster {
	t.Helper()
	c := &cluster{t: t, dsn: stocktest.Database(t), prefix: stocktest.Name("c"), queue: stocktest.Queue(t)}
	c.db = stocktest.OpenDB(t, c.dsn)
	var shards []string
	for i := range nShards {
		shards = append(shards, "s"+strconv.Itoa(i+1)+"="+stocktest.StartRedis(t).Addr)
	}
	c.shards = strings.Join(shards, ",")
	for i := range n {
		settings := map[string]string{}
		for k, v := range env {
			settings[k] = v
		}
		if i > 0 {
			settings["STOCKD_JOIN"] = c.nodes[0].gossip
		}
		c.nodes = append(c.nodes, c.start("n"+strconv.Itoa(i+1), settings))
	}
	if n > 1 {
		if _, ok := stocktest.WaitFor(60*time.Second, func() bool { return c.nodes[0].alive() == n }); !ok {
			t.Fatalf("%d nodes did not join", n)
		}
	}
	return c
}

// endpoints are the nodes' hot addresses.
func (c *cluster) endpoints() []string {
	var eps []string
	for _, d := range c.nodes {
		eps = append(eps, d.hot)
	}
	return eps
}

// stockd is one daemon process.
type stockd struct {
	t                  testing.TB
	name               string
	hot, admin, gossip string
	env                []string
	logPath            string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

func (c *cluster) start(name string, extra map[string]string) *stockd {
	t := c.t
	t.Helper()
	port := func() string { return "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t)) }
	d := &stockd{t: t, name: name, hot: port(), admin: port(), gossip: port(),
		logPath: filepath.Join(t.TempDir(), "stockd-"+name+".log")}
	settings := map[string]string{
		"STOCKD_NODE_NAME":          name,
		"STOCKD_HTTP_ADDR":          d.hot,
		"STOCKD_ADMIN_ADDR":         d.admin,
		"STOCKD_GOSSIP_ADDR":        d.gossip,
		"STOCKD_ADMIN_TOKEN":        testAdminToken,
		"STOCKD_RESERVATION_SECRET": "client-test-reservation-secret-of-32-bytes",
		"STOCKD_MYSQL_DSN":          c.dsn,
		"STOCKD_AMQP_URL":           stocktest.AMQPURL(),
		"STOCKD_KEY_PREFIX":         c.prefix,
		"STOCKD_SYNC_QUEUE":         c.queue,
		"STOCKD_SHARDS":             c.shards,
		"STOCKD_LOG_LEVEL":          "warn",
		"STOCKD_RELOAD_EVERY":       "500ms",
	}
	for k, v := range extra {
		settings[k] = v
	}
	// Only what the daemon needs: it refuses STOCKD_* variables it does
	// not know.
	d.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range settings {
		d.env = append(d.env, k+"="+v)
	}
	d.startProc()
	t.Cleanup(func() {
		d.kill9()
		if t.Failed() {
			b, _ := os.ReadFile(d.logPath)
			if len(b) > 8<<10 {
				b = b[len(b)-8<<10:]
			}
			t.Logf("stockd %s log (tail):\n%s", d.name, b)
		}
	})
	return d
}

// startProc starts the process and waits until /readyz answers 200.
func (d *stockd) startProc() {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	cmd := exec.Command(stocktest.StockdBinary(d.t))
	cmd.Env = d.env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary that dies takes the daemon with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
	hc := &http.Client{Timeout: time.Second}
	_, ready := stocktest.WaitFor(60*time.Second, func() bool {
		select {
		case <-exited:
			d.t.Fatalf("stockd %s exited before it was ready", d.name)
		default:
		}
		resp, err := hc.Get("http://" + d.hot + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if !ready {
		d.t.Fatalf("stockd %s not ready", d.name)
	}
}

// kill9 kills the process with SIGKILL and waits for it to exit.
func (d *stockd) kill9() {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// signal sends sig to the process.
func (d *stockd) signal(sig syscall.Signal) {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if cmd != nil {
		cmd.Process.Signal(sig)
	}
}

// freeze stops the process (SIGSTOP): its connections stay open and
// nothing answers, like a hung node. thaw (SIGCONT) undoes it; the
// test's cleanup thaws too.
func (d *stockd) freeze() {
	d.signal(syscall.SIGSTOP)
	d.t.Cleanup(d.thaw)
}

func (d *stockd) thaw() { d.signal(syscall.SIGCONT) }

// restart starts the process again with the same settings and ports.
func (d *stockd) restart() { d.t.Helper(); d.startProc() }

// adminDo sends an admin request; out receives a 2xx JSON answer.
func (d *stockd) adminDo(method, path, body string, out any) (int, string) {
	code, b, err := stocktest.Admin{Addr: d.admin, Token: testAdminToken}.Do(method, path, body, out)
	if err != nil {
		return 0, err.Error()
	}
	return code, string(b)
}

// putSKU creates a SKU.
func (d *stockd) putSKU(sku string, total int64, partitions int, chunk, threshold int64) {
	d.t.Helper()
	stocktest.Admin{Addr: d.admin, Token: testAdminToken}.PutSKU(d.t, sku, total, partitions, chunk, threshold, nil)
}

// waitKnown waits until every live node serves sku: another node learns a
// new SKU through gossip or its reload (reload_every), and answers 404
// until then.
func (c *cluster) waitKnown(sku string) {
	c.t.Helper()
	hc := &http.Client{Timeout: time.Second}
	for _, d := range c.nodes {
		_, known := stocktest.WaitFor(30*time.Second, func() bool {
			resp, err := hc.Get("http://" + d.hot + "/v1/stock/" + sku)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		if !known {
			c.t.Fatalf("node %s does not know sku %s", d.name, sku)
		}
	}
}

func (d *stockd) verify(sku string) (audit.Report, string) {
	var v audit.Report
	code, b := d.adminDo("GET", "/admin/skus/"+sku+"/verify", "", &v)
	if code != 200 {
		return audit.Report{}, fmt.Sprintf("%d %s", code, b)
	}
	return v, b
}

// alive counts the members this node sees alive.
func (d *stockd) alive() int {
	var v struct {
		Members []struct {
			State string `json:"state"`
		} `json:"members"`
	}
	if code, _ := d.adminDo("GET", "/admin/cluster", "", &v); code != 200 {
		return 0
	}
	n := 0
	for _, m := range v.Members {
		if m.State == "alive" {
			n++
		}
	}
	return n
}

// rows returns the deduction rows of sku in MySQL: request id → rows.
func (c *cluster) rows(sku string) (map[string]int, int64) {
	c.t.Helper()
	rs, err := c.db.Query("SELECT request_id, qty FROM deductions WHERE sku = ?", sku)
	if err != nil {
		c.t.Fatal(err)
	}
	defer rs.Close()
	ids := map[string]int{}
	var units int64
	for rs.Next() {
		var id sql.NullString
		var qty int64
		if err := rs.Scan(&id, &qty); err != nil {
			c.t.Fatal(err)
		}
		ids[id.String]++
		units += qty
	}
	if err := rs.Err(); err != nil {
		c.t.Fatal(err)
	}
	return ids, units
}
