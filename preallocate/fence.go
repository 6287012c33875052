package preallocate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/sqltx"
	"github.com/stockd/stockd/shard"
)

// Fencing (DESIGN.md invariant 6). A partition whose Redis state vanished,
// or came back older than what was already seen of it, cannot be trusted:
// what it sold since its last detail that reached MySQL is unknown. It is
// fenced: it never sells or refills again, and the units that may have
// been sold there are held in_doubt, never re-sold:
//
//	in_doubt = units filled into it − units drained from it
//	           − units of its details in MySQL (and of its undone doubles)
//
// Each later fact resolves some of them: a detail of it that still reaches
// MySQL moves its units to reserved; a reservation of it confirmed or
// released by id moves them to confirmed or back to the pool. Once the
// reservation TTL has passed since the fence, no unresolved reservation
// can still be confirmed (it would have expired), so the rest returns to
// the pool; a detail that lands after that lands released.

// Reason names why a partition was fenced.
type Reason string

// Fence reasons.
const (
	ReasonLost     Reason = "lost"     // state missing or of another epoch
	ReasonRollback Reason = "rollback" // sequence lower than already seen
)

// Fence fences p for reason and holds its unaccounted units in doubt. It is
// idempotent: a partition already fenced or closed is left alone.
func (a *Allocator) Fence(ctx context.Context, p *shard.Partition, reason Reason) {
	a.logger.Error("fencing partition: its redis state cannot be trusted", "sku", p.SKU, "pid", p.ID,
		"shard", p.Shard.ID, "reason", reason)
	var doubt int64
	fenced, already := false, false
	err := sqltx.Run(ctx, a.db, func(tx *sql.Tx) error {
		doubt, fenced, already = 0, false, false
		var state string
		err := tx.QueryRowContext(ctx, `SELECT state FROM partitions WHERE sku = ? AND pid = ? AND epoch = ? FOR UPDATE`,
			p.SKU, p.ID, p.Epoch).Scan(&state)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && state != "open") {
			already = state == "fenced"
			return nil
		}
		if err != nil {
			return err
		}
		// A drain of it still pending may have taken units out of Redis
		// already; they cannot be read back now, so they count in doubt
		// like the rest, and the drain is settled at 0 (else the sweep
		// would also credit them to the pool).
		if _, err := tx.ExecContext(ctx,
			`UPDATE allocations SET state = 'applied', qty = 0 WHERE sku = ? AND pid = ? AND epoch = ? AND kind = 'drain' AND state = 'pending'`,
			p.SKU, p.ID, p.Epoch); err != nil {
			return err
		}
		var in, out, sold, doubled int64
		if err := tx.QueryRowContext(ctx,
			`SELECT COALESCE(SUM(CASE WHEN kind = 'fill' THEN qty END), 0), COALESCE(SUM(CASE WHEN kind = 'drain' THEN qty END), 0)
			   FROM allocations WHERE sku = ? AND pid = ? AND epoch = ? AND state = 'applied'`,
			p.SKU, p.ID, p.Epoch).Scan(&in, &out); err != nil {
			return err
		}
		prefix := stockd.DetailPrefix(p.SKU, p.ID, p.Epoch)
		if err := tx.QueryRowContext(ctx,
			`SELECT COALESCE(SUM(qty), 0) FROM deductions WHERE detail_id LIKE ?`, likePrefix(prefix)).Scan(&sold); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx,
			`SELECT COALESCE(SUM(qty), 0) FROM doubled_deductions WHERE detail_id LIKE ?`, likePrefix(prefix)).Scan(&doubled); err != nil {
			return err
		}
		doubt = max(in-out-sold-doubled, 0)
		if _, err := tx.ExecContext(ctx,
			`UPDATE partitions SET state = 'fenced', fenced_at = NOW(6), doubt_units = ? WHERE sku = ? AND pid = ? AND epoch = ?`,
			doubt, p.SKU, p.ID, p.Epoch); err != nil {
			return err
		}
		// The version bump makes every node reload the SKU and stop
		// choosing the partition.
		_, err = tx.ExecContext(ctx, `UPDATE skus SET in_doubt = in_doubt + ?, version = version + 1 WHERE sku = ?`, doubt, p.SKU)
		fenced = err == nil
		return err
	})
	if err != nil {
		a.logger.Error("fence partition", "sku", p.SKU, "pid", p.ID, "err", err)
	}
	if fenced {
		a.logger.Error("partition fenced; units held in doubt", "sku", p.SKU, "pid", p.ID, "in_doubt", doubt, "reason", reason)
	}
	// On a shard that does not answer it would only wait out its timeout
	// (Heal fences there); MarkFenced does it when the shard is back.
	if (fenced || already) && p.Shard.Healthy() {
		// Best effort, and again by whichever node finds it fenced in MySQL
		// but open in Redis: Redis refuses takes and refills on it too, so
		// a node that has not heard yet cannot sell there.
		if err := setFenced(ctx, p); err != nil {
			a.logger.Warn("mark partition fenced in redis", "sku", p.SKU, "pid", p.ID, "err", err)
		}
	}
	if a.hooks.OnLost != nil {
		a.hooks.OnLost(p.SKU, p.ID)
	}
}

// lost fences p whose Redis state is gone, unless it never held stock: a
// partition a rebalance just added may be seen before its state is
// created, and then its state is simply created.
func (a *Allocator) lost(ctx context.Context, p *shard.Partition) {
	var fills int
	var thr int64
	err := a.db.QueryRowContext(ctx,
		`SELECT (SELECT COUNT(*) FROM allocations WHERE sku = ? AND pid = ? AND epoch = ? AND kind = 'fill' AND state IN ('applied','pending')),
		        (SELECT threshold FROM skus WHERE sku = ?)`, p.SKU, p.ID, p.Epoch, p.SKU).Scan(&fills, &thr)
	if err == nil && fills == 0 {
		if code, err := p.Init(ctx, thr, true); err == nil && (code == shard.InitCreated || code == shard.InitPresent) {
			return
		}
	}
	a.Fence(ctx, p, ReasonLost)
}

func likePrefix(s string) string {
	out := make([]byte, 0, len(s)+1)
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '_' || s[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(append(out, '%'))
}

// Doubt is one fenced partition's doubt.
type Doubt struct {
	SKU        string    `json:"sku"`
	Partition  int       `json:"partition"`
	Shard      string    `json:"shard"`
	Units      int64     `json:"units"`
	FencedAt   time.Time `json:"fenced_at"`
	ResolvesAt time.Time `json:"resolves_at"`
	Resolved   bool      `json:"resolved"`
}

// Doubts lists the fenced partitions of sku (all SKUs when sku is "").
func (a *Allocator) Doubts(ctx context.Context, sku string, ttl time.Duration) ([]Doubt, error) {
	q := `SELECT sku, pid, shard, doubt_units, fenced_at, doubt_resolved_at IS NOT NULL FROM partitions WHERE state = 'fenced'`
	var args []any
	if sku != "" {
		q += ` AND sku = ?`
		args = append(args, sku)
	}
	rows, err := a.db.QueryContext(ctx, q+` ORDER BY sku, pid`, args...)
	if err != nil {
		return nil, fmt.Errorf("doubts: %w", err)
	}
	defer rows.Close()
	out := []Doubt{}
	for rows.Next() {
		var d Doubt
		var at sql.NullTime
		if err := rows.Scan(&d.SKU, &d.Partition, &d.Shard, &d.Units, &at, &d.Resolved); err != nil {
			return nil, err
		}
		d.FencedAt = at.Time
		d.ResolvesAt = at.Time.Add(ttl)
		out = append(out, d)
	}
	return out, rows.Err()
}

// DoubtsDue lists the SKUs with a fenced partition whose doubt is open and
// which was fenced before cutoff: one read of the index open_doubt for the
// whole catalog, so that the periodic resolution costs MySQL nothing for
// the SKUs that have none (ResolveDoubts then runs for these only).
func (a *Allocator) DoubtsDue(ctx context.Context, cutoff time.Time) ([]string, error) {
	out, err := queryStrings(ctx, a.db, `SELECT DISTINCT sku FROM partitions FORCE INDEX (open_doubt)
WHERE state = 'fenced' AND doubt_resolved_at IS NULL AND fenced_at < ?`, sqltx.Time(cutoff))
	if err != nil {
		return nil, fmt.Errorf("doubts due: %w", err)
	}
	return out, nil
}

// ResolveDoubts returns to the pool the doubt of sku's fenced partitions
// fenced before cutoff (every one when force), and returns the units.
func (a *Allocator) ResolveDoubts(ctx context.Context, sku string, cutoff time.Time, force bool) (int64, error) {
	var total int64
	err := sqltx.Run(ctx, a.db, func(tx *sql.Tx) error {
		total = 0
		q := `SELECT pid, epoch, doubt_units FROM partitions
		       WHERE sku = ? AND state = 'fenced' AND doubt_resolved_at IS NULL`
		args := []any{sku}
		if !force {
			q += ` AND fenced_at < ?`
			args = append(args, sqltx.Time(cutoff))
		}
		rows, err := tx.QueryContext(ctx, q+` FOR UPDATE`, args...)
		if err != nil {
			return err
		}
		type due struct {
			pid   int
			epoch int64
			units int64
		}
		var ds []due
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.pid, &d.epoch, &d.units); err != nil {
				rows.Close()
				return err
			}
			ds = append(ds, d)
		}
		rows.Close()
		for _, d := range ds {
			if _, err := tx.ExecContext(ctx,
				`UPDATE partitions SET doubt_units = 0, doubt_resolved_at = NOW(6) WHERE sku = ? AND pid = ? AND epoch = ?`,
				sku, d.pid, d.epoch); err != nil {
				return err
			}
			total += d.units
		}
		if len(ds) == 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, `UPDATE skus SET in_doubt = in_doubt - ?, pool = pool + ?, version = version + 1 WHERE sku = ?`,
			total, total, sku)
		return err
	})
	if err == nil && total > 0 {
		a.logger.Warn("in-doubt units returned to the pool", "sku", sku, "units", total, "forced", force)
	}
	return total, err
}
