package preallocate

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"sort"

	"github.com/stockd/stockd/internal/sqltx"
	"github.com/stockd/stockd/shard"
)

// Rebalancing changes where a live SKU's stock sits while it sells. Every
// step goes through the recorded paths: new partitions are rows first,
// then Redis state, then fills from the pool; a partition leaves by a drain
// that closes it (its units back to the pool through a drain row). New
// partitions are added before old ones close, so stock stays sellable.
// Operations on one SKU are serialized by a MySQL named lock.

// AddPartitions creates n partitions of sku, on the shards in onShards
// (empty: every active shard), each on the shard holding the fewest of the
// SKU's open partitions (then the fewest overall), and fills them from the
// pool. It returns the new partition ids.
func (a *Allocator) AddPartitions(ctx context.Context, sku string, n int, onShards []string) ([]int, error) {
	var pids []int
	err := sqltx.Run(ctx, a.db, func(tx *sql.Tx) error {
		pids = nil
		if _, err := getSKU(ctx, tx, sku, true); err != nil {
			return err
		}
		allowed, err := activeShards(ctx, tx, onShards)
		if err != nil {
			return err
		}
		load, err := shardLoad(ctx, tx, sku)
		if err != nil {
			return err
		}
		var next, gen int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(pid), -1) + 1, COALESCE(MAX(gen), 0) + 1 FROM partitions WHERE sku = ?`, sku).Scan(&next, &gen); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			sh := leastLoaded(allowed, load)
			load[sh] = [2]int{load[sh][0] + 1, load[sh][1] + 1}
			if _, err := tx.ExecContext(ctx,
				`INSERT INTO partitions (sku, pid, shard, epoch, gen) VALUES (?, ?, ?, ?, ?)`, sku, next, sh, NewEpoch(), gen); err != nil {
				return err
			}
			pids = append(pids, next)
			next++
		}
		_, err = tx.ExecContext(ctx, `UPDATE skus SET version = version + 1 WHERE sku = ?`, sku)
		return err
	})
	if err != nil {
		return nil, err
	}
	return pids, a.bringUp(ctx, sku, pids)
}

// bringUp creates the Redis state of new partitions and fills them.
func (a *Allocator) bringUp(ctx context.Context, name string, pids []int) error {
	sku, err := NewStore(a.db).Get(ctx, name)
	if err != nil {
		return err
	}
	open, err := a.Ensure(ctx, sku)
	if err != nil {
		return err
	}
	var fresh []*shard.Partition
	for _, p := range open {
		for _, pid := range pids {
			if p.ID == pid {
				fresh = append(fresh, p)
			}
		}
	}
	return a.TopUp(ctx, sku, fresh)
}

// ClosePartition drains partition pid of sku into the pool and closes it:
// it never sells or refills again.
func (a *Allocator) ClosePartition(ctx context.Context, sku string, pid int) (int64, error) {
	s, err := NewStore(a.db).Get(ctx, sku)
	if err != nil {
		return 0, err
	}
	for _, rp := range s.Partitions {
		if rp.ID != pid {
			continue
		}
		if rp.State != "open" {
			return 0, conflictf("partition %d of %s is %s", pid, sku, rp.State)
		}
		p, err := a.shards.Partition(sku, rp.ID, rp.Epoch, rp.Shard)
		if err != nil {
			return 0, err
		}
		return a.Drain(ctx, p, true)
	}
	return 0, invalidf("partition: %s has no partition %d", sku, pid)
}

// Rebalance is one change to a SKU's partitions.
type Rebalance struct {
	// Partitions sets the number of open partitions (more for a hotter
	// SKU, fewer to consolidate); 0 leaves it.
	Partitions int
	// MovePartition moves one partition to MoveTo.
	MovePartition *int
	MoveTo        string
	// Pin keeps the SKU's partitions on these shards only (dedicated
	// shards for a hot SKU): partitions elsewhere move there.
	Pin []string
}

// RebalanceResult says what changed.
type RebalanceResult struct {
	Added    []int `json:"added"`
	Closed   []int `json:"closed"`
	Returned int64 `json:"returned_to_pool"`
}

// Rebalance applies r to sku.
func (a *Allocator) Rebalance(ctx context.Context, sku string, r Rebalance) (RebalanceResult, error) {
	var out RebalanceResult
	unlock, err := a.lockSKU(ctx, sku)
	if err != nil {
		return out, err
	}
	defer unlock()
	s, err := NewStore(a.db).Get(ctx, sku)
	if err != nil {
		return out, err
	}
	var open []Partition
	for _, p := range s.Partitions {
		if p.State == "open" {
			open = append(open, p)
		}
	}
	if r.Partitions > 0 && r.MovePartition == nil && len(r.Pin) == 0 {
		// The new count is the one Heal keeps.
		if _, err := a.db.ExecContext(ctx, `UPDATE skus SET target_partitions = ? WHERE sku = ?`, r.Partitions, sku); err != nil {
			return out, fmt.Errorf("partition target: %w", err)
		}
	}
	// close moves partitions out, newest additions already in.
	closeAll := func(ps []Partition) error {
		for _, p := range ps {
			n, err := a.ClosePartition(ctx, sku, p.ID)
			if err != nil {
				return err
			}
			out.Closed = append(out.Closed, p.ID)
			out.Returned += n
		}
		return nil
	}
	switch {
	case r.MovePartition != nil:
		var victim *Partition
		for i := range open {
			if open[i].ID == *r.MovePartition {
				victim = &open[i]
			}
		}
		if victim == nil {
			return out, invalidf("move.partition: %s has no open partition %d", sku, *r.MovePartition)
		}
		if victim.Shard == r.MoveTo {
			return out, nil
		}
		if out.Added, err = a.AddPartitions(ctx, sku, 1, []string{r.MoveTo}); err != nil {
			return out, err
		}
		return out, closeAll([]Partition{*victim})
	case len(r.Pin) > 0:
		var away []Partition
		for _, p := range open {
			if !contains(r.Pin, p.Shard) {
				away = append(away, p)
			}
		}
		if len(away) == 0 {
			return out, nil
		}
		if out.Added, err = a.AddPartitions(ctx, sku, len(away), r.Pin); err != nil {
			return out, err
		}
		return out, closeAll(away)
	case r.Partitions > len(open):
		out.Added, err = a.AddPartitions(ctx, sku, r.Partitions-len(open), nil)
		return out, err
	case r.Partitions > 0 && r.Partitions < len(open):
		// Close the partitions holding the fewest units (least to move),
		// those on draining shards first.
		draining, err := shardStates(ctx, a.db)
		if err != nil {
			return out, err
		}
		type cand struct {
			p     Partition
			units int64
		}
		var cs []cand
		for _, p := range open {
			h, err := a.shards.Partition(sku, p.ID, p.Epoch, p.Shard)
			if err != nil {
				return out, err
			}
			st, err := h.Inspect(ctx)
			if err != nil {
				return out, err
			}
			cs = append(cs, cand{p, st.Levels.Total()})
		}
		sort.SliceStable(cs, func(i, j int) bool {
			di, dj := draining[cs[i].p.Shard] == "draining", draining[cs[j].p.Shard] == "draining"
			if di != dj {
				return di
			}
			return cs[i].units < cs[j].units
		})
		var victims []Partition
		for _, c := range cs[:len(open)-r.Partitions] {
			victims = append(victims, c.p)
		}
		return out, closeAll(victims)
	}
	return out, nil
}

// DrainShard moves every open partition off shard id (it takes no new
// ones meanwhile) and returns what moved, per SKU.
func (a *Allocator) DrainShard(ctx context.Context, id string) (map[string]RebalanceResult, error) {
	store := NewStore(a.db)
	if err := store.SetShardState(ctx, id, "draining"); err != nil {
		return nil, err
	}
	out := map[string]RebalanceResult{}
	rows, err := a.db.QueryContext(ctx, `SELECT DISTINCT sku FROM partitions WHERE shard = ? AND state = 'open' ORDER BY sku`, id)
	if err != nil {
		return nil, err
	}
	var skus []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return nil, err
		}
		skus = append(skus, s)
	}
	rows.Close()
	for _, sku := range skus {
		r, err := a.moveOff(ctx, sku, id)
		out[sku] = r
		if err != nil {
			return out, fmt.Errorf("sku %s: %w", sku, err)
		}
	}
	return out, nil
}

// moveOff moves sku's open partitions on shard id to active shards.
func (a *Allocator) moveOff(ctx context.Context, sku, id string) (RebalanceResult, error) {
	var out RebalanceResult
	unlock, err := a.lockSKU(ctx, sku)
	if err != nil {
		return out, err
	}
	defer unlock()
	s, err := NewStore(a.db).Get(ctx, sku)
	if err != nil {
		return out, err
	}
	for _, p := range s.Partitions {
		if p.State != "open" || p.Shard != id {
			continue
		}
		added, err := a.AddPartitions(ctx, sku, 1, nil)
		if err != nil {
			return out, err
		}
		out.Added = append(out.Added, added...)
		n, err := a.ClosePartition(ctx, sku, p.ID)
		if err != nil {
			return out, err
		}
		out.Closed = append(out.Closed, p.ID)
		out.Returned += n
	}
	return out, nil
}

// RemoveShard marks a drained shard removed. It refuses while an open
// partition lives there or a closed one still holds details not handed to
// write-back.
func (a *Allocator) RemoveShard(ctx context.Context, id string) error {
	rows, err := a.db.QueryContext(ctx, `SELECT sku, pid, epoch, state FROM partitions WHERE shard = ?`, id)
	if err != nil {
		return err
	}
	type row struct {
		sku, state string
		pid        int
		epoch      int64
	}
	var rs []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.sku, &r.pid, &r.epoch, &r.state); err != nil {
			rows.Close()
			return err
		}
		rs = append(rs, r)
	}
	rows.Close()
	for _, r := range rs {
		if r.state == "open" {
			return conflictf("shard %s still holds open partition %d of %s; drain it first", id, r.pid, r.sku)
		}
		if r.state == "fenced" {
			// What its stream still holds is inside its doubt: a dead
			// shard whose partitions were fenced (Heal) can be removed.
			continue
		}
		if p, err := a.shards.Partition(r.sku, r.pid, r.epoch, id); err == nil {
			st, err := p.Inspect(ctx)
			if err != nil {
				return conflictf("shard %s: cannot check partition %d of %s for details not yet written back: %v", id, r.pid, r.sku, err)
			}
			if st.Backlog > 0 {
				return conflictf("shard %s: partition %d of %s still has %d stream entries to write back", id, r.pid, r.sku, st.Backlog)
			}
		}
	}
	return NewStore(a.db).SetShardState(ctx, id, "removed")
}

// lockSKU serializes rebalancing of one SKU across nodes.
func (a *Allocator) lockSKU(ctx context.Context, sku string) (func(), error) {
	conn, err := a.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	// Lock names are at most 64 characters in MySQL, and MariaDB
	// documents them as case-insensitive: a hex hash of the exact bytes
	// keeps adv-x and ADV-X (two SKUs) on two locks.
	sum := sha256.Sum256([]byte(sku))
	name := "stockd_rebalance:" + hex.EncodeToString(sum[:16])
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, `SELECT GET_LOCK(?, 30)`, name).Scan(&got); err != nil {
		conn.Close()
		return nil, err
	}
	if !got.Valid || got.Int64 != 1 {
		conn.Close()
		return nil, conflictf("another rebalance of %s is running", sku)
	}
	return func() {
		conn.ExecContext(context.WithoutCancel(ctx), `SELECT RELEASE_LOCK(?)`, name)
		conn.Close()
	}, nil
}

func activeShards(ctx context.Context, tx *sql.Tx, want []string) ([]string, error) {
	active, err := queryStrings(ctx, tx, `SELECT id FROM shards WHERE state = 'active' ORDER BY id`)
	if err != nil {
		return nil, err
	}
	if len(want) == 0 {
		if len(active) == 0 {
			return nil, conflictf("no active shard")
		}
		return active, nil
	}
	for _, w := range want {
		if !contains(active, w) {
			return nil, invalidf("shard: %s is not an active shard", w)
		}
	}
	return want, nil
}

// shardLoad counts, per shard, the SKU's open partitions and all open ones.
func shardLoad(ctx context.Context, tx *sql.Tx, sku string) (map[string][2]int, error) {
	rows, err := tx.QueryContext(ctx,
		`SELECT shard, SUM(sku = ?), COUNT(*) FROM partitions WHERE state = 'open' GROUP BY shard`, sku)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][2]int{}
	for rows.Next() {
		var id string
		var mine, all int
		if err := rows.Scan(&id, &mine, &all); err != nil {
			return nil, err
		}
		out[id] = [2]int{mine, all}
	}
	return out, rows.Err()
}

func leastLoaded(shards []string, load map[string][2]int) string {
	best := shards[0]
	for _, s := range shards[1:] {
		l, b := load[s], load[best]
		if l[0] < b[0] || (l[0] == b[0] && l[1] < b[1]) {
			best = s
		}
	}
	return best
}

func shardStates(ctx context.Context, db *sql.DB) (map[string]string, error) {
	rows, err := db.QueryContext(ctx, `SELECT id, state FROM shards`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, st string
		if err := rows.Scan(&id, &st); err != nil {
			return nil, err
		}
		out[id] = st
	}
	return out, rows.Err()
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
