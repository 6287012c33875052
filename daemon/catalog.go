package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
	stocksync "github.com/stockd/stockd/sync"
)

// catalog implements admin.Catalog over the store, the allocator and the
// registry.
type catalog struct {
	// defaults fill what a PUT leaves out when it creates a SKU.
	defaults preallocate.Spec
	// ttl is the reservation TTL, after which doubt resolves by itself.
	ttl time.Duration

	db      *sql.DB
	notices *notices
	store   *preallocate.Store
	alloc   *preallocate.Allocator
	sched   *scheduler.Scheduler
	loader  *loader
}

var _ admin.Catalog = (*catalog)(nil)

func (c *catalog) PutSKU(ctx context.Context, name string, spec admin.Spec) (admin.SKUView, bool, error) {
	sku, created, err := c.alloc.Provision(ctx, name, preallocate.Spec{
		Total: spec.Total, Partitions: spec.Partitions, Chunk: spec.Chunk, Threshold: spec.Threshold,
	}, c.defaults)
	if err != nil {
		return admin.SKUView{}, false, adminErr(err)
	}
	if err := c.loader.load(ctx, sku); err != nil {
		return admin.SKUView{}, created, err
	}
	unconfirmed := c.notices.publish(ctx, notice{Kind: noticeChanged, SKU: name, Version: sku.Version})
	v, err := c.GetSKU(ctx, name)
	v.Unconfirmed = unconfirmed
	return v, created, err
}

func (c *catalog) GetSKU(ctx context.Context, name string) (admin.SKUView, error) {
	sku, err := c.store.Get(ctx, name)
	if err != nil {
		return admin.SKUView{}, adminErr(err)
	}
	v := admin.SKUView{
		SKU: sku.Name, Total: sku.Total, Pool: sku.Pool, Reserved: sku.Reserved, Confirmed: sku.Confirmed,
		Released: sku.Released, InDoubt: sku.InDoubt, Doubled: sku.Doubled, Chunk: sku.Chunk,
		Threshold: sku.Threshold, Version: sku.Version, TargetPartitions: sku.Target, Partitions: []admin.PartitionView{},
	}
	v.Available = sku.Pool
	for _, rp := range sku.Partitions {
		pv := admin.PartitionView{ID: rp.ID, Shard: rp.Shard, State: rp.State}
		h, err := c.loader.shards.Partition(sku.Name, rp.ID, rp.Epoch, rp.Shard)
		if err == nil && !h.Shard.Healthy() {
			// A dead shard must not hold the view up (reads are retried
			// until their context ends).
			err = fmt.Errorf("shard %s does not answer", rp.Shard)
		}
		if err == nil {
			var st shard.State
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err = h.Inspect(ictx)
			cancel()
			if err == nil {
				pv.A, pv.B, pv.Active, pv.Seq, pv.Backlog = st.Levels.A, st.Levels.B, string(st.Levels.Active), st.Seq, st.Backlog
				v.Sync.Backlog += st.Backlog
				if rp.State == "open" {
					v.Available += st.Levels.Total()
				}
			}
		}
		if err != nil {
			pv.Error = err.Error()
		}
		v.Partitions = append(v.Partitions, pv)
	}
	if r := c.sched.Registry().Get(name); r != nil {
		v.SoldOut = r.SoldOut()
	}
	return v, nil
}

func (c *catalog) ListSKUs(ctx context.Context) ([]admin.SKUView, error) {
	out := []admin.SKUView{}
	for _, name := range c.sched.Registry().Names() {
		v, err := c.GetSKU(ctx, name)
		if err != nil {
			if errors.Is(err, admin.ErrNotFound) {
				continue // deleted meanwhile
			}
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (c *catalog) Shards(ctx context.Context) ([]admin.ShardView, error) {
	open := map[string]int{}
	// byMaster: for cluster shards, which master holds each open partition.
	byMaster := map[string]map[string][]string{}
	for _, name := range c.sched.Registry().Names() {
		if sku := c.sched.Registry().Get(name); sku != nil {
			for _, p := range sku.Partitions() {
				if p.Open() {
					open[p.H.Shard.ID]++
					if tp := p.H.Shard.Topology(); tp.Kind == shard.KindCluster {
						if m := tp.MasterOf(p.H.StateKey()); m != "" {
							if byMaster[p.H.Shard.ID] == nil {
								byMaster[p.H.Shard.ID] = map[string][]string{}
							}
							byMaster[p.H.Shard.ID][m] = append(byMaster[p.H.Shard.ID][m], fmt.Sprintf("%s/%d", p.H.SKU, p.H.ID))
						}
					}
				}
			}
		}
	}
	rows, err := c.store.Shards(ctx)
	if err != nil {
		return nil, err
	}
	out := []admin.ShardView{}
	for _, r := range rows {
		v := admin.ShardView{ID: r.ID, Addr: r.Addr, State: r.State, Partitions: open[r.ID]}
		if sh, err := c.loader.shards.Get(r.ID); err == nil {
			v.Durability = sh.Config().Mode()
			v.Healthy = sh.Healthy()
			tp := sh.Topology()
			v.Kind, v.Master, v.Replicas, v.Masters, v.Failovers = tp.Kind, tp.Master, tp.Replicas, tp.Masters, tp.Failovers
			v.PartitionsByMaster = byMaster[r.ID]
			if !tp.LastFailover.IsZero() {
				v.LastFailover = &tp.LastFailover
			}
		}
		if sh, err := c.loader.shards.Get(r.ID); err != nil {
			if r.State != "removed" {
				v.Error = "not connected on this node"
			}
		} else if st, err := sh.Stats(ctx); err != nil {
			v.Error = err.Error()
		} else {
			v.Reachable, v.Keys, v.MemoryUsed = true, st.Keys, st.MemoryUsed
		}
		out = append(out, v)
	}
	return out, nil
}

func (c *catalog) AddShard(ctx context.Context, id, addr string) (admin.ShardView, error) {
	if err := c.loader.shards.Add(ctx, c.loader.shardDefaults.For(id, addr)); err != nil {
		return admin.ShardView{}, &adminError{kind: admin.ErrConflict, err: err}
	}
	if err := c.store.AddShard(ctx, id, addr); err != nil {
		return admin.ShardView{}, adminErr(err)
	}
	unconfirmed := c.notices.publish(ctx, notice{Kind: noticeShards})
	v, err := c.shardView(ctx, id)
	v.Unconfirmed = unconfirmed
	return v, err
}

// shardView is one shard as GET /admin/shards shows it.
func (c *catalog) shardView(ctx context.Context, id string) (admin.ShardView, error) {
	views, err := c.Shards(ctx)
	if err != nil {
		return admin.ShardView{}, err
	}
	for _, v := range views {
		if v.ID == id {
			return v, nil
		}
	}
	return admin.ShardView{}, &adminError{kind: admin.ErrNotFound, err: fmt.Errorf("unknown shard %s", id)}
}

func (c *catalog) MoveShard(ctx context.Context, id, addr string) (admin.ShardView, error) {
	if _, err := c.loader.shards.Get(id); err != nil {
		return admin.ShardView{}, &adminError{kind: admin.ErrNotFound, err: err}
	}
	// Connect first: a wrong address changes nothing.
	if err := c.loader.shards.Replace(ctx, id, addr); err != nil {
		return admin.ShardView{}, &adminError{kind: admin.ErrConflict, err: err}
	}
	if err := c.store.SetShardAddr(ctx, id, addr); err != nil {
		return admin.ShardView{}, adminErr(err)
	}
	unconfirmed := c.notices.publish(ctx, notice{Kind: noticeShards})
	v, err := c.shardView(ctx, id)
	v.Unconfirmed = unconfirmed
	return v, err
}

// shardMoves is what a drain moved, per SKU.
type shardMoves struct {
	Shard string                                 `json:"shard"`
	SKUs  map[string]preallocate.RebalanceResult `json:"skus"`
	// Unconfirmed are the members that did not confirm the change in
	// time (notices.publish).
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

func (c *catalog) DrainShard(ctx context.Context, id string) (any, error) {
	moved, err := c.alloc.DrainShard(ctx, id)
	changes := []notice{{Kind: noticeShards}}
	for sku := range moved {
		if m, ok := c.reload(ctx, sku); ok {
			changes = append(changes, m)
		}
	}
	unconfirmed := c.notices.publish(ctx, changes...)
	if err != nil {
		return nil, adminErr(err)
	}
	return shardMoves{Shard: id, SKUs: moved, Unconfirmed: unconfirmed}, nil
}

func (c *catalog) RemoveShard(ctx context.Context, id string) ([]string, error) {
	if err := c.alloc.RemoveShard(ctx, id); err != nil {
		return nil, adminErr(err)
	}
	return c.notices.publish(ctx, notice{Kind: noticeShards}), nil
}

// rebalanced is a rebalance's answer.
type rebalanced struct {
	preallocate.RebalanceResult
	// Unconfirmed: as in shardMoves.
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

func (c *catalog) Rebalance(ctx context.Context, name string, spec admin.RebalanceSpec) (any, error) {
	if c.sched.Registry().Get(name) == nil {
		if _, err := c.store.Get(ctx, name); err != nil {
			return nil, adminErr(err)
		}
	}
	var r preallocate.Rebalance
	switch {
	case spec.Partitions != nil:
		r.Partitions = *spec.Partitions
	case spec.Move != nil:
		r.MovePartition, r.MoveTo = spec.Move.Partition, spec.Move.Shard
	default:
		r.Pin = spec.Pin
	}
	out, err := c.alloc.Rebalance(ctx, name, r)
	var unconfirmed []string
	if m, ok := c.reload(ctx, name); ok {
		unconfirmed = c.notices.publish(ctx, m)
	}
	if err != nil {
		return nil, adminErr(err)
	}
	return rebalanced{RebalanceResult: out, Unconfirmed: unconfirmed}, nil
}

// inDoubtView is GET /admin/skus/{sku}/in-doubt.
type inDoubtView struct {
	SKU      string              `json:"sku"`
	InDoubt  int64               `json:"in_doubt"`
	Resolved int64               `json:"resolved_now"`
	Fenced   []preallocate.Doubt `json:"fenced"`
	// Unconfirmed: as in shardMoves (a resolve only).
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

func (c *catalog) InDoubt(ctx context.Context, name string, resolve bool) (any, error) {
	sku, err := c.store.Get(ctx, name)
	if err != nil {
		return nil, adminErr(err)
	}
	v := inDoubtView{SKU: name}
	if resolve {
		if v.Resolved, err = c.alloc.ResolveDoubts(ctx, name, time.Now(), true); err != nil {
			return nil, err
		}
		if v.Resolved > 0 {
			v.Unconfirmed = c.notices.publish(ctx, c.returned(ctx, name)...)
		}
		if sku, err = c.store.Get(ctx, name); err != nil {
			return nil, adminErr(err)
		}
	}
	v.InDoubt = sku.InDoubt
	if v.Fenced, err = c.alloc.Doubts(ctx, name, c.ttl); err != nil {
		return nil, err
	}
	return v, nil
}

// returned applies on this node that units went back to sku's pool, and
// returns the notices that tell the others.
func (c *catalog) returned(ctx context.Context, name string) []notice {
	c.sched.Invalidate(name, -1)
	out := []notice{{Kind: noticeReturned, SKU: name}}
	if m, ok := c.reload(ctx, name); ok {
		out = append(out, m)
	}
	return out
}

// healed puts a SKU whose partitions the healer replaced in this node's
// registry and gossips the change. It does not wait for the members to
// apply it (the healer loop must not stall behind a frozen member): a
// member's negative answers are checked against MySQL's version anyway.
func (c *catalog) healed(ctx context.Context, name string) {
	if m, ok := c.reload(ctx, name); ok {
		c.notices.send(m.Kind, m.SKU, m.Version)
	}
}

// reload puts a SKU's new shape in this node's registry and returns the
// notice that tells the others (false when it could not be loaded).
func (c *catalog) reload(ctx context.Context, name string) (notice, bool) {
	sku, err := c.store.Get(ctx, name)
	if err == nil {
		err = c.loader.load(ctx, sku)
	}
	if err != nil {
		c.loader.logger.Warn("reload after a change", "sku", name, "err", err)
		return notice{}, false
	}
	return notice{Kind: noticeChanged, SKU: name, Version: sku.Version}, true
}

func (c *catalog) Verify(ctx context.Context, name string) (any, error) {
	rep, err := stocksync.Verify(ctx, c.db, c.loader.shards, name)
	if err != nil {
		return nil, adminErr(err)
	}
	return rep, nil
}

func adminErr(err error) error {
	switch {
	case errors.Is(err, preallocate.ErrUnknownSKU), errors.Is(err, stocksync.ErrUnknownSKU):
		return &adminError{kind: admin.ErrNotFound, err: err}
	case errors.Is(err, preallocate.ErrConflict):
		return &adminError{kind: admin.ErrConflict, err: err}
	case errors.Is(err, preallocate.ErrUnknownShard):
		return &adminError{kind: admin.ErrNotFound, err: err}
	case errors.Is(err, preallocate.ErrInvalid):
		return &adminError{kind: admin.ErrInvalid, err: err}
	}
	return err
}

// adminError gives an error the admin sentinel it maps to, keeping its
// message.
type adminError struct {
	kind error
	err  error
}

func (e *adminError) Error() string        { return e.err.Error() }
func (e *adminError) Is(target error) bool { return target == e.kind }
func (e *adminError) Unwrap() error        { return e.err }
