package faults

// The harness: a test's own services (Redis processes, a database, a
// queue, a key prefix), the in-process toxiproxy in front of them, and
// stockd processes built from this tree.

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/go-sql-driver/mysql"
	"github.com/rs/zerolog"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/internal/stocktest"
)

const adminToken = "faults-admin-token"

// reservationSecret signs the reservation tokens of every node of a test.
const reservationSecret = "faults-reservation-secret-0123456789abcdef"

// env is one test's services.
type env struct {
	t      testing.TB
	dsn    string // direct, for the test's own queries
	db     *sql.DB
	prefix string
	queue  string
	tox    *toxServer
	shards []*shardProc
	// mysql and amqp are set when the daemon reaches the service through
	// a proxy the test can break.
	mysql, amqp *toxProxy
}

// envOpts says what a test needs.
type envOpts struct {
	shards int
	// redisArgs are extra redis-server arguments of shard i.
	redisArgs map[int][]string
	// proxyShards puts a toxiproxy in front of every shard.
	proxyShards bool
	// proxyMySQL and proxyAMQP route the daemon's MySQL and RabbitMQ
	// connections through toxiproxy (the services stay up for others).
	proxyMySQL, proxyAMQP bool
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	e := &env{t: t, dsn: stocktest.Database(t), prefix: stocktest.Name("f"), queue: stocktest.Queue(t), tox: newToxServer(t)}
	e.db = stocktest.OpenDB(t, e.dsn)
	for i := 0; i < o.shards; i++ {
		s := &shardProc{ID: "s" + strconv.Itoa(i+1), Redis: stocktest.StartRedis(t, o.redisArgs[i]...)}
		if o.proxyShards {
			s.Proxy = e.tox.proxy(t, "redis-"+s.ID, s.Redis.Addr)
		}
		e.shards = append(e.shards, s)
	}
	if o.proxyMySQL {
		cfg, err := mysql.ParseDSN(e.dsn)
		if err != nil {
			t.Fatal(err)
		}
		e.mysql = e.tox.proxy(t, "mysql", cfg.Addr)
	}
	if o.proxyAMQP {
		u, err := url.Parse(stocktest.AMQPURL())
		if err != nil {
			t.Fatal(err)
		}
		e.amqp = e.tox.proxy(t, "amqp", u.Host)
	}
	return e
}

// shard returns the shard with id.
func (e *env) shard(id string) *shardProc {
	for _, s := range e.shards {
		if s.ID == id {
			return s
		}
	}
	e.t.Fatalf("no shard %s", id)
	return nil
}

// daemonDSN is the MySQL DSN the daemon gets: through the proxy when
// there is one, with timeouts short enough that a blackholed connection
// fails in seconds rather than minutes.
func (e *env) daemonDSN() string {
	cfg, err := mysql.ParseDSN(e.dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	if e.mysql != nil {
		cfg.Addr = e.mysql.Addr()
	}
	cfg.Timeout = 2 * time.Second
	cfg.ReadTimeout = 5 * time.Second
	cfg.WriteTimeout = 5 * time.Second
	return cfg.FormatDSN()
}

func (e *env) daemonAMQP() string {
	if e.amqp == nil {
		return stocktest.AMQPURL()
	}
	u, _ := url.Parse(stocktest.AMQPURL())
	u.Host = e.amqp.Addr()
	return u.String()
}

// shardProc is one Redis shard of the test.
type shardProc struct {
	ID    string
	Redis *stocktest.Redis
	// Proxy, when set, is what the daemon connects to.
	Proxy *toxProxy
	// Fields are extra YAML fields of the shard's entry in the daemon's
	// config (durability, replicas, wait_timeout, ...).
	Fields map[string]string
}

// Addr is the address the daemon is given for the shard.
func (s *shardProc) Addr() string {
	if s.Proxy != nil {
		return s.Proxy.Addr()
	}
	return s.Redis.Addr
}

// ---- toxiproxy, in process ----

type toxServer struct{ api *toxiproxy.ApiServer }

func newToxServer(t testing.TB) *toxServer {
	return &toxServer{api: toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())}
}

// toxProxy is one proxy: a listener on a free port forwarding to upstream.
type toxProxy struct {
	t    testing.TB
	p    *toxiproxy.Proxy
	addr string
	mu   sync.Mutex
	on   map[string]bool
}

func (s *toxServer) proxy(t testing.TB, name, upstream string) *toxProxy {
	t.Helper()
	p := toxiproxy.NewProxy(s.api, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy %s: %v", name, err)
	}
	tp := &toxProxy{t: t, p: p, addr: p.Listen, on: map[string]bool{}}
	t.Cleanup(p.Stop)
	return tp
}

// Addr is where the proxy listens.
func (p *toxProxy) Addr() string { return p.addr }

// add adds a toxic to every connection, open or new.
func (p *toxProxy) add(name, typ, stream string, attrs map[string]any) {
	p.t.Helper()
	body, _ := json.Marshal(map[string]any{"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs})
	if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		p.t.Fatalf("toxic %s on %s: %v", name, p.p.Name, err)
	}
	p.mu.Lock()
	p.on[name] = true
	p.mu.Unlock()
}

// remove removes a toxic; removing one that is not there is a no-op.
func (p *toxProxy) remove(name string) {
	p.mu.Lock()
	on := p.on[name]
	delete(p.on, name)
	p.mu.Unlock()
	if on {
		if err := p.p.Toxics.RemoveToxic(context.Background(), name); err != nil {
			p.t.Errorf("remove toxic %s: %v", name, err)
		}
	}
}

// clear removes every toxic this test added.
func (p *toxProxy) clear() {
	p.mu.Lock()
	var names []string
	for n := range p.on {
		names = append(names, n)
	}
	p.mu.Unlock()
	for _, n := range names {
		p.remove(n)
	}
}

// latency delays each direction's data by ms (both directions: a round
// trip costs 2*ms).
func (p *toxProxy) latency(ms int) {
	p.add("lat-up", "latency", "upstream", map[string]any{"latency": ms})
	p.add("lat-down", "latency", "downstream", map[string]any{"latency": ms})
}

// slow delays every answer by ms (a slow instance: each call costs ms
// more).
func (p *toxProxy) slow(ms int) {
	p.add("slow", "latency", "downstream", map[string]any{"latency": ms})
}

// blackhole swallows everything in both directions and keeps the
// connections open: the peer hears nothing until its own timeouts.
func (p *toxProxy) blackhole() {
	p.add("hole-up", "timeout", "upstream", map[string]any{"timeout": 0})
	p.add("hole-down", "timeout", "downstream", map[string]any{"timeout": 0})
}

// resetPeer answers any data with a TCP RST, on open and new connections.
func (p *toxProxy) resetPeer() {
	p.add("reset", "reset_peer", "upstream", map[string]any{"timeout": 0})
}

// setUpstream points the proxy at another address (a VIP moving to a
// promoted replica); open connections are closed.
func (p *toxProxy) setUpstream(addr string) {
	p.t.Helper()
	if err := p.p.Update(&toxiproxy.Proxy{Listen: p.addr, Upstream: addr, Enabled: true}); err != nil {
		p.t.Fatalf("re-point %s: %v", p.p.Name, err)
	}
}

// ---- the stockd binary ----

// stockd is one daemon process.
type stockd struct {
	t                  testing.TB
	name               string
	hot, admin, gossip string
	cfgPath, logPath   string
	env                []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// nodeOpts configure one daemon.
type nodeOpts struct {
	name string
	// env are more STOCKD_* settings ("STOCKD_X": "v"); they override the
	// harness's.
	env map[string]string
	// yaml is appended to the config file (top-level settings the
	// environment cannot express).
	yaml string
	// noWait returns right after the process started, without waiting for
	// it to be ready.
	noWait bool
}

// config writes the daemon's YAML: the shard list (per-shard settings
// live only there).
func (e *env) config(o nodeOpts) string {
	var b strings.Builder
	b.WriteString("shards:\n")
	for _, s := range e.shards {
		fmt.Fprintf(&b, "  - id: %s\n    addr: %q\n", s.ID, s.Addr())
		keys := make([]string, 0, len(s.Fields))
		for k := range s.Fields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "    %s: %s\n", k, s.Fields[k])
		}
	}
	b.WriteString(o.yaml)
	path := filepath.Join(e.t.TempDir(), "stockd-"+o.name+".yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// startStockd starts a daemon process and waits until it is ready.
func (e *env) startStockd(o nodeOpts) *stockd {
	t := e.t
	t.Helper()
	if o.name == "" {
		o.name = "n1"
	}
	d := &stockd{
		t:       t,
		name:    o.name,
		hot:     "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t)),
		admin:   "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t)),
		gossip:  "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t)),
		cfgPath: e.config(o),
	}
	d.logPath = filepath.Join(t.TempDir(), "stockd-"+o.name+".log")
	settings := map[string]string{
		"STOCKD_NODE_NAME":    o.name,
		"STOCKD_HTTP_ADDR":    d.hot,
		"STOCKD_ADMIN_ADDR":   d.admin,
		"STOCKD_GOSSIP_ADDR":  d.gossip,
		"STOCKD_ADMIN_TOKEN":  adminToken,
		"STOCKD_MYSQL_DSN":    e.daemonDSN(),
		"STOCKD_AMQP_URL":     e.daemonAMQP(),
		"STOCKD_KEY_PREFIX":   e.prefix,
		"STOCKD_SYNC_QUEUE":   e.queue,
		"STOCKD_LOG_LEVEL":    "warn",
		"STOCKD_RELOAD_EVERY": "500ms",
	}
	settings["STOCKD_RESERVATION_SECRET"] = reservationSecret
	if os.Getenv("STOCKD_TEST_DEBUG") != "" {
		settings["STOCKD_LOG_LEVEL"] = "debug"
	}
	for k, v := range o.env {
		settings[k] = v
	}
	// Only what the daemon needs: it refuses STOCKD_* variables it does
	// not know, so the test's own environment stays out.
	d.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range settings {
		d.env = append(d.env, k+"="+v)
	}
	sort.Strings(d.env)
	d.start(!o.noWait)
	t.Cleanup(func() {
		d.kill9()
		if t.Failed() {
			t.Logf("stockd %s log (last lines):\n%s", d.name, d.logTail(80))
		}
	})
	return d
}

func (d *stockd) start(wait bool) {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	cmd := exec.Command(stocktest.StockdBinary(d.t), "-config", d.cfgPath)
	cmd.Env = d.env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary killed by its timeout or by hand takes
	// this process with it instead of leaving an orphan on a test port.
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
	if !wait {
		return
	}
	if err := d.waitReady(60 * time.Second); err != nil {
		d.t.Fatalf("stockd %s: %v\n%s", d.name, err, d.logTail(40))
	}
}

// waitReady waits for /readyz to answer 200.
func (d *stockd) waitReady(within time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	exited := false
	err := stocktest.Wait(within, func() (bool, string) {
		select {
		case <-d.exitedCh():
			exited = true
			return true, ""
		default:
		}
		resp, err := c.Get("http://" + d.hot + "/readyz")
		if err != nil {
			return false, ""
		}
		resp.Body.Close()
		return resp.StatusCode == 200, ""
	})
	switch {
	case exited:
		return fmt.Errorf("exited before it was ready")
	case err != nil:
		return fmt.Errorf("not ready within %s", within)
	}
	return nil
}

func (d *stockd) exitedCh() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.exited
}

// exitCode waits up to within for the process to exit and returns its
// exit code (-1: still running).
func (d *stockd) exitCode(within time.Duration) int {
	select {
	case <-d.exitedCh():
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		return -1
	}
}

func (d *stockd) signal(sig syscall.Signal) {
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Signal(sig)
	}
}

// kill9 kills the process (SIGKILL) and waits for it.
func (d *stockd) kill9() {
	d.signal(syscall.SIGKILL)
	<-d.exitedCh()
}

// restart starts the process again with the same settings and ports.
func (d *stockd) restart() { d.t.Helper(); d.start(true) }

// logTail is the last n lines of the daemon's log.
func (d *stockd) logTail(n int) string {
	f, err := os.Open(d.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// ---- admin API ----

// adminDo sends an admin request; out receives a 2xx JSON answer.
func (d *stockd) adminDo(method, path, body string, out any) (int, []byte) {
	d.t.Helper()
	code, b, err := stocktest.Admin{Addr: d.admin, Token: adminToken}.Do(method, path, body, out)
	switch {
	case err != nil && code == 0:
		return 0, []byte(err.Error())
	case err != nil:
		d.t.Fatal(err)
	}
	return code, b
}

// putSKU creates the SKU.
func (d *stockd) putSKU(sku string, total int64, partitions int, chunk, threshold int64) admin.SKUView {
	d.t.Helper()
	var v admin.SKUView
	stocktest.Admin{Addr: d.admin, Token: adminToken}.PutSKU(d.t, sku, total, partitions, chunk, threshold, &v)
	return v
}

func (d *stockd) sku(sku string) (admin.SKUView, error) {
	var v admin.SKUView
	code, b := d.adminDo("GET", "/admin/skus/"+sku, "", &v)
	if code != 200 {
		return v, fmt.Errorf("get sku: %d %s", code, b)
	}
	return v, nil
}

// shardOf maps pid to shard id, from the admin view.
func (d *stockd) shardOf(sku string) map[int]string {
	d.t.Helper()
	v, err := d.sku(sku)
	if err != nil {
		d.t.Fatal(err)
	}
	m := map[int]string{}
	for _, p := range v.Partitions {
		m[p.ID] = p.Shard
	}
	return m
}

func (d *stockd) verify(sku string) (audit.Report, error) {
	var r audit.Report
	code, b := d.adminDo("GET", "/admin/skus/"+sku+"/verify", "", &r)
	if code != 200 {
		return r, fmt.Errorf("verify: %d %s", code, b)
	}
	return r, nil
}

// clusterView is GET /admin/cluster.
type clusterView struct {
	Self    string `json:"self"`
	Members []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"members"`
}

func (d *stockd) members() ([]string, error) {
	var v clusterView
	code, b := d.adminDo("GET", "/admin/cluster", "", &v)
	if code != 200 {
		return nil, fmt.Errorf("cluster: %d %s", code, b)
	}
	var names []string
	for _, m := range v.Members {
		if m.State == "alive" {
			names = append(names, m.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}
