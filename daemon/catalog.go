package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/audit"
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
		PerUserLimit: spec.PerUserLimit, OpensAt: spec.OpensAt, ClosesAt: spec.ClosesAt,
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
	if errors.Is(err, preallocate.ErrArchived) {
		return c.archivedView(ctx, name)
	}
	if err != nil {
		return admin.SKUView{}, adminErr(err)
	}
	v := rowView(sku)
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
	v.SoldOut = soldOut(v, c.sched.Registry().Get(name))
	return v, nil
}

// soldOut tells whether a SKU view shows no unit for sale. The registry's
// verdict alone is not enough: it is set only when a deduction found the
// SKU empty, so a SKU whose last units were taken by successful
// deductions, with no request after them, has none and would read "on
// sale" with nothing left. Nothing available counts too, when every
// partition answered (a level not read is not a zero).
func soldOut(v admin.SKUView, entry *scheduler.SKU) bool {
	if entry != nil && entry.SoldOut() {
		return true
	}
	if v.Available > 0 {
		return false
	}
	for _, p := range v.Partitions {
		if p.Error != "" {
			return false
		}
	}
	return true
}

// ListSKUs serves GET /admin/skus from MySQL's rows (one page: two
// queries) and the registry's last known levels, with no Redis call: the
// status page polls it every second per open tab, whatever the number of
// SKUs and partitions.
func (c *catalog) ListSKUs(ctx context.Context, cursor string, limit int) ([]admin.SKUView, string, error) {
	skus, more, err := c.store.Page(ctx, cursor, limit)
	if err != nil {
		return nil, "", err
	}
	out := make([]admin.SKUView, 0, len(skus))
	for _, sku := range skus {
		out = append(out, c.cachedView(sku))
	}
	next := ""
	if more && len(skus) > 0 {
		next = skus[len(skus)-1].Name
	}
	return out, next, nil
}

// cachedView is sku's view with the registry's last known levels.
func (c *catalog) cachedView(sku preallocate.SKU) admin.SKUView {
	v := rowView(sku)
	v.Cached = true
	v.Available = sku.Pool
	reg := c.sched.Registry().Get(sku.Name)
	for _, rp := range sku.Partitions {
		pv := admin.PartitionView{ID: rp.ID, Shard: rp.Shard, State: rp.State, Active: "a", Seq: rp.SeenSeq}
		if reg != nil {
			if p := reg.Slot(rp.ID); p != nil && p.Handle.Epoch == rp.Epoch {
				l := p.Levels()
				pv.A, pv.B, pv.Active = l.A, l.B, string(l.Active)
				pv.Seq = max(pv.Seq, p.Handle.LastSeq())
				if rp.State == "open" {
					v.Available += l.Total()
				}
			}
		}
		v.Partitions = append(v.Partitions, pv)
	}
	v.SoldOut = soldOut(v, reg)
	if v.SoldOut {
		v.Available = 0
	}
	return v
}

// rowView is the part of a SKU's view MySQL's row gives.
func rowView(sku preallocate.SKU) admin.SKUView {
	return admin.SKUView{
		SKU: sku.Name, Total: sku.Total, Pool: sku.Pool, Reserved: sku.Reserved, Confirmed: sku.Confirmed,
		Released: sku.Released, InDoubt: sku.InDoubt, Doubled: sku.Doubled, Chunk: sku.Chunk,
		Threshold: sku.Threshold, Version: sku.Version, TargetPartitions: sku.Target, Partitions: []admin.PartitionView{},
		PerUserLimit: sku.PerUserLimit, OpensAt: timeOrNil(sku.OpensAt), ClosesAt: timeOrNil(sku.ClosesAt),
	}
}

// archivedView shows an archived SKU from MySQL alone: its final counters
// and its (closed) partitions; nothing of it is left in Redis.
func (c *catalog) archivedView(ctx context.Context, name string) (admin.SKUView, error) {
	sku, err := c.store.GetArchived(ctx, name)
	if err != nil {
		return admin.SKUView{}, adminErr(err)
	}
	v := rowView(sku)
	v.Archived, v.Available, v.SoldOut = true, 0, true
	at := sku.ArchivedAt
	v.ArchivedAt = &at
	for _, rp := range sku.Partitions {
		v.Partitions = append(v.Partitions, admin.PartitionView{ID: rp.ID, Shard: rp.Shard, State: rp.State, Active: "a", Seq: rp.SeenSeq})
	}
	return v, nil
}

// archiveResult is DELETE /admin/skus/{sku}'s answer.
type archiveResult struct {
	SKU    string `json:"sku"`
	Status string `json:"status"` // "archived"
	// Returned is the units the partitions still held, back in the pool.
	Returned int64 `json:"returned_to_pool"`
	// KeysRemoved counts the Redis keys deleted (every shard).
	KeysRemoved int64 `json:"keys_removed"`
	// KeysError names shards whose keys could not be deleted; the SKU is
	// archived all the same, and DELETE again removes what is left.
	KeysError string `json:"keys_error,omitempty"`
	// Unconfirmed: the members that did not confirm in time that they
	// dropped the SKU (as in shardMoves).
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

// ArchiveSKU archives name (ARCHITECTURE 12.5):
//
//  1. refuse (409, with the reason) unless the SKU is settled: nothing
//     reserved and unconfirmed, nothing in doubt, no allocation pending,
//     every deduction written back to MySQL;
//  2. close every open partition, returning its units to the pool, and
//     make every node reload (no node sells it from then on);
//  3. check 1 again: a deduction that got in before the close must land
//     and be settled first (409; the partitions stay closed, and DELETE
//     again finishes once it is);
//  4. mark it archived in MySQL (target 0, version + 1) and make every
//     node drop it: registry entry, levels, metric series;
//  5. delete its keys from every shard.
//
// An archived SKU answers DELETE with 200 again (removing keys a failed
// pass left), GET /admin/skus/{sku} with its final ledger, deductions with
// 404, and PUT with 409: its name is not reused.
func (c *catalog) ArchiveSKU(ctx context.Context, name string) (any, error) {
	out := archiveResult{SKU: name, Status: "archived"}
	sku, err := c.store.Get(ctx, name)
	if errors.Is(err, preallocate.ErrArchived) {
		out.KeysRemoved, err = c.loader.shards.DeleteSKUKeys(ctx, name)
		if err != nil {
			out.KeysError = err.Error()
		}
		return out, nil
	}
	if err != nil {
		return nil, adminErr(err)
	}
	if err := c.settled(ctx, sku); err != nil {
		return nil, err
	}
	// Nothing heals (replaces) the partitions about to close.
	if err := c.store.Untarget(ctx, name); err != nil {
		return nil, err
	}
	for _, p := range sku.Partitions {
		if p.State != "open" {
			continue
		}
		n, err := c.alloc.ClosePartition(ctx, name, p.ID)
		if err != nil {
			if m, ok := c.reload(ctx, name); ok {
				c.notices.publish(ctx, m)
			}
			return nil, adminErr(fmt.Errorf("close partition %d: %w", p.ID, err))
		}
		out.Returned += n
	}
	if m, ok := c.reload(ctx, name); ok {
		c.notices.publish(ctx, m)
	}
	if sku, err = c.store.Get(ctx, name); err != nil {
		return nil, adminErr(err)
	}
	if err := c.settled(ctx, sku); err != nil {
		return nil, &adminError{kind: admin.ErrConflict, err: fmt.Errorf(
			"%w; its partitions are closed now (units returned to the pool): DELETE again once that is settled", err)}
	}
	ok, err := c.store.Archive(ctx, name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &adminError{kind: admin.ErrConflict, err: fmt.Errorf("sku %s changed while it was being archived: try again", name)}
	}
	c.loader.forget(name)
	out.Unconfirmed = c.notices.publish(ctx, notice{Kind: noticeChanged, SKU: name})
	out.KeysRemoved, err = c.loader.shards.DeleteSKUKeys(ctx, name)
	if err != nil {
		out.KeysError = err.Error()
	}
	return out, nil
}

// settled is nil when nothing of sku is in flight, else a conflict naming
// what is: reservations not yet confirmed or released, units in doubt,
// allocations pending, deductions not yet written back to MySQL.
func (c *catalog) settled(ctx context.Context, sku preallocate.SKU) error {
	busy := func(format string, args ...any) error {
		return &adminError{kind: admin.ErrConflict, err: fmt.Errorf("sku %s cannot be archived: "+format, append([]any{sku.Name}, args...)...)}
	}
	if sku.Reserved > 0 {
		return busy("%d units are reserved and not yet confirmed or released (a live sale, or reservations within their TTL)", sku.Reserved)
	}
	if sku.InDoubt > 0 {
		return busy("%d units are in doubt after a shard lost data; resolve them first (in-doubt/resolve)", sku.InDoubt)
	}
	if _, pending, err := c.store.PoolState(ctx, sku.Name); err != nil {
		return adminErr(err)
	} else if pending > 0 {
		return busy("allocations between the pool and its partitions are in progress")
	}
	for _, rp := range sku.Partitions {
		if rp.State == "fenced" {
			continue // its Redis is not trusted; its doubt is settled (in_doubt 0)
		}
		h, err := c.loader.shards.Partition(sku.Name, rp.ID, rp.Epoch, rp.Shard)
		if err != nil {
			continue // closed on a removed shard: drained, nothing there
		}
		if !h.Shard.Healthy() {
			return busy("shard %s of partition %d does not answer", rp.Shard, rp.ID)
		}
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := h.Inspect(ictx)
		cancel()
		if err != nil {
			return busy("partition %d: %v", rp.ID, err)
		}
		if st.Exists && st.Seq > rp.SeenSeq {
			return busy("write-back backlog: partition %d holds deductions up to %d, MySQL has them up to %d", rp.ID, st.Seq, rp.SeenSeq)
		}
	}
	return nil
}

func (c *catalog) Shards(ctx context.Context) ([]admin.ShardView, error) {
	open := map[string]int{}
	// byMaster: for cluster shards, which master holds each open partition.
	byMaster := map[string]map[string][]string{}
	for _, name := range c.sched.Registry().Names() {
		if sku := c.sched.Registry().Get(name); sku != nil {
			for _, p := range sku.Slots() {
				if p.Open() {
					open[p.Handle.Shard.ID]++
					if tp := p.Handle.Shard.Topology(); tp.Kind == shard.KindCluster {
						if m := tp.MasterOf(p.Handle.StateKey()); m != "" {
							if byMaster[p.Handle.Shard.ID] == nil {
								byMaster[p.Handle.Shard.ID] = map[string][]string{}
							}
							byMaster[p.Handle.Shard.ID][m] = append(byMaster[p.Handle.Shard.ID][m], fmt.Sprintf("%s/%d", p.Handle.SKU, p.Handle.ID))
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
	rep, err := audit.New(c.loader.store, stocksync.NewRecords(c.db), c.loader.shards).Verify(ctx, name)
	if err != nil {
		return nil, adminErr(err)
	}
	return rep, nil
}

// timeOrNil is t for a JSON view: null when zero.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func adminErr(err error) error {
	switch {
	case errors.Is(err, stockd.ErrUnknownSKU):
		return &adminError{kind: admin.ErrNotFound, err: err}
	case errors.Is(err, preallocate.ErrConflict):
		return &adminError{kind: admin.ErrConflict, err: err}
	case errors.Is(err, stockd.ErrUnknownShard):
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
