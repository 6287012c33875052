package sync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/sqltx"
	"github.com/stockd/stockd/shard"
)

var (
	// ErrReleased: a confirm of a reservation that was released (by the
	// caller or by expiry).
	ErrReleased = errors.New("reservation was released")
	// ErrConfirmed: a release of a reservation that was confirmed.
	ErrConfirmed = errors.New("reservation was confirmed")
	// ErrUnknown: the token names no deduction that exists (no detail row,
	// not in its partition's stream, another qty, no such partition or
	// epoch), whatever its signature. Nothing was changed.
	ErrUnknown = errors.New("no such reservation")
	// ErrUnverified: the deduction cannot be checked now (its detail left
	// Redis for the broker and has not reached MySQL yet, or its shard
	// does not answer); retry. Nothing was changed.
	ErrUnverified = errors.New("reservation cannot be verified yet")
)

// Ledger runs the reservation lifecycle on the detail rows: a deduction is
// a reservation; confirm makes it a sale; release (payment failed) or expiry
// returns its units to the pool. Each is one transaction that moves the
// row's state and the SKU's counters together, from the state it finds, so
// repeats and races (release against expiry, against write-back) count the
// units once. A reservation whose detail has not reached MySQL yet gets its
// row now, in its final state, once its partition's stream proved the
// deduction exists; the write-back insert then finds the row and changes
// nothing. A token is never enough on its own (ARCHITECTURE.md section 7).
type Ledger struct {
	db     *sql.DB
	shards *shard.Set
	ttl    time.Duration
	every  time.Duration
	logger *slog.Logger
	m      *metrics
	// skus lists the SKUs whose reservations this node expires.
	skus func() []string
	// returned, allowance, partitions and allowanceWindow are Deps'
	// Returned, Allowance, SKUPartitions and AllowanceWindow.
	returned        func(sku string)
	allowance       func(sku string) *shard.Allowance
	partitions      func(sku string) []*shard.Partition
	allowanceWindow time.Duration
	// allowCursor is where the allowance sweep of each SKU goes on from
	// (an HSCAN cursor; absent or 0: a new pass). Only Run's goroutine
	// sweeps.
	allowCursor map[string]uint64
	// allowBudget overrides allowanceBudget (tests).
	allowBudget int
}

// landWait bounds how long a confirm or release waits for a detail that
// left Redis (published) to land in MySQL before it answers ErrUnverified.
// The applier usually lands a batch within milliseconds of the confirm.
const landWait = time.Second

// Confirm confirms the reservation of detailID (qty units).
func (l *Ledger) Confirm(ctx context.Context, detailID string, qty int64) error {
	return l.move(ctx, detailID, qty, "confirmed", time.Time{})
}

// Release releases the reservation of detailID (qty units): its units go
// back to the pool.
func (l *Ledger) Release(ctx context.Context, detailID string, qty int64) error {
	return l.release(ctx, detailID, qty, time.Time{})
}

// release releases the reservation; with a non-zero expiring it is the
// expiry sweep's, and leaves a reservation extended past expiring alone
// (errExtended).
func (l *Ledger) release(ctx context.Context, detailID string, qty int64, expiring time.Time) error {
	if err := l.move(ctx, detailID, qty, "released", expiring); err != nil {
		return err
	}
	l.giveBack(ctx, detailID)
	if l.returned != nil {
		sku, _, _, _, _ := stockd.ParseDetailID(detailID)
		l.returned(sku)
	}
	return nil
}

// deduction names the deduction a token claims.
type deduction struct {
	id         string
	sku        string
	pid        int
	epoch, seq int64
	qty        int64
}

// move takes the deduction to state (confirmed or released). expiring:
// see release.
func (l *Ledger) move(ctx context.Context, detailID string, qty int64, to string, expiring time.Time) error {
	sku, pid, epoch, seq, err := stockd.ParseDetailID(detailID)
	if err != nil || seq < 1 || qty < 1 {
		return ErrUnknown
	}
	d := deduction{id: detailID, sku: sku, pid: pid, epoch: epoch, seq: seq, qty: qty}
	proven := false
	w := newLandWait()
	for races := 0; ; {
		err := l.moveOnce(ctx, d, to, proven, expiring)
		var need *needProof
		switch {
		case errors.As(err, &need):
			ok, err := l.proveOrWait(ctx, d, to, need, w)
			if err != nil {
				return err
			}
			proven = proven || ok
		case errors.Is(err, errLanded) && races < 3:
			races++
		default:
			return err
		}
	}
}

// errLanded: the detail's row appeared while the transaction wrote it
// early (write-back got there in between); the move starts over from it.
var errLanded = errors.New("detail landed meanwhile")

// errInTransit: the detail was deducted and published (trimmed from the
// stream) but has not landed in MySQL: it cannot be checked now.
var errInTransit = errors.New("detail between Redis and MySQL")

// needProof: the detail has no row and its partition is not fenced; its
// existence must be read from the partition's stream before the move.
type needProof struct {
	shard   string
	seenSeq int64
}

func (n *needProof) Error() string { return "detail not landed: check its partition's stream" }

// landWaiter is one settle's wait for a detail between Redis and MySQL:
// until landWait after it began, with a pause that doubles up to 200 ms.
type landWaiter struct {
	deadline time.Time
	pause    time.Duration
}

func newLandWait() *landWaiter {
	return &landWaiter{deadline: time.Now().Add(landWait), pause: 20 * time.Millisecond}
}

// proveOrWait is prove for a settle's loop: true when d is proven; false
// with no error when the detail is published but not landed, after a pause
// for the applier (the caller tries its transaction again, the row may be
// there now); ErrUnverified once w's time is up.
func (l *Ledger) proveOrWait(ctx context.Context, d deduction, to string, need *needProof, w *landWaiter) (bool, error) {
	err := l.prove(ctx, d, to, need)
	if !errors.Is(err, errInTransit) {
		return err == nil, err
	}
	if time.Now().After(w.deadline) || !sleepCtx(ctx, w.pause) {
		return false, fmt.Errorf("%w: detail %s is between Redis and MySQL", ErrUnverified, d.id)
	}
	w.pause = min(2*w.pause, 200*time.Millisecond)
	return false, nil
}

// prove checks in Redis that deduction d exists with its qty (nil), or
// says why it cannot be used: ErrUnknown, errInTransit, ErrUnverified.
func (l *Ledger) prove(ctx context.Context, d deduction, to string, need *needProof) error {
	if l.shards == nil {
		return fmt.Errorf("%w: no shards to check detail %s", ErrUnverified, d.id)
	}
	p, err := l.shards.Partition(d.sku, d.pid, d.epoch, need.shard)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	if !p.Shard.Healthy() {
		// Fail fast, as deductions do (4.4): the shard's probe says it
		// does not answer.
		return fmt.Errorf("%w: shard %s does not answer", ErrUnverified, need.shard)
	}
	// A release returns units: in replica mode it counts only what the
	// replicas hold (see FindDetail).
	found, err := p.FindDetail(ctx, d.seq, to == "released")
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnverified, err)
	}
	switch {
	case found.Code == shard.DetailFound && found.Qty == d.qty:
		return nil
	case found.Code == shard.DetailFound:
		return ErrUnknown // the deduction exists, with another qty
	case found.Code == shard.DetailLost:
		// MySQL has the partition open but Redis lost its state: it is
		// about to be fenced (section 8), after which the doubt decides.
		return fmt.Errorf("%w: partition state of %s lost in Redis", ErrUnverified, d.id)
	case d.seq <= found.StateSeq:
		return errInTransit
	case d.seq <= need.seenSeq:
		// A higher sequence landed, but Redis is below it: the shard went
		// back; fencing will settle it.
		return fmt.Errorf("%w: partition of %s rolled back in Redis", ErrUnverified, d.id)
	}
	return ErrUnknown // above the partition's sequence: never deducted
}

// lockDeduction reads the state and qty of detail id's row and locks it
// for the transaction; sql.ErrNoRows when it has not landed.
func lockDeduction(ctx context.Context, tx *sql.Tx, id string) (state string, qty int64, err error) {
	err = tx.QueryRowContext(ctx, `SELECT state, qty FROM deductions WHERE detail_id = ? FOR UPDATE`, id).Scan(&state, &qty)
	return state, qty, err
}

// moveOnce runs one transaction of the move. proven says that the
// partition's stream held the detail (prove).
func (l *Ledger) moveOnce(ctx context.Context, d deduction, to string, proven bool, expiring time.Time) error {
	return sqltx.Run(ctx, l.db, func(tx *sql.Tx) error {
		id := d.id
		state, rowQty, err := lockDeduction(ctx, tx, id)
		if errors.Is(err, sql.ErrNoRows) {
			// A double deduction undone by the backstop stands for its
			// request's original deduction.
			var orig sql.NullString
			var dblQty int64
			err = tx.QueryRowContext(ctx,
				`SELECT d.detail_id, x.qty FROM doubled_deductions x LEFT JOIN deductions d ON d.sku = x.sku AND d.request_id = x.request_id
				  WHERE x.detail_id = ?`, id).Scan(&orig, &dblQty)
			switch {
			case err == nil && dblQty != d.qty:
				return ErrUnknown
			case err == nil && orig.Valid:
				id = orig.String
				state, rowQty, err = lockDeduction(ctx, tx, id)
				if err != nil {
					return fmt.Errorf("read original of a double: %w", err)
				}
				d.qty = rowQty
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
			return l.moveEarly(ctx, tx, d, to, proven)
		case err != nil:
			return fmt.Errorf("read reservation: %w", err)
		case rowQty != d.qty:
			return ErrUnknown // the deduction exists, with another qty
		case state == to:
			return nil // again: nothing to do
		case state == "released":
			return ErrReleased
		case state == "confirmed":
			return ErrConfirmed
		}
		if !expiring.IsZero() {
			// Extend locks the row too: an extension committed before
			// this read holds, one after it finds the row released.
			if held, err := extendedPast(ctx, tx, id, expiring); err != nil || held {
				if err == nil {
					err = errExtended
				}
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE deductions SET state = ? WHERE detail_id = ?`, to, id); err != nil {
			return fmt.Errorf("move reservation: %w", err)
		}
		return bump(ctx, tx, d.sku, rowQty, "reserved", to)
	})
}

// moveEarly moves a deduction whose detail has not landed: its row is
// written now, in its final state. The partition (read FOR UPDATE, so a
// fence or a landing batch cannot slip in between) decides what proves
// the deduction and which counters move.
func (l *Ledger) moveEarly(ctx context.Context, tx *sql.Tx, d deduction, to string, proven bool) error {
	var pstate, shardID string
	var resolved bool
	var seenSeq, doubt int64
	err := tx.QueryRowContext(ctx,
		`SELECT state, shard, seen_seq, doubt_units, doubt_resolved_at IS NOT NULL FROM partitions
		  WHERE sku = ? AND pid = ? AND epoch = ? FOR UPDATE`,
		d.sku, d.pid, d.epoch).Scan(&pstate, &shardID, &seenSeq, &doubt, &resolved)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrUnknown // no such SKU, partition or epoch
	}
	if err != nil {
		return fmt.Errorf("read partition: %w", err)
	}
	fenced := pstate == "fenced"
	switch {
	case fenced && resolved && to == "confirmed":
		// Its doubt went back to the pool after the TTL: the reservation
		// expired.
		return ErrReleased
	case fenced && !resolved && d.qty > doubt:
		// Redis lost the record: the signature is the only evidence
		// left, and it can only move units still held in doubt.
		return ErrUnknown
	case !fenced && !proven:
		return &needProof{shard: shardID, seenSeq: seenSeq}
	}
	// Write the row in its final state.
	res, err := tx.ExecContext(ctx,
		`INSERT IGNORE INTO deductions (detail_id, sku, pid, qty, state, deducted_at) VALUES (?, ?, ?, ?, ?, NOW(6))`,
		d.id, d.sku, d.pid, d.qty, to)
	if err != nil {
		return fmt.Errorf("record early %s: %w", to, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errLanded
	}
	switch {
	case fenced && resolved:
		// released (confirm was refused above); the units are in the
		// pool already.
		_, err = tx.ExecContext(ctx, `UPDATE skus SET released = released + ? WHERE sku = ?`, d.qty, d.sku)
		return err
	case fenced && to == "released":
		// The units stay in doubt and go back to the pool when the doubt
		// resolves. Returned now on the signature alone, they could be
		// sold twice: a forged token may name a deduction that never
		// happened, and the genuine details its doubt covers may still
		// land (each moving its units out of in_doubt).
		_, err = tx.ExecContext(ctx, `UPDATE skus SET released = released + ? WHERE sku = ?`, d.qty, d.sku)
		return err
	case fenced:
		// Confirmed: the units leave the doubt for good (a forged confirm
		// can only keep units from being sold).
		if _, err := tx.ExecContext(ctx,
			`UPDATE partitions SET doubt_units = doubt_units - ? WHERE sku = ? AND pid = ? AND epoch = ?`,
			d.qty, d.sku, d.pid, d.epoch); err != nil {
			return err
		}
		return bump(ctx, tx, d.sku, d.qty, "in_doubt", to)
	}
	// The stream held it: it exists like a landed detail, and a shard
	// that comes back below it has gone back (3.4).
	if _, err := tx.ExecContext(ctx,
		`UPDATE partitions SET seen_seq = GREATEST(seen_seq, ?) WHERE sku = ? AND pid = ? AND epoch = ?`,
		d.seq, d.sku, d.pid, d.epoch); err != nil {
		return fmt.Errorf("raise seen_seq: %w", err)
	}
	return bump(ctx, tx, d.sku, d.qty, "", to)
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
	sweep := time.NewTicker(allowanceEvery(l.ttl, l.every))
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sweep.C:
			l.sweepAllowances(ctx)
			continue
		case <-t.C:
		}
		var skus []string
		if l.skus != nil {
			skus = l.skus()
		}
		released, failed, err := l.expire(ctx, skus, time.Now().Add(-l.ttl))
		if ctx.Err() == nil {
			if err != nil {
				l.logger.Warn("expiring reservations", "skus", len(skus), "err", err)
			}
			for sku, err := range failed {
				l.logger.Warn("expiring reservations", "sku", sku, "err", err)
			}
		}
		for sku, n := range released {
			l.logger.Info("expired reservations released", "sku", sku, "n", n)
		}
	}
}

// sweepAllowances runs SweepAllowance on the limited SKUs this node owns.
func (l *Ledger) sweepAllowances(ctx context.Context) {
	if l.allowance == nil || l.skus == nil {
		return
	}
	window := max(l.allowanceWindow, l.ttl)
	for _, sku := range l.skus() {
		a := l.allowance(sku)
		if a == nil || !a.Shard.Healthy() {
			continue
		}
		if err := l.SweepAllowance(ctx, sku, a, time.Now(), window); err != nil && ctx.Err() == nil {
			l.logger.Warn("allowance sweep", "sku", sku, "err", err)
		}
	}
}

// Expire releases sku's reservations still unconfirmed that were made
// before cutoff, and returns how many it released.
func (l *Ledger) Expire(ctx context.Context, sku string, cutoff time.Time) (int, error) {
	n, failed, err := l.expire(ctx, []string{sku}, cutoff)
	if err == nil {
		err = failed[sku]
	}
	return n[sku], err
}

// sweepChunk bounds the SKUs one sweep query names: a node that owns
// thousands of SKUs sweeps them with a few queries, not two per SKU per
// ExpireEvery (with 1,000 SKUs that was 2,000 queries and 0.17 MariaDB
// cores a second on an idle node; issue 13).
const sweepChunk = 500

// expire is Expire for several SKUs: it returns how many reservations it
// released per SKU, and the SKUs whose release failed (a SKU is left for
// the next sweep at its first failure, the others go on), or err when a
// query failed.
func (l *Ledger) expire(ctx context.Context, skus []string, cutoff time.Time) (released map[string]int, failed map[string]error, err error) {
	w := &sweep{released: map[string]int{}, failed: map[string]error{}}
	for len(skus) > 0 {
		chunk := skus[:min(len(skus), sweepChunk)]
		skus = skus[len(chunk):]
		if err := l.expireChunk(ctx, chunk, cutoff, w); err != nil {
			return w.released, w.failed, err
		}
		if err := l.expireExtended(ctx, chunk, w); err != nil {
			return w.released, w.failed, err
		}
	}
	return w.released, w.failed, nil
}

// sweep is one expiry sweep's tally: the reservations it released per
// SKU, and the SKUs it left for the next sweep at their first failure.
type sweep struct {
	released map[string]int
	failed   map[string]error
}

// open is skus without the failed ones, as query arguments.
func (w *sweep) open(skus []string) []any {
	args := make([]any, 0, len(skus)+1)
	for _, sku := range skus {
		if w.failed[sku] == nil {
			args = append(args, sku)
		}
	}
	return args
}

// expireOne expires one due reservation of sku for w. A reservation
// confirmed, released or extended meanwhile is no failure; any other
// error leaves sku for the next sweep. Only ctx ending is returned.
func (l *Ledger) expireOne(ctx context.Context, w *sweep, sku, id string, qty int64, now time.Time) error {
	err := l.release(ctx, id, qty, now)
	switch {
	case err == nil:
		w.released[sku]++
		l.m.expired.Inc()
	case errors.Is(err, ErrConfirmed), errors.Is(err, ErrReleased), errors.Is(err, errExtended):
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		w.failed[sku] = fmt.Errorf("release %s: %w", id, err)
	}
	return nil
}

// expireChunk releases the due reservations of skus (at most sweepChunk
// of them), 500 at a time; an extended one expires at its extension
// instead (expireExtended). No ORDER BY: over several SKUs it would sort
// every due reservation of the chunk on each round (a sale's unpaid
// reservations all fall due together); the index gives each SKU's oldest
// first, and the rounds go on until none is left.
func (l *Ledger) expireChunk(ctx context.Context, skus []string, cutoff time.Time, w *sweep) error {
	for {
		args := w.open(skus)
		if len(args) == 0 {
			return nil
		}
		q := `SELECT sku, detail_id, qty FROM deductions d
		  WHERE sku IN (?` + strings.Repeat(",?", len(args)-1) + `) AND state = 'reserved' AND deducted_at < ?
		    AND NOT EXISTS (SELECT 1 FROM reservation_extensions e WHERE e.detail_id = d.detail_id)
		  LIMIT 500`
		rows, err := l.db.QueryContext(ctx, q, append(args, sqltx.Time(cutoff))...)
		if err != nil {
			return fmt.Errorf("expired reservations: %w", err)
		}
		type due struct {
			sku, id string
			qty     int64
		}
		var todo []due
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.sku, &d.id, &d.qty); err != nil {
				rows.Close()
				return err
			}
			todo = append(todo, d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, d := range todo {
			if w.failed[d.sku] != nil {
				continue
			}
			if err := l.expireOne(ctx, w, d.sku, d.id, d.qty, time.Now()); err != nil {
				return err
			}
		}
		if len(todo) < 500 {
			return nil
		}
	}
}
