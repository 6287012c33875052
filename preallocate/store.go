package preallocate

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/sqltx"
)

var (
	// ErrArchived is returned for a SKU that was archived: to everything
	// but the archive's own view it does not exist (it is a
	// stockd.ErrUnknownSKU), and its name is not reused.
	ErrArchived = fmt.Errorf("%w (archived)", stockd.ErrUnknownSKU)
	// ErrConflict is returned for a change the current state does not allow.
	ErrConflict = errors.New("conflict")
	// ErrInvalid is returned for parameters that do not fit together.
	ErrInvalid = errors.New("invalid")
)

// kindError carries a message and the sentinel it is an instance of, so
// that callers decide with errors.Is and show the message alone.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

func conflictf(format string, args ...any) error {
	return &kindError{kind: ErrConflict, msg: fmt.Sprintf(format, args...)}
}

func invalidf(format string, args ...any) error {
	return &kindError{kind: ErrInvalid, msg: fmt.Sprintf(format, args...)}
}

// Spec is what an operator asks for a SKU. On creation a zero Partitions,
// Chunk or Threshold takes the default; on a restock it keeps the SKU's
// current value.
type Spec struct {
	Total      int64
	Partitions int
	Chunk      int64
	Threshold  int64
	// Sale rules: nil keeps the SKU's current value (none on creation).
	// A zero time clears a bound; a limit of 0 removes the limit.
	PerUserLimit      *int64
	OpensAt, ClosesAt *time.Time
}

// applyRules sets the rules spec gives on k and checks them together
// with those it keeps.
func (spec Spec) applyRules(k *SKU) error {
	if spec.PerUserLimit != nil {
		k.PerUserLimit = *spec.PerUserLimit
	}
	if spec.OpensAt != nil {
		k.OpensAt = *spec.OpensAt
	}
	if spec.ClosesAt != nil {
		k.ClosesAt = *spec.ClosesAt
	}
	if !k.OpensAt.IsZero() && !k.ClosesAt.IsZero() && !k.ClosesAt.After(k.OpensAt) {
		if spec.ClosesAt == nil {
			return invalidf("opens_at: must be before closes_at (%s)", k.ClosesAt.UTC().Format(time.RFC3339Nano))
		}
		return invalidf("closes_at: must be after opens_at (%s)", k.OpensAt.UTC().Format(time.RFC3339Nano))
	}
	return nil
}

// nullTime is t for MySQL: NULL when zero.
func nullTime(t time.Time) sql.NullTime {
	return sql.NullTime{Time: t.UTC(), Valid: !t.IsZero()}
}

// SKU is a SKU's row.
type SKU struct {
	Name       string
	Total      int64
	Pool       int64
	Reserved   int64
	Confirmed  int64
	Released   int64
	InDoubt    int64
	Doubled    int64
	Chunk      int64
	Threshold  int64
	Version    int64
	Target     int // open partitions to keep (PUT, rebalance to a count); Heal replaces fenced ones
	Partitions []Partition
	// ArchivedAt is when the SKU was archived (zero: live); only
	// GetArchived returns an archived SKU.
	ArchivedAt time.Time

	// Sale rules (0 and zero times: none); LimitShard holds the per-user
	// allowance (chosen when a limit is first set).
	PerUserLimit      int64
	OpensAt, ClosesAt time.Time
	LimitShard        string
}

// Partition is a partition's registry row.
type Partition struct {
	ID        int
	Shard     string
	Epoch     int64
	State     string // open, fenced, closed
	Gen       int    // the rebalance that added it (0: the first set)
	SeenSeq   int64  // highest detail sequence landed in MySQL
	CreatedAt time.Time
	ClosedAt  time.Time // zero while open
	FencedAt  time.Time // zero unless fenced
	// Doubt is a fenced partition's units still held in doubt (0 once
	// resolved, and for open or closed partitions).
	Doubt int64
}

// Store is the MySQL side of the catalog: SKUs, their pool and partitions.
type Store struct {
	db *sql.DB
}

// NewStore wraps db (already migrated).
func NewStore(db *sql.DB) *Store { return &Store{db: db} }

// Put creates the SKU, or restocks it when it exists: the difference
// between the new and the old total goes to (or comes from) the pool. It
// returns the row and whether it was created. defaults fill what spec
// leaves out on creation; shards are the shard ids new partitions are
// spread over.
func (s *Store) Put(ctx context.Context, name string, spec, defaults Spec, shards []string) (SKU, bool, error) {
	var out SKU
	created := false
	err := sqltx.Run(ctx, s.db, func(tx *sql.Tx) error {
		cur, err := getSKU(ctx, tx, name, true)
		switch {
		case errors.Is(err, ErrArchived):
			return conflictf("sku %s is archived: an archived name is not reused", name)
		case errors.Is(err, stockd.ErrUnknownSKU):
			if len(shards) == 0 {
				return conflictf("no shards configured")
			}
			created = true
			sp := spec
			if sp.Partitions == 0 {
				sp.Partitions = defaults.Partitions
			}
			if sp.Chunk == 0 {
				sp.Chunk = defaults.Chunk
				if sp.Threshold == 0 {
					sp.Threshold = defaults.Threshold
				}
			}
			if sp.Threshold == 0 {
				sp.Threshold = max(1, sp.Chunk/5)
			}
			if sp.Threshold > sp.Chunk {
				return invalidf("threshold: %d is above chunk %d", sp.Threshold, sp.Chunk)
			}
			var rules SKU
			if err := spec.applyRules(&rules); err != nil {
				return err
			}
			if rules.PerUserLimit > 0 {
				rules.LimitShard = limitShard(name, shards)
			}
			if _, err := tx.ExecContext(ctx,
				`INSERT INTO skus (sku, total, pool, chunk, threshold, target_partitions, per_user_limit, opens_at, closes_at, limit_shard)
				 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''))`,
				name, sp.Total, sp.Total, sp.Chunk, sp.Threshold, sp.Partitions,
				rules.PerUserLimit, nullTime(rules.OpensAt), nullTime(rules.ClosesAt), rules.LimitShard); err != nil {
				return fmt.Errorf("insert sku: %w", err)
			}
			off := spread(name, len(shards))
			for i := 0; i < sp.Partitions; i++ {
				if _, err := tx.ExecContext(ctx,
					`INSERT INTO partitions (sku, pid, shard, epoch) VALUES (?, ?, ?, ?)`,
					name, i, shards[(off+i)%len(shards)], NewEpoch()); err != nil {
					return fmt.Errorf("insert partition: %w", err)
				}
			}
		case err != nil:
			return err
		default:
			// The count asked for, not the open one: a fenced partition
			// not yet replaced must not make a restock that repeats the
			// count fail.
			if spec.Partitions != 0 && spec.Partitions != cur.Target {
				return conflictf("partitions: the SKU has %d; change the count with rebalance", cur.Target)
			}
			chunk, threshold := cur.Chunk, cur.Threshold
			if spec.Chunk != 0 {
				chunk = spec.Chunk
			}
			if spec.Threshold != 0 {
				threshold = spec.Threshold
			}
			if threshold > chunk {
				return invalidf("threshold: %d is above chunk %d", threshold, chunk)
			}
			delta := spec.Total - cur.Total
			if delta < 0 && cur.Pool < -delta {
				return conflictf("total: lowering it by %d needs that many unallocated units, the pool has %d", -delta, cur.Pool)
			}
			rules := cur
			if err := spec.applyRules(&rules); err != nil {
				return err
			}
			if rules.PerUserLimit > 0 && rules.LimitShard == "" {
				if len(shards) == 0 {
					return conflictf("per_user_limit: no active shard to hold the allowance")
				}
				rules.LimitShard = limitShard(name, shards)
			}
			if _, err := tx.ExecContext(ctx,
				`UPDATE skus SET total = total + ?, pool = pool + ?, chunk = ?, threshold = ?,
				        per_user_limit = ?, opens_at = ?, closes_at = ?, limit_shard = NULLIF(?, ''), version = version + 1 WHERE sku = ?`,
				delta, delta, chunk, threshold,
				rules.PerUserLimit, nullTime(rules.OpensAt), nullTime(rules.ClosesAt), rules.LimitShard, name); err != nil {
				return fmt.Errorf("restock: %w", err)
			}
		}
		out, err = getSKU(ctx, tx, name, false)
		return err
	})
	return out, created, err
}

// Get reads a SKU and its partitions.
func (s *Store) Get(ctx context.Context, name string) (SKU, error) {
	return getSKU(ctx, s.db, name, false)
}

// List reads every SKU with its partitions.
func (s *Store) List(ctx context.Context) ([]SKU, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT sku FROM skus WHERE archived_at IS NULL ORDER BY sku`)
	if err != nil {
		return nil, fmt.Errorf("list skus: %w", err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		names = append(names, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make([]SKU, 0, len(names))
	for _, n := range names {
		sku, err := s.Get(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, sku)
	}
	return out, nil
}

// Page reads up to limit SKUs whose names sort after after (all from the
// start when after is ""), in name order, with their partitions: two
// queries whatever the number of SKUs and partitions. more tells whether
// SKUs follow the page.
func (s *Store) Page(ctx context.Context, after string, limit int) (skus []SKU, more bool, err error) {
	rows, err := s.db.QueryContext(ctx,
		`SELECT sku, total, pool, reserved, confirmed, released, in_doubt, doubled, chunk, threshold, version, target_partitions,
		        per_user_limit, opens_at, closes_at, COALESCE(limit_shard, '')
		   FROM skus WHERE sku > ? AND archived_at IS NULL ORDER BY sku LIMIT ?`, after, limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("list skus: %w", err)
	}
	for rows.Next() {
		var k SKU
		var opens, closes sql.NullTime
		if err := rows.Scan(&k.Name, &k.Total, &k.Pool, &k.Reserved, &k.Confirmed, &k.Released, &k.InDoubt,
			&k.Doubled, &k.Chunk, &k.Threshold, &k.Version, &k.Target,
			&k.PerUserLimit, &opens, &closes, &k.LimitShard); err != nil {
			rows.Close()
			return nil, false, fmt.Errorf("list skus: %w", err)
		}
		k.OpensAt, k.ClosesAt = opens.Time, closes.Time
		skus = append(skus, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list skus: %w", err)
	}
	if len(skus) > limit {
		skus, more = skus[:limit], true
	}
	if len(skus) == 0 {
		return skus, more, nil
	}
	at := make(map[string]int, len(skus))
	for i, k := range skus {
		at[k.Name] = i
	}
	prow, err := s.db.QueryContext(ctx,
		`SELECT sku, pid, shard, epoch, state, gen, seen_seq, created_at, closed_at, fenced_at, doubt_units
		   FROM partitions WHERE sku > ? AND sku <= ? ORDER BY sku, pid`, after, skus[len(skus)-1].Name)
	if err != nil {
		return nil, false, fmt.Errorf("list partitions: %w", err)
	}
	defer prow.Close()
	for prow.Next() {
		var name string
		var p Partition
		var closed, fenced sql.NullTime
		if err := prow.Scan(&name, &p.ID, &p.Shard, &p.Epoch, &p.State, &p.Gen, &p.SeenSeq, &p.CreatedAt, &closed, &fenced, &p.Doubt); err != nil {
			return nil, false, fmt.Errorf("list partitions: %w", err)
		}
		p.ClosedAt, p.FencedAt = closed.Time, fenced.Time
		if i, ok := at[name]; ok {
			skus[i].Partitions = append(skus[i].Partitions, p)
		}
	}
	return skus, more, prow.Err()
}

// PoolState is what may still reach a SKU's partitions: the pool, and
// pending, the allocations committed but not yet settled. That is the units
// of pending fills plus one for each pending drain: a drain's amount is
// known only once Redis has run it, and until MySQL credits the pool those
// units are neither in a partition nor in the pool. A caller that saw only
// fills could answer sold_out while a drain (a rebalance, a consolidation
// of the tail) carries the last units back.
func (s *Store) PoolState(ctx context.Context, name string) (pool, pending int64, err error) {
	_, pool, pending, err = s.VersionedPoolState(ctx, name)
	return pool, pending, err
}

// VersionedPoolState is PoolState with the SKU's version, in one read:
// what a node needs to tell whether its sold-out verdict still holds.
func (s *Store) VersionedPoolState(ctx context.Context, name string) (version, pool, pending int64, err error) {
	err = s.db.QueryRowContext(ctx,
		`SELECT version, pool,
		        (SELECT COALESCE(SUM(CASE WHEN kind = 'fill' THEN qty ELSE 1 END), 0)
		           FROM allocations WHERE sku = ? AND state = 'pending' AND kind IN ('fill', 'drain'))
		   FROM skus WHERE sku = ?`, name, name).Scan(&version, &pool, &pending)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, 0, fmt.Errorf("%w: %s", stockd.ErrUnknownSKU, name)
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("pool state: %w", err)
	}
	return version, pool, pending, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// queryStrings runs a query of one string column and returns its rows'
// values, in the query's order.
func queryStrings(ctx context.Context, q querier, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// GetArchived reads a SKU, archived or not, and its partitions.
func (s *Store) GetArchived(ctx context.Context, name string) (SKU, error) {
	return readSKU(ctx, s.db, name, false, true)
}

// Archive marks a settled SKU archived: nothing reserved, in doubt or
// pending, no open partition. Its target goes to 0, so nothing heals it,
// and its version moves, so every node drops it. false: it was not
// settled (or is archived already).
func (s *Store) Archive(ctx context.Context, name string) (bool, error) {
	res, err := s.db.ExecContext(ctx,
		`UPDATE skus SET archived_at = NOW(6), target_partitions = 0, version = version + 1
		  WHERE sku = ? AND archived_at IS NULL AND reserved = 0 AND in_doubt = 0
		    AND NOT EXISTS (SELECT 1 FROM partitions WHERE sku = ? AND state = 'open')
		    AND NOT EXISTS (SELECT 1 FROM allocations WHERE sku = ? AND state = 'pending')`, name, name, name)
	if err != nil {
		return false, fmt.Errorf("archive sku: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// Untarget sets a SKU's partition target to 0 before its partitions are
// closed for an archive, so that nothing replaces them meanwhile.
func (s *Store) Untarget(ctx context.Context, name string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE skus SET target_partitions = 0 WHERE sku = ?`, name); err != nil {
		return fmt.Errorf("untarget sku: %w", err)
	}
	return nil
}

func getSKU(ctx context.Context, q querier, name string, forUpdate bool) (SKU, error) {
	return readSKU(ctx, q, name, forUpdate, false)
}

// readSKU reads a SKU and its partitions; an archived one is ErrArchived
// unless archived is set.
func readSKU(ctx context.Context, q querier, name string, forUpdate, archived bool) (SKU, error) {
	query := `SELECT sku, total, pool, reserved, confirmed, released, in_doubt, doubled, chunk, threshold, version, target_partitions, archived_at,
	                 per_user_limit, opens_at, closes_at, COALESCE(limit_shard, '')
	            FROM skus WHERE sku = ?`
	if forUpdate {
		query += " FOR UPDATE"
	}
	var k SKU
	var at, opens, closes sql.NullTime
	err := q.QueryRowContext(ctx, query, name).Scan(&k.Name, &k.Total, &k.Pool, &k.Reserved, &k.Confirmed,
		&k.Released, &k.InDoubt, &k.Doubled, &k.Chunk, &k.Threshold, &k.Version, &k.Target, &at,
		&k.PerUserLimit, &opens, &closes, &k.LimitShard)
	if opens.Valid {
		k.OpensAt = opens.Time
	}
	if closes.Valid {
		k.ClosesAt = closes.Time
	}
	if errors.Is(err, sql.ErrNoRows) {
		return SKU{}, fmt.Errorf("%w: %s", stockd.ErrUnknownSKU, name)
	}
	if err != nil {
		return SKU{}, fmt.Errorf("read sku: %w", err)
	}
	if k.ArchivedAt = at.Time; at.Valid && !archived {
		return SKU{}, fmt.Errorf("%w: %s", ErrArchived, name)
	}
	rows, err := q.QueryContext(ctx, `SELECT pid, shard, epoch, state, gen, seen_seq, created_at, closed_at, fenced_at, doubt_units FROM partitions WHERE sku = ? ORDER BY pid`, name)
	if err != nil {
		return SKU{}, fmt.Errorf("read partitions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var p Partition
		var closed, fenced sql.NullTime
		if err := rows.Scan(&p.ID, &p.Shard, &p.Epoch, &p.State, &p.Gen, &p.SeenSeq, &p.CreatedAt, &closed, &fenced, &p.Doubt); err != nil {
			return SKU{}, fmt.Errorf("read partitions: %w", err)
		}
		p.ClosedAt, p.FencedAt = closed.Time, fenced.Time
		k.Partitions = append(k.Partitions, p)
	}
	return k, rows.Err()
}

// NewEpoch returns a random positive epoch; a partition whose Redis state
// carries another epoch (or none) lost its data.
func NewEpoch() int64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return int64(binary.BigEndian.Uint64(b[:])>>1) | 1
}

// limitShard is the shard that holds a SKU's per-user allowance: one of
// the active shards, spread by name like partitions. It is recorded once
// (skus.limit_shard) and kept, so that later shard changes do not move it.
func limitShard(name string, shards []string) string {
	if len(shards) == 0 {
		return ""
	}
	return shards[spread(name+":allow", len(shards))]
}

// spread picks where a SKU's partitions start on the shard list, so that
// SKUs do not all put partition 0 on the same shard.
func spread(name string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(name))
	return int(h.Sum32() % uint32(n))
}

// Head is the part of a SKU's row that tells whether a node's registry is
// stale: its version (bumped by restock and partition changes) and pool.
type Head struct {
	Version int64
	Pool    int64
	InDoubt int64
}

// Heads reads every SKU's head in one query.
func (s *Store) Heads(ctx context.Context) (map[string]Head, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT sku, version, pool, in_doubt FROM skus WHERE archived_at IS NULL`)
	if err != nil {
		return nil, fmt.Errorf("sku heads: %w", err)
	}
	defer rows.Close()
	out := map[string]Head{}
	for rows.Next() {
		var n string
		var h Head
		if err := rows.Scan(&n, &h.Version, &h.Pool, &h.InDoubt); err != nil {
			return nil, fmt.Errorf("sku heads: %w", err)
		}
		out[n] = h
	}
	return out, rows.Err()
}

// ShardRow is a Redis shard as MySQL records it.
type ShardRow struct {
	ID    string
	Addr  string
	State string // active, draining, removed
}

// SeedShards records the configured shards (id to address): new ones are
// added active. A recorded shard keeps its address while the configured
// one is the one seen last, so restarting a node does not undo an admin
// failover (PUT /admin/shards/{id}); a configured address that changed
// is a failover done by config and replaces the recorded one. A removed
// shard stays removed.
func (s *Store) SeedShards(ctx context.Context, shards map[string]string) error {
	for id, addr := range shards {
		// MySQL applies the assignments in order: addr is decided against
		// the config_addr recorded before this statement.
		if _, err := s.db.ExecContext(ctx, `INSERT INTO shards (id, addr, config_addr) VALUES (?, ?, ?)
ON DUPLICATE KEY UPDATE
  addr = IF(config_addr <=> VALUES(config_addr), addr, VALUES(addr)),
  config_addr = VALUES(config_addr)`, id, addr, addr); err != nil {
			return fmt.Errorf("seed shards: %w", err)
		}
	}
	return nil
}

// SeenSeq is the highest detail sequence of an open partition that landed
// in MySQL.
type SeenSeq struct {
	SKU   string
	PID   int
	Epoch int64
	Seq   int64
}

// SeenSeqs lists seen_seq of every open partition that has one.
func (s *Store) SeenSeqs(ctx context.Context) ([]SeenSeq, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT sku, pid, epoch, seen_seq FROM partitions WHERE state = 'open' AND seen_seq > 0`)
	if err != nil {
		return nil, fmt.Errorf("seen sequences: %w", err)
	}
	defer rows.Close()
	var out []SeenSeq
	for rows.Next() {
		var r SeenSeq
		if err := rows.Scan(&r.SKU, &r.PID, &r.Epoch, &r.Seq); err != nil {
			return nil, fmt.Errorf("seen sequences: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Shards lists every recorded shard.
func (s *Store) Shards(ctx context.Context) ([]ShardRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, addr, state FROM shards ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("shards: %w", err)
	}
	defer rows.Close()
	var out []ShardRow
	for rows.Next() {
		var r ShardRow
		if err := rows.Scan(&r.ID, &r.Addr, &r.State); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// AddShard records a new shard (active). Adding an id that exists with the
// same address is a no-op; another address is a conflict.
func (s *Store) AddShard(ctx context.Context, id, addr string) error {
	return sqltx.Run(ctx, s.db, func(tx *sql.Tx) error {
		var cur, state string
		err := tx.QueryRowContext(ctx, `SELECT addr, state FROM shards WHERE id = ? FOR UPDATE`, id).Scan(&cur, &state)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO shards (id, addr) VALUES (?, ?)`, id, addr)
			return err
		case err != nil:
			return err
		case cur != addr:
			return conflictf("shard %s: already recorded at %s", id, cur)
		case state == "removed":
			return conflictf("shard %s: was removed; use a new id", id)
		}
		return nil
	})
}

// SetShardAddr records a shard's new address (a failover).
func (s *Store) SetShardAddr(ctx context.Context, id, addr string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE shards SET addr = ? WHERE id = ? AND state <> 'removed'`, addr, id)
	if err != nil {
		return fmt.Errorf("shard addr: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var addrNow string
		if err := s.db.QueryRowContext(ctx, `SELECT addr FROM shards WHERE id = ? AND state <> 'removed'`, id).Scan(&addrNow); err != nil {
			return &kindError{kind: stockd.ErrUnknownShard, msg: "unknown shard " + id}
		}
	}
	return nil
}

// SetShardState moves a shard to state (active, draining, removed).
func (s *Store) SetShardState(ctx context.Context, id, state string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE shards SET state = ? WHERE id = ?`, state, id)
	if err != nil {
		return fmt.Errorf("shard state: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var exists int
		s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM shards WHERE id = ?`, id).Scan(&exists)
		if exists == 0 {
			return &kindError{kind: stockd.ErrUnknownShard, msg: "unknown shard " + id}
		}
	}
	return nil
}
