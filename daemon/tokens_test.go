package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stockd/stockd/audit"
	stocksync "github.com/stockd/stockd/sync"

	"github.com/stockd/stockd/internal/reservation"
	"github.com/stockd/stockd/internal/stocktest"
)

// testSecret signs the test nodes' reservations. The tests below know it,
// as an attacker who stole it would.
const testSecret = "test-reservation-secret-0123456789abcdef"

// tokenParts splits a reservation token into its detail id fields and qty.
type tokenParts struct {
	sku        string
	pid        int
	epoch, seq int64
	qty        int64
}

func parseToken(t *testing.T, tok string) tokenParts {
	t.Helper()
	f := strings.Split(tok, ":")
	if len(f) != 6 {
		t.Fatalf("token %q: want 6 fields", tok)
	}
	var p tokenParts
	var err error
	p.sku = f[0]
	if p.pid, err = strconv.Atoi(f[1]); err != nil {
		t.Fatal(err)
	}
	if p.epoch, err = strconv.ParseInt(f[2], 10, 64); err != nil {
		t.Fatal(err)
	}
	if p.seq, err = strconv.ParseInt(f[3], 10, 64); err != nil {
		t.Fatal(err)
	}
	if p.qty, err = strconv.ParseInt(f[4], 10, 64); err != nil {
		t.Fatal(err)
	}
	return p
}

// forge signs a token for (sku, pid, epoch, seq, qty) with secret.
func forge(secret, sku string, pid int, epoch, seq, qty int64) string {
	return string(reservation.NewSigner([]byte(secret)).AppendDetailToken(nil, sku, pid, epoch, seq, qty))
}

// settle posts a confirm or release of tok and returns the answer.
func settle(t *testing.T, b *stocktest.Buyer, addr, path, tok string) stocktest.Answer {
	t.Helper()
	a, err := b.Post(addr, path, fmt.Sprintf(`{"reservation":%q}`, tok))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return a
}

// rowUnits sums the qty of sku's detail rows that count as sold
// (reserved or confirmed) and of those released.
func (e *env) rowUnits(sku string) (sold, released int64) {
	e.t.Helper()
	if err := e.db.QueryRow(`SELECT COALESCE(SUM(CASE WHEN state <> 'released' THEN qty END), 0),
	        COALESCE(SUM(CASE WHEN state = 'released' THEN qty END), 0) FROM deductions WHERE sku = ?`, sku).
		Scan(&sold, &released); err != nil {
		e.t.Fatal(err)
	}
	return sold, released
}

// The adversarial pass: an attacker who holds the signing key forges
// tokens for deductions that do not exist: (a) a sequence never deducted,
// (b) an existing sequence with a larger qty (landed, and still in the
// stream), (c) a wrong epoch, (d) another SKU's partition, (e) an unknown
// SKU. Confirm and release of each must answer 404 and change nothing, and
// selling out afterwards sells exactly the SKU's total.
func TestForgedTokensCreateNothing(t *testing.T) {
	e := newEnv(t, 2)
	cfg, _, mq := e.proxied(e.config())
	n := startNode(t, cfg)
	const total = 100
	putSKU(t, n, "forge", total, 2, 20, 4)
	putSKU(t, n, "other", 50, 2, 20, 4)
	b := stocktest.NewBuyer(32)

	var sold int64
	var toks []string
	buy := func(sku, id string) string {
		t.Helper()
		a, err := b.Deduct(n.hot, sku, 1, id)
		if err != nil || a.Code != 200 {
			t.Fatalf("deduct %s: %+v %v", id, a, err)
		}
		if sku == "forge" {
			sold += a.Qty
		}
		return a.Reservation
	}
	for i := 0; i < 5; i++ {
		toks = append(toks, buy("forge", "landed-"+strconv.Itoa(i)))
	}
	otherTok := buy("other", "o-1")
	waitSynced(t, n, "forge", 10*time.Second)
	// The next details stay in Redis: the broker is unreachable.
	mq.Cut()
	for i := 0; i < 5; i++ {
		toks = append(toks, buy("forge", "stream-"+strconv.Itoa(i)))
	}
	if r := verify(t, n, "forge"); r.InFlightDetails != 5 {
		t.Fatalf("%d details in flight, want 5 (%+v)", r.InFlightDetails, r)
	}

	landed, inStream, other := parseToken(t, toks[0]), parseToken(t, toks[9]), parseToken(t, otherTok)
	var maxSeq int64
	for _, tok := range toks {
		if p := parseToken(t, tok); p.pid == landed.pid && p.seq > maxSeq {
			maxSeq = p.seq
		}
	}
	forged := []struct{ name, tok string }{
		{"never deducted", forge(testSecret, "forge", landed.pid, landed.epoch, maxSeq+100, 50)},
		{"next sequence", forge(testSecret, "forge", landed.pid, landed.epoch, maxSeq+1, 1)},
		{"sequence zero", forge(testSecret, "forge", landed.pid, landed.epoch, 0, 1)},
		{"landed, larger qty", forge(testSecret, "forge", landed.pid, landed.epoch, landed.seq, landed.qty+49)},
		{"in stream, larger qty", forge(testSecret, "forge", inStream.pid, inStream.epoch, inStream.seq, inStream.qty+49)},
		{"wrong epoch", forge(testSecret, "forge", landed.pid, landed.epoch+1, landed.seq, landed.qty)},
		{"other SKU's partition", forge(testSecret, "forge", other.pid, other.epoch, other.seq, other.qty)},
		{"no such pid", forge(testSecret, "forge", 77, landed.epoch, 1, 1)},
		{"unknown SKU", forge(testSecret, "nosuch", 0, landed.epoch, 1, 50)},
	}
	before := verify(t, n, "forge")
	accepted := 0
	for _, f := range forged {
		for _, path := range []string{"/v1/release", "/v1/confirm", "/v1/release"} {
			if a := settle(t, b, n.hot, path, f.tok); a.Code != 404 {
				accepted++
				t.Errorf("%s: %s answered %d %+v, want 404", f.name, path, a.Code, a)
			}
		}
	}
	after := verify(t, n, "forge")
	if after.Pool != before.Pool || after.Reserved != before.Reserved || after.Confirmed != before.Confirmed ||
		after.Released != before.Released || after.InDoubt != before.InDoubt || !after.OK {
		t.Errorf("forged tokens changed the SKU: before %+v, after %+v", before, after)
	}
	t.Logf("forged settles accepted: %d of %d; pool %d -> %d, released %d -> %d",
		accepted, 3*len(forged), before.Pool, after.Pool, before.Released, after.Released)

	// Genuine tokens still settle, and the other SKU was not touched.
	if a := settle(t, b, n.hot, "/v1/confirm", toks[1]); a.Code != 200 {
		t.Errorf("genuine confirm (landed): %+v", a)
	}
	if a := settle(t, b, n.hot, "/v1/confirm", toks[8]); a.Code != 200 {
		t.Errorf("genuine confirm (in stream): %+v", a)
	}
	mq.Restore()
	waitLanded(t, n, "forge", 15*time.Second)

	// Sell out: exactly the total, counted from the answers and from MySQL.
	rest := stocktest.Crowd(t, b, n.hot, "forge", 300, "rest-", func(int) int64 { return 1 })
	sold += rest.Units
	r := waitSynced(t, n, "forge", 15*time.Second)
	rows, released := e.rowUnits("forge")
	t.Logf("sold %d units (answers) on a %d-unit SKU; rows hold %d sold, %d released; verify %+v", sold, total, rows, released, r)
	if sold != total || rows != total || released != 0 || r.Pool != 0 || !r.OK {
		t.Fatalf("sold %d by the answers, %d by MySQL rows (%d released, pool %d); want exactly %d", sold, rows, released, r.Pool, total)
	}
	if r := waitSynced(t, n, "other", 10*time.Second); r.Reserved != 1 || r.Released != 0 {
		t.Fatalf("other SKU changed: %+v", r)
	}
}

// waitLanded waits until no detail of sku is in flight (verify may fail)
// and returns the report.
func waitLanded(t *testing.T, n *node, sku string, within time.Duration) audit.Report {
	t.Helper()
	var r audit.Report
	stocktest.Eventually(t, within, func() (bool, string) {
		r = verify(t, n, sku)
		return r.InFlightDetails == 0, fmt.Sprintf("details still in flight after %s: %+v", within, r)
	})
	return r
}

// pausedApplier holds the write-back queue with an exclusive consumer of
// the test's own: the node's appliers cannot consume (they retry), so
// batches are published, confirmed and trimmed from Redis but do not reach
// MySQL. Resume hands the held batches back to the queue.
type pausedApplier struct {
	t    *testing.T
	conn *amqp.Connection
	ch   *amqp.Channel
	got  <-chan amqp.Delivery
	held []amqp.Delivery
}

func pauseApplier(t *testing.T, queue string) *pausedApplier {
	t.Helper()
	conn, err := amqp.Dial(stocktest.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// The same declaration as the node's, of the default type.
	if err := stocksync.DeclareQueues(conn, queue, stocksync.DefaultConfig().QueueType); err != nil {
		t.Fatal(err)
	}
	got, err := ch.Consume(queue, "test-pause", false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &pausedApplier{t: t, conn: conn, ch: ch, got: got}
}

// waitHeld waits until the paused consumer holds at least n batches.
func (p *pausedApplier) waitHeld(n int, within time.Duration) {
	p.t.Helper()
	timeout := time.After(within)
	for len(p.held) < n {
		select {
		case d := <-p.got:
			p.held = append(p.held, d)
		case <-timeout:
			p.t.Fatalf("paused consumer holds %d batches after %s, want %d", len(p.held), within, n)
		}
	}
}

// resume returns the held batches to the queue and lets the node consume.
func (p *pausedApplier) resume() {
	p.t.Helper()
	if err := p.ch.Close(); err != nil {
		p.t.Fatal(err)
	}
}

// A detail that was published and trimmed from Redis but has not reached
// MySQL cannot be verified anywhere: confirm and release answer 503 and
// change nothing; once it lands they work, and its units come back once.
func TestSettleWhileTrimmedNotApplied(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config()
	pause := pauseApplier(t, e.queue)
	n := startNode(t, cfg)
	putSKU(t, n, "gap", 20, 1, 20, 4)
	b := stocktest.NewBuyer(8)
	var toks []string
	for i := 0; i < 3; i++ {
		a, err := b.Deduct(n.hot, "gap", 1, "g-"+strconv.Itoa(i))
		if err != nil || a.Code != 200 {
			t.Fatalf("deduct: %+v %v", a, err)
		}
		toks = append(toks, a.Reservation)
	}
	pause.waitHeld(1, 15*time.Second)
	// Published and trimmed: nothing left in Redis, nothing in MySQL.
	stocktest.Until(t, 10*time.Second, "stream not trimmed after the broker confirmed", func() bool { return e.ledger("gap").streamEntries == 0 })
	pool := e.ledger("gap").pool
	for _, path := range []string{"/v1/release", "/v1/confirm"} {
		if a := settle(t, b, n.hot, path, toks[0]); a.Code != 503 {
			t.Errorf("%s in the window: %+v, want 503", path, a)
		}
	}
	if got := e.ledger("gap").pool; got != pool {
		t.Errorf("pool %d -> %d while the detail could not be verified", pool, got)
	}
	sold, released := e.rowUnits("gap")
	t.Logf("in the window: rows hold %d sold, %d released; pool %d", sold, released, e.ledger("gap").pool)

	pause.resume()
	r := waitSynced(t, n, "gap", 15*time.Second)
	if r.Reserved != 3 || r.Released != 0 {
		t.Fatalf("after landing: %+v, want 3 reserved", r)
	}
	for i := 0; i < 2; i++ {
		if a := settle(t, b, n.hot, "/v1/release", toks[0]); a.Code != 200 {
			t.Fatalf("release after landing: %+v", a)
		}
	}
	if a := settle(t, b, n.hot, "/v1/confirm", toks[1]); a.Code != 200 {
		t.Fatalf("confirm after landing: %+v", a)
	}
	more := stocktest.Crowd(t, b, n.hot, "gap", 40, "more-", func(int) int64 { return 1 })
	r = waitSynced(t, n, "gap", 15*time.Second)
	if more.Units != 18 || r.Released != 1 || r.Confirmed != 1 || r.Reserved != 19 || r.Pool != 0 {
		t.Fatalf("sold %d more (want 18: 17 never sold + 1 released); %+v", more.Units, r)
	}
}

// Genuine tokens settle on every path: confirm and release while the
// detail is still in Redis and after it landed, repeats answer the same,
// crossed ones 409, and unconfirmed reservations expire; then exactly the
// released and expired units sell again.
func TestGenuineTokensEveryPath(t *testing.T) {
	e := newEnv(t, 2)
	cfg, _, mq := e.proxied(e.config())
	cfg.Sync.ReservationTTL = 6 * time.Second
	cfg.Sync.ExpireEvery = 200 * time.Millisecond
	n := startNode(t, cfg)
	const total = 40
	putSKU(t, n, "paths", total, 2, 10, 2)
	b := stocktest.NewBuyer(16)
	buy := func(prefix string, k int) []string {
		t.Helper()
		var toks []string
		for i := 0; i < k; i++ {
			a, err := b.Deduct(n.hot, "paths", 1, prefix+strconv.Itoa(i))
			if err != nil || a.Code != 200 {
				t.Fatalf("deduct: %+v %v", a, err)
			}
			toks = append(toks, a.Reservation)
		}
		return toks
	}
	expect := func(path, tok string, code int, status string) {
		t.Helper()
		if a := settle(t, b, n.hot, path, tok); a.Code != code || a.Status != status {
			t.Errorf("%s: %d %+v, want %d %s", path, a.Code, a, code, status)
		}
	}

	// In the stream: the broker is unreachable, nothing lands.
	mq.Cut()
	early := buy("early-", 6)
	if r := verify(t, n, "paths"); r.InFlightDetails != 6 {
		t.Fatalf("%d details in flight, want 6", r.InFlightDetails)
	}
	for k := 0; k < 2; k++ {
		expect("/v1/release", early[0], 200, "released")
		expect("/v1/release", early[1], 200, "released")
		expect("/v1/confirm", early[2], 200, "confirmed")
		expect("/v1/confirm", early[3], 200, "confirmed")
	}
	expect("/v1/confirm", early[0], 409, "released")
	expect("/v1/release", early[2], 409, "confirmed")
	mq.Restore()
	waitSynced(t, n, "paths", 15*time.Second)

	// Landed.
	late := buy("late-", 6)
	waitSynced(t, n, "paths", 15*time.Second)
	for k := 0; k < 2; k++ {
		expect("/v1/release", late[0], 200, "released")
		expect("/v1/release", late[1], 200, "released")
		expect("/v1/confirm", late[2], 200, "confirmed")
		expect("/v1/confirm", late[3], 200, "confirmed")
	}
	expect("/v1/confirm", late[1], 409, "released")
	expect("/v1/release", late[3], 409, "confirmed")

	// early[4:], late[4:] were never settled: they expire after the TTL.
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		r := verify(t, n, "paths")
		return r.Released == 8, fmt.Sprintf("expiry did not release the 4 unsettled reservations: %+v", r)
	})
	for _, tok := range []string{early[4], late[5]} {
		expect("/v1/release", tok, 200, "released") // already, by expiry
		expect("/v1/confirm", tok, 409, "released")
	}

	// 28 never sold + 8 released or expired sell again, exactly.
	more := stocktest.Crowd(t, b, n.hot, "paths", 80, "more-", func(int) int64 { return 1 })
	r := waitSynced(t, n, "paths", 15*time.Second)
	if more.Units != total-4 || r.Confirmed != 4 || r.Released != 8 || r.Reserved != total-4 || r.Pool != 0 {
		t.Fatalf("sold %d more, want %d; %+v", more.Units, total-4, r)
	}
}

// Demo mode without a secret: the nodes generate one into the shared
// demo_secret_file, accept each other's tokens, and not tokens signed
// with anything else.
func TestDemoSecretShared(t *testing.T) {
	e := newEnv(t, 1)
	file := filepath.Join(t.TempDir(), "var", "demo-reservation-secret")
	demo := func(name string, join []*node) Config {
		cfg := e.config()
		cfg.NodeName = name
		cfg.ReservationSecret, cfg.Demo, cfg.DemoSecretFile = "", true, file
		if len(join) > 0 {
			cfg.Join = []string{join[0].d.GossipAddr()}
		}
		return cfg
	}
	n1 := startNode(t, demo("n1", nil))
	n2 := startNode(t, demo("n2", []*node{n1}))
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(b)); len(s) != 64 || strings.Contains(s, testToken) {
		t.Fatalf("generated secret %q: want 64 hex characters", s)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v, want mode 0600", fi.Mode(), err)
	}
	putSKU(t, n1, "demo", 10, 1, 10, 2)
	waitKnown(t, []*node{n2}, "demo")
	buyer := stocktest.NewBuyer(4)
	var toks [2][]string
	for i, n := range []*node{n1, n2} {
		for k := 0; k < 2; k++ {
			a, err := buyer.Deduct(n.hot, "demo", 1, "d-"+strconv.Itoa(i)+"-"+strconv.Itoa(k))
			if err != nil || a.Code != 200 {
				t.Fatalf("deduct on n%d: %+v %v", i+1, a, err)
			}
			toks[i] = append(toks[i], a.Reservation)
		}
	}
	// Each node settles the other's tokens.
	for i, n := range []*node{n2, n1} {
		if a := settle(t, buyer, n.hot, "/v1/release", toks[i][0]); a.Code != 200 {
			t.Errorf("release of n%d's token on the other node: %+v", i+1, a)
		}
		if a := settle(t, buyer, n.hot, "/v1/confirm", toks[i][1]); a.Code != 200 {
			t.Errorf("confirm of n%d's token on the other node: %+v", i+1, a)
		}
	}
	// A token of a real deduction signed with another key is unknown.
	p := parseToken(t, toks[0][0])
	for _, key := range []string{testSecret, testToken} {
		tok := forge(key, p.sku, p.pid, p.epoch, p.seq, p.qty)
		if a := settle(t, buyer, n1.hot, "/v1/confirm", tok); a.Code != 404 {
			t.Errorf("token signed with %q: %+v, want 404", key, a)
		}
	}
	r := waitSynced(t, n1, "demo", 15*time.Second)
	if r.Released != 2 || r.Confirmed != 2 {
		t.Fatalf("released %d, confirmed %d; want 2 and 2 (%+v)", r.Released, r.Confirmed, r)
	}
}

// Rotation: with the new secret current and the old one previous, tokens
// signed with either settle and new tokens are signed with the new one;
// a token signed with neither is unknown; once the old secret is removed,
// its tokens are unknown too.
func TestSecretRotation(t *testing.T) {
	e := newEnv(t, 1)
	const newSecret = "rotated-reservation-secret-fedcba9876543210"
	cfg := e.config() // signs with testSecret
	n := startNode(t, cfg)
	putSKU(t, n, "rot", 10, 1, 10, 2)
	b := stocktest.NewBuyer(4)
	buy := func(id string) string {
		t.Helper()
		a, err := b.Deduct(n.hot, "rot", 1, id)
		if err != nil || a.Code != 200 {
			t.Fatalf("deduct: %+v %v", a, err)
		}
		return a.Reservation
	}
	old := []string{buy("o-1"), buy("o-2"), buy("o-3")}
	n.stop()

	cfg.ReservationSecret, cfg.ReservationSecretPrevious = newSecret, []string{testSecret}
	n = startNode(t, cfg)
	if a := settle(t, b, n.hot, "/v1/release", old[0]); a.Code != 200 {
		t.Errorf("token signed with the previous secret: %+v, want 200", a)
	}
	fresh := buy("n-1")
	p := parseToken(t, fresh)
	if fresh != forge(newSecret, p.sku, p.pid, p.epoch, p.seq, p.qty) {
		t.Errorf("new token %s not signed with the current secret", fresh)
	}
	if a := settle(t, b, n.hot, "/v1/confirm", fresh); a.Code != 200 {
		t.Errorf("token signed with the current secret: %+v", a)
	}
	q := parseToken(t, old[1])
	neither := forge("some-other-secret-that-nobody-configured", q.sku, q.pid, q.epoch, q.seq, q.qty)
	if a := settle(t, b, n.hot, "/v1/release", neither); a.Code != 404 {
		t.Errorf("token signed with neither secret: %+v, want 404", a)
	}
	n.stop()

	cfg.ReservationSecretPrevious = nil
	n = startNode(t, cfg)
	if a := settle(t, b, n.hot, "/v1/release", old[2]); a.Code != 404 {
		t.Errorf("token of a removed secret: %+v, want 404", a)
	}
	if a := settle(t, b, n.hot, "/v1/confirm", fresh); a.Code != 200 {
		t.Errorf("confirm again with the current secret: %+v", a)
	}
	r := waitSynced(t, n, "rot", 15*time.Second)
	if r.Released != 1 || r.Confirmed != 1 || r.Reserved != 2 {
		t.Fatalf("released %d, confirmed %d, reserved %d; want 1, 1, 2 (%+v)", r.Released, r.Confirmed, r.Reserved, r)
	}
}
