package preallocate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/stockd/stockd/shard"
)

// Self-healing (DESIGN.md invariant 8). A fenced partition never sells
// again, so a SKU whose partitions were all fenced (its shards restarted
// empty) would hold its pool forever. Heal, run by the SKU's owner, keeps
// the number of open partitions at the SKU's target (skus.target_partitions,
// set by create and by rebalance to a count): it opens a replacement for
// each one missing, through AddPartitions (new pid, generation and epoch,
// Ensure, TopUp), under the SKU's rebalance lock, so it serialises with
// admin rebalances and with a second owner during a membership change.
//
// A partition leaves in one of three ways, which name the replacement:
//   - fenced: a take, fill, drain, inspect or load found its Redis state
//     lost or rolled back (fence.go); it is fenced already.
//   - unreachable: its shard did not answer this node for replace_after.
//     Heal fences it: MySQL holds its units in doubt (they may still be
//     sold there by a node that reaches the shard, until that node reloads
//     the SKU, or Redis says fenced, MarkFenced), and the version bump makes
//     every node stop choosing it.
//   - removed: its shard is removed in MySQL. Drained and closed (units
//     back to the pool) after its replacement opened when the shard
//     answers, fenced when it does not.
//
// The fenced partition stays as fencing leaves it: a home for retries, its
// doubt settled by landing details, confirms and releases, and resolved
// after the reservation TTL.

// Replacement reasons, the reason label of
// stockd_preallocate_partitions_replaced_total.
const (
	ReasonFenced      Reason = "fenced"      // found lost or rolled back (Fence's own reasons)
	ReasonUnreachable Reason = "unreachable" // its shard did not answer for replace_after
	ReasonRemoved     Reason = "removed"     // its shard was removed
)

// ErrNoHealthyShard means a SKU is short of partitions and no active shard
// answers this node to open them on.
var ErrNoHealthyShard = errors.New("no healthy active shard")

// recentFence is how long a shard where a SKU's partition was fenced is
// avoided for that SKU's replacements, when another shard answers: a shard
// that just lost its data may do it again.
const recentFence = 10 * time.Minute

// ShardView is the shards as the healing node sees them.
type ShardView struct {
	// Gone are the shards given up on: unreachable for replace_after.
	Gone map[string]bool
	// Up are the shards that answered the healer just now; nil means
	// each shard's health flag.
	Up map[string]bool
}

func (v ShardView) up(sh *shard.Shard) bool {
	if v.Gone[sh.ID] {
		return false
	}
	if v.Up == nil {
		return sh.Healthy()
	}
	return v.Up[sh.ID]
}

// Replacement is one partition opened in place of one that left.
type Replacement struct {
	SKU      string `json:"sku"`
	Old      int    `json:"old"` // -1: none to name (the count was short)
	OldShard string `json:"old_shard,omitempty"`
	New      int    `json:"new"`
	Shard    string `json:"shard"`
	Reason   Reason `json:"reason"`
}

// HealCandidates lists the SKUs Heal has work for: fewer open partitions
// than their target, or open partitions on a shard in gone (unreachable
// past replace_after on this node) or removed.
func (a *Allocator) HealCandidates(ctx context.Context, gone []string) ([]string, error) {
	q := `SELECT s.sku FROM skus s LEFT JOIN partitions p ON p.sku = s.sku AND p.state = 'open'
	       GROUP BY s.sku, s.target_partitions HAVING COUNT(p.pid) < s.target_partitions
	      UNION
	      SELECT DISTINCT p.sku FROM partitions p JOIN shards sh ON sh.id = p.shard
	       WHERE p.state = 'open' AND (sh.state = 'removed'`
	args := make([]any, 0, len(gone))
	if len(gone) > 0 {
		q += ` OR p.shard IN (?` + strings.Repeat(`, ?`, len(gone)-1) + `)`
		for _, g := range gone {
			args = append(args, g)
		}
	}
	out, err := queryStrings(ctx, a.db, q+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("heal candidates: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// Heal brings sku back to its target of open partitions on shards that
// answer: partitions on shards view.Gone (or removed) leave first, the
// others are checked for lost state (Ensure), then one partition is added
// for each one missing, on the active shards that answer (those where none
// of the SKU's partitions was fenced lately, when there are any), and
// filled from the pool. It returns what it replaced.
func (a *Allocator) Heal(ctx context.Context, name string, view ShardView) ([]Replacement, error) {
	unlock, err := a.lockSKU(ctx, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	store := NewStore(a.db)
	sku, err := store.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	states, err := shardStates(ctx, a.db)
	if err != nil {
		return nil, err
	}
	healthy := a.answering(states, view)
	if len(healthy) == 0 {
		// Nothing to move to: fencing now would only turn units that may
		// come back with their shard into doubt.
		return nil, fmt.Errorf("%w to replace partitions of %s on", ErrNoHealthyShard, name)
	}
	leaving, closing := a.leave(ctx, sku, states, view)
	// Find every other loss now (Ensure fences open partitions whose state
	// is gone), so that one generation replaces them all rather than one
	// per loss a take happens to meet.
	if sku, err = store.Get(ctx, name); err != nil {
		return nil, err
	}
	if _, err := a.Ensure(ctx, sku); err != nil {
		a.logger.Warn("heal: check the open partitions", "sku", name, "err", err)
	}
	if sku, err = store.Get(ctx, name); err != nil {
		return nil, err
	}
	open := 0
	for _, p := range sku.Partitions {
		if p.State == "open" {
			open++
		}
	}
	missing := sku.Target - (open - len(closing))
	var reps []Replacement
	if missing > 0 {
		added, err := a.AddPartitions(ctx, name, missing, preferred(sku, healthy, view.Gone))
		if err != nil {
			return nil, fmt.Errorf("replace partitions of %s: %w", name, err)
		}
		reps = a.record(ctx, name, added, replaced(sku, leaving, missing))
	}
	for _, p := range closing {
		if _, err := a.ClosePartition(ctx, name, p.ID); err != nil {
			return reps, fmt.Errorf("close partition %d of %s on a removed shard: %w", p.ID, name, err)
		}
	}
	return reps, nil
}

// answering lists the active shards that answer this node and are not
// given up on.
func (a *Allocator) answering(states map[string]string, view ShardView) []string {
	var out []string
	for id, st := range states {
		if st != "active" {
			continue
		}
		// Answering the healer, and healthy for the requests too (a
		// shard waiting for its durability check answers pings).
		if sh, err := a.shards.Get(id); err == nil && view.up(sh) && sh.Healthy() {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// leave takes sku's open partitions off shards that are gone or removed:
// it fences those it cannot drain (their shard does not answer) and
// returns them, with their reasons, and the partitions to close once their
// replacements are open.
func (a *Allocator) leave(ctx context.Context, sku SKU, states map[string]string, view ShardView) ([]Replacement, []Partition) {
	var leaving []Replacement
	var closing []Partition
	for _, p := range sku.Partitions {
		removed := states[p.Shard] == "removed"
		if p.State != "open" || (!removed && !view.Gone[p.Shard]) {
			continue
		}
		h, err := a.shards.Partition(sku.Name, p.ID, p.Epoch, p.Shard)
		if err != nil {
			a.logger.Warn("partition on a shard this node does not connect left open", "sku", sku.Name, "pid", p.ID, "shard", p.Shard, "err", err)
			continue
		}
		if removed && view.up(h.Shard) {
			closing = append(closing, p)
			continue
		}
		reason := ReasonUnreachable
		if removed {
			reason = ReasonRemoved
		}
		a.Fence(ctx, h, reason)
		leaving = append(leaving, Replacement{SKU: sku.Name, Old: p.ID, OldShard: p.Shard, Reason: reason})
	}
	for _, p := range closing {
		leaving = append(leaving, Replacement{SKU: sku.Name, Old: p.ID, OldShard: p.Shard, Reason: ReasonRemoved})
	}
	return leaving, closing
}

// preferred are the shards replacements go to: the healthy ones where the
// SKU had no partition fenced lately, or all the healthy ones if that
// leaves none (one shard, or every shard restarted).
func preferred(sku SKU, healthy []string, gone map[string]bool) []string {
	avoid := map[string]bool{}
	for id := range gone {
		avoid[id] = true
	}
	for _, p := range sku.Partitions {
		if p.State == "fenced" && time.Since(p.FencedAt) < recentFence {
			avoid[p.Shard] = true
		}
	}
	var out []string
	for _, id := range healthy {
		if !avoid[id] {
			out = append(out, id)
		}
	}
	if len(out) == 0 {
		return healthy
	}
	return out
}

// replaced names the n partitions being replaced: those leaving now, then
// the SKU's fenced partitions, most recently fenced first.
func replaced(sku SKU, leaving []Replacement, n int) []Replacement {
	out := append([]Replacement(nil), leaving...)
	var fenced []Partition
	for _, p := range sku.Partitions {
		if p.State == "fenced" {
			fenced = append(fenced, p)
		}
	}
	sort.SliceStable(fenced, func(i, j int) bool { return fenced[i].FencedAt.After(fenced[j].FencedAt) })
	for _, p := range fenced {
		if len(out) >= n {
			break
		}
		named := false
		for _, l := range leaving {
			named = named || l.Old == p.ID
		}
		if !named {
			out = append(out, Replacement{SKU: sku.Name, Old: p.ID, OldShard: p.Shard, Reason: ReasonFenced})
		}
	}
	for len(out) < n {
		out = append(out, Replacement{SKU: sku.Name, Old: -1, Reason: ReasonFenced})
	}
	return out[:n]
}

// record pairs the added partitions with the ones they replace, logs and
// counts each replacement.
func (a *Allocator) record(ctx context.Context, name string, added []int, olds []Replacement) []Replacement {
	shardOf := map[int]string{}
	if sku, err := NewStore(a.db).Get(ctx, name); err == nil {
		for _, p := range sku.Partitions {
			shardOf[p.ID] = p.Shard
		}
	}
	reps := make([]Replacement, 0, len(added))
	for i, pid := range added {
		r := olds[i]
		r.New, r.Shard = pid, shardOf[pid]
		reps = append(reps, r)
		a.replacements.WithLabelValues(string(r.Reason)).Inc()
		a.logger.Info("partition replaced", "sku", name, "old_pid", r.Old, "old_shard", r.OldShard,
			"new_pid", r.New, "shard", r.Shard, "reason", r.Reason)
	}
	return reps
}

// MarkFenced sets st = fenced in Redis for every partition on shard that
// MySQL holds fenced and whose state is still there with its epoch. A
// partition fenced while its shard did not answer (replace_after) is still
// open in that shard's Redis; a take there (a retry homed on it, a node
// that has not reloaded) would sell. Every node runs it when it sees a
// shard answer again, and Ensure does it for a loaded SKU.
func (a *Allocator) MarkFenced(ctx context.Context, shardID string) error {
	rows, err := a.db.QueryContext(ctx, `SELECT sku, pid, epoch FROM partitions WHERE shard = ? AND state = 'fenced'`, shardID)
	if err != nil {
		return fmt.Errorf("mark fenced: %w", err)
	}
	type row struct {
		sku   string
		pid   int
		epoch int64
	}
	var rs []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.sku, &r.pid, &r.epoch); err != nil {
			rows.Close()
			return fmt.Errorf("mark fenced: %w", err)
		}
		rs = append(rs, r)
	}
	rows.Close()
	var errs []error
	for _, r := range rs {
		h, err := a.shards.Partition(r.sku, r.pid, r.epoch, shardID)
		if err == nil {
			err = setFenced(ctx, h)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("partition %d of %s: %w", r.pid, r.sku, err))
		}
	}
	return errors.Join(errs...)
}

// markFenced is MarkFenced for one SKU's fenced partitions on shards that
// answer (at load).
func (a *Allocator) markFenced(ctx context.Context, sku SKU) {
	for _, rp := range sku.Partitions {
		if rp.State != "fenced" {
			continue
		}
		p, err := a.shards.Partition(sku.Name, rp.ID, rp.Epoch, rp.Shard)
		if err != nil || !p.Shard.Healthy() {
			continue
		}
		if err := setFenced(ctx, p); err != nil {
			a.logger.Warn("mark partition fenced in redis", "sku", sku.Name, "pid", rp.ID, "shard", rp.Shard, "err", err)
		}
	}
}

// setFenced sets st = fenced in p's Redis state if it is there with p's
// epoch. Bounded in time: the shard may be the one that does not answer,
// and a read is retried until its context ends.
func setFenced(ctx context.Context, p *shard.Partition) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return p.SetStatus(ctx, "fenced")
}
