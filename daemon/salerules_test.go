package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/stockd/stockd/internal/stocktest"
)

// Sale rules (issue 15): per-user limits, opening and closing times, and
// the payment window (POST /v1/extend).

// saleAnswer is any hot-endpoint answer, decoded loosely.
type saleAnswer struct {
	Code        int    `json:"-"`
	Status      string `json:"status"`
	Reservation string `json:"reservation"`
	Qty         int64  `json:"qty"`
	Limit       int64  `json:"limit"`
	OpensAt     string `json:"opens_at"`
	ExpiresAt   string `json:"expires_at"`
	Capped      bool   `json:"capped"`
	MaxSeconds  int64  `json:"max_seconds"`
	Error       string `json:"error"`
	Field       string `json:"field"`
	raw         string
}

func salePost(t *testing.T, b *stocktest.Buyer, addr, path, body string) saleAnswer {
	t.Helper()
	code, raw, err := b.PostRaw(addr, path, body)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	a := saleAnswer{Code: code, raw: string(raw)}
	if err := json.Unmarshal(raw, &a); err != nil {
		t.Fatalf("POST %s: status %d, body %q: %v", path, a.Code, raw, err)
	}
	return a
}

func userDeduct(t *testing.T, b *stocktest.Buyer, addr, sku, user string, qty int64, reqID string) saleAnswer {
	t.Helper()
	return salePost(t, b, addr, "/v1/deduct", fmt.Sprintf(`{"sku":%q,"qty":%d,"request_id":%q,"user_id":%q}`, sku, qty, reqID, user))
}

// saleView is the sale-rule part of GET /admin/skus/{sku}.
type saleView struct {
	Total        int64      `json:"total"`
	Version      int64      `json:"version"`
	PerUserLimit int64      `json:"per_user_limit"`
	OpensAt      *time.Time `json:"opens_at"`
	ClosesAt     *time.Time `json:"closes_at"`
	Available    int64      `json:"available"`
}

func getSale(t *testing.T, n *node, sku string) saleView {
	t.Helper()
	var v saleView
	if code := adminDo(t, n, "GET", "/admin/skus/"+sku, "", &v); code != 200 {
		t.Fatalf("get sku: status %d", code)
	}
	return v
}

// putSale sends a PUT body and returns the status and the raw answer.
func putSale(t *testing.T, n *node, sku, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("PUT", "http://"+n.admin+"/admin/skus/"+sku, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		k, err := resp.Body.Read(buf)
		sb.Write(buf[:k])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, sb.String()
}

func mustPutSale(t *testing.T, n *node, sku, body string) {
	t.Helper()
	if code, out := putSale(t, n, sku, body); code != 200 && code != 201 {
		t.Fatalf("PUT %s %s: %d %s", sku, body, code, out)
	}
}

// allowance reads a limited SKU's allowance hash (shard.Allowance) from
// its shard (skus.limit_shard).
func (e *env) allowance(sku string) (rueidis.Client, string, map[string]string) {
	e.t.Helper()
	var sh string
	if err := e.db.QueryRow(`SELECT limit_shard FROM skus WHERE sku = ?`, sku).Scan(&sh); err != nil {
		e.t.Fatal(err)
	}
	i, err := strconv.Atoi(strings.TrimPrefix(sh, "s"))
	if err != nil || i < 1 || i > len(e.shards) {
		e.t.Fatalf("limit shard %q", sh)
	}
	c := e.shards[i-1].Client()
	key := "{" + e.prefix + ":" + sku + ":allow}"
	m, err := c.Do(context.Background(), c.B().Hgetall().Key(key).Build()).AsStrMap()
	if err != nil {
		e.t.Fatal(err)
	}
	return c, key, m
}

// heldInMySQL is the units each user holds according to the detail rows
// (reserved and confirmed); "?" counts rows whose detail has not landed.
func (e *env) heldInMySQL(sku string) map[string]int64 {
	e.t.Helper()
	rows, err := e.db.Query(`SELECT user_id, SUM(qty) FROM deductions WHERE sku = ? AND state IN ('reserved','confirmed') GROUP BY user_id`, sku)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var u *string
		var n int64
		if err := rows.Scan(&u, &n); err != nil {
			e.t.Fatal(err)
		}
		if u == nil {
			// Confirmed or released before its detail landed: the
			// applier fills the ids in when it lands.
			out["?"] += n
			continue
		}
		out[*u] = n
	}
	return out
}

// startSaleCluster starts three in-process nodes with cfg changed by tune.
func startSaleCluster(t *testing.T, e *env, tune func(*Config)) []*node {
	t.Helper()
	var nodes []*node
	for i := 0; i < 3; i++ {
		cfg := e.config()
		cfg.NodeName = "n" + strconv.Itoa(i+1)
		if len(nodes) > 0 {
			cfg.Join = []string{nodes[0].d.GossipAddr()}
		}
		tune(&cfg)
		nodes = append(nodes, startNode(t, cfg))
	}
	waitMembers(t, nodes, 3)
	return nodes
}

// 40 concurrent requests of one user over three nodes and six partitions,
// limit 3, qty 1 and 2 mixed: the user gets exactly 3 units, the rest
// hear limit_reached, retries of the successes meet their first outcome,
// another user is unaffected; a release gives the allowance back, and so
// does an expiry; confirmed units keep it.
func TestSalePerUserLimitAcrossNodes(t *testing.T) {
	e := newEnv(t, 3)
	const ttl = 8 * time.Second
	nodes := startSaleCluster(t, e, func(c *Config) {
		c.Sync.ReservationTTL = ttl
		c.Sync.ExpireEvery = 100 * time.Millisecond
	})
	const limit = 3
	mustPutSale(t, nodes[0], "lim", fmt.Sprintf(`{"total":1000,"partitions":6,"chunk":20,"threshold":4,"per_user_limit":%d}`, limit))
	waitKnown(t, nodes, "lim")
	if v := getSale(t, nodes[2], "lim"); v.PerUserLimit != limit {
		t.Fatalf("GET per_user_limit %d, want %d", v.PerUserLimit, limit)
	}
	b := stocktest.NewBuyer(64)
	addrs := hots(nodes)

	// The burst: alice 40 times, bob 3 times, all at once.
	type sent struct {
		id, user string
		qty      int64
		a        saleAnswer
	}
	var mu sync.Mutex
	var all []sent
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < 43; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s := sent{id: "a-" + strconv.Itoa(i), user: "alice", qty: int64(1 + i%2)}
			if i >= 40 {
				s = sent{id: "b-" + strconv.Itoa(i), user: "bob", qty: 1}
			}
			<-start
			s.a = userDeduct(t, b, addrs[i%3], "lim", s.user, s.qty, s.id)
			mu.Lock()
			all = append(all, s)
			mu.Unlock()
		}(i)
	}
	// While the burst runs, alice's allowance count (an upper bound of
	// the units she holds: it is taken before the stock) never passes
	// the limit.
	ac, akey, _ := e.allowance("lim")
	peak, samples := int64(0), 0
	sampled := make(chan struct{})
	burstDone := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-burstDone:
				return
			default:
			}
			if n, err := ac.Do(context.Background(), ac.B().Hget().Key(akey).Field("u:alice").Build()).AsInt64(); err == nil {
				peak = max(peak, n)
				samples++
			}
		}
	}()
	close(start)
	wg.Wait()
	close(burstDone)
	<-sampled
	if peak > limit {
		t.Fatalf("alice's allowance count reached %d during the burst, limit %d", peak, limit)
	}
	units := map[string]int64{}
	var aliceOK []sent
	limited := 0
	for _, s := range all {
		switch {
		case s.a.Code == 200 && s.a.Status == "ok":
			units[s.user] += s.a.Qty
			if s.user == "alice" {
				aliceOK = append(aliceOK, s)
			}
		case s.a.Code == 409 && s.a.Status == "limit_reached" && s.a.Limit == limit:
			limited++
		default:
			t.Fatalf("%s (%s, qty %d): %d %s", s.id, s.user, s.qty, s.a.Code, s.a.raw)
		}
	}
	if units["alice"] != limit || units["bob"] != 3 {
		t.Fatalf("alice got %d units, bob %d; want %d and 3", units["alice"], units["bob"], limit)
	}
	if limited != 40-len(aliceOK) {
		t.Fatalf("%d limit_reached answers for %d refused requests of alice", limited, 40-len(aliceOK))
	}
	// A retry of a success, on another node, meets its first outcome.
	for i, s := range aliceOK {
		r := userDeduct(t, b, addrs[(i+1)%3], "lim", "alice", s.qty, s.id)
		if r.Code != 200 || r.Reservation != s.a.Reservation {
			t.Fatalf("retry of %s: %d %s, want its reservation %s", s.id, r.Code, r.raw, s.a.Reservation)
		}
	}
	if _, _, m := e.allowance("lim"); m["u:alice"] != "3" || m["u:bob"] != "3" {
		t.Fatalf("allowance counts alice %q bob %q, want 3 and 3", m["u:alice"], m["u:bob"])
	}

	// Confirm all of alice's reservations but one (they keep their
	// allowance for good) and release that one: its units come back.
	last := aliceOK[len(aliceOK)-1]
	for _, s := range aliceOK[:len(aliceOK)-1] {
		if r := salePost(t, b, addrs[0], "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, s.a.Reservation)); r.Code != 200 {
			t.Fatalf("confirm %s: %d %s", s.id, r.Code, r.raw)
		}
	}
	if r := salePost(t, b, addrs[1], "/v1/release", fmt.Sprintf(`{"reservation":%q}`, last.a.Reservation)); r.Code != 200 {
		t.Fatalf("release %s: %d %s", last.id, r.Code, r.raw)
	}
	// A retry of the released request still meets its first outcome and
	// takes no allowance.
	if r := userDeduct(t, b, addrs[2], "lim", "alice", last.qty, last.id); r.Code != 200 || r.Reservation != last.a.Reservation {
		t.Fatalf("retry of released %s: %d %s", last.id, r.Code, r.raw)
	}
	again := userDeduct(t, b, addrs[2], "lim", "alice", last.qty, "after-release")
	if again.Code != 200 {
		t.Fatalf("after a release of %d units, a request for %d: %d %s", last.qty, last.qty, again.Code, again.raw)
	}
	if r := userDeduct(t, b, addrs[0], "lim", "alice", 1, "over"); r.Code != 409 || r.Status != "limit_reached" {
		t.Fatalf("a fourth unit: %d %s, want limit_reached", r.Code, r.raw)
	}
	// The unconfirmed reservation expires: its allowance comes back.
	var final saleAnswer
	stocktest.Until(t, 30*time.Second, "an expired reservation gives its allowance back", func() bool {
		final = userDeduct(t, b, addrs[1], "lim", "alice", last.qty, "after-expiry")
		return final.Code == 200
	})
	// Paid: alice's 3 units are confirmed now; bob's 3 expire unpaid.
	if r := salePost(t, b, addrs[2], "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, final.Reservation)); r.Code != 200 {
		t.Fatalf("confirm after-expiry: %d %s", r.Code, r.raw)
	}
	var state string
	if err := e.db.QueryRow(`SELECT state FROM deductions WHERE sku = 'lim' AND request_id = 'after-release'`).Scan(&state); err != nil || state != "released" {
		t.Fatalf("after-release: state %q %v, want released (expired)", state, err)
	}
	stocktest.Until(t, 30*time.Second, "bob's unpaid reservations expire", func() bool {
		return e.heldInMySQL("lim")["bob"] == 0
	})
	waitSynced(t, nodes[0], "lim", 30*time.Second)
	stocktest.Until(t, 30*time.Second, "every row has its ids", func() bool { return e.heldInMySQL("lim")["?"] == 0 })
	held := e.heldInMySQL("lim")
	_, _, m := e.allowance("lim")
	if held["?"] != 0 || held["alice"] != limit || m["u:alice"] != strconv.Itoa(limit) || m["u:bob"] != "" {

		t.Fatalf("MySQL: alice holds %d, bob %d; allowance counts alice %q, bob %q", held["alice"], held["bob"], m["u:alice"], m["u:bob"])
	}
	t.Logf("alice: %d of 40 requests ok (%d units), %d limit_reached; bob 3 of 3; count sampled %d times during the burst, peak %d", len(aliceOK), units["alice"], limited, samples, peak)
}

// A node killed with kill -9 in the middle of a burst of a limited SKU:
// no user ever holds more than the limit (MySQL's rows), every allowance
// count covers what its user holds, and verify passes.
func TestSaleLimitKillNineMidBurst(t *testing.T) {
	e := newEnv(t, 3)
	base := e.config()
	procs, gossip := startProcCluster(t, base, 3)
	admin := &node{t: t, admin: procs[0].admin, hot: procs[0].hot}
	stocktest.Until(t, 30*time.Second, "a cluster of 3 processes", func() bool { return alive(clusterOf(t, admin)) == 3 })
	const limit, users = 3, 25
	mustPutSale(t, admin, "k9l", fmt.Sprintf(`{"total":100000,"partitions":6,"chunk":50,"threshold":10,"per_user_limit":%d}`, limit))
	nodes := []*node{admin, {t: t, admin: procs[1].admin, hot: procs[1].hot}, {t: t, admin: procs[2].admin, hot: procs[2].hot}}
	waitKnown(t, nodes, "k9l")

	b := stocktest.NewBuyer(32)
	stop := make(chan struct{})
	var mu sync.Mutex
	told := map[string]int64{} // units acknowledged per user
	answers := map[int]int{}
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				user := "u" + strconv.Itoa((w*7+i)%users)
				qty := int64(1 + i%2)
				id := "k-" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				body := fmt.Sprintf(`{"sku":"k9l","qty":%d,"request_id":%q,"user_id":%q}`, qty, id, user)
				// Retry with the same id on every node until an answer
				// that is not a transport error or a 503.
				for try := 0; try < 30; try++ {
					a, err := b.Post(hots(nodes)[(w+i+try)%3], "/v1/deduct", body)
					if err != nil || a.Code == 503 {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					mu.Lock()
					answers[a.Code]++
					if a.Code == 200 {
						told[user] += a.Qty
					}
					mu.Unlock()
					if a.Code == 200 && i%2 == 0 {
						// Half the buyers give up: their allowance comes
						// back and the user buys again, so allowance
						// takes and give-backs go on around the kill.
						rel := fmt.Sprintf(`{"reservation":%q}`, a.Reservation)
						for try := 0; try < 30; try++ {
							r, err := b.Post(hots(nodes)[(w+try)%3], "/v1/release", rel)
							if err == nil && r.Code == 200 {
								mu.Lock()
								told[user] -= a.Qty
								answers[-200]++
								mu.Unlock()
								break
							}
							time.Sleep(20 * time.Millisecond)
						}
					}
					break
				}
			}
		}(w)
	}
	// All along, no user's allowance count (an upper bound of what the
	// user holds) passes the limit.
	ac, akey, _ := e.allowance("k9l")
	peak, samples := int64(0), 0
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			m, err := ac.Do(context.Background(), ac.B().Hgetall().Key(akey).Build()).AsStrMap()
			if err != nil {
				continue
			}
			for f, v := range m {
				if strings.HasPrefix(f, "u:") {
					n, _ := strconv.ParseInt(v, 10, 64)
					peak = max(peak, n)
				}
			}
			samples++
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(1500 * time.Millisecond)
	procs[1].kill9()
	killed := time.Now()
	stocktest.Until(t, 30*time.Second, "the victim's ownership moves", func() bool {
		c := clusterOf(t, admin)
		_, still := c.Owners["n2"]
		return !still && alive(c) == 2
	})
	moved := time.Since(killed)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	<-sampled
	if peak > limit {
		t.Fatalf("a user's allowance count reached %d, limit %d", peak, limit)
	}
	// Bring the victim back, as an operator would: the sale's state must
	// not depend on it.
	cfg := base
	cfg.NodeName, cfg.GossipAddr, cfg.Join = "n2", gossip[1], []string{gossip[0]}
	procs[1] = startProc(t, cfg)

	r := waitSynced(t, admin, "k9l", 30*time.Second)
	stocktest.Until(t, 30*time.Second, "every row has its ids", func() bool { return e.heldInMySQL("k9l")["?"] == 0 })
	held := e.heldInMySQL("k9l")
	_, _, m := e.allowance("k9l")
	if held["?"] != 0 {
		t.Fatalf("%d units in rows without their ids after write-back drained", held["?"])
	}
	var sum int64
	for u, n := range held {
		sum += n
		if n > limit {
			t.Errorf("user %s holds %d units in MySQL, limit %d", u, n, limit)
		}
		if c, _ := strconv.ParseInt(m["u:"+u], 10, 64); c < n {
			t.Errorf("user %s: allowance count %d below the %d units held", u, c, n)
		}
		if told[u] > n {
			t.Errorf("user %s holds %d units by the answers, MySQL holds %d", u, told[u], n)
		}
	}
	if !r.OK || r.Doubled != 0 || r.Reserved != sum {
		t.Fatalf("verify %+v; rows hold %d", r, sum)
	}
	if answers[200] == 0 || answers[409] == 0 {
		t.Fatalf("answers %v: want both successes and limit_reached", answers)
	}
	t.Logf("answers %v (-200: releases); %d users hold %d units (limit %d each); allowance counts sampled %d times, peak %d; ownership moved %s after the kill",
		answers, len(held), sum, limit, samples, peak, moved.Round(time.Millisecond))
}

// opens_at in the future: a burst before it gets not_open and touches no
// stock (which was pre-allocated at the PUT); at the opening the same
// buyers buy; closes_at ends the sale while stock remains; a time change
// or a restock through one node holds on every node at once.
func TestSaleOpensAndClosesAt(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startSaleCluster(t, e, func(*Config) {})
	b := stocktest.NewBuyer(64)
	addrs := hots(nodes)

	// Created closed for now, then opens_at set 2 s ahead: the PUT
	// answers once every node applied it. On a machine so loaded that
	// the PUT itself ate most of the 2 s, the time is set again.
	mustPutSale(t, nodes[0], "win", `{"total":200,"partitions":4,"chunk":10,"threshold":2,"opens_at":"2100-01-01T00:00:00Z"}`)
	waitKnown(t, nodes, "win")
	var opens time.Time
	for try := 0; ; try++ {
		opens = time.Now().Add(2 * time.Second).UTC().Truncate(time.Millisecond)
		mustPutSale(t, nodes[0], "win", fmt.Sprintf(`{"total":200,"opens_at":%q}`, opens.Format(time.RFC3339Nano)))
		if time.Until(opens) > 1500*time.Millisecond || try == 5 {
			break
		}
	}
	if v := getSale(t, nodes[1], "win"); v.OpensAt == nil || !v.OpensAt.Equal(opens) || v.ClosesAt != nil {
		t.Fatalf("GET opens_at %v closes_at %v, want %v and null", v.OpensAt, v.ClosesAt, opens)
	}
	before := e.ledger("win")
	if before.levels == 0 {
		t.Fatal("no stock pre-allocated into the partitions before opens_at")
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	early := map[string]int{}
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a := userDeduct(t, b, addrs[i%3], "win", "buyer"+strconv.Itoa(i), 1, "early-"+strconv.Itoa(i))
			answered := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if answered.Before(opens) {
				if a.Code != 409 || a.Status != "not_open" || a.OpensAt != opens.Format(time.RFC3339Nano) {
					t.Errorf("before opens_at: %d %s", a.Code, a.raw)
				}
				early[a.Status]++
			}
		}(i)
	}
	wg.Wait()
	after := e.ledger("win")
	if time.Now().After(opens) {
		t.Fatalf("the burst and its check took longer than the 2s before opens_at (machine too slow)")
	}
	if early["not_open"] != 30 || after.pool != before.pool || after.levels != before.levels || after.streamEntries != 0 {
		t.Fatalf("before opens_at: answers %v; pool %d→%d, partitions %d→%d, details %d", early, before.pool, after.pool, before.levels, after.levels, after.streamEntries)
	}
	// At the opening the same buyers buy.
	time.Sleep(time.Until(opens))
	for i := 0; i < 30; i++ {
		if a := userDeduct(t, b, addrs[(i+1)%3], "win", "buyer"+strconv.Itoa(i), 1, "open-"+strconv.Itoa(i)); a.Code != 200 {
			t.Fatalf("buyer %d after opens_at: %d %s", i, a.Code, a.raw)
		}
	}
	// closes_at through another node: every node closes, stock remains.
	closes := time.Now().Add(time.Second).UTC()
	mustPutSale(t, nodes[1], "win", fmt.Sprintf(`{"total":200,"closes_at":%q}`, closes.Format(time.RFC3339Nano)))
	time.Sleep(time.Until(closes))
	for i, addr := range addrs {
		if a := userDeduct(t, b, addr, "win", "late", 1, "late-"+strconv.Itoa(i)); a.Code != 409 || a.Status != "closed" {
			t.Fatalf("node %d after closes_at: %d %s", i+1, a.Code, a.raw)
		}
	}
	if v := getSale(t, nodes[2], "win"); v.Available <= 0 || v.ClosesAt == nil {
		t.Fatalf("after closing: available %d, closes_at %v; want stock left", v.Available, v.ClosesAt)
	}
	// A time change through node 3: a new opening in the future holds on
	// every node the moment the PUT answered.
	reopen := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	mustPutSale(t, nodes[2], "win", fmt.Sprintf(`{"total":200,"closes_at":null,"opens_at":%q}`, reopen.Format(time.RFC3339)))
	for i, addr := range addrs {
		if a := userDeduct(t, b, addr, "win", "late", 1, "re-"+strconv.Itoa(i)); a.Code != 409 || a.Status != "not_open" {
			t.Fatalf("node %d after the time change: %d %s", i+1, a.Code, a.raw)
		}
	}
	// A restock through node 1 that also clears opens_at: every node sells.
	mustPutSale(t, nodes[0], "win", `{"total":300,"opens_at":""}`)
	for i, addr := range addrs {
		if a := userDeduct(t, b, addr, "win", "late", 1, "restocked-"+strconv.Itoa(i)); a.Code != 200 {
			t.Fatalf("node %d after the restock: %d %s", i+1, a.Code, a.raw)
		}
	}
	v := getSale(t, nodes[1], "win")
	if v.Total != 300 || v.OpensAt != nil || v.ClosesAt != nil {
		t.Fatalf("after the restock: %+v", v)
	}
	r := waitSynced(t, nodes[0], "win", 30*time.Second)
	if r.Reserved != 33 || r.Doubled != 0 {
		t.Fatalf("verify %+v, want 33 reserved", r)
	}
}

// extend: a reservation extended past the TTL survives the expiry sweep
// and can be confirmed; one not extended expires; an extension above
// sync.max_extension is capped and says so; settled and unknown
// reservations are refused.
func TestSaleExtend(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.Sync.ReservationTTL = 2 * time.Second
	cfg.Sync.ExpireEvery = 100 * time.Millisecond
	cfg.Sync.MaxExtension = 30 * time.Second
	n := startNode(t, cfg)
	mustPutSale(t, n, "ext", `{"total":100,"partitions":2,"chunk":10,"threshold":2}`)
	b := stocktest.NewBuyer(8)
	kept := salePost(t, b, n.hot, "/v1/deduct", `{"sku":"ext","qty":2,"request_id":"kept"}`)
	lapsed := salePost(t, b, n.hot, "/v1/deduct", `{"sku":"ext","qty":1,"request_id":"lapsed"}`)
	if kept.Code != 200 || lapsed.Code != 200 {
		t.Fatalf("deducts: %s / %s", kept.raw, lapsed.raw)
	}
	made := time.Now()
	// Right after the deduction (its detail may still be on its way to
	// MySQL): extended by 10 s.
	x := salePost(t, b, n.hot, "/v1/extend", fmt.Sprintf(`{"reservation":%q,"seconds":10}`, kept.Reservation))
	until, err := time.Parse(time.RFC3339Nano, x.ExpiresAt)
	if x.Code != 200 || x.Status != "reserved" || x.Capped || err != nil || until.Before(made.Add(9*time.Second)) {
		t.Fatalf("extend 10s: %d %s", x.Code, x.raw)
	}
	// Above the maximum: capped, and the answer says so.
	x = salePost(t, b, n.hot, "/v1/extend", fmt.Sprintf(`{"reservation":%q,"seconds":3600}`, kept.Reservation))
	until, err = time.Parse(time.RFC3339Nano, x.ExpiresAt)
	if x.Code != 200 || !x.Capped || x.MaxSeconds != 30 || err != nil || until.After(time.Now().Add(30*time.Second)) {
		t.Fatalf("extend 3600s with a 30s maximum: %d %s", x.Code, x.raw)
	}
	// Again (idempotent): the last extension stands.
	x = salePost(t, b, n.hot, "/v1/extend", fmt.Sprintf(`{"reservation":%q,"seconds":10}`, kept.Reservation))
	if x.Code != 200 || x.Capped {
		t.Fatalf("extend again: %d %s", x.Code, x.raw)
	}
	// The one not extended expires after the TTL.
	stocktest.Until(t, 30*time.Second, "the reservation not extended expires", func() bool {
		var state string
		e.db.QueryRow(`SELECT state FROM deductions WHERE sku = 'ext' AND request_id = 'lapsed'`).Scan(&state)
		return state == "released"
	})
	if time.Since(made) < cfg.Sync.ReservationTTL {
		t.Fatalf("released before its TTL")
	}
	if r := salePost(t, b, n.hot, "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, lapsed.Reservation)); r.Code != 409 || r.Status != "released" {
		t.Fatalf("confirm of the expired one: %d %s", r.Code, r.raw)
	}
	// Let a few more sweeps pass the TTL: the extended one stays reserved.
	time.Sleep(10 * cfg.Sync.ExpireEvery)
	var state string
	if err := e.db.QueryRow(`SELECT state FROM deductions WHERE sku = 'ext' AND request_id = 'kept'`).Scan(&state); err != nil || state != "reserved" {
		t.Fatalf("extended reservation: state %q %v after %s (TTL %s)", state, err, time.Since(made), cfg.Sync.ReservationTTL)
	}
	if r := salePost(t, b, n.hot, "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, kept.Reservation)); r.Code != 200 {
		t.Fatalf("confirm of the extended one %s after its deduction: %d %s", time.Since(made), r.Code, r.raw)
	}
	for _, c := range []struct {
		token, status string
		code          int
	}{
		{kept.Reservation, "confirmed", 409},
		{lapsed.Reservation, "released", 409},
		{"not-a-token", "", 404},
	} {
		r := salePost(t, b, n.hot, "/v1/extend", fmt.Sprintf(`{"reservation":%q,"seconds":5}`, c.token))
		if r.Code != c.code || r.Status != c.status {
			t.Fatalf("extend %s: %d %s, want %d %q", c.token, r.Code, r.raw, c.code, c.status)
		}
	}
	// An extension that ran out expires like any reservation.
	short := salePost(t, b, n.hot, "/v1/deduct", `{"sku":"ext","qty":1,"request_id":"short"}`)
	if x := salePost(t, b, n.hot, "/v1/extend", fmt.Sprintf(`{"reservation":%q,"seconds":3}`, short.Reservation)); x.Code != 200 {
		t.Fatalf("extend short: %d %s", x.Code, x.raw)
	}
	stocktest.Until(t, 30*time.Second, "an extension that ran out expires", func() bool {
		var state string
		e.db.QueryRow(`SELECT state FROM deductions WHERE sku = 'ext' AND request_id = 'short'`).Scan(&state)
		return state == "released"
	})
	r := waitSynced(t, n, "ext", 30*time.Second)
	if r.Confirmed != 2 || r.Reserved != 0 || r.Released != 2 {
		t.Fatalf("verify %+v", r)
	}
	// Extensions of settled reservations go once they ran out.
	stocktest.Until(t, 30*time.Second, "the extensions of settled reservations are forgotten", func() bool {
		var n int
		e.db.QueryRow(`SELECT COUNT(*) FROM reservation_extensions WHERE sku = 'ext'`).Scan(&n)
		return n == 0
	})
}

// Bad input answers 400 naming the field and changes nothing.
func TestSaleRulesBadInput(t *testing.T) {
	e := newEnv(t, 1)
	n := startNode(t, e.config())
	opens := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	mustPutSale(t, n, "bad", fmt.Sprintf(`{"total":50,"partitions":2,"chunk":5,"threshold":1,"per_user_limit":2,"opens_at":%q}`, opens.Format(time.RFC3339)))
	before := getSale(t, n, "bad")
	ledgerBefore := e.ledger("bad")
	for _, c := range []struct{ body, field string }{
		{`{"total":50,"per_user_limit":-1}`, "per_user_limit"},
		{`{"total":50,"per_user_limit":1000000000001}`, "per_user_limit"},
		{`{"total":50,"per_user_limit":99999999999999999999}`, "per_user_limit"},
		{`{"total":50,"per_user_limit":"3"}`, "per_user_limit"},
		{`{"total":50,"opens_at":"tomorrow"}`, "opens_at"},
		{`{"total":50,"opens_at":1767225600}`, "opens_at"},
		{`{"total":50,"closes_at":"2026-13-01T00:00:00Z"}`, "closes_at"},
		{`{"total":50,"opens_at":"2030-01-02T00:00:00Z","closes_at":"2030-01-01T00:00:00Z"}`, "closes_at"},
		{`{"total":50,"opens_at":"2030-01-01T00:00:00Z","closes_at":"2030-01-01T00:00:00Z"}`, "closes_at"},
		// Before the stored opens_at.
		{fmt.Sprintf(`{"total":60,"closes_at":%q}`, opens.Add(-time.Minute).Format(time.RFC3339)), "closes_at"},
		{`{"total":50,"per_user_limit":2,"opens_at_":"2030-01-01T00:00:00Z"}`, "opens_at_"},
	} {
		code, out := putSale(t, n, "bad", c.body)
		var ans struct {
			Error string `json:"error"`
			Field string `json:"field"`
		}
		json.Unmarshal([]byte(out), &ans)
		if code != 400 || !(ans.Field == c.field || strings.HasPrefix(ans.Error, c.field+":")) {
			t.Errorf("PUT %s: %d %s; want 400 naming %s", c.body, code, out, c.field)
		}
	}
	if after := getSale(t, n, "bad"); after.Version != before.Version || after.Total != before.Total ||
		after.PerUserLimit != 2 || after.OpensAt == nil || !after.OpensAt.Equal(opens) || after.ClosesAt != nil {
		t.Fatalf("changed by refused PUTs: %+v → %+v", before, after)
	}
	// Open the sale to check the hot endpoint's answers.
	mustPutSale(t, n, "bad", `{"total":50,"opens_at":null}`)
	b := stocktest.NewBuyer(4)
	if a := salePost(t, b, n.hot, "/v1/deduct", `{"sku":"bad","qty":1,"request_id":"nouser"}`); a.Code != 400 || a.Field != "user_id" {
		t.Fatalf("deduct without user_id on a limited sku: %d %s", a.Code, a.raw)
	}
	ok := userDeduct(t, b, n.hot, "bad", "carol", 1, "carol-1")
	if ok.Code != 200 {
		t.Fatalf("deduct: %d %s", ok.Code, ok.raw)
	}
	for _, c := range []struct{ body, field string }{
		{fmt.Sprintf(`{"reservation":%q,"seconds":0}`, ok.Reservation), "seconds"},
		{fmt.Sprintf(`{"reservation":%q,"seconds":-5}`, ok.Reservation), "seconds"},
		{fmt.Sprintf(`{"reservation":%q,"seconds":1.5}`, ok.Reservation), "seconds"},
		{fmt.Sprintf(`{"reservation":%q,"seconds":"10"}`, ok.Reservation), "seconds"},
		{fmt.Sprintf(`{"reservation":%q}`, ok.Reservation), "seconds"},
		{`{"seconds":10}`, "reservation"},
		{fmt.Sprintf(`{"reservation":%q,"seconds":10,"Seconds":10}`, ok.Reservation), "Seconds"},
	} {
		if a := salePost(t, b, n.hot, "/v1/extend", c.body); a.Code != 400 || a.Field != c.field {
			t.Errorf("extend %s: %d %s; want 400 naming %s", c.body, a.Code, a.raw, c.field)
		}
	}
	waitSynced(t, n, "bad", 30*time.Second)
	var ext int
	e.db.QueryRow(`SELECT COUNT(*) FROM reservation_extensions`).Scan(&ext)
	l := e.ledger("bad")
	if ext != 0 || l.pool+l.levels != ledgerBefore.pool+ledgerBefore.levels-1 {
		t.Fatalf("refused requests changed something: %d extensions; stock %d → %d (one unit sold)", ext, ledgerBefore.pool+ledgerBefore.levels, l.pool+l.levels)
	}
}

// Crash safety of the allowance. A node that died after taking a
// request's allowance and before its stock take leaves a pending entry:
// it counts (the limit is never exceeded) until the sweep gives it back
// one reservation TTL later. One that died after the stock take and
// before recording it leaves a pending entry for a real deduction: the
// sweep settles it as held from MySQL's row, never gives it back. A
// give-back lost after a release is made up by the sweep too.
func TestSaleAllowanceConvergesAfterCrash(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.Sync.ReservationTTL = 2 * time.Second
	cfg.Sync.ExpireEvery = 100 * time.Millisecond
	n := startNode(t, cfg)
	mustPutSale(t, n, "cr", `{"total":100,"partitions":2,"chunk":10,"threshold":2,"per_user_limit":2}`)
	b := stocktest.NewBuyer(8)
	ctx := context.Background()

	// Dave's node died between the allowance and the stock: 2 units
	// counted, no deduction.
	c, key, _ := e.allowance("cr")
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	if err := c.Do(ctx, c.B().Hset().Key(key).FieldValue().FieldValue("u:dave", "2").FieldValue("r:ghost", "p:2:"+now+":dave").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	if a := userDeduct(t, b, n.hot, "cr", "dave", 1, "dave-1"); a.Code != 409 || a.Status != "limit_reached" {
		t.Fatalf("while the crashed request's allowance is pending: %d %s", a.Code, a.raw)
	}
	var converged time.Duration
	stocktest.Until(t, 30*time.Second, "the crashed request's allowance comes back", func() bool {
		a := userDeduct(t, b, n.hot, "cr", "dave", 2, "dave-2")
		converged = time.Since(crashed)
		return a.Code == 200
	})
	if converged < cfg.Sync.ReservationTTL {
		t.Fatalf("given back after %s, before the reservation TTL %s", converged, cfg.Sync.ReservationTTL)
	}

	// Erin's node died after the stock take, before recording it: the
	// entry is pending although the deduction exists. Made from a real
	// deduction by putting its entry back to pending.
	took := userDeduct(t, b, n.hot, "cr", "erin", 1, "erin-1")
	if took.Code != 200 {
		t.Fatalf("erin: %d %s", took.Code, took.raw)
	}
	_, _, m := e.allowance("cr")
	var detail string
	for f, v := range m {
		if strings.HasPrefix(f, "d:") && v == "erin-1" {
			detail = f[2:]
		}
	}
	if detail == "" || !strings.HasPrefix(m["r:erin-1"], "h:1:") {
		t.Fatalf("erin's entry %q, detail %q", m["r:erin-1"], detail)
	}
	now = strconv.FormatInt(time.Now().UnixMilli(), 10)
	if err := c.Do(ctx, c.B().Hset().Key(key).FieldValue().FieldValue("r:erin-1", "p:1:"+now+":erin").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, c.B().Hdel().Key(key).Field("d:"+detail).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// She pays: confirmed, so the units stay hers.
	if a := salePost(t, b, n.hot, "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, took.Reservation)); a.Code != 200 {
		t.Fatalf("confirm: %d %s", a.Code, a.raw)
	}
	stocktest.Until(t, 30*time.Second, "the sweep settles the pending entry of a real deduction", func() bool {
		_, _, m := e.allowance("cr")
		return strings.HasPrefix(m["r:erin-1"], "h:1:"+detail) && m["d:"+detail] == "erin-1"
	})
	if a := userDeduct(t, b, n.hot, "cr", "erin", 2, "erin-2"); a.Code != 409 || a.Status != "limit_reached" {
		t.Fatalf("after the sweep, erin holds 1 of 2: a request for 2 answered %d %s", a.Code, a.raw)
	}
	if a := userDeduct(t, b, n.hot, "cr", "erin", 1, "erin-3"); a.Code != 200 {
		t.Fatalf("erin's second unit: %d %s", a.Code, a.raw)
	}
	// Frank released, and the give-back after the release's commit was
	// lost: his entry still reads held. The sweep gives it back.
	fr := userDeduct(t, b, n.hot, "cr", "frank", 2, "frank-1")
	if fr.Code != 200 {
		t.Fatalf("frank: %d %s", fr.Code, fr.raw)
	}
	_, _, m = e.allowance("cr")
	entry, counted := m["r:frank-1"], m["u:frank"]
	var frDetail string
	for f, v := range m {
		if strings.HasPrefix(f, "d:") && v == "frank-1" {
			frDetail = f[2:]
		}
	}
	if a := salePost(t, b, n.hot, "/v1/release", fmt.Sprintf(`{"reservation":%q}`, fr.Reservation)); a.Code != 200 {
		t.Fatalf("release: %d %s", a.Code, a.raw)
	}
	if err := c.Do(ctx, c.B().Hset().Key(key).FieldValue().FieldValue("r:frank-1", entry).FieldValue("u:frank", counted).FieldValue("d:"+frDetail, "frank-1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if a := userDeduct(t, b, n.hot, "cr", "frank", 1, "frank-2"); a.Code != 409 {
		t.Fatalf("with the lost give-back, frank's third unit: %d %s", a.Code, a.raw)
	}
	stocktest.Until(t, 30*time.Second, "the sweep gives back a held entry whose row is released", func() bool {
		_, _, m := e.allowance("cr")
		return m["u:frank"] == "" && strings.HasPrefix(m["r:frank-1"], "x:")
	})

	waitSynced(t, n, "cr", 30*time.Second)
	stocktest.Until(t, 30*time.Second, "every row has its ids", func() bool { return e.heldInMySQL("cr")["?"] == 0 })
	held := e.heldInMySQL("cr")
	if held["?"] != 0 || held["erin"] > 2 || held["dave"] > 2 {
		t.Fatalf("held %v", held)
	}
	t.Logf("a crashed request's allowance came back %s after the crash (reservation TTL %s)", converged.Round(time.Millisecond), cfg.Sync.ReservationTTL)
}
