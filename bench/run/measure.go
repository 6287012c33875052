package main

import (
	"context"
	"path/filepath"
	"strconv"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/internal/redisproc"
)

// loadgen runs bin/loadgen with args (see measure.RunLoadgen).
func (b *bench) loadgen(ctx context.Context, args ...string) (*measure.Load, error) {
	return measure.RunLoadgen(ctx, filepath.Join(b.bin, "loadgen"), b.tmp, args...)
}

func lgArgs(url, sku string, c int, idPrefix string) []string {
	return []string{"-url", url, "-sku", sku, "-c", strconv.Itoa(c), "-id-prefix", idPrefix}
}

func (b *bench) hotURL() string { return "http://" + b.hot + "/v1/deduct" }

// measure runs loadgen with args and reads the CPU of groups, of the whole
// machine and the Redis INFO stats of redis around it; with admins, also
// the take script counters of the stockd nodes at those admin addresses.
// A group named "all" must hold every process of the bench: the rest of
// the machine's CPU is counted as foreign.
func (b *bench) measure(ctx context.Context, groups []measure.Group, redis []*redisproc.Instance, admins []string, args ...string) (*measure.Measurement, error) {
	p := measure.Probe{Groups: groups, Redis: redis}
	if len(admins) > 0 {
		p.Take = func(ctx context.Context) measure.Counters { return b.api.counters(ctx, admins) }
	}
	return b.meter.Measure(ctx, p, func() (*measure.Load, error) { return b.loadgen(ctx, args...) })
}

// waitQuiet waits for a quiet machine before a run (measure.Meter.WaitQuiet).
func (b *bench) waitQuiet(ctx context.Context, pids []int) error {
	_, err := b.meter.WaitQuiet(ctx, pids)
	return err
}

// stockdGroups are the processes of the stockd rows.
func (b *bench) stockdGroups() []measure.Group {
	return []measure.Group{
		{Name: "server", Pids: []int{b.stockd.pid()}},
		{Name: "redis", Pids: b.shardPIDs()},
		{Name: "mariadb", Pids: []int{b.mariadbPID}},
		{Name: "rabbitmq", Pids: []int{b.rabbitPID}},
		{Name: "all", Pids: b.ourPIDs()},
	}
}

// ourPIDs is every long-running process of the bench (the baseline of the
// moment aside).
func (b *bench) ourPIDs() []int {
	return append([]int{b.stockd.pid(), b.baseRedis.Pid(), b.mariadbPID, b.rabbitPID}, b.shardPIDs()...)
}

func (b *bench) shardPIDs() []int { return pids(b.shards) }

func pids(rs []*redisproc.Instance) []int {
	var out []int
	for _, r := range rs {
		out = append(out, r.Pid())
	}
	return out
}
