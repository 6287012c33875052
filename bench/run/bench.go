package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
	"github.com/stockd/stockd/bench/internal/report"
)

// bench is one run of the orchestrator: the services it uses (services.go:
// temp directory, MySQL, RabbitMQ, Redis), the launcher of what it
// measures (stockd.go: binaries, stockd nodes, baselines, the nodes' HTTP
// client), and what it measured,
// in report's types so that the report is rendered from them. Its own
// methods are the runs, by file: measure.go (one measured loadgen run),
// runs.go (the rows, half max, write-back lag, checks), profile.go,
// scale.go (the scale rows' clusters) and report.go (the report's data).
type bench struct {
	*life
	*services
	*launcher
	opt options

	stockd     *proc // the main node
	hot, admin string
	loadavg    string // at the start
	scaleRows  []plan.ScaleRow

	meter measure.Meter

	hotAcked   int64 // ok units on the hot SKU, warmups included, all runs
	limitAcked int64 // the same on the limited row's SKU

	drainBroken bool // a write-back drain timed out once: wait less from then on

	// What the runs measured.
	machine  report.Machine
	soldOut  report.SoldOut
	mq       report.MQCheck
	runs     []*report.Run
	halves   []*report.Half
	quarters []*report.Half
	lags     []*report.Lag
	profile  *measure.Profile
	scale    []*report.ScaleRun
	takeCost []*report.TakeCost
	verifies []report.Verify
}

// life is what every part of a run shares: its log, its notes for the
// report, and the cleanups of what it started.
type life struct {
	start    time.Time
	cleanups []func()
	notes    []string
}

func newBench(opt options) *bench {
	lf := &life{start: time.Now()}
	sv := &services{life: lf, mysqlBase: opt.mysqlBase, amqpURL: opt.amqpURL, keep: opt.keep}
	b := &bench{life: lf, services: sv, opt: opt}
	b.launcher = &launcher{life: lf, services: sv, api: nodeClient{http: &http.Client{Timeout: 30 * time.Second}}}
	b.loadavg = measure.LoadAvg()
	b.scaleRows = plan.ScaleRows(opt.scaleSKUs)
	b.meter = measure.Meter{Clk: 100, GateBudget: 120 * time.Second, Logf: b.logf}
	if opt.quick {
		b.meter.GateBudget = 15 * time.Second
	}
	return b
}

func (l *life) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[bench %6.1fs] %s\n", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...))
}

// note logs s and keeps it for the report's notes.
func (l *life) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	l.notes = append(l.notes, s)
	l.logf("NOTE: %s", s)
}

func (l *life) onCleanup(f func()) { l.cleanups = append(l.cleanups, f) }

// cleanup undoes everything, last started first. It runs once.
func (l *life) cleanup() {
	for i := len(l.cleanups) - 1; i >= 0; i-- {
		l.cleanups[i]()
	}
	l.cleanups = nil
}

func randHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}

func (b *bench) run(ctx context.Context) error {
	o := b.opt
	b.logf("plan: %d rows × c=%v × %d reps × (%s warmup + %s), then a profile, p99 at half max, write-back lag, and %d scale rows × %d reps × (%s + %s) at c=%d; report -> %s",
		len(b.rows()), o.conc, o.reps, o.warmup, o.duration, len(b.scaleRows), o.scaleReps, o.warmup, o.scaleDuration, slices.Max(o.conc), o.out)
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
	if err := b.runRows(ctx); err != nil {
		return err
	}
	if b.wants("stockd") {
		if err := b.stockdExtras(ctx); err != nil {
			return err
		}
	}
	if b.wants("scale") {
		if err := b.runScaleRows(ctx); err != nil {
			return err
		}
	}
	if b.wants("takecost") {
		if err := b.runTakeCost(ctx); err != nil {
			return err
		}
	}
	b.verifyAll(ctx)
	return b.writeReport()
}

// runRows runs every row at every concurrency, reps interleaved.
func (b *bench) runRows(ctx context.Context) error {
	maxC := slices.Max(b.opt.conc)
	for rep := 1; rep <= b.opt.reps; rep++ {
		for _, sc := range b.rows() {
			for _, c := range b.opt.conc {
				if sc.MaxCOnly && c != maxC {
					continue
				}
				r, err := b.runRow(ctx, sc, c, rep)
				if err != nil {
					return fmt.Errorf("%s c=%d rep %d: %w", sc.Name, c, rep, err)
				}
				b.runs = append(b.runs, r)
			}
		}
	}
	return nil
}

// stockdExtras are the stockd row's further runs: a profile, p99 at half
// max, and the write-back lag.
func (b *bench) stockdExtras(ctx context.Context) error {
	if err := b.profileRun(ctx); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if err := b.halfMax(ctx); err != nil {
		return err
	}
	for rep := 1; rep <= b.opt.reps; rep++ {
		l, err := b.lagRun(ctx, rep)
		if err != nil {
			return fmt.Errorf("write-back lag rep %d: %w", rep, err)
		}
		b.lags = append(b.lags, l)
	}
	return nil
}

func (b *bench) wants(name string) bool { return b.opt.only == nil || b.opt.only[name] }

func (b *bench) rows() []*plan.Scenario {
	var out []*plan.Scenario
	for i := range plan.Scenarios {
		if b.wants(plan.Scenarios[i].Name) {
			out = append(out, &plan.Scenarios[i])
		}
	}
	return out
}
