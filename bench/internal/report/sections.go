package report

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/stockd/stockd/bench/internal/plan"
)

func (d *Data) writeScale(p printer) {
	if len(d.Scale) == 0 {
		return
	}
	c := d.maxC()
	p("## Scale rows\n\n")
	p("Same machine, so the figure to compare is **CPU per deduction**, not throughput (every row saturates the same %s cores). Each row is a stockd cluster of its own (own nodes, Redis shards, database, queue and key prefix), started for its runs and stopped after them; the rows run one after the other, %s each, at c = %d, **%s warmup + %s measured — shorter and fewer than the rows above**, so noisier. The hot SKU of the single-SKU rows has %d partitions (so that 6 shards all hold some). CPU µs per deduction from the start of the run until MySQL held every detail (write-back included; *during the load alone*: stockd + Redis from the start of the warmup to the end of the load, without the write-back's tail); *stockd* is all nodes of the row, *Redis* all its shards. *Req/take* is requests per take script call (`stockd_shard_take_requests_total / stockd_shard_take_calls_total`, summed over shards,).\n\n",
		d.Machine.Nproc, plural(d.ScaleReps, "repetition"), c, d.Warmup, d.ScaleDuration, plan.ScaleParts)
	p("| Row | Deductions/s | p99 | stockd µs/ded | Redis µs/ded | stockd + Redis | (during the load alone) | MariaDB µs/ded | RabbitMQ µs/ded | load generator µs/ded | Req/take | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, sr := range d.ScaleRows {
		a := d.scaleAggregate(sr.ID)
		if a == nil {
			continue
		}
		name := sr.Name
		if !a.settledAll {
			name += " (**write-back not drained**)"
		}
		p("| %s | %s | %s | %s | %s | **%s** | %s | %s | %s | %s | %s | %d |\n", name, FmtInt(a.thr), fmtMs(a.p99), fmtUs(a.server), fmtUs(a.redis), fmtUs(a.engine()), fmtUs(a.engineLoad), fmtUs(a.mariadb), fmtUs(a.rabbitmq), fmtUs(a.loadgen), fmtBatch(a.takeCalls, a.takeReqs), a.errs)
	}
	p("\nRows: ")
	legend(p, d.ScaleRows, func(sr plan.ScaleRow) (string, string) { return sr.Name, sr.Title })
	p(". *nodes-1* is *shards-3*.\n\n")
}

// writeCapacity is the capacity projection from the stockd row's CPU.
func (d *Data) writeCapacity(p printer) {
	c := d.maxC()
	a := d.aggregate("stockd", c)
	if a == nil {
		return
	}
	us := func(k string) float64 { return a.cpuDrain[k] * 1000 } // CPU s per 1,000 → µs per 1
	st, rd, my, mq := us("server"), us("redis"), us("mariadb"), us("rabbitmq")
	if st <= 0 || rd <= 0 {
		return
	}
	const nodeCores, headroom = 8, 0.7
	p("## Capacity (projection)\n\n")
	p("**A projection from this run's figures, not a measurement.** CPU per deduction of the `stockd` row at c = %d, write-back included and drained (table above), turned into deductions per second per core; then the cores, nodes and shards that %s and %s deductions/s would need if the cost per deduction stays what it is here (the scale rows test that assumption for 1–6 shards, 1,000 SKUs and 3 nodes). Assumed: a stockd node has %d cores, and every process runs at most %.0f%% busy; a Redis shard is one core (Redis runs commands on one thread). MariaDB and RabbitMQ are the whole shared processes here (other users of the machine included).\n\n",
		c, FmtInt(1e5), FmtInt(1e6), nodeCores, 100*headroom)
	p("| Process | CPU µs per deduction | Deductions/s per core | 100,000/s needs | 1,000,000/s needs |\n|---|---|---|---|---|\n")
	need := func(rate, perDed float64) float64 { return rate * perDed / 1e6 / headroom }
	nodes := func(rate float64) string {
		cores := need(rate, st)
		return fmt.Sprintf("%.1f cores = **%s** of %d cores", cores, plural(int(math.Ceil(cores/nodeCores)), "node"), nodeCores)
	}
	shards := func(rate float64) string {
		return "**" + plural(int(math.Ceil(need(rate, rd))), "shard") + "**"
	}
	cores := func(rate, perDed float64) string { return fmt.Sprintf("%.1f cores", need(rate, perDed)) }
	p("| stockd | %s | %s | %s | %s |\n", fmtUs(st), FmtInt(1e6/st), nodes(1e5), nodes(1e6))
	p("| Redis shards | %s | %s | %s | %s |\n", fmtUs(rd), FmtInt(1e6/rd), shards(1e5), shards(1e6))
	if my > 0 {
		p("| MariaDB | %s | %s | %s | %s |\n", fmtUs(my), FmtInt(1e6/my), cores(1e5, my), cores(1e6, my))
	}
	if mq > 0 {
		p("| RabbitMQ | %s | %s | %s | %s |\n", fmtUs(mq), FmtInt(1e6/mq), cores(1e5, mq), cores(1e6, mq))
	}
	p("\nThe MariaDB and RabbitMQ rows are one primary database and one broker taking every detail; beyond the cores one server has, the write-back would have to be split (by SKU range) — the projection says how far the present design goes, not that it scales past one database.\n\n")
}

// writeProfile is stockd's CPU by part, and the take batch size.
func (d *Data) writeProfile(p printer) {
	c := d.maxC()
	if d.Profile == nil && d.aggregate("stockd", c) == nil {
		return
	}
	p("## Where stockd's CPU goes\n\n")
	if pr := d.Profile; pr != nil {
		p("A CPU profile of stockd (`GET /debug/pprof/profile?seconds=%.0f` on its admin port) during one more run of the `stockd` row's load (c = %d, %s/s; not counted in the row's medians; the profiler adds a few %% of its own). Each sample goes to the first part whose functions appear anywhere on its stack, in the order of the table.\n\n", pr.Seconds, c, FmtInt(pr.Load.Throughput()))
		if pr.Err != "" {
			p("The profile failed: %s\n\n", pr.Err)
		} else {
			p("| Part of stockd | CPU s sampled | Share |\n|---|---|---|\n")
			for _, s := range pr.Shares {
				p("| %s | %.2f | **%.0f%%** |\n", s.Part, s.Sec, 100*s.Sec/max(pr.Total, 1e-9))
			}
			p("| total | %.2f | 100%% |\n\n", pr.Total)
			p("The write-back's cost outside stockd (the Redis stream reads on the shards, RabbitMQ, MariaDB) is in the CPU tables, not here.\n\n")
			if pr.Top != "" {
				p("Top functions (flat):\n\n```\n%s\n```\n\n", pr.Top)
			}
		}
	}
	p("**Requests per take script call** (mean batch of the partitions' combiners, from stockd's `stockd_shard_take_requests_total / stockd_shard_take_calls_total`, summed over shards, around each run):\n\n| Run | Requests per take call |\n|---|---|\n")
	for _, cc := range d.Conc {
		if a := d.aggregate("stockd", cc); a != nil {
			p("| stockd row, c = %d | **%s** |\n", cc, fmtBatch(a.takeCalls, a.takeReqs))
		}
	}
	for _, cc := range d.Conc {
		if a := d.aggregate("limited", cc); a != nil {
			p("| limited row, c = %d | %s |\n", cc, fmtBatch(a.takeCalls, a.takeReqs))
		}
	}
	var hc, hr float64
	for _, h := range d.Halves {
		hc += h.M.TakeCalls
		hr += h.M.TakeReqs
	}
	if len(d.Halves) > 0 {
		p("| half of max, open loop | %s |\n", fmtBatch(hc, hr))
	}
	p("\n")
}

// writeLimitCost sets the limited row beside the stockd row at each
// concurrency both ran: what the per-user limit costs a deduction.
func (d *Data) writeLimitCost(p printer) {
	type pair struct{ st, lim *agg }
	var pairs []pair
	for _, c := range d.Conc {
		if st, lim := d.aggregate("stockd", c), d.aggregate("limited", c); st != nil && lim != nil {
			pairs = append(pairs, pair{st, lim})
		}
	}
	if len(pairs) == 0 {
		return
	}
	p("## Cost of the per-user limit\n\n")
	p("The `limited` row beside the `stockd` row: the same node, partitions, sizes and load, on a SKU with `per_user_limit` %s and requests from %s users, so that nothing is refused and the difference is the allowance alone (take the allowance, take the stock, settle the allowance). Medians of %s; CPU seconds per 1,000 deductions over the whole run, warmup included, as in the cost table; *Server + Redis* is what one deduction costs stockd and its shards. A ratio above 1× in a CPU or latency column, or below 1× in answers/s, is the price of the limit.\n\n",
		FmtInt(plan.LimitPerUser), FmtInt(plan.LimitUsers), plural(pairs[0].lim.n, "repetition"))
	p("| c | Row | Answers/s | p50 | p99 | Server CPU s | Redis CPU s | Server + Redis | Cmds/read | Requests per take call | ok / refused / errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	sum := func(a *agg) float64 { return a.cpu["server"] + a.cpu["redis"] }
	for _, pr := range pairs {
		for _, a := range []*agg{pr.st, pr.lim} {
			p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s |\n", a.c, a.sc.Name, FmtInt(a.thr), fmtMs(a.p50), fmtMs(a.p99),
				fmtSec(a.cpu["server"], true), fmtSec(a.cpu["redis"], true), fmtSec(sum(a), true), fmtPipe(a.pipe), fmtBatch(a.takeCalls, a.takeReqs),
				FmtInt(float64(a.ok)), FmtInt(float64(a.sold)), FmtInt(float64(a.errs)))
		}
		st, lim := pr.st, pr.lim
		p("| %d | **limited / stockd** | **%s** | %s | **%s** | %s | %s | **%s** | | | |\n", st.c, fmtRatio(lim.thr, st.thr), fmtRatio(lim.p50, st.p50), fmtRatio(lim.p99, st.p99),
			fmtRatio(lim.cpu["server"], st.cpu["server"]), fmtRatio(lim.cpu["redis"], st.cpu["redis"]), fmtRatio(sum(lim), sum(st)))
	}
	p("\n")
	for _, pr := range pairs {
		st, lim := pr.st, pr.lim
		if st.thr > 0 && sum(st) > 0 {
			p("At c = %d the per-user limit changed the answers per second by **%+.0f%%** (%s → %s/s) and the CPU of stockd and its shards by **%+.3g** s per 1,000 deductions (%s → %s, %s).",
				st.c, 100*(lim.thr/st.thr-1), FmtInt(st.thr), FmtInt(lim.thr), sum(lim)-sum(st), fmtSec(sum(st), true), fmtSec(sum(lim), true), fmtRatio(sum(lim), sum(st)))
		}
		if lim.sold > 0 || lim.errs > 0 {
			p(" **The limited row had %s refused answers and %s errors: it did not measure an unrefused limit.**", FmtInt(float64(lim.sold)), FmtInt(float64(lim.errs)))
		}
		p("\n\n")
	}
}

// writeMQPeer is the mqpeer row's write-back lag.
func (d *Data) writeMQPeerLag(p printer) {
	var rows []string
	for _, c := range d.Conc {
		a := d.aggregate("mqpeer", c)
		if a == nil {
			continue
		}
		lag := a.settle.Round(time.Millisecond).String()
		if !a.settledAll {
			lag = "> " + lag + " (**not drained in one run**)"
		}
		rows = append(rows, fmt.Sprintf("| %d | %s | %s | %s |", c, FmtInt(a.thr), FmtInt(a.backlog), lag))
	}
	if len(rows) == 0 {
		return
	}
	p("**mqpeer's write-back lag**: after each closed-loop `mqpeer` run the bench polls `COUNT(*)` of its orders table every 20 ms until it holds a row for every ok answer (medians of the reps; lag from the load generator's exit):\n\n")
	p("| c | Orders/s during the load | Orders not yet in MySQL when the load stopped | Lag |\n|---|---|---|---|\n%s\n\n", strings.Join(rows, "\n"))
}

// takeCostAgg is the medians of one take call cost row's runs.
type takeCostAgg struct {
	shape                   plan.TakeShape
	callsPerSec, perCall    float64
	usPerCall, usPerRequest float64
	n                       int
}

func (d *Data) takeCostAggregate(name string) *takeCostAgg {
	var rate, per, call, req []float64
	var a *takeCostAgg
	for _, r := range d.TakeCost {
		if r.Shape.Name != name || r.Calls == 0 {
			continue
		}
		if a == nil {
			a = &takeCostAgg{shape: r.Shape}
		}
		a.n++
		rate = append(rate, float64(r.Calls)/r.Elapsed.Seconds())
		per = append(per, r.PerCall())
		call = append(call, 1e6*r.RedisCPU/float64(r.Calls))
		req = append(req, 1e6*r.RedisCPU/float64(r.Requests))
	}
	if a != nil {
		a.callsPerSec, a.perCall, a.usPerCall, a.usPerRequest = Median(rate), Median(per), Median(call), Median(req)
	}
	return a
}

// writeTakeCost is what a take call costs Redis by itself, by shape.
func (d *Data) writeTakeCost(p printer) {
	if len(d.TakeCost) == 0 {
		return
	}
	p("## Cost of a take call in Redis\n\n")
	p("Every deduction is one request in a take script call; how much Redis CPU it costs depends on how many requests share the call and how many partitions they touch. These rows call Redis straight from the bench process (no HTTP, no stockd, no write-back) on a Redis of their own (AOF on, as the shards), each for %s after %s, %s, interleaved; medians. Redis CPU is `used_cpu_user + used_cpu_sys` of INFO cpu over the measured part (an AOF rewrite's child is not in it). The PING rows are the price of waking Redis up on this machine, which a call pays whatever it carries.\n\n",
		d.TakeDuration, d.Warmup/2, plural(d.Reps, "repetition"))
	p("| Row | Calls/s | Requests per call | Redis CPU µs per call | Redis CPU µs per request |\n|---|---|---|---|---|\n")
	aggs := map[string]*takeCostAgg{}
	for _, s := range plan.TakeShapes {
		a := d.takeCostAggregate(s.Name)
		if a == nil {
			continue
		}
		aggs[s.Name] = a
		p("| %s | %s | %.1f | %s | **%s** |\n", s.Name, FmtInt(a.callsPerSec), a.perCall, fmtUs(a.usPerCall), fmtUs(a.usPerRequest))
	}
	p("\nRows: ")
	legend(p, plan.TakeShapes, func(s plan.TakeShape) (string, string) { return s.Name, s.Title })
	p(".\n\n")
	lo, hi, sp := aggs["hot-8"], aggs["hot-64"], aggs["spread-64"]
	if lo == nil || hi == nil || hi.perCall <= lo.perCall {
		return
	}
	// A straight line through the two one-partition rows: a fixed cost
	// per call and a cost per request.
	perReq := (hi.usPerCall - lo.usPerCall) / (hi.perCall - lo.perCall)
	fixed := lo.usPerCall - perReq*lo.perCall
	p("A straight line through *hot-8* and *hot-64*: a call on one partition costs Redis about **%s µs** of its own plus **%s µs** per request it carries. So a deduction costs Redis at least %s µs when its call carries 3 requests, %s µs at 30.", fmtUs(fixed), fmtUs(perReq), fmtUs(fixed/3+perReq), fmtUs(fixed/30+perReq))
	if sp != nil {
		p(" In *spread-64* every request has a partition of its own: %s µs per request, %.1f× *hot-64*'s, the price of a partition visit (its state, records, pointers and stream) paid by one request instead of shared by %.0f.", fmtUs(sp.usPerRequest), sp.usPerRequest/hi.usPerRequest, hi.perCall)
	}
	p("\n\n")
}
