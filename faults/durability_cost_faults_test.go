//go:build faults

package faults

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// What each shard durability mode costs: deductions per second of a
// closed-loop run (bench/loadgen, c = 64, 1 s warmup, 5 s measured) on one
// node with one hot SKU on 4 partitions over 3 shards, the same shape as
// docs/BENCHMARKS.md's stockd row; three repetitions, modes interleaved,
// medians. Not part of the suite (a benchmark runs only when asked):
//
//	go test -tags faults -run '^$' -bench DurabilityCost -benchtime 1x -timeout 20m ./faults/
func BenchmarkDurabilityCost(b *testing.B) {
	lg := stocktest.Binary(b, "github.com/stockd/stockd/bench/loadgen")
	type run struct{ rps, p50, p99 float64 }
	runs := map[string][]run{}
	modes := []string{"none", "aof", "replica"}
	for rep := 1; rep <= 3; rep++ {
		for _, mode := range modes {
			b.Run(fmt.Sprintf("%s/rep%d", mode, rep), func(b *testing.B) {
				o := envOpts{shards: 3, redisArgs: map[int][]string{}}
				if mode == "none" {
					for i := 0; i < 3; i++ {
						o.redisArgs[i] = []string{"--appendonly", "no"}
					}
				}
				e := newEnv(b, o)
				for _, s := range e.shards {
					switch mode {
					case "none":
						s.Fields = map[string]string{"durability": "none"}
					case "aof":
						s.Fields = map[string]string{"durability": "aof"}
					case "replica":
						s.Fields = map[string]string{"durability": "replica", "replicas": "1", "wait_timeout": "100ms"}
						replica := stocktest.StartRedis(b, "--replicaof", "127.0.0.1", strconv.Itoa(s.Redis.Port))
						waitReplicated(b, s.Redis, replica)
					}
				}
				d := e.startStockd(nodeOpts{})
				d.putSKU("cost", 200_000_000, 4, 1000, 200)
				out := filepath.Join(b.TempDir(), "loadgen.json")
				cmd := exec.Command(lg, "-url", "http://"+d.hot+"/v1/deduct", "-sku", "cost", "-c", "64",
					"-d", "5s", "-warmup", "1s", "-id-prefix", fmt.Sprintf("%s-%d-", mode, rep), "-json", out)
				if msg, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("loadgen: %v: %s", err, msg)
				}
				raw, err := os.ReadFile(out)
				if err != nil {
					b.Fatal(err)
				}
				var res struct {
					OK           uint64            `json:"ok"`
					StatusCounts map[string]uint64 `json:"status_counts"`
					RPS          float64           `json:"throughput_rps"`
					P50          float64           `json:"p50_ms"`
					P99          float64           `json:"p99_ms"`
				}
				if err := json.Unmarshal(raw, &res); err != nil {
					b.Fatal(err)
				}
				for code, n := range res.StatusCounts {
					if n > 0 {
						b.Errorf("%s rep %d: %d answers %s", mode, rep, n, code)
					}
				}
				runs[mode] = append(runs[mode], run{res.RPS, res.P50, res.P99})
				b.ReportMetric(res.RPS, "deductions/s")
			})
		}
	}
	median := func(xs []float64) float64 {
		if len(xs) == 0 {
			return 0
		}
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "\n| mode | deductions/s (median of %d; min-max) | p50 ms | p99 ms | vs none |\n|---|---|---|---|---|\n", 3)
	base := 0.0
	for _, mode := range modes {
		var rps, p50, p99 []float64
		for _, r := range runs[mode] {
			rps, p50, p99 = append(rps, r.rps), append(p50, r.p50), append(p99, r.p99)
		}
		if mode == "none" {
			base = median(rps)
		}
		ratio := "n/a"
		if base > 0 {
			ratio = fmt.Sprintf("%.2fx", median(rps)/base)
		}
		fmt.Fprintf(&tb, "| %s | %.0f (%.0f-%.0f) | %.2f | %.1f | %s |\n", mode, median(rps), slices.Min(rps), slices.Max(rps), median(p50), median(p99), ratio)
	}
	// Printed, not logged: the parent of sub-benchmarks shows no log.
	fmt.Printf("durability cost, %s:%s", time.Now().UTC().Format("2006-01-02 15:04 UTC"), tb.String())
}
