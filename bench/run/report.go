package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

type machineInfo struct {
	date        time.Time
	lscpu       []string
	nproc       string
	free        string
	kernel      string
	goVer       string
	redisVer    string
	mariadbVer  string
	mariadbVars []string
	rabbitVer   string
	loadavg     string
	tree        string
}

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "(" + name + ": " + err.Error() + ")"
	}
	return strings.TrimRight(string(out), " \n")
}

func (b *bench) collectMachine(ctx context.Context) machineInfo {
	m := machineInfo{date: time.Now().UTC()}
	for _, line := range strings.Split(cmdOut("lscpu"), "\n") {
		k, _, _ := strings.Cut(line, ":")
		switch strings.TrimSpace(k) {
		case "Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
			"Hypervisor vendor", "Virtualization type", "CPU max MHz", "L2 cache", "L3 cache":
			m.lscpu = append(m.lscpu, strings.Join(strings.Fields(line), " "))
		}
	}
	m.nproc = cmdOut("nproc")
	m.free = cmdOut("free", "-g")
	m.kernel = cmdOut("uname", "-r")
	m.goVer = runtime.Version()
	if v := cmdOut("go", "version"); !strings.HasPrefix(v, "(") {
		m.goVer = v
	}
	m.redisVer = cmdOut("redis-server", "--version")
	_ = b.root.QueryRowContext(ctx, "SELECT VERSION()").Scan(&m.mariadbVer)
	rows, err := b.root.QueryContext(ctx, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('max_connections','innodb_flush_log_at_trx_commit','log_bin','sync_binlog','innodb_buffer_pool_size')")
	if err == nil {
		for rows.Next() {
			var k, v string
			if rows.Scan(&k, &v) == nil {
				m.mariadbVars = append(m.mariadbVars, k+"="+v)
			}
		}
		rows.Close()
	}
	m.rabbitVer = b.rabbitVer
	m.loadavg = b.loadavg
	rev := cmdOut("git", "rev-parse", "--short", "HEAD")
	dirty := cmdOut("git", "status", "--porcelain", "--untracked-files=no")
	m.tree = "commit " + rev
	if dirty != "" && !strings.HasPrefix(dirty, "(") {
		m.tree += fmt.Sprintf(" plus uncommitted changes in %d tracked files (the bench builds the working tree)", len(strings.Split(dirty, "\n")))
	}
	return m
}

// Markers of the hand-written section of the report: the bench keeps
// whatever stands between them when it rewrites the file.
const (
	notesBegin = "<!-- hand-written: begin (make bench keeps this section) -->"
	notesEnd   = "<!-- hand-written: end -->"
)

// handNotes is the hand-written section of the existing report, or a
// placeholder.
func handNotes(path string) string {
	raw, err := os.ReadFile(path)
	if err == nil {
		s := string(raw)
		if i := strings.Index(s, notesBegin); i >= 0 {
			rest := s[i+len(notesBegin):]
			if j := strings.Index(rest, notesEnd); j >= 0 {
				return strings.Trim(rest[:j], "\n")
			}
		}
	}
	return "## Reading the numbers\n\n(Hand-written notes go here; `make bench` keeps this section.)"
}

func readLoadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// agg is a row at one concurrency over its reps.
type agg struct {
	sc                  *scenario
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

func (b *bench) aggregate(name string, c int) *agg {
	var rs []*runResult
	for _, r := range b.runs {
		if r.sc.name == name && r.c == c {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return nil
	}
	a := &agg{sc: rs[0].sc, c: c, n: len(rs), cpu: map[string]float64{}, cpuDrain: map[string]float64{}, settledAll: true}
	var backlog []float64
	var p50, p99, p999, pipe, busy, foreign, settle []float64
	cpu, drain := map[string][]float64{}, map[string][]float64{}
	for _, r := range rs {
		lg := r.lg
		a.thrs = append(a.thrs, lg.throughput())
		p50 = append(p50, lg.P50Ms)
		p99 = append(p99, lg.P99Ms)
		p999 = append(p999, lg.P999Ms)
		a.ok += lg.OK
		a.sold += lg.SoldOut
		a.errs += lg.errors()
		a.warnings += len(lg.Warnings)
		pipe = append(pipe, r.pipe)
		busy = append(busy, r.busy)
		foreign = append(foreign, r.foreign)
		units := lg.windowAnswers()
		if perDeduction(name) {
			units = float64(lg.TotalOK)
		}
		for k, v := range r.cpu {
			if units > 0 {
				cpu[k] = append(cpu[k], v/units*1000)
			}
		}
		for k, v := range r.cpuDrain {
			if units > 0 {
				drain[k] = append(drain[k], v/units*1000)
			}
		}
		if writesBack(name) {
			settle = append(settle, r.settle.Seconds())
			a.settledAll = a.settledAll && r.settled
		}
		if name == "mqpeer" {
			backlog = append(backlog, float64(r.backlog))
		}
		a.takeCalls += r.takeCalls
		a.takeReqs += r.takeReqs
	}
	a.backlog = median(backlog)
	a.thr, a.thrMin, a.thrMax = median(a.thrs), slices.Min(a.thrs), slices.Max(a.thrs)
	a.p50, a.p99, a.p999 = median(p50), median(p99), median(p999)
	a.pipe, a.busy, a.foreign = median(pipe), median(busy), median(foreign)
	a.settle = time.Duration(median(settle) * float64(time.Second))
	for k, v := range cpu {
		a.cpu[k] = median(v)
	}
	for k, v := range drain {
		a.cpuDrain[k] = median(v)
	}
	return a
}

func fmtInt(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func fmtMs(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 1:
		return strconv.FormatFloat(v, 'f', 3, 64)
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fmtRatio(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	r := a / b
	switch {
	case r < 10:
		return strconv.FormatFloat(r, 'f', 2, 64) + "×"
	case r < 100:
		return strconv.FormatFloat(r, 'f', 1, 64) + "×"
	}
	return strconv.FormatFloat(r, 'f', 0, 64) + "×"
}

// fmtSec prints CPU seconds with 3 significant digits.
func fmtSec(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	if v == 0 {
		return "0"
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func (b *bench) command() string {
	cmd := "go run ./bench/run"
	if len(b.opt.args) > 0 {
		cmd += " " + strings.Join(b.opt.args, " ")
	}
	if os.Getenv("MAKELEVEL") != "" {
		target := "make bench"
		if b.opt.quick {
			target = "make bench-quick"
		}
		return fmt.Sprintf("`%s` (which runs `%s`)", target, cmd)
	}
	return "`" + cmd + "`"
}

func (b *bench) writeReport() error {
	var w strings.Builder
	o := b.opt
	m := b.machine
	maxC := slices.Max(o.conc)
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }

	p("# stockd benchmarks\n\n")
	p("<!-- Generated by bench/run (make bench): the next run rewrites this file except the hand-written section near the end; change the generated text in bench/run/report.go. -->\n\n")
	p("Generated %s by %s in %s", m.date.Format("2006-01-02 15:04 UTC"), b.command(), time.Since(b.start).Round(time.Second))
	if o.quick {
		p(" — **quick mode: %d rep, %s runs; a smoke test, not a measurement**", o.reps, o.duration)
	}
	if o.only != nil {
		p(" — **only some rows (-only): incomplete**")
	}
	p(".\nBuilt from %s.\n\n", m.tree)
	p("Every row: %s warmup, then %s measured, at c = %s, %s, interleaved; the numbers are medians of the repetitions (throughput also min–max). See [Method](#method).\n\n",
		o.warmup, o.duration, joinInts(o.conc), plural(o.reps, "repetition"))
	var foreign []float64
	for _, r := range b.runs {
		foreign = append(foreign, r.foreign)
	}
	if f := median(foreign); f > 0.1 {
		p("**Warning: the machine was not quiet.** Processes outside the bench used a median %.2f of its %s cores during the runs (column *Others* below); the numbers are lower and noisier than on an idle machine.\n\n", f, m.nproc)
	}

	// Machine.
	p("## Machine\n\n")
	for _, l := range m.lscpu {
		p("- %s\n", l)
	}
	p("- nproc: %s\n- kernel: %s\n- load average (1/5/15 min) when the bench started: %s\n", m.nproc, m.kernel, m.loadavg)
	p("- %s; %s; MariaDB %s (%s); RabbitMQ %s\n", m.goVer, m.redisVer, m.mariadbVer, strings.Join(m.mariadbVars, ", "), m.rabbitVer)
	p("\n```\n$ free -g\n%s\n```\n\n", m.free)

	// Targets.
	p("## Targets\n\n")
	for _, t := range b.targets(maxC) {
		p("%s\n", t)
	}
	p("\n")

	// Results.
	p("## Throughput and latency\n\n")
	p("Throughput counts real outcomes only (ok or sold out) per second; errors (transport errors, and any other status, e.g. 503 after the load generator's 5 retries) never count and are listed in their own column. Latency is per request, send to answer, in ms.\n\n")
	rkey, mqp, floor := map[int]*agg{}, map[int]*agg{}, map[int]*agg{}
	for _, c := range o.conc {
		rkey[c], mqp[c], floor[c] = b.aggregate("rediskey", c), b.aggregate("mqpeer", c), b.aggregate("floor", c)
	}
	thrOf := func(a *agg) float64 {
		if a == nil {
			return 0
		}
		return a.thr
	}
	for _, c := range o.conc {
		p("### c = %d\n\n", c)
		p("| Row | Answers/s median (min–max) | p50 | p99 | p99.9 | vs rediskey | vs mqpeer | vs floor | ok / sold out / errors |\n")
		p("|---|---|---|---|---|---|---|---|---|\n")
		for _, sc := range b.rows() {
			a := b.aggregate(sc.name, c)
			if a == nil {
				continue
			}
			errs := fmtInt(float64(a.errs))
			if a.errs > 0 {
				errs = "**" + errs + "**"
			}
			p("| %s | %s (%s–%s) | %s | %s | %s | %s | %s | %s | %s / %s / %s |\n",
				sc.name, fmtInt(a.thr), fmtInt(a.thrMin), fmtInt(a.thrMax), fmtMs(a.p50), fmtMs(a.p99), fmtMs(a.p999),
				fmtRatio(a.thr, thrOf(rkey[c])), fmtRatio(a.thr, thrOf(mqp[c])), fmtRatio(a.thr, thrOf(floor[c])),
				fmtInt(float64(a.ok)), fmtInt(float64(a.sold)), errs)
		}
		p("\n")
	}
	p("Rows: ")
	for i, sc := range b.rows() {
		if i > 0 {
			p("; ")
		}
		p("**%s** = %s", sc.name, sc.title)
	}
	p(".\n\n")

	// Cost.
	p("## CPU cost and pipelining\n\n")
	p("CPU seconds per 1,000 answers (for `stockd` and `limited`: per 1,000 deductions), from `/proc/<pid>/stat` (utime+stime, %g ticks/s) over the whole run, warmup included, divided by the answers of that window. Medians of the repetitions. *Server* is stockd or the baseline process; *Redis* is stockd's 3 shards (or the baseline's one Redis); MariaDB and RabbitMQ are the shared services (whole process). *Busy* is the machine's CPU use (all %s cores) during the run; *Others* is the CPU that processes outside the bench used meanwhile, in cores (busy time minus the bench's processes, the load generator and irq/softirq time; approximate). *Cmds/read* is Redis `total_commands_processed` / `total_reads_processed` (INFO stats, deltas over the run, summed over the instances): the auto-pipelining depth.\n\n", b.clk, m.nproc)
	p("| Row | c | Server | Redis | MariaDB | RabbitMQ | Load generator | Busy | Others | Cmds/read |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, c := range o.conc {
		for _, sc := range b.rows() {
			a := b.aggregate(sc.name, c)
			if a == nil {
				continue
			}
			get := func(k string) string { v, ok := a.cpu[k]; return fmtSec(v, ok) }
			pipe := "–"
			if a.pipe > 0 {
				pipe = strconv.FormatFloat(a.pipe, 'f', 1, 64)
			}
			p("| %s | %d | %s | %s | %s | %s | %s | %.0f%% | %.2f | %s |\n", sc.name, c, get("server"), get("redis"), get("mariadb"), get("rabbitmq"), get("loadgen"), 100*a.busy, a.foreign, pipe)
		}
	}
	p("\n")
	if b.wants("stockd") || b.wants("limited") || b.wants("mqpeer") {
		p("The rows with a write-back (stockd, limited, mqpeer) with it finished: CPU seconds per 1,000 deductions (mqpeer: per 1,000 answers) from the start of the run until MySQL held every detail or order row of it (the write-back's tail after the load stopped included), and how long that tail took:\n\n")
		p("| Row | c | Server | Redis | MariaDB | RabbitMQ | write-back drained after the load |\n|---|---|---|---|---|---|---|\n")
		for _, name := range []string{"stockd", "limited", "mqpeer"} {
			for _, c := range o.conc {
				a := b.aggregate(name, c)
				if a == nil {
					continue
				}
				get := func(k string) string { v, ok := a.cpuDrain[k]; return fmtSec(v, ok) }
				drained := a.settle.Round(10 * time.Millisecond).String()
				if !a.settledAll {
					drained += " (**not drained in one run**)"
				}
				p("| %s | %d | %s | %s | %s | %s | %s |\n", name, c, get("server"), get("redis"), get("mariadb"), get("rabbitmq"), drained)
			}
		}
		p("\n")
		var idle []float64
		for _, r := range b.runs {
			if r.sc.mode != "" && r.lg.DurationS > 0 {
				elapsed := r.lg.exited.Sub(r.lg.started).Seconds()
				idle = append(idle, r.cpu["stockd_idle"]/elapsed)
			}
		}
		if len(idle) > 0 {
			p("During the baseline rows stockd and its shards stay up and idle; their background work (stream polls, sweeps, reloads, gossip) used a median %.1f%% of one core then.\n\n", 100*median(idle))
		}
	}

	b.writeLimitCost(p)

	// Half max.
	if len(b.halves) > 0 {
		var p50, p99, p999, ach, lag, busy, foreign []float64
		var errs uint64
		var srv, red, pipe []float64
		for _, h := range b.halves {
			busy = append(busy, h.m.busy)
			foreign = append(foreign, h.m.foreign)
			pipe = append(pipe, h.m.pipe)
			if n := float64(h.lg.TotalOK); n > 0 {
				srv = append(srv, h.m.cpu["server"]/n*1000)
				red = append(red, h.m.cpu["redis"]/n*1000)
			}
			p50 = append(p50, h.lg.P50Ms)
			p99 = append(p99, h.lg.P99Ms)
			p999 = append(p999, h.lg.P999Ms)
			ach = append(ach, float64(h.lg.Requests)/max(h.lg.DurationS, 1e-9))
			lag = append(lag, h.lg.SendLagP99Ms)
			errs += h.lg.errors()
		}
		p("## p99 at half of stockd's maximum throughput\n\n")
		p("Open loop (`loadgen -rate`), c = %d workers, rate = 50%% of stockd's median throughput at c = %d = **%s/s**; %s of %s (after %s warmup), medians. Latency counts from the intended send time whenever every worker was busy (no coordinated omission).\n\n",
			maxC, maxC, fmtInt(b.halves[0].rate), plural(len(b.halves), "repetition"), o.duration, o.warmup)
		p("| Rate asked | Achieved | p50 | p99 | p99.9 | generator send lag p99 | errors | Busy | Others |\n|---|---|---|---|---|---|---|---|---|\n")
		p("| %s/s | %s/s | %s | **%s** | %s | %s | %d | %.0f%% | %.2f |\n\n", fmtInt(b.halves[0].rate), fmtInt(median(ach)), fmtMs(median(p50)), fmtMs(median(p99)), fmtMs(median(p999)), fmtMs(median(lag)), errs, 100*median(busy), median(foreign))
		var fp50, fp99, fp999, flag []float64
		for _, h := range b.halves {
			if h.floor != nil {
				fp50 = append(fp50, h.floor.P50Ms)
				fp99 = append(fp99, h.floor.P99Ms)
				fp999 = append(fp999, h.floor.P999Ms)
				flag = append(flag, h.floor.SendLagP99Ms)
			}
		}
		if len(fp99) > 0 {
			p("The same open loop (rate, workers, duration) against the HTTP floor right after each stockd run, as a reference for what the machine and the load generator alone add: p50 %s, p99 **%s**, p99.9 %s, generator send lag p99 %s (medians).\n\n",
				fmtMs(median(fp50)), fmtMs(median(fp99)), fmtMs(median(fp999)), fmtMs(median(flag)))
		}
		if st := b.aggregate("stockd", maxC); st != nil && len(srv) > 0 {
			p("At this rate stockd used %s CPU s per 1,000 deductions and its Redis shards %s, at %.1f Redis commands per socket read (closed loop at c = %d: %s, %s and %.1f).",
				fmtSec(median(srv), true), fmtSec(median(red), true), median(pipe), maxC, fmtSec(st.cpu["server"], true), fmtSec(st.cpu["redis"], true), st.pipe)
			if median(srv)+median(red) > 1.1*(st.cpu["server"]+st.cpu["redis"]) {
				p(" With less load there is less batching, so half the rate costs more than half the CPU.")
			}
			p("\n\n")
		}
		p("*Generator send lag* is how late the load generator itself sent (its timer and scheduling, on the same cores): a large one means the machine, not only stockd, was behind.\n\n")
	}

	// Lag.
	if len(b.lags) > 0 {
		var lags, backlog, thr []float64
		for _, l := range b.lags {
			lags = append(lags, l.lag.Seconds())
			backlog = append(backlog, float64(l.backlog))
			thr = append(thr, l.lg.throughput())
		}
		p("## Write-back lag\n\n")
		p("A fresh SKU (%d partitions, chunk %d) under full closed-loop load, c = %d, for %s; then the load stops and the bench polls `SELECT COUNT(*) FROM deductions WHERE sku = ?` every 10 ms until it reaches the number of ok answers. Lag = from the load generator's exit (a few ms after the last answer) until MySQL holds every detail. %s.\n\n",
			hotParts, hotChunk, o.lagConc, o.lagDuration, plural(len(b.lags), "repetition"))
		p("| Rep | Deductions | Deductions/s | Details not yet in MySQL when the load stopped | Lag |\n|---|---|---|---|---|\n")
		for _, l := range b.lags {
			lag := l.lag.Round(time.Millisecond).String()
			if !l.ok {
				lag = "> " + lag + " (**not drained**)"
			}
			p("| %d | %s | %s | %s | %s |\n", l.rep, fmtInt(float64(l.lg.TotalOK)), fmtInt(l.lg.throughput()), fmtInt(float64(l.backlog)), lag)
		}
		p("| **median** | | %s | %s | **%s** |\n\n", fmtInt(median(thr)), fmtInt(median(backlog)), time.Duration(median(lags)*float64(time.Second)).Round(time.Millisecond))
	}

	if len(b.lags) == 0 && b.aggregate("mqpeer", maxC) != nil {
		p("## Write-back lag\n\n")
	}
	b.writeMQPeerLag(p)
	b.writeProfile(p)
	b.writeScale(p)
	b.writeCapacity(p)

	// Checks.
	p("## Side checks\n\n")
	if b.wants("soldout") {
		p("- Sell-out before the rows: `%s` (%d units) sold %d units in %d run(s) of the load generator (with `-total %d`: an oversell fails the run); the admin API then said sold_out=%v.\n",
			soldSKU, soldTotal, b.soldOut.units, b.soldOut.runs, soldTotal, b.soldOut.soldOutOK)
	}
	for _, v := range b.verifies {
		st := "ok"
		switch {
		case v.skipped:
			st = "**" + v.raw + "**"
		case !v.ok:
			st = "**FAILED**: " + v.raw
		}
		where := "at the end"
		if v.row != "" {
			where = "on the " + v.row + " cluster after its runs"
		}
		p("- `GET /admin/skus/%s/verify` %s (conservation check): %s\n", v.sku, where, st)
	}
	dups, overs, nruns := b.safetyTotals()
	p("- Duplicate reservations seen by the load generator over all %d runs (rows, profile, half max, lag, scale rows): %d; runs with an oversell: %d.\n", nruns, dups, overs)
	if b.mqAcked > 0 {
		if b.mqPurged {
			p("- mqpeer: a backlog was purged during the run (see the notes): its order rows are not checked against its ok answers.\n")
		} else {
			st := "ok"
			if b.mqRows != b.mqAcked || b.mqDistinct != b.mqRows {
				st = "**MISMATCH**"
			}
			p("- mqpeer: %s order rows (%s distinct request ids) in MySQL at the end for %s ok answers over all its runs: %s.\n", fmtInt(float64(b.mqRows)), fmtInt(float64(b.mqDistinct)), fmtInt(float64(b.mqAcked)), st)
		}
	}
	if len(b.notes) > 0 {
		p("\nNotes from this run:\n\n")
		for _, n := range b.notes {
			p("- %s\n", n)
		}
	}
	var warns []string
	for _, r := range b.runs {
		for _, wn := range r.lg.Warnings {
			warns = append(warns, fmt.Sprintf("%s c=%d rep %d: %s", r.sc.name, r.c, r.rep, wn))
		}
	}
	for _, h := range b.halves {
		for _, wn := range h.lg.Warnings {
			warns = append(warns, fmt.Sprintf("half max rep %d: %s", h.rep, wn))
		}
	}
	if len(warns) > 0 {
		p("\nLoad generator warnings:\n\n")
		for _, wn := range warns {
			p("- %s\n", wn)
		}
	}
	p("\n")

	b.writeMethod(p)

	// The hand-written part survives regeneration.
	p("%s\n%s\n%s\n\n", notesBegin, handNotes(o.out), notesEnd)

	// Raw.
	p("## All runs\n\n")
	p("In the order they ran. Throughput = (ok + sold out) / measured seconds.\n\n")
	p("| Rep | Row | c | Answers/s | p50 | p99 | p99.9 | max | ok | sold out | errors | server CPU s | Busy | Others | Cmds/read | write-back drained |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range b.runs {
		pipe, drained := "–", "–"
		if r.pipe > 0 {
			pipe = strconv.FormatFloat(r.pipe, 'f', 1, 64)
		}
		if writesBack(r.sc.name) {
			drained = r.settle.Round(10 * time.Millisecond).String()
			if !r.settled {
				drained = "not drained"
			}
		}
		p("| %d | %s | %d | %s | %s | %s | %s | %s | %d | %d | %d | %.2f | %.0f%% | %.2f | %s | %s |\n",
			r.rep, r.sc.name, r.c, fmtInt(r.lg.throughput()), fmtMs(r.lg.P50Ms), fmtMs(r.lg.P99Ms), fmtMs(r.lg.P999Ms), fmtMs(r.lg.MaxMs),
			r.lg.OK, r.lg.SoldOut, r.lg.errors(), r.cpu["server"], 100*r.busy, r.foreign, pipe, drained)
	}
	for _, r := range b.scaleRuns {
		p("| %d | scale %s | %d | %s | %s | %s | %s | %s | %d | %d | %d | %.2f | %.0f%% | %.2f | %s | %s |\n",
			r.rep, r.row.name, slices.Max(o.conc), fmtInt(r.lg.throughput()), fmtMs(r.lg.P50Ms), fmtMs(r.lg.P99Ms), fmtMs(r.lg.P999Ms), fmtMs(r.lg.MaxMs),
			r.lg.OK, r.lg.SoldOut, r.lg.errors(), r.m.cpu["server"], 100*r.m.busy, r.m.foreign, fmtPipe(r.m.pipe), r.settle.Round(10*time.Millisecond))
	}
	for _, h := range b.halves {
		p("| %d | half max (rate %s/s) | %d | %s | %s | %s | %s | %s | %d | %d | %d | – | – | – | – | %s |\n",
			h.rep, fmtInt(h.rate), slices.Max(o.conc), fmtInt(h.lg.throughput()), fmtMs(h.lg.P50Ms), fmtMs(h.lg.P99Ms), fmtMs(h.lg.P999Ms), fmtMs(h.lg.MaxMs),
			h.lg.OK, h.lg.SoldOut, h.lg.errors(), h.settle.Round(10*time.Millisecond))
		if f := h.floor; f != nil {
			p("| %d | floor at the same rate | %d | %s | %s | %s | %s | %s | %d | %d | %d | – | – | – | – | – |\n",
				h.rep, slices.Max(o.conc), fmtInt(f.throughput()), fmtMs(f.P50Ms), fmtMs(f.P99Ms), fmtMs(f.P999Ms), fmtMs(f.MaxMs),
				f.OK, f.SoldOut, f.errors())
		}
	}
	p("\n")

	if dir := filepath.Dir(o.out); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(o.out, []byte(w.String()), 0o644)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

func joinInts(xs []int) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.Itoa(x))
	}
	return strings.Join(s, " and ")
}

// targets checks the goals against the medians.
func (b *bench) targets(maxC int) []string {
	var out []string
	mark := func(ok bool, have bool, text string) {
		switch {
		case !have:
			out = append(out, "- ⬜ not measured: "+text)
		case ok:
			out = append(out, "- ✅ met: "+text)
		default:
			out = append(out, "- ❌ not met: "+text)
		}
	}
	st := b.aggregate("stockd", maxC)
	ratio := func(base string, c int, want float64, label string, row *agg) {
		a := b.aggregate(base, c)
		name := "stockd"
		if row != nil {
			name = row.sc.name
		}
		if row == nil || a == nil || a.thr == 0 {
			mark(false, false, fmt.Sprintf("%s ≥ %g× %s at c = %d", name, want, label, c))
			return
		}
		r := row.thr / a.thr
		mark(r >= want, true, fmt.Sprintf("%s ≥ %g× %s at c = %d: %s vs %s answers/s = **%s**", name, want, label, c, fmtInt(row.thr), fmtInt(a.thr), fmtRatio(row.thr, a.thr)))
	}
	ratio("rediskey", maxC, 1.0, "rediskey (one Redis key, no write-back)", st)
	ratio("floor", maxC, 0.5, "HTTP floor", st)
	ratio("mqpeer", maxC, 2, "mqpeer (Redis key + RabbitMQ + MySQL consumer)", st)
	if len(b.halves) > 0 {
		var p99, fp99 []float64
		for _, h := range b.halves {
			p99 = append(p99, h.lg.P99Ms)
			if h.floor != nil {
				fp99 = append(fp99, h.floor.P99Ms)
			}
		}
		v := median(p99)
		floorP99 := "not measured"
		if len(fp99) > 0 {
			floorP99 = fmtMs(median(fp99)) + " ms"
		}
		mark(v <= 5, true, fmt.Sprintf("p99 ≤ 5 ms at half of stockd's max throughput (%s/s, open loop): **%s ms**; the HTTP floor at the same rate: %s", fmtInt(b.halves[0].rate), fmtMs(v), floorP99))
	} else {
		mark(false, false, "p99 ≤ 5 ms at half of max throughput")
	}
	for _, c := range b.opt.conc {
		ratio("floor", c, 0.9, "HTTP floor", b.aggregate("soldout", c))
	}
	if len(b.lags) > 0 {
		var lags []float64
		allOK := true
		for _, l := range b.lags {
			lags = append(lags, l.lag.Seconds())
			allOK = allOK && l.ok
		}
		v := median(lags)
		mark(v < 2 && allOK, true, fmt.Sprintf("write-back lag < 2 s: **%s** (median of %d)", time.Duration(v*float64(time.Second)).Round(time.Millisecond), len(lags)))
	} else {
		mark(false, false, "write-back lag < 2 s")
	}
	dups, overs, nruns := b.safetyTotals()
	failed, skipped := 0, 0
	for _, v := range b.verifies {
		switch {
		case v.skipped:
			skipped++
		case !v.ok:
			failed++
		}
	}
	failed += skipped // not proven either
	verified := failed == 0
	if b.soldOut.units > soldTotal {
		overs++
	}
	mark(dups == 0 && overs == 0 && verified, nruns > 0, fmt.Sprintf("zero oversell and zero duplicate reservations in every run: **%d** duplicates, **%d** runs with an oversell over %d runs; conservation check (`verify`) ok on %d of %d SKUs, %d not checked because their write-back had not drained (see Side checks)", dups, overs, nruns, len(b.verifies)-failed, len(b.verifies), skipped))
	b.scaleTargets(mark)
	return out
}

// safetyTotals adds up the load generator's duplicate reservations and
// oversold runs over every run of the bench.
func (b *bench) safetyTotals() (dups, overs, runs int) {
	var all []*lgResult
	for _, r := range b.runs {
		all = append(all, r.lg)
	}
	for _, h := range b.halves {
		all = append(all, h.lg)
	}
	for _, l := range b.lags {
		all = append(all, l.lg)
	}
	for _, r := range b.scaleRuns {
		all = append(all, r.lg)
	}
	if b.profile != nil {
		all = append(all, b.profile.lg)
	}
	for _, lg := range all {
		dups += int(lg.DupReservations)
		if lg.Oversold {
			overs++
		}
	}
	return dups, overs, len(all)
}

func (b *bench) writeMethod(p func(string, ...any)) {
	o := b.opt
	p("## Method\n\n")
	p("`make bench` builds `bin/stockd`, `bin/loadgen` and `bin/baseline` from the working tree, starts everything it measures itself, runs the rows below, writes this file, and removes what it started (processes, the MySQL databases `stockd_bench_<id>`, `stockd_bench_base_<id>` and one `stockd_bench_<id>_<row>` per scale row, the RabbitMQ queues `stockd.bench.<id>`, `stockd.bench.<id>.mqpeer` and one per scale row, with their `.dlq`, temp directories), also on failure or Ctrl-C. `make bench-quick` does the same with 1 repetition of short runs and writes `/tmp/BENCHMARKS.quick.md`.\n\n")
	p("**The rows.** Every row is the same HTTP request, `POST /v1/deduct` with `{\"sku\",\"qty\":1,\"request_id\"}` (a unique request id per request; the `limited` row adds a `user_id`), answered `200 {\"status\":\"ok\",\"reservation\":…,\"sku\":…,\"qty\":…}` or `409 {\"status\":\"sold_out\"}`. The baselines are one binary, `bench/baseline`, with stockd's fasthttp server settings and stockd's request struct parsed with `encoding/json`, so that rows 1–5 differ from stockd only in the stock engine:\n\n")
	p("1. **rowlock** — MySQL pessimistic lock: `BEGIN; SELECT stock … WHERE id = 1 FOR UPDATE; UPDATE … SET stock = stock - ?; COMMIT` on one row.\n")
	p("2. **condupdate** — MySQL `UPDATE … SET stock = stock - ? WHERE id = 1 AND stock >= ?`, autocommit; 1 row affected = ok.\n")
	p("3. **rediskey** — one Redis key, a Lua check-and-decrement script (`GET`, compare, `DECRBY`) through rueidis with auto-pipelining, on a Redis of its own (same settings as stockd's shards).\n")
	p("4. **mqpeer** — what most teams build instead of stockd: the same Redis (its own instance) with a Lua script that checks a dedup record of the request id (answering a retry with its first outcome), checks and decrements one stock key and records the outcome; every ok order is published to a durable RabbitMQ queue as a persistent message with publisher confirms (4 channels in confirm mode; the answer waits for the broker's ack); 32 consumers (prefetch 4 each) insert one order row per message into MySQL, each in its own transaction, with a unique key on the request id (a redelivery is a duplicate key, acked without a second row), and ack after the commit. The consumers run while the load runs, in the same process; the bench waits for them to drain before the next run (its lag is reported).\n")
	p("5. **floor** — fasthttp that reads the body and answers ok without parsing or any work: the HTTP floor of this machine and load generator.\n")
	p("6. **stockd** — one node, one hot SKU: %s units (never sells out), %d partitions on 3 Redis shards, chunk %d, threshold %d. Every deduction is written back (Redis stream → RabbitMQ → MySQL) while the load runs.\n", fmtInt(hotTotal), hotParts, hotChunk, hotThreshold)
	p("7. **limited** — the same node on a third SKU, sized as the hot one (%s units, %d partitions, chunk %d, threshold %d) but created with `\"per_user_limit\": %d`; every request carries a `user_id`, request k user `u<k mod %s>` (`loadgen -users %d`), so no user comes near the limit and nothing is refused: the row measures what the allowance costs (take the allowance, take the stock, settle the allowance). %s\n", fmtInt(hotTotal), hotParts, hotChunk, hotThreshold, limitPerUser, fmtInt(limitUsers), limitUsers, limitCText())
	p("8. **soldout** — the same node on a second SKU (%d units) that was sold out before the first row; every answer is `sold_out`.\n\n", soldTotal)
	p("**Services.** stockd gets 3 `redis-server` processes of its own on free ports (`--appendonly yes --appendfsync everysec --save \"\"`, own temp directories), a fresh MySQL database, its own RabbitMQ queue and Redis key prefix, and is configured through `STOCKD_*` variables (log level warn); the `rediskey` baseline gets a fourth Redis. MariaDB and RabbitMQ are the machine's shared services, used as they are (not reconfigured). The MySQL baselines use a bounded pool of %d connections: MariaDB's `max_connections` (151) is below 256, so at c = 256 a handler waits for a free connection instead of failing, and every request gets a real outcome. The driver interpolates the arguments client-side, one round trip per statement (its default, a server-side prepare, execute and close per statement, makes both MySQL baselines slower; `bin/baseline -interpolate=false` has it). MariaDB commits with its settings above (`innodb_flush_log_at_trx_commit=1`: a redo-log flush per commit, grouped).\n\n", baselineConns)
	p("**Load.** `bin/loadgen`, closed loop: c workers, each with its own keep-alive connection, sending back to back; %s warmup (not counted), then %s measured. Throughput = (ok + sold out) / measured time; errors never count (the load generator retries a 503 up to 5 times with the same request id; only the final answer counts). Latency is send-to-answer of each request, in a log-linear histogram (≤ 0.4%% error).\n\n", o.warmup, o.duration)
	p("**Repetitions.** %d. Rows are interleaved: repetition 1 of every row at every concurrency, then repetition 2, …, so that machine noise hits all rows alike. Each baseline process is started before its run and stopped after it. After every stockd run the bench waits until MySQL holds every detail (the `reserved` counter of the SKU, moved in the transaction that inserts the details) before the next run starts, so no row pays for another row's write-back; the write-back of a stockd run is thus measured with it (during the load, and its tail in the drain table).\n\n", o.reps)
	p("**One machine.** Everything — load generator, servers, Redis, MariaDB, RabbitMQ — shares the same %s cores. The numbers are what this machine does with the load generator on it, not what a server does alone: the load generator's own CPU is in the cost table, and *Busy* shows how close to saturation the machine was. Other processes on the machine are not under the bench's control: before each run it waits (at most 5 s per run and %s in all; this run waited %s) until processes outside the bench use less than %.1f cores, and the *Others* column of the cost table shows what they used during the run.\n\n", b.machine.nproc, b.gateBudget, b.gateUsed.Round(100*time.Millisecond), quietCores)
	p("**p99 at half max.** After the closed-loop rows: open loop (`loadgen -rate`) at 50%% of stockd's median throughput at the highest concurrency, with that many workers, %d × (%s warmup + %s), each followed by the same open loop against the floor server as a reference.\n\n", o.reps, o.warmup, o.duration)
	p("**Write-back lag.** %d × a fresh SKU under full closed-loop load (c = %d, %s), then polling `COUNT(*)` of its details in MySQL every 10 ms until it reaches the ok answers; lag is measured from the load generator's exit.\n\n", o.reps, o.lagConc, o.lagDuration)
	p("**Cost and pipelining.** CPU from `/proc/<pid>/stat` before and after each run (10 ms ticks); the load generator's from its rusage. Redis commands per socket read from `INFO stats`.\n\n")
	p("**Profile.** After the rows, one more run of the `stockd` row's load at the highest concurrency while `GET /debug/pprof/profile` samples stockd for the measured window; `go tool pprof -traces` gives every sample's stack, and each sample is attributed to the first part (write-back, refills, hot path, Redis client goroutines, GC, other) with a function on its stack.\n\n")
	p("**Scale rows.** Last, %d rows, each a cluster of its own with its own Redis processes (shared by the scale rows, idle between them), database, queue and key prefix: %d × (%s warmup + %s) at the highest concurrency, run one row after the other (not interleaved: a cluster is started once per row). The load generator spreads its connections over the nodes' addresses (`-url a,b,c`) and, for the many-SKU row, its requests over the SKUs (`-skus N`, request k to SKU k mod N; N = %d in this run, `-scale-skus`). Before the load every node must answer one probe deduction on the last SKU created.\n\n", len(scaleRows), o.scaleReps, o.warmup, o.scaleDuration, o.scaleSKUs)
}

func fmtPipe(v float64) string {
	if v <= 0 {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}
