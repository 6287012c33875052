package measure

import (
	"bufio"
	"bytes"
	"strings"
	"time"
)

// Profile is a CPU profile of stockd during a closed-loop run like the
// stockd row's, its samples attributed to the parts of stockd.
type Profile struct {
	Load     *Load
	Seconds  float64 // profile duration
	Total    float64 // CPU seconds sampled
	Shares   []Share
	Top      string // `go tool pprof -top`, first lines
	Calls    float64
	Requests float64
	Err      string
}

// Share is the CPU seconds sampled in one part of stockd.
type Share struct {
	Part string
	Sec  float64
}

// Part is a part of stockd a sample is attributed to, by the first part
// that has a function (by prefix) anywhere on the sample's stack.
type Part struct {
	Name  string
	Match []string
}

// Parts are the parts of stockd, in the order their rules are tried.
var Parts = []Part{
	{"write-back (sync: stream reader, batcher, publisher, applier; AMQP and MySQL clients)", []string{"github.com/stockd/stockd/sync.", "github.com/rabbitmq/amqp091-go", "github.com/go-sql-driver/mysql"}},
	{"refills (preallocate)", []string{"github.com/stockd/stockd/preallocate."}},
	{"hot path (fasthttp front, daemon hot handler, scheduler, shard take)", []string{"github.com/stockd/stockd/daemon.", "github.com/stockd/stockd/scheduler.", "github.com/stockd/stockd/shard.", "github.com/valyala/fasthttp"}},
	{"Redis client I/O goroutines (rueidis pipes; shared by hot path and write-back)", []string{"github.com/redis/rueidis"}},
	{"garbage collector (background workers)", []string{"runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge"}},
}

// OtherPart takes the samples no part claims.
const OtherPart = "other (Go scheduler, netpoll, timers, idle goroutines)"

// partOf is the first part with a function of stack.
func partOf(stack []string) string {
	for _, r := range Parts {
		for _, fn := range stack {
			for _, m := range r.Match {
				if strings.HasPrefix(fn, m) {
					return r.Name
				}
			}
		}
	}
	return OtherPart
}

// Attribute sums the samples of `go tool pprof -traces` output by part.
func Attribute(traces []byte) (float64, []Share) {
	sums := map[string]float64{}
	var total, val float64
	var stack []string
	flush := func() {
		if val > 0 {
			sums[partOf(stack)] += val
			total += val
		}
		val, stack = 0, stack[:0]
	}
	sc := bufio.NewScanner(bytes.NewReader(traces))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	inBlock := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "-----------+") {
			flush()
			inBlock = true
			continue
		}
		f := strings.Fields(line)
		if !inBlock || len(f) == 0 {
			continue
		}
		if val == 0 && len(stack) == 0 {
			// The first line of a sample: its value, then the leaf.
			d, err := time.ParseDuration(f[0])
			if err != nil || len(f) < 2 {
				continue // a label line
			}
			val = d.Seconds()
			stack = append(stack, f[1])
			continue
		}
		stack = append(stack, f[0])
	}
	flush()
	var out []Share
	for _, r := range Parts {
		out = append(out, Share{r.Name, sums[r.Name]})
	}
	return total, append(out, Share{OtherPart, sums[OtherPart]})
}

// TopLines keeps the table of `go tool pprof -top`.
func TopLines(s string) string {
	var out []string
	on := false
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "flat%") {
			on = true
		}
		if on && strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
