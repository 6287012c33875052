package measure

import (
	"context"
	"fmt"
	"strconv"

	"github.com/stockd/stockd/internal/redisproc"
)

// RedisStats is the part of Redis's INFO stats and persistence the bench
// uses.
type RedisStats struct {
	Commands, Reads uint64
	// Rewrites counts the AOF rewrites started since the instance
	// started; Rewriting is 1 while one runs. A rewrite forks a child
	// that serializes the whole dataset, on the cores everything else
	// here shares: the open-loop runs' latency stalls line up with them.
	Rewrites, Rewriting uint64
}

// ReadRedisStats reads INFO stats and persistence of one instance.
func ReadRedisStats(ctx context.Context, r *redisproc.Instance) (RedisStats, error) {
	pers, err := r.Info(ctx, "persistence")
	if err != nil {
		return RedisStats{}, err
	}
	info, err := r.Info(ctx, "stats")
	if err != nil {
		return RedisStats{}, err
	}
	c, okC := info["total_commands_processed"]
	rd, okR := info["total_reads_processed"]
	if !okC || !okR {
		return RedisStats{}, fmt.Errorf("redis %s: INFO stats lacks total_commands_processed or total_reads_processed", r.Addr)
	}
	var st RedisStats
	st.Commands, _ = strconv.ParseUint(c, 10, 64)
	st.Reads, _ = strconv.ParseUint(rd, 10, 64)
	st.Rewrites, _ = strconv.ParseUint(pers["aof_rewrites"], 10, 64)
	st.Rewriting, _ = strconv.ParseUint(pers["aof_rewrite_in_progress"], 10, 64)
	return st, nil
}

// SumRedisStats adds up the INFO stats of several instances.
func SumRedisStats(ctx context.Context, rs []*redisproc.Instance) (RedisStats, error) {
	var s RedisStats
	for _, r := range rs {
		st, err := ReadRedisStats(ctx, r)
		if err != nil {
			return s, err
		}
		s.Commands += st.Commands
		s.Reads += st.Reads
		s.Rewrites += st.Rewrites
		s.Rewriting += st.Rewriting
	}
	return s, nil
}
