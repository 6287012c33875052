package report

import (
	"fmt"
	"time"

	"github.com/stockd/stockd/bench/internal/plan"
)

// targets collects the goals' lines: met, not met, or not measured.
type targets []string

func (t *targets) mark(ok, have bool, text string) {
	switch {
	case !have:
		*t = append(*t, "- ⬜ not measured: "+text)
	case ok:
		*t = append(*t, "- ✅ met: "+text)
	default:
		*t = append(*t, "- ❌ not met: "+text)
	}
}

// writeTargets checks the goals against the medians.
func (d *Data) writeTargets(p printer) {
	maxC := d.maxC()
	var t targets
	st := d.aggregate("stockd", maxC)
	d.ratioTarget(&t, "rediskey", maxC, 1.0, "rediskey (one Redis key, no write-back)", st)
	d.ratioTarget(&t, "floor", maxC, 0.5, "HTTP floor", st)
	d.ratioTarget(&t, "mqpeer", maxC, 2, "mqpeer (Redis key + RabbitMQ + MySQL consumer)", st)
	d.halfMaxTarget(&t)
	for _, c := range d.Conc {
		d.ratioTarget(&t, "floor", c, 0.9, "HTTP floor", d.aggregate("soldout", c))
	}
	d.lagTarget(&t)
	d.safetyTarget(&t)
	d.scaleTargets(&t)
	p("## Targets\n\n")
	for _, line := range t {
		p("%s\n", line)
	}
	p("\n")
}

// ratioTarget is "row ≥ want × base at c".
func (d *Data) ratioTarget(t *targets, base string, c int, want float64, label string, row *agg) {
	a := d.aggregate(base, c)
	name := "stockd"
	if row != nil {
		name = row.sc.Name
	}
	if row == nil || a == nil || a.thr == 0 {
		t.mark(false, false, fmt.Sprintf("%s ≥ %g× %s at c = %d", name, want, label, c))
		return
	}
	r := row.thr / a.thr
	t.mark(r >= want, true, fmt.Sprintf("%s ≥ %g× %s at c = %d: %s vs %s answers/s = **%s**", name, want, label, c, FmtInt(row.thr), FmtInt(a.thr), fmtRatio(row.thr, a.thr)))
}

func (d *Data) halfMaxTarget(t *targets) {
	if len(d.Halves) == 0 {
		t.mark(false, false, "p99 ≤ 5 ms at half of max throughput")
		return
	}
	var p99, fp99 []float64
	for _, h := range d.Halves {
		p99 = append(p99, h.Load.P99Ms)
		if h.Floor != nil {
			fp99 = append(fp99, h.Floor.P99Ms)
		}
	}
	v := Median(p99)
	floorP99 := "not measured"
	if len(fp99) > 0 {
		floorP99 = fmtMs(Median(fp99)) + " ms"
	}
	t.mark(v <= 5, true, fmt.Sprintf("p99 ≤ 5 ms at half of stockd's max throughput (%s/s, open loop): **%s ms**; the HTTP floor at the same rate: %s", FmtInt(d.Halves[0].Rate), fmtMs(v), floorP99))
}

func (d *Data) lagTarget(t *targets) {
	if len(d.Lags) == 0 {
		t.mark(false, false, "write-back lag < 2 s")
		return
	}
	var lags []float64
	allOK := true
	for _, l := range d.Lags {
		lags = append(lags, l.Lag.Seconds())
		allOK = allOK && l.OK
	}
	v := Median(lags)
	t.mark(v < 2 && allOK, true, fmt.Sprintf("write-back lag < 2 s: **%s** (median of %d)", time.Duration(v*float64(time.Second)).Round(time.Millisecond), len(lags)))
}

func (d *Data) safetyTarget(t *targets) {
	dups, overs, nruns := d.safetyTotals()
	failed, skipped := 0, 0
	for _, v := range d.Verifies {
		switch {
		case v.Skipped:
			skipped++
		case !v.OK:
			failed++
		}
	}
	failed += skipped // not proven either
	verified := failed == 0
	if d.SoldOut.Units > plan.SoldTotal {
		overs++
	}
	t.mark(dups == 0 && overs == 0 && verified, nruns > 0, fmt.Sprintf("zero oversell and zero duplicate reservations in every run: **%d** duplicates, **%d** runs with an oversell over %d runs; conservation check (`verify`) ok on %d of %d SKUs, %d not checked because their write-back had not drained (see Side checks)", dups, overs, nruns, len(d.Verifies)-failed, len(d.Verifies), skipped))
}

// scaleTargets checks the scale rows' goals (issue 13, item 6).
func (d *Data) scaleTargets(t *targets) {
	s1, s3, s6 := d.scaleAggregate("s1"), d.scaleAggregate("s3"), d.scaleAggregate("s6")
	if s1 != nil && s3 != nil && s6 != nil {
		sp := spread(s1.engine(), s3.engine(), s6.engine())
		t.mark(sp <= 0.15, true, fmt.Sprintf("1, 3 and 6 shards: CPU per deduction (stockd + Redis, write-back drained) within 15%%: %s / %s / %s µs, spread **%.0f%%**",
			fmtUs(s1.engine()), fmtUs(s3.engine()), fmtUs(s6.engine()), 100*sp))
	} else {
		t.mark(false, false, "1, 3 and 6 shards: CPU per deduction within 15%")
	}
	if k := d.scaleAggregate("k1000"); k != nil && s3 != nil && s3.thr > 0 {
		t.mark(k.thr >= 0.8*s3.thr, true, fmt.Sprintf("%s hot SKUs ≥ 0.8× one hot SKU (3 shards): %s vs %s deductions/s = **%s**", FmtInt(float64(k.row.SKUs)), FmtInt(k.thr), FmtInt(s3.thr), fmtRatio(k.thr, s3.thr)))
		if k.row.SKUs != 1000 {
			out := "(the issue asks for 1,000 SKUs; this run used -scale-skus " + fmt.Sprint(k.row.SKUs) + ")"
			t.mark(false, false, "1,000 hot SKUs ≥ 0.8× one hot SKU "+out)
		}
	} else {
		t.mark(false, false, "1,000 hot SKUs ≥ 0.8× one hot SKU")
	}
	if n3 := d.scaleAggregate("n3"); n3 != nil && s3 != nil {
		sp := spread(s3.engine(), n3.engine())
		t.mark(sp <= 0.15, true, fmt.Sprintf("1 node vs 3 nodes: CPU per deduction (stockd + Redis) within 15%%: %s vs %s µs, spread **%.0f%%**", fmtUs(s3.engine()), fmtUs(n3.engine()), 100*sp))
	} else {
		t.mark(false, false, "1 node vs 3 nodes: CPU per deduction within 15%")
	}
}
