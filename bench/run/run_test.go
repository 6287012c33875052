package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil || o.quick || o.out != "docs/BENCHMARKS.md" || o.reps != 3 || o.duration != 5*time.Second || o.warmup != time.Second || len(o.conc) != 2 {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	o, err = parseFlags([]string{"-quick"})
	if err != nil || o.out != "/tmp/BENCHMARKS.quick.md" || o.reps != 1 || o.duration != 2*time.Second {
		t.Fatalf("quick must not write docs/BENCHMARKS.md by default: %+v %v", o, err)
	}
	o, err = parseFlags([]string{"-quick", "-out", "x.md", "-reps", "2", "-c", "8, 16"})
	if err != nil || o.out != "x.md" || o.reps != 2 || o.conc[0] != 8 || o.conc[1] != 16 {
		t.Fatalf("explicit flags: %+v %v", o, err)
	}
	for _, bad := range [][]string{{"-reps", "0"}, {"-c", "x"}, {"-only", "nope"}, {"extra"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestMedianAndFormats(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Fatalf("median %v", m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatalf("median %v", m)
	}
	if s := fmtInt(1234567.4); s != "1,234,567" {
		t.Fatalf("fmtInt %q", s)
	}
	if s := fmtRatio(41, 1); s != "41.0×" {
		t.Fatalf("fmtRatio %q", s)
	}
	if s := fmtRatio(1, 0); s != "–" {
		t.Fatalf("fmtRatio by zero %q", s)
	}
}

// Errors never count as throughput.
func TestThroughputCountsOnlyOutcomes(t *testing.T) {
	r := &lgResult{OK: 600, SoldOut: 400, TransportErrors: 7, StatusCounts: map[string]uint64{"503": 2, "500": 1}, DurationS: 2}
	if r.throughput() != 500 || r.errors() != 10 {
		t.Fatalf("throughput %v errors %v", r.throughput(), r.errors())
	}
}

func TestHandNotesSurvive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "B.md")
	if s := handNotes(path); !strings.Contains(s, "Hand-written notes go here") {
		t.Fatalf("placeholder %q", s)
	}
	os.WriteFile(path, []byte("# x\n\n"+notesBegin+"\n## Mine\n\nkept\n"+notesEnd+"\n\nrest"), 0o644)
	if s := handNotes(path); s != "## Mine\n\nkept" {
		t.Fatalf("notes %q", s)
	}
}

func TestRedisHelpersAndCPU(t *testing.T) {
	r, err := startRedis(context.Background(), t.TempDir(), "t")
	if err != nil {
		t.Fatal(err)
	}
	defer r.stop(syscall.SIGKILL, time.Second)
	if _, err := redisCmd(r.addr, "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := redisCmd(r.addr, "GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET: %q %v", v, err)
	}
	st, err := readRedisStats(r.addr)
	if err != nil || st.commands < 2 || st.reads < 2 {
		t.Fatalf("stats %+v %v", st, err)
	}
	if _, err := cpuTicks(r.pid()); err != nil {
		t.Fatal(err)
	}
	if _, err := cpuTicks(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	m := machineTicks()
	if m.total <= 0 || m.busy <= 0 || m.busy > m.total {
		t.Fatalf("machine ticks %+v", m)
	}
	r.stop(syscall.SIGKILL, time.Second)
	if !r.exited() {
		t.Fatal("redis still running")
	}
}

// A profile's samples go to the first part with a function on their stack.
func TestAttributeProfile(t *testing.T) {
	traces := `File: stockd
Type: cpu
Duration: 5s, Total samples = 1.10s (22%)
-----------+-------------------------------------------------------
     100ms   internal/runtime/syscall/linux.Syscall6
             github.com/valyala/fasthttp.(*Server).serveConn
-----------+-------------------------------------------------------
     1.50s   database/sql.(*DB).ExecContext
             github.com/stockd/stockd/shard.(*Partition).Read (inline)
             github.com/stockd/stockd/sync.(*applier).apply
-----------+-------------------------------------------------------
      30ms   github.com/redis/rueidis.(*pipe)._backgroundRead
-----------+-------------------------------------------------------
      20ms   runtime.scanobject
             runtime.gcBgMarkWorker
-----------+-------------------------------------------------------
      10ms   runtime.findRunnable
             runtime.schedule
-----------+-------------------------------------------------------
`
	total, shares := attribute([]byte(traces))
	if total < 1.659 || total > 1.661 {
		t.Fatalf("total %v", total)
	}
	got := map[string]float64{}
	for _, s := range shares {
		got[strings.SplitN(s.part, " ", 2)[0]] = s.sec
	}
	want := map[string]float64{"write-back": 1.5, "hot": 0.1, "Redis": 0.03, "garbage": 0.02, "other": 0.01, "refills": 0}
	for k, v := range want {
		if d := got[k] - v; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s: %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

// The report holds the targets, the mqpeer row, the profile, the
// scale rows and the capacity projection, from synthetic runs.
func TestReportSections(t *testing.T) {
	o, err := parseFlags([]string{"-quick", "-out", filepath.Join(t.TempDir(), "B.md"), "-scale-skus", "1000"})
	if err != nil {
		t.Fatal(err)
	}
	b := newBench(o)
	b.machine.nproc = "2"
	lg := func(ok, sold uint64) *lgResult {
		return &lgResult{OK: ok, SoldOut: sold, TotalOK: ok, TotalOKUnits: ok, DurationS: 1, P99Ms: 3}
	}
	cpu := map[string]float64{"server": 0.5, "redis": 0.25, "mariadb": 0.3, "rabbitmq": 0.05, "loadgen": 0.2}
	limCPU := map[string]float64{"server": 0.6, "redis": 0.4, "mariadb": 0.3, "rabbitmq": 0.05, "loadgen": 0.2}
	for _, name := range []string{"rediskey", "mqpeer", "floor", "stockd", "limited", "soldout"} {
		for _, c := range o.conc {
			sc := scenarioByName(name)
			if sc.maxCOnly && c != slices.Max(o.conc) {
				continue
			}
			n := map[string]uint64{"rediskey": 20000, "mqpeer": 4000, "floor": 40000, "stockd": 21000, "limited": 16800, "soldout": 0}[name]
			r := &runResult{sc: sc, c: c, rep: 1, lg: lg(n, 0), cpu: cpu, cpuDrain: cpu, settled: true, takeCalls: 100, takeReqs: 1900}
			if name == "limited" {
				r.cpu, r.cpuDrain = limCPU, limCPU
			}
			if name == "soldout" {
				r.lg = lg(0, 38000)
			}
			b.runs = append(b.runs, r)
		}
	}
	b.mqAcked, b.mqRows, b.mqDistinct = 8000, 8000, 8000
	b.halves = []*halfResult{{rep: 1, rate: 10500, lg: lg(10500, 0), m: &measurement{cpu: cpu, takeCalls: 10, takeReqs: 20}, floor: lg(10500, 0)}}
	b.profile = &profileResult{lg: lg(21000, 0), seconds: 2, total: 1, shares: []profileShare{{profileParts[0].part, 0.2}, {profileParts[2].part, 0.7}, {otherPart, 0.1}}}
	for i := range scaleRows {
		sr := &scaleRows[i]
		b.scaleRuns = append(b.scaleRuns, &scaleResult{row: sr, rep: 1, lg: lg(20000, 0), m: &measurement{cpu: cpu, takeCalls: 10, takeReqs: 50}, cpuDrain: cpu, settled: true})
	}
	b.verifies = []verifyResult{{sku: "x", ok: true}, {sku: "y", row: "skus-1000", skipped: true, raw: "not checked: the write-back had not drained 35s after the last run"}}
	if err := b.writeReport(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(o.out)
	s := string(raw)
	// CPU per 1,000 deductions of server + Redis, limited over stockd.
	perK := func(m map[string]float64, n float64) float64 { return (m["server"] + m["redis"]) / n * 1000 }
	cpuRatio := fmtRatio(perK(limCPU, 16800), perK(cpu, 21000))
	for _, want := range []string{
		"stockd ≥ 1× rediskey", "stockd ≥ 0.5× HTTP floor", "stockd ≥ 2× mqpeer", "✅ met: stockd ≥ 2× mqpeer",
		"p99 ≤ 5 ms at half", "the HTTP floor at the same rate: 3", "soldout ≥ 0.9× HTTP floor at c = 64",
		"1 not checked", "1, 3 and 6 shards", "1,000 hot SKUs ≥ 0.8×", "1 node vs 3 nodes",
		"| mqpeer | 256 |", "mqpeer's write-back lag", "8,000 order rows (8,000 distinct request ids)",
		"## Where stockd's CPU goes", "**70%**", "| stockd row, c = 256 | **19.0** |",
		"## Cost of the per-user limit", "| 256 | limited | 16,800 |", "| 256 | **limited / stockd** | **0.80×** |",
		"changed the answers per second by **-20%** (21,000 → 16,800/s)", "| **" + cpuRatio + "** | | | |", ", " + cpuRatio + ").", "| limited | 256 |",
		"**limited** = the stockd row on a SKU with a per-user limit", "7. **limited**", `"per_user_limit": 1000000`,
		"## Scale rows", "| skus-1000 |", "## Capacity (projection)", "**A projection", "| Redis shards | 11.9 |",
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
