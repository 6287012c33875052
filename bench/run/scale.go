package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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
)

// scaleRow is one shape of deployment the scale rows compare; each gets a
// cluster of its own (nodes, shards, database, queue, key prefix), started
// for its runs and stopped after them.
type scaleRow struct {
	id, name, title string
	shards, nodes   int
	skus            int // hot SKUs, requests spread evenly over them
	parts           int // partitions per SKU
}

// scaleParts is the partitions of the single hot SKU of the scale rows: as
// many as the most shards, so that every shard of every row holds some.
const scaleParts = 6

var scaleRows = []scaleRow{
	{"s1", "shards-1", "1 node, 1 shard, 1 hot SKU", 1, 1, 1, scaleParts},
	{"s3", "shards-3", "1 node, 3 shards, 1 hot SKU", 3, 1, 1, scaleParts},
	{"s6", "shards-6", "1 node, 6 shards, 1 hot SKU", 6, 1, 1, scaleParts},
	{"k1000", "skus-1000", "1 node, 3 shards, 1,000 hot SKUs (1 partition each), requests spread over them", 3, 1, 1000, 1}, // skus: -scale-skus
	{"n3", "nodes-3", "3 nodes, 3 shards, 1 hot SKU, the load generator's connections spread over the nodes", 3, 3, 1, scaleParts},
}

const scaleSKU = "bench-scale"

type scaleResult struct {
	row      *scaleRow
	rep      int
	lg       *lgResult
	m        *measurement
	cpuDrain map[string]float64 // CPU seconds from the start until MySQL held every detail
	settle   time.Duration
	settled  bool
}

// perDedLoad is the CPU µs per deduction of group k during the load alone
// (warmup included), without the write-back's tail.
func (r *scaleResult) perDedLoad(k string) float64 {
	if r.lg.TotalOK == 0 {
		return 0
	}
	return r.m.cpu[k] / float64(r.lg.TotalOK) * 1e6
}

// setScaleSKUs makes the many-SKU row use n SKUs.
func setScaleSKUs(n int) {
	for i := range scaleRows {
		if scaleRows[i].id == "k1000" {
			scaleRows[i].skus = n
			scaleRows[i].name = fmt.Sprintf("skus-%d", n)
			scaleRows[i].title = fmt.Sprintf("1 node, 3 shards, %s hot SKUs (1 partition each, spread over the shards), requests spread over them", fmtInt(float64(n)))
		}
	}
}

// scaleDrainLimit bounds the wait for a scale row's write-back; once a
// wait of the row ran out (broken), the row's later waits are short so
// that the bench still ends in time.
func (b *bench) scaleDrainLimit(broken bool) time.Duration {
	switch {
	case broken:
		return 5 * time.Second
	case b.opt.quick:
		return 10 * time.Second
	}
	return 30 * time.Second
}

// perDed is the CPU µs per deduction of group k, write-back drained.
func (r *scaleResult) perDed(k string) float64 {
	if r.lg.TotalOK == 0 {
		return 0
	}
	return r.cpuDrain[k] / float64(r.lg.TotalOK) * 1e6
}

// scalePool is the Redis processes of the scale clusters (started on first
// use; a cluster uses the first `shards` of them under its own prefix).
func (b *bench) scalePool(ctx context.Context, n int) ([]*redisProc, error) {
	for len(b.scaleRedis) < n {
		r, err := startRedis(ctx, b.tmp, "scale-shard"+strconv.Itoa(len(b.scaleRedis)+1))
		if err != nil {
			return nil, err
		}
		b.scaleRedis = append(b.scaleRedis, r)
		b.onCleanup(func() { r.stop(syscall.SIGKILL, 2*time.Second) })
	}
	return b.scaleRedis[:n], nil
}

// runScaleRows runs every scale row at the highest concurrency.
func (b *bench) runScaleRows(ctx context.Context) error {
	for i := range scaleRows {
		if err := b.runScale(ctx, &scaleRows[i]); err != nil {
			return fmt.Errorf("scale row %s: %w", scaleRows[i].name, err)
		}
	}
	return nil
}

func (b *bench) runScale(ctx context.Context, sr *scaleRow) error {
	start := time.Now()
	shards, err := b.scalePool(ctx, sr.shards)
	if err != nil {
		return err
	}
	db, queue, prefix := b.stockdDB+"_"+sr.id, b.queue+"."+sr.id, b.prefix+sr.id
	var nodes []*stockNode
	defer func() {
		for _, n := range nodes {
			n.p.stop(syscall.SIGTERM, 15*time.Second)
		}
	}()
	for i := range sr.nodes {
		spec := nodeSpec{name: fmt.Sprintf("bench-%s-n%d", sr.id, i+1), prefix: prefix, db: db, queue: queue, shards: shards, log: "stockd-" + sr.id + "-n" + strconv.Itoa(i+1) + ".log"}
		if i > 0 {
			spec.join = []string{nodes[0].gossip}
		}
		n, err := b.startNode(ctx, spec)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
	}
	if err := b.waitMembers(ctx, nodes); err != nil {
		return err
	}
	// The SKUs, through the first node.
	skus := []string{scaleSKU}
	if sr.skus > 1 {
		skus = skus[:0]
		for i := range sr.skus {
			skus = append(skus, scaleSKU+"-"+strconv.Itoa(i))
		}
	}
	total := int64(hotTotal)
	if sr.skus > 1 {
		total = hotTotal / int64(sr.skus)
	}
	if err := b.putSKUs(ctx, nodes[0].admin, skus, total, sr.parts); err != nil {
		return err
	}
	// Every node must serve the SKUs before the load: one probe deduction
	// per node on the last SKU made (the other nodes learn it on reload).
	var acked int64
	for i, n := range nodes {
		if err := b.probe(ctx, n, skus[len(skus)-1], fmt.Sprintf("b%s-%s-probe%d", b.prefix, sr.id, i)); err != nil {
			return err
		}
		acked++
	}
	var urls, admins []string
	var pids []int
	for _, n := range nodes {
		urls = append(urls, "http://"+n.hot+"/v1/deduct")
		admins = append(admins, n.admin)
		pids = append(pids, n.p.pid())
	}
	var spids []int
	var addrs []string
	for _, r := range shards {
		spids = append(spids, r.pid())
		addrs = append(addrs, r.addr)
	}
	var scalePIDs []int
	for _, r := range b.scaleRedis {
		scalePIDs = append(scalePIDs, r.pid())
	}
	groups := []cpuGroup{
		{"server", pids}, {"redis", spids}, {"mariadb", []int{b.mariadbPID}}, {"rabbitmq", []int{b.rabbitPID}},
		{"all", append(append(b.ourPIDs(), pids...), scalePIDs...)},
	}
	c := slices.Max(b.opt.conc)
	b.logf("scale %s: %s up in %s", sr.name, sr.title, time.Since(start).Round(100*time.Millisecond))
	broken := false
	for rep := 1; rep <= b.opt.scaleReps; rep++ {
		if _, err := b.waitQuiet(ctx, groups[len(groups)-1].pids); err != nil {
			return err
		}
		args := []string{"-url", strings.Join(urls, ","), "-sku", skus[0], "-c", strconv.Itoa(c),
			"-id-prefix", fmt.Sprintf("b%s-%s-r%d-", b.prefix, sr.id, rep),
			"-d", b.opt.scaleDuration.String(), "-warmup", b.opt.warmup.String()}
		if sr.skus > 1 {
			args[3] = scaleSKU
			args = append(args, "-skus", strconv.Itoa(sr.skus))
		}
		m, err := b.measureNodes(ctx, groups, addrs, admins, args...)
		if err != nil {
			return err
		}
		acked += int64(m.lg.TotalOKUnits)
		r := &scaleResult{row: sr, rep: rep, lg: m.lg, m: m}
		r.settle, r.settled, err = b.waitReservedSum(ctx, db, acked, b.scaleDrainLimit(broken))
		broken = broken || !r.settled
		if err != nil {
			return err
		}
		r.cpuDrain = b.cpuDelta(m.before, b.snapshot(groups))
		delete(r.cpuDrain, "all")
		for _, f := range m.lg.Failures {
			b.note("scale %s rep %d: loadgen: %s", sr.name, rep, f)
		}
		if !r.settled {
			b.note("scale %s rep %d: write-back had not drained %s after the run", sr.name, rep, r.settle.Round(time.Second))
		}
		for _, n := range nodes {
			if n.p.exited() {
				return fmt.Errorf("%s exited (%v):\n%s", n.p.name, n.p.err, n.p.tail(20))
			}
		}
		b.scaleRuns = append(b.scaleRuns, r)
		batch := ""
		if m.takeCalls > 0 {
			batch = fmt.Sprintf("  %.1f requests per take call", m.takeReqs/m.takeCalls)
		}
		b.logf("scale rep %d/%d %-9s c=%d %8.0f/s  p99 %.2fms  errors %d  µs CPU per deduction: stockd %.1f redis %.1f mariadb %.1f rabbitmq %.1f  drained in %s%s",
			rep, b.opt.scaleReps, sr.name, c, m.lg.throughput(), m.lg.P99Ms, m.lg.errors(), r.perDed("server"), r.perDed("redis"), r.perDed("mariadb"), r.perDed("rabbitmq"), r.settle.Round(10*time.Millisecond), batch)
	}
	// Conservation, on one SKU (the one the probes hit), once the
	// write-back has drained (the check counts MySQL's details).
	v := verifyResult{sku: skus[len(skus)-1], row: sr.name}
	if waited, drained, err := b.waitReservedSum(ctx, db, acked, b.scaleDrainLimit(broken)); err != nil {
		return err
	} else if !drained {
		last := b.scaleRuns[len(b.scaleRuns)-1]
		v.raw = fmt.Sprintf("not checked: the write-back had not drained %s after the last run", (last.settle + waited).Round(time.Second))
		v.skipped = true
		b.note("verify %s (%s): %s", v.sku, sr.name, v.raw)
		b.verifies = append(b.verifies, v)
		return nil
	}
	code, out, err := b.adminAt(ctx, nodes[0].admin, http.MethodGet, "/admin/skus/"+v.sku+"/verify", "")
	v.raw = strings.TrimSpace(string(out))
	if err != nil {
		v.raw = err.Error()
	} else if code == 200 {
		var r struct {
			OK bool `json:"ok"`
		}
		v.ok = json.Unmarshal(out, &r) == nil && r.OK
	}
	if !v.ok {
		b.note("verify %s (%s): %d %s", v.sku, sr.name, code, v.raw)
	}
	b.verifies = append(b.verifies, v)
	return nil
}

// waitMembers waits until every node sees all of them alive.
func (b *bench) waitMembers(ctx context.Context, nodes []*stockNode) error {
	if len(nodes) < 2 {
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for _, n := range nodes {
			code, out, err := b.adminAt(ctx, n.admin, http.MethodGet, "/admin/cluster", "")
			var c struct {
				Members []struct {
					State string `json:"state"`
				} `json:"members"`
			}
			alive := 0
			if err == nil && code == 200 && json.Unmarshal(out, &c) == nil {
				for _, m := range c.Members {
					if m.State == "alive" {
						alive++
					}
				}
			}
			ok = ok && alive == len(nodes)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the %d nodes did not all see each other within 30s", len(nodes))
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// putSKUs creates skus through one node, 8 at a time.
func (b *bench) putSKUs(ctx context.Context, admin string, skus []string, total int64, parts int) error {
	work := make(chan string)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			var first error
			for s := range work {
				if first == nil {
					first = b.putSKUAt(ctx, admin, s, total, parts, hotChunk, hotThreshold)
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

// probe sends deductions of one unit of sku to n (one request id, retried)
// until one is ok.
func (b *bench) probe(ctx context.Context, n *stockNode, sku, id string) error {
	body := fmt.Sprintf(`{"sku":%q,"qty":1,"request_id":%q}`, sku, id)
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.hot+"/v1/deduct", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := b.http.Do(req)
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
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitReservedSum waits until the reserved counters of every SKU in db add
// up to want (the write-back's progress, as waitReserved).
func (b *bench) waitReservedSum(ctx context.Context, db string, want int64, limit time.Duration) (time.Duration, bool, error) {
	start := time.Now()
	q := "SELECT COALESCE(SUM(reserved), 0) FROM " + db + ".skus"
	for {
		var got int64
		if err := b.root.QueryRowContext(ctx, q).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return 0, false, ctx.Err()
			}
			return 0, false, fmt.Errorf("%s: %w", q, err)
		}
		if got >= want {
			return time.Since(start), true, nil
		}
		if time.Since(start) > limit {
			return time.Since(start), false, nil
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return 0, false, err
		}
	}
}

// profileResult is a CPU profile of stockd during a closed-loop run like
// the stockd row's, its samples attributed to the parts of stockd.
type profileResult struct {
	lg       *lgResult
	seconds  float64 // profile duration
	total    float64 // CPU seconds sampled
	shares   []profileShare
	top      string // `go tool pprof -top`, first lines
	calls    float64
	requests float64
	err      string
}

type profileShare struct {
	part string
	sec  float64
}

// The parts of stockd a sample is attributed to, by the first rule that
// matches a function anywhere on its stack.
var profileParts = []struct {
	part  string
	match []string
}{
	{"write-back (sync: stream reader, batcher, publisher, applier; AMQP and MySQL clients)", []string{"github.com/stockd/stockd/sync.", "github.com/rabbitmq/amqp091-go", "github.com/go-sql-driver/mysql"}},
	{"refills (preallocate)", []string{"github.com/stockd/stockd/preallocate."}},
	{"hot path (fasthttp front, daemon hot handler, scheduler, shard take)", []string{"github.com/stockd/stockd/daemon.", "github.com/stockd/stockd/scheduler.", "github.com/stockd/stockd/shard.", "github.com/valyala/fasthttp"}},
	{"Redis client I/O goroutines (rueidis pipes; shared by hot path and write-back)", []string{"github.com/redis/rueidis"}},
	{"garbage collector (background workers)", []string{"runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge"}},
}

const otherPart = "other (Go scheduler, netpoll, timers, idle goroutines)"

// profileRun runs the stockd row's load once more (not counted in its
// medians) and captures a CPU profile of stockd from its admin port
// meanwhile.
func (b *bench) profileRun(ctx context.Context) error {
	c := slices.Max(b.opt.conc)
	secs := max(1, int(b.opt.duration.Seconds()))
	if _, err := b.waitQuiet(ctx, b.ourPIDs()); err != nil {
		return err
	}
	type got struct {
		raw []byte
		err error
	}
	ch := make(chan got, 1)
	go func() {
		if err := sleepCtx(ctx, b.opt.warmup); err != nil {
			ch <- got{err: err}
			return
		}
		code, out, err := b.adminDo(ctx, http.MethodGet, "/debug/pprof/profile?seconds="+strconv.Itoa(secs), "")
		if err == nil && code != 200 {
			err = fmt.Errorf("GET /debug/pprof/profile: %d %s", code, bytes.TrimSpace(out))
		}
		ch <- got{out, err}
	}()
	args := append(b.lgArgs(b.hotURL(), hotSKU, c, fmt.Sprintf("b%s-profile-", b.prefix)),
		"-d", b.opt.duration.String(), "-warmup", b.opt.warmup.String())
	groups, addrs := b.stockdGroups()
	m, err := b.measureNodes(ctx, groups, addrs, []string{b.admin}, args...)
	if err != nil {
		return err
	}
	g := <-ch
	b.hotAcked += int64(m.lg.TotalOKUnits)
	if _, _, err := b.waitReserved(ctx, hotSKU, b.hotAcked, b.drainLimit()); err != nil {
		return err
	}
	p := &profileResult{lg: m.lg, seconds: float64(secs), calls: m.takeCalls, requests: m.takeReqs}
	b.profile = p
	if g.err != nil {
		p.err = g.err.Error()
		b.note("stockd CPU profile: %v", g.err)
		return nil
	}
	path := filepath.Join(b.tmp, "stockd.cpu.pprof")
	if err := os.WriteFile(path, g.raw, 0o644); err != nil {
		return err
	}
	traces, err := exec.CommandContext(ctx, b.goBin, "tool", "pprof", "-traces", filepath.Join(b.bin, "stockd"), path).Output()
	if err != nil {
		p.err = "go tool pprof -traces: " + err.Error()
		b.note("stockd CPU profile: %s", p.err)
		return nil
	}
	p.total, p.shares = attribute(traces)
	if top, err := exec.CommandContext(ctx, b.goBin, "tool", "pprof", "-top", "-nodecount=15", filepath.Join(b.bin, "stockd"), path).Output(); err == nil {
		p.top = topLines(string(top))
	}
	var parts []string
	for _, s := range p.shares {
		parts = append(parts, fmt.Sprintf("%.0f%% %s", 100*s.sec/max(p.total, 1e-9), strings.SplitN(s.part, " (", 2)[0]))
	}
	b.logf("stockd CPU profile (%.0f/s, %.2f CPU s sampled over %ds): %s", m.lg.throughput(), p.total, secs, strings.Join(parts, ", "))
	return nil
}

// attribute sums the samples of `go tool pprof -traces` output by part.
func attribute(traces []byte) (float64, []profileShare) {
	sums := map[string]float64{}
	var total float64
	var val float64
	var stack []string
	flush := func() {
		if val > 0 {
			part := otherPart
		rules:
			for _, r := range profileParts {
				for _, fn := range stack {
					for _, m := range r.match {
						if strings.HasPrefix(fn, m) {
							part = r.part
							break rules
						}
					}
				}
			}
			sums[part] += val
			total += val
		}
		val, stack = 0, stack[:0]
	}
	sc := bufio.NewScanner(bytes.NewReader(traces))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	inBlock := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----------+") {
			flush()
			inBlock = true
			continue
		}
		if !inBlock {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if val == 0 && len(stack) == 0 {
			// The first line of a sample: its value, then the leaf.
			d, err := time.ParseDuration(f[0])
			if err != nil || len(f) < 2 {
				continue // a label line
			}
			val = d.Seconds()
			stack = append(stack, f[1])
			continue
		}
		stack = append(stack, f[0])
	}
	flush()
	var out []profileShare
	for _, r := range append(profileParts, struct {
		part  string
		match []string
	}{part: otherPart}) {
		out = append(out, profileShare{r.part, sums[r.part]})
	}
	return total, out
}

// topLines keeps the table of `go tool pprof -top`.
func topLines(s string) string {
	var out []string
	on := false
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "flat%") {
			on = true
		}
		if on && strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
