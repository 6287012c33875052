package sync

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/schema"
	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

func newDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := schema.Open(context.Background(), stocktest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// newShards starts a Redis of the test's own as shard s1.
func newShards(t *testing.T) *shard.Set {
	t.Helper()
	set, err := shard.Open(context.Background(), []shard.Config{{ID: "s1", Addr: stocktest.StartRedis(t).Addr}},
		shard.Options{Prefix: stocktest.Name("sync")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	return set
}

// seed creates a SKU whose total is all reserved by n real deductions of
// qty 1 on its partition 0 (epoch 7, shard s1), and returns their details
// as the batcher would publish them (an hour old).
func seed(t *testing.T, db *sql.DB, set *shard.Set, sku string, n int) []wireDetail {
	t.Helper()
	ctx := context.Background()
	if _, err := db.Exec(`INSERT INTO skus (sku, total, pool, chunk, threshold) VALUES (?, ?, 0, 10, 2)`, sku, n); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO partitions (sku, pid, shard, epoch) VALUES (?, 0, 's1', 7)`, sku); err != nil {
		t.Fatal(err)
	}
	p, err := set.Partition(sku, 0, 7, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Init(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Refill(ctx, 1, 'a', int64(n), int64(n)); n > 0 && (err != nil || r.Code != shard.RefillApplied) {
		t.Fatalf("refill: %+v %v", r, err)
	}
	out := make([]wireDetail, n)
	for i := range out {
		req := "req-" + string(rune('a'+i%26)) + "-" + time.Now().Format("150405.000000") + "-" + itoa(i)
		r, err := p.Take(ctx, req, 1, 1, true, "")
		if err != nil || r.Code != shard.Took {
			t.Fatalf("take: %+v %v", r, err)
		}
		out[i] = wireDetail{
			DetailID: p.DetailID(r.Seq), SKU: sku, PID: 0, RequestID: req,
			Qty: 1, TimeMs: time.Now().Add(-time.Hour).UnixMilli(),
		}
	}
	return out
}

func itoa(i int) string {
	const digits = "0123456789"
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{digits[i%10]}, b...)
	}
	return string(b)
}

type counters struct {
	pool, reserved, confirmed, released, doubled int64
}

func readCounters(t *testing.T, db *sql.DB, sku string) counters {
	t.Helper()
	var c counters
	if err := db.QueryRow(`SELECT pool, reserved, confirmed, released, doubled FROM skus WHERE sku = ?`, sku).
		Scan(&c.pool, &c.reserved, &c.confirmed, &c.released, &c.doubled); err != nil {
		t.Fatal(err)
	}
	return c
}

func newLedger(db *sql.DB, set *shard.Set, ttl time.Duration) *Ledger {
	return &Ledger{db: db, shards: set, ttl: ttl, every: time.Second, logger: slog.Default(), m: newMetrics(prometheus.NewRegistry())}
}

// Applying the same batch twice changes nothing the second time.
func TestApplyTwice(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	ds := seed(t, db, set, "twice", 50)
	r1, err := Apply(ctx, db, ds)
	if err != nil || r1.Inserted != 50 {
		t.Fatalf("first apply: %+v %v", r1, err)
	}
	c1 := readCounters(t, db, "twice")
	r2, err := Apply(ctx, db, ds)
	if err != nil || r2.Inserted != 0 || r2.Duplicates != 50 {
		t.Fatalf("second apply: %+v %v", r2, err)
	}
	if c2 := readCounters(t, db, "twice"); c2 != c1 || c1.reserved != 50 {
		t.Fatalf("counters %+v after the first apply, %+v after the second", c1, c2)
	}
}

// Release, expiry and write-back of the same reservations race; whichever
// lands first, every unit comes back exactly once.
func TestReleaseExpiryAndWriteBackRace(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	const n = 200
	set := newShards(t)
	ds := seed(t, db, set, "race", n)
	l := newLedger(db, set, time.Minute)
	var wg gosync.WaitGroup
	errs := make(chan error, 4*n)
	// Write-back in a few batches, twice.
	for rep := 0; rep < 2; rep++ {
		for i := 0; i < n; i += 50 {
			wg.Add(1)
			go func(batch []wireDetail) {
				defer wg.Done()
				if _, err := Apply(ctx, db, batch); err != nil {
					errs <- err
				}
			}(ds[i : i+50])
		}
	}
	// Every reservation released by the caller, some twice.
	for i, d := range ds {
		wg.Add(1)
		go func(d wireDetail, twice bool) {
			defer wg.Done()
			for k := 0; k < 1+boolInt(twice); k++ {
				if err := l.Release(ctx, d.DetailID, d.Qty); err != nil {
					errs <- err
				}
			}
		}(d, i%7 == 0)
	}
	// And expiry sweeping at the same time (the details are an hour old).
	for k := 0; k < 3; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := l.Expire(ctx, "race", time.Now()); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c := readCounters(t, db, "race")
	if c.released != n || c.pool != n || c.reserved != 0 {
		t.Fatalf("counters %+v; want released %d, pool %d, reserved 0", c, n, n)
	}
	var rows, released int64
	db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(state='released'),0) FROM deductions WHERE sku='race'`).Scan(&rows, &released)
	if rows != n || released != n {
		t.Fatalf("%d rows, %d released; want %d each", rows, released, n)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Two details of one request id (a double deduction that got past the
// partitions) are caught by the (sku, request_id) key: the second is
// recorded as doubled and its units go back to the pool; confirming it
// confirms the request's original deduction.
func TestDoubleDeductionUndone(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	ds := seed(t, db, set, "dbl", 2)
	ds[1].RequestID = ds[0].RequestID
	ds[1].Qty = 1
	r, err := Apply(ctx, db, ds)
	if err != nil || r.Inserted != 1 || r.Doubled != 1 {
		t.Fatalf("apply: %+v %v", r, err)
	}
	c := readCounters(t, db, "dbl")
	if c.reserved != 1 || c.doubled != 1 || c.pool != 1 {
		t.Fatalf("counters %+v; want reserved 1, doubled 1, pool 1", c)
	}
	l := newLedger(db, set, time.Minute)
	if err := l.Confirm(ctx, ds[1].DetailID, 1); err != nil {
		t.Fatal(err)
	}
	var state string
	db.QueryRow(`SELECT state FROM deductions WHERE detail_id = ?`, ds[0].DetailID).Scan(&state)
	if c := readCounters(t, db, "dbl"); state != "confirmed" || c.confirmed != 1 || c.reserved != 0 {
		t.Fatalf("after confirming the double: original is %s, counters %+v", state, c)
	}
}

// Request ids that differ only in case are different requests: both
// details land, nothing is doubled.
func TestCaseVariantRequestIDsApply(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	ds := seed(t, db, set, "cv", 3)
	ds[0].RequestID, ds[1].RequestID, ds[2].RequestID = "Order-N", "order-N", "ORDER-N"
	r, err := Apply(ctx, db, ds)
	if err != nil || r.Inserted != 3 || r.Doubled != 0 {
		t.Fatalf("apply: %+v %v; want 3 inserted, none doubled", r, err)
	}
	l := newLedger(db, set, time.Minute)
	if err := l.Confirm(ctx, ds[1].DetailID, 1); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"reserved", "confirmed", "reserved"} {
		var state, req string
		db.QueryRow(`SELECT state, request_id FROM deductions WHERE detail_id = ?`, ds[i].DetailID).Scan(&state, &req)
		if state != want || req != ds[i].RequestID {
			t.Errorf("%s: %s %q, want %s %q", ds[i].DetailID, state, req, want, ds[i].RequestID)
		}
	}
}

// A double undone before migration 14 whose request id matched its
// "original" only when case was folded: after the migration no deduction
// has its request id. Confirming it is refused as released (its units
// went back to the pool when it was undone), releasing it is a no-op,
// and neither touches another request's row or the counters.
func TestCaseVariantDoubleFromOldSchema(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	ds := seed(t, db, set, "old", 2)
	ds[0].RequestID = "Order-N"
	if _, err := Apply(ctx, db, ds[:1]); err != nil {
		t.Fatal(err)
	}
	// What the old applier wrote for order-N: undone as a double of
	// Order-N, its unit back in the pool.
	if _, err := db.Exec(`INSERT INTO doubled_deductions (detail_id, sku, pid, request_id, qty) VALUES (?, 'old', 0, 'order-N', 1)`, ds[1].DetailID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE skus SET pool = pool + 1, doubled = doubled + 1 WHERE sku = 'old'`); err != nil {
		t.Fatal(err)
	}
	before := readCounters(t, db, "old")
	l := newLedger(db, set, time.Minute)
	if err := l.Confirm(ctx, ds[1].DetailID, 1); !errors.Is(err, ErrReleased) {
		t.Errorf("confirm of the old case-variant double: %v, want ErrReleased", err)
	}
	if err := l.Release(ctx, ds[1].DetailID, 1); err != nil {
		t.Errorf("release of the old case-variant double: %v", err)
	}
	var state string
	db.QueryRow(`SELECT state FROM deductions WHERE detail_id = ?`, ds[0].DetailID).Scan(&state)
	if after := readCounters(t, db, "old"); after != before || state != "reserved" {
		t.Errorf("counters %+v -> %+v, Order-N's row %s; want unchanged, reserved", before, after, state)
	}
	var rows int
	db.QueryRow(`SELECT COUNT(*) FROM deductions WHERE detail_id = ?`, ds[1].DetailID).Scan(&rows)
	if rows != 0 {
		t.Errorf("the undone double got a row")
	}
}

// A release that reached MySQL before its detail gets the detail's request
// id when the detail lands, so the (sku, request_id) backstop covers it.
func TestEarlyReleaseGetsRequestID(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	ds := seed(t, db, set, "early", 3)
	l := newLedger(db, set, time.Minute)
	if err := l.Release(ctx, ds[0].DetailID, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ctx, db, ds); err != nil {
		t.Fatal(err)
	}
	var req sql.NullString
	var state string
	db.QueryRow(`SELECT request_id, state FROM deductions WHERE detail_id = ?`, ds[0].DetailID).Scan(&req, &state)
	if req.String != ds[0].RequestID || state != "released" {
		t.Fatalf("early row: request id %v, state %s; want %s, released", req, state, ds[0].RequestID)
	}
	if c := readCounters(t, db, "early"); c.reserved != 2 || c.released != 1 || c.pool != 1 {
		t.Fatalf("counters %+v", c)
	}
}

// The text wire format round-trips, JSON is still read, and anything
// else is poison.
// encodeWire writes w in the wire format, detail ids as given (the
// batcher's encode derives them from its partitions): the tests' way to
// build bodies of any content.
func encodeWire(w wireBatch) []byte {
	out := appendWireHead(make([]byte, 0, 64+len(w.Details)*96), w.ID, w.Node)
	for _, d := range w.Details {
		out = append(append(out, '\n'), d.DetailID...)
		out = appendWireRest(out, d.SKU, d.PID, d.RequestID, d.UserID, d.Qty, d.TimeMs)
	}
	return out
}

func TestWireFormat(t *testing.T) {
	w := wireBatch{ID: "b1", Node: "n1", Details: []wireDetail{
		{DetailID: "S1:0:7:1", SKU: "S1", PID: 0, RequestID: "r-1", Qty: 2, TimeMs: 1700000000000},
		{DetailID: "S1:0:7:2", SKU: "S1", PID: 0, RequestID: "r-2", UserID: "u9", Qty: 1, TimeMs: 1700000000001},
	}}
	got, err := decodeBatch(encodeWire(w))
	if err != nil || got.ID != "b1" || got.Node != "n1" || len(got.Details) != 2 || got.Details[1] != w.Details[1] || got.Details[0] != w.Details[0] {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	w.Details = append(w.Details, wireDetail{DetailID: "S2:3:1:9", SKU: "S2", PID: 3, RequestID: `a\b"c`, Qty: 7, TimeMs: 1})
	if got, err := decodeBatch(encodeWire(w)); err != nil || len(got.Details) != 3 || got.Details[2] != w.Details[2] || got.Details[1] != w.Details[1] {
		t.Fatalf("round trip of 3: %+v %v", got, err)
	}
	js := []byte(`{"id":"b2","node":"n","details":[{"d":"S1:0:7:3","s":"S1","p":0,"r":"r-3","q":1,"t":5}]}`)
	if got, err := decodeBatch(js); err != nil || got.Details[0].RequestID != "r-3" {
		t.Fatalf("json: %+v %v", got, err)
	}
	for _, bad := range []string{"", "not a batch", wireMagic + "\tb\tn\nS1:0:7:1\tS1\t0\tr\t\t1", wireMagic + "\tb\tn\nS1:0:7:1\tS2\t0\tr\t\t1\t5", `{"id":"x"}`,
		wireMagic + "\tb\tn", // no details
		wireMagic + "\tb\tn\nS1:0:7:1\tS1\t0\tr\t\t1\t5\t9",                 // 8 fields
		wireMagic + "\tb\tn\nS1:0:7:1\tS1\t0\tr\t\t1\t5\n",                  // an empty line after
		wireMagic + "\tb\tn\nS1:0:7:1\tS1\t0\tr\t\t-1\t5",                   // a sign
		wireMagic + "\tb\tn\nS1:0:7:1\tS1\t0\tr\t\t1\t99999999999999999999", // too long
	} {
		if _, err := decodeBatch([]byte(bad)); !errors.Is(err, errPoison) {
			t.Errorf("%q: %v, want poison", bad, err)
		}
	}
}

// Confirm and release act only on deductions that exist: in the stream
// (early), landed, or neither yet (published and trimmed: unverifiable,
// nothing changes until it lands). Tokens naming anything else change
// nothing.
func TestLedgerActsOnlyOnDeductionsThatExist(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	ds := seed(t, db, set, "exist", 6)
	l := newLedger(db, set, time.Minute)
	p, err := set.Partition("exist", 0, 7, "s1")
	if err != nil {
		t.Fatal(err)
	}
	unknown := []struct {
		name, id string
		qty      int64
	}{
		{"never deducted", stockd.DetailID("exist", 0, 7, 7), 1},
		{"far above", stockd.DetailID("exist", 0, 7, 1000), 50},
		{"sequence zero", stockd.DetailID("exist", 0, 7, 0), 1},
		{"larger qty, in stream", ds[0].DetailID, 5},
		{"wrong epoch", stockd.DetailID("exist", 0, 8, 1), 1},
		{"no such partition", stockd.DetailID("exist", 3, 7, 1), 1},
		{"unknown SKU", stockd.DetailID("nosuch", 0, 7, 1), 1},
		{"not a detail id", "exist:0:7", 1},
	}
	check := func(when string) {
		t.Helper()
		before := readCounters(t, db, "exist")
		for _, u := range unknown {
			for _, f := range []func(context.Context, string, int64) error{l.Release, l.Confirm} {
				if err := f(ctx, u.id, u.qty); !errors.Is(err, ErrUnknown) {
					t.Errorf("%s, %s: %v, want ErrUnknown", when, u.name, err)
				}
			}
		}
		if after := readCounters(t, db, "exist"); after != before {
			t.Errorf("%s: counters %+v -> %+v", when, before, after)
		}
	}
	check("details in the stream")

	// Early: verified in the stream.
	if err := l.Release(ctx, ds[0].DetailID, 1); err != nil {
		t.Fatal(err)
	}
	if err := l.Confirm(ctx, ds[1].DetailID, 1); err != nil {
		t.Fatal(err)
	}
	// Published and trimmed, not applied: cannot be verified now.
	if err := p.TrimBefore(ctx, 7); err != nil {
		t.Fatal(err)
	}
	before := readCounters(t, db, "exist")
	for _, f := range []func(context.Context, string, int64) error{l.Release, l.Confirm} {
		if err := f(ctx, ds[2].DetailID, 1); !errors.Is(err, ErrUnverified) {
			t.Errorf("trimmed, not landed: %v, want ErrUnverified", err)
		}
	}
	if after := readCounters(t, db, "exist"); after != before {
		t.Errorf("trimmed, not landed: counters %+v -> %+v", before, after)
	}
	// It lands; now it settles, and the landed larger-qty token is unknown.
	if _, err := Apply(ctx, db, ds); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, ds[2].DetailID, 1); err != nil {
		t.Fatal(err)
	}
	unknown[3].name = "larger qty, landed"
	check("details landed")
	c := readCounters(t, db, "exist")
	if c.released != 2 || c.confirmed != 1 || c.reserved != 3 || c.pool != 2 {
		t.Fatalf("counters %+v; want released 2, confirmed 1, reserved 3, pool 2", c)
	}
	var seen int64
	db.QueryRow(`SELECT seen_seq FROM partitions WHERE sku = 'exist'`).Scan(&seen)
	if seen != 6 {
		t.Errorf("seen_seq %d, want 6", seen)
	}
}

// On a fenced partition Redis lost the records: a token's signature is the
// only evidence left, so it may move only units still held in doubt, never
// more than the partition's remaining doubt_units. A release there leaves
// its units in doubt until the doubt resolves: the genuine details that the
// doubt covers may still land, and a forged release must not have put
// their units in the pool meanwhile.
func TestFencedSettleBoundedByDoubt(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	ds := seed(t, db, set, "fenced", 2) // 2 genuine details, not landed
	// The partition was fenced holding 5 units in doubt: the 2 details and
	// 3 units its lost state held.
	if _, err := db.Exec(`UPDATE skus SET total = 5, in_doubt = 5, reserved = 0 WHERE sku = 'fenced'`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE partitions SET state = 'fenced', fenced_at = NOW(6), doubt_units = 5 WHERE sku = 'fenced'`); err != nil {
		t.Fatal(err)
	}
	l := newLedger(db, set, time.Minute)
	id := func(seq int64) string { return stockd.DetailID("fenced", 0, 7, seq) }
	steps := []struct {
		seq, qty int64
		release  bool
		want     error
	}{
		{10, 6, true, ErrUnknown}, // more than the doubt
		{10, 5, true, nil},        // forged: a released row, no units move
		{10, 5, true, nil},        // again
		{11, 3, false, nil},       // forged confirm: 3 units out of doubt, never sold
		{12, 3, false, ErrUnknown},
		{12, 3, true, ErrUnknown},
		{1, 1, false, nil}, // genuine confirm before its detail lands
	}
	for _, s := range steps {
		f := l.Confirm
		if s.release {
			f = l.Release
		}
		if err := f(ctx, id(s.seq), s.qty); !errors.Is(err, s.want) && !(s.want == nil && err == nil) {
			t.Errorf("seq %d qty %d release %v: %v, want %v", s.seq, s.qty, s.release, err, s.want)
		}
	}
	// The genuine details land: the confirmed one is a repeat, the other
	// moves its unit out of doubt.
	if _, err := Apply(ctx, db, ds); err != nil {
		t.Fatal(err)
	}
	var inDoubt, doubt, pool, released, confirmed, reserved int64
	db.QueryRow(`SELECT s.in_doubt, p.doubt_units, s.pool, s.released, s.confirmed, s.reserved FROM skus s JOIN partitions p USING (sku) WHERE sku = 'fenced'`).
		Scan(&inDoubt, &doubt, &pool, &released, &confirmed, &reserved)
	if inDoubt != 0 || doubt != 0 || pool != 0 || released != 5 || confirmed != 4 || reserved != 1 {
		t.Fatalf("in_doubt %d, doubt_units %d, pool %d, released %d, confirmed %d, reserved %d; want 0, 0, 0, 5, 4, 1",
			inDoubt, doubt, pool, released, confirmed, reserved)
	}
	// No unit reached the pool: the total (5) is the genuine 2 plus the 3
	// the forged confirm keeps from sale; nothing can be sold twice.
	if pool+reserved+confirmed+inDoubt != 5 {
		t.Fatalf("books do not add up to the total 5")
	}
}

// Both forms of the detail insert (LOAD DATA LOCAL INFILE, and the INSERT
// a server that refuses local files gets) write the same rows byte for
// byte, also for ids that LOAD DATA's text format must escape, and count
// repeats and doubles the same way.
func TestInsertForms(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { loadRefused.Store(false) })
	for _, refused := range []bool{false, true} {
		name := "load"
		if refused {
			name = "insert"
		}
		t.Run(name, func(t *testing.T) {
			loadRefused.Store(refused)
			db := newDB(t)
			if _, err := db.Exec(`INSERT INTO skus (sku, total, pool, chunk, threshold) VALUES ('odd', 10, 5, 10, 2)`); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO partitions (sku, pid, shard, epoch) VALUES ('odd', 0, 's1', 3)`); err != nil {
				t.Fatal(err)
			}
			ms := time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC).UnixMilli()
			ds := []wireDetail{
				{DetailID: stockd.DetailID("odd", 0, 3, 1), SKU: "odd", RequestID: `a\b`, UserID: `\N`, Qty: 2, TimeMs: ms},
				{DetailID: stockd.DetailID("odd", 0, 3, 2), SKU: "odd", RequestID: `\N`, Qty: 1, TimeMs: ms},
				{DetailID: stockd.DetailID("odd", 0, 3, 3), SKU: "odd", RequestID: `NULL`, UserID: `u\\t"'`, Qty: 1, TimeMs: ms},
				{DetailID: stockd.DetailID("odd", 0, 3, 4), SKU: "odd", RequestID: `a\b`, Qty: 1, TimeMs: ms}, // a double of seq 1
			}
			r, err := Apply(ctx, db, append(ds, ds[1]))
			if err != nil {
				t.Fatal(err)
			}
			if r.Inserted != 3 || r.Doubled != 1 || r.Duplicates != 1 {
				t.Fatalf("result %+v; want 3 inserted, 1 doubled, 1 duplicate", r)
			}
			for _, d := range ds[:3] {
				var req string
				var user sql.NullString
				var qty int64
				var at time.Time
				var state string
				if err := db.QueryRow(`SELECT request_id, user_id, qty, deducted_at, state FROM deductions WHERE detail_id = ?`, d.DetailID).
					Scan(&req, &user, &qty, &at, &state); err != nil {
					t.Fatalf("%s: %v", d.DetailID, err)
				}
				if req != d.RequestID || user.String != d.UserID || user.Valid != (d.UserID != "") || qty != d.Qty ||
					at.UnixMilli() != d.TimeMs || state != "reserved" {
					t.Errorf("%s: row %q %v %d %s %s; want %q %q %d %s reserved", d.DetailID, req, user, qty, at, state,
						d.RequestID, d.UserID, d.Qty, time.UnixMilli(d.TimeMs).UTC())
				}
			}
			if c := readCounters(t, db, "odd"); c.reserved != 4 || c.doubled != 1 || c.pool != 6 {
				t.Errorf("counters %+v; want reserved 4, doubled 1, pool 6", c)
			}
			// Applied again: nothing moves.
			if r, err := Apply(ctx, db, ds); err != nil || r.Inserted != 0 || r.Doubled != 0 || r.Duplicates != 4 {
				t.Fatalf("again: %+v %v", r, err)
			}
			if c := readCounters(t, db, "odd"); c.reserved != 4 || c.doubled != 1 || c.pool != 6 {
				t.Errorf("again: counters %+v; want reserved 4, doubled 1, pool 6", c)
			}
		})
	}
}

// One batch over several SKUs and partitions (one fenced with its doubt
// open, one whose doubt was resolved, one of an older epoch than the
// partition's row) moves each SKU's and partition's counters by exactly
// its own details: the counters of a batch move in one statement per
// table, not one per SKU or partition.
func TestApplyManySKUs(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	for _, sku := range []string{"m-a", "m-b", "m-c"} {
		if _, err := db.Exec(`INSERT INTO skus (sku, total, pool, chunk, threshold) VALUES (?, 100, 50, 10, 2)`, sku); err != nil {
			t.Fatal(err)
		}
		for pid := 0; pid < 2; pid++ {
			if _, err := db.Exec(`INSERT INTO partitions (sku, pid, shard, epoch) VALUES (?, ?, 's1', 5)`, sku, pid); err != nil {
				t.Fatal(err)
			}
		}
	}
	// m-b/1 fenced, doubt open (4 units); m-c/0 fenced, doubt resolved.
	mustExec := func(q string, args ...any) {
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(`UPDATE partitions SET state = 'fenced', fenced_at = NOW(6), doubt_units = 4 WHERE sku = 'm-b' AND pid = 1`)
	mustExec(`UPDATE skus SET in_doubt = 4 WHERE sku = 'm-b'`)
	mustExec(`UPDATE partitions SET state = 'fenced', fenced_at = NOW(6), doubt_resolved_at = NOW(6) WHERE sku = 'm-c' AND pid = 0`)
	ms := time.Now().UnixMilli()
	var ds []wireDetail
	add := func(sku string, pid int, epoch, seq, qty int64) {
		ds = append(ds, wireDetail{DetailID: stockd.DetailID(sku, pid, epoch, seq), SKU: sku, PID: pid,
			RequestID: sku + "-" + itoa(pid) + "-" + itoa(int(epoch)) + "-" + itoa(int(seq)), Qty: qty, TimeMs: ms})
	}
	add("m-a", 0, 5, 1, 1)
	add("m-a", 0, 5, 2, 2)
	add("m-a", 1, 5, 7, 3)
	add("m-a", 1, 4, 9, 5) // an older epoch of m-a/1: lands, moves no partition row
	add("m-b", 0, 5, 3, 1)
	add("m-b", 1, 5, 2, 3) // fenced, doubt open
	add("m-c", 0, 5, 6, 2) // doubt resolved: lands released
	add("m-c", 1, 5, 1, 1)
	r, err := Apply(ctx, db, ds)
	if err != nil || r.Inserted != len(ds) {
		t.Fatalf("apply: %+v %v", r, err)
	}
	type pc struct{ reserved, released, inDoubt, pool int64 }
	for sku, want := range map[string]pc{
		"m-a": {11, 0, 0, 50},
		"m-b": {4, 0, 1, 50},
		"m-c": {1, 2, 0, 50},
	} {
		var got pc
		db.QueryRow(`SELECT reserved, released, in_doubt, pool FROM skus WHERE sku = ?`, sku).Scan(&got.reserved, &got.released, &got.inDoubt, &got.pool)
		if got != want {
			t.Errorf("%s: counters %+v, want %+v", sku, got, want)
		}
	}
	type ps struct {
		sku      string
		pid      int
		seen     int64
		doubtNow int64
	}
	for _, want := range []ps{{"m-a", 0, 2, 0}, {"m-a", 1, 7, 0}, {"m-b", 0, 3, 0}, {"m-b", 1, 2, 1}, {"m-c", 0, 6, 0}, {"m-c", 1, 1, 0}} {
		got := ps{sku: want.sku, pid: want.pid}
		db.QueryRow(`SELECT seen_seq, doubt_units FROM partitions WHERE sku = ? AND pid = ?`, want.sku, want.pid).Scan(&got.seen, &got.doubtNow)
		if got != want {
			t.Errorf("partition %s/%d: seen_seq %d, doubt_units %d; want %d, %d", want.sku, want.pid, got.seen, got.doubtNow, want.seen, want.doubtNow)
		}
	}
	var state string
	db.QueryRow(`SELECT state FROM deductions WHERE detail_id = ?`, stockd.DetailID("m-c", 0, 5, 6)).Scan(&state)
	if state != "released" {
		t.Errorf("detail of the resolved partition is %s, want released", state)
	}
}

// The expiry sweep reads the reservations that are due, not the SKU's
// others: on a sale with many open reservations it runs every few seconds,
// and a sweep that walks them all costs MariaDB more than the write-back
// (issue 13: a time argument with nanoseconds was not an index bound, and
// each sweep read 3 million index entries). 20,000 fresh reservations,
// 5 due: the sweep releases the 5 and reads a few dozen index entries.
func TestExpirySweepReadsOnlyDueReservations(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	// One connection: the session counters read below are the sweep's.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	const fresh, due = 20000, 5
	if _, err := db.Exec(`INSERT INTO skus (sku, total, pool, reserved, chunk, threshold) VALUES ('sweep', ?, 0, ?, 10, 2)`, fresh+due, fresh+due); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO partitions (sku, pid, shard, epoch) VALUES ('sweep', 0, 's1', 7)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	  SELECT CONCAT('sweep:0:7:', seq), 'sweep', 0, CONCAT('fresh-', seq), 1, 'reserved', NOW(6) - INTERVAL seq MICROSECOND
	    FROM seq_1_to_20000`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	  SELECT CONCAT('sweep:0:7:', 100000 + seq), 'sweep', 0, CONCAT('due-', seq), 1, 'reserved', NOW(6) - INTERVAL 2 HOUR
	    FROM seq_1_to_5`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`ANALYZE TABLE deductions`); err != nil {
		t.Fatal(err)
	}
	l := newLedger(db, newShards(t), time.Hour)
	before := sessionStatus(t, db, "Handler_icp_attempts", "Handler_read_next", "Handler_read_rnd_next")
	// A cutoff with nanoseconds, as time.Now gives it.
	released, err := l.Expire(ctx, "sweep", time.Now().Add(-time.Hour).Add(123*time.Nanosecond))
	if err != nil {
		t.Fatal(err)
	}
	read := sessionStatus(t, db, "Handler_icp_attempts", "Handler_read_next", "Handler_read_rnd_next") - before
	if released != due {
		t.Fatalf("released %d, want the %d due", released, due)
	}
	if read > 1000 {
		t.Fatalf("the sweep read %d index entries for %d due reservations among %d; want it to read the due ones only", read, due, fresh+due)
	}
	var left int
	if err := db.QueryRow(`SELECT COUNT(*) FROM deductions WHERE sku = 'sweep' AND state = 'reserved'`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != fresh {
		t.Fatalf("%d reservations still reserved, want the %d fresh ones", left, fresh)
	}
	t.Logf("released %d of %d reservations, reading %d index entries", released, fresh+due, read)
}

// A node sweeps all the SKUs it owns with a few queries, not two per SKU
// every ExpireEvery: 1,200 SKUs with nothing due cost the sweep at most
// two SELECTs per 500 of them; and what is due, in any of them, is
// released once, and counted for its own SKU.
func TestExpirySweepOfManySKUs(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	db.SetMaxOpenConns(1) // the session counters read below are the sweep's
	db.SetMaxIdleConns(1)
	const n = 1200
	for _, q := range []string{
		`INSERT INTO skus (sku, total, pool, reserved, chunk, threshold) SELECT CONCAT('many-', seq), 2, 0, 2, 10, 2 FROM seq_1_to_1200`,
		`INSERT INTO partitions (sku, pid, shard, epoch) SELECT CONCAT('many-', seq), 0, 's1', 7 FROM seq_1_to_1200`,
		`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
		   SELECT CONCAT('many-', seq, ':0:7:1'), CONCAT('many-', seq), 0, 'fresh', 1, 'reserved', NOW(6) FROM seq_1_to_1200`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	skus := make([]string, n)
	for i := range skus {
		skus[i] = "many-" + itoa(i+1)
	}
	l := newLedger(db, newShards(t), time.Hour)
	before := sessionStatus(t, db, "Com_select")
	released, failed, err := l.expire(ctx, skus, time.Now().Add(-time.Hour))
	if err != nil || len(failed) != 0 {
		t.Fatal(err, failed)
	}
	// The counter read itself is a SELECT too.
	if got, limit := sessionStatus(t, db, "Com_select")-before-1, int64(2*((n+499)/500)); got > limit || len(released) != 0 {
		t.Fatalf("a sweep of %d SKUs with nothing due ran %d SELECTs and released %v; want at most %d and none", n, got, released, limit)
	}

	// One due reservation in every third SKU.
	if _, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	    SELECT CONCAT('many-', seq, ':0:7:2'), CONCAT('many-', seq), 0, 'due', 1, 'reserved', NOW(6) - INTERVAL 2 HOUR
	      FROM seq_1_to_1200 WHERE seq % 3 = 0`); err != nil {
		t.Fatal(err)
	}
	released, failed, err = l.expire(ctx, skus, time.Now().Add(-time.Hour))
	if err != nil || len(failed) != 0 {
		t.Fatal(err, failed)
	}
	if len(released) != n/3 {
		t.Fatalf("released in %d SKUs, want %d", len(released), n/3)
	}
	for sku, k := range released {
		if k != 1 {
			t.Fatalf("%s: %d released, want 1", sku, k)
		}
	}
	var left, freed int
	if err := db.QueryRow(`SELECT SUM(state = 'reserved'), SUM(state = 'released') FROM deductions WHERE sku LIKE 'many-%'`).Scan(&left, &freed); err != nil {
		t.Fatal(err)
	}
	if left != n || freed != n/3 {
		t.Fatalf("%d reserved and %d released after the sweep; want the %d fresh ones reserved and the %d due released", left, freed, n, n/3)
	}

	// A sale's unpaid reservations fall due together: 1,100 in one SKU,
	// released over several rounds of the same sweep.
	if _, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	    SELECT CONCAT('many-1:0:7:', 100 + seq), 'many-1', 0, CONCAT('unpaid-', seq), 1, 'reserved', NOW(6) - INTERVAL 2 HOUR + INTERVAL seq MICROSECOND
	      FROM seq_1_to_1100`); err != nil {
		t.Fatal(err)
	}
	released, failed, err = l.expire(ctx, skus, time.Now().Add(-time.Hour))
	if err != nil || len(failed) != 0 {
		t.Fatal(err, failed)
	}
	if len(released) != 1 || released["many-1"] != 1100 {
		t.Fatalf("released %v, want 1100 in many-1", released)
	}

	// A reservation that cannot be released (its id does not parse)
	// leaves its SKU for the next sweep; the other SKUs, in its chunk and
	// in the next, are swept as before.
	if _, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at) VALUES
	    ('many-2:zero:7:9', 'many-2', 0, 'broken', 1, 'reserved', NOW(6) - INTERVAL 2 HOUR),
	    ('many-5:0:7:9', 'many-5', 0, 'due-5', 1, 'reserved', NOW(6) - INTERVAL 2 HOUR),
	    ('many-1000:0:7:9', 'many-1000', 0, 'due-1000', 1, 'reserved', NOW(6) - INTERVAL 2 HOUR)`); err != nil {
		t.Fatal(err)
	}
	released, failed, err = l.expire(ctx, skus, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || failed["many-2"] == nil {
		t.Fatalf("failed %v, want many-2 alone", failed)
	}
	if len(released) != 2 || released["many-5"] != 1 || released["many-1000"] != 1 {
		t.Fatalf("released %v, want many-5 and many-1000", released)
	}
}

// sessionStatus is the sum of the named counters of db's session (SHOW
// SESSION STATUS): db must have one connection, so that the session is
// the one the code under test used.
func sessionStatus(t *testing.T, db *sql.DB, names ...string) int64 {
	t.Helper()
	q := `SHOW SESSION STATUS WHERE Variable_name IN (?` + strings.Repeat(",?", len(names)-1) + `)`
	args := make([]any, len(names))
	for i, n := range names {
		args[i] = n
	}
	rows, err := db.Query(q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var sum int64
	for rows.Next() {
		var name string
		var v int64
		if err := rows.Scan(&name, &v); err != nil {
			t.Fatal(err)
		}
		sum += v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// A batch of many SKUs moves each SKU's and each partition's counters by
// its own details only, however the names differ (case, length: ids are
// case-sensitive), and touches no row outside the batch: with another
// transaction holding an unrelated SKU's and partition's rows, the batch
// still lands (a plan that scanned the tables instead of looking each key
// up would wait on those locks, and on a live sale would stall every
// refill and fence of the other SKUs behind each batch).
func TestApplyManySKUsTouchesOnlyTheirRows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := newDB(t)
	var skus []string
	for i := 0; i < 150; i++ {
		base := "k" + itoa(i)
		skus = append(skus, base, strings.ToUpper(base), base+"-"+strings.Repeat("x", i%40)+".Long_Name")
	}
	skus = append(skus, "held")
	for _, sku := range skus {
		if _, err := db.Exec(`INSERT INTO skus (sku, total, pool, chunk, threshold) VALUES (?, 1000, 0, 10, 2)`, sku); err != nil {
			t.Fatal(err)
		}
		for pid := 0; pid < 2; pid++ {
			if _, err := db.Exec(`INSERT INTO partitions (sku, pid, shard, epoch) VALUES (?, ?, 's1', 3)`, sku, pid); err != nil {
				t.Fatal(err)
			}
		}
	}
	hold, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback()
	if _, err := hold.ExecContext(ctx, `UPDATE skus SET version = version + 1 WHERE sku = 'held'`); err != nil {
		t.Fatal(err)
	}
	if _, err := hold.ExecContext(ctx, `UPDATE partitions SET gen = gen + 1 WHERE sku = 'held'`); err != nil {
		t.Fatal(err)
	}

	// SKU i gets i%5+1 details of qty 1..; partition 1 of every third SKU
	// also gets a detail of an older epoch (lands, moves no partition row).
	ms := time.Now().UnixMilli()
	var ds []wireDetail
	want := map[string]int64{}
	seen := map[[2]string]int64{}
	for i, sku := range skus[:len(skus)-1] {
		for j := 0; j <= i%5; j++ {
			pid := j % 2
			seq := int64(10 + j)
			ds = append(ds, wireDetail{DetailID: stockd.DetailID(sku, pid, 3, seq), SKU: sku, PID: pid,
				RequestID: sku + "/" + itoa(j), Qty: int64(j + 1), TimeMs: ms})
			want[sku] += int64(j + 1)
			seen[[2]string{sku, itoa(pid)}] = seq
		}
		if i%3 == 0 {
			ds = append(ds, wireDetail{DetailID: stockd.DetailID(sku, 1, 2, 99), SKU: sku, PID: 1,
				RequestID: sku + "/old", Qty: 7, TimeMs: ms})
			want[sku] += 7
		}
	}
	r, err := Apply(ctx, db, ds)
	if err != nil || r.Inserted != len(ds) {
		t.Fatalf("apply with an unrelated SKU's rows locked: %+v %v", r, err)
	}
	hold.Rollback()
	for _, sku := range skus {
		if got := readCounters(t, db, sku).reserved; got != want[sku] {
			t.Errorf("%s: reserved %d, want %d", sku, got, want[sku])
		}
		for pid := 0; pid < 2; pid++ {
			var s int64
			if err := db.QueryRow(`SELECT seen_seq FROM partitions WHERE sku = ? AND pid = ?`, sku, pid).Scan(&s); err != nil {
				t.Fatal(err)
			}
			if w := seen[[2]string{sku, itoa(pid)}]; s != w {
				t.Errorf("partition %s/%d: seen_seq %d, want %d", sku, pid, s, w)
			}
		}
	}
}

// The batcher writes its batches from the stream entries straight into
// the wire format; the applier must read back exactly the details the
// entries hold, each under its partition's detail id.
func TestBatcherEncodesWhatTheEntriesHold(t *testing.T) {
	set := newShards(t)
	p1, err := set.Partition("enc-A", 0, 7, "s1")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := set.Partition("enc.b_2", 3, 12, "s1")
	if err != nil {
		t.Fatal(err)
	}
	batch := []item{
		{p: p1, e: shard.Entry{ID: "1-0", First: 1, Details: []shard.Detail{
			{Seq: 1, RequestID: "r-1", Qty: 2, TimeMs: 1700000000000},
			{Seq: 2, RequestID: "r-2", UserID: "u-9", Qty: 1, TimeMs: 1700000000000},
		}}},
		{p: p2, e: shard.Entry{ID: "40-0", First: 40, Details: []shard.Detail{
			{Seq: 40, RequestID: `x\y"z`, Qty: 7, TimeMs: 1},
		}}},
		{p: p1, e: shard.Entry{ID: "3-0", First: 3, Details: []shard.Detail{
			{Seq: 3, RequestID: "r-3", Qty: 1000000, TimeMs: 1700000000005},
		}}},
	}
	b := &Batcher{consumer: "node-1"}
	body, id := b.encode(batch)
	got, err := decodeBatch(body)
	if err != nil {
		t.Fatal(err)
	}
	var want []wireDetail
	for _, it := range batch {
		for _, d := range it.e.Details {
			want = append(want, wireDetail{DetailID: stockd.DetailID(it.p.SKU, it.p.ID, it.p.Epoch, d.Seq), SKU: it.p.SKU, PID: it.p.ID,
				RequestID: d.RequestID, UserID: d.UserID, Qty: d.Qty, TimeMs: d.TimeMs})
		}
	}
	if got.ID != id || got.Node != "node-1" || len(got.Details) != len(want) {
		t.Fatalf("batch %q from %q with %d details, want %q from node-1 with %d", got.ID, got.Node, len(got.Details), id, len(want))
	}
	for i := range want {
		if got.Details[i] != want[i] {
			t.Errorf("detail %d: %+v, want %+v", i, got.Details[i], want[i])
		}
	}
}

// The allowance sweep reads a limited SKU's hash a bounded step at a time
// and goes on where it stopped, so a round's cost does not grow with the
// sale; every entry is still visited. 1,500 held entries whose rows are
// released (their give-backs were lost) and 1,500 more still reserved:
// rounds of a budget of 600 fields each give back exactly the released
// ones, over several rounds, none of which reads more than its budget and
// one step.
func TestAllowanceSweepIsBoundedAndComplete(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	a, err := set.Allowance("lim", "s1")
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	ms := time.Now().UnixMilli()
	var rows strings.Builder
	var args []any
	for i := 0; i < n; i++ {
		req, user, detail := "q"+itoa(i), "u"+itoa(i%100), stockd.DetailID("lim", 0, 7, int64(i+1))
		if code, _, err := a.Take(ctx, req, user, 1, 1000); err != nil || code != shard.AllowTaken {
			t.Fatalf("take %d: %v %v", i, code, err)
		}
		if err := a.Settle(ctx, req, user, 1, detail); err != nil {
			t.Fatal(err)
		}
		state := "reserved"
		if i%2 == 0 {
			state = "released" // its give-back was lost
		}
		if rows.Len() > 0 {
			rows.WriteString(",")
		}
		rows.WriteString("(?, 'lim', 0, ?, ?, 1, ?, ?)")
		args = append(args, detail, req, user, state, time.UnixMilli(ms).UTC())
	}
	if _, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, user_id, qty, state, deducted_at) VALUES `+rows.String(), args...); err != nil {
		t.Fatal(err)
	}
	l := newLedger(db, set, time.Hour)
	l.allowance = func(string) *shard.Allowance { return a }
	l.allowBudget = 600
	s1, err := set.Get("s1")
	if err != nil {
		t.Fatal(err)
	}
	c := s1.Client()
	hscans := func() int64 {
		t.Helper()
		info, err := c.Do(ctx, c.B().Info().Section("commandstats").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok := strings.Cut(info, "cmdstat_hscan:calls=")
		if !ok {
			return 0
		}
		v, _, _ := strings.Cut(rest, ",")
		x, _ := strconv.ParseInt(v, 10, 64)
		return x
	}
	users := func() int64 {
		var sum int64
		for u := 0; u < 100; u++ {
			v, err := c.Do(ctx, c.B().Hget().Key(a.Key()).Field("u:u"+itoa(u)).Build()).AsInt64()
			if err == nil {
				sum += v
			}
		}
		return sum
	}
	rounds := 0
	for ; users() > n/2 && rounds < 50; rounds++ {
		before := hscans()
		if err := l.SweepAllowance(ctx, "lim", a, time.Now(), time.Hour); err != nil {
			t.Fatal(err)
		}
		// 600 fields in steps of about 500: at most two steps, and the
		// step that ends a pass.
		if steps := hscans() - before; steps > 3 {
			t.Fatalf("round %d read the hash in %d steps, more than its budget allows", rounds, steps)
		}
	}
	if got := users(); got != n/2 || rounds < 3 {
		t.Fatalf("after %d rounds the users hold %d units, want %d (the reserved ones), over several rounds", rounds, got, n/2)
	}
	// A pass more changes nothing: the reserved entries stay held.
	for i := 0; i < 12; i++ {
		if err := l.SweepAllowance(ctx, "lim", a, time.Now(), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if got := users(); got != n/2 {
		t.Fatalf("more rounds changed the users' units to %d, want %d", got, n/2)
	}
}
