package daemon

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

// selfHealConfig is a node configuration for the self-healing tests: a
// short reservation TTL (the doubt of a fenced partition returns to the
// pool after it), a short replace_after, and short Redis timeouts so that
// a dead shard is seen quickly.
func selfHealConfig(e *env, durability string) Config {
	cfg := e.config()
	cfg.RedisTimeout = 300 * time.Millisecond
	cfg.Sync.ReservationTTL = 3 * time.Second
	cfg.Sync.ExpireEvery = 500 * time.Millisecond
	cfg.Preallocate.ReplaceAfter = 2 * time.Second
	for i := range cfg.Shards {
		cfg.Shards[i].Durability = durability
	}
	return cfg
}

// healSale is a sale driven by a crowd of buyers that confirm every
// reservation they get at once, until every unit is confirmed. A request
// id answered 503 is retried (on the next node) with the same id; one that
// keeps answering 503 for giveUp is abandoned (its home is on a dead
// shard) and the buyer moves on to a new id.
type healSale struct {
	t      *testing.T
	db     *sql.DB
	sku    string
	total  int64
	nodes  []*node
	b      *stocktest.Buyer
	giveUp time.Duration
	// report, when set, gets each request id's outcome (ha_faults_test.go).
	report *haReport

	ok        atomic.Int64 // 200 answers to deduct (units: qty is 1)
	confirmed atomic.Int64 // confirms answered confirmed
	refused   atomic.Int64 // confirms answered 409: the reservation was released
	abandoned atomic.Int64
	answers   sync.Map // status code -> *atomic.Int64

	mu sync.Mutex
	// since, once set, is the moment the test started waiting for the SKU
	// to sell again; firstOK is the first 200 answered after it.
	since, firstOK time.Time
}

func (s *healSale) count(code int) {
	v, _ := s.answers.LoadOrStore(code, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func (s *healSale) statuses() map[int]int64 {
	out := map[int]int64{}
	s.answers.Range(func(k, v any) bool { out[k.(int)] = v.(*atomic.Int64).Load(); return true })
	return out
}

// markRecovery starts the clock of "how long was the SKU unsellable".
func (s *healSale) markRecovery() {
	s.mu.Lock()
	s.since, s.firstOK = time.Now(), time.Time{}
	s.mu.Unlock()
}

// unsellable is how long after markRecovery the first 200 came (false
// while none has).
func (s *healSale) unsellable() (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.since.IsZero() || s.firstOK.IsZero() {
		return 0, false
	}
	return s.firstOK.Sub(s.since), true
}

func (s *healSale) sold(at time.Time) {
	s.ok.Add(1)
	s.mu.Lock()
	if !s.since.IsZero() && s.firstOK.IsZero() && at.After(s.since) {
		s.firstOK = at
	}
	s.mu.Unlock()
}

func (s *healSale) done() bool { return s.confirmed.Load() >= s.total }

// run starts workers buyers; they stop when every unit is confirmed or ctx
// ends.
func (s *healSale) run(ctx context.Context, workers int, prefix string) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for k := 0; ctx.Err() == nil && !s.done(); k++ {
				s.buy(ctx, w, prefix+"-w"+strconv.Itoa(w)+"-"+strconv.Itoa(k))
			}
		}(w)
	}
	return &wg
}

// buy runs one request id to an outcome (or abandons it).
func (s *healSale) buy(ctx context.Context, w int, id string) {
	var failingSince time.Time
	var a stocktest.Answer
	var err error
	attempt := 0
	for ; ctx.Err() == nil && !s.done(); attempt++ {
		n := s.nodes[(w+attempt)%len(s.nodes)]
		a, err = s.b.Deduct(n.hot, s.sku, 1, id)
		switch {
		case err == nil && a.Code == 200:
			s.count(200)
			s.report.answer(id, a, err)
			s.sold(time.Now())
			s.confirm(ctx, a.Reservation)
			return
		case err == nil && a.Code == 409:
			s.count(409)
			s.report.answer(id, a, err)
			time.Sleep(20 * time.Millisecond) // pacing: a buyer's pause after a 409 (units in doubt, or between refills)
			return
		case err == nil:
			s.count(a.Code)
			if a.Code == 503 {
				s.report.unavailable()
			}
		default:
			s.count(-1)
		}
		if failingSince.IsZero() {
			failingSince = time.Now()
		} else if time.Since(failingSince) > s.giveUp {
			s.abandoned.Add(1)
			s.report.answer(id, a, err) // unanswered
			return
		}
		time.Sleep(10 * time.Millisecond) // pacing: a buyer's backoff between failing attempts
	}
	if attempt > 0 {
		s.report.answer(id, a, err) // the sale ended while it was retried: unanswered
	}
}

func (s *healSale) confirm(ctx context.Context, tok string) {
	// A confirm of a reservation taken on the killed shard answers 503
	// (it cannot be verified) until the partition is fenced, after
	// replace_after; a payer keeps retrying, as a gateway would.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ctx.Err() == nil; i++ {
		n := s.nodes[i%len(s.nodes)]
		a, err := s.b.Post(n.hot, "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, tok))
		switch {
		case err == nil && a.Code == 200:
			s.confirmed.Add(1)
			return
		case err == nil && a.Code == 409:
			s.refused.Add(1)
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("confirm %s: %+v %v", tok, a, err)
			return
		}
		time.Sleep(20 * time.Millisecond) // pacing: the payer's backoff before confirming again
	}
}

// waitSold waits until n units were answered 200.
func (s *healSale) waitSold(n int64, within time.Duration) {
	s.t.Helper()
	stocktest.Eventually(s.t, within, func() (bool, string) {
		return s.ok.Load() >= n, fmt.Sprintf("only %d of %d sold within %s (statuses %v)", s.ok.Load(), n, within, s.statuses())
	})
}

// finish waits for the sale to end and checks it: every unit confirmed
// exactly once, 200 answers minus the released ones equal the total, and
// MySQL agrees (verify ok, nothing reserved, in doubt, doubled or left).
func (s *healSale) finish(cancel context.CancelFunc, wg *sync.WaitGroup, within time.Duration) {
	t := s.t
	t.Helper()
	last := time.Now()
	_ = stocktest.Wait(within, func() (bool, string) { // a timeout is reported below, after the buyers stopped
		if time.Since(last) > 2*time.Second && testing.Verbose() {
			last = time.Now()
			t.Logf("progress: 200s %d, confirmed %d, abandoned ids %d, statuses %v", s.ok.Load(), s.confirmed.Load(), s.abandoned.Load(), s.statuses())
		}
		return s.done(), ""
	})
	cancel()
	wg.Wait()
	if !s.done() {
		t.Fatalf("sale did not end within %s: %d of %d confirmed (200s %d, refused %d, abandoned ids %d, statuses %v)",
			within, s.confirmed.Load(), s.total, s.ok.Load(), s.refused.Load(), s.abandoned.Load(), s.statuses())
	}
	if got := s.ok.Load() - s.refused.Load(); got != s.total || s.confirmed.Load() != s.total {
		t.Errorf("200 answers %d minus released %d = %d, confirmed %d; want %d", s.ok.Load(), s.refused.Load(), got, s.confirmed.Load(), s.total)
	}
	// Write-back of the last details, expiry of abandoned reservations.
	n := s.nodes[0]
	var r audit.Report
	stocktest.Eventually(t, 20*time.Second, func() (bool, string) {
		r = verify(t, n, s.sku)
		return r.OK && r.InFlightDetails == 0 && r.Reserved == 0 && r.InDoubt == 0, fmt.Sprintf("not settled: %+v", r)
	})
	s.report.books(r.OK, r.Reserved, r.Confirmed)
	if r.Confirmed != s.total || r.Pool != 0 || r.Doubled != 0 {
		t.Errorf("MySQL: confirmed %d, pool %d, doubled %d; want %d, 0, 0 (%+v)", r.Confirmed, r.Pool, r.Doubled, s.total, r)
	}
	var rows, units int64
	if err := s.db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(qty), 0) FROM deductions WHERE sku = ? AND state = 'confirmed'`, s.sku).Scan(&rows, &units); err != nil {
		t.Fatal(err)
	}
	if units != s.total {
		t.Errorf("confirmed detail rows hold %d units (%d rows); want %d", units, rows, s.total)
	}
	t.Logf("sale of %d: %d answered 200, %d released before confirm, %d ids abandoned; statuses %v; MySQL released %d",
		s.total, s.ok.Load(), s.refused.Load(), s.abandoned.Load(), s.statuses(), r.Released)
}

// Every shard restarted empty mid-sale (durability none: no AOF, kill -9,
// restart): every partition is fenced with its units in doubt. The SKU
// must sell again as soon as the shards answer (replacement partitions,
// filled from the pool), the doubt must return after the reservation TTL
// and sell too, and the sale must end exact.
func TestSelfHealAllShardsRestartedEmpty(t *testing.T) {
	for _, nodes := range []int{1, 3} {
		t.Run(strconv.Itoa(nodes)+"-node", func(t *testing.T) {
			e := newEnv(t, 0)
			for i := 0; i < 3; i++ {
				// No AOF and no RDB: a restart comes back empty.
				e.shards = append(e.shards, stocktest.StartRedis(t, "--appendonly", "no"))
			}
			cfg := selfHealConfig(e, shard.DurabilityNone)
			ns := startHealCluster(t, cfg, nodes)
			const total = 1500
			putSKU(t, ns[0], "heal", total, 4, 50, 10)
			waitKnown(t, ns, "heal")
			s := &healSale{t: t, db: e.db, sku: "heal", total: total, nodes: ns, b: stocktest.NewBuyer(32), giveUp: 5 * time.Second}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			wg := s.run(ctx, 16, "r")
			s.waitSold(total/3, 30*time.Second)

			for _, r := range e.shards {
				r.Kill()
			}
			for _, r := range e.shards {
				r.Restart()
			}
			s.markRecovery()
			var unsellable time.Duration
			if err := stocktest.Wait(30*time.Second, func() (ok bool, _ string) {
				unsellable, ok = s.unsellable()
				return ok, ""
			}); err != nil {
				cancel()
				wg.Wait()
				t.Fatalf("no deduction answered 200 within 30s of every shard answering again (sold %d of %d, statuses %v)",
					s.ok.Load(), total, s.statuses())
			}
			t.Logf("unsellable for %s after every shard came back empty (%d node(s))", unsellable.Round(time.Millisecond), nodes)
			s.finish(cancel, wg, 45*time.Second)
			checkFenced(t, e.db, "heal", "", 4)
			checkReplaced(t, ns, 4)
		})
	}
}

// A shard killed and never restarted: its partitions are fenced once it
// stayed unreachable for replace_after and replaced on the other shards;
// the units that were in them are in doubt, come back after the TTL and
// sell too. The sale ends exact.
func TestSelfHealShardKilled(t *testing.T) {
	e := newEnv(t, 3)
	cfg := selfHealConfig(e, shard.DurabilityAOF)
	n := startNode(t, cfg)
	const total = 1500
	putSKU(t, n, "dead", total, 6, 50, 10)
	s := &healSale{t: t, db: e.db, sku: "dead", total: total, nodes: []*node{n}, b: stocktest.NewBuyer(32), giveUp: 300 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wg := s.run(ctx, 16, "k")
	s.waitSold(total/3, 30*time.Second)

	victim := "s2"
	e.shards[1].Kill()
	killed := time.Now()
	var open, onVictim int
	if err := stocktest.Wait(cfg.Preallocate.ReplaceAfter+20*time.Second, func() (bool, string) {
		if err := e.db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(shard = ?), 0) FROM partitions WHERE sku = 'dead' AND state = 'open'`,
			victim).Scan(&open, &onVictim); err != nil {
			t.Fatal(err)
		}
		return open == 6 && onVictim == 0, ""
	}); err != nil {
		cancel()
		wg.Wait()
		t.Fatalf("partitions not replaced %s after the kill: %d open, %d on %s; sale stuck at %d of %d confirmed (statuses %v)",
			time.Since(killed).Round(time.Millisecond), open, onVictim, victim, s.confirmed.Load(), total, s.statuses())
	}
	t.Logf("partitions of the killed shard replaced %s after the kill (replace_after %s)",
		time.Since(killed).Round(time.Millisecond), cfg.Preallocate.ReplaceAfter)
	s.finish(cancel, wg, 45*time.Second)
	checkFenced(t, e.db, "dead", victim, 2)
	checkReplaced(t, []*node{n}, 2)
}

// checkFenced asserts that at least n of sku's partitions (on shard, when
// given) were fenced and their doubt resolved after the TTL: the sale
// really went through the in-doubt path, and those units sold again.
func checkFenced(t *testing.T, db *sql.DB, sku, shard string, n int) {
	t.Helper()
	// A partition with nothing in doubt is resolved on the owner's next
	// pass, perhaps after the sale ended.
	var fenced, resolved int
	if err := stocktest.Wait(15*time.Second, func() (bool, string) {
		if err := db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(doubt_resolved_at IS NOT NULL), 0) FROM partitions
		                        WHERE sku = ? AND state = 'fenced' AND (? = '' OR shard = ?)`, sku, shard, shard).Scan(&fenced, &resolved); err != nil {
			t.Fatal(err)
		}
		return fenced >= n && resolved >= n, ""
	}); err != nil {
		t.Errorf("%s: %d partitions fenced, %d with their doubt resolved; want at least %d", sku, fenced, resolved, n)
	}
}

// startHealCluster starts n nodes with cfg (each with its own name,
// joining the first).
func startHealCluster(t *testing.T, cfg Config, n int) []*node {
	t.Helper()
	var nodes []*node
	for i := 0; i < n; i++ {
		c := cfg
		c.NodeName = "n" + strconv.Itoa(i+1)
		if i > 0 {
			c.Join = []string{nodes[0].d.GossipAddr()}
		}
		nodes = append(nodes, startNode(t, c))
	}
	if n > 1 {
		waitMembers(t, nodes, n)
	}
	return nodes
}

// checkReplaced asserts that the nodes counted at least atLeast partition
// replacements in stockd_preallocate_partitions_replaced_total.
func checkReplaced(t *testing.T, nodes []*node, atLeast float64) {
	t.Helper()
	var got float64
	for _, n := range nodes {
		got += labeledSum(t, n, "stockd_preallocate_partitions_replaced_total")
	}
	if got < atLeast {
		t.Errorf("stockd_preallocate_partitions_replaced_total: %v over the nodes; want at least %v", got, atLeast)
	}
}

// labeledSum sums every series of a metric on n.
func labeledSum(t *testing.T, n *node, name string) float64 {
	t.Helper()
	var sum float64
	for _, line := range strings.Split(scrape(t, n), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// A shard that stops answering (SIGSTOP) past replace_after has its
// partition fenced in MySQL while its Redis still says open, and replaced.
// When it answers again, st = fenced is set there: a request homed on the
// fenced partition must not take from it (its units are in doubt), and
// sells from the others instead. The doubt resolves after the TTL and the
// books balance.
func TestSelfHealFrozenShardMarkedFencedWhenBack(t *testing.T) {
	e := newEnv(t, 2)
	cfg := selfHealConfig(e, shard.DurabilityAOF)
	n := startNode(t, cfg)
	putSKU(t, n, "frz", 400, 2, 50, 10)
	var pid int
	var epoch int64
	if err := e.db.QueryRow(`SELECT pid, epoch FROM partitions WHERE sku = 'frz' AND shard = 's2'`).Scan(&pid, &epoch); err != nil {
		t.Fatal(err)
	}
	c := e.shards[1].Client()
	stateKey := "{" + e.prefix + ":frz:" + strconv.Itoa(pid) + "}:s"
	levels := func() string {
		v, err := c.Do(context.Background(), c.B().Hmget().Key(stateKey).Field("a", "b", "st").Build()).ToArray()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range v {
			s, _ := x.ToString()
			out = append(out, s)
		}
		return strings.Join(out, "/")
	}

	e.shards[1].Stop()
	stocktest.Eventually(t, cfg.Preallocate.ReplaceAfter+20*time.Second, func() (bool, string) {
		var state string
		var open int
		if err := e.db.QueryRow(`SELECT state, (SELECT COUNT(*) FROM partitions WHERE sku = 'frz' AND state = 'open' AND shard <> 's2')
		                          FROM partitions WHERE sku = 'frz' AND pid = ?`, pid).Scan(&state, &open); err != nil {
			t.Fatal(err)
		}
		return state == "fenced" && open == 2,
			fmt.Sprintf("partition %d on the frozen shard: %s, %d open elsewhere; want fenced and replaced", pid, state, open)
	})
	e.shards[1].Continue()
	before := levels()
	if !strings.HasSuffix(before, "/open") && !strings.HasSuffix(before, "/fenced") {
		t.Fatalf("state of partition %d after the thaw: %s", pid, before)
	}
	stocktest.Eventually(t, 15*time.Second, func() (bool, string) {
		l := levels()
		return strings.HasSuffix(l, "/fenced"), fmt.Sprintf("partition %d not marked fenced in redis 15s after its shard answered again: %s", pid, l)
	})
	marked := levels()
	t.Logf("partition %d on the thawed shard: %s right after the thaw, %s once marked", pid, before, marked)

	// Requests homed on it sell elsewhere; it never sells again.
	s := &healSale{t: t, db: e.db, sku: "frz", total: 400, nodes: []*node{n}, b: stocktest.NewBuyer(16), giveUp: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wg := s.run(ctx, 8, "f")
	s.finish(cancel, wg, 45*time.Second)
	if after := levels(); after != marked {
		t.Errorf("fenced partition %d changed after it was marked: %s, then %s", pid, marked, after)
	}
	checkFenced(t, e.db, "frz", "s2", 1)
}
