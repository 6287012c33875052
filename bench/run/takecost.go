package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/stockd/stockd/bench/internal/plan"
	"github.com/stockd/stockd/bench/internal/report"
	"github.com/stockd/stockd/internal/redisproc"
	"github.com/stockd/stockd/shard"
	"golang.org/x/sync/errgroup"
)

// takeStock is what each partition of the take cost rows holds: more than
// any run takes, so that every take deducts.
const takeStock = 1_000_000_000

// runTakeCost runs the take call cost rows (plan.TakeShapes) on a Redis of
// their own, reps interleaved, and keeps one report.TakeCost per run.
func (b *bench) runTakeCost(ctx context.Context) error {
	r, err := b.newRedis(ctx, "takecost")
	if err != nil {
		return err
	}
	defer r.Kill()
	set, err := shard.Open(ctx, []shard.Config{{ID: "t1", Addr: r.Addr}}, shard.Options{Prefix: b.prefix + ":takecost"}, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer set.Close()
	sh, err := set.Get("t1")
	if err != nil {
		return err
	}
	most := 0
	for _, s := range plan.TakeShapes {
		most = max(most, s.Partitions)
	}
	parts, err := takeParts(ctx, set, most)
	if err != nil {
		return err
	}
	b.logf("take cost: %d partitions on %s", len(parts), r.Addr)
	for rep := 1; rep <= b.opt.reps; rep++ {
		for _, s := range plan.TakeShapes {
			if err := b.waitQuiet(ctx, append(b.ourPIDs(), r.Pid())); err != nil {
				return err
			}
			tc, err := runTakeShape(ctx, r, sh, parts[:s.Partitions], s, b.opt.warmup/2, b.takeDuration(), rep)
			if err != nil {
				return fmt.Errorf("take cost %s rep %d: %w", s.Name, rep, err)
			}
			tc.Rep = rep
			b.takeCost = append(b.takeCost, tc)
			b.logf("take cost rep %d/%d %-9s %8.0f calls/s  %5.1f requests per call  Redis %6.1f µs per call, %5.1f µs per request",
				rep, b.opt.reps, s.Name, float64(tc.Calls)/tc.Elapsed.Seconds(), tc.PerCall(), 1e6*tc.RedisCPU/float64(tc.Calls), 1e6*tc.RedisCPU/float64(tc.Requests))
		}
	}
	return nil
}

// takeDuration is the measured time of one take cost run: short, the
// rows are many and steady.
func (b *bench) takeDuration() time.Duration {
	if b.opt.quick {
		return time.Second
	}
	return 2 * time.Second
}

// takeParts makes n partitions of takeStock units each, on the set's one
// shard.
func takeParts(ctx context.Context, set *shard.Set, n int) ([]*shard.Partition, error) {
	parts := make([]*shard.Partition, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range parts {
		g.Go(func() error {
			p, err := set.Partition("take-cost-"+strconv.Itoa(i), 0, 1, "t1")
			if err != nil {
				return err
			}
			if _, err := p.Init(gctx, 1, true); err != nil {
				return err
			}
			if _, err := p.Refill(gctx, 1, 'a', takeStock, takeStock); err != nil {
				return err
			}
			parts[i] = p
			return nil
		})
	}
	return parts, g.Wait()
}

// runTakeShape drives one shape for warmup, then for d, and reads the
// Redis CPU and the shard's take counters around the measured part.
func runTakeShape(ctx context.Context, r *redisproc.Instance, sh *shard.Shard, parts []*shard.Partition, s plan.TakeShape, warmup, d time.Duration, rep int) (*report.TakeCost, error) {
	var measuring atomic.Bool
	var pings atomic.Int64
	stop := make(chan struct{})
	var wg gosync.WaitGroup
	errs := make(chan error, s.Callers)
	c := sh.Client()
	for g := range s.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(rep), uint64(g)))
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if len(parts) == 0 {
					err = c.Do(ctx, c.B().Ping().Build()).Error()
					if measuring.Load() {
						pings.Add(1)
					}
				} else {
					p := parts[rnd.IntN(len(parts))]
					id := fmt.Sprintf("%s-%d-%d-%d", s.Name, rep, g, k)
					var res shard.TakeResult
					if res, err = p.Take(ctx, id, 1, 1, true, ""); err == nil && res.Code != shard.Took {
						err = fmt.Errorf("take %s answered code %d, not took", id, res.Code)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	finish := func() error {
		close(stop)
		wg.Wait()
		select {
		case err := <-errs:
			return err
		default:
			return nil
		}
	}
	if !sleepOrDone(ctx, warmup, errs) {
		return nil, finish()
	}
	cpu0, err := redisCPU(ctx, r)
	if err != nil {
		finish()
		return nil, err
	}
	calls0, reqs0 := sh.TakeBatches()
	measuring.Store(true)
	start := time.Now()
	ok := sleepOrDone(ctx, d, errs)
	measuring.Store(false)
	elapsed := time.Since(start)
	calls1, reqs1 := sh.TakeBatches()
	cpu1, err := redisCPU(ctx, r)
	if ferr := finish(); ferr != nil || !ok {
		if ferr == nil {
			ferr = ctx.Err()
		}
		return nil, ferr
	}
	if err != nil {
		return nil, err
	}
	tc := &report.TakeCost{Shape: s, Calls: calls1 - calls0, Requests: reqs1 - reqs0, RedisCPU: cpu1 - cpu0, Elapsed: elapsed}
	if len(parts) == 0 {
		tc.Calls, tc.Requests = pings.Load(), pings.Load()
	}
	if tc.Calls == 0 {
		return nil, fmt.Errorf("no calls in %s", d)
	}
	return tc, nil
}

// sleepOrDone waits d; false if ctx ended or a caller failed first (its
// error stays in errs).
func sleepOrDone(ctx context.Context, d time.Duration, errs chan error) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case err := <-errs:
		errs <- err
		return false
	case <-ctx.Done():
		return false
	}
}

// redisCPU is the CPU seconds the Redis process used so far (INFO cpu:
// used_cpu_user + used_cpu_sys, microsecond resolution; forked children
// such as AOF rewrites are not in it).
func redisCPU(ctx context.Context, r *redisproc.Instance) (float64, error) {
	info, err := r.Info(ctx, "cpu")
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, k := range []string{"used_cpu_user", "used_cpu_sys"} {
		v, err := strconv.ParseFloat(info[k], 64)
		if err != nil {
			return 0, fmt.Errorf("redis %s: INFO cpu %s = %q", r.Addr, k, info[k])
		}
		sum += v
	}
	return sum, nil
}
