package faults

// Scenarios shared by the fast subset and the full suite.

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/faults/report"
	"github.com/stockd/stockd/internal/hashx"
	"github.com/stockd/stockd/internal/stocktest"
)

// payer confirms acknowledged reservations a little after the deduction,
// the way a shop confirms once payment went through.
type payer struct {
	c     *stocktest.Buyer
	hot   string
	delay time.Duration
	h     *history
	ch    chan *op
	wg    sync.WaitGroup

	confirmed, refused, failed atomic.Int64
	mu                         sync.Mutex
	refusedOps                 []*op
	slowest, latest            time.Duration // one confirm call; answer -> confirm
	unavailable                int
}

func newPayer(c *stocktest.Buyer, hot string, h *history, delay time.Duration) *payer {
	p := &payer{c: c, hot: hot, delay: delay, h: h, ch: make(chan *op, 1<<16)}
	for w := 0; w < 32; w++ {
		p.wg.Add(1)
		go p.run()
	}
	return p
}

func (p *payer) pay(o *op) { p.ch <- o }

func (p *payer) run() {
	defer p.wg.Done()
	for o := range p.ch {
		if wait := o.End + p.delay - p.h.now(); wait > 0 {
			time.Sleep(wait) // pacing: the payment delay this payer models
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			t0 := time.Now()
			a, err := p.c.Settle(p.hot, "confirm", o.Token)
			p.mu.Lock()
			p.slowest = max(p.slowest, time.Since(t0))
			if late := p.h.now() - o.End; late > p.latest {
				p.latest = late
			}
			if err != nil || a.Code == 503 {
				p.unavailable++
			}
			p.mu.Unlock()
			switch {
			case err == nil && a.Code == 200:
				p.confirmed.Add(1)
			case err == nil && a.Code == 409:
				// Released first (expired, or its doubt went back to
				// the pool): the sale did not happen.
				p.refused.Add(1)
				p.mu.Lock()
				p.refusedOps = append(p.refusedOps, o)
				p.mu.Unlock()
			case time.Now().After(deadline):
				p.failed.Add(1)
			default:
				time.Sleep(50 * time.Millisecond) // pacing: the payer's backoff before confirming again
				continue
			}
			break
		}
	}
}

// close waits for every confirm to finish.
func (p *payer) close() {
	close(p.ch)
	p.wg.Wait()
}

// probe deducts one unit every 20 ms for requests homed on the given
// partitions and reports when the first one succeeds after start: the
// moment selling works again for buyers whose home was hit.
type probe struct {
	ok   chan time.Duration // time from start to the first ok
	stop chan struct{}
	done chan struct{}
}

func startProbe(b *buyers, sku string, pids []int, homes map[int]bool, prefix string, clientID int) *probe {
	p := &probe{ok: make(chan time.Duration, 1), stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(p.done)
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			default:
			}
			id := fmt.Sprintf("%s%d", prefix, i)
			if !homes[homePID(sku, id, pids)] {
				continue
			}
			o := b.buy(clientID, id, 1)
			if o.Status == statusOK {
				p.ok <- time.Since(start)
				return
			}
			if o.Status == statusSoldOut {
				b.t.Errorf("probe: sold out before a request homed on %v sold again; the case sells too little stock to see recovery", homes)
				return
			}
			time.Sleep(20 * time.Millisecond) // pacing: one probe every 20 ms; the probe itself measures the recovery
		}
	}()
	return p
}

// wait returns the recovery time, or false if none was seen within d.
func (p *probe) wait(d time.Duration) (time.Duration, bool) {
	select {
	case r := <-p.ok:
		<-p.done
		return r, true
	case <-time.After(d):
		close(p.stop)
		<-p.done
		select {
		case r := <-p.ok:
			return r, true
		default:
			return 0, false
		}
	}
}

// redisFault is a sale during which one of three Redis shards (s2)
// breaks: case 1 (kill -9) and case 2 (failover to a replica).
type redisFault struct {
	requests   int64 // deductions in the sale
	total      int64
	faultAfter int // answers before the fault
	workers    int
	payDelay   time.Duration
	// payEvery: only every n-th buyer of the sale pays (confirms); the
	// others' reservations expire. 0 or 1: everyone pays. Buyers after
	// the sale always pay.
	payEvery   int
	reserveTTL time.Duration // 0: the default
	// redisArgs and fields are s2's redis-server arguments and settings.
	redisArgs []string
	fields    map[string]string
	// setup runs once the services are up, before stockd starts.
	setup func(e *env, victim *shardProc)
	// fault breaks s2 while the sale runs; it returns once the fault is
	// over (the shard is back, or replaced), describing what it did.
	fault func(e *env, d *stockd, victim *shardProc) string
	// loss: the fault may lose s2's writes; then its partitions may be
	// fenced and units held in doubt (and must be released at the end).
	loss bool
	// wantDoubt: the loss must be detected (units go in doubt).
	wantDoubt    bool
	recoveryWhat string
}

func runRedisFault(t *testing.T, rf redisFault) *report.Result {
	const sku = "sale"
	e := newEnv(t, envOpts{shards: 3, redisArgs: map[int][]string{1: rf.redisArgs}})
	victim := e.shards[1]
	victim.Fields = rf.fields
	if rf.setup != nil {
		rf.setup(e, victim)
	}
	env := map[string]string{}
	if rf.reserveTTL > 0 {
		env["STOCKD_SYNC_RESERVATION_TTL"] = rf.reserveTTL.String()
		env["STOCKD_SYNC_EXPIRE_EVERY"] = "200ms"
	}
	d := e.startStockd(nodeOpts{env: env})
	d.putSKU(sku, rf.total, 6, 100, 20)
	shardOf := d.shardOf(sku)
	var pids []int
	homes := map[int]bool{}
	for pid, sh := range shardOf {
		pids = append(pids, pid)
		if sh == victim.ID {
			homes[pid] = true
		}
	}
	if len(homes) == 0 {
		t.Fatalf("no partition on %s: %v", victim.ID, shardOf)
	}

	h := newHistory()
	c := stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second})
	b := newBuyers(t, c, sku, h, d.hot)
	pay := newPayer(c, d.hot, h, rf.payDelay)
	paying := atomic.Bool{}
	b.onOK = func(o *op) {
		if rf.payEvery <= 1 || paying.Load() || hashx.FNV64(o.ID)%uint64(rf.payEvery) == 0 {
			pay.pay(o)
		}
	}
	w := watchDoubt(e, sku)

	b.giveUp = 20 * time.Second
	abort := make(chan struct{})
	done := b.closedLoop(rf.workers, &ids{prefix: "buyer-", n: rf.requests}, 1, abort, false)
	if _, ok := stocktest.WaitFor(60*time.Second, func() bool { return len(h.snapshot()) >= rf.faultAfter }); !ok {
		t.Fatalf("only %d answers before the fault", len(h.snapshot()))
	}
	faultStart := time.Now()
	what := rf.fault(e, d, victim)
	faultEnd := time.Now()
	pr := startProbe(b, sku, pids, homes, "probe-", rf.workers)
	recovery, recovered := pr.wait(30 * time.Second)
	if !recovered {
		close(abort) // the buyers give up rather than wait out every request
	}
	done()
	retried := 0
	for _, op := range h.snapshot() {
		if op.Codes[503]+op.Codes[0] > 0 {
			retried++
		}
	}

	extra := map[string]string{"fault": fmt.Sprintf("%s; %s from start to end (%s..%s into the history)", what, faultEnd.Sub(faultStart).Round(time.Millisecond),
		faultStart.Sub(h.base).Round(time.Millisecond), faultEnd.Sub(h.base).Round(time.Millisecond))}
	if rf.wantDoubt {
		if _, ok := stocktest.WaitFor(15*time.Second, func() bool { return w.maxSeen() > 0 }); !ok {
			t.Errorf("shard %s lost writes but nothing went in doubt", victim.ID)
		}
	}
	if rf.loss {
		// Fenced partitions hold their units in doubt until the
		// reservation TTL has passed since the fence.
		if _, ok := stocktest.WaitFor(60*time.Second, func() bool {
			v, err := d.sku(sku)
			return err == nil && v.InDoubt == 0
		}); !ok {
			t.Errorf("in_doubt not resolved within 60s")
		}
		extra["doubt resolved"] = fmt.Sprintf("%s after the fault ended (reservation TTL %s)", time.Since(faultEnd).Round(time.Millisecond), rf.reserveTTL)
	}
	// Every acknowledged reservation confirmed, and every take no buyer was
	// told of expired (its units back in the pool): what is left to sell
	// is final.
	settleWait := 20 * time.Second
	if rf.reserveTTL > 0 {
		settleWait += rf.reserveTTL
	}
	if _, ok := stocktest.WaitFor(settleWait, func() bool {
		v, err := d.verify(sku)
		return err == nil && v.Reserved == 0 && v.InFlightDetails == 0
	}); !ok {
		t.Errorf("reservations still unconfirmed %s after the sale", settleWait)
	}
	paying.Store(true)
	sold := b.sellRest("rest-", time.Minute)
	pay.close()
	extra["sold after the sale"] = fmt.Sprintf("%d units, one at a time, until sold_out", sold)
	extra["ops retried (503/transport)"] = fmt.Sprint(retried)
	extra["confirms (ok/refused/failed)"] = fmt.Sprintf("%d/%d/%d; slowest call %s, latest %s after the answer, %d unavailable",
		pay.confirmed.Load(), pay.refused.Load(), pay.failed.Load(), pay.slowest.Round(time.Millisecond), pay.latest.Round(time.Millisecond), pay.unavailable)
	refusedOn := map[string]int{}
	for _, o := range pay.refusedOps {
		refusedOn[shardOf[o.pid()]]++
	}
	if len(refusedOn) > 0 {
		extra["confirms refused (expired first), by shard"] = fmt.Sprint(refusedOn)
	}

	// A retry of an acknowledged request gets its first reservation, except
	// where the shard that recorded it lost its records.
	fencedNow := map[int]bool{}
	if v, err := d.sku(sku); err == nil {
		for _, p := range v.Partitions {
			fencedNow[p.ID] = p.State == "fenced"
		}
	}
	// Skipped: reservations of the broken shard's partitions, and requests
	// homed there that ran before it came back (their pointers were lost
	// with it). A request homed there that ran afterwards left its pointer
	// on the shard as it is now, and must meet its first outcome.
	skipped := 0
	asked, _ := b.reask(func(o *op) bool {
		skip := rf.loss && (fencedNow[o.pid()] || homes[o.pid()] ||
			(homes[homePID(sku, o.ID, pids)] && o.Call < faultEnd.Sub(h.base)))
		if skip {
			skipped++
		}
		return skip
	})
	extra["re-asked acknowledged ids"] = fmt.Sprintf("%d (sample), every one answered with its first reservation unless reported; %d not asked (records lost with the shard)", asked, skipped)
	b.checkAnswers()
	r := settle(t, e, d, sku, h, w, settleOpts{total: rf.total, fenced: rf.loss, linearizable: !rf.loss})
	for k, v := range extra {
		r.Extra[k] = v
	}
	r.RecoveryWhat = rf.recoveryWhat
	if recovered {
		r.Recovery = recovery
	} else {
		t.Errorf("requests homed on %s did not sell again within 30s of the fault's end", victim.ID)
		r.RecoveryWhat += " (NOT RECOVERED in 30s)"
	}
	// Nothing stranded: everything sold.
	if r.Held != rf.total {
		t.Errorf("sold %d units of %d after selling out (stranded %d)", r.Held, rf.total, rf.total-r.Held)
	}
	if pay.failed.Load() > 0 {
		t.Errorf("%d confirms never answered", pay.failed.Load())
	}
	r.Log(t)
	return r
}

// shardKill is case 1: kill -9 s2 after faultAfter answers, restart it
// after downFor. mode is its durability: aof (AOF on), none (AOF off: it
// comes back empty) or replica (AOF on, plus a replica it WAITs for).
func shardKill(mode string, downFor time.Duration) redisFault {
	rf := redisFault{recoveryWhat: "restart of the shard -> first ok of a request homed on it"}
	switch mode {
	case "none":
		rf.redisArgs = []string{"--appendonly", "no"}
		rf.fields = map[string]string{"durability": "none"}
		rf.loss, rf.wantDoubt = true, true
	case "aof":
		rf.fields = map[string]string{"durability": "aof"}
	case "replica":
		rf.fields = map[string]string{"durability": "replica", "replicas": "1", "wait_timeout": "100ms"}
		rf.setup = func(e *env, victim *shardProc) {
			replica := stocktest.StartRedis(e.t, "--replicaof", "127.0.0.1", strconv.Itoa(victim.Redis.Port))
			waitReplicated(e.t, victim.Redis, replica)
		}
	}
	rf.fault = func(e *env, d *stockd, victim *shardProc) string {
		victim.Redis.Kill()
		time.Sleep(downFor) // pacing: the shard stays down this long while buyers run
		victim.Redis.Restart()
		how := "from its AOF"
		if mode == "none" {
			how = "empty"
		}
		return fmt.Sprintf("kill -9 of %s, restarted %s after %s", victim.ID, how, downFor)
	}
	return rf
}

// timeoutStorm is case 5: one shard's calls take longer than the daemon's
// Redis timeout for a while; buyers retry the same request id until they
// get an answer.
type timeoutStorm struct {
	total      int64
	requests   int64
	rate       int           // requests started per second (open loop)
	spikeAfter time.Duration // into the sale
	spike      time.Duration // how long the shard is slow
	latencyMS  int           // per direction: a round trip costs twice
	timeout    time.Duration // STOCKD_REDIS_TIMEOUT
	// flapOn/flapOff, when set, switch the latency on and off for these
	// long in turn during the spike (calls time out mid-flight more often
	// than with one long spike, which the daemon soon fails fast).
	flapOn, flapOff time.Duration
}

func runTimeoutStorm(t *testing.T, ts timeoutStorm) *report.Result {
	const sku = "retry"
	e := newEnv(t, envOpts{shards: 3, proxyShards: true})
	d := e.startStockd(nodeOpts{env: map[string]string{"STOCKD_REDIS_TIMEOUT": ts.timeout.String()}})
	d.putSKU(sku, ts.total, 6, 100, 20)
	slow := e.shards[0]
	shardOf := d.shardOf(sku)
	var pids []int
	homes := map[int]bool{}
	for pid, sh := range shardOf {
		pids = append(pids, pid)
		homes[pid] = sh == slow.ID
	}

	h := newHistory()
	// The gateway's own timeout is short too: it gives up on an attempt
	// and retries, while the first attempt may still be running.
	b := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 2 * ts.timeout}), sku, h, d.hot)
	w := watchDoubt(e, sku)
	done := b.openLoop(ts.rate, &ids{prefix: "buyer-", n: ts.requests}, 1)
	time.Sleep(ts.spikeAfter) // pacing: the load runs this long before the spike (the case's shape)
	start := time.Now()
	flaps := 0
	for time.Since(start) < ts.spike {
		slow.Proxy.latency(ts.latencyMS)
		flaps++
		if ts.flapOn == 0 {
			time.Sleep(ts.spike) // pacing: the spike's length
		} else {
			time.Sleep(min(ts.flapOn, ts.spike-time.Since(start))) // pacing: one flap's slow part
		}
		slow.Proxy.clear()
		if ts.flapOff > 0 && time.Since(start) < ts.spike {
			time.Sleep(ts.flapOff) // pacing: one flap's quiet part
		}
	}
	spiked := time.Since(start)
	recovery, recovered := startProbe(b, sku, pids, homes, "probe-", 64).wait(30 * time.Second)
	done()
	b.checkAnswers()

	retried, attempts := 0, 0
	var lat []time.Duration
	for _, o := range h.snapshot() {
		if o.Attempts > 1 {
			retried++
			attempts += o.Attempts - 1
		}
		lat = append(lat, o.Return-o.Call)
	}
	asked, _ := b.reask(nil)
	r := settle(t, e, d, sku, h, w, settleOpts{total: ts.total, linearizable: true})
	r.RecoveryWhat = "latency removed -> first ok of a request homed on the slow shard"
	r.Recovery = recovery
	if !recovered {
		t.Errorf("requests homed on the slow shard did not sell within 30s of the spike's end")
	}
	if r.Held != ts.total {
		t.Errorf("sold %d of %d units (stranded %d)", r.Held, ts.total, ts.total-r.Held)
	}
	r.Extra["fault"] = fmt.Sprintf("+%dms each way on %s (redis_timeout %s) for %s, switched on %d times", ts.latencyMS, slow.ID, ts.timeout, spiked.Round(time.Millisecond), flaps)
	r.Extra["retries"] = fmt.Sprintf("%d requests retried (%d extra attempts), then answered; re-asked %d acknowledged ids", retried, attempts, asked)
	r.Extra["time to the answer"] = fmt.Sprintf("p50 %s, p99 %s, max %s (first attempt to definite answer)",
		percentile(lat, 50).Round(100*time.Microsecond), percentile(lat, 99).Round(time.Millisecond), percentile(lat, 100).Round(time.Millisecond))
	r.Log(t)
	return r
}

// rebalanceRetry: a gateway sends every request twice at once, to nodes a
// and b, while node c changes the SKU's partition count; the nodes load
// each new generation at different moments (issue 12 item 3).
type rebalanceRetry struct {
	total, pairs int64
	start        int           // partitions at the start
	steps        []int         // partition counts, one rebalance each
	gap          time.Duration // between rebalances
}

func runRebalanceRetry(t *testing.T, rr rebalanceRetry) *report.Result {
	const sku = "regrow"
	e := newEnv(t, envOpts{shards: 3})
	a := e.startStockd(nodeOpts{name: "a"})
	b := e.startStockd(nodeOpts{name: "b", env: map[string]string{"STOCKD_JOIN": a.gossip}})
	c := e.startStockd(nodeOpts{name: "c", env: map[string]string{"STOCKD_JOIN": a.gossip}})
	if _, ok := stocktest.WaitFor(20*time.Second, func() bool { m, _ := c.members(); return len(m) == 3 }); !ok {
		t.Fatal("the three nodes did not join")
	}
	c.putSKU(sku, rr.total, rr.start, 50, 10)
	for _, d := range []*stockd{a, b} {
		if _, ok := stocktest.WaitFor(10*time.Second, func() bool {
			resp, err := http.Get("http://" + d.hot + "/v1/stock/" + sku)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		}); !ok {
			t.Fatalf("%s does not serve the SKU", d.name)
		}
	}

	h := newHistory()
	w := watchDoubt(e, sku)
	buyers := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 2 * time.Second}), sku, h, a.hot, b.hot)
	// The pairs are spread over the rebalances.
	rate := int(float64(rr.pairs) / (rr.gap * time.Duration(len(rr.steps)+1)).Seconds())
	g := &ids{prefix: "pair-", n: rr.pairs}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			id, ok := g.take()
			if !ok {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); buyers.buyTwice(i%64, id, 1) }()
			<-tick.C
		}
	}()
	var changes []string
	for _, n := range rr.steps {
		time.Sleep(rr.gap) // pacing: the case's gap between rebalances
		if code, body := c.adminDo("POST", "/admin/skus/"+sku+"/rebalance", fmt.Sprintf(`{"partitions":%d}`, n), nil); code != 200 {
			t.Errorf("rebalance to %d: %d %s", n, code, body)
		}
		changes = append(changes, strconv.Itoa(n))
	}
	wg.Wait()
	buyers.checkAnswers()
	retried := 0
	for _, o := range h.snapshot() {
		if o.Codes[503] > 0 {
			retried++
		}
	}
	asked, _ := buyers.reask(nil)
	r := settle(t, e, a, sku, h, w, settleOpts{total: rr.total, linearizable: true})
	r.Extra["fault"] = fmt.Sprintf("partitions %d -> %s through node c, %s apart, while every request goes to nodes a and b at once", rr.start, strings.Join(changes, " -> "), rr.gap)
	r.Extra["pairs"] = fmt.Sprintf("%d pairs, %d with a copy answered 503 and retried; re-asked %d acknowledged ids", rr.pairs, retried, asked)
	if r.Held != rr.total {
		t.Errorf("sold %d of %d units", r.Held, rr.total)
	}
	r.Log(t)
	return r
}
