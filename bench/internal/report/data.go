// Package report renders docs/BENCHMARKS.md from the data of one bench
// run. The orchestrator (bench/run) fills a Data with what it measured;
// Render turns it into Markdown, one small function per section, so that
// a new column or row is one edit in the section that shows it.
//
// The section between the hand-written markers is kept across rewrites:
// the orchestrator reads it from the old file (HandNotes) into
// Data.HandNotes.
package report

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
)

// Data is everything a report shows: the run's settings and what its runs
// measured.
type Data struct {
	// Settings (flags after -quick's defaults).
	Quick         bool
	Incomplete    bool // -only: some rows were left out
	Conc          []int
	Reps          int
	Duration      time.Duration
	Warmup        time.Duration
	LagConc       int
	LagDuration   time.Duration
	ScaleReps     int
	ScaleDuration time.Duration
	ScaleSKUs     int
	Command       string        // how the bench was started, Markdown
	Elapsed       time.Duration // the whole bench
	Clk           float64       // clock ticks per second of /proc/<pid>/stat

	GateBudget, GateUsed time.Duration // waits for a quiet machine

	Machine   Machine
	Rows      []*plan.Scenario // the rows this run ran, in order
	ScaleRows []plan.ScaleRow

	Runs     []*Run
	Halves   []*Half
	Quarters []*Half // the same open loop at a quarter of the maximum (no floor run)
	Lags     []*Lag
	Profile  *measure.Profile
	Scale    []*ScaleRun
	TakeCost []*TakeCost
	// TakeDuration is the measured time of one take cost run.
	TakeDuration time.Duration
	Verifies     []Verify
	SoldOut      SoldOut
	MQ           MQCheck
	Notes        []string

	HandNotes string // the hand-written section to keep (HandNotes)
}

// Machine is what the report says about the machine and its services.
type Machine struct {
	Date        time.Time
	Lscpu       []string
	Nproc       string
	Free        string
	Kernel      string
	GoVer       string
	RedisVer    string
	MariadbVer  string
	MariadbVars []string
	RabbitVer   string
	Loadavg     string
	Tree        string
}

// Run is one row × concurrency × rep.
type Run struct {
	Sc                  *plan.Scenario
	C, Rep              int
	Load                *measure.Load
	CPU                 map[string]float64 // CPU seconds during the run (warmup included)
	CPUDrain            map[string]float64 // stockd rows: from the start until write-back drained
	Pipe                float64            // Redis commands per socket read on the engine's Redis
	Settle              time.Duration      // stockd rows: write-back drain after the load stopped
	Settled             bool
	Backlog             int64         // mqpeer: orders not yet in MySQL when the load stopped
	TakeCalls, TakeReqs float64       // stockd rows: take script calls and the requests they carried
	Busy                float64       // machine CPU busy, fraction of all cores
	Foreign             float64       // CPU of processes outside the bench, in cores (approx.)
	Waited              time.Duration // for the machine to be quiet before the run
}

// Half is one open-loop run at half of stockd's maximum throughput.
type Half struct {
	Rep     int
	Rate    float64
	Load    *measure.Load
	M       *measure.Measurement
	Floor   *measure.Load // the same rate against the HTTP floor
	FloorM  *measure.Measurement
	Settle  time.Duration
	Settled bool
}

// Lag is one write-back lag run.
type Lag struct {
	Rep     int
	SKU     string
	Load    *measure.Load
	Backlog int64 // details not yet in MySQL at the first poll after the load
	Lag     time.Duration
	OK      bool
}

// ScaleRun is one run of a scale row.
type ScaleRun struct {
	Row      *plan.ScaleRow
	Rep      int
	Load     *measure.Load
	M        *measure.Measurement
	CPUDrain map[string]float64 // CPU seconds from the start until MySQL held every detail
	Settle   time.Duration
	Settled  bool
}

// TakeCost is one run of a take call cost row (plan.TakeShapes).
type TakeCost struct {
	Shape    plan.TakeShape
	Rep      int
	Calls    int64         // take script calls (PING rows: commands)
	Requests int64         // the requests they carried (PING rows: commands)
	RedisCPU float64       // Redis CPU seconds over the measured part
	Elapsed  time.Duration // the measured part
}

// PerCall is the requests per call.
func (t *TakeCost) PerCall() float64 { return float64(t.Requests) / float64(t.Calls) }

// Verify is one conservation check (GET /admin/skus/{sku}/verify).
type Verify struct {
	SKU     string
	Row     string // the scale row, "" for the main node
	Skipped bool   // not checked: the write-back had not drained
	OK      bool
	Raw     string
}

// SoldOut is the sell-out of the soldout row's SKU before the rows.
type SoldOut struct {
	Runs      int
	Units     uint64
	LastOK    uint64
	LastSold  uint64
	SoldOutOK bool // the admin API says sold_out
	Errs      uint64
}

// MQCheck is the mqpeer baseline's orders against its ok answers.
type MQCheck struct {
	Acked          int64 // ok answers of the mqpeer runs, warmups included
	Purged         bool  // a backlog was purged: the exactness check is void
	Rows, Distinct int64 // order rows at the end, and their distinct request ids
}

// Markers of the hand-written section of the report: the bench keeps
// whatever stands between them when it rewrites the file.
const (
	NotesBegin = "<!-- hand-written: begin (make bench keeps this section) -->"
	NotesEnd   = "<!-- hand-written: end -->"
)

// HandNotes is the hand-written section of the existing report at path, or
// a placeholder.
func HandNotes(path string) string {
	raw, err := os.ReadFile(path)
	if err == nil {
		s := string(raw)
		if i := strings.Index(s, NotesBegin); i >= 0 {
			rest := s[i+len(NotesBegin):]
			if j := strings.Index(rest, NotesEnd); j >= 0 {
				return strings.Trim(rest[:j], "\n")
			}
		}
	}
	return "## Reading the numbers\n\n(Hand-written notes go here; `make bench` keeps this section.)"
}

// Write renders d into the file at path.
func Write(path string, d *Data) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(path, []byte(Render(d)), 0o644)
}

// has tells whether the row called name ran.
func (d *Data) has(name string) bool {
	for _, sc := range d.Rows {
		if sc.Name == name {
			return true
		}
	}
	return false
}

func (d *Data) maxC() int {
	m := 0
	for _, c := range d.Conc {
		m = max(m, c)
	}
	return m
}
