package sync

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	gosync "sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stockd/stockd/internal/schema"
	"github.com/stockd/stockd/internal/testenv"
	"github.com/stockd/stockd/shard"
)

func newDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := schema.Open(context.Background(), testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// seed creates a SKU whose total is all reserved by n details of qty 1
// (as if they had been deducted), and returns the details.
func seed(t *testing.T, db *sql.DB, sku string, n int) []wireDetail {
	t.Helper()
	if _, err := db.Exec(`INSERT INTO skus (sku, total, pool, chunk, threshold) VALUES (?, ?, 0, 10, 2)`, sku, n); err != nil {
		t.Fatal(err)
	}
	out := make([]wireDetail, n)
	for i := range out {
		out[i] = wireDetail{
			DetailID: shard.DetailID(sku, 0, 7, int64(i+1)), SKU: sku, PID: 0,
			RequestID: "req-" + string(rune('a'+i%26)) + "-" + time.Now().Format("150405.000000") + "-" + itoa(i),
			Qty:       1, TimeMs: time.Now().Add(-time.Hour).UnixMilli(),
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

func newLedger(db *sql.DB, ttl time.Duration) *Ledger {
	return &Ledger{db: db, ttl: ttl, every: time.Second, logger: slog.Default(), m: newMetrics(prometheus.NewRegistry())}
}

// Applying the same batch twice changes nothing the second time.
func TestApplyTwice(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	ds := seed(t, db, "twice", 50)
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
	ds := seed(t, db, "race", n)
	l := newLedger(db, time.Minute)
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
	ds := seed(t, db, "dbl", 2)
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
	l := newLedger(db, time.Minute)
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
	ds := seed(t, db, "cv", 3)
	ds[0].RequestID, ds[1].RequestID, ds[2].RequestID = "Order-N", "order-N", "ORDER-N"
	r, err := Apply(ctx, db, ds)
	if err != nil || r.Inserted != 3 || r.Doubled != 0 {
		t.Fatalf("apply: %+v %v; want 3 inserted, none doubled", r, err)
	}
	l := newLedger(db, time.Minute)
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
	ds := seed(t, db, "old", 2)
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
	l := newLedger(db, time.Minute)
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
	ds := seed(t, db, "early", 3)
	l := newLedger(db, time.Minute)
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
func TestWireFormat(t *testing.T) {
	w := wireBatch{ID: "b1", Node: "n1", Details: []wireDetail{
		{DetailID: "S1:0:7:1", SKU: "S1", PID: 0, RequestID: "r-1", Qty: 2, TimeMs: 1700000000000},
		{DetailID: "S1:0:7:2", SKU: "S1", PID: 0, RequestID: "r-2", UserID: "u9", Qty: 1, TimeMs: 1700000000001},
	}}
	got, err := decodeBatch(encodeWire(w))
	if err != nil || got.ID != "b1" || got.Node != "n1" || len(got.Details) != 2 || got.Details[1] != w.Details[1] || got.Details[0] != w.Details[0] {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	js := []byte(`{"id":"b2","node":"n","details":[{"d":"S1:0:7:3","s":"S1","p":0,"r":"r-3","q":1,"t":5}]}`)
	if got, err := decodeBatch(js); err != nil || got.Details[0].RequestID != "r-3" {
		t.Fatalf("json: %+v %v", got, err)
	}
	for _, bad := range []string{"", "not a batch", wireMagic + "\tb\tn\nS1:0:7:1\tS1\t0\tr\t\t1", wireMagic + "\tb\tn\nS1:0:7:1\tS2\t0\tr\t\t1\t5", `{"id":"x"}`} {
		if _, err := decodeBatch([]byte(bad)); !errors.Is(err, errPoison) {
			t.Errorf("%q: %v, want poison", bad, err)
		}
	}
}
