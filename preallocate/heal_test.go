package preallocate

import (
	"context"
	"testing"
)

// Heal keeps the SKU's partition target: a fenced partition is replaced
// on a shard where the SKU lost nothing, the target survives a restock
// that repeats it and follows a rebalance to a count, and a partition on a
// removed shard that answers is drained and closed once its replacement
// is open. Units are conserved throughout.
func TestHealKeepsTheTarget(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 3)
	sku, _, err := f.alloc.Provision(ctx, "h", Spec{Total: 1000, Partitions: 2, Chunk: 50, Threshold: 10}, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if sku.Target != 2 {
		t.Fatalf("target after create: %d, want 2", sku.Target)
	}
	if names, err := f.alloc.HealCandidates(ctx, nil); err != nil || len(names) != 0 {
		t.Fatalf("candidates of a whole SKU: %v %v", names, err)
	}

	// Partition 0's shard lost it.
	lostShard := sku.Partitions[0].Shard
	f.alloc.Fence(ctx, f.handle(t, sku, 0), ReasonLost)
	if names, err := f.alloc.HealCandidates(ctx, nil); err != nil || len(names) != 1 || names[0] != "h" {
		t.Fatalf("candidates after a fence: %v %v", names, err)
	}
	// A restock repeating the count is not refused for the fenced one.
	if _, _, err := f.alloc.Provision(ctx, "h", Spec{Total: 1200, Partitions: 2}, Spec{}); err != nil {
		t.Fatalf("restock with the same partition count after a fence: %v", err)
	}
	reps, err := f.alloc.Heal(ctx, "h", ShardView{})
	if err != nil || len(reps) != 1 {
		t.Fatalf("heal: %+v %v", reps, err)
	}
	r := reps[0]
	if r.Old != 0 || r.Reason != ReasonFenced || r.New != 2 || r.Shard == lostShard {
		t.Fatalf("replacement %+v: want partition 0 replaced by 2, away from %s", r, lostShard)
	}
	sku, err = f.store.Get(ctx, "h")
	if err != nil {
		t.Fatal(err)
	}
	if open := openCount(sku); open != 2 || sku.Pool >= 1200-sku.InDoubt {
		t.Fatalf("after heal: %d open, pool %d, in doubt %d: want 2 open, the new one filled", open, sku.Pool, sku.InDoubt)
	}
	if reps, err := f.alloc.Heal(ctx, "h", ShardView{}); err != nil || len(reps) != 0 {
		t.Fatalf("second heal: %+v %v, want nothing to do", reps, err)
	}

	// A rebalance to a count sets the target.
	if _, err := f.alloc.Rebalance(ctx, "h", Rebalance{Partitions: 3}); err != nil {
		t.Fatal(err)
	}
	if sku, _ = f.store.Get(ctx, "h"); sku.Target != 3 || openCount(sku) != 3 {
		t.Fatalf("after rebalance to 3: target %d, %d open", sku.Target, openCount(sku))
	}

	// A removed shard that answers: its partitions are replaced, then
	// drained and closed (units back to the pool, nothing in doubt).
	var victim string
	for _, p := range sku.Partitions {
		if p.State == "open" {
			victim = p.Shard
			break
		}
	}
	doubtBefore := sku.InDoubt
	if err := f.store.SetShardState(ctx, victim, "removed"); err != nil {
		t.Fatal(err)
	}
	reps, err = f.alloc.Heal(ctx, "h", ShardView{})
	if err != nil || len(reps) == 0 {
		t.Fatalf("heal of a removed shard: %+v %v", reps, err)
	}
	sku, _ = f.store.Get(ctx, "h")
	for _, p := range sku.Partitions {
		if p.Shard == victim && p.State == "open" {
			t.Fatalf("partition %d still open on removed %s", p.ID, victim)
		}
	}
	if openCount(sku) != 3 || sku.InDoubt != doubtBefore {
		t.Fatalf("after the removed shard: %d open, in doubt %d (was %d)", openCount(sku), sku.InDoubt, doubtBefore)
	}
	for _, r := range reps {
		if r.Reason != ReasonRemoved || r.OldShard != victim || r.Shard == victim {
			t.Fatalf("replacement %+v: want reason removed, off %s", r, victim)
		}
	}
}

func openCount(sku SKU) int {
	n := 0
	for _, p := range sku.Partitions {
		if p.State == "open" {
			n++
		}
	}
	return n
}
