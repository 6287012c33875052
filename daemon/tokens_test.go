package daemon

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stockd/stockd/internal/reservation"
	"github.com/stockd/stockd/internal/testenv"
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
func settle(t *testing.T, b *buyer, addr, path, tok string) answer {
	t.Helper()
	a, err := b.post(addr, path, fmt.Sprintf(`{"reservation":%q}`, tok))
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
	b := newBuyer(32)

	var sold int64
	var toks []string
	buy := func(sku, id string) string {
		t.Helper()
		a, err := b.deduct(n.hot, sku, 1, id)
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
	rest := crowd(t, b, n.hot, "forge", 300, "rest-", func(int) int64 { return 1 })
	sold += rest.units
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
func waitLanded(t *testing.T, n *node, sku string, within time.Duration) report {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := verify(t, n, sku)
		if r.InFlightDetails == 0 {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("details still in flight after %s: %+v", within, r)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	conn, err := amqp.Dial(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// The same declaration as the node's (sync/broker.go).
	if _, err := ch.QueueDeclare(queue+".dlq", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{
		"x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue + ".dlq"}); err != nil {
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
	b := newBuyer(8)
	var toks []string
	for i := 0; i < 3; i++ {
		a, err := b.deduct(n.hot, "gap", 1, "g-"+strconv.Itoa(i))
		if err != nil || a.Code != 200 {
			t.Fatalf("deduct: %+v %v", a, err)
		}
		toks = append(toks, a.Reservation)
	}
	pause.waitHeld(1, 15*time.Second)
	// Published and trimmed: nothing left in Redis, nothing in MySQL.
	deadline := time.Now().Add(10 * time.Second)
	for e.ledger("gap").streamEntries != 0 {
		if time.Now().After(deadline) {
			t.Fatal("stream not trimmed after the broker confirmed")
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	more := crowd(t, b, n.hot, "gap", 40, "more-", func(int) int64 { return 1 })
	r = waitSynced(t, n, "gap", 15*time.Second)
	if more.units != 18 || r.Released != 1 || r.Confirmed != 1 || r.Reserved != 19 || r.Pool != 0 {
		t.Fatalf("sold %d more (want 18: 17 never sold + 1 released); %+v", more.units, r)
	}
}
