package sync

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

// Takes that do not signal the reader's handle (another node's, whose hint
// was lost) are still published: the batcher's safety reads find them.
// The takes go through a second handle of the same partition; the batcher
// reads with its own, which no take signals.
func TestBatcherSafetyReadFindsUnsignalledTakes(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	set := newShards(t)
	seed(t, db, set, "quiet", 5)
	mine, err := set.Partition("quiet", 0, 7, "s1")
	if err != nil {
		t.Fatal(err)
	}
	other, err := set.Partition("quiet", 0, 7, "s1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Queue = stocktest.Queue(t)
	cfg.BatchInterval = 100 * time.Millisecond
	cfg.IdlePollInterval = time.Second
	s := New(cfg, Deps{
		DB: db, AMQPURL: stocktest.AMQPURL(), Node: "n1", Shards: set,
		Registerer: prometheus.NewRegistry(), Logger: slog.Default(),
		Partitions: func() []*shard.Partition { return []*shard.Partition{mine} },
	})
	bctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Batcher.Run(bctx)
	}()
	t.Cleanup(func() { stop(); <-done })
	published := func(what string) {
		t.Helper()
		stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
			es, err := mine.ReadEntries(ctx, "", 1)
			return err == nil && len(es) == 0, fmt.Sprintf("%s not published within 30s (%v)", what, err)
		})
	}
	published("the backlog at start")

	if r, err := other.Refill(ctx, 2, 'a', 20, 20); err != nil || r.Code != shard.RefillApplied {
		t.Fatalf("refill: %+v %v", r, err)
	}
	for i := 0; i < 20; i++ {
		if r, err := other.Take(ctx, "quiet-late-"+strconv.Itoa(i), 1, 1, true, ""); err != nil || r.Code != shard.Took {
			t.Fatalf("take: %+v %v", r, err)
		}
	}
	published("takes through another handle")
}
