package daemon

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// idleCallRate starts a node with skus idle SKUs (one partition each,
// stock left in the pool so that the sweep looks at them), lets their
// start-up reads pass, and returns the Redis calls per second the node
// makes while nobody buys (INFO commandstats on its shard over a spell).
// With buy set, it then buys one unit of every tenth SKU and waits until
// each of those deductions is in MySQL.
func idleCallRate(t *testing.T, skus int, buy bool) (float64, map[string]int64) {
	e := newEnv(t, 1)
	cfg := e.config()
	n := startNode(t, cfg)
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(skus); i = next.Add(1) - 1 {
				putSKU(t, n, "idle-"+strconv.FormatInt(i, 10), 100, 1, 10, 2)
			}
		}()
	}
	wg.Wait()
	// Start-up: every new stream is read once, every new partition swept
	// once; the idle round then runs at its own pace.
	idlePoll := max(cfg.Sync.IdlePollInterval, cfg.Scheduler.IdleSweepEvery)
	time.Sleep(idlePoll + 2*time.Second)
	c := e.shards[0].Client()
	a := commandCalls(t, c)
	start := time.Now()
	time.Sleep(2 * idlePoll)
	total, by := callsBetween(a, commandCalls(t, c))
	rate := float64(total) / time.Since(start).Seconds()
	t.Logf("%d idle SKUs: %.1f Redis calls/s %v", skus, rate, by)

	if buy {
		b := stocktest.NewBuyer(8)
		want := map[string]bool{}
		for i := 0; i < skus; i += 10 {
			sku := "idle-" + strconv.Itoa(i)
			reqID := "idle-buy-" + strconv.Itoa(i)
			a, err := b.Deduct(n.hot, sku, 1, reqID)
			if err != nil || a.Status != "ok" {
				t.Fatalf("deduct %s: %+v %v", sku, a, err)
			}
			want[reqID] = true
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			var got int
			if err := e.db.QueryRow(`SELECT COUNT(*) FROM deductions WHERE request_id LIKE 'idle-buy-%'`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got == len(want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d deductions written back after 30 s", got, len(want))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return rate, by
}

// Idle partitions cost a bounded number of Redis calls (issue 13 target 6,
// issue 14): the write-back reads a stream when a take signals it, and the
// sweep reads a partition that saw takes; idle ones get safety reads
// within a per-node budget. Ten times the SKUs must not cost anywhere near
// ten times the calls (before this, every stream was read every 50 ms and
// every partition inspected every second: the calls grew with the SKUs).
// Deductions on a few of the 500 SKUs are then all written back.
func TestIdleSKUsRedisCallsBounded(t *testing.T) {
	few, fewBy := idleCallRate(t, 50, false)
	many, manyBy := idleCallRate(t, 500, true)
	ratio := many / max(few, 1)
	t.Logf("50 SKUs: %.1f calls/s; 500 SKUs: %.1f calls/s; ratio %.2f", few, many, ratio)
	if ratio > 4 {
		t.Errorf("500 idle SKUs make %.1fx the Redis calls of 50 (%s vs %s): idle work grows with the SKU count",
			ratio, fmt.Sprint(manyBy), fmt.Sprint(fewBy))
	}
}

// Takes on partitions another node owns reach the owner's write-back as a
// "written" hint: with the safety reads and the idle sweep an hour away,
// every deduction made through any of three nodes is still in MySQL.
func TestClusterWriteHintsCarryOtherNodesTakes(t *testing.T) {
	e := newEnv(t, 2)
	nodes := startSaleCluster(t, e, func(c *Config) {
		c.Sync.IdlePollInterval = time.Hour
		c.Scheduler.IdleSweepEvery = time.Hour
	})
	putSKU(t, nodes[0], "hinted", 300, 4, 20, 5)
	waitKnown(t, nodes, "hinted")
	// Readers start with a read of the whole stream: let every owner
	// start its readers first, so that only signals and hints are left.
	time.Sleep(2 * time.Second)
	// Buy through a node that owns none of the SKU's partitions: each of
	// its takes lands in a stream another node reads.
	var buyer *node
	owners := clusterOf(t, nodes[0]).Owners
	for _, n := range nodes {
		owns := false
		for _, p := range owners[n.d.cfg.NodeName].Partitions {
			owns = owns || strings.HasPrefix(p, "hinted/")
		}
		if !owns {
			buyer = n
		}
	}
	if buyer == nil {
		t.Fatalf("every node owns a partition of the SKU: %+v", owners)
	}
	b := stocktest.NewBuyer(32)
	o := crowdOver(t, b, []string{buyer.hot}, "hinted", 150, "h-")
	if o.OK == 0 {
		t.Fatal("nothing sold")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got int
		if err := e.db.QueryRow(`SELECT COUNT(*) FROM deductions WHERE sku = 'hinted'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == o.OK {
			break
		}
		if got > o.OK {
			t.Fatalf("%d detail rows for %d deductions", got, o.OK)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d deductions written back after 30 s", got, o.OK)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
