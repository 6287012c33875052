package audit

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/stocktest/catalogtest"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/shard"
	stocksync "github.com/stockd/stockd/sync"
)

type rig struct {
	auditor *Auditor
	alloc   *preallocate.Allocator
	store   *preallocate.Store
	shards  *shard.Set
	exec    func(q string, args ...any)
}

func newRig(t *testing.T) *rig {
	t.Helper()
	c := catalogtest.New(t, 1, "a")
	db, set := c.DB, c.Shards
	store := preallocate.NewStore(db)
	if err := store.SeedShards(context.Background(), c.Addrs); err != nil {
		t.Fatal(err)
	}
	return &rig{
		auditor: New(store, stocksync.NewRecords(db), set),
		alloc:   preallocate.New(preallocate.DefaultConfig(), db, set, preallocate.Hooks{}, slog.Default()),
		store:   store,
		shards:  set,
		exec: func(q string, args ...any) {
			t.Helper()
			if _, err := db.Exec(q, args...); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// A provisioned SKU adds up: its units are in the pool and in the
// sub-domains; moving a unit out of thin air is reported; fencing a
// partition moves its units to in_doubt, where the fenced partition's open
// doubt must match the counter.
func TestVerifyConservation(t *testing.T) {
	ctx := context.Background()
	r := newRig(t)
	sku, _, err := r.alloc.Provision(ctx, "C1", preallocate.Spec{Total: 100, Partitions: 2, Chunk: 10, Threshold: 3}, preallocate.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.auditor.Verify(ctx, "C1")
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK || rep.Total != 100 || rep.Sum != 100 || rep.SubDomains != 40 || rep.Pool != 60 {
		t.Fatalf("fresh SKU: %+v", rep)
	}

	rp := sku.Partitions[0]
	p, err := r.shards.Partition("C1", rp.ID, rp.Epoch, rp.Shard)
	if err != nil {
		t.Fatal(err)
	}
	r.alloc.Fence(ctx, p, preallocate.ReasonLost)
	rep, err = r.auditor.Verify(ctx, "C1")
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK || rep.InDoubt != 20 || rep.PartitionDoubt != 20 || rep.SubDomains != 20 || rep.Sum != 100 {
		t.Fatalf("after a fence: %+v", rep)
	}

	r.exec(`UPDATE skus SET pool = pool + 1 WHERE sku = 'C1'`)
	rep, err = r.auditor.Verify(ctx, "C1")
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || len(rep.Problems) != 1 || !strings.HasPrefix(rep.Problems[0], "total 100 but the terms add up to 101") {
		t.Fatalf("a unit from nowhere: %+v", rep)
	}
}

// An unknown SKU is stockd.ErrUnknownSKU, with the message the admin API
// has always answered.
func TestVerifyUnknownSKU(t *testing.T) {
	r := newRig(t)
	_, err := r.auditor.Verify(context.Background(), "nosuch")
	if !errors.Is(err, stockd.ErrUnknownSKU) || err.Error() != "verify nosuch: unknown sku" {
		t.Fatalf("err %v", err)
	}
}
