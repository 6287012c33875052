package report

import (
	"slices"
	"time"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
)

// agg is a row at one concurrency over its reps.
type agg struct {
	sc                  *plan.Scenario
	c                   int
	n                   int
	thr, thrMin, thrMax float64
	p50, p99, p999      float64
	ok, sold, errs      uint64
	warnings            int
	cpu, cpuDrain       map[string]float64 // medians of CPU seconds per 1,000 answers (deductions for stockd)
	pipe, busy, foreign float64
	settle              time.Duration
	settledAll          bool
	backlog             float64 // mqpeer: median orders not in MySQL when the load stopped
	takeCalls, takeReqs float64 // stockd rows: summed over the reps
	thrs                []float64
}

// runsOf is the runs of row name at concurrency c.
func (d *Data) runsOf(name string, c int) []*Run {
	var rs []*Run
	for _, r := range d.Runs {
		if r.Sc.Name == name && r.C == c {
			rs = append(rs, r)
		}
	}
	return rs
}

// perThousand is the CPU seconds of cpu per 1,000 units, by group.
func perThousand(into map[string][]float64, cpu map[string]float64, units float64) {
	for k, v := range cpu {
		if units > 0 {
			into[k] = append(into[k], v/units*1000)
		}
	}
}

func medians(xs map[string][]float64) map[string]float64 {
	m := map[string]float64{}
	for k, v := range xs {
		m[k] = Median(v)
	}
	return m
}

func (d *Data) aggregate(name string, c int) *agg {
	rs := d.runsOf(name, c)
	if len(rs) == 0 {
		return nil
	}
	a := &agg{sc: rs[0].Sc, c: c, n: len(rs), settledAll: true}
	var backlog []float64
	var p50, p99, p999, pipe, busy, foreign, settle []float64
	cpu, drain := map[string][]float64{}, map[string][]float64{}
	for _, r := range rs {
		lg := r.Load
		a.thrs = append(a.thrs, lg.Throughput())
		p50 = append(p50, lg.P50Ms)
		p99 = append(p99, lg.P99Ms)
		p999 = append(p999, lg.P999Ms)
		a.ok += lg.OK
		a.sold += lg.SoldOut
		a.errs += lg.Errors()
		a.warnings += len(lg.Warnings)
		pipe = append(pipe, r.Pipe)
		busy = append(busy, r.Busy)
		foreign = append(foreign, r.Foreign)
		units := lg.WindowAnswers()
		if plan.PerDeduction(name) {
			units = float64(lg.TotalOK)
		}
		perThousand(cpu, r.CPU, units)
		perThousand(drain, r.CPUDrain, units)
		if plan.WritesBack(name) {
			settle = append(settle, r.Settle.Seconds())
			a.settledAll = a.settledAll && r.Settled
		}
		if name == "mqpeer" {
			backlog = append(backlog, float64(r.Backlog))
		}
		a.takeCalls += r.TakeCalls
		a.takeReqs += r.TakeReqs
	}
	a.backlog = Median(backlog)
	a.thr, a.thrMin, a.thrMax = Median(a.thrs), slices.Min(a.thrs), slices.Max(a.thrs)
	a.p50, a.p99, a.p999 = Median(p50), Median(p99), Median(p999)
	a.pipe, a.busy, a.foreign = Median(pipe), Median(busy), Median(foreign)
	a.settle = time.Duration(Median(settle) * float64(time.Second))
	a.cpu, a.cpuDrain = medians(cpu), medians(drain)
	return a
}

// perDed is the CPU µs per deduction of group k in cpu over the run.
func (r *ScaleRun) perDed(cpu map[string]float64, k string) float64 {
	if r.Load.TotalOK == 0 {
		return 0
	}
	return cpu[k] / float64(r.Load.TotalOK) * 1e6
}

// scaleAgg is a scale row over its reps: medians.
type scaleAgg struct {
	row                 *plan.ScaleRow
	n                   int
	thr, p99            float64
	server, redis       float64 // µs CPU per deduction, write-back drained
	engineLoad          float64 // stockd + Redis µs per deduction during the load alone
	mariadb, rabbitmq   float64
	loadgen             float64
	errs                uint64
	takeCalls, takeReqs float64
	settledAll          bool
}

func (a *scaleAgg) engine() float64 { return a.server + a.redis }

func (d *Data) scaleAggregate(id string) *scaleAgg {
	var rs []*ScaleRun
	for _, r := range d.Scale {
		if r.Row.ID == id {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return nil
	}
	a := &scaleAgg{row: rs[0].Row, n: len(rs), settledAll: true}
	var thr, p99, srv, red, mdb, rmq, lg, eload []float64
	for _, r := range rs {
		thr = append(thr, r.Load.Throughput())
		p99 = append(p99, r.Load.P99Ms)
		srv = append(srv, r.perDed(r.CPUDrain, "server"))
		red = append(red, r.perDed(r.CPUDrain, "redis"))
		mdb = append(mdb, r.perDed(r.CPUDrain, "mariadb"))
		rmq = append(rmq, r.perDed(r.CPUDrain, "rabbitmq"))
		// During the load alone (warmup included), without the
		// write-back's tail.
		eload = append(eload, r.perDed(r.M.CPU, "server")+r.perDed(r.M.CPU, "redis"))
		if r.Load.TotalOK > 0 {
			lg = append(lg, r.M.CPU["loadgen"]/float64(r.Load.TotalOK)*1e6)
		}
		a.errs += r.Load.Errors()
		a.takeCalls += r.M.TakeCalls
		a.takeReqs += r.M.TakeReqs
		a.settledAll = a.settledAll && r.Settled
	}
	a.thr, a.p99, a.engineLoad = Median(thr), Median(p99), Median(eload)
	a.server, a.redis, a.mariadb, a.rabbitmq, a.loadgen = Median(srv), Median(red), Median(mdb), Median(rmq), Median(lg)
	return a
}

// allLoads is every load generator run of the bench.
func (d *Data) allLoads() []*measure.Load {
	var all []*measure.Load
	for _, r := range d.Runs {
		all = append(all, r.Load)
	}
	for _, h := range append(slices.Clone(d.Halves), d.Quarters...) {
		all = append(all, h.Load)
	}
	for _, l := range d.Lags {
		all = append(all, l.Load)
	}
	for _, r := range d.Scale {
		all = append(all, r.Load)
	}
	if d.Profile != nil {
		all = append(all, d.Profile.Load)
	}
	return all
}

// safetyTotals adds up the load generator's duplicate reservations and
// oversold runs over every run of the bench.
func (d *Data) safetyTotals() (dups, overs, runs int) {
	all := d.allLoads()
	for _, lg := range all {
		dups += int(lg.DupReservations)
		if lg.Oversold {
			overs++
		}
	}
	return dups, overs, len(all)
}
