package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
)

func TestMedianAndFormats(t *testing.T) {
	if m := Median([]float64{3, 1, 2}); m != 2 {
		t.Fatalf("median %v", m)
	}
	if m := Median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatalf("median %v", m)
	}
	if s := FmtInt(1234567.4); s != "1,234,567" {
		t.Fatalf("FmtInt %q", s)
	}
	if s := fmtRatio(41, 1); s != "41.0×" {
		t.Fatalf("fmtRatio %q", s)
	}
	if s := fmtRatio(1, 0); s != "–" {
		t.Fatalf("fmtRatio by zero %q", s)
	}
}

func TestHandNotesSurvive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "B.md")
	if s := HandNotes(path); !strings.Contains(s, "Hand-written notes go here") {
		t.Fatalf("placeholder %q", s)
	}
	os.WriteFile(path, []byte("# x\n\n"+NotesBegin+"\n## Mine\n\nkept\n"+NotesEnd+"\n\nrest"), 0o644)
	if s := HandNotes(path); s != "## Mine\n\nkept" {
		t.Fatalf("notes %q", s)
	}
	// A rewrite keeps them.
	d := fixture()
	d.HandNotes = HandNotes(path)
	if err := Write(path, d); err != nil {
		t.Fatal(err)
	}
	if s := HandNotes(path); s != "## Mine\n\nkept" {
		t.Fatalf("notes after a rewrite %q", s)
	}
}

// fixture is a quick run's data: every row at both concurrencies (limited
// at the highest only), the extra runs, the scale rows, checks and notes.
func fixture() *Data {
	d := &Data{
		Quick: true, Conc: []int{64, 256}, Reps: 1, Duration: 2 * time.Second, Warmup: 500 * time.Millisecond,
		LagConc: 64, LagDuration: 2 * time.Second, ScaleReps: 1, ScaleDuration: 1500 * time.Millisecond, ScaleSKUs: 1000,
		Command: "`go run ./bench/run -quick`", Clk: 100, GateBudget: 15 * time.Second, GateUsed: 1500 * time.Millisecond,
		Machine:   Machine{Nproc: "2"},
		ScaleRows: plan.ScaleRows(1000),
		HandNotes: "## Reading the numbers\n\n(Hand-written notes go here; `make bench` keeps this section.)",
	}
	for i := range plan.Scenarios {
		d.Rows = append(d.Rows, &plan.Scenarios[i])
	}
	lg := func(ok, sold uint64) *measure.Load {
		return &measure.Load{OK: ok, SoldOut: sold, TotalOK: ok, TotalOKUnits: ok, DurationS: 1, P99Ms: 3}
	}
	cpu := map[string]float64{"server": 0.5, "redis": 0.25, "mariadb": 0.3, "rabbitmq": 0.05, "loadgen": 0.2}
	limCPU := map[string]float64{"server": 0.6, "redis": 0.4, "mariadb": 0.3, "rabbitmq": 0.05, "loadgen": 0.2}
	for _, name := range []string{"rediskey", "mqpeer", "floor", "stockd", "limited", "soldout"} {
		for _, c := range d.Conc {
			sc := plan.ScenarioByName(name)
			if sc.MaxCOnly && c != 256 {
				continue
			}
			n := map[string]uint64{"rediskey": 20000, "mqpeer": 4000, "floor": 40000, "stockd": 21000, "limited": 16800, "soldout": 0}[name]
			r := &Run{Sc: sc, C: c, Rep: 1, Load: lg(n, 0), CPU: cpu, CPUDrain: cpu, Settled: true, TakeCalls: 100, TakeReqs: 1900}
			if name == "limited" {
				r.CPU, r.CPUDrain = limCPU, limCPU
			}
			if name == "soldout" {
				r.Load = lg(0, 38000)
			}
			d.Runs = append(d.Runs, r)
		}
	}
	d.Runs[0].Load.Warnings = []string{"a warning"}
	d.Runs[1].Settled, d.Runs[1].Pipe = false, 3.25
	d.MQ = MQCheck{Acked: 8000, Rows: 8000, Distinct: 8000}
	d.Halves = []*Half{{Rep: 1, Rate: 10500, Load: lg(10500, 0), M: &measure.Measurement{CPU: cpu, TakeCalls: 10, TakeReqs: 20, StockWaits: 3}, Floor: lg(10500, 0)}}
	d.Halves[0].Load.Warnings = []string{"half warning"}
	d.Quarters = []*Half{{Rep: 1, Rate: 5250, Load: lg(5250, 0), M: &measure.Measurement{CPU: cpu, TakeCalls: 10, TakeReqs: 40, Busy: 0.5}}}
	d.Lags = []*Lag{
		{Rep: 1, SKU: "bench-lag-1", Load: &measure.Load{OK: 900, TotalOK: 900, DurationS: 2}, Backlog: 40, Lag: 1200 * time.Millisecond, OK: true},
		{Rep: 2, SKU: "bench-lag-2", Load: &measure.Load{OK: 800, TotalOK: 800, DurationS: 2}, Backlog: 70, Lag: 3 * time.Second},
	}
	d.Profile = &measure.Profile{Load: lg(21000, 0), Seconds: 2, Total: 1, Shares: []measure.Share{{Part: measure.Parts[0].Name, Sec: 0.2}, {Part: measure.Parts[2].Name, Sec: 0.7}, {Part: measure.OtherPart, Sec: 0.1}}}
	for i := range d.ScaleRows {
		sr := &d.ScaleRows[i]
		d.Scale = append(d.Scale, &ScaleRun{Row: sr, Rep: 1, Load: lg(20000, 0), M: &measure.Measurement{CPU: cpu, TakeCalls: 10, TakeReqs: 50}, CPUDrain: cpu, Settled: true})
	}
	// Take cost: 100 µs per call at 4 requests, 300 at 32: 71.4 µs per
	// call plus 7.1 per request; spread 30 µs per request.
	for _, tc := range []struct {
		name  string
		calls int64
		reqs  int64
		cpu   float64
	}{{"ping-1", 1000, 1000, 0.04}, {"hot-8", 1000, 4000, 0.1}, {"hot-64", 1000, 32000, 0.3}, {"spread-64", 1000, 32000, 0.96}} {
		for _, s := range plan.TakeShapes {
			if s.Name == tc.name {
				d.TakeCost = append(d.TakeCost, &TakeCost{Shape: s, Rep: 1, Calls: tc.calls, Requests: tc.reqs, RedisCPU: tc.cpu, Elapsed: time.Second})
			}
		}
	}
	d.Verifies = []Verify{{SKU: "x", OK: true}, {SKU: "y", Row: "skus-1000", Skipped: true, Raw: "not checked: the write-back had not drained 35s after the last run"}}
	d.SoldOut = SoldOut{Runs: 2, Units: 2000, SoldOutOK: true}
	d.Notes = []string{"a note"}
	return d
}

// The report holds every section, table and column, the targets,
// the mqpeer row, the profile, the scale rows and the capacity projection,
// rendered from fixed data.
func TestRenderSections(t *testing.T) {
	s := Render(fixture())
	for _, want := range []string{
		// Sections, in order.
		"# stockd benchmarks", "## Machine", "## Targets", "## Throughput and latency", "### c = 64", "### c = 256",
		"## CPU cost and pipelining", "## Cost of the per-user limit", "## p99 at half of stockd's maximum throughput",
		"## Write-back lag", "## Where stockd's CPU goes", "## Scale rows", "## Cost of a take call in Redis", "## Capacity (projection)", "## Side checks",
		"Notes from this run:", "Load generator warnings:", "## Method", NotesBegin, "## Reading the numbers", NotesEnd, "## All runs",
	} {
		i := strings.Index(s, want)
		if i < 0 {
			t.Fatalf("report lacks section %q", want)
		}
		s = s[i:] // the next one must come later
	}
	s = Render(fixture())
	for _, header := range []string{
		"| Row | Answers/s median (min–max) | p50 | p99 | p99.9 | vs rediskey | vs mqpeer | vs floor | ok / sold out / errors |",
		"| Row | c | Server | Redis | MariaDB | RabbitMQ | Load generator | Busy | Others | Cmds/read |",
		"| Row | c | Server | Redis | MariaDB | RabbitMQ | write-back drained after the load |",
		"| c | Row | Answers/s | p50 | p99 | Server CPU s | Redis CPU s | Server + Redis | Cmds/read | Requests per take call | ok / refused / errors |",
		"| Rate asked | Achieved | p50 | p99 | p99.9 | generator send lag p99 | errors | Busy | Others | AOF rewrites | stock waits | requests per take call |",
		"| Rep | Deductions | Deductions/s | Details not yet in MySQL when the load stopped | Lag |",
		"| c | Orders/s during the load | Orders not yet in MySQL when the load stopped | Lag |",
		"| Part of stockd | CPU s sampled | Share |", "| Run | Requests per take call |",
		"| Row | Deductions/s | p99 | stockd µs/ded | Redis µs/ded | stockd + Redis | (during the load alone) | MariaDB µs/ded | RabbitMQ µs/ded | load generator µs/ded | Req/take | errors |",
		"| Row | Calls/s | Requests per call | Redis CPU µs per call | Redis CPU µs per request |",
		"| Process | CPU µs per deduction | Deductions/s per core | 100,000/s needs | 1,000,000/s needs |",
		"| Rep | Row | c | Answers/s | p50 | p99 | p99.9 | max | ok | sold out | errors | server CPU s | Busy | Others | Cmds/read | write-back drained |",
	} {
		if !strings.Contains(s, "\n"+header+"\n") {
			t.Errorf("report lacks table %q", header)
		}
	}
	// The half-max row carries the stock waits of its runs.
	if !strings.Contains(s, "| 0 | 3 | 2.0 |\n") {
		t.Errorf("half-max row lacks its 3 stock waits after 0 AOF rewrites")
	}
	// CPU per 1,000 deductions of server + Redis, limited over stockd.
	perK := func(m map[string]float64, n float64) float64 { return (m["server"] + m["redis"]) / n * 1000 }
	cpu := map[string]float64{"server": 0.5, "redis": 0.25}
	limCPU := map[string]float64{"server": 0.6, "redis": 0.4}
	cpuRatio := fmtRatio(perK(limCPU, 16800), perK(cpu, 21000))
	for _, want := range []string{
		"stockd ≥ 1× rediskey", "stockd ≥ 0.5× HTTP floor", "stockd ≥ 2× mqpeer", "✅ met: stockd ≥ 2× mqpeer",
		"p99 ≤ 5 ms at half", "the HTTP floor at the same rate: 3", "soldout ≥ 0.9× HTTP floor at c = 64",
		"1 not checked", "1, 3 and 6 shards", "1,000 hot SKUs ≥ 0.8×", "1 node vs 3 nodes",
		"| mqpeer | 256 |", "mqpeer's write-back lag", "8,000 order rows (8,000 distinct request ids)",
		"**70%**", "| stockd row, c = 256 | **19.0** |",
		"| 256 | limited | 16,800 |", "| 256 | **limited / stockd** | **0.80×** |",
		"changed the answers per second by **-20%** (21,000 → 16,800/s)", "| **" + cpuRatio + "** | | | |", ", " + cpuRatio + ").", "| limited | 256 |",
		"**limited** = the stockd row on a SKU with a per-user limit", "7. **limited**", `"per_user_limit": 1000000`,
		"| skus-1000 |", "**A projection",
		"| ping-1 | 1,000 | 1.0 | 40.0 | **40.0** |", "| hot-64 | 1,000 | 32.0 | 300 | **9.4** |",
		"about **71.4 µs** of its own plus **7.1 µs** per request", "**spread-64** = take, 1,000 partitions", "30.0 µs per request, 3.2× *hot-64*'s", "| Redis shards | 11.9 |",
		"| 1 | rediskey | 64 |", "| 1 | scale nodes-3 | 256 |", "| 1 | half max (rate 10,500/s) | 256 |", "| 1 | quarter max (rate 5,250/s) | 256 |",
		"| 5,250/s | 0/s |", "| 50% | 0.00 | 0 | 0 | 4.0 |\n", "The second row is a quarter of the maximum (1 repetition, without a floor run)", "| 1 | floor at the same rate | 256 |",
		"| **median** | | 425 | 55 | **2.1s** |", "- a note", "- rediskey c=64 rep 1: a warning", "- half max rep 1: half warning",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, gone := range []string{"MySQL row lock at c", "vs row lock", "≥ 40×", "≥ 0.7×"} {
		if strings.Contains(s, gone) {
			t.Errorf("report still has the retired %q", gone)
		}
	}
}
