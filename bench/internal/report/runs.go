package report

import (
	"fmt"
	"slices"
	"time"

	"github.com/stockd/stockd/bench/internal/plan"
)

// halfMedians is the half-max runs' medians.
type halfMedians struct {
	p50, p99, p999, ach, lag, busy, foreign float64
	srv, red, pipe                          float64
	haveCPU                                 bool
	errs, rewrites                          uint64
	waits                                   float64
	batch                                   string // requests per take call, over all runs
}

func halfMediansOf(hs []*Half) halfMedians {
	var p50, p99, p999, ach, lag, busy, foreign, srv, red, pipe []float64
	var calls, reqs float64
	var m halfMedians
	for _, h := range hs {
		busy = append(busy, h.M.Busy)
		foreign = append(foreign, h.M.Foreign)
		pipe = append(pipe, h.M.Pipe)
		if n := float64(h.Load.TotalOK); n > 0 {
			srv = append(srv, h.M.CPU["server"]/n*1000)
			red = append(red, h.M.CPU["redis"]/n*1000)
		}
		p50 = append(p50, h.Load.P50Ms)
		p99 = append(p99, h.Load.P99Ms)
		p999 = append(p999, h.Load.P999Ms)
		ach = append(ach, float64(h.Load.Requests)/max(h.Load.DurationS, 1e-9))
		lag = append(lag, h.Load.SendLagP99Ms)
		m.errs += h.Load.Errors()
		m.rewrites += h.M.Rewrites
		m.waits += h.M.StockWaits
		calls += h.M.TakeCalls
		reqs += h.M.TakeReqs
	}
	m.batch = fmtBatch(calls, reqs)
	m.p50, m.p99, m.p999, m.ach, m.lag = Median(p50), Median(p99), Median(p999), Median(ach), Median(lag)
	m.busy, m.foreign, m.pipe = Median(busy), Median(foreign), Median(pipe)
	m.srv, m.red, m.haveCPU = Median(srv), Median(red), len(srv) > 0
	return m
}

// writeHalfMax is the open-loop runs at half of stockd's maximum, with the
// floor at the same rate as a reference.
func (d *Data) writeHalfMax(p printer) {
	if len(d.Halves) == 0 {
		return
	}
	maxC, m := d.maxC(), halfMediansOf(d.Halves)
	p("## p99 at half of stockd's maximum throughput\n\n")
	p("Open loop (`loadgen -rate`), c = %d workers, rate = 50%% of stockd's median throughput at c = %d = **%s/s**; %s of %s (after %s warmup), medians. Latency counts from the intended send time whenever every worker was busy (no coordinated omission).\n\n",
		maxC, maxC, FmtInt(d.Halves[0].Rate), plural(len(d.Halves), "repetition"), d.Duration, d.Warmup)
	p("| Rate asked | Achieved | p50 | p99 | p99.9 | generator send lag p99 | errors | Busy | Others | AOF rewrites | stock waits | requests per take call |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	row := func(hs []*Half, m halfMedians) {
		p("| %s/s | %s/s | %s | **%s** | %s | %s | %d | %.0f%% | %.2f | %d | %s | %s |\n", FmtInt(hs[0].Rate), FmtInt(m.ach), fmtMs(m.p50), fmtMs(m.p99), fmtMs(m.p999), fmtMs(m.lag), m.errs, 100*m.busy, m.foreign, m.rewrites, FmtInt(m.waits), m.batch)
	}
	row(d.Halves, m)
	if len(d.Quarters) > 0 {
		row(d.Quarters, halfMediansOf(d.Quarters))
	}
	p("\n")

	var fp50, fp99, fp999, flag []float64
	for _, h := range d.Halves {
		if h.Floor != nil {
			fp50 = append(fp50, h.Floor.P50Ms)
			fp99 = append(fp99, h.Floor.P99Ms)
			fp999 = append(fp999, h.Floor.P999Ms)
			flag = append(flag, h.Floor.SendLagP99Ms)
		}
	}
	if len(fp99) > 0 {
		p("The same open loop (rate, workers, duration) against the HTTP floor right after each stockd run, as a reference for what the machine and the load generator alone add: p50 %s, p99 **%s**, p99.9 %s, generator send lag p99 %s (medians).\n\n",
			fmtMs(Median(fp50)), fmtMs(Median(fp99)), fmtMs(Median(fp999)), fmtMs(Median(flag)))
	}
	if st := d.aggregate("stockd", maxC); st != nil && m.haveCPU {
		p("At this rate stockd used %s CPU s per 1,000 deductions and its Redis shards %s, at %.1f Redis commands per socket read (closed loop at c = %d: %s, %s and %.1f).",
			fmtSec(m.srv, true), fmtSec(m.red, true), m.pipe, maxC, fmtSec(st.cpu["server"], true), fmtSec(st.cpu["redis"], true), st.pipe)
		if m.srv+m.red > 1.1*(st.cpu["server"]+st.cpu["redis"]) {
			p(" With less load there is less batching, so half the rate costs more than half the CPU.")
		}
		p("\n\n")
	}
	if len(d.Quarters) > 0 {
		q := halfMediansOf(d.Quarters)
		p("The second row is a quarter of the maximum (%s, without a floor run): what the latency is when the machine has more room. ", plural(len(d.Quarters), "repetition"))
		if m.busy > 0 && q.busy > 0 {
			p("Going from a quarter to half of the maximum took the machine from %.0f%% to %.0f%% busy and stockd's p99 from %s to %s ms.", 100*q.busy, 100*m.busy, fmtMs(q.p99), fmtMs(m.p99))
		}
		if q.haveCPU {
			p(" At a quarter stockd used %s CPU s per 1,000 deductions and its Redis shards %s, at %s requests per take call.", fmtSec(q.srv, true), fmtSec(q.red, true), q.batch)
		}
		p("\n\n")
	}
	p("*Generator send lag* is how late the load generator itself sent (its timer and scheduling, on the same cores): a large one means the machine, not only stockd, was behind. *AOF rewrites* counts the Redis AOF rewrites of stockd's shards that ran during these runs (all repetitions; `aof_rewrites` and `aof_rewrite_in_progress` of INFO persistence): each forks a child that serializes the shard's whole dataset on the cores everything else here shares, and a stall of a few hundred ms in one repetition usually has one beside it. *Stock waits* counts the deductions (all repetitions) that found no partition holding their unit and waited for a refill (`stockd_scheduler_stock_wait_seconds`): none means no request's latency includes one.\n\n")
}

// writeLag is the write-back lag runs (the heading also stands over
// mqpeer's lag when only that was measured).
func (d *Data) writeLag(p printer) {
	if len(d.Lags) == 0 {
		if d.aggregate("mqpeer", d.maxC()) != nil {
			p("## Write-back lag\n\n")
		}
		return
	}
	var lags, backlog, thr []float64
	for _, l := range d.Lags {
		lags = append(lags, l.Lag.Seconds())
		backlog = append(backlog, float64(l.Backlog))
		thr = append(thr, l.Load.Throughput())
	}
	p("## Write-back lag\n\n")
	p("A fresh SKU (%d partitions, chunk %d) under full closed-loop load, c = %d, for %s; then the load stops and the bench polls `SELECT COUNT(*) FROM deductions WHERE sku = ?` every 10 ms until it reaches the number of ok answers. Lag = from the load generator's exit (a few ms after the last answer) until MySQL holds every detail. %s.\n\n",
		plan.HotParts, plan.HotChunk, d.LagConc, d.LagDuration, plural(len(d.Lags), "repetition"))
	p("| Rep | Deductions | Deductions/s | Details not yet in MySQL when the load stopped | Lag |\n|---|---|---|---|---|\n")
	for _, l := range d.Lags {
		lag := l.Lag.Round(time.Millisecond).String()
		if !l.OK {
			lag = "> " + lag + " (**not drained**)"
		}
		p("| %d | %s | %s | %s | %s |\n", l.Rep, FmtInt(float64(l.Load.TotalOK)), FmtInt(l.Load.Throughput()), FmtInt(float64(l.Backlog)), lag)
	}
	p("| **median** | | %s | %s | **%s** |\n\n", FmtInt(Median(thr)), FmtInt(Median(backlog)), time.Duration(Median(lags)*float64(time.Second)).Round(time.Millisecond))
}

// writeChecks is the side checks: sell-out, conservation, duplicates and
// mqpeer's orders.
func (d *Data) writeChecks(p printer) {
	p("## Side checks\n\n")
	if d.has("soldout") {
		p("- Sell-out before the rows: `%s` (%d units) sold %d units in %d run(s) of the load generator (with `-total %d`: an oversell fails the run); the admin API then said sold_out=%v.\n",
			plan.SoldSKU, plan.SoldTotal, d.SoldOut.Units, d.SoldOut.Runs, plan.SoldTotal, d.SoldOut.SoldOutOK)
	}
	for _, v := range d.Verifies {
		st := "ok"
		switch {
		case v.Skipped:
			st = "**" + v.Raw + "**"
		case !v.OK:
			st = "**FAILED**: " + v.Raw
		}
		where := "at the end"
		if v.Row != "" {
			where = "on the " + v.Row + " cluster after its runs"
		}
		p("- `GET /admin/skus/%s/verify` %s (conservation check): %s\n", v.SKU, where, st)
	}
	dups, overs, nruns := d.safetyTotals()
	p("- Duplicate reservations seen by the load generator over all %d runs (rows, profile, half max, lag, scale rows): %d; runs with an oversell: %d.\n", nruns, dups, overs)
	mq := d.MQ
	switch {
	case mq.Acked <= 0:
	case mq.Purged:
		p("- mqpeer: a backlog was purged during the run (see the notes): its order rows are not checked against its ok answers.\n")
	default:
		st := "ok"
		if mq.Rows != mq.Acked || mq.Distinct != mq.Rows {
			st = "**MISMATCH**"
		}
		p("- mqpeer: %s order rows (%s distinct request ids) in MySQL at the end for %s ok answers over all its runs: %s.\n", FmtInt(float64(mq.Rows)), FmtInt(float64(mq.Distinct)), FmtInt(float64(mq.Acked)), st)
	}
}

// writeNotes is the run's notes and the load generator's warnings.
func (d *Data) writeNotes(p printer) {
	if len(d.Notes) > 0 {
		p("\nNotes from this run:\n\n")
		for _, n := range d.Notes {
			p("- %s\n", n)
		}
	}
	var warns []string
	for _, r := range d.Runs {
		for _, wn := range r.Load.Warnings {
			warns = append(warns, fmt.Sprintf("%s c=%d rep %d: %s", r.Sc.Name, r.C, r.Rep, wn))
		}
	}
	for _, h := range d.Halves {
		for _, wn := range h.Load.Warnings {
			warns = append(warns, fmt.Sprintf("half max rep %d: %s", h.Rep, wn))
		}
	}
	for _, h := range d.Quarters {
		for _, wn := range h.Load.Warnings {
			warns = append(warns, fmt.Sprintf("quarter max rep %d: %s", h.Rep, wn))
		}
	}
	if len(warns) > 0 {
		p("\nLoad generator warnings:\n\n")
		for _, wn := range warns {
			p("- %s\n", wn)
		}
	}
	p("\n")
}

// writeAllRuns is every run, in the order they ran.
func (d *Data) writeAllRuns(p printer) {
	maxC := d.maxC()
	p("## All runs\n\n")
	p("In the order they ran. Throughput = (ok + sold out) / measured seconds.\n\n")
	p("| Rep | Row | c | Answers/s | p50 | p99 | p99.9 | max | ok | sold out | errors | server CPU s | Busy | Others | Cmds/read | write-back drained |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range d.Runs {
		drained := "–"
		if plan.WritesBack(r.Sc.Name) {
			drained = r.Settle.Round(10 * time.Millisecond).String()
			if !r.Settled {
				drained = "not drained"
			}
		}
		lg := r.Load
		p("| %d | %s | %d | %s | %s | %s | %s | %s | %d | %d | %d | %.2f | %.0f%% | %.2f | %s | %s |\n",
			r.Rep, r.Sc.Name, r.C, FmtInt(lg.Throughput()), fmtMs(lg.P50Ms), fmtMs(lg.P99Ms), fmtMs(lg.P999Ms), fmtMs(lg.MaxMs),
			lg.OK, lg.SoldOut, lg.Errors(), r.CPU["server"], 100*r.Busy, r.Foreign, fmtPipe(r.Pipe), drained)
	}
	for _, r := range d.Scale {
		lg := r.Load
		p("| %d | scale %s | %d | %s | %s | %s | %s | %s | %d | %d | %d | %.2f | %.0f%% | %.2f | %s | %s |\n",
			r.Rep, r.Row.Name, maxC, FmtInt(lg.Throughput()), fmtMs(lg.P50Ms), fmtMs(lg.P99Ms), fmtMs(lg.P999Ms), fmtMs(lg.MaxMs),
			lg.OK, lg.SoldOut, lg.Errors(), r.M.CPU["server"], 100*r.M.Busy, r.M.Foreign, fmtPipe(r.M.Pipe), r.Settle.Round(10*time.Millisecond))
	}
	for _, h := range append(slices.Clone(d.Halves), d.Quarters...) {
		lg := h.Load
		what := "half max"
		if slices.Contains(d.Quarters, h) {
			what = "quarter max"
		}
		p("| %d | %s (rate %s/s) | %d | %s | %s | %s | %s | %s | %d | %d | %d | – | – | – | – | %s |\n",
			h.Rep, what, FmtInt(h.Rate), maxC, FmtInt(lg.Throughput()), fmtMs(lg.P50Ms), fmtMs(lg.P99Ms), fmtMs(lg.P999Ms), fmtMs(lg.MaxMs),
			lg.OK, lg.SoldOut, lg.Errors(), h.Settle.Round(10*time.Millisecond))
		if f := h.Floor; f != nil {
			p("| %d | floor at the same rate | %d | %s | %s | %s | %s | %s | %d | %d | %d | – | – | – | – | – |\n",
				h.Rep, maxC, FmtInt(f.Throughput()), fmtMs(f.P50Ms), fmtMs(f.P99Ms), fmtMs(f.P999Ms), fmtMs(f.MaxMs),
				f.OK, f.SoldOut, f.Errors())
		}
	}
	p("\n")
}
