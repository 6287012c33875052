package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
	"github.com/stockd/stockd/bench/internal/report"
	"github.com/stockd/stockd/internal/redisproc"
)

// launcher builds and starts what the bench measures: stockd nodes (one
// for the main rows, clusters for the scale rows) and the baseline
// servers; api is the HTTP client the bench talks to the nodes with.
type launcher struct {
	*life
	*services
	bin    string // directory of the built binaries
	goBin  string
	secret string // reservation_secret of every node
	api    nodeClient
}

// build compiles the three binaries into bin/ (go build, whatever is in the
// tree now).
func (ln *launcher) build(ctx context.Context) error {
	ln.bin = "bin"
	if err := os.MkdirAll(ln.bin, 0o755); err != nil {
		return err
	}
	goBin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "/usr/local/go/bin/go"
		}
	}
	ln.goBin = goBin
	for _, t := range [][2]string{
		{"stockd", "./daemon/cmd/stockd"},
		{"loadgen", "./bench/loadgen"},
		{"baseline", "./bench/baseline"},
	} {
		start := time.Now()
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", filepath.Join(ln.bin, t[0]), t[1])
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %v\n%s", t[1], err, out)
		}
		ln.logf("built bin/%s (%s)", t[0], time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

func (b *bench) startStockd(ctx context.Context) error {
	n, err := b.startNode(ctx, nodeSpec{name: "bench-node", prefix: b.prefix, db: b.stockdDB, queue: b.queue, shards: b.shards, log: "stockd.log"})
	if err != nil {
		return fmt.Errorf("stockd: %w", err)
	}
	b.stockd, b.hot, b.admin = n.p, n.hot, n.admin
	b.logf("stockd ready: hot %s, admin %s, database %s, queue %s, key prefix %s", b.hot, b.admin, b.stockdDB, b.queue, b.prefix)
	return nil
}

// makeSKUs creates the SKUs of the main rows on the main node.
func (b *bench) makeSKUs(ctx context.Context) error {
	if err := b.api.putSKU(ctx, b.admin, plan.HotSKU, plan.HotTotal, plan.HotParts, plan.HotChunk, plan.HotThreshold); err != nil {
		return err
	}
	if b.wants("limited") {
		body := fmt.Sprintf(`{"total":%d,"partitions":%d,"chunk":%d,"threshold":%d,"per_user_limit":%d}`, plan.HotTotal, plan.HotParts, plan.HotChunk, plan.HotThreshold, plan.LimitPerUser)
		if err := b.api.putSKUBody(ctx, b.admin, plan.LimitSKU, body); err != nil {
			return err
		}
	}
	return b.api.putSKU(ctx, b.admin, plan.SoldSKU, plan.SoldTotal, plan.HotParts, plan.SoldChunk, plan.SoldThreshold)
}

// nodeSpec is one stockd process: its cluster's key prefix, database,
// queue and shards, and the gossip addresses it joins.
type nodeSpec struct {
	name, prefix, db, queue, log string
	shards                       []*redisproc.Instance
	join                         []string
}

// stockNode is a running stockd.
type stockNode struct {
	p                  *proc
	hot, admin, gossip string
}

// nodeEnv is the configuration of a node (STOCKD_* variables).
func (ln *launcher) nodeEnv(s nodeSpec, n *stockNode) []string {
	var shards []string
	for i, r := range s.shards {
		shards = append(shards, fmt.Sprintf("s%d=%s", i+1, r.Addr))
	}
	env := append(cleanEnv(),
		"STOCKD_NODE_NAME="+s.name,
		"STOCKD_HTTP_ADDR="+n.hot,
		"STOCKD_ADMIN_ADDR="+n.admin,
		"STOCKD_GOSSIP_ADDR="+n.gossip,
		"STOCKD_ADMIN_TOKEN="+ln.api.token,
		"STOCKD_RESERVATION_SECRET="+ln.secret,
		"STOCKD_MYSQL_DSN="+ln.dsn(s.db),
		"STOCKD_AMQP_URL="+ln.amqpURL,
		"STOCKD_KEY_PREFIX="+s.prefix,
		"STOCKD_SHARDS="+strings.Join(shards, ","),
		"STOCKD_SYNC_QUEUE="+s.queue,
		"STOCKD_LOG_LEVEL=warn",
	)
	if len(s.join) > 0 {
		env = append(env, "STOCKD_JOIN="+strings.Join(s.join, ","))
	}
	return env
}

// startNode starts a stockd and waits until it is ready. Its cleanup
// (stop) is registered before it returns.
func (ln *launcher) startNode(ctx context.Context, s nodeSpec) (*stockNode, error) {
	var addrs [3]string
	for i := range addrs {
		p, err := redisproc.FreePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	n := &stockNode{hot: addrs[0], admin: addrs[1], gossip: addrs[2]}
	p, err := startProc(s.name, filepath.Join(ln.bin, "stockd"), nil, ln.nodeEnv(s, n), filepath.Join(ln.tmp, s.log))
	if err != nil {
		return nil, err
	}
	n.p = p
	ln.onCleanup(func() {
		p.stop(syscall.SIGTERM, 15*time.Second)
		if ln.keep {
			return
		}
		if t := p.tail(5); t != "" && p.err != nil {
			ln.logf("%s log (last lines):\n%s", s.name, t)
		}
	})
	if err := waitHTTP(ctx, p, "http://"+n.hot+"/readyz", 60*time.Second); err != nil {
		return nil, err
	}
	return n, nil
}

// startBaseline runs bin/baseline in mode on a free port until stop.
func (ln *launcher) startBaseline(ctx context.Context, mode string) (*proc, string, error) {
	port, err := redisproc.FreePort()
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"-mode", mode, "-addr", addr,
		"-mysql", ln.dsn(ln.baseDB), "-table", "bench_stock",
		"-redis", ln.baseRedis.Addr, "-key", ln.prefix + ":stock",
		"-stock", strconv.FormatInt(plan.BaselineStock, 10), "-db-conns", strconv.Itoa(plan.BaselineConns),
		"-queue", ln.mqQueue, "-amqp", ln.amqpURL, "-orders", plan.MQOrders}
	p, err := startProc("baseline-"+mode, filepath.Join(ln.bin, "baseline"), args, cleanEnv(), filepath.Join(ln.tmp, "baseline-"+mode+".log"))
	if err != nil {
		return nil, "", err
	}
	if err := waitHTTP(ctx, p, "http://"+addr+"/healthz", 30*time.Second); err != nil {
		p.stop(syscall.SIGKILL, time.Second)
		return nil, "", err
	}
	return p, "http://" + addr + "/v1/deduct", nil
}

// waitHTTP waits for url to answer 200 while p runs.
func waitHTTP(ctx context.Context, p *proc, url string, limit time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited at start (%v):\n%s", p.name, p.err, p.tail(20))
		}
		if resp, err := c.Get(url); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if err := measure.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s not ready within %s:\n%s", url, limit, p.tail(20))
}

// nodeClient is how the bench talks to its stockd nodes: their admin API
// (with the run's token) and probe deductions.
type nodeClient struct {
	http  *http.Client
	token string
}

// do calls the admin API of the node at admin.
func (a *nodeClient) do(ctx context.Context, admin, method, path, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+admin+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

func (a *nodeClient) putSKU(ctx context.Context, admin, sku string, total int64, parts int, chunk, thr int64) error {
	body := fmt.Sprintf(`{"total":%d,"partitions":%d,"chunk":%d,"threshold":%d}`, total, parts, chunk, thr)
	return a.putSKUBody(ctx, admin, sku, body)
}

func (a *nodeClient) putSKUBody(ctx context.Context, admin, sku, body string) error {
	code, out, err := a.do(ctx, admin, http.MethodPut, "/admin/skus/"+sku, body)
	if err != nil {
		return fmt.Errorf("PUT /admin/skus/%s: %w", sku, err)
	}
	if code != http.StatusCreated && code != http.StatusOK {
		return fmt.Errorf("PUT /admin/skus/%s %s: %d %s", sku, body, code, bytes.TrimSpace(out))
	}
	return nil
}

// putSKUs creates skus through one node, 8 at a time.
func (a *nodeClient) putSKUs(ctx context.Context, admin string, skus []string, total int64, parts int) error {
	work := make(chan string)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			var first error
			for s := range work {
				if first == nil {
					first = a.putSKU(ctx, admin, s, total, parts, plan.HotChunk, plan.HotThreshold)
				}
			}
			errs <- first
		}()
	}
	for _, s := range skus {
		work <- s
	}
	close(work)
	var first error
	for range 8 {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// soldOut tells whether the node at admin says sku is sold out.
func (a *nodeClient) soldOut(ctx context.Context, admin, sku string) bool {
	code, out, err := a.do(ctx, admin, http.MethodGet, "/admin/skus/"+sku, "")
	var v struct {
		SoldOut bool `json:"sold_out"`
	}
	return err == nil && code == 200 && json.Unmarshal(out, &v) == nil && v.SoldOut
}

// verify runs the conservation check of sku on the node at admin; the
// HTTP status is returned for the note of a failed check.
func (a *nodeClient) verify(ctx context.Context, admin, sku string) (report.Verify, int) {
	code, out, err := a.do(ctx, admin, http.MethodGet, "/admin/skus/"+sku+"/verify", "")
	v := report.Verify{SKU: sku, Raw: strings.TrimSpace(string(out))}
	if err != nil {
		v.Raw = err.Error()
	} else if code == 200 {
		var r struct {
			OK bool `json:"ok"`
		}
		v.OK = json.Unmarshal(out, &r) == nil && r.OK
	}
	return v, code
}

// counters sums stockd_shard_take_calls_total,
// stockd_shard_take_requests_total (over the shards) and the count of
// stockd_scheduler_stock_wait_seconds over the nodes at admins.
func (a *nodeClient) counters(ctx context.Context, admins []string) measure.Counters {
	var k measure.Counters
	for _, ad := range admins {
		code, out, err := a.do(ctx, ad, http.MethodGet, "/metrics", "")
		if err != nil || code != 200 {
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			name, val, ok := strings.Cut(line, " ")
			if !ok {
				continue
			}
			name, _, _ = strings.Cut(name, "{") // one series per shard
			v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				continue
			}
			switch name {
			case "stockd_shard_take_calls_total":
				k.TakeCalls += v
			case "stockd_shard_take_requests_total":
				k.TakeReqs += v
			case "stockd_scheduler_stock_wait_seconds_count":
				k.StockWaits += v
			}
		}
	}
	return k
}

// alive counts the members the node at admin sees alive.
func (a *nodeClient) alive(ctx context.Context, admin string) int {
	code, out, err := a.do(ctx, admin, http.MethodGet, "/admin/cluster", "")
	var c struct {
		Members []struct {
			State string `json:"state"`
		} `json:"members"`
	}
	n := 0
	if err == nil && code == 200 && json.Unmarshal(out, &c) == nil {
		for _, m := range c.Members {
			if m.State == "alive" {
				n++
			}
		}
	}
	return n
}

// waitMembers waits until every node sees all of them alive.
func (a *nodeClient) waitMembers(ctx context.Context, nodes []*stockNode) error {
	if len(nodes) < 2 {
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for _, n := range nodes {
			ok = ok && a.alive(ctx, n.admin) == len(nodes)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %d nodes did not all see each other within 30s", len(nodes))
		}
		if err := measure.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// probe sends deductions of one unit of sku to n (one request id, retried)
// until one is ok.
func (a *nodeClient) probe(ctx context.Context, n *stockNode, sku, id string) error {
	body := fmt.Sprintf(`{"sku":%q,"qty":1,"request_id":%q}`, sku, id)
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.hot+"/v1/deduct", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := a.http.Do(req)
		if err == nil {
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("probe %s on %s: %d %s", sku, n.hot, resp.StatusCode, bytes.TrimSpace(out))
			}
		} else if time.Now().After(deadline) {
			return fmt.Errorf("probe %s on %s: %w", sku, n.hot, err)
		}
		if err := measure.Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}
