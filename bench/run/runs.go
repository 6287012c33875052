package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
	"github.com/stockd/stockd/bench/internal/report"
	"github.com/stockd/stockd/internal/redisproc"
)

// rowTarget is what one run of a row loads and measures.
type rowTarget struct {
	url, sku string
	groups   []measure.Group // the last one is "all"
	redis    []*redisproc.Instance
	admins   []string // stockd's admin address, for the take counters
	stop     func()   // stops the baseline server
}

// target starts what a row needs (a baseline server for the baseline
// rows) and names the processes to measure.
func (b *bench) target(ctx context.Context, sc *plan.Scenario) (*rowTarget, error) {
	t := &rowTarget{url: b.hotURL(), sku: plan.HotSKU, stop: func() {}}
	switch sc.Name {
	case "stockd", "limited", "soldout":
		switch sc.Name {
		case "soldout":
			t.sku = plan.SoldSKU
		case "limited":
			t.sku = plan.LimitSKU
		}
		t.groups, t.redis, t.admins = b.stockdGroups(), b.shards, []string{b.admin}
		return t, nil
	}
	bystanders := append([]int{b.stockd.pid()}, b.shardPIDs()...)
	p, u, err := b.startBaseline(ctx, sc.Mode)
	if err != nil {
		return nil, err
	}
	t.stop = func() { p.stop(syscall.SIGTERM, 5*time.Second) }
	t.url, t.sku = u, "bench-"+sc.Name
	t.groups = []measure.Group{{Name: "server", Pids: []int{p.pid()}}}
	redis := measure.Group{Name: "redis", Pids: []int{b.baseRedis.Pid()}}
	mariadb, rabbit := measure.Group{Name: "mariadb", Pids: []int{b.mariadbPID}}, measure.Group{Name: "rabbitmq", Pids: []int{b.rabbitPID}}
	switch sc.Mode {
	case "rowlock", "condupdate":
		t.groups = append(t.groups, mariadb)
	case "rediskey":
		t.groups = append(t.groups, redis)
		t.redis = []*redisproc.Instance{b.baseRedis}
	case "mqpeer":
		t.groups = append(t.groups, redis, mariadb, rabbit)
		t.redis = []*redisproc.Instance{b.baseRedis}
	}
	// Every process of the bench, to tell how much CPU went elsewhere.
	t.groups = append(t.groups, measure.Group{Name: "stockd_idle", Pids: bystanders}, measure.Group{Name: "all", Pids: append(b.ourPIDs(), p.pid())})
	return t, nil
}

// runRow is one measured run of a row at concurrency c.
func (b *bench) runRow(ctx context.Context, sc *plan.Scenario, c, rep int) (*report.Run, error) {
	res := &report.Run{Sc: sc, C: c, Rep: rep}
	t, err := b.target(ctx, sc)
	if err != nil {
		return nil, err
	}
	defer t.stop()
	if res.Waited, err = b.meter.WaitQuiet(ctx, t.groups[len(t.groups)-1].Pids); err != nil {
		return nil, err
	}
	settled, err := b.meter.WaitSettled(ctx, []int{b.mariadbPID, b.rabbitPID})
	if err != nil {
		return nil, err
	}
	res.Waited += settled
	args := append(lgArgs(t.url, t.sku, c, fmt.Sprintf("b%s-%s-c%d-r%d-", b.prefix, sc.Name, c, rep)),
		"-d", b.opt.duration.String(), "-warmup", b.opt.warmup.String())
	if sc.Name == "limited" {
		args = append(args, "-users", strconv.Itoa(plan.LimitUsers))
	}
	m, err := b.measure(ctx, t.groups, t.redis, t.admins, args...)
	if err != nil {
		return nil, err
	}
	lg := m.Load
	res.Load, res.CPU, res.Busy, res.Foreign, res.Pipe = lg, m.CPU, m.Busy, m.Foreign, m.Pipe
	res.TakeCalls, res.TakeReqs = m.TakeCalls, m.TakeReqs
	for _, f := range lg.Failures {
		b.note("%s c=%d rep %d: loadgen: %s", sc.Name, c, rep, f)
	}
	if sc.Name == "soldout" && lg.TotalOK > 0 {
		b.note("soldout c=%d rep %d: %d ok answers after the sell-out", c, rep, lg.TotalOK)
	}
	if err := b.drainRow(ctx, res, t, m); err != nil {
		return nil, err
	}
	if b.stockd.exited() {
		return nil, fmt.Errorf("stockd exited (%v); its log ends:\n%s", b.stockd.err, b.stockd.tail(20))
	}
	b.logRow(res)
	return res, nil
}

// drainRow waits, for the rows with a write-back, until it has drained,
// and takes the CPU of the run with the write-back's tail.
func (b *bench) drainRow(ctx context.Context, res *report.Run, t *rowTarget, m *measure.Measurement) error {
	var err error
	switch res.Sc.Name {
	case "mqpeer":
		b.mq.Acked += int64(res.Load.TotalOK)
		res.Settle, res.Settled, res.Backlog, err = b.waitOrders(ctx, res.Load)
		if err != nil {
			return err
		}
		res.CPUDrain = b.meter.CPUSince(m.Before, t.groups)
		delete(res.CPUDrain, "all")
		delete(res.CPUDrain, "stockd_idle")
	case "stockd", "limited":
		acked := &b.hotAcked
		if res.Sc.Name == "limited" {
			acked = &b.limitAcked
		}
		*acked += int64(res.Load.TotalOKUnits)
		res.Settle, res.Settled, err = b.waitReserved(ctx, t.sku, *acked, b.drainLimit())
		if err != nil {
			return err
		}
		res.CPUDrain = b.meter.CPUSince(m.Before, t.groups)
		delete(res.CPUDrain, "all")
		if !res.Settled {
			b.note("%s c=%d rep %d: write-back had not drained %s after the run", res.Sc.Name, res.C, res.Rep, res.Settle.Round(time.Second))
		}
	}
	return nil
}

func (b *bench) logRow(res *report.Run) {
	lg := res.Load
	msg := fmt.Sprintf("rep %d/%d %-10s c=%-3d %8.0f/s  p50 %6.2fms p99 %7.2fms p999 %7.2fms  ok %d sold_out %d errors %d  busy %.0f%% foreign %.2f cores",
		res.Rep, b.opt.reps, res.Sc.Name, res.C, lg.Throughput(), lg.P50Ms, lg.P99Ms, lg.P999Ms, lg.OK, lg.SoldOut, lg.Errors(), 100*res.Busy, res.Foreign)
	if plan.WritesBack(res.Sc.Name) {
		msg += fmt.Sprintf("  write-back drained in %s", res.Settle.Round(10*time.Millisecond))
	}
	if res.TakeCalls > 0 {
		msg += fmt.Sprintf("  %.1f requests per take call", res.TakeReqs/res.TakeCalls)
	}
	b.logf("%s", msg)
}

// waitOrders waits until the mqpeer consumer has inserted an order row for
// every ok answer of the mqpeer runs so far: the peer's write-back lag,
// from the load generator's exit. A backlog that does not drain in time is
// purged (and the count rebased), so that it does not slow the next run.
func (b *bench) waitOrders(ctx context.Context, lg *measure.Load) (time.Duration, bool, int64, error) {
	q := "SELECT COUNT(*) FROM " + b.baseDB + "." + plan.MQOrders
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
			backlog = b.mq.Acked - n
		}
		if n >= b.mq.Acked {
			if n > b.mq.Acked {
				b.note("mqpeer: %d order rows for %d ok answers (a confirmed order whose answer was lost)", n, b.mq.Acked)
				b.mq.Acked = n
			}
			return time.Since(lg.Exited), true, backlog, nil
		}
		if time.Since(lg.Exited) > limit {
			lag := time.Since(lg.Exited)
			b.purgeQueue(b.mqQueue)
			_ = measure.Sleep(ctx, time.Second) // let in-flight inserts land
			_ = b.root.QueryRowContext(ctx, q).Scan(&n)
			b.note("mqpeer: %d of %d orders still not in MySQL %s after the load; queue purged, count rebased", b.mq.Acked-n, b.mq.Acked, limit)
			b.mq.Acked = n
			b.mq.Purged = true
			return lag, false, backlog, nil
		}
		if err := measure.Sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, false, 0, err
		}
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
	settle, ok, err := b.waitCount(ctx, "SELECT reserved FROM "+b.stockdDB+".skus WHERE sku = ?", []any{sku}, want, limit)
	if err == nil && !ok {
		b.drainBroken = true
	}
	return settle, ok, err
}

// waitCount polls the number q answers every 20 ms until it reaches want
// or limit passes.
func (sv *services) waitCount(ctx context.Context, q string, args []any, want int64, limit time.Duration) (time.Duration, bool, error) {
	start := time.Now()
	for {
		var got int64
		if err := sv.root.QueryRowContext(ctx, q, args...).Scan(&got); err != nil {
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
		if err := measure.Sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, false, err
		}
	}
}

// sellOut empties the sold-out SKU before the measured rows: load until a
// whole run answers only sold_out.
func (b *bench) sellOut(ctx context.Context) error {
	if !b.wants("soldout") {
		return nil
	}
	so := &b.soldOut
	for i := 1; i <= 6; i++ {
		args := append(lgArgs(b.hotURL(), plan.SoldSKU, 64, fmt.Sprintf("b%s-sellout%d-", b.prefix, i)),
			"-d", time.Second.String(), "-total", strconv.Itoa(plan.SoldTotal))
		lg, err := b.loadgen(ctx, args...)
		if err != nil {
			return fmt.Errorf("sell-out: %w", err)
		}
		so.Runs = i
		so.Units += lg.TotalOKUnits
		so.LastOK, so.LastSold = lg.TotalOK, lg.SoldOut
		so.Errs += lg.Errors()
		for _, f := range lg.Failures {
			b.note("sell-out of %s: loadgen: %s", plan.SoldSKU, f)
		}
		if lg.TotalOK == 0 && lg.SoldOut > 0 {
			break
		}
	}
	if so.Units > plan.SoldTotal {
		b.note("OVERSELL: %s sold %d units of %d", plan.SoldSKU, so.Units, plan.SoldTotal)
	}
	so.SoldOutOK = b.api.soldOut(ctx, b.admin, plan.SoldSKU)
	b.logf("sell-out: %s sold %d of %d units in %d run(s); admin says sold_out=%v", plan.SoldSKU, so.Units, plan.SoldTotal, so.Runs, so.SoldOutOK)
	if so.LastOK != 0 {
		b.note("%s still answered ok after %d sell-out runs", plan.SoldSKU, so.Runs)
	}
	return nil
}

// halfMax runs stockd open loop at half of its median throughput at the
// highest concurrency.
func (b *bench) halfMax(ctx context.Context) error {
	c := slices.Max(b.opt.conc)
	var tps []float64
	for _, r := range b.runs {
		if r.Sc.Name == "stockd" && r.C == c {
			tps = append(tps, r.Load.Throughput())
		}
	}
	if len(tps) == 0 {
		return nil
	}
	rate := float64(int(report.Median(tps) / 2))
	if rate < 1 {
		b.note("stockd throughput is 0: no half-max run")
		return nil
	}
	for rep := 1; rep <= b.opt.reps; rep++ {
		h, err := b.halfRun(ctx, rate, c, rep, true)
		if err != nil {
			return err
		}
		b.halves = append(b.halves, h)
	}
	// A quarter of the maximum: the latency with more room on the machine.
	for rep := 1; rep <= b.opt.reps; rep++ {
		h, err := b.halfRun(ctx, float64(int(rate/2)), c, rep, false)
		if err != nil {
			return err
		}
		b.quarters = append(b.quarters, h)
	}
	return nil
}

// openLoopArgs is the load generator's arguments of an open-loop run.
func (b *bench) openLoopArgs(url, sku string, c int, idPrefix string, rate float64) []string {
	return append(lgArgs(url, sku, c, idPrefix),
		"-rate", strconv.FormatFloat(rate, 'f', 0, 64), "-d", b.opt.duration.String(), "-warmup", b.opt.warmup.String())
}

// halfRun is one open-loop run of stockd at rate, then (with floor) the
// same against the HTTP floor.
func (b *bench) halfRun(ctx context.Context, rate float64, c, rep int, floor bool) (*report.Half, error) {
	if err := b.waitQuiet(ctx, b.ourPIDs()); err != nil {
		return nil, err
	}
	args := b.openLoopArgs(b.hotURL(), plan.HotSKU, c, fmt.Sprintf("b%s-open%.0f-r%d-", b.prefix, rate, rep), rate)
	m, err := b.measure(ctx, b.stockdGroups(), b.shards, []string{b.admin}, args...)
	if err != nil {
		return nil, fmt.Errorf("half max: %w", err)
	}
	lg := m.Load
	h := &report.Half{Rep: rep, Rate: rate, Load: lg, M: m}
	b.hotAcked += int64(lg.TotalOKUnits)
	h.Settle, h.Settled, err = b.waitReserved(ctx, plan.HotSKU, b.hotAcked, b.drainLimit())
	if err != nil {
		return nil, err
	}
	for _, f := range lg.Failures {
		b.note("open loop at %.0f/s rep %d: loadgen: %s", rate, rep, f)
	}
	b.logf("open loop rep %d/%d: rate %.0f/s c=%d: achieved %.0f/s  p50 %.2fms p99 %.2fms p999 %.2fms  send lag p99 %.2fms  errors %d  busy %.0f%% foreign %.2f cores  AOF rewrites %d  stock waits %.0f  %.1f requests per take call",
		rep, b.opt.reps, rate, c, float64(lg.Requests)/max(lg.DurationS, 1e-9), lg.P50Ms, lg.P99Ms, lg.P999Ms, lg.SendLagP99Ms, lg.Errors(), 100*m.Busy, m.Foreign, m.Rewrites, m.StockWaits, m.TakeReqs/max(m.TakeCalls, 1))
	if floor && b.wants("floor") {
		if err := b.halfFloor(ctx, h, c); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// halfFloor is the same open loop against the HTTP floor: what the
// machine and the load generator add to any server's tail at this rate.
func (b *bench) halfFloor(ctx context.Context, h *report.Half, c int) error {
	p, url, err := b.startBaseline(ctx, "floor")
	if err != nil {
		return err
	}
	defer p.stop(syscall.SIGTERM, 5*time.Second)
	all := append(b.ourPIDs(), p.pid())
	if err := b.waitQuiet(ctx, all); err != nil {
		return err
	}
	args := b.openLoopArgs(url, "bench-floor", c, fmt.Sprintf("b%s-halffloor-r%d-", b.prefix, h.Rep), h.Rate)
	fm, err := b.measure(ctx, []measure.Group{{Name: "server", Pids: []int{p.pid()}}, {Name: "all", Pids: all}}, nil, nil, args...)
	if err != nil {
		return fmt.Errorf("half max, floor: %w", err)
	}
	h.Floor, h.FloorM = fm.Load, fm
	b.logf("half max rep %d/%d, same rate on the floor: p50 %.2fms p99 %.2fms p999 %.2fms  send lag p99 %.2fms",
		h.Rep, b.opt.reps, h.Floor.P50Ms, h.Floor.P99Ms, h.Floor.P999Ms, h.Floor.SendLagP99Ms)
	return nil
}

// lagRun loads a fresh SKU at full speed for a few seconds, stops, and
// measures how long MySQL takes to hold a detail row for every ok answer.
func (b *bench) lagRun(ctx context.Context, rep int) (*report.Lag, error) {
	sku := fmt.Sprintf("bench-lag-%d", rep)
	if err := b.api.putSKU(ctx, b.admin, sku, plan.HotTotal, plan.HotParts, plan.HotChunk, plan.HotThreshold); err != nil {
		return nil, err
	}
	if err := b.waitQuiet(ctx, b.ourPIDs()); err != nil {
		return nil, err
	}
	args := append(lgArgs(b.hotURL(), sku, b.opt.lagConc, fmt.Sprintf("b%s-lag-r%d-", b.prefix, rep)),
		"-d", b.opt.lagDuration.String())
	lg, err := b.loadgen(ctx, args...)
	if err != nil {
		return nil, err
	}
	l := &report.Lag{Rep: rep, SKU: sku, Load: lg, Backlog: -1}
	if err := b.waitDetails(ctx, l); err != nil {
		return nil, err
	}
	for _, f := range lg.Failures {
		b.note("lag rep %d: loadgen: %s", rep, f)
	}
	b.logf("write-back lag rep %d/%d: %d deductions in %.1fs (c=%d), %d details not in MySQL at stop, all in MySQL %s after the last answer",
		rep, b.opt.reps, lg.TotalOK, lg.DurationS, b.opt.lagConc, l.Backlog, l.Lag.Round(time.Millisecond))
	return l, nil
}

// waitDetails polls MySQL's details of the lag run's SKU every 10 ms until
// it holds one per ok answer, or the drain limit passes.
func (b *bench) waitDetails(ctx context.Context, l *report.Lag) error {
	want := int64(l.Load.TotalOK)
	q := "SELECT COUNT(*) FROM " + b.stockdDB + ".deductions WHERE sku = ?"
	limit := b.drainLimit()
	for {
		var n int64
		if err := b.root.QueryRowContext(ctx, q, l.SKU).Scan(&n); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		if l.Backlog < 0 {
			l.Backlog = want - n
		}
		if n >= want {
			l.Lag, l.OK = time.Since(l.Load.Exited), true
			return nil
		}
		if time.Since(l.Load.Exited) > limit {
			l.Lag = time.Since(l.Load.Exited)
			b.note("write-back lag rep %d: MySQL held %d of %d details %s after the load", l.Rep, n, want, limit)
			b.drainBroken = true
			return nil
		}
		if err := measure.Sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// verifyAll runs stockd's conservation check on every SKU it sold, and
// counts mqpeer's order rows.
func (b *bench) verifyAll(ctx context.Context) {
	if b.mq.Acked > 0 {
		q := "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM " + b.baseDB + "." + plan.MQOrders
		if err := b.root.QueryRowContext(ctx, q).Scan(&b.mq.Rows, &b.mq.Distinct); err != nil {
			b.note("mqpeer: %s: %v", q, err)
		}
	}
	skus := []string{}
	for _, s := range []struct{ row, sku string }{{"stockd", plan.HotSKU}, {"limited", plan.LimitSKU}, {"soldout", plan.SoldSKU}} {
		if b.wants(s.row) {
			skus = append(skus, s.sku)
		}
	}
	for _, l := range b.lags {
		skus = append(skus, l.SKU)
	}
	for _, s := range skus {
		v, code := b.api.verify(ctx, b.admin, s)
		if !v.OK {
			b.note("verify %s: %d %s", s, code, v.Raw)
		}
		b.verifies = append(b.verifies, v)
	}
}
