package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	amqp "github.com/rabbitmq/amqp091-go"
)

// The SKUs stockd sells during the bench.
const (
	hotSKU       = "bench-hot"
	hotTotal     = 200_000_000 // never sells out
	hotParts     = 4
	hotChunk     = 1000
	hotThreshold = 200

	// The limited row: the hot SKU's sizes, plus a per-user limit that
	// never refuses (limitUsers users share at most hotTotal units, far
	// below limitPerUser each), so that the row measures the allowance
	// scripts alone.
	limitSKU      = "bench-limited"
	limitPerUser  = 1_000_000
	limitUsers    = 10_000
	limitMaxCOnly = true // the limited row runs at the highest concurrency only (bench time)

	soldSKU       = "bench-soldout"
	soldTotal     = 2000
	soldChunk     = 100
	soldThreshold = 20

	baselineStock = 1_000_000_000_000 // never sells out
	baselineConns = 64                // bounded MySQL pool of the baselines
)

type scenario struct {
	name     string
	title    string
	mode     string // bin/baseline -mode; "" for the stockd rows
	maxCOnly bool   // run at the highest concurrency of -c only
}

var scenarios = []scenario{
	{"rowlock", "MySQL row lock (`SELECT … FOR UPDATE` + `UPDATE`, one row)", "rowlock", false},
	{"condupdate", "MySQL conditional `UPDATE … WHERE stock >= ?` (autocommit)", "condupdate", false},
	{"rediskey", "Redis, one key, Lua check-and-decrement", "rediskey", false},
	{"mqpeer", "what teams build instead: Redis key + Lua with request-id dedup, a confirmed persistent RabbitMQ message per order, a consumer inserting one MySQL row per order", "mqpeer", false},
	{"floor", "HTTP floor: fasthttp answering 200 without work", "floor", false},
	{"stockd", "stockd: 1 node, 1 hot SKU, 4 partitions on 3 Redis shards", "", false},
	{"limited", "the stockd row on a SKU with a per-user limit that refuses nothing (`per_user_limit` 1,000,000), requests spread over 10,000 `user_id`s", "", limitMaxCOnly},
	{"soldout", "stockd after sell-out (every answer `sold_out`)", "", false},
}

func scenarioByName(n string) *scenario {
	for i := range scenarios {
		if scenarios[i].name == n {
			return &scenarios[i]
		}
	}
	return nil
}

// lgResult is one bin/loadgen run: its -json output plus what we saw.
type lgResult struct {
	Requests        uint64            `json:"requests"`
	OK              uint64            `json:"ok"`
	OKUnits         uint64            `json:"ok_units"`
	SoldOut         uint64            `json:"sold_out"`
	StatusCounts    map[string]uint64 `json:"status_counts"`
	TransportErrors uint64            `json:"transport_errors"`
	Retries503      uint64            `json:"retries_503"`
	DurationS       float64           `json:"duration_s"`
	Rate            float64           `json:"rate"`
	P50Ms           float64           `json:"p50_ms"`
	P99Ms           float64           `json:"p99_ms"`
	P999Ms          float64           `json:"p999_ms"`
	MaxMs           float64           `json:"max_ms"`
	SendLagP99Ms    float64           `json:"send_lag_p99_ms"`
	WarmupRequests  uint64            `json:"warmup_requests"`
	TotalOK         uint64            `json:"total_ok"`
	TotalOKUnits    uint64            `json:"total_ok_units"`
	Oversold        bool              `json:"oversold"`
	DupReservations uint64            `json:"duplicate_reservations"`
	Failures        []string          `json:"failures"`
	Warnings        []string          `json:"warnings"`

	exitCode        int
	cpu             float64 // the load generator's own CPU seconds
	started, exited time.Time
}

// errors counts answers that are neither ok nor sold out: transport
// errors and every other HTTP status (503 after retries, 4xx, 5xx).
func (r *lgResult) errors() uint64 {
	n := r.TransportErrors
	for _, c := range r.StatusCounts {
		n += c
	}
	return n
}

// throughput is real outcomes (ok or sold out) per second of the measured
// window; errors never count.
func (r *lgResult) throughput() float64 {
	if r.DurationS <= 0 {
		return 0
	}
	return float64(r.OK+r.SoldOut) / r.DurationS
}

// windowAnswers is the answers of the whole run, warmup included (the CPU
// window covers the warmup too): the measured real outcomes plus every
// warmup request (loadgen does not split warmup requests by outcome).
func (r *lgResult) windowAnswers() float64 {
	return float64(r.OK + r.SoldOut + r.WarmupRequests)
}

// runResult is one row × concurrency × rep.
type runResult struct {
	sc                  *scenario
	c, rep              int
	lg                  *lgResult
	cpu                 map[string]float64 // CPU seconds during the run (warmup included)
	cpuDrain            map[string]float64 // stockd rows: from the start until write-back drained
	pipe                float64            // Redis commands per socket read on the engine's Redis
	settle              time.Duration      // stockd rows: write-back drain after the load stopped
	settled             bool
	backlog             int64         // mqpeer: orders not yet in MySQL when the load stopped
	takeCalls, takeReqs float64       // stockd rows: take script calls and the requests they carried
	busy                float64       // machine CPU busy, fraction of all cores
	foreign             float64       // CPU of processes outside the bench, in cores (approx.)
	waited              time.Duration // for the machine to be quiet before the run
}

type halfResult struct {
	rep     int
	rate    float64
	lg      *lgResult
	m       *measurement
	floor   *lgResult // the same rate against the HTTP floor
	floorM  *measurement
	settle  time.Duration
	settled bool
}

type lagResult struct {
	rep     int
	sku     string
	lg      *lgResult
	backlog int64 // details not yet in MySQL at the first poll after the load
	lag     time.Duration
	ok      bool
}

type cpuGroup struct {
	name string
	pids []int
}

type bench struct {
	opt   options
	start time.Time
	clk   float64 // clock ticks per second

	cleanups []func()

	tmp        string
	bin        string // directory of the built binaries
	shards     []*redisProc
	baseRedis  *redisProc
	stockd     *proc
	hot, admin string
	token      string
	secret     string // reservation_secret
	prefix     string
	stockdDB   string
	baseDB     string
	queue      string
	mqQueue    string   // the mqpeer baseline's
	queues     []string // every queue of the run (deleted at the end, with their .dlq)
	root       *sql.DB  // no default database; queries name theirs
	mariadbPID int
	rabbitPID  int
	rabbitVer  string
	loadavg    string // at the start
	http       *http.Client

	hotAcked           int64 // ok units on the hot SKU, warmups included, all runs
	limitAcked         int64 // the same on the limited row's SKU
	mqAcked            int64 // ok answers of the mqpeer runs, warmups included
	mqPurged           bool  // a backlog was purged: the exactness check of mqpeer is void
	mqRows, mqDistinct int64 // mqpeer's order rows at the end, and their distinct request ids

	profile    *profileResult
	scaleRuns  []*scaleResult
	scaleRedis []*redisProc
	goBin      string

	gateBudget, gateUsed time.Duration // waits for a quiet machine

	drainBroken bool // a write-back drain timed out once: wait less from then on

	machine  machineInfo
	soldOut  soldOutSetup
	runs     []*runResult
	halves   []*halfResult
	lags     []*lagResult
	verifies []verifyResult
	notes    []string
}

type soldOutSetup struct {
	runs      int
	units     uint64
	lastOK    uint64
	lastSold  uint64
	soldOutOK bool // the admin API says sold_out
	errs      uint64
}

type verifyResult struct {
	sku     string
	row     string // the scale row, "" for the main node
	skipped bool   // not checked: the write-back had not drained
	ok      bool
	raw     string
}

func newBench(opt options) *bench {
	b := &bench{opt: opt, start: time.Now(), clk: 100, http: &http.Client{Timeout: 30 * time.Second}}
	b.loadavg = readLoadavg()
	setScaleSKUs(opt.scaleSKUs)
	b.gateBudget = 120 * time.Second
	if opt.quick {
		b.gateBudget = 15 * time.Second
	}
	return b
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[bench %6.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.notes = append(b.notes, s)
	b.logf("NOTE: %s", s)
}

func (b *bench) onCleanup(f func()) { b.cleanups = append(b.cleanups, f) }

// cleanup undoes everything, last started first. It runs once.
func (b *bench) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}

func randHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}

func (b *bench) run(ctx context.Context) error {
	o := b.opt
	b.logf("plan: %d rows × c=%v × %d reps × (%s warmup + %s), then a profile, p99 at half max, write-back lag, and %d scale rows × %d reps × (%s + %s) at c=%d; report -> %s",
		len(b.rows()), o.conc, o.reps, o.warmup, o.duration, len(scaleRows), o.scaleReps, o.warmup, o.scaleDuration, slices.Max(o.conc), o.out)
	if err := b.build(ctx); err != nil {
		return err
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	b.machine = b.collectMachine(ctx)
	if err := b.sellOut(ctx); err != nil {
		return err
	}
	for rep := 1; rep <= o.reps; rep++ {
		for _, sc := range b.rows() {
			for _, c := range o.conc {
				if sc.maxCOnly && c != slices.Max(o.conc) {
					continue
				}
				r, err := b.runRow(ctx, sc, c, rep)
				if err != nil {
					return fmt.Errorf("%s c=%d rep %d: %w", sc.name, c, rep, err)
				}
				b.runs = append(b.runs, r)
			}
		}
	}
	if b.wants("stockd") {
		if err := b.profileRun(ctx); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
		if err := b.halfMax(ctx); err != nil {
			return err
		}
		for rep := 1; rep <= o.reps; rep++ {
			l, err := b.lagRun(ctx, rep)
			if err != nil {
				return fmt.Errorf("write-back lag rep %d: %w", rep, err)
			}
			b.lags = append(b.lags, l)
		}
	}
	if b.wants("scale") {
		if err := b.runScaleRows(ctx); err != nil {
			return err
		}
	}
	b.verifyAll(ctx)
	if err := b.writeReport(); err != nil {
		return err
	}
	return nil
}

func (b *bench) wants(name string) bool { return b.opt.only == nil || b.opt.only[name] }

func (b *bench) rows() []*scenario {
	var out []*scenario
	for i := range scenarios {
		if b.wants(scenarios[i].name) {
			out = append(out, &scenarios[i])
		}
	}
	return out
}

// build compiles the three binaries into bin/ (go build, whatever is in the
// tree now).
func (b *bench) build(ctx context.Context) error {
	b.bin = "bin"
	if err := os.MkdirAll(b.bin, 0o755); err != nil {
		return err
	}
	goBin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "/usr/local/go/bin/go"
		}
	}
	b.goBin = goBin
	for _, t := range [][2]string{
		{"stockd", "./daemon/cmd/stockd"},
		{"loadgen", "./bench/loadgen"},
		{"baseline", "./bench/baseline"},
	} {
		start := time.Now()
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", filepath.Join(b.bin, t[0]), t[1])
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %v\n%s", t[1], err, out)
		}
		b.logf("built bin/%s (%s)", t[0], time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

// setup starts the Redis processes and stockd, and makes the databases,
// queue and SKUs. Every piece registers its own cleanup first.
func (b *bench) setup(ctx context.Context) error {
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			b.clk = v
		}
	}
	tmp, err := os.MkdirTemp("", "stockd-bench-")
	if err != nil {
		return err
	}
	b.tmp = tmp
	b.onCleanup(func() {
		if b.opt.keep {
			os.Remove(filepath.Join(tmp, ownerName)) // nothing left to sweep
			b.logf("kept %s", tmp)
			return
		}
		os.RemoveAll(tmp)
	})
	id := randHex(4)
	b.prefix = "bench" + id
	b.stockdDB = "stockd_bench_" + id
	b.baseDB = "stockd_bench_base_" + id
	b.queue = "stockd.bench." + id
	b.mqQueue = b.queue + ".mqpeer"
	b.queues = []string{b.queue, b.mqQueue}
	dbs := []string{b.stockdDB, b.baseDB}
	for _, sr := range scaleRows {
		dbs = append(dbs, b.stockdDB+"_"+sr.id)
		b.queues = append(b.queues, b.queue+"."+sr.id)
	}
	b.token = randHex(16)
	b.secret = randHex(32)

	// MySQL: a root connection; both databases are dropped at the end.
	cfg, err := mysql.ParseDSN(b.opt.mysqlBase)
	if err != nil {
		return fmt.Errorf("-mysql: %w", err)
	}
	cfg.DBName = ""
	root, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		return err
	}
	root.SetMaxOpenConns(2)
	b.root = root
	b.onCleanup(func() {
		for _, db := range dbs {
			if _, err := root.Exec("DROP DATABASE IF EXISTS " + db); err != nil {
				b.logf("cleanup: drop database %s: %v", db, err)
			}
		}
		root.Close()
	})
	if err := root.PingContext(ctx); err != nil {
		return fmt.Errorf("MySQL at %s (make setup): %w", b.opt.mysqlBase, err)
	}
	// Note what we are about to create, so that a later run can remove it
	// should this one be killed before its cleanup (SIGKILL).
	own, _ := json.Marshal(ownerFile{PID: os.Getpid(), Databases: dbs, Queue: b.queue, Queues: b.queues})
	if err := os.WriteFile(filepath.Join(tmp, ownerName), own, 0o644); err != nil {
		return err
	}
	b.sweepStale(ctx, tmp)
	b.mariadbPID = pidOf("mariadbd")
	if b.mariadbPID == 0 {
		b.mariadbPID = pidOf("mysqld")
	}

	// RabbitMQ: our own queue (and the .dlq stockd declares), deleted at
	// the end, after stockd is stopped.
	conn, err := amqp.Dial(b.opt.amqpURL)
	if err != nil {
		return fmt.Errorf("RabbitMQ at %s (make setup): %w", b.opt.amqpURL, err)
	}
	if v, ok := conn.Properties["version"].(string); ok {
		b.rabbitVer = v
	}
	conn.Close()
	b.onCleanup(func() { b.deleteQueues() })
	b.rabbitPID = pidOf("beam.smp")

	// Redis: 3 shards for stockd, 1 for the rediskey baseline.
	b.onCleanup(func() {
		for _, r := range append(slices.Clone(b.shards), b.baseRedis) {
			if r != nil {
				r.stop(syscall.SIGKILL, 2*time.Second)
			}
		}
	})
	for i := 1; i <= 3; i++ {
		r, err := startRedis(ctx, tmp, "shard"+strconv.Itoa(i))
		if err != nil {
			return err
		}
		b.shards = append(b.shards, r)
	}
	r, err := startRedis(ctx, tmp, "baseline-redis")
	if err != nil {
		return err
	}
	b.baseRedis = r
	if _, err := readRedisStats(r.addr); err != nil {
		return err
	}
	b.logf("redis: shards %s, %s, %s; baseline %s", b.shards[0].addr, b.shards[1].addr, b.shards[2].addr, r.addr)

	if err := b.startStockd(ctx); err != nil {
		return err
	}
	if err := b.putSKU(ctx, hotSKU, hotTotal, hotParts, hotChunk, hotThreshold); err != nil {
		return err
	}
	if b.wants("limited") {
		body := fmt.Sprintf(`{"total":%d,"partitions":%d,"chunk":%d,"threshold":%d,"per_user_limit":%d}`, hotTotal, hotParts, hotChunk, hotThreshold, limitPerUser)
		if err := b.putSKUBody(ctx, b.admin, limitSKU, body); err != nil {
			return err
		}
	}
	return b.putSKU(ctx, soldSKU, soldTotal, hotParts, soldChunk, soldThreshold)
}

func (b *bench) deleteQueues() {
	for _, q := range b.queues {
		b.deleteQueue(q)
	}
}

func (b *bench) deleteQueue(queue string) {
	conn, err := amqp.Dial(b.opt.amqpURL)
	if err != nil {
		b.logf("cleanup: RabbitMQ: %v (queue %s left behind)", err, queue)
		return
	}
	defer conn.Close()
	for _, q := range []string{queue, queue + ".dlq"} {
		// A channel closes after an error: one per queue.
		ch, err := conn.Channel()
		if err != nil {
			b.logf("cleanup: RabbitMQ channel: %v", err)
			return
		}
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			b.logf("cleanup: delete queue %s: %v", q, err)
		}
		ch.Close()
	}
}

// ownerFile is written into the temp directory of a run: who runs it and
// what it creates outside that directory.
type ownerFile struct {
	PID       int      `json:"pid"`
	Databases []string `json:"databases"`
	Queue     string   `json:"queue"`
	Queues    []string `json:"queues,omitempty"`
}

const ownerName = "bench-owner.json"

// sweepStale removes what an earlier run left behind because it was killed
// before its cleanup: its databases, queue and temp directory. Runs whose
// process is still alive are left alone. (Its processes died with it: they
// get SIGKILL when their parent dies.)
func (b *bench) sweepStale(ctx context.Context, self string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "stockd-bench-*"))
	for _, dir := range dirs {
		if dir == self {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, ownerName))
		if err != nil {
			continue
		}
		var o ownerFile
		if json.Unmarshal(raw, &o) != nil || o.PID <= 0 {
			continue
		}
		if err := syscall.Kill(o.PID, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // still running
		}
		for _, db := range o.Databases {
			if strings.HasPrefix(db, "stockd_bench_") {
				_, _ = b.root.ExecContext(ctx, "DROP DATABASE IF EXISTS "+db)
			}
		}
		for _, q := range append([]string{o.Queue}, o.Queues...) {
			if strings.HasPrefix(q, "stockd.bench.") {
				b.deleteQueue(q)
			}
		}
		os.RemoveAll(dir)
		b.logf("removed the leftovers of a killed earlier run (pid %d): %s, %v, queue %s", o.PID, dir, o.Databases, o.Queue)
	}
}

func (b *bench) dsn(db string) string {
	cfg, _ := mysql.ParseDSN(b.opt.mysqlBase)
	cfg.DBName = db
	return cfg.FormatDSN()
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

// nodeSpec is one stockd process: its cluster's key prefix, database,
// queue and shards, and the gossip addresses it joins.
type nodeSpec struct {
	name, prefix, db, queue, log string
	shards                       []*redisProc
	join                         []string
}

// stockNode is a running stockd.
type stockNode struct {
	p                  *proc
	hot, admin, gossip string
}

// startNode starts a stockd and waits until it is ready. Its cleanup
// (stop) is registered before it returns.
func (b *bench) startNode(ctx context.Context, s nodeSpec) (*stockNode, error) {
	var ports [3]int
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	n := &stockNode{hot: "127.0.0.1:" + strconv.Itoa(ports[0]), admin: "127.0.0.1:" + strconv.Itoa(ports[1]), gossip: "127.0.0.1:" + strconv.Itoa(ports[2])}
	var shards []string
	for i, r := range s.shards {
		shards = append(shards, fmt.Sprintf("s%d=%s", i+1, r.addr))
	}
	env := append(cleanEnv(),
		"STOCKD_NODE_NAME="+s.name,
		"STOCKD_HTTP_ADDR="+n.hot,
		"STOCKD_ADMIN_ADDR="+n.admin,
		"STOCKD_GOSSIP_ADDR="+n.gossip,
		"STOCKD_ADMIN_TOKEN="+b.token,
		"STOCKD_RESERVATION_SECRET="+b.secret,
		"STOCKD_MYSQL_DSN="+b.dsn(s.db),
		"STOCKD_AMQP_URL="+b.opt.amqpURL,
		"STOCKD_KEY_PREFIX="+s.prefix,
		"STOCKD_SHARDS="+strings.Join(shards, ","),
		"STOCKD_SYNC_QUEUE="+s.queue,
		"STOCKD_LOG_LEVEL=warn",
	)
	if len(s.join) > 0 {
		env = append(env, "STOCKD_JOIN="+strings.Join(s.join, ","))
	}
	p, err := startProc(s.name, filepath.Join(b.bin, "stockd"), nil, env, filepath.Join(b.tmp, s.log))
	if err != nil {
		return nil, err
	}
	n.p = p
	b.onCleanup(func() {
		p.stop(syscall.SIGTERM, 15*time.Second)
		if b.opt.keep {
			return
		}
		if t := p.tail(5); t != "" && p.err != nil {
			b.logf("%s log (last lines):\n%s", s.name, t)
		}
	})
	if err := b.waitHTTP(ctx, p, "http://"+n.hot+"/readyz", 60*time.Second); err != nil {
		return nil, err
	}
	return n, nil
}

// waitHTTP waits for url to answer 200 while p runs.
func (b *bench) waitHTTP(ctx context.Context, p *proc, url string, limit time.Duration) error {
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
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s not ready within %s:\n%s", url, limit, p.tail(20))
}

func (b *bench) adminDo(ctx context.Context, method, path, body string) (int, []byte, error) {
	return b.adminAt(ctx, b.admin, method, path, body)
}

// adminAt calls the admin API of the node at admin.
func (b *bench) adminAt(ctx context.Context, admin, method, path, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+admin+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

func (b *bench) putSKU(ctx context.Context, sku string, total int64, parts int, chunk, thr int64) error {
	return b.putSKUAt(ctx, b.admin, sku, total, parts, chunk, thr)
}

func (b *bench) putSKUAt(ctx context.Context, admin, sku string, total int64, parts int, chunk, thr int64) error {
	body := fmt.Sprintf(`{"total":%d,"partitions":%d,"chunk":%d,"threshold":%d}`, total, parts, chunk, thr)
	return b.putSKUBody(ctx, admin, sku, body)
}

func (b *bench) putSKUBody(ctx context.Context, admin, sku, body string) error {
	code, out, err := b.adminAt(ctx, admin, http.MethodPut, "/admin/skus/"+sku, body)
	if err != nil {
		return fmt.Errorf("PUT /admin/skus/%s: %w", sku, err)
	}
	if code != http.StatusCreated && code != http.StatusOK {
		return fmt.Errorf("PUT /admin/skus/%s %s: %d %s", sku, body, code, bytes.TrimSpace(out))
	}
	return nil
}

// loadgen runs bin/loadgen with args (plus -json) and returns its results.
// Exit code 1 (a consistency failure such as an oversell) is returned in
// the result, not as an error: the report shows it.
func (b *bench) loadgen(ctx context.Context, args ...string) (*lgResult, error) {
	jsonPath := filepath.Join(b.tmp, "loadgen-"+randHex(4)+".json")
	defer os.Remove(jsonPath)
	args = append(args, "-json", jsonPath)
	cmd := exec.CommandContext(ctx, filepath.Join(b.bin, "loadgen"), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	res := &lgResult{started: time.Now()}
	err := cmd.Run()
	res.exited = time.Now()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.exitCode = ee.ExitCode()
	default:
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	if ps := cmd.ProcessState; ps != nil {
		res.cpu = (ps.UserTime() + ps.SystemTime()).Seconds()
	}
	raw, rerr := os.ReadFile(jsonPath)
	if res.exitCode > 1 || rerr != nil {
		return nil, fmt.Errorf("loadgen %s: exit %d, no results: %s%s", strings.Join(args, " "), res.exitCode, stdout.String(), stderr.String())
	}
	if err := json.Unmarshal(raw, res); err != nil {
		return nil, fmt.Errorf("loadgen json: %w", err)
	}
	return res, nil
}

func (b *bench) lgArgs(url, sku string, c int, idPrefix string) []string {
	return []string{"-url", url, "-sku", sku, "-c", strconv.Itoa(c), "-id-prefix", idPrefix}
}

func (b *bench) hotURL() string { return "http://" + b.hot + "/v1/deduct" }

// sellOut empties the sold-out SKU before the measured rows: load until a
// whole run answers only sold_out.
func (b *bench) sellOut(ctx context.Context) error {
	if !b.wants("soldout") {
		return nil
	}
	d := time.Second
	for i := 1; i <= 6; i++ {
		args := append(b.lgArgs(b.hotURL(), soldSKU, 64, fmt.Sprintf("b%s-sellout%d-", b.prefix, i)),
			"-d", d.String(), "-total", strconv.Itoa(soldTotal))
		lg, err := b.loadgen(ctx, args...)
		if err != nil {
			return fmt.Errorf("sell-out: %w", err)
		}
		b.soldOut.runs = i
		b.soldOut.units += lg.TotalOKUnits
		b.soldOut.lastOK, b.soldOut.lastSold = lg.TotalOK, lg.SoldOut
		b.soldOut.errs += lg.errors()
		for _, f := range lg.Failures {
			b.note("sell-out of %s: loadgen: %s", soldSKU, f)
		}
		if lg.TotalOK == 0 && lg.SoldOut > 0 {
			break
		}
	}
	if b.soldOut.units > soldTotal {
		b.note("OVERSELL: %s sold %d units of %d", soldSKU, b.soldOut.units, soldTotal)
	}
	code, out, err := b.adminDo(ctx, http.MethodGet, "/admin/skus/"+soldSKU, "")
	if err == nil && code == 200 {
		var v struct {
			SoldOut bool `json:"sold_out"`
		}
		if json.Unmarshal(out, &v) == nil {
			b.soldOut.soldOutOK = v.SoldOut
		}
	}
	b.logf("sell-out: %s sold %d of %d units in %d run(s); admin says sold_out=%v", soldSKU, b.soldOut.units, soldTotal, b.soldOut.runs, b.soldOut.soldOutOK)
	if b.soldOut.lastOK != 0 {
		b.note("%s still answered ok after %d sell-out runs", soldSKU, b.soldOut.runs)
	}
	return nil
}

// startBaseline runs bin/baseline in mode on a free port until stop.
func (b *bench) startBaseline(ctx context.Context, mode string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := []string{"-mode", mode, "-addr", addr,
		"-mysql", b.dsn(b.baseDB), "-table", "bench_stock",
		"-redis", b.baseRedis.addr, "-key", b.prefix + ":stock",
		"-stock", strconv.FormatInt(baselineStock, 10), "-db-conns", strconv.Itoa(baselineConns),
		"-queue", b.mqQueue, "-amqp", b.opt.amqpURL, "-orders", mqOrders}
	p, err := startProc("baseline-"+mode, filepath.Join(b.bin, "baseline"), args, cleanEnv(), filepath.Join(b.tmp, "baseline-"+mode+".log"))
	if err != nil {
		return nil, "", err
	}
	if err := b.waitHTTP(ctx, p, "http://"+addr+"/healthz", 30*time.Second); err != nil {
		p.stop(syscall.SIGKILL, time.Second)
		return nil, "", err
	}
	return p, "http://" + addr + "/v1/deduct", nil
}

// ourPIDs is every long-running process of the bench (the baseline of the
// moment aside).
func (b *bench) ourPIDs() []int {
	return append([]int{b.stockd.pid(), b.baseRedis.pid(), b.mariadbPID, b.rabbitPID}, b.shardPIDs()...)
}

// quietCores is how much CPU other processes may use before a run starts.
const quietCores = 0.3

// waitQuiet waits, within a budget, until processes outside the bench use
// less than quietCores: the machine is shared, and a burst of someone
// else's work (a compile, a test run) should not land in a measurement.
// Runs that start on a busy machine anyway show it in the report.
func (b *bench) waitQuiet(ctx context.Context, pids []int) (time.Duration, error) {
	start := time.Now()
	limit := min(5*time.Second, b.gateBudget-b.gateUsed)
	groups := []cpuGroup{{"all", pids}}
	for {
		m0, c0 := machineTicks(), b.snapshot(groups)
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return 0, err
		}
		m1, c1 := machineTicks(), b.snapshot(groups)
		other := float64(m1.busy-m0.busy-(m1.irq-m0.irq)-(c1["all"]-c0["all"])) / b.clk / 0.2
		if other < quietCores || time.Since(start) >= limit {
			break
		}
	}
	waited := time.Since(start) - 200*time.Millisecond
	b.gateUsed += waited
	if waited > 100*time.Millisecond {
		b.logf("waited %s for other processes to calm down (budget left %s)", waited.Round(100*time.Millisecond), (b.gateBudget - b.gateUsed).Round(time.Second))
	}
	return waited, nil
}

func (b *bench) shardPIDs() []int {
	var pids []int
	for _, r := range b.shards {
		pids = append(pids, r.pid())
	}
	return pids
}

func (b *bench) snapshot(groups []cpuGroup) map[string]int64 {
	m := map[string]int64{}
	for _, g := range groups {
		var sum int64
		for _, pid := range g.pids {
			if pid <= 0 {
				continue
			}
			t, err := cpuTicks(pid)
			if err == nil {
				sum += t
			}
		}
		m[g.name] = sum
	}
	return m
}

func (b *bench) cpuDelta(before, after map[string]int64) map[string]float64 {
	m := map[string]float64{}
	for k, v := range after {
		m[k] = float64(v-before[k]) / b.clk
	}
	return m
}

func sumStats(addrs []string) (redisStats, error) {
	var s redisStats
	for _, a := range addrs {
		st, err := readRedisStats(a)
		if err != nil {
			return s, err
		}
		s.commands += st.commands
		s.reads += st.reads
	}
	return s, nil
}

// runRow is one measured run of a row at concurrency c.
func (b *bench) runRow(ctx context.Context, sc *scenario, c, rep int) (*runResult, error) {
	res := &runResult{sc: sc, c: c, rep: rep}
	url, sku := b.hotURL(), hotSKU
	var groups []cpuGroup
	var redisAddrs []string
	bystanders := append([]int{b.stockd.pid()}, b.shardPIDs()...)
	switch sc.name {
	case "stockd", "limited", "soldout":
		switch sc.name {
		case "soldout":
			sku = soldSKU
		case "limited":
			sku = limitSKU
		}
		groups, redisAddrs = b.stockdGroups()
	default:
		p, u, err := b.startBaseline(ctx, sc.mode)
		if err != nil {
			return nil, err
		}
		defer p.stop(syscall.SIGTERM, 5*time.Second)
		url, sku = u, "bench-"+sc.name
		groups = []cpuGroup{{"server", []int{p.pid()}}}
		switch sc.mode {
		case "rowlock", "condupdate":
			groups = append(groups, cpuGroup{"mariadb", []int{b.mariadbPID}})
		case "rediskey":
			groups = append(groups, cpuGroup{"redis", []int{b.baseRedis.pid()}})
			redisAddrs = []string{b.baseRedis.addr}
		case "mqpeer":
			groups = append(groups, cpuGroup{"redis", []int{b.baseRedis.pid()}}, cpuGroup{"mariadb", []int{b.mariadbPID}}, cpuGroup{"rabbitmq", []int{b.rabbitPID}})
			redisAddrs = []string{b.baseRedis.addr}
		}
		// Every process of the bench, to tell how much CPU went elsewhere.
		groups = append(groups, cpuGroup{"stockd_idle", bystanders}, cpuGroup{"all", append(b.ourPIDs(), p.pid())})
	}
	all := groups[len(groups)-1].pids
	waited, err := b.waitQuiet(ctx, all)
	if err != nil {
		return nil, err
	}
	res.waited = waited

	args := append(b.lgArgs(url, sku, c, fmt.Sprintf("b%s-%s-c%d-r%d-", b.prefix, sc.name, c, rep)),
		"-d", b.opt.duration.String(), "-warmup", b.opt.warmup.String())
	if sc.name == "limited" {
		args = append(args, "-users", strconv.Itoa(limitUsers))
	}
	var admins []string
	if sc.mode == "" {
		admins = []string{b.admin}
	}
	mres, err := b.measureNodes(ctx, groups, redisAddrs, admins, args...)
	if err != nil {
		return nil, err
	}
	lg := mres.lg
	res.lg, res.cpu, res.busy, res.foreign, res.pipe = lg, mres.cpu, mres.busy, mres.foreign, mres.pipe
	res.takeCalls, res.takeReqs = mres.takeCalls, mres.takeReqs
	for _, f := range lg.Failures {
		b.note("%s c=%d rep %d: loadgen: %s", sc.name, c, rep, f)
	}
	if sc.name == "soldout" && lg.TotalOK > 0 {
		b.note("soldout c=%d rep %d: %d ok answers after the sell-out", c, rep, lg.TotalOK)
	}
	if sc.name == "mqpeer" {
		b.mqAcked += int64(lg.TotalOK)
		res.settle, res.settled, res.backlog, err = b.waitOrders(ctx, lg)
		if err != nil {
			return nil, err
		}
		res.cpuDrain = b.cpuDelta(mres.before, b.snapshot(groups))
		delete(res.cpuDrain, "all")
		delete(res.cpuDrain, "stockd_idle")
	}
	if writesBack(sc.name) && sc.name != "mqpeer" {
		acked := &b.hotAcked
		if sc.name == "limited" {
			acked = &b.limitAcked
		}
		*acked += int64(lg.TotalOKUnits)
		res.settle, res.settled, err = b.waitReserved(ctx, sku, *acked, b.drainLimit())
		if err != nil {
			return nil, err
		}
		res.cpuDrain = b.cpuDelta(mres.before, b.snapshot(groups))
		delete(res.cpuDrain, "all")
		if !res.settled {
			b.note("%s c=%d rep %d: write-back had not drained %s after the run", sc.name, c, rep, res.settle.Round(time.Second))
		}
	}
	if b.stockd.exited() {
		return nil, fmt.Errorf("stockd exited (%v); its log ends:\n%s", b.stockd.err, b.stockd.tail(20))
	}
	msg := fmt.Sprintf("rep %d/%d %-10s c=%-3d %8.0f/s  p50 %6.2fms p99 %7.2fms p999 %7.2fms  ok %d sold_out %d errors %d  busy %.0f%% foreign %.2f cores",
		rep, b.opt.reps, sc.name, c, lg.throughput(), lg.P50Ms, lg.P99Ms, lg.P999Ms, lg.OK, lg.SoldOut, lg.errors(), 100*res.busy, res.foreign)
	if writesBack(sc.name) {
		msg += fmt.Sprintf("  write-back drained in %s", res.settle.Round(10*time.Millisecond))
	}
	if res.takeCalls > 0 {
		msg += fmt.Sprintf("  %.1f requests per take call", res.takeReqs/res.takeCalls)
	}
	b.logf("%s", msg)
	return res, nil
}

// writesBack tells the rows whose runs wait for their write-back to drain
// (and report it): stockd's deducting rows and mqpeer.
func writesBack(name string) bool {
	return name == "stockd" || name == "limited" || name == "mqpeer"
}

// perDeduction tells the rows whose CPU is per deduction (ok answer), not
// per answer: stockd's deducting rows.
func perDeduction(name string) bool { return name == "stockd" || name == "limited" }

// mqOrders is the mqpeer baseline's orders table (in the baseline database).
const mqOrders = "bench_orders"

// waitOrders waits until the mqpeer consumer has inserted an order row for
// every ok answer of the mqpeer runs so far: the peer's write-back lag,
// from the load generator's exit. A backlog that does not drain in time is
// purged (and the count rebased), so that it does not slow the next run.
func (b *bench) waitOrders(ctx context.Context, lg *lgResult) (time.Duration, bool, int64, error) {
	q := "SELECT COUNT(*) FROM " + b.baseDB + "." + mqOrders
	limit := 60 * time.Second
	if b.opt.quick {
		limit = 20 * time.Second
	}
	backlog := int64(-1)
	for {
		var n int64
		if err := b.root.QueryRowContext(ctx, q).Scan(&n); err != nil {
			if ctx.Err() != nil {
				return 0, false, 0, ctx.Err()
			}
			return 0, false, 0, fmt.Errorf("%s: %w", q, err)
		}
		if backlog < 0 {
			backlog = b.mqAcked - n
		}
		if n >= b.mqAcked {
			if n > b.mqAcked {
				b.note("mqpeer: %d order rows for %d ok answers (a confirmed order whose answer was lost)", n, b.mqAcked)
				b.mqAcked = n
			}
			return time.Since(lg.exited), true, backlog, nil
		}
		if time.Since(lg.exited) > limit {
			lag := time.Since(lg.exited)
			b.purgeQueue(b.mqQueue)
			_ = sleepCtx(ctx, time.Second) // let in-flight inserts land
			_ = b.root.QueryRowContext(ctx, q).Scan(&n)
			b.note("mqpeer: %d of %d orders still not in MySQL %s after the load; queue purged, count rebased", b.mqAcked-n, b.mqAcked, limit)
			b.mqAcked = n
			b.mqPurged = true
			return lag, false, backlog, nil
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return 0, false, 0, err
		}
	}
}

func (b *bench) purgeQueue(queue string) {
	conn, err := amqp.Dial(b.opt.amqpURL)
	if err != nil {
		b.logf("purge %s: %v", queue, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	if _, err := ch.QueuePurge(queue, false); err != nil {
		b.logf("purge %s: %v", queue, err)
	}
}

// drainLimit bounds a wait for the write-back. If one wait ran out, the
// write-back is broken or far behind; later waits are short so that the
// bench still ends in time (their runs are marked not drained).
func (b *bench) drainLimit() time.Duration {
	if b.drainBroken {
		return 3 * time.Second
	}
	return 20 * time.Second
}

// waitReserved waits until MySQL counts want units as reserved for sku:
// the applier moves that counter in the transaction that inserts the
// details, so it is the write-back's progress.
func (b *bench) waitReserved(ctx context.Context, sku string, want int64, limit time.Duration) (time.Duration, bool, error) {
	start := time.Now()
	q := "SELECT reserved FROM " + b.stockdDB + ".skus WHERE sku = ?"
	for {
		var got int64
		if err := b.root.QueryRowContext(ctx, q, sku).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return 0, false, ctx.Err()
			}
			return 0, false, fmt.Errorf("%s: %w", q, err)
		}
		if got >= want {
			return time.Since(start), true, nil
		}
		if time.Since(start) > limit {
			b.drainBroken = true
			return time.Since(start), false, nil
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return 0, false, err
		}
	}
}

// halfMax runs stockd open loop at half of its median throughput at the
// highest concurrency.
func (b *bench) halfMax(ctx context.Context) error {
	c := slices.Max(b.opt.conc)
	var tps []float64
	for _, r := range b.runs {
		if r.sc.name == "stockd" && r.c == c {
			tps = append(tps, r.lg.throughput())
		}
	}
	if len(tps) == 0 {
		return nil
	}
	rate := float64(int(median(tps) / 2))
	if rate < 1 {
		b.note("stockd throughput is 0: no half-max run")
		return nil
	}
	for rep := 1; rep <= b.opt.reps; rep++ {
		if _, err := b.waitQuiet(ctx, b.ourPIDs()); err != nil {
			return err
		}
		args := append(b.lgArgs(b.hotURL(), hotSKU, c, fmt.Sprintf("b%s-half-r%d-", b.prefix, rep)),
			"-rate", strconv.FormatFloat(rate, 'f', 0, 64), "-d", b.opt.duration.String(), "-warmup", b.opt.warmup.String())
		groups, addrs := b.stockdGroups()
		mres, err := b.measureNodes(ctx, groups, addrs, []string{b.admin}, args...)
		if err != nil {
			return fmt.Errorf("half max: %w", err)
		}
		lg := mres.lg
		h := &halfResult{rep: rep, rate: rate, lg: lg, m: mres}
		b.hotAcked += int64(lg.TotalOKUnits)
		h.settle, h.settled, err = b.waitReserved(ctx, hotSKU, b.hotAcked, b.drainLimit())
		if err != nil {
			return err
		}
		for _, f := range lg.Failures {
			b.note("half max rep %d: loadgen: %s", rep, f)
		}
		b.logf("half max rep %d/%d: rate %.0f/s c=%d: achieved %.0f/s  p50 %.2fms p99 %.2fms p999 %.2fms  send lag p99 %.2fms  errors %d  busy %.0f%% foreign %.2f cores",
			rep, b.opt.reps, rate, c, float64(lg.Requests)/max(lg.DurationS, 1e-9), lg.P50Ms, lg.P99Ms, lg.P999Ms, lg.SendLagP99Ms, lg.errors(), 100*mres.busy, mres.foreign)
		// The same open loop against the HTTP floor: what the machine and
		// the load generator add to any server's tail at this rate.
		if b.wants("floor") {
			p, url, err := b.startBaseline(ctx, "floor")
			if err != nil {
				return err
			}
			if _, err := b.waitQuiet(ctx, append(b.ourPIDs(), p.pid())); err != nil {
				p.stop(syscall.SIGTERM, 5*time.Second)
				return err
			}
			args := append(b.lgArgs(url, "bench-floor", c, fmt.Sprintf("b%s-halffloor-r%d-", b.prefix, rep)),
				"-rate", strconv.FormatFloat(rate, 'f', 0, 64), "-d", b.opt.duration.String(), "-warmup", b.opt.warmup.String())
			fm, err := b.measure(ctx, []cpuGroup{{"server", []int{p.pid()}}, {"all", append(b.ourPIDs(), p.pid())}}, nil, args...)
			p.stop(syscall.SIGTERM, 5*time.Second)
			if err != nil {
				return fmt.Errorf("half max, floor: %w", err)
			}
			h.floor, h.floorM = fm.lg, fm
			b.logf("half max rep %d/%d, same rate on the floor: p50 %.2fms p99 %.2fms p999 %.2fms  send lag p99 %.2fms",
				rep, b.opt.reps, h.floor.P50Ms, h.floor.P99Ms, h.floor.P999Ms, h.floor.SendLagP99Ms)
		}
		b.halves = append(b.halves, h)
	}
	return nil
}

// measurement is one loadgen run with what the machine did meanwhile.
type measurement struct {
	lg      *lgResult
	cpu     map[string]float64 // CPU seconds by group, plus "loadgen"
	before  map[string]int64   // the groups' ticks at the start
	busy    float64            // machine CPU busy, fraction of all cores
	foreign float64            // CPU of processes outside the bench, in cores (approx.)
	pipe    float64            // Redis commands per socket read over redisAddrs

	takeCalls, takeReqs float64 // stockd's take script calls and their requests (when admins is set)
}

// measure runs loadgen with args and reads the CPU of groups, of the whole
// machine and the Redis INFO stats of redisAddrs around it. A group named
// "all" must hold every process of the bench: the rest of the machine's
// CPU is counted as foreign.
func (b *bench) measure(ctx context.Context, groups []cpuGroup, redisAddrs []string, args ...string) (*measurement, error) {
	return b.measureNodes(ctx, groups, redisAddrs, nil, args...)
}

// measureNodes is measure that also reads the take script counters of the
// stockd nodes whose admin addresses are admins.
func (b *bench) measureNodes(ctx context.Context, groups []cpuGroup, redisAddrs, admins []string, args ...string) (*measurement, error) {
	st0, err := sumStats(redisAddrs)
	if err != nil {
		return nil, err
	}
	tc0, tr0 := b.takeStats(ctx, admins)
	c0, m0 := b.snapshot(groups), machineTicks()
	lg, err := b.loadgen(ctx, args...)
	if err != nil {
		return nil, err
	}
	m1, c1 := machineTicks(), b.snapshot(groups)
	st1, err := sumStats(redisAddrs)
	if err != nil {
		return nil, err
	}
	m := &measurement{lg: lg, cpu: b.cpuDelta(c0, c1), before: c0}
	if len(admins) > 0 {
		tc1, tr1 := b.takeStats(ctx, admins)
		m.takeCalls, m.takeReqs = tc1-tc0, tr1-tr0
	}
	m.cpu["loadgen"] = lg.cpu
	if m1.total > m0.total {
		m.busy = float64(m1.busy-m0.busy) / float64(m1.total-m0.total)
		// The machine's jiffies add up over all CPUs.
		other := float64(m1.busy-m0.busy-(m1.irq-m0.irq))/b.clk - m.cpu["all"] - lg.cpu
		if wall := lg.exited.Sub(lg.started).Seconds(); wall > 0 {
			m.foreign = max(0, other) / wall
		}
	}
	delete(m.cpu, "all")
	if dr := st1.reads - st0.reads; dr > 0 {
		m.pipe = float64(st1.commands-st0.commands) / float64(dr)
	}
	return m, nil
}

// takeStats sums stockd_shard_take_calls_total and
// stockd_shard_take_requests_total over the shards and the nodes at admins.
func (b *bench) takeStats(ctx context.Context, admins []string) (calls, reqs float64) {
	for _, a := range admins {
		code, out, err := b.adminAt(ctx, a, http.MethodGet, "/metrics", "")
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
				calls += v
			case "stockd_shard_take_requests_total":
				reqs += v
			}
		}
	}
	return calls, reqs
}

// stockdGroups are the processes of the stockd rows.
func (b *bench) stockdGroups() ([]cpuGroup, []string) {
	groups := []cpuGroup{
		{"server", []int{b.stockd.pid()}},
		{"redis", b.shardPIDs()},
		{"mariadb", []int{b.mariadbPID}},
		{"rabbitmq", []int{b.rabbitPID}},
		{"all", b.ourPIDs()},
	}
	var addrs []string
	for _, r := range b.shards {
		addrs = append(addrs, r.addr)
	}
	return groups, addrs
}

// lagRun loads a fresh SKU at full speed for a few seconds, stops, and
// measures how long MySQL takes to hold a detail row for every ok answer.
func (b *bench) lagRun(ctx context.Context, rep int) (*lagResult, error) {
	sku := fmt.Sprintf("bench-lag-%d", rep)
	if err := b.putSKU(ctx, sku, hotTotal, hotParts, hotChunk, hotThreshold); err != nil {
		return nil, err
	}
	if _, err := b.waitQuiet(ctx, b.ourPIDs()); err != nil {
		return nil, err
	}
	args := append(b.lgArgs(b.hotURL(), sku, b.opt.lagConc, fmt.Sprintf("b%s-lag-r%d-", b.prefix, rep)),
		"-d", b.opt.lagDuration.String())
	lg, err := b.loadgen(ctx, args...)
	if err != nil {
		return nil, err
	}
	l := &lagResult{rep: rep, sku: sku, lg: lg, backlog: -1}
	want := int64(lg.TotalOK)
	q := "SELECT COUNT(*) FROM " + b.stockdDB + ".deductions WHERE sku = ?"
	limit := b.drainLimit()
	for {
		var n int64
		if err := b.root.QueryRowContext(ctx, q, sku).Scan(&n); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
		if l.backlog < 0 {
			l.backlog = want - n
		}
		if n >= want {
			l.lag, l.ok = time.Since(lg.exited), true
			break
		}
		if time.Since(lg.exited) > limit {
			l.lag = time.Since(lg.exited)
			b.note("write-back lag rep %d: MySQL held %d of %d details %s after the load", rep, n, want, limit)
			b.drainBroken = true
			break
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return nil, err
		}
	}
	for _, f := range lg.Failures {
		b.note("lag rep %d: loadgen: %s", rep, f)
	}
	b.logf("write-back lag rep %d/%d: %d deductions in %.1fs (c=%d), %d details not in MySQL at stop, all in MySQL %s after the last answer",
		rep, b.opt.reps, want, lg.DurationS, b.opt.lagConc, l.backlog, l.lag.Round(time.Millisecond))
	return l, nil
}

// verifyAll runs stockd's conservation check on every SKU it sold, and
// counts mqpeer's order rows.
func (b *bench) verifyAll(ctx context.Context) {
	if b.mqAcked > 0 {
		q := "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM " + b.baseDB + "." + mqOrders
		if err := b.root.QueryRowContext(ctx, q).Scan(&b.mqRows, &b.mqDistinct); err != nil {
			b.note("mqpeer: %s: %v", q, err)
		}
	}
	skus := []string{}
	if b.wants("stockd") {
		skus = append(skus, hotSKU)
	}
	if b.wants("limited") {
		skus = append(skus, limitSKU)
	}
	if b.wants("soldout") {
		skus = append(skus, soldSKU)
	}
	for _, l := range b.lags {
		skus = append(skus, l.sku)
	}
	for _, s := range skus {
		code, out, err := b.adminDo(ctx, http.MethodGet, "/admin/skus/"+s+"/verify", "")
		v := verifyResult{sku: s, raw: strings.TrimSpace(string(out))}
		if err != nil {
			v.raw = err.Error()
		} else if code == 200 {
			var r struct {
				OK bool `json:"ok"`
			}
			v.ok = json.Unmarshal(out, &r) == nil && r.OK
		}
		if !v.ok {
			b.note("verify %s: %d %s", s, code, v.raw)
		}
		b.verifies = append(b.verifies, v)
	}
}
