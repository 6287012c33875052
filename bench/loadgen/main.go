// Command loadgen is a load generator for benchmarking stockd (and baseline
// implementations) on its hot endpoint, POST /v1/deduct.
//
// Closed loop (default): -c workers, each on its own keep-alive connection,
// send back to back. Open loop (-rate R): R requests/s on a fixed timeline
// shared by the workers; a request's latency is measured from its intended
// send time whenever it was late because all workers were busy (no
// coordinated omission).
//
// Every logical request carries a unique request_id (prefix + counter). A 503
// is retried with the same request_id (-retry-503); the final answer counts.
// With -total the run fails (exit 1) if more units were acknowledged ok than
// the SKU had, or if a reservation string was returned for two request ids.
//
// Examples:
//
//	loadgen -c 64 -d 10s -warmup 2s -total 1000 -json out.json
//	loadgen -rate 20000 -c 128 -d 30s -url http://10.0.0.5:8080/v1/deduct
//	loadgen -c 256 -d 5s -sku limited-1 -users 10000   # user_id u<k mod 10000>
//	loadgen -n 100000 -body-template '{"item":"x","id":"%s"}' -url http://127.0.0.1:9000/buy
//
// Exit codes: 0 success, 1 consistency failure (oversell / duplicate
// reservation) or run error, 2 bad flags.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	connsPerWorker = "per-worker"
	connsShared    = "shared"
)

type config struct {
	URL          string   // the first of URLs
	URLs         []string // targets; worker i sends to URLs[i % len]
	SKU          string
	SKUs         int // spread requests over SKUs <SKU>-0 … <SKU>-(SKUs-1); 1 = SKU alone
	Users        int // >0: request k carries "user_id":"u<k mod Users>"; 0 = no user_id
	Qty          int
	Concurrency  int
	Duration     time.Duration // 0 = unlimited (only valid with N > 0)
	N            int64         // measured requests, 0 = unlimited
	Rate         float64       // total req/s; 0 = closed loop
	IDPrefix     string
	Retry503     bool
	MaxRetries   int
	Warmup       time.Duration
	Total        int64 // units of the SKU, -1 = unknown
	JSONPath     string
	BodyTemplate string
	Timeout      time.Duration
	Conns        string // connsPerWorker | connsShared
}

func defaultConfig() config {
	return config{
		URL:         "http://127.0.0.1:8080/v1/deduct",
		SKU:         "demo-1",
		SKUs:        1,
		Qty:         1,
		Concurrency: 64,
		Duration:    10 * time.Second,
		Retry503:    true,
		MaxRetries:  5,
		Total:       -1,
		Timeout:     5 * time.Second,
		Conns:       connsShared,
	}
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	fmt.Fprintf(stderr, "loadgen: %s c=%d %s id-prefix=%q\n", strings.Join(cfg.URLs, ","), cfg.Concurrency, describeMode(cfg), cfg.IDPrefix)
	res, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %v\n", err)
		return 1
	}
	res.writeText(stdout)
	if cfg.JSONPath != "" {
		if err := res.writeJSONFile(cfg.JSONPath); err != nil {
			fmt.Fprintf(stderr, "loadgen: writing %s: %v\n", cfg.JSONPath, err)
			return 1
		}
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "loadgen: warning: %s\n", w)
	}
	if len(res.Failures) > 0 {
		for _, f := range res.Failures {
			fmt.Fprintf(stderr, "loadgen: FAIL: %s\n", f)
		}
		return 1
	}
	return 0
}

func describeMode(cfg config) string {
	s := "closed-loop"
	if cfg.Rate > 0 {
		s = fmt.Sprintf("open-loop rate=%g/s", cfg.Rate)
	}
	if cfg.Duration > 0 {
		s += " d=" + cfg.Duration.String()
	}
	if cfg.N > 0 {
		s += fmt.Sprintf(" n=%d", cfg.N)
	}
	if cfg.SKUs > 1 {
		s += fmt.Sprintf(" skus=%d", cfg.SKUs)
	}
	if cfg.Users > 0 {
		s += fmt.Sprintf(" users=%d", cfg.Users)
	}
	if cfg.Warmup > 0 {
		s += " warmup=" + cfg.Warmup.String()
	}
	return s
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.URL, "url", cfg.URL, "target URL (http or https); several comma-separated: the workers are spread over them round robin (worker i sends to URL i mod n)")
	fs.StringVar(&cfg.SKU, "sku", cfg.SKU, "SKU to deduct (default body only)")
	fs.IntVar(&cfg.SKUs, "skus", cfg.SKUs, "spread the requests over this many SKUs, named <sku>-0 … <sku>-(N-1), request k going to SKU k mod N (default body only); 1: -sku itself")
	fs.IntVar(&cfg.Users, "users", cfg.Users, "add \"user_id\":\"u<k mod N>\" to request k, spreading the requests over N users (default body only; for SKUs with a per_user_limit); 0: no user_id")
	fs.IntVar(&cfg.Qty, "qty", cfg.Qty, "units per request (default body; also the units counted per ok answer lacking a \"qty\" field)")
	fs.IntVar(&cfg.Concurrency, "c", cfg.Concurrency, "number of workers, each with its own keep-alive connection")
	fs.DurationVar(&cfg.Duration, "d", cfg.Duration, "measured duration (after -warmup); if only -n is given there is no time limit")
	fs.Int64Var(&cfg.N, "n", 0, "number of measured requests (0 = unlimited); with -d, stop at whichever comes first")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open loop: total requests/s on a fixed timeline (0 = closed loop)")
	fs.StringVar(&cfg.IDPrefix, "id-prefix", "", "request_id prefix (default: random per run); request_id = prefix + counter")
	fs.BoolVar(&cfg.Retry503, "retry-503", cfg.Retry503, "retry a 503 with the same request_id (up to 5 times, small backoff)")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "warmup duration excluded from stats (still checked for oversell)")
	fs.Int64Var(&cfg.Total, "total", cfg.Total, "SKU's total units; fail (exit 1) if more units are acknowledged ok (-1 = unknown)")
	fs.StringVar(&cfg.JSONPath, "json", "", "also write results as JSON to this file")
	fs.StringVar(&cfg.BodyTemplate, "body-template", "", "request body format with %s for the request_id (%% for a literal %); default: stockd deduct body")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "per-attempt read/write timeout")
	fs.StringVar(&cfg.Conns, "conns", cfg.Conns, "connection pooling: shared (one HostClient, MaxConns=c; measured ~3% cheaper here) or per-worker (one HostClient with one conn per worker)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["n"] && !set["d"] {
		cfg.Duration = 0 // -n alone: no time limit
	}
	if cfg.IDPrefix == "" {
		cfg.IDPrefix = randomPrefix()
	}
	cfg.URLs = nil
	for _, u := range strings.Split(cfg.URL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.URLs = append(cfg.URLs, u)
		}
	}
	if len(cfg.URLs) > 0 {
		cfg.URL = cfg.URLs[0]
	}
	return cfg, cfg.validate()
}

func (cfg *config) validate() error {
	switch {
	case cfg.Concurrency < 1:
		return errors.New("-c must be >= 1")
	case cfg.Duration < 0 || cfg.N < 0 || cfg.Warmup < 0:
		return errors.New("-d, -n and -warmup must not be negative")
	case cfg.Duration == 0 && cfg.N == 0:
		return errors.New("need -d > 0 or -n > 0")
	case cfg.Rate < 0:
		return errors.New("-rate must not be negative")
	case cfg.Qty < 1:
		return errors.New("-qty must be >= 1")
	case cfg.Total < -1:
		return errors.New("-total must be >= 0 or -1 (unknown)")
	case cfg.Timeout <= 0:
		return errors.New("-timeout must be > 0")
	case cfg.Conns != connsPerWorker && cfg.Conns != connsShared:
		return fmt.Errorf("-conns must be %q or %q", connsPerWorker, connsShared)
	case cfg.SKUs < 1:
		return errors.New("-skus must be >= 1")
	case cfg.SKUs > 1 && cfg.BodyTemplate != "":
		return errors.New("-skus spreads the default body; it does not combine with -body-template")
	case cfg.Users < 0:
		return errors.New("-users must be >= 0")
	case cfg.Users > 0 && cfg.BodyTemplate != "":
		return errors.New("-users adds user_id to the default body; it does not combine with -body-template")
	case len(cfg.URLs) > cfg.Concurrency:
		return fmt.Errorf("%d URLs but -c %d: every URL needs a worker", len(cfg.URLs), cfg.Concurrency)
	}
	for _, r := range cfg.IDPrefix {
		if r < 0x20 || r == '"' || r == '\\' || r == 0x7f {
			return fmt.Errorf("-id-prefix %q must not contain quotes, backslashes or control characters", cfg.IDPrefix)
		}
	}
	return nil
}

func randomPrefix() string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return "lg" + hex.EncodeToString(b[:]) + "-"
}
