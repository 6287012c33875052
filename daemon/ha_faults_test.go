//go:build faults

package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

// haSale runs buyers of one unit each against sku until it is sold out;
// a 503 is retried with the same request id (what a gateway does). mid
// runs once a third of total is sold. It returns the outcomes and how
// many 503s were answered after mid started, and when the last one was;
// hr gets every answer (mid should call hr.killed at its fault).
type haSaleResult struct {
	o             *stocktest.Tally
	after503      int64
	last503       time.Duration // after mid started
	soldBeforeMid int64
}

func haSale(t *testing.T, n *node, sku string, total int64, hr *haReport, mid func()) haSaleResult {
	t.Helper()
	b := stocktest.NewBuyer(16)
	o := stocktest.NewTally()
	var sold, unavailable atomic.Int64
	var midAt, last503 atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				deadline := time.Now().Add(60 * time.Second)
				for {
					a, err := b.Deduct(n.hot, sku, 1, id)
					if err == nil && a.Code == 503 && time.Now().Before(deadline) {
						if midAt.Load() != 0 {
							unavailable.Add(1)
							last503.Store(time.Now().UnixNano())
						}
						hr.unavailable()
						time.Sleep(20 * time.Millisecond) // pacing: a gateway's backoff before its retry
						continue
					}
					o.Add(t, id, a, err)
					hr.answer(id, a, err)
					if err == nil && a.Code == 200 {
						sold.Add(1)
					}
					if err != nil || a.Code != 200 {
						return
					}
					break
				}
			}
		}(w)
	}
	stocktest.Eventually(t, 60*time.Second, func() (bool, string) {
		return sold.Load() >= total/3, fmt.Sprintf("only %d sold in 60s", sold.Load())
	})
	r := haSaleResult{o: o, soldBeforeMid: sold.Load()}
	midAt.Store(time.Now().UnixNano())
	mid()
	wg.Wait()
	r.after503 = unavailable.Load()
	if l := last503.Load(); l > midAt.Load() {
		r.last503 = time.Duration(l - midAt.Load())
	}
	return r
}

// A Redis Cluster shard (three masters, three replicas): a sale whose
// partitions span every master; a master holding partitions is killed
// (-9) mid-sale and the cluster promotes its replica; then one
// partition's slot is migrated to another master (SETSLOT/MIGRATE) while
// buyers buy. Every unit sells exactly once and MySQL holds exactly what
// callers were told.
func TestHAClusterShardSale(t *testing.T) {
	e := newEnv(t, 0)
	cl := stocktest.StartRedisCluster(t, 3)
	cfg := e.config()
	cfg.Shards = []shard.Config{{ID: "c1", Cluster: &shard.ClusterConfig{Addrs: cl.Seeds()[:2]}}}
	n := startNode(t, cfg)
	const partitions = 6
	// A SKU whose partitions' hash tags fall on every master.
	sku := ""
	for i := 0; sku == ""; i++ {
		cand := "cl" + strconv.Itoa(i)
		masters := map[*stocktest.Redis]bool{}
		for pid := 0; pid <= partitions; pid++ {
			masters[cl.MasterOf(t, "{"+e.prefix+":"+cand+":"+strconv.Itoa(pid)+"}")] = true
		}
		if len(masters) == 3 {
			sku = cand
		}
	}
	const total = 1200
	v := putSKU(t, n, sku, total, partitions, 40, 10)
	held := map[*stocktest.Redis]bool{}
	for _, p := range v.Partitions {
		held[cl.MasterOf(t, "{"+e.prefix+":"+sku+":"+strconv.Itoa(p.ID)+"}")] = true
	}
	if len(held) != 3 {
		t.Fatalf("partitions %+v on %d masters, want 3", v.Partitions, len(held))
	}
	// GET /admin/shards shows the masters and which partitions each holds,
	// as the cluster itself places them.
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		var all []struct {
			ID                 string              `json:"id"`
			Kind               string              `json:"kind"`
			Masters            []string            `json:"masters"`
			PartitionsByMaster map[string][]string `json:"partitions_by_master"`
		}
		adminDo(t, n, "GET", "/admin/shards", "", &all)
		placed := 0
		for _, sv := range all {
			for m, ps := range sv.PartitionsByMaster {
				for _, p := range ps {
					pid := p[strings.LastIndexByte(p, '/')+1:]
					if want := cl.MasterOf(t, "{"+e.prefix+":"+sku+":"+pid+"}").Addr; m != want {
						t.Fatalf("view puts %s on %s, the cluster on %s", p, m, want)
					}
					placed++
				}
			}
			if sv.ID == "c1" && (sv.Kind != shard.KindCluster || len(sv.Masters) != 3) {
				placed = -1
			}
		}
		return placed == len(v.Partitions), fmt.Sprintf("shard view does not place the %d partitions: %+v", len(v.Partitions), all)
	})
	victim := cl.MasterOf(t, "{"+e.prefix+":"+sku+":"+strconv.Itoa(v.Partitions[0].ID)+"}")
	t.Cleanup(func() { victim.Restart() })
	hr := newHAReport(t, e.db, sku, total, fmt.Sprintf("Redis Cluster shard (3 masters, 3 replicas), %d units in %d partitions on every master; "+
		"kill -9 of a master holding partitions once a third sold (the cluster promotes its replica), then one partition's slot migrated to another master while buyers buy", total, partitions))
	var moved string
	r := haSale(t, n, sku, total, hr, func() {
		hr.killed()
		victim.Kill()
		// Then, while buyers buy, the slot of a partition on another
		// master moves to a third master.
		for _, p := range v.Partitions {
			tag := "{" + e.prefix + ":" + sku + ":" + strconv.Itoa(p.ID) + "}"
			from := cl.MasterOf(t, tag)
			if from == victim {
				continue
			}
			for _, to := range cl.Nodes {
				if to != victim && to != from && cl.IsMaster(t, to) {
					cl.MigrateSlot(t, tag, to)
					moved = fmt.Sprintf("partition %d's slot from %s to %s", p.ID, from.Addr, to.Addr)
					break
				}
			}
			if moved != "" {
				break
			}
		}
	})
	if moved == "" {
		t.Fatal("no slot migrated")
	}
	hr.extra("slot migrated", moved)
	if r.o.OK != total || len(r.o.Errs) != 0 || len(r.o.Other) != 0 {
		t.Fatalf("sold %d of %d (errors %v, statuses %v)", r.o.OK, total, r.o.Errs, r.o.Other)
	}
	t.Logf("cluster master kill, then %s: %d sold before, %d answers 503 after the kill (retried), the last %s after it",
		moved, r.soldBeforeMid, r.after503, r.last503.Round(time.Millisecond))
	rep := checkConserved(t, e, n, sku, total)
	hr.books(rep.OK, rep.Reserved, rep.Confirmed)
	if rep.InDoubt != 0 || rep.Doubled != 0 || rep.Pool != 0 {
		t.Fatalf("after the cluster failover: %+v", rep)
	}
}

// A Sentinel-managed shard in aof mode whose replica fell behind: the
// replication link is cut (the primary refuses its resync) so that the primary takes
// deductions the replica lacks, then the primary is killed (-9) and
// Sentinel promotes the stale replica. stockd follows it, its sequence
// checks see the rollback and fence those partitions (their units held in
// doubt, never re-sold), the healer replaces them, the doubt resolves
// after the reservation TTL and the sale ends exactly: 0 oversold.
func TestHASentinelAOFRollbackFenced(t *testing.T) {
	e := newEnv(t, 1)
	set := stocktest.StartSentinelSet(t, stocktest.Name("set"), 1, 3)
	cfg := selfHealConfig(e, shard.DurabilityAOF)
	cfg.Shards = append(cfg.Shards, shard.Config{ID: "s2", Sentinel: &shard.SentinelConfig{MasterSet: set.Name, Addrs: set.SentinelAddrs()},
		Settings: shard.Settings{Durability: shard.DurabilityAOF}})
	// Longer than a failover: the partitions are fenced for the rollback
	// the promoted replica shows, not replaced for being unreachable.
	cfg.Preallocate.ReplaceAfter = 30 * time.Second
	n := startNode(t, cfg)
	const total = 1500
	putSKU(t, n, "rb", total, 6, 50, 10)
	var onS2 int
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM partitions WHERE sku = 'rb' AND shard = 's2'`).Scan(&onS2); err != nil || onS2 == 0 {
		t.Fatalf("no partition on the sentinel shard (%d, %v)", onS2, err)
	}
	hr := newHAReport(t, e.db, "rb", total, fmt.Sprintf("Sentinel shard (primary, 1 replica, 3 sentinels; durability aof) beside a standalone shard, %d units in 6 partitions; "+
		"the replication link cut so the replica falls behind, then kill -9 of the primary: Sentinel promotes the stale replica, stockd fences its partitions", total))
	s := &healSale{t: t, db: e.db, sku: "rb", total: total, nodes: []*node{n}, b: stocktest.NewBuyer(32), giveUp: 300 * time.Millisecond, report: hr}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wg := s.run(ctx, 16, "k")
	s.waitSold(total/3, 30*time.Second)

	old, replica := set.Primary, set.Replicas[0]
	// Cut the replication link: the primary refuses (re)syncs and drops
	// its replica, so what it takes from now on the replica lacks.
	oc := old.Client()
	for _, cmd := range [][]string{{"ACL", "SETUSER", "default", "-sync", "-psync"}, {"CLIENT", "KILL", "TYPE", "replica"}} {
		if err := oc.Do(context.Background(), oc.B().Arbitrary(cmd...).Build()).Error(); err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
	}
	// A few more sales, not many seconds: Sentinel rightly refuses to
	// promote a replica whose link has been down for more than ten times
	// down-after-milliseconds.
	s.waitSold(s.ok.Load()+total/10, 30*time.Second)
	hr.killed()
	old.Kill()
	killed := time.Now()
	t.Cleanup(old.Restart)
	if err := stocktest.Wait(60*time.Second, func() (bool, string) {
		m, err := set.Master()
		return err == nil && m == replica.Addr, ""
	}); err != nil {
		cancel()
		wg.Wait()
		b, _ := os.ReadFile(filepath.Join(set.Sentinels[0].Dir, "redis.log"))
		t.Fatalf("sentinel did not promote the replica in 60s: %s", b)
	}
	promoted := time.Since(killed).Round(time.Millisecond)
	hr.extra("promoted after the kill", promoted.String())
	t.Logf("sentinel promoted the stale replica %s after the kill", promoted)
	s.finish(cancel, wg, 60*time.Second)
	checkFenced(t, e.db, "rb", "s2", 1)
}

// The sentinel case at full size: 8,000 units at full speed, kill
// -9 of the primary mid-sale, no admin call.
func TestHASentinelFailover8000(t *testing.T) { sentinelFailoverSale(t, 8000) }
