package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
	"github.com/stockd/stockd/bench/internal/report"
	"github.com/stockd/stockd/internal/redisproc"
)

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

// scalePool is the Redis processes of the scale clusters (started on first
// use; a cluster uses the first `shards` of them under its own prefix).
func (sv *services) scalePool(ctx context.Context, n int) ([]*redisproc.Instance, error) {
	for len(sv.scaleRedis) < n {
		r, err := sv.newRedis(ctx, "scale-shard"+strconv.Itoa(len(sv.scaleRedis)+1))
		if err != nil {
			return nil, err
		}
		sv.scaleRedis = append(sv.scaleRedis, r)
		sv.onCleanup(r.Kill)
	}
	return sv.scaleRedis[:n], nil
}

// runScaleRows runs every scale row at the highest concurrency.
func (b *bench) runScaleRows(ctx context.Context) error {
	for i := range b.scaleRows {
		if err := b.runScale(ctx, &b.scaleRows[i]); err != nil {
			return fmt.Errorf("scale row %s: %w", b.scaleRows[i].Name, err)
		}
	}
	return nil
}

// scaleCluster is a scale row's own stockd cluster while its runs last.
type scaleCluster struct {
	row    *plan.ScaleRow
	db     string
	shards []*redisproc.Instance
	nodes  []*stockNode
	skus   []string
	acked  int64 // ok units over the row's runs, probes included
	broken bool  // a write-back wait of the row ran out
}

func (cl *scaleCluster) stop() {
	for _, n := range cl.nodes {
		n.p.stop(syscall.SIGTERM, 15*time.Second)
	}
}

// admins is the nodes' admin addresses.
func (cl *scaleCluster) admins() []string {
	var out []string
	for _, n := range cl.nodes {
		out = append(out, n.admin)
	}
	return out
}

// groups are the processes a scale run measures: the row's nodes and
// shards, the shared services, and every process of the bench as "all".
func (b *bench) scaleGroups(cl *scaleCluster) []measure.Group {
	var nodes []int
	for _, n := range cl.nodes {
		nodes = append(nodes, n.p.pid())
	}
	return []measure.Group{
		{Name: "server", Pids: nodes}, {Name: "redis", Pids: pids(cl.shards)}, {Name: "mariadb", Pids: []int{b.mariadbPID}}, {Name: "rabbitmq", Pids: []int{b.rabbitPID}},
		{Name: "all", Pids: append(append(b.ourPIDs(), nodes...), pids(b.scaleRedis)...)},
	}
}

func (b *bench) runScale(ctx context.Context, sr *plan.ScaleRow) error {
	start := time.Now()
	cl := &scaleCluster{row: sr, db: b.stockdDB + "_" + sr.ID}
	defer cl.stop()
	if err := b.startCluster(ctx, cl); err != nil {
		return err
	}
	if err := b.makeScaleSKUs(ctx, cl); err != nil {
		return err
	}
	b.logf("scale %s: %s up in %s", sr.Name, sr.Title, time.Since(start).Round(100*time.Millisecond))
	for rep := 1; rep <= b.opt.scaleReps; rep++ {
		r, err := b.scaleRun(ctx, cl, rep)
		if err != nil {
			return err
		}
		b.scale = append(b.scale, r)
	}
	return b.verifyScale(ctx, cl)
}

// startCluster starts the row's nodes on its shards (the later ones join
// the first) and waits until they all see each other.
func (b *bench) startCluster(ctx context.Context, cl *scaleCluster) error {
	sr := cl.row
	shards, err := b.scalePool(ctx, sr.Shards)
	if err != nil {
		return err
	}
	cl.shards = shards
	queue, prefix := b.queue+"."+sr.ID, b.prefix+sr.ID
	for i := range sr.Nodes {
		spec := nodeSpec{name: fmt.Sprintf("bench-%s-n%d", sr.ID, i+1), prefix: prefix, db: cl.db, queue: queue, shards: shards, log: "stockd-" + sr.ID + "-n" + strconv.Itoa(i+1) + ".log"}
		if i > 0 {
			spec.join = []string{cl.nodes[0].gossip}
		}
		n, err := b.startNode(ctx, spec)
		if err != nil {
			return err
		}
		cl.nodes = append(cl.nodes, n)
	}
	return b.api.waitMembers(ctx, cl.nodes)
}

// makeScaleSKUs creates the row's SKUs through the first node; then every
// node must serve them before the load: one probe deduction per node on
// the last SKU made (the other nodes learn it on reload).
func (b *bench) makeScaleSKUs(ctx context.Context, cl *scaleCluster) error {
	sr := cl.row
	cl.skus = []string{plan.ScaleSKU}
	total := int64(plan.HotTotal)
	if sr.SKUs > 1 {
		cl.skus = cl.skus[:0]
		for i := range sr.SKUs {
			cl.skus = append(cl.skus, plan.ScaleSKU+"-"+strconv.Itoa(i))
		}
		total = plan.HotTotal / int64(sr.SKUs)
	}
	if err := b.api.putSKUs(ctx, cl.nodes[0].admin, cl.skus, total, sr.Parts); err != nil {
		return err
	}
	for i, n := range cl.nodes {
		if err := b.api.probe(ctx, n, cl.skus[len(cl.skus)-1], fmt.Sprintf("b%s-%s-probe%d", b.prefix, sr.ID, i)); err != nil {
			return err
		}
		cl.acked++
	}
	return nil
}

// scaleRun is one measured run of a scale row, its write-back drained.
func (b *bench) scaleRun(ctx context.Context, cl *scaleCluster, rep int) (*report.ScaleRun, error) {
	sr, c, groups := cl.row, slices.Max(b.opt.conc), b.scaleGroups(cl)
	if err := b.waitQuiet(ctx, groups[len(groups)-1].Pids); err != nil {
		return nil, err
	}
	var urls []string
	for _, n := range cl.nodes {
		urls = append(urls, "http://"+n.hot+"/v1/deduct")
	}
	args := []string{"-url", strings.Join(urls, ","), "-sku", cl.skus[0], "-c", strconv.Itoa(c),
		"-id-prefix", fmt.Sprintf("b%s-%s-r%d-", b.prefix, sr.ID, rep),
		"-d", b.opt.scaleDuration.String(), "-warmup", b.opt.warmup.String()}
	if sr.SKUs > 1 {
		args[3] = plan.ScaleSKU
		args = append(args, "-skus", strconv.Itoa(sr.SKUs))
	}
	m, err := b.measure(ctx, groups, cl.shards, cl.admins(), args...)
	if err != nil {
		return nil, err
	}
	cl.acked += int64(m.Load.TotalOKUnits)
	r := &report.ScaleRun{Row: sr, Rep: rep, Load: m.Load, M: m}
	r.Settle, r.Settled, err = b.waitReservedSum(ctx, cl.db, cl.acked, b.scaleDrainLimit(cl.broken))
	cl.broken = cl.broken || !r.Settled
	if err != nil {
		return nil, err
	}
	r.CPUDrain = b.meter.CPUSince(m.Before, groups)
	delete(r.CPUDrain, "all")
	for _, f := range m.Load.Failures {
		b.note("scale %s rep %d: loadgen: %s", sr.Name, rep, f)
	}
	if !r.Settled {
		b.note("scale %s rep %d: write-back had not drained %s after the run", sr.Name, rep, r.Settle.Round(time.Second))
	}
	for _, n := range cl.nodes {
		if n.p.exited() {
			return nil, fmt.Errorf("%s exited (%v):\n%s", n.p.name, n.p.err, n.p.tail(20))
		}
	}
	b.logScale(r, c)
	return r, nil
}

func (b *bench) logScale(r *report.ScaleRun, c int) {
	m, batch := r.M, ""
	if m.TakeCalls > 0 {
		batch = fmt.Sprintf("  %.1f requests per take call", m.TakeReqs/m.TakeCalls)
	}
	perDed := func(k string) float64 {
		if r.Load.TotalOK == 0 {
			return 0
		}
		return r.CPUDrain[k] / float64(r.Load.TotalOK) * 1e6
	}
	b.logf("scale rep %d/%d %-9s c=%d %8.0f/s  p99 %.2fms  errors %d  µs CPU per deduction: stockd %.1f redis %.1f mariadb %.1f rabbitmq %.1f  drained in %s%s",
		r.Rep, b.opt.scaleReps, r.Row.Name, c, m.Load.Throughput(), m.Load.P99Ms, m.Load.Errors(), perDed("server"), perDed("redis"), perDed("mariadb"), perDed("rabbitmq"), r.Settle.Round(10*time.Millisecond), batch)
}

// verifyScale runs the conservation check on one SKU of the row (the one
// the probes hit), once the write-back has drained (the check counts
// MySQL's details).
func (b *bench) verifyScale(ctx context.Context, cl *scaleCluster) error {
	sku := cl.skus[len(cl.skus)-1]
	waited, drained, err := b.waitReservedSum(ctx, cl.db, cl.acked, b.scaleDrainLimit(cl.broken))
	if err != nil {
		return err
	}
	if !drained {
		last := b.scale[len(b.scale)-1]
		v := report.Verify{SKU: sku, Row: cl.row.Name, Skipped: true}
		v.Raw = fmt.Sprintf("not checked: the write-back had not drained %s after the last run", (last.Settle + waited).Round(time.Second))
		b.note("verify %s (%s): %s", v.SKU, cl.row.Name, v.Raw)
		b.verifies = append(b.verifies, v)
		return nil
	}
	v, code := b.api.verify(ctx, cl.nodes[0].admin, sku)
	v.Row = cl.row.Name
	if !v.OK {
		b.note("verify %s (%s): %d %s", v.SKU, cl.row.Name, code, v.Raw)
	}
	b.verifies = append(b.verifies, v)
	return nil
}

// waitReservedSum waits until the reserved counters of every SKU in db add
// up to want (the write-back's progress, as waitReserved).
func (b *bench) waitReservedSum(ctx context.Context, db string, want int64, limit time.Duration) (time.Duration, bool, error) {
	return b.waitCount(ctx, "SELECT COALESCE(SUM(reserved), 0) FROM "+db+".skus", nil, want, limit)
}
