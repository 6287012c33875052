package daemon

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/schema"
	"github.com/stockd/stockd/internal/stocktest"
)

// A node frozen (SIGSTOP) in the middle of a refill keeps its MySQL
// transaction open: it read the SKU row FOR UPDATE, took units from the
// pool and wrote a pending fill, and then says nothing more. Every other
// refill and write-back of the SKU needs that row. The server aborts the
// idle transaction (mysql_idle_tx_timeout), the other nodes' waiting
// statements run again, and the sale sells every unit; the frozen
// transaction, rolled back whole, leaves nothing behind, so verify passes.
func TestFrozenTransactionDoesNotStallSale(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 2)
	nodes := startCluster(t, e, 2)
	const total = 600
	putSKU(t, nodes[0], "frz", total, 4, 20, 5) // Redis holds at most 160
	waitKnown(t, nodes, "frz")

	// The frozen node's connection, opened as stockd opens its own.
	cfg := e.config()
	fdb, sess, err := schema.OpenSession(ctx, e.dsn, "", schema.Session{
		IdleTxTimeout: cfg.MySQLIdleTxTimeout, LockWaitTimeout: cfg.MySQLLockWaitTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fdb.Close() })
	if !sess.IdleTxTimeout {
		t.Fatalf("server %s: no idle_transaction_timeout; this test needs MariaDB", sess.Server)
	}
	tx, err := fdb.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	var pool, epoch int64
	if err := tx.QueryRow(`SELECT pool FROM skus WHERE sku = 'frz' FOR UPDATE`).Scan(&pool); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(`SELECT epoch FROM partitions WHERE sku = 'frz' AND pid = 0`).Scan(&epoch); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`UPDATE skus SET pool = pool - 7 WHERE sku = 'frz'`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO allocations (sku, pid, epoch, kind, sub, qty) VALUES ('frz', 0, ?, 'fill', 'a', 7)`, epoch); err != nil {
		t.Fatal(err)
	}
	frozeAt := time.Now()

	// Buyers like a gateway until every unit is sold; the freeze lasts
	// the whole sale.
	stop := make(chan struct{})
	o, wg := gatewaySale(t, stocktest.NewBuyer(32), hots(nodes), "frz", "f-", 16, stop)
	deadline := time.Now().Add(90 * time.Second)
	soldOutEarly := 0 // sold_out answers seen while units were left (50 ms grain)
	for {
		c := o.Snapshot()
		sold, errs, soldOut := c.Units, c.Errs, c.SoldOut
		if sold >= total || errs > 0 || time.Now().After(deadline) {
			break
		}
		soldOutEarly = soldOut
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("sold %d of %d in %s after the freeze began (pool %d then); sold_out answers %d (%d while units were left), other %v",
		o.Units, total, time.Since(frozeAt).Round(time.Millisecond), pool, o.SoldOut, soldOutEarly, o.Other)
	if len(o.Errs) > 0 {
		t.Fatalf("errors: %v", firstErr(o.Errs))
	}
	if o.Units != total {
		t.Fatalf("sold %d of %d while a transaction held the SKU row", o.Units, total)
	}

	// The frozen node thaws: its transaction is gone, nothing of it landed.
	if err := tx.Commit(); err == nil {
		t.Fatal("the frozen transaction committed after the server should have aborted it")
	}
	r := waitSynced(t, nodes[1], "frz", 20*time.Second)
	if r.Reserved != total || r.Pool != 0 || r.PendingFills != 0 {
		t.Fatalf("verify: %+v", r)
	}
}
