package daemon

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/schema"
	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/shard"
)

// A closed partition leaves the home set (and so the batcher's view) once
// the retry window has passed, but not while its stream still holds
// details: after a broker outage longer than the window they would never
// be written back.
func TestClosedPartitionLingersWhileUnsynced(t *testing.T) {
	ctx := context.Background()
	set, err := shard.Open(ctx, []shard.Config{{ID: "s1", Addr: stocktest.StartRedis(t).Addr}}, shard.Options{Prefix: stocktest.Name("linger")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	const epoch = 7
	p, err := set.Partition("lsku", 1, epoch, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Init(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Refill(ctx, 1, 'a', 5, 1); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Take(ctx, "buyer", 1, 1, false, ""); err != nil || r.Code != shard.Took {
		t.Fatalf("take: %+v %v", r, err)
	}

	l := &loader{shards: set, logger: slog.Default(), window: time.Minute}
	now := time.Now()
	sku := preallocate.SKU{Name: "lsku", Partitions: []preallocate.Partition{
		{ID: 0, Shard: "s1", Epoch: epoch, State: "open"},
		{ID: 1, Shard: "s1", Epoch: epoch, State: "closed", ClosedAt: now.Add(-2 * time.Minute)},
	}}
	pids := func() ([]int, time.Time) {
		info, due, err := l.registryInfo(ctx, sku, now)
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for _, pi := range info.Partitions {
			out = append(out, pi.Handle.ID)
		}
		return out, due
	}

	got, due := pids()
	if len(got) != 2 || due.IsZero() || due.After(now.Add(lingerRecheck)) {
		t.Fatalf("with a detail in its stream, past the window: partitions %v, next look %v; want [0 1] and a look again within %s", got, due, lingerRecheck)
	}
	// Written back: the batcher trims the stream after the broker's confirm.
	if err := p.TrimBefore(ctx, 1<<40); err != nil {
		t.Fatal(err)
	}
	if got, due := pids(); len(got) != 1 || got[0] != 0 || !due.IsZero() {
		t.Fatalf("stream empty, past the window: partitions %v, next look %v; want [0] and nothing due", got, due)
	}
}

// A shard this node knows only from MySQL (added at runtime, or by another
// node) is connected with shard_defaults, not bare.
func TestRecordedShardTakesShardDefaults(t *testing.T) {
	ctx := context.Background()
	db, err := schema.Open(ctx, stocktest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	store := preallocate.NewStore(db)
	set, err := shard.Open(ctx, []shard.Config{{ID: "s1", Addr: stocktest.StartRedis(t).Addr}}, shard.Options{Prefix: stocktest.Name("defaults")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	if err := store.AddShard(ctx, "s9", stocktest.StartRedis(t).Addr); err != nil {
		t.Fatal(err)
	}
	defaults := shard.Settings{Durability: "replica", Replicas: 1, WaitTimeout: 50 * time.Millisecond}
	l := &loader{store: store, shards: set, logger: slog.Default(), shardDefaults: defaults}
	if err := l.syncShards(ctx); err != nil {
		t.Fatal(err)
	}
	sh, err := set.Get("s9")
	if err != nil {
		t.Fatal(err)
	}
	if got := sh.Config(); got != defaults.For("s9", got.Addr) {
		t.Fatalf("s9 connected with %+v; want shard_defaults %+v", got, defaults)
	}
}
