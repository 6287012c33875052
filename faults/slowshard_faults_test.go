//go:build faults

package faults

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// phase is the latencies of one open-loop run, split by where the
// request's home partition lives.
type phase struct {
	name                 string
	others, slowHomed    []time.Duration
	othersBad, slowOK    int
	slowUnavail, pending int
}

// Case 3: one shard slowed to 200 ms per call, then blackholed. Requests
// whose home partition lives on another shard must not notice: their p99
// stays within noise of the runs without a fault. (A request homed on the
// slow shard cannot avoid it: its pointer lives there.) Afterwards,
// without the toxic, every request gets its answer, the rest sells one
// unit at a time, and the books balance.
func TestSlowShard(t *testing.T) {
	const (
		sku   = "slow"
		total = 9000
		rate  = 200 // deductions per second, open loop
		run   = 8 * time.Second
	)
	e := newEnv(t, envOpts{shards: 3, proxyShards: true})
	d := e.startStockd(nodeOpts{env: map[string]string{"STOCKD_REDIS_TIMEOUT": "1s"}})
	d.putSKU(sku, total, 6, 1000, 100)
	slow := e.shards[0]
	shardOf := d.shardOf(sku)
	var pids []int
	for pid := range shardOf {
		pids = append(pids, pid)
	}

	h := newHistory()
	b := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second}), sku, h, d.hot)
	w := watchDoubt(e, sku)
	var unfinished []*op
	var umu sync.Mutex
	seq := 0
	// openLoop sends rate deductions per second for run, one attempt each,
	// every request on its own goroutine (a slow one holds nobody up).
	openLoop := func(name string) phase {
		ph := phase{name: name}
		var mu sync.Mutex
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		end := time.Now().Add(run)
		for time.Now().Before(end) {
			<-tick.C
			seq++
			o := b.begin(seq%64, fmt.Sprintf("%s-%d", name, seq), 1)
			onSlow := shardOf[homePID(sku, o.ID, pids)] == slow.ID
			wg.Add(1)
			go func() {
				defer wg.Done()
				definite := b.attempt(o, 0)
				mu.Lock()
				switch {
				case onSlow && definite:
					ph.slowHomed = append(ph.slowHomed, o.Latency)
					ph.slowOK++
				case onSlow:
					ph.slowUnavail++
				case definite:
					ph.others = append(ph.others, o.Latency)
				default:
					ph.others = append(ph.others, o.Latency)
					ph.othersBad++
				}
				mu.Unlock()
				if definite {
					b.finish(o) // records it
					return
				}
				umu.Lock()
				unfinished = append(unfinished, o)
				umu.Unlock()
			}()
		}
		wg.Wait()
		return ph
	}

	var phases []phase
	phases = append(phases, openLoop("base1"))
	slow.Proxy.slow(200)
	phases = append(phases, openLoop("slow200ms"))
	slow.Proxy.clear()
	time.Sleep(time.Second)
	phases = append(phases, openLoop("base2"))
	slow.Proxy.blackhole()
	phases = append(phases, openLoop("blackhole"))
	slow.Proxy.clear()

	// Nothing stranded: every request that got no answer gets one now,
	// then the rest sells one unit at a time.
	homes := map[int]bool{}
	for pid, sh := range shardOf {
		homes[pid] = sh == slow.ID
	}
	recovery, recovered := startProbe(b, sku, pids, homes, "probe-", 99).wait(30 * time.Second)
	var wg sync.WaitGroup
	for _, o := range unfinished {
		wg.Add(1)
		go func() { defer wg.Done(); b.finish(o) }()
	}
	wg.Wait()
	sold := b.sellRest("rest-", time.Minute)
	b.checkAnswers()

	r := settle(t, e, d, sku, h, w, settleOpts{total: total, linearizable: true})
	r.RecoveryWhat = "toxic removed -> first ok from a partition of the slow shard"
	r.Recovery = recovery
	if !recovered {
		t.Errorf("the slow shard's partitions did not sell within 30s of the toxic's removal")
	}
	if r.Held != total {
		t.Errorf("sold %d of %d units (stranded %d)", r.Held, total, total-r.Held)
	}
	r.Extra["sold after the faults"] = fmt.Sprintf("%d units, one at a time; %d requests finished after the toxic went", sold, len(unfinished))
	base := max(percentile(phases[0].others, 99), percentile(phases[2].others, 99))
	for _, ph := range phases {
		r.Extra["p99 "+ph.name] = fmt.Sprintf("others %s (p50 %s, n=%d, not definite %d); homed on %s: %d ok (p99 %s), %d unavailable",
			percentile(ph.others, 99).Round(100*time.Microsecond), percentile(ph.others, 50).Round(100*time.Microsecond), len(ph.others), ph.othersBad,
			slow.ID, ph.slowOK, percentile(ph.slowHomed, 99).Round(time.Millisecond), ph.slowUnavail)
	}
	// Within noise: the two clean runs bound it.
	limit := max(2*base, base+20*time.Millisecond)
	r.Extra["p99 limit"] = fmt.Sprintf("%s (max(2x, +20ms) of the clean runs' p99 %s)", limit.Round(100*time.Microsecond), base.Round(100*time.Microsecond))
	for _, ph := range []phase{phases[1], phases[3]} {
		if p := percentile(ph.others, 99); p > limit {
			t.Errorf("%s: p99 of requests homed on other shards %s, above %s", ph.name, p, limit)
		}
		if ph.othersBad > 0 {
			t.Errorf("%s: %d requests homed on other shards got no answer", ph.name, ph.othersBad)
		}
	}
	r.Log(t)
}
