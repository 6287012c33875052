package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/stockd/stockd/bench/internal/report"
)

// command is how the bench was started, for the report.
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

// reportData is what the runs measured, with the settings they ran with.
func (b *bench) reportData() *report.Data {
	o := b.opt
	return &report.Data{
		Quick: o.quick, Incomplete: o.only != nil,
		Conc: o.conc, Reps: o.reps, Duration: o.duration, Warmup: o.warmup,
		LagConc: o.lagConc, LagDuration: o.lagDuration,
		ScaleReps: o.scaleReps, ScaleDuration: o.scaleDuration, ScaleSKUs: o.scaleSKUs,
		Command: b.command(), Elapsed: time.Since(b.start), Clk: b.meter.Clk,
		GateBudget: b.meter.GateBudget, GateUsed: b.meter.GateUsed,
		Machine: b.machine, Rows: b.rows(), ScaleRows: b.scaleRows,
		Runs: b.runs, Halves: b.halves, Quarters: b.quarters, Lags: b.lags, Profile: b.profile, Scale: b.scale,
		TakeCost: b.takeCost, TakeDuration: b.takeDuration(),
		Verifies: b.verifies, SoldOut: b.soldOut, MQ: b.mq, Notes: b.notes,
		HandNotes: report.HandNotes(o.out),
	}
}

// writeReport writes the report (-out), keeping its hand-written section.
func (b *bench) writeReport() error {
	return report.Write(b.opt.out, b.reportData())
}
