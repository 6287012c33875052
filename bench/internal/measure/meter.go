package measure

import (
	"context"
	"time"

	"github.com/stockd/stockd/internal/redisproc"
)

// Measurement is one loadgen run with what the machine did meanwhile.
type Measurement struct {
	Load    *Load
	CPU     map[string]float64 // CPU seconds by group, plus "loadgen"
	Before  map[string]int64   // the groups' ticks at the start
	Busy    float64            // machine CPU busy, fraction of all cores
	Foreign float64            // CPU of processes outside the bench, in cores (approx.)
	Pipe    float64            // Redis commands per socket read over the Redis instances
	// Rewrites is the AOF rewrites of the Redis instances that ran during
	// the run: started in it, or running when it began.
	Rewrites uint64

	TakeCalls, TakeReqs float64 // stockd's take script calls and their requests (when Take is set)
	// StockWaits is how many deductions waited for stock (refills in
	// flight, the truth looked at again): stockd_scheduler_stock_wait_seconds.
	StockWaits float64
}

// Counters are stockd's counters the bench reads around a run, summed
// over the nodes.
type Counters struct {
	TakeCalls, TakeReqs, StockWaits float64
}

// Probe says what to read around a run: the CPU of Groups (a group named
// "all" must hold every process of the bench: the rest of the machine's
// CPU is counted as foreign), the INFO stats of Redis, and stockd's take
// counters through Take (nil: none).
type Probe struct {
	Groups []Group
	Redis  []*redisproc.Instance
	Take   func(context.Context) Counters
}

// Meter measures runs: it knows the clock tick and keeps the budget of
// waits for a quiet machine.
type Meter struct {
	Clk        float64 // clock ticks per second
	GateBudget time.Duration
	GateUsed   time.Duration
	Logf       func(format string, args ...any)
}

// CPUSince is the CPU seconds of groups since the ticks before.
func (m *Meter) CPUSince(before map[string]int64, groups []Group) map[string]float64 {
	return Delta(before, Snapshot(groups), m.Clk)
}

// Measure runs load (one loadgen run) and reads what p asks for around it.
func (m *Meter) Measure(ctx context.Context, p Probe, load func() (*Load, error)) (*Measurement, error) {
	st0, err := SumRedisStats(ctx, p.Redis)
	if err != nil {
		return nil, err
	}
	var k0 Counters
	if p.Take != nil {
		k0 = p.Take(ctx)
	}
	c0, m0 := Snapshot(p.Groups), Machine()
	lg, err := load()
	if err != nil {
		return nil, err
	}
	m1, c1 := Machine(), Snapshot(p.Groups)
	st1, err := SumRedisStats(ctx, p.Redis)
	if err != nil {
		return nil, err
	}
	res := &Measurement{Load: lg, CPU: Delta(c0, c1, m.Clk), Before: c0}
	if p.Take != nil {
		k1 := p.Take(ctx)
		res.TakeCalls, res.TakeReqs, res.StockWaits = k1.TakeCalls-k0.TakeCalls, k1.TakeReqs-k0.TakeReqs, k1.StockWaits-k0.StockWaits
	}
	res.CPU["loadgen"] = lg.CPU
	if m1.Total > m0.Total {
		res.Busy = (m1.Busy - m0.Busy) / (m1.Total - m0.Total)
		// The machine's CPU time adds up over all CPUs.
		other := (m1.Busy - m0.Busy - (m1.IRQ - m0.IRQ)) - res.CPU["all"] - lg.CPU
		if wall := lg.Exited.Sub(lg.Started).Seconds(); wall > 0 {
			res.Foreign = max(0, other) / wall
		}
	}
	delete(res.CPU, "all")
	res.Rewrites = st1.Rewrites - st0.Rewrites + st0.Rewriting
	if dr := st1.Reads - st0.Reads; dr > 0 {
		res.Pipe = float64(st1.Commands-st0.Commands) / float64(dr)
	}
	return res, nil
}

// QuietCores is how much CPU other processes may use before a run starts.
const QuietCores = 0.3

// WaitQuiet waits, within a budget, until processes outside the bench
// (every process not in pids) use less than QuietCores: the machine is
// shared, and a burst of someone else's work (a compile, a test run)
// should not land in a measurement. Runs that start on a busy machine
// anyway show it in the report.
func (m *Meter) WaitQuiet(ctx context.Context, pids []int) (time.Duration, error) {
	groups := []Group{{"all", pids}}
	return m.waitBelow(ctx, QuietCores, "other processes", func(m0, m1 MachineCPU, c0, c1 map[string]int64) float64 {
		ours := float64(c1["all"]-c0["all"]) / m.Clk
		return m1.Busy - m0.Busy - (m1.IRQ - m0.IRQ) - ours
	}, groups)
}

// SettledCores is how much CPU the shared services (MariaDB, RabbitMQ) may
// use, with no load running, before a run starts.
const SettledCores = 0.15

// WaitSettled waits, within the same budget as WaitQuiet, until the
// services in pids (MariaDB and RabbitMQ) use less than SettledCores: the
// background work an earlier row left them (InnoDB purge and page
// flushing after hundreds of thousands of detail rows, queue compaction)
// belongs to that row, not to the next one, whose own figures would
// otherwise carry it.
func (m *Meter) WaitSettled(ctx context.Context, pids []int) (time.Duration, error) {
	groups := []Group{{"services", pids}}
	return m.waitBelow(ctx, SettledCores, "MariaDB and RabbitMQ", func(_, _ MachineCPU, c0, c1 map[string]int64) float64 {
		return float64(c1["services"]-c0["services"]) / m.Clk
	}, groups)
}

// waitBelow samples 200 ms windows until busy (CPU seconds used in the
// window) is under cores, the per-run limit (5 s) or the budget is spent.
func (m *Meter) waitBelow(ctx context.Context, cores float64, what string, busy func(m0, m1 MachineCPU, c0, c1 map[string]int64) float64, groups []Group) (time.Duration, error) {
	start := time.Now()
	limit := min(5*time.Second, m.GateBudget-m.GateUsed)
	for {
		m0, c0 := Machine(), Snapshot(groups)
		if err := Sleep(ctx, 200*time.Millisecond); err != nil {
			return 0, err
		}
		m1, c1 := Machine(), Snapshot(groups)
		if busy(m0, m1, c0, c1)/0.2 < cores || time.Since(start) >= limit {
			break
		}
	}
	waited := time.Since(start) - 200*time.Millisecond
	m.GateUsed += waited
	if waited > 100*time.Millisecond && m.Logf != nil {
		m.Logf("waited %s for %s to calm down (budget left %s)", waited.Round(100*time.Millisecond), what, (m.GateBudget - m.GateUsed).Round(time.Second))
	}
	return waited, nil
}

// Sleep waits d or until ctx is done.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
