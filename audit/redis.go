package audit

import (
	"context"
	"fmt"

	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/shard"
)

// redisView is what a SKU's partitions hold in Redis.
type redisView struct {
	// handles are the partitions whose shard is known, by pid.
	handles map[int]*shard.Partition
	// subDomains is the units in the trusted partitions' sub-domains.
	subDomains int64
	// streams are the details still in the trusted partitions' streams.
	streams []streamDetail
}

// streamDetail is one detail in a partition's stream.
type streamDetail struct {
	id  string
	qty int64
}

// readRedis reads the sub-domains and the streams of k's partitions. A
// fenced partition's Redis cannot be trusted: what it holds or still
// streams is counted in in_doubt instead.
func (a *Auditor) readRedis(ctx context.Context, k preallocate.SKU) (redisView, error) {
	v := redisView{handles: map[int]*shard.Partition{}}
	for _, p := range k.Partitions {
		h, err := a.shards.Partition(k.Name, p.ID, p.Epoch, p.Shard)
		if err != nil {
			if p.State != "open" {
				continue // closed on a removed shard: drained, nothing left there
			}
			return v, err
		}
		v.handles[p.ID] = h
		if p.State == "fenced" {
			continue
		}
		if err := v.add(ctx, h, p.Epoch); err != nil {
			return v, err
		}
	}
	return v, nil
}

// add counts one trusted partition: its levels (when its state is of the
// partition's epoch) and the details its stream still holds.
func (v *redisView) add(ctx context.Context, h *shard.Partition, epoch int64) error {
	st, err := h.Inspect(ctx)
	if err != nil {
		return err
	}
	if st.Exists && st.Epoch == fmt.Sprint(epoch) {
		v.subDomains += st.Levels.Total()
	}
	ds, err := h.RangeDetails(ctx)
	if err != nil {
		return err
	}
	for _, d := range ds {
		v.streams = append(v.streams, streamDetail{id: h.DetailID(d.Seq), qty: d.Qty})
	}
	return nil
}

// drained is the units the pending drains took out of Redis: a drain's
// amount is known once its script ran (and not before).
func (v *redisView) drained(ctx context.Context, drains []preallocate.PendingDrain) (int64, error) {
	var n int64
	for _, d := range drains {
		h := v.handles[d.PID]
		if h == nil {
			continue
		}
		units, ok, err := h.DrainAmount(ctx, d.ID)
		if err != nil {
			return 0, err
		}
		if ok {
			n += units
		}
	}
	return n, nil
}
