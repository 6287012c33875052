package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stockd/stockd/internal/stocktest"
)

// outage is how long a dependency stays unreachable in the fault tests.
const outage = 20 * time.Second

// proxied routes the daemon's MySQL and RabbitMQ connections through
// proxies the test can cut, leaving the services up for everyone else.
func (e *env) proxied(cfg Config) (Config, *stocktest.Proxy, *stocktest.Proxy) {
	e.t.Helper()
	dsn, err := mysql.ParseDSN(cfg.MySQLDSN)
	if err != nil {
		e.t.Fatal(err)
	}
	my := stocktest.StartProxy(e.t, dsn.Addr)
	dsn.Addr = my.Addr
	dsn.Timeout = 2 * time.Second
	dsn.ReadTimeout = 5 * time.Second
	dsn.WriteTimeout = 5 * time.Second
	cfg.MySQLDSN = dsn.FormatDSN()
	u, err := url.Parse(cfg.AMQPURL)
	if err != nil {
		e.t.Fatal(err)
	}
	mq := stocktest.StartProxy(e.t, u.Host)
	u.Host = mq.Addr
	cfg.AMQPURL = u.String()
	return cfg, my, mq
}

// steadySale buys from sku at a steady pace until stop is closed and
// returns what the buyers heard.
func steadySale(t *testing.T, b *stocktest.Buyer, addr, sku, idPrefix string, workers int, stop <-chan struct{}) (*stocktest.Tally, *sync.WaitGroup) {
	o := stocktest.NewTally()
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				id := idPrefix + strconv.FormatInt(seq.Add(1), 10)
				a, err := b.Deduct(addr, sku, 1, id)
				if err == nil && a.Code == 503 {
					// Safe to retry with the same id; it must not double.
					// Pacing: a gateway's backoff before its retry.
					time.Sleep(50 * time.Millisecond)
					a, err = b.Deduct(addr, sku, 1, id)
				}
				o.Add(t, id, a, err)
				time.Sleep(2 * time.Millisecond) // pacing: a buyer's think time, so the sale is steady, not a flood
			}
		}()
	}
	return o, &wg
}

// The broker drops our connections twice and then stays away for 20 s in
// the middle of a sale: selling goes on, the batcher reconnects, and MySQL
// ends up with every acknowledged detail exactly once.
func TestBrokerOutageMidSale(t *testing.T) {
	e := newEnv(t, 3)
	cfg, _, mq := e.proxied(e.config())
	n := startNode(t, cfg)
	putSKU(t, n, "mq", 100000, 4, 100, 20)
	b := stocktest.NewBuyer(16)

	stop := make(chan struct{})
	o, wg := steadySale(t, b, n.hot, "mq", "s-", 4, stop)
	// Each reset lands once the batcher has (re)connected and a batch of
	// this sale was confirmed since the previous one.
	const confirmed = `stockd_sync_publish_total{result="confirmed"}`
	published := func(what string) {
		t.Helper()
		since := metric(t, n, confirmed)
		stocktest.Until(t, 30*time.Second, what, func() bool { return metric(t, n, confirmed) > since })
	}
	published("a batch confirmed before the first reset")
	mq.Reset()
	published("a batch confirmed after the first reset")
	mq.Reset()
	published("a batch confirmed after the second reset")
	mq.Cut()
	okAtCut := o.Snapshot().OK
	time.Sleep(outage) // pacing: the outage itself, buyers running throughout
	okDuringCut := o.Snapshot().OK
	mq.Restore()
	published("a batch confirmed once the broker is back")
	close(stop)
	wg.Wait()

	if okDuringCut-okAtCut < 100 {
		t.Fatalf("only %d deductions while the broker was away: selling stalled", okDuringCut-okAtCut)
	}
	if len(o.Other) > 0 {
		t.Fatalf("unexpected answers: %v", o.Other)
	}
	r := checkConserved(t, e, n, "mq", o.Units)
	t.Logf("%d deductions (%d during the outage), %d transport errors; verify %+v", o.OK, okDuringCut-okAtCut, len(o.Errs), r)
}

// MySQL is unreachable for 20 s in the middle of a sale: selling goes on
// from allocated stock, the applier retries, and afterwards MySQL holds
// every acknowledged detail exactly once.
func TestDatabaseOutageMidSale(t *testing.T) {
	e := newEnv(t, 3)
	cfg, my, _ := e.proxied(e.config())
	n := startNode(t, cfg)
	putSKU(t, n, "db", 100000, 4, 200, 20)
	b := stocktest.NewBuyer(16)

	stop := make(chan struct{})
	o, wg := steadySale(t, b, n.hot, "db", "s-", 4, stop)
	// The cut lands once details of this sale were applied, and the sale
	// stops once the applier has applied again after the restore.
	const inserted = `stockd_sync_details_applied_total{result="inserted"}`
	stocktest.Until(t, 30*time.Second, "details applied before the cut", func() bool { return metric(t, n, inserted) > 0 })
	my.Cut()
	okAtCut := o.Snapshot().OK
	time.Sleep(outage) // pacing: the outage itself, buyers running throughout
	okDuringCut := o.Snapshot().OK
	appliedAtRestore := metric(t, n, inserted)
	my.Restore()
	stocktest.Until(t, 60*time.Second, "details applied again once MySQL is back", func() bool {
		ok := o.Snapshot().OK
		return metric(t, n, inserted) > appliedAtRestore && ok > okDuringCut
	})
	close(stop)
	wg.Wait()

	if okDuringCut-okAtCut < 100 {
		t.Fatalf("only %d deductions while MySQL was away: selling stalled", okDuringCut-okAtCut)
	}
	for code := range o.Other {
		if code != 503 {
			t.Fatalf("unexpected answers: %v", o.Other)
		}
	}
	r := checkConserved(t, e, n, "db", o.Units)
	t.Logf("%d deductions (%d during the outage), other %v; verify %+v", o.OK, okDuringCut-okAtCut, o.Other, r)
}

// Sell out, release 100 reservations (half before their details reached
// MySQL, half after), and exactly 100 more units sell.
func TestReleaseThenSellAgain(t *testing.T) {
	e := newEnv(t, 2)
	n := startNode(t, e.config())
	const total = 300
	putSKU(t, n, "rel", total, 3, 20, 4)
	b := stocktest.NewBuyer(64)

	first := stocktest.Crowd(t, b, n.hot, "rel", 400, "a-", func(int) int64 { return 1 })
	if first.OK != total {
		t.Fatalf("first wave: %d ok, want %d (other %v)", first.OK, total, first.Other)
	}
	var res []string
	for r := range first.Reservations {
		res = append(res, r)
	}
	release := func(token string) {
		t.Helper()
		a, err := b.Post(n.hot, "/v1/release", fmt.Sprintf(`{"reservation":%q}`, token))
		if err != nil || a.Code != 200 || a.Status != "released" {
			t.Fatalf("release: %+v %v", a, err)
		}
	}
	// Before landing: the batch interval has not passed yet for most.
	for _, tok := range res[:50] {
		release(tok)
	}
	waitSynced(t, n, "rel", 10*time.Second)
	for _, tok := range res[50:100] {
		release(tok)
	}
	// Releasing again changes nothing; confirming a released one is refused.
	release(res[0])
	if a, _ := b.Post(n.hot, "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, res[1])); a.Code != 409 {
		t.Fatalf("confirm of a released reservation: %+v, want 409", a)
	}
	// Unknown or forged reservations are 404.
	forged := res[2][:strings.LastIndexByte(res[2], ':')] + ":AAAAAAAAAAAAAAAA"
	if a, _ := b.Post(n.hot, "/v1/release", fmt.Sprintf(`{"reservation":%q}`, forged)); a.Code != 404 {
		t.Fatalf("forged reservation: %+v, want 404", a)
	}

	second := stocktest.Crowd(t, b, n.hot, "rel", 400, "b-", func(int) int64 { return 1 })
	if second.OK != 100 {
		t.Fatalf("after releasing 100: %d more sold (other %v), want exactly 100", second.OK, second.Other)
	}
	r := waitSynced(t, n, "rel", 10*time.Second)
	if r.Released != 100 || r.Reserved != total || r.Pool != 0 {
		t.Fatalf("released %d, reserved %d, pool %d; want 100, %d, 0 (%+v)", r.Released, r.Reserved, r.Pool, total, r)
	}
}

// Unconfirmed reservations expire after the TTL and their units sell
// again, once; confirmed ones stay sold.
func TestExpiredReservationsSellAgain(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.Sync.ReservationTTL = 2 * time.Second
	cfg.Sync.ExpireEvery = 200 * time.Millisecond
	n := startNode(t, cfg)
	putSKU(t, n, "exp", 100, 2, 10, 2)
	b := stocktest.NewBuyer(32)

	first := stocktest.Crowd(t, b, n.hot, "exp", 150, "a-", func(int) int64 { return 1 })
	if first.OK != 100 {
		t.Fatalf("first wave: %d ok", first.OK)
	}
	confirmed := 0
	for tok := range first.Reservations {
		if confirmed == 30 {
			break
		}
		a, err := b.Post(n.hot, "/v1/confirm", fmt.Sprintf(`{"reservation":%q}`, tok))
		if err != nil || a.Status != "confirmed" {
			t.Fatalf("confirm: %+v %v", a, err)
		}
		confirmed++
	}
	// Wait for the TTL to pass and expiry to release the other 70.
	stocktest.Eventually(t, 15*time.Second, func() (bool, string) {
		r := verify(t, n, "exp")
		return r.Released == 70 && r.InFlightDetails == 0, fmt.Sprintf("expiry did not release 70 units: %+v", r)
	})
	second := stocktest.Crowd(t, b, n.hot, "exp", 150, "b-", func(int) int64 { return 1 })
	if second.OK != 70 {
		t.Fatalf("after expiry: %d sold, want exactly 70", second.OK)
	}
	r := waitSynced(t, n, "exp", 10*time.Second)
	if r.Confirmed != 30 || r.Released < 70 {
		t.Fatalf("confirmed %d, released %d: %+v", r.Confirmed, r.Released, r)
	}
}

// A batch delivered twice changes nothing the second time, and a
// malformed message goes to the dead-letter queue without stopping the
// applier.
func TestRedeliveryAndPoison(t *testing.T) {
	e := newEnv(t, 2)
	n := startNode(t, e.config())
	putSKU(t, n, "redo", 500, 2, 50, 10)
	b := stocktest.NewBuyer(32)
	o := stocktest.Crowd(t, b, n.hot, "redo", 200, "x-", func(i int) int64 { return int64(1 + i%2) })
	before := checkConserved(t, e, n, "redo", o.Units)

	// Rebuild a batch from the landed rows and publish it twice, with a
	// poison message between the copies.
	rows, err := e.db.Query(`SELECT detail_id, pid, request_id, qty FROM deductions WHERE sku = 'redo' LIMIT 100`)
	if err != nil {
		t.Fatal(err)
	}
	type det struct {
		D string `json:"d"`
		S string `json:"s"`
		P int    `json:"p"`
		R string `json:"r"`
		Q int64  `json:"q"`
		T int64  `json:"t"`
	}
	var dets []det
	for rows.Next() {
		var d det
		if err := rows.Scan(&d.D, &d.P, &d.R, &d.Q); err != nil {
			t.Fatal(err)
		}
		d.S, d.T = "redo", time.Now().UnixMilli()
		dets = append(dets, d)
	}
	rows.Close()
	body, _ := json.Marshal(map[string]any{"id": "replay", "node": "test", "details": dets})
	conn, err := amqp.Dial(stocktest.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, msg := range [][]byte{body, []byte(`{"id":"bad","details":[{"d":"nonsense"}]}`), []byte("not json"), body} {
		if err := ch.PublishWithContext(ctx, "", e.queue, false, false, amqp.Publishing{Body: msg, DeliveryMode: amqp.Persistent}); err != nil {
			t.Fatal(err)
		}
	}
	// The poison messages reach the dead-letter queue; the applier goes on.
	stocktest.Eventually(t, 10*time.Second, func() (bool, string) {
		q, err := ch.QueueDeclarePassive(e.queue+".dlq", true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		main, err := ch.QueueDeclarePassive(e.queue, true, false, false, false, map[string]any{
			"x-dead-letter-exchange": "", "x-dead-letter-routing-key": e.queue + ".dlq"})
		if err != nil {
			t.Fatal(err)
		}
		return q.Messages == 2 && main.Messages == 0,
			fmt.Sprintf("dead-letter queue holds %d messages, main queue %d; want 2 and 0", q.Messages, main.Messages)
	})
	// Selling and syncing still work, and the replays changed nothing.
	more := stocktest.Crowd(t, b, n.hot, "redo", 50, "y-", func(int) int64 { return 1 })
	after := checkConserved(t, e, n, "redo", o.Units+more.Units)
	if after.Reserved != before.Reserved+more.Units || after.Doubled != 0 {
		t.Fatalf("replayed batch changed counters: before %+v after %+v", before, after)
	}
}
