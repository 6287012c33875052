package measure

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/stockd/stockd/internal/redisproc"
)

// Errors never count as throughput.
func TestThroughputCountsOnlyOutcomes(t *testing.T) {
	r := &Load{OK: 600, SoldOut: 400, TransportErrors: 7, StatusCounts: map[string]uint64{"503": 2, "500": 1}, DurationS: 2}
	if r.Throughput() != 500 || r.Errors() != 10 {
		t.Fatalf("throughput %v errors %v", r.Throughput(), r.Errors())
	}
}

func TestRedisStatsAndCPU(t *testing.T) {
	ctx := context.Background()
	r, err := redisproc.Start(ctx, redisproc.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Kill()
	if _, err := r.Do(ctx, "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := r.Do(ctx, "GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET: %q %v", v, err)
	}
	st, err := SumRedisStats(ctx, []*redisproc.Instance{r})
	if err != nil || st.Commands < 2 || st.Reads < 2 {
		t.Fatalf("stats %+v %v", st, err)
	}
	if _, err := ProcTicks(r.Pid()); err != nil {
		t.Fatal(err)
	}
	if _, err := ProcTicks(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	m := Machine()
	if m.Total <= 0 || m.Busy <= 0 || m.Busy > m.Total || m.IRQ > m.Busy {
		t.Fatalf("machine CPU %+v", m)
	}
	if pid := PidOf("redis-server"); pid <= 0 {
		t.Fatalf("PidOf(redis-server) = %d", pid)
	}
	if l := LoadAvg(); len(strings.Fields(l)) != 3 {
		t.Fatalf("load average %q", l)
	}
	snap := Snapshot([]Group{{"redis", []int{r.Pid()}}, {"none", []int{0, -1}}})
	if _, ok := snap["redis"]; !ok || snap["none"] != 0 {
		t.Fatalf("snapshot %v", snap)
	}
	r.Kill()
	if !r.Exited() {
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
	total, shares := Attribute([]byte(traces))
	if total < 1.659 || total > 1.661 {
		t.Fatalf("total %v", total)
	}
	got := map[string]float64{}
	for _, s := range shares {
		got[strings.SplitN(s.Part, " ", 2)[0]] = s.Sec
	}
	want := map[string]float64{"write-back": 1.5, "hot": 0.1, "Redis": 0.03, "garbage": 0.02, "other": 0.01, "refills": 0}
	for k, v := range want {
		if d := got[k] - v; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s: %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}
