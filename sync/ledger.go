package sync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/stockd/stockd/internal/sqltx"
	"github.com/stockd/stockd/shard"
)

var (
	// ErrReleased: a confirm of a reservation that was released (by the
	// caller or by expiry).
	ErrReleased = errors.New("reservation was released")
	// ErrConfirmed: a release of a reservation that was confirmed.
	ErrConfirmed = errors.New("reservation was confirmed")
)

// Ledger runs the reservation lifecycle on the detail rows: a deduction is
// a reservation; confirm makes it a sale; release (payment failed) or expiry
// returns its units to the pool. Each is one transaction that moves the
// row's state and the SKU's counters together, from the state it finds, so
// repeats and races (release against expiry, against write-back) count the
// units once. A reservation whose detail has not reached MySQL yet gets its
// row now, in its final state; the write-back insert then finds the row and
// changes nothing.
type Ledger struct {
	db     *sql.DB
	ttl    time.Duration
	every  time.Duration
	logger *slog.Logger
	m      *metrics
	// Returned is told when units went back to a SKU's pool.
	Returned func(sku string)
	// skus lists the SKUs whose reservations this node expires.
	skus func() []string
}

// Confirm confirms the reservation of detailID (qty units).
func (l *Ledger) Confirm(ctx context.Context, detailID string, qty int64) error {
	return l.move(ctx, detailID, qty, "confirmed")
}

// Release releases the reservation of detailID (qty units): its units go
// back to the pool.
func (l *Ledger) Release(ctx context.Context, detailID string, qty int64) error {
	if err := l.move(ctx, detailID, qty, "released"); err != nil {
		return err
	}
	if l.Returned != nil {
		sku, _, _, _, _ := shard.ParseDetailID(detailID)
		l.Returned(sku)
	}
	return nil
}

// move takes detailID to state (confirmed or released).
func (l *Ledger) move(ctx context.Context, detailID string, qty int64, to string) error {
	sku, pid, _, _, err := shard.ParseDetailID(detailID)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err := l.moveOnce(ctx, detailID, sku, pid, qty, to)
		if !errors.Is(err, errLanded) || attempt >= 3 {
			return err
		}
	}
}

// errLanded: the detail's row appeared while the transaction wrote it
// early (write-back got there in between); the move starts over from it.
var errLanded = errors.New("detail landed meanwhile")

func (l *Ledger) moveOnce(ctx context.Context, detailID, sku string, pid int, qty int64, to string) error {
	_, _, epoch, _, _ := shard.ParseDetailID(detailID)
	return sqltx.Run(ctx, l.db, func(tx *sql.Tx) error {
		id := detailID
		var state string
		var rowQty int64
		err := tx.QueryRowContext(ctx, `SELECT state, qty FROM deductions WHERE detail_id = ? FOR UPDATE`, id).Scan(&state, &rowQty)
		if errors.Is(err, sql.ErrNoRows) {
			// A double deduction undone by the backstop stands for its
			// request's original deduction.
			var orig sql.NullString
			err = tx.QueryRowContext(ctx,
				`SELECT d.detail_id FROM doubled_deductions x LEFT JOIN deductions d ON d.sku = x.sku AND d.request_id = x.request_id
				  WHERE x.detail_id = ?`, id).Scan(&orig)
			switch {
			case err == nil && orig.Valid:
				id = orig.String
				err = tx.QueryRowContext(ctx, `SELECT state, qty FROM deductions WHERE detail_id = ? FOR UPDATE`, id).Scan(&state, &rowQty)
			case err == nil:
				// Undone, and no deduction has its request id byte for
				// byte: a case variant the case-insensitive key took for
				// a double before migration 14. Its units went back to
				// the pool then; it stands for nobody else's deduction.
				if to == "released" {
					return nil
				}
				return ErrReleased
			}
		}
		switch {
		case errors.Is(err, sql.ErrNoRows):
			// Not landed yet. A detail of a fenced partition may never
			// land: its units are in doubt, and this settles them.
			var pstate string
			var resolved bool
			perr := tx.QueryRowContext(ctx,
				`SELECT state, doubt_resolved_at IS NOT NULL FROM partitions WHERE sku = ? AND pid = ? AND epoch = ? FOR UPDATE`,
				sku, pid, epoch).Scan(&pstate, &resolved)
			if perr != nil && !errors.Is(perr, sql.ErrNoRows) {
				return fmt.Errorf("read partition: %w", perr)
			}
			fenced := pstate == "fenced"
			if fenced && resolved && to == "confirmed" {
				// Its doubt went back to the pool after the TTL: the
				// reservation expired.
				return ErrReleased
			}
			// Write the row in its final state.
			res, err := tx.ExecContext(ctx,
				`INSERT IGNORE INTO deductions (detail_id, sku, pid, qty, state, deducted_at) VALUES (?, ?, ?, ?, ?, NOW(6))`,
				id, sku, pid, qty, to)
			if err != nil {
				return fmt.Errorf("record early %s: %w", to, err)
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return errLanded
			}
			switch {
			case fenced && resolved:
				// released (confirm was refused above); the units are
				// in the pool already.
				_, err = tx.ExecContext(ctx, `UPDATE skus SET released = released + ? WHERE sku = ?`, qty, sku)
				return err
			case fenced:
				if _, err := tx.ExecContext(ctx,
					`UPDATE partitions SET doubt_units = doubt_units - ? WHERE sku = ? AND pid = ? AND epoch = ?`,
					qty, sku, pid, epoch); err != nil {
					return err
				}
				return bump(ctx, tx, sku, qty, "in_doubt", to)
			}
			return bump(ctx, tx, sku, qty, "", to)
		case err != nil:
			return fmt.Errorf("read reservation: %w", err)
		case state == to:
			return nil // again: nothing to do
		case state == "released":
			return ErrReleased
		case state == "confirmed":
			return ErrConfirmed
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deductions SET state = ? WHERE detail_id = ?`, to, id); err != nil {
			return fmt.Errorf("move reservation: %w", err)
		}
		return bump(ctx, tx, sku, rowQty, "reserved", to)
	})
}

// bump moves qty units of sku's counters from one state to another
// (from "" when the units were not counted in MySQL yet). Released units go
// back to the pool.
func bump(ctx context.Context, tx *sql.Tx, sku string, qty int64, from, to string) error {
	q := `UPDATE skus SET ` + to + ` = ` + to + ` + ?`
	args := []any{qty}
	if from != "" {
		q += `, ` + from + ` = ` + from + ` - ?`
		args = append(args, qty)
	}
	if to == "released" {
		q += `, pool = pool + ?`
		args = append(args, qty)
	}
	q += ` WHERE sku = ?`
	args = append(args, sku)
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("move counters: %w", err)
	}
	return nil
}

// Run releases expired reservations of the SKUs this node owns every
// ExpireEvery until ctx ends.
func (l *Ledger) Run(ctx context.Context) error {
	t := time.NewTicker(l.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		var skus []string
		if l.skus != nil {
			skus = l.skus()
		}
		for _, sku := range skus {
			if n, err := l.Expire(ctx, sku, time.Now().Add(-l.ttl)); err != nil && ctx.Err() == nil {
				l.logger.Warn("expiring reservations", "sku", sku, "err", err)
			} else if n > 0 {
				l.logger.Info("expired reservations released", "sku", sku, "n", n)
			}
		}
	}
}

// Expire releases sku's reservations still unconfirmed that were made
// before cutoff, and returns how many it released.
func (l *Ledger) Expire(ctx context.Context, sku string, cutoff time.Time) (int, error) {
	released := 0
	for {
		rows, err := l.db.QueryContext(ctx,
			`SELECT detail_id, qty FROM deductions WHERE sku = ? AND state = 'reserved' AND deducted_at < ? ORDER BY deducted_at LIMIT 500`,
			sku, cutoff.UTC())
		if err != nil {
			return released, fmt.Errorf("expired reservations: %w", err)
		}
		type due struct {
			id  string
			qty int64
		}
		var todo []due
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.id, &d.qty); err != nil {
				rows.Close()
				return released, err
			}
			todo = append(todo, d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return released, err
		}
		for _, d := range todo {
			err := l.Release(ctx, d.id, d.qty)
			switch {
			case err == nil:
				released++
				l.m.expired.Inc()
			case errors.Is(err, ErrConfirmed), errors.Is(err, ErrReleased):
				// Confirmed or released meanwhile.
			default:
				return released, err
			}
		}
		if len(todo) < 500 {
			return released, nil
		}
	}
}
