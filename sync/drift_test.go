package sync

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

// rowUnits sums the units of sku's detail rows in state.
func rowUnits(t *testing.T, db *sql.DB, sku, state string) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(`SELECT COALESCE(SUM(qty), 0) FROM deductions WHERE sku = ? AND state = ?`, sku, state).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A batch can carry one detail twice: a batcher whose reader of a
// partition stopped and started again (ownership left the node and came
// back while a node joined) reads the stream from its start again, and
// the entries the old reader handed over are still in the unpublished
// batch. Batches also overlap (two owners for a moment) and are applied
// by appliers on several nodes at once. Whatever the overlap, reserved
// must equal the units of the rows.
func TestApplyRepeatedDetailsCountedOnce(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	const n = 300
	ds := seed(t, db, set, "drift", n)

	// Batches as readers restarted mid-batch would build them: a run of
	// entries, then the stream again from an earlier point.
	var batches [][]wireDetail
	for start := 0; start < n; start += 50 {
		end := min(start+50, n)
		b := append([]wireDetail{}, ds[start:end]...)
		b = append(b, ds[start:start+10]...) // re-read from the start
		batches = append(batches, b)
	}
	// And overlapping ones from a second owner, applied concurrently.
	for start := 25; start < n; start += 50 {
		end := min(start+50, n)
		b := append([]wireDetail{}, ds[start:end]...)
		b = append(b, ds[start:end]...)
		batches = append(batches, b)
	}
	var wg gosync.WaitGroup
	errs := make(chan error, 4*len(batches))
	for rep := 0; rep < 4; rep++ {
		for _, b := range batches {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := Apply(ctx, db, b); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	c := readCounters(t, db, "drift")
	rows := rowUnits(t, db, "drift", "reserved")
	if c.reserved != rows || rows != n {
		t.Fatalf("counter reserved %d, detail rows hold %d; %d deductions", c.reserved, rows, n)
	}
}

// One batch carrying every detail twice, applied once.
func TestApplyBatchWithEveryDetailTwice(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	const n = 40
	ds := seed(t, db, set, "twin", n)
	b := append(append([]wireDetail{}, ds...), ds...)
	r, err := Apply(ctx, db, b)
	if err != nil {
		t.Fatal(err)
	}
	c := readCounters(t, db, "twin")
	rows := rowUnits(t, db, "twin", "reserved")
	if c.reserved != rows || rows != n || r.Inserted != n || r.Duplicates != n {
		t.Fatalf("counter reserved %d, rows hold %d of %d deductions; result %+v", c.reserved, rows, n, r)
	}
}

// The whole path of TestClusterNodeJoinsMidSale's drift, on one node: the
// partition leaves the node's ownership and comes back (a node joining,
// suspected, confirmed) while the batcher holds an unpublished batch; the
// new reader reads the stream from its start into the same batch. Every
// published batch is then applied, and reserved must equal the rows; the
// batcher keeps re-read entries out of the batch that holds them.
func TestBatcherReaderRestartThenApply(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	const n = 120
	ds := seed(t, db, set, "flap", n)
	p, err := set.Partition("flap", 0, 7, "s1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Queue = stocktest.Queue(t)
	cfg.BatchSize = 10000
	cfg.BatchInterval = 2500 * time.Millisecond // outlives two reconciles
	var calls atomic.Int32
	s := New(cfg, Deps{
		DB: db, AMQPURL: stocktest.AMQPURL(), Node: "n1", Shards: set,
		Registerer: prometheus.NewRegistry(), Logger: slog.Default(),
		// Owned, then not (a join moved it), then owned again.
		Partitions: func() []*shard.Partition {
			if calls.Add(1) == 2 {
				return nil
			}
			return []*shard.Partition{p}
		},
	})
	bctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Batcher.Run(bctx)
	}()
	// Wait until the stream is trimmed: every detail is published.
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		es, err := p.ReadEntries(ctx, "", 1)
		return err == nil && len(es) == 0, fmt.Sprintf("stream not published within 30s (%v)", err)
	})
	stop()
	<-done

	conn, err := amqp.Dial(stocktest.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	published, repeats := 0, 0
	for {
		m, ok, err := ch.Get(cfg.Queue, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		b, err := decodeBatch(m.Body)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, d := range b.Details {
			if seen[d.DetailID] {
				repeats++
			}
			seen[d.DetailID] = true
		}
		published += len(b.Details)
		if _, err := Apply(ctx, db, b.Details); err != nil {
			t.Fatal(err)
		}
	}
	c := readCounters(t, db, "flap")
	rows := rowUnits(t, db, "flap", "reserved")
	t.Logf("%d details published for %d deductions, %d repeated inside a batch; reserved %d, rows %d", published, len(ds), repeats, c.reserved, rows)
	if c.reserved != rows || rows != n {
		t.Fatalf("counter reserved %d, detail rows hold %d; %d deductions", c.reserved, rows, n)
	}
	if repeats > 0 {
		t.Fatalf("%d details repeated inside one batch", repeats)
	}
}
