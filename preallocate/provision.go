package preallocate

import (
	"context"
	"fmt"

	"github.com/stockd/stockd/shard"
)

// Provision creates or restocks a SKU (see Store.Put), brings its
// partitions' Redis state up and tops their sub-domains up from the pool.
func (a *Allocator) Provision(ctx context.Context, name string, spec, defaults Spec) (SKU, bool, error) {
	store := NewStore(a.db)
	rows, err := store.Shards(ctx)
	if err != nil {
		return SKU{}, false, err
	}
	var active []string
	for _, r := range rows {
		if r.State == "active" {
			active = append(active, r.ID)
		}
	}
	sku, created, err := store.Put(ctx, name, spec, defaults, active)
	if err != nil {
		return SKU{}, false, err
	}
	parts, err := a.Ensure(ctx, sku)
	if err != nil {
		return sku, created, err
	}
	if err := a.TopUp(ctx, sku, parts); err != nil {
		return sku, created, err
	}
	sku, err = store.Get(ctx, name)
	return sku, created, err
}

// Ensure makes sure every open partition of sku has its state in Redis:
// it creates the state of a partition that never held stock, and fences a
// partition whose state is gone although stock was applied to it (the shard
// lost data: what it sold is unknown, so it must never sell again). It
// returns the handles of the partitions still open.
func (a *Allocator) Ensure(ctx context.Context, sku SKU) ([]*shard.Partition, error) {
	// A partition fenced while its shard did not answer may still be open
	// in that shard's Redis.
	a.markFenced(ctx, sku)
	var open []*shard.Partition
	for _, rp := range sku.Partitions {
		if rp.State != "open" {
			continue
		}
		p, err := a.shards.Partition(sku.Name, rp.ID, rp.Epoch, rp.Shard)
		if err != nil {
			return nil, err
		}
		// Count the fills first: a fill only ever applies into existing
		// state, so fills on record mean the state existed, and missing
		// state then means lost data. (Checking the state first and the
		// fills second raced with a concurrent Ensure that created the
		// state and filled it in between.)
		var fills int
		if err := a.db.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM allocations WHERE sku = ? AND pid = ? AND epoch = ? AND kind = 'fill' AND state IN ('applied','pending')`,
			sku.Name, rp.ID, rp.Epoch).Scan(&fills); err != nil {
			return nil, fmt.Errorf("ensure partition: %w", err)
		}
		if !p.Shard.Healthy() {
			// Its shard does not answer (a node may start while one is
			// down): the partition stays in the registry, where requests
			// that need it answer 503; a take or inspect there later finds
			// lost state if there is any. It is not topped up.
			a.logger.Warn("partition not checked: its shard does not answer", "sku", sku.Name, "pid", rp.ID, "shard", rp.Shard)
			continue
		}
		code, err := p.Init(ctx, sku.Threshold, fills == 0)
		if err != nil {
			if !p.Shard.Healthy() {
				a.logger.Warn("partition not checked: its shard does not answer", "sku", sku.Name, "pid", rp.ID, "shard", rp.Shard, "err", err)
				continue
			}
			return nil, err
		}
		if code == shard.InitOther || code == shard.InitMissing {
			a.lost(ctx, p)
			continue
		}
		open = append(open, p)
	}
	return open, nil
}

// TopUp refills every sub-domain of parts that is below the SKU's
// threshold with a chunk from the pool, while the pool lasts.
func (a *Allocator) TopUp(ctx context.Context, sku SKU, parts []*shard.Partition) error {
	for _, p := range parts {
		if !p.Shard.Healthy() {
			continue
		}
		st, err := p.Inspect(ctx)
		if err != nil {
			return err
		}
		if !st.Exists || st.Status != "open" {
			continue
		}
		for _, sub := range []byte{'a', 'b'} {
			level := st.Levels.A
			if sub == 'b' {
				level = st.Levels.B
			}
			if level >= sku.Threshold {
				continue
			}
			o, err := a.Refill(ctx, p, sub, sku.Chunk, sku.Threshold)
			if err != nil {
				return err
			}
			if o.Pool == 0 {
				return nil
			}
		}
	}
	return nil
}

// Consolidate gathers scattered units so that a request for need units can
// be served once the pool alone cannot: every open partition holding some
// but fewer than need units is drained back to the pool, except the fullest,
// which is then filled from the pool with enough to cover need.
func (a *Allocator) Consolidate(ctx context.Context, parts []*shard.Partition, need, chunk, threshold int64) error {
	var target *shard.Partition
	var best shard.State
	states := make([]shard.State, len(parts))
	for i, p := range parts {
		st, err := p.Inspect(ctx)
		if err != nil {
			return err
		}
		states[i] = st
		if !st.Exists || st.Status != "open" {
			continue
		}
		if st.Levels.Total() >= need {
			return nil // already servable
		}
		if target == nil || st.Levels.Total() > best.Levels.Total() {
			target, best = p, st
		}
	}
	if target == nil {
		return nil
	}
	for i, p := range parts {
		st := states[i]
		if p == target || !st.Exists || st.Status != "open" || st.Levels.Total() == 0 {
			continue
		}
		if _, err := a.Drain(ctx, p, false); err != nil {
			return err
		}
	}
	sub := byte('a')
	if best.Levels.B < best.Levels.A {
		sub = 'b'
	}
	want := max(chunk, need-best.Levels.Total())
	_, err := a.Refill(ctx, target, sub, want, want+threshold+need)
	return err
}
