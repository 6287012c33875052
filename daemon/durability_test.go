package daemon

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

// replicaEnv is one primary shard with one replica, in replica mode.
func replicaEnv(t *testing.T) (*env, Config, *stocktest.Redis, *stocktest.Redis) {
	e := newEnv(t, 1)
	primary := e.shards[0]
	noSyncDelay(t, primary)
	replica := stocktest.StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port), "--repl-diskless-sync-delay", "0")
	waitReplicaSynced(t, primary)
	cfg := e.config()
	cfg.Shards = []shard.Config{{ID: "s1", Addr: primary.Addr, Settings: shard.Settings{Durability: shard.DurabilityReplica, Replicas: 1, WaitTimeout: time.Second}}}
	return e, cfg, primary, replica
}

// noSyncDelay makes a primary start full syncs at once (Redis waits 5 s
// by default for more replicas to share a diskless sync).
func noSyncDelay(t *testing.T, r *stocktest.Redis) {
	t.Helper()
	c := r.Client()
	if err := c.Do(context.Background(), c.B().ConfigSet().ParameterValue().ParameterValue("repl-diskless-sync-delay", "0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

func waitReplicaSynced(t *testing.T, primary *stocktest.Redis) {
	t.Helper()
	c := primary.Client()
	stocktest.Eventually(t, 10*time.Second, func() (bool, string) {
		// Connected is not enough: until its first sync is done the
		// replica acknowledges nothing, and WAIT times out.
		info, _ := c.Do(context.Background(), c.B().Info().Section("replication").Build()).ToString()
		return containsLine(info, "connected_slaves:1") && strings.Contains(info, "state=online"), "replica did not connect: " + info
	})
}

func containsLine(s, line string) bool {
	for _, l := range splitLines(s) {
		if l == line {
			return true
		}
	}
	return false
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			l := s[start:i]
			if len(l) > 0 && l[len(l)-1] == '\r' {
				l = l[:len(l)-1]
			}
			out = append(out, l)
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// In replica mode a deduction is acknowledged only once a replica has it:
// with the replica gone, deductions answer 503 (never ok); when it is back,
// they sell again; then the primary dies, the replica is promoted and the
// shard moved there, and nothing acknowledged is missing.
func TestReplicaModeAndFailover(t *testing.T) {
	e, cfg, primary, replica := replicaEnv(t)
	n := startNode(t, cfg)
	putSKU(t, n, "rep", 1000, 2, 20, 5)
	b := stocktest.NewBuyer(16)

	acked := stocktest.NewTally()
	buy := func(prefix string, k int) *stocktest.Tally {
		o := stocktest.NewTally()
		for i := 0; i < k; i++ {
			id := prefix + strconv.Itoa(i)
			a, err := b.Deduct(n.hot, "rep", 1, id)
			o.Add(t, id, a, err)
			if err == nil && a.Code == 200 {
				acked.Add(t, id, a, err)
			}
		}
		return o
	}
	if o := buy("a-", 50); o.OK != 50 {
		t.Fatalf("with the replica: %d ok of 50 (other %v)", o.OK, o.Other)
	}

	replica.Kill()
	// Concurrent, so that they share take calls and WAITs.
	if o := stocktest.Crowd(t, b, n.hot, "rep", 20, "b-", func(int) int64 { return 1 }); o.OK != 0 || o.Other[503] != 20 {
		t.Fatalf("without the replica: %d ok, statuses %v; want every answer 503", o.OK, o.Other)
	}
	replica.Restart()
	waitReplicaSynced(t, primary)
	stocktest.Until(t, 10*time.Second, "deductions did not come back with the replica", func() bool {
		return buy(fmt.Sprintf("c%d-", time.Now().UnixNano()), 5).OK == 5
	})
	// The 503s of b- may have deducted on the primary: their retries get
	// the first outcome (now replicated), not a second deduction.
	if o := buy("b-", 20); o.OK != 20 {
		t.Fatalf("retries of the 503s: %d ok of 20", o.OK)
	}

	// Failover: the primary dies, the replica is promoted and the shard
	// pointed at it. Everything acknowledged is there.
	primary.Kill()
	rc := replica.Client()
	if err := rc.Do(context.Background(), rc.B().Replicaof().No().One().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if code := adminDo(t, n, "PUT", "/admin/shards/s1", fmt.Sprintf(`{"addr":%q}`, replica.Addr), &v); code != 200 {
		t.Fatalf("move shard: %d", code)
	}
	// The promoted replica gets a replica of its own (until then replica
	// mode answers 503); then every acknowledged request retried returns
	// its first outcome: nothing acknowledged was lost by the failover.
	stocktest.StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(replica.Port))
	waitReplicaSynced(t, replica)
	for tok, id := range acked.Reservations {
		a, err := b.Deduct(n.hot, "rep", 1, id)
		if err != nil || a.Code != 200 || a.Reservation != tok {
			t.Fatalf("retry of %s after failover: %+v %v, want %s", id, a, err, tok)
		}
	}
	if o := buy("d-", 20); o.OK != 20 {
		t.Fatalf("selling after failover: %d ok of 20 (%v)", o.OK, o.Other)
	}
	r := waitSynced(t, n, "rep", 10*time.Second)
	if r.InDoubt != 0 || r.Reserved < acked.Units {
		t.Fatalf("after failover: %+v; acknowledged %d", r, acked.Units)
	}

	// A restart with the same config file (which still names the dead
	// primary) keeps the failover: the node starts, connected to the
	// promoted replica, and acknowledged requests keep their outcome.
	n.stop()
	n = startNode(t, cfg)
	for tok, id := range acked.Reservations {
		a, err := b.Deduct(n.hot, "rep", 1, id)
		if err != nil || a.Code != 200 || a.Reservation != tok {
			t.Fatalf("retry of %s after restart: %+v %v, want %s", id, a, err, tok)
		}
	}
	if o := buy("e-", 20); o.OK != 20 {
		t.Fatalf("selling after restart: %d ok of 20 (%v)", o.OK, o.Other)
	}
	waitSynced(t, n, "rep", 10*time.Second)
	// So does the verify command, which reads the shards the same way.
	if rep, err := Verify(context.Background(), cfg, "rep"); err != nil || !rep.OK {
		t.Fatalf("stockd verify after failover: %+v %v", rep, err)
	}
	_ = e
}

// A shard that stops answering (SIGSTOP) is avoided: requests whose path
// goes through it fail fast with 503 once it is known unhealthy, the other
// shards keep selling, and when it answers again it is used again.
func TestFrozenShardFailsFast(t *testing.T) {
	e := newEnv(t, 3)
	cfg := e.config()
	cfg.RedisTimeout = 300 * time.Millisecond
	n := startNode(t, cfg)
	putSKU(t, n, "frz", 100000, 6, 100, 20)
	b := stocktest.NewBuyer(32)
	e.shards[0].Stop()
	// The first requests homed there wait out the timeout and mark it
	// unhealthy; after that, answers come fast.
	stocktest.Crowd(t, b, n.hot, "frz", 200, "warm-", func(int) int64 { return 1 })
	start := time.Now()
	o := stocktest.Crowd(t, b, n.hot, "frz", 600, "x-", func(int) int64 { return 1 })
	took := time.Since(start)
	if o.OK == 0 || o.Other[503] == 0 {
		t.Fatalf("ok %d, statuses %v: want sales on the healthy shards and 503 for the frozen one", o.OK, o.Other)
	}
	if took > 3*time.Second {
		t.Fatalf("600 requests took %s with a frozen shard: not failing fast", took)
	}
	e.shards[0].Continue()
	stocktest.Eventually(t, 10*time.Second, func() (bool, string) {
		o := stocktest.Crowd(t, b, n.hot, "frz", 60, fmt.Sprintf("y%d-", time.Now().UnixNano()), func(int) int64 { return 1 })
		return o.OK == 60, fmt.Sprintf("the thawed shard is not used again: %v", o.Other)
	})
	waitSynced(t, n, "frz", 10*time.Second)
	t.Logf("with one of 3 shards frozen: %d ok, %d 503 in %s", o.OK, o.Other[503], took.Round(time.Millisecond))
}

// Admission limits answer 429 before touching stock.
func TestAdmissionLimits(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config()
	cfg.Limits.ClientRPS, cfg.Limits.ClientBurst = 20, 10
	n := startNode(t, cfg)
	putSKU(t, n, "lim", 1000, 2, 50, 10)
	b := stocktest.NewBuyer(8)
	var ok, shed int
	for i := 0; i < 100; i++ {
		a, err := b.Deduct(n.hot, "lim", 1, "f-"+strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		switch a.Code {
		case 200:
			ok++
		case 429:
			shed++
		default:
			t.Fatalf("unexpected %+v", a)
		}
	}
	if shed == 0 || ok < 10 || ok > 40 {
		t.Fatalf("a flood of 100 from one client at 20/s, burst 10: %d ok, %d shed", ok, shed)
	}
	r := waitSynced(t, n, "lim", 10*time.Second)
	if r.Reserved != int64(ok) {
		t.Fatalf("shed requests touched stock: reserved %d, ok %d", r.Reserved, ok)
	}
}

// A shard that went back is caught by every node, not only by one that
// took there: node b never sold on the partition, yet once write-back has
// landed node a's deductions in MySQL, b must not take on the old state
// (it would reuse their sequences, so their detail ids).
func TestRollbackCaughtByEveryNode(t *testing.T) {
	e := newEnv(t, 1)
	nodes := startCluster(t, e, 2)
	a, b := nodes[0], nodes[1]
	putSKU(t, a, "rb", 1000, 1, 100, 20)
	waitKnown(t, nodes, "rb")
	buyer := stocktest.NewBuyer(4)
	for i := 0; i < 50; i++ {
		if ans, err := buyer.Deduct(a.hot, "rb", 1, "a-"+strconv.Itoa(i)); err != nil || ans.Code != 200 {
			t.Fatalf("deduction %d on a: %+v %v", i, ans, err)
		}
	}
	var seen int64
	_ = stocktest.Wait(10*time.Second, func() (bool, string) { // a timeout is reported just below
		if err := e.db.QueryRow(`SELECT seen_seq FROM partitions WHERE sku = 'rb' AND pid = 0`).Scan(&seen); err != nil {
			t.Fatal(err)
		}
		return seen >= 50, ""
	})
	if seen < 50 {
		t.Fatalf("seen_seq %d after 10s; want 50 (write-back)", seen)
	}

	// The shard goes back 40 deductions (as a restart from an older file
	// or a failover to a lagging replica would): its state's sequence, and
	// its stream, whose last ID went back with it.
	c := e.shards[0].Client()
	tag := "{" + e.prefix + ":rb:0}"
	if err := c.Do(context.Background(), c.B().Hset().Key(tag+":s").FieldValue().FieldValue("seq", "10").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(context.Background(), c.B().Del().Key(tag+":x").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// Pacing: three reload periods, so node b has compared its registry
	// with MySQL (seen_seq 50) since write-back landed; no admin answer or
	// metric shows a reload, so there is no condition to wait for.
	time.Sleep(3 * e.config().ReloadEvery)

	ans, err := buyer.Deduct(b.hot, "rb", 1, "b-0")
	if err != nil {
		t.Fatal(err)
	}
	if ans.Code == 200 {
		t.Fatalf("node b sold on the rolled-back state: %+v", ans)
	}
	stocktest.Eventually(t, 10*time.Second, func() (bool, string) {
		// (The healer then opens a replacement, partition 1.)
		v := getSKU(t, b, "rb")
		return len(v.Partitions) >= 1 && v.Partitions[0].State == "fenced", fmt.Sprintf("partition not fenced 10s after node b met the rollback: %+v", v)
	})
	var rows int
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM deductions WHERE sku = 'rb' AND request_id LIKE 'b-%'`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Fatalf("%d detail rows of node b's requests; want 0", rows)
	}
}

// A node (re)started while one of its shards is down starts all the same:
// the other shards sell, requests that need the dead one answer 503, and
// once it is back they sell too. Nothing is lost or doubled.
func TestStartWithAShardDown(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config()
	n := startNode(t, cfg)
	putSKU(t, n, "down", 2000, 4, 50, 10)
	b := stocktest.NewBuyer(8)
	if o := stocktest.Crowd(t, b, n.hot, "down", 100, "before-", func(int) int64 { return 1 }); o.OK != 100 {
		t.Fatalf("before: %d ok of 100 (other %v)", o.OK, o.Other)
	}
	waitSynced(t, n, "down", 10*time.Second)
	n.stop()
	e.shards[1].Kill()
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			e.shards[1].Restart()
		}
	})

	start := time.Now()
	n = startNode(t, cfg)
	t.Logf("node ready %s after starting with s2 down", time.Since(start).Round(time.Millisecond))
	during := stocktest.NewTally()
	var unanswered []string
	for i := 0; i < 200; i++ {
		id := "during-" + strconv.Itoa(i)
		a, err := b.Deduct(n.hot, "down", 1, id)
		during.Add(t, id, a, err)
		if err != nil || a.Code != 200 {
			unanswered = append(unanswered, id)
		}
	}
	if during.OK == 0 || during.Other[503] == 0 || during.OK+during.Other[503] != 200 {
		t.Fatalf("with s2 down: %d ok, other %v; want some ok (homed on s1), the rest 503", during.OK, during.Other)
	}

	e.shards[1].Restart()
	restarted = true
	stocktest.Eventually(t, 20*time.Second, func() (bool, string) {
		var still []string
		for _, id := range unanswered {
			a, err := b.Deduct(n.hot, "down", 1, id)
			if err != nil || a.Code != 200 {
				still = append(still, id)
			}
		}
		unanswered = still
		return len(unanswered) == 0,
			fmt.Sprintf("%d requests still not answered 20s after s2 came back: %v", len(unanswered), unanswered[:min(5, len(unanswered))])
	})
	r := waitSynced(t, n, "down", 15*time.Second)
	if r.Reserved != 300 || r.InDoubt != 0 || r.Doubled != 0 {
		t.Fatalf("after: %+v; want 300 reserved, nothing in doubt or doubled", r)
	}
}
