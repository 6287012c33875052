// Package preallocate moves stock between the MySQL pool and partitions.
//
// A fill takes min(chunk, pool) units out of the pool in a MySQL transaction
// that also writes a pending allocation row, then injects them into a
// partition's idle sub-domain with the refill script, idempotently by
// allocation id, then marks the row applied. A drain goes the other way: a
// pending drain row first, then the drain script (idempotent by drain id,
// it records the amount it took), then the amount back to the pool. A crash
// between the steps leaves a pending row that ApplyPending finishes; a
// refill that Redis refuses for good (partition lost, closed or full) is
// voided and its units go back to the pool.
package preallocate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/sqltx"
	"github.com/stockd/stockd/shard"
)

// Config tunes the allocator.
type Config struct {
	// Workers run refills in the background, in parallel.
	Workers int `yaml:"workers"`
	// Queue bounds the refills waiting for a worker; a request beyond it is
	// dropped and asked again by the next deduction that sees the level low.
	Queue int `yaml:"queue"`
	// PendingEvery is how often pending allocation rows (a crash between
	// MySQL and Redis) are looked for and finished.
	PendingEvery time.Duration `yaml:"pending_every"`
	// PendingAge is how old a pending row must be before it is finished by
	// the sweep rather than by the worker that wrote it.
	PendingAge time.Duration `yaml:"pending_age"`
	// ReplaceAfter is how long a shard may stay unreachable (as the owner
	// of a SKU sees it) before the SKU's open partitions there are fenced,
	// their units held in doubt, and replaced on shards that answer. 0:
	// never give up on an unreachable shard (partitions found lost are
	// still replaced).
	ReplaceAfter time.Duration `yaml:"replace_after"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{Workers: 4, Queue: 1024, PendingEvery: 5 * time.Second, PendingAge: 3 * time.Second,
		ReplaceAfter: 10 * time.Second}
}

// Validate reports the first bad field.
func (c Config) Validate() error {
	switch {
	case c.Workers < 1:
		return errors.New("workers: must be at least 1")
	case c.Queue < 1:
		return errors.New("queue: must be at least 1")
	case c.PendingEvery <= 0:
		return errors.New("pending_every: must be positive")
	case c.PendingAge <= 0:
		return errors.New("pending_age: must be positive")
	case c.ReplaceAfter < 0:
		return errors.New("replace_after: must not be negative")
	}
	return nil
}

// Allocator runs fills and drains.
type Allocator struct {
	cfg    Config
	db     *sql.DB
	shards *shard.Set
	logger *slog.Logger
	queue  chan job
	hooks  Hooks

	lastWarn   atomic.Int64
	suppressed atomic.Int64

	refills      *prometheus.CounterVec
	replacements *prometheus.CounterVec
}

// Collectors are the allocator's metrics.
func (a *Allocator) Collectors() []prometheus.Collector {
	return []prometheus.Collector{a.refills, a.replacements}
}

type job struct {
	p     *shard.Partition
	sub   byte
	qty   int64
	capAt int64
	done  func(stockd.Refill, error)
}

// Hooks are what the allocator tells and asks the rest of the node, given
// at construction; each may be nil.
type Hooks struct {
	// OnLost is told when Redis shows that a partition lost its data; the
	// allocator has already recorded it as fenced.
	OnLost func(sku string, pid int)
	// Owns tells whether this node runs the background work of a
	// partition (nil: all of it).
	Owns func(sku string, pid int) bool
}

// New builds an allocator over db (migrated) and the shards.
func New(cfg Config, db *sql.DB, shards *shard.Set, hooks Hooks, logger *slog.Logger) *Allocator {
	return &Allocator{
		cfg:    cfg,
		db:     db,
		shards: shards,
		hooks:  hooks,
		logger: logger.With("component", "preallocate"),
		queue:  make(chan job, cfg.Queue),
		refills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stockd_preallocate_refills_total",
			Help: "Refills, by result: applied, skipped (already full), empty_pool, refused (voided), failed.",
		}, []string{"result"}),
		replacements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stockd_preallocate_partitions_replaced_total",
			Help: "Partitions opened in place of one that left (Heal), by reason: fenced (its state was lost or rolled back), unreachable (its shard did not answer for replace_after), removed.",
		}, []string{"reason"}),
	}
}

// Request queues a refill of sub-domain sub of p with up to qty units,
// applied only while the sub-domain holds less than capAt. done runs on a
// worker when it finished. It never blocks; false means the queue is full.
func (a *Allocator) Request(p *shard.Partition, sub byte, qty, capAt int64, done func(stockd.Refill, error)) bool {
	select {
	case a.queue <- job{p: p, sub: sub, qty: qty, capAt: capAt, done: done}:
		return true
	default:
		return false
	}
}

// Run runs the refill workers and the pending sweep until ctx ends.
func (a *Allocator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for i := 0; i < a.cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-a.queue:
					o, err := a.Refill(ctx, j.p, j.sub, j.qty, j.capAt)
					if err != nil && ctx.Err() == nil {
						a.warnRefill(j, err)
					}
					a.refills.WithLabelValues(refillResult(o, err)).Inc()
					if j.done != nil {
						j.done(o, err)
					}
				}
			}
		}()
	}
	t := time.NewTicker(a.cfg.PendingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-t.C:
			if err := a.ApplyPending(ctx, a.cfg.PendingAge); err != nil && ctx.Err() == nil {
				a.logger.Warn("pending allocations", "err", err)
			}
		}
	}
}

func refillResult(o stockd.Refill, err error) string {
	switch {
	case err != nil:
		return "failed"
	case o.Applied > 0:
		return "applied"
	case o.Voided:
		return "refused"
	case o.Pool == 0:
		return "empty_pool"
	}
	return "skipped"
}

// warnRefill logs a failed refill, at most once every few seconds: during
// an outage every partition fails the same way.
func (a *Allocator) warnRefill(j job, err error) {
	now := time.Now().UnixNano()
	last := a.lastWarn.Load()
	if now-last < int64(5*time.Second) || !a.lastWarn.CompareAndSwap(last, now) {
		a.suppressed.Add(1)
		return
	}
	a.logger.Warn("refill failed", "sku", j.p.SKU, "pid", j.p.ID, "sub", string(j.sub),
		"similar_since_last", a.suppressed.Swap(0), "err", err)
}

// Refill moves up to qty units from the pool into sub-domain sub of p. A
// sub-domain that already holds capAt or more (another refill got there
// first) is left alone without touching MySQL; Pool is -1 then.
func (a *Allocator) Refill(ctx context.Context, p *shard.Partition, sub byte, qty, capAt int64) (stockd.Refill, error) {
	if st, err := p.Inspect(ctx); err == nil && st.Exists {
		level := st.Levels.A
		if sub == 'b' {
			level = st.Levels.B
		}
		if level >= capAt {
			return stockd.Refill{Levels: st.Levels, HaveLevels: true, Pool: -1}, nil
		}
	}
	var id, n, pool int64
	err := sqltx.Run(ctx, a.db, func(tx *sql.Tx) error {
		id, n = 0, 0
		if err := tx.QueryRowContext(ctx, `SELECT pool FROM skus WHERE sku = ? FOR UPDATE`, p.SKU).Scan(&pool); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("%w: %s", stockd.ErrUnknownSKU, p.SKU)
			}
			return err
		}
		n = min(qty, pool)
		if n <= 0 {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE skus SET pool = pool - ? WHERE sku = ?`, n, p.SKU); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx,
			`INSERT INTO allocations (sku, pid, epoch, kind, sub, qty) VALUES (?, ?, ?, 'fill', ?, ?)`,
			p.SKU, p.ID, p.Epoch, string(sub), n)
		if err != nil {
			return err
		}
		id, err = res.LastInsertId()
		pool -= n
		return err
	})
	if err != nil {
		return stockd.Refill{Pool: -1}, fmt.Errorf("allocate: %w", err)
	}
	if n <= 0 {
		return stockd.Refill{Pool: pool}, nil
	}
	o, err := a.applyFill(ctx, p, id, sub, n, capAt)
	o.Pool = pool
	if o.Voided {
		o.Pool += n // the units went back
	}
	return o, err
}

// applyFill injects pending fill id into Redis and settles its row.
func (a *Allocator) applyFill(ctx context.Context, p *shard.Partition, id int64, sub byte, n, capAt int64) (stockd.Refill, error) {
	r, err := p.Refill(ctx, id, sub, n, capAt)
	if err != nil {
		// Left pending: the sweep applies it once Redis answers.
		return stockd.Refill{}, err
	}
	if r.Final() {
		if err := a.void(ctx, id); err != nil {
			return stockd.Refill{}, err
		}
		if r.Code == shard.RefillLost {
			a.lost(ctx, p)
			return stockd.Refill{Lost: true, Voided: true}, nil
		}
		return stockd.Refill{Levels: r.Levels, HaveLevels: true, Voided: true, Closed: r.Code == shard.RefillClosed}, nil
	}
	if err := a.markFillApplied(ctx, p, id, n); err != nil {
		return stockd.Refill{Applied: n, Levels: r.Levels, HaveLevels: true}, fmt.Errorf("mark applied: %w", err)
	}
	applied := n
	if r.Code == shard.RefillAppliedBefore {
		applied = 0 // applied by an earlier run of this allocation
	}
	return stockd.Refill{Applied: applied, Levels: r.Levels, HaveLevels: true}, nil
}

// markFillApplied settles fill id (n units), which Redis applied. If the
// partition was fenced meanwhile, the fence computed its doubt without
// this fill (still pending then), yet its units are in the fenced
// partition's Redis, untrusted like the rest: they join the doubt, or go
// back to the pool if the doubt was resolved already. (Marked applied
// blindly, they were counted nowhere: the failover fault case lost a
// chunk of 100 that way once the fence came sooner.)
func (a *Allocator) markFillApplied(ctx context.Context, p *shard.Partition, id, n int64) error {
	return sqltx.Run(ctx, a.db, func(tx *sql.Tx) error {
		var state string
		var resolved bool
		err := tx.QueryRowContext(ctx,
			`SELECT state, doubt_resolved_at IS NOT NULL FROM partitions WHERE sku = ? AND pid = ? AND epoch = ? FOR UPDATE`,
			p.SKU, p.ID, p.Epoch).Scan(&state, &resolved)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE allocations SET state = 'applied' WHERE id = ? AND state = 'pending'`, id)
		if err != nil {
			return err
		}
		if k, _ := res.RowsAffected(); k == 0 || state != "fenced" {
			return nil
		}
		if resolved {
			_, err = tx.ExecContext(ctx, `UPDATE skus SET pool = pool + ? WHERE sku = ?`, n, p.SKU)
			return err
		}
		if _, err := tx.ExecContext(ctx,
			`UPDATE partitions SET doubt_units = doubt_units + ? WHERE sku = ? AND pid = ? AND epoch = ?`,
			n, p.SKU, p.ID, p.Epoch); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE skus SET in_doubt = in_doubt + ? WHERE sku = ?`, n, p.SKU)
		return err
	})
}

// void returns a pending fill's units to the pool, once.
func (a *Allocator) void(ctx context.Context, id int64) error {
	return sqltx.Run(ctx, a.db, func(tx *sql.Tx) error {
		var sku string
		var qty int64
		err := tx.QueryRowContext(ctx,
			`SELECT sku, qty FROM allocations WHERE id = ? AND state = 'pending' FOR UPDATE`, id).Scan(&sku, &qty)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE allocations SET state = 'void' WHERE id = ?`, id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE skus SET pool = pool + ? WHERE sku = ?`, qty, sku)
		return err
	})
}

// Drain moves every unit of p back to the pool; close also stops p from
// selling or being refilled. It returns the units moved.
func (a *Allocator) Drain(ctx context.Context, p *shard.Partition, close bool) (int64, error) {
	sub := ""
	if close {
		sub = "c" // so that a sweep finishing it closes too
	}
	res, err := a.db.ExecContext(ctx,
		`INSERT INTO allocations (sku, pid, epoch, kind, sub) VALUES (?, ?, ?, 'drain', ?)`, p.SKU, p.ID, p.Epoch, sub)
	if err != nil {
		return 0, fmt.Errorf("drain: %w", err)
	}
	id, err := res.LastInsertId()
	if err != nil {
		return 0, fmt.Errorf("drain: %w", err)
	}
	return a.applyDrain(ctx, p, id, close)
}

func (a *Allocator) applyDrain(ctx context.Context, p *shard.Partition, id int64, close bool) (int64, error) {
	code, amount, err := p.Drain(ctx, id, close)
	if err != nil {
		return 0, err
	}
	if code == shard.DrainLost {
		a.lost(ctx, p)
		amount = 0
	}
	err = sqltx.Run(ctx, a.db, func(tx *sql.Tx) error {
		if close {
			// Redis closed it with the drain; MySQL follows, so that every
			// node stops choosing it. It stays the home of the request ids
			// hashed to it for the retry window.
			if _, err := tx.ExecContext(ctx,
				`UPDATE partitions SET state = 'closed', closed_at = NOW(6) WHERE sku = ? AND pid = ? AND epoch = ? AND state = 'open'`,
				p.SKU, p.ID, p.Epoch); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx,
			`UPDATE allocations SET state = 'applied', qty = ? WHERE id = ? AND state = 'pending'`, amount, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			if close {
				_, err = tx.ExecContext(ctx, `UPDATE skus SET version = version + 1 WHERE sku = ?`, p.SKU)
			}
			return err // settled by another run
		}
		_, err = tx.ExecContext(ctx, `UPDATE skus SET pool = pool + ?, version = version + 1 WHERE sku = ?`, amount, p.SKU)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("settle drain: %w", err)
	}
	return amount, nil
}

// ApplyPending finishes allocation rows left pending for longer than age:
// fills are injected (or voided), drains are run and settled.
func (a *Allocator) ApplyPending(ctx context.Context, age time.Duration) error {
	rows, err := a.db.QueryContext(ctx,
		`SELECT a.id, a.sku, a.pid, a.epoch, a.kind, a.sub, a.qty, p.shard, s.chunk + s.threshold
		   FROM allocations a
		   JOIN partitions p ON p.sku = a.sku AND p.pid = a.pid
		   JOIN skus s ON s.sku = a.sku
		  WHERE a.state = 'pending' AND a.created_at < NOW(6) - INTERVAL ? MICROSECOND
		  ORDER BY a.id LIMIT 1000`, age.Microseconds())
	if err != nil {
		return fmt.Errorf("pending allocations: %w", err)
	}
	type row struct {
		id, epoch, qty, capAt int64
		sku, kind, sub, sh    string
		pid                   int
	}
	var todo []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.sku, &r.pid, &r.epoch, &r.kind, &r.sub, &r.qty, &r.sh, &r.capAt); err != nil {
			rows.Close()
			return err
		}
		todo = append(todo, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var errs []error
	for _, r := range todo {
		if a.hooks.Owns != nil && !a.hooks.Owns(r.sku, r.pid) {
			continue
		}
		p, err := a.shards.Partition(r.sku, r.pid, r.epoch, r.sh)
		if err != nil {
			errs = append(errs, fmt.Errorf("allocation %d: %w", r.id, err))
			continue
		}
		switch r.kind {
		case "fill":
			// The sub-domain may have been refilled since this allocation
			// was made; it still applies unless that would leave more than
			// a chunk above the threshold there (then its units go back).
			_, err = a.applyFill(ctx, p, r.id, r.sub[0], r.qty, r.capAt)
		case "drain":
			_, err = a.applyDrain(ctx, p, r.id, r.sub == "c")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("allocation %d: %w", r.id, err))
		} else {
			a.logger.Info("finished pending allocation", "id", r.id, "kind", r.kind, "sku", r.sku, "pid", r.pid)
		}
	}
	return errors.Join(errs...)
}
