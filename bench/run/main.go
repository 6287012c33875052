// Command run is the benchmark orchestrator behind `make bench`.
//
//	go run ./bench/run [-quick] [-out docs/BENCHMARKS.md] [-reps N] [-duration D]
//
// In one invocation, on one machine, with one load generator (bin/loadgen,
// closed loop, keep-alive), it measures stockd against the designs it
// replaces, each behind the same fasthttp front (bin/baseline):
//
//  1. rowlock     MySQL SELECT … FOR UPDATE + UPDATE in a transaction
//  2. condupdate  MySQL UPDATE … WHERE stock >= ? (autocommit)
//  3. rediskey    one Redis key, Lua check-and-decrement
//  4. mqpeer      Redis key + Lua with request-id dedup, a confirmed RabbitMQ
//     message per order, a consumer inserting one MySQL row per order
//  5. floor       fasthttp answering 200 without work
//  6. stockd      one node, one hot SKU, 4 partitions on 3 Redis shards
//  7. limited     the stockd row on a SKU with a per-user limit that refuses
//     nothing, requests from 10,000 users (at the highest -c only)
//  8. soldout     stockd after sell-out
//
// each at every concurrency of -c and -reps times, interleaved (rep 1 of
// every row, then rep 2, …). Then it profiles stockd under the same load
// (CPU by part: hot path, write-back, …), measures p99 at half of stockd's
// maximum throughput (open loop; then at a quarter) and the write-back
// lag, runs the scale rows (1, 3, 6 shards; 1,000 hot SKUs; 3 nodes: each
// a cluster of its own, -scale-reps times at the highest concurrency), the
// take call cost
// rows (take script calls straight from this process on a Redis of their
// own: Redis CPU per call and per request, by batch shape), and writes a
// Markdown report (-out) with a capacity projection.
//
// It starts everything it measures itself: its own Redis processes on free
// ports, its own MySQL databases, its own RabbitMQ queue and key prefix,
// its own stockd; and it removes all of them again, also on failure or
// Ctrl-C. The shared services on 3306 and 5672 are only used, never
// reconfigured.
//
// The code by concern: bench/internal/plan is what is measured (the rows,
// the scale rows, the SKUs' sizes); bench/internal/measure is how (a
// loadgen run, CPU from /proc through procfs, Redis INFO stats, the quiet
// gate, profile attribution); bench/internal/report renders the report
// from the data the runs fill in. This package starts the services
// (services.go) and stockd (stockd.go) and runs the plan (runs.go,
// profile.go, scale.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stockd/stockd/bench/internal/plan"
)

type options struct {
	quick         bool
	out           string
	reps          int
	duration      time.Duration
	warmup        time.Duration
	conc          []int
	lagDuration   time.Duration
	lagConc       int
	mysqlBase     string
	amqpURL       string
	keep          bool
	scaleReps     int
	scaleSKUs     int
	scaleDuration time.Duration
	only          map[string]bool
	args          []string // as given, for the report
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("bench/run", flag.ContinueOnError)
	fs.BoolVar(&o.quick, "quick", false, "smoke run: 1 rep, short runs (defaults below change), report to /tmp/BENCHMARKS.quick.md")
	fs.StringVar(&o.out, "out", "docs/BENCHMARKS.md", "Markdown report to write (quick: /tmp/BENCHMARKS.quick.md)")
	fs.IntVar(&o.reps, "reps", 3, "repetitions of every row (quick: 1); medians are reported")
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "measured time of one run (quick: 2s)")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "warmup before each measured run, not counted (quick: 500ms)")
	conc := fs.String("c", "64,256", "concurrencies (load generator connections), comma-separated")
	fs.DurationVar(&o.lagDuration, "lag-duration", 3*time.Second, "load time of one write-back lag run (quick: 2s)")
	fs.IntVar(&o.lagConc, "lag-c", 64, "connections of the write-back lag runs (closed loop, full speed)")
	fs.StringVar(&o.mysqlBase, "mysql", "root@tcp(127.0.0.1:3306)/", "MySQL DSN without database name")
	fs.StringVar(&o.amqpURL, "amqp", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp directory (logs) after the run")
	fs.IntVar(&o.scaleReps, "scale-reps", 2, "repetitions of every scale row (quick: 1)")
	fs.IntVar(&o.scaleSKUs, "scale-skus", 1000, "hot SKUs of the many-SKU scale row (quick: 100: creating 1,000 SKUs takes about a minute here)")
	fs.DurationVar(&o.scaleDuration, "scale-duration", 3*time.Second, "measured time of one scale run (quick: 1.5s)")
	only := fs.String("only", "", "debug: run only these rows (comma-separated names: rowlock,condupdate,rediskey,mqpeer,floor,stockd,limited,soldout, scale for the scale rows, takecost for the take call cost rows); the report is incomplete")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		if !set["out"] {
			o.out = "/tmp/BENCHMARKS.quick.md"
		}
		if !set["reps"] {
			o.reps = 1
		}
		if !set["duration"] {
			o.duration = 2 * time.Second
		}
		if !set["warmup"] {
			o.warmup = 500 * time.Millisecond
		}
		if !set["lag-duration"] {
			o.lagDuration = 2 * time.Second
		}
		if !set["scale-reps"] {
			o.scaleReps = 1
		}
		if !set["scale-skus"] {
			o.scaleSKUs = 100
		}
		if !set["scale-duration"] {
			o.scaleDuration = 1500 * time.Millisecond
		}
	}
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return o, fmt.Errorf("-c %q: want positive integers", *conc)
		}
		o.conc = append(o.conc, n)
	}
	if *only != "" {
		o.only = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			if plan.ScenarioByName(s) == nil && s != "scale" && s != "takecost" {
				return o, fmt.Errorf("-only: unknown row %q", s)
			}
			o.only[s] = true
		}
	}
	switch {
	case o.reps < 1 || o.scaleReps < 1:
		return o, errors.New("-reps and -scale-reps must be >= 1")
	case o.scaleSKUs < 2:
		return o, errors.New("-scale-skus must be >= 2")
	case o.scaleDuration <= 0:
		return o, errors.New("-scale-duration must be > 0")
	case o.duration <= 0 || o.warmup < 0 || o.lagDuration <= 0:
		return o, errors.New("-duration and -lag-duration must be > 0, -warmup >= 0")
	case o.lagConc < 1:
		return o, errors.New("-lag-c must be >= 1")
	}
	o.args = args
	return o, nil
}

func main() {
	os.Exit(realMain(os.Args[1:]))
}

// chdirRepoRoot moves to the directory of stockd's go.mod, above the
// current one.
func chdirRepoRoot() error {
	dir := mustGetwd()
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/stockd/stockd\n") {
			return os.Chdir(dir)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return errors.New("run me inside the stockd repository (no go.mod of github.com/stockd/stockd above the current directory)")
		}
		dir = parent
	}
}

func mustGetwd() string {
	d, err := os.Getwd()
	if err != nil {
		return "."
	}
	return d
}

func realMain(args []string) int {
	opt, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	// Paths are the repository's: run from its root wherever we were
	// started (-out stays relative to the directory it was given in).
	if abs, err := filepath.Abs(opt.out); err == nil {
		opt.out = abs
	}
	if err := chdirRepoRoot(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	if rel, err := filepath.Rel(mustGetwd(), opt.out); err == nil && !strings.HasPrefix(rel, "..") {
		opt.out = rel
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	b := newBench(opt)
	err = b.run(ctx)
	b.cleanup()
	if err != nil {
		if ctx.Err() != nil {
			b.logf("interrupted; everything started was stopped and removed")
			return 130
		}
		b.logf("FAILED: %v", err)
		return 1
	}
	b.logf("done in %s; report: %s", time.Since(b.start).Round(time.Second), opt.out)
	return 0
}
