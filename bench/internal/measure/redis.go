package measure

import (
	"context"
	"fmt"
	"strconv"

	"github.com/stockd/stockd/internal/redisproc"
)

// RedisStats is the part of Redis's INFO stats the bench uses.
type RedisStats struct {
	Commands, Reads uint64
}

// ReadRedisStats reads INFO stats of one instance.
func ReadRedisStats(ctx context.Context, r *redisproc.Instance) (RedisStats, error) {
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
	}
	return s, nil
}
