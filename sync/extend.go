package sync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/sqltx"
	"github.com/stockd/stockd/shard"
)

// Sale rules on the reservation lifecycle (issue 15): a buyer who is paying
// pushes a reservation's expiry out (Extend); a limited SKU's per-user
// allowance is given back on release and expiry (giveBack), and what a
// crash left unsettled converges (SweepAllowance).

// errExtended: the expiry found the reservation extended past now.
var errExtended = errors.New("reservation extended")

// Extend sets the expiry of the unconfirmed reservation detailID (qty
// units) to until. ErrConfirmed and ErrReleased say it is settled already;
// ErrUnknown and ErrUnverified as for Confirm. Repeating it is harmless:
// the last extension stands.
func (l *Ledger) Extend(ctx context.Context, detailID string, qty int64, until time.Time) error {
	sku, pid, epoch, seq, err := stockd.ParseDetailID(detailID)
	if err != nil || seq < 1 || qty < 1 {
		return ErrUnknown
	}
	d := deduction{id: detailID, sku: sku, pid: pid, epoch: epoch, seq: seq, qty: qty}
	proven := false
	w := newLandWait()
	for {
		err := l.extendOnce(ctx, d, until, proven)
		var need *needProof
		if !errors.As(err, &need) {
			return err
		}
		ok, err := l.proveOrWait(ctx, d, "confirmed", need, w)
		if err != nil {
			return err
		}
		proven = proven || ok
	}
}

// extendOnce runs one transaction of Extend. The deduction's row, read FOR
// UPDATE, serialises it with the expiry (release with expiring). A detail
// that has not landed gets its extension first (once proven in its
// stream): the expiry only looks at landed rows, and reads the extension
// when it does.
func (l *Ledger) extendOnce(ctx context.Context, d deduction, until time.Time, proven bool) error {
	return sqltx.Run(ctx, l.db, func(tx *sql.Tx) error {
		state, rowQty, err := lockDeduction(ctx, tx, d.id)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			var pstate, shardID string
			var seenSeq int64
			err := tx.QueryRowContext(ctx,
				`SELECT state, shard, seen_seq FROM partitions WHERE sku = ? AND pid = ? AND epoch = ?`,
				d.sku, d.pid, d.epoch).Scan(&pstate, &shardID, &seenSeq)
			if errors.Is(err, sql.ErrNoRows) {
				return ErrUnknown
			}
			if err != nil {
				return fmt.Errorf("read partition: %w", err)
			}
			if pstate == "fenced" {
				// Its units are in doubt: nothing to extend until the
				// doubt is settled.
				return fmt.Errorf("%w: partition of %s is fenced", ErrUnverified, d.id)
			}
			if !proven {
				return &needProof{shard: shardID, seenSeq: seenSeq}
			}
		case err != nil:
			return fmt.Errorf("read reservation: %w", err)
		case rowQty != d.qty:
			return ErrUnknown
		case state == "released":
			return ErrReleased
		case state == "confirmed":
			return ErrConfirmed
		}
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO reservation_extensions (detail_id, sku, expires_at) VALUES (?, ?, ?)
			 ON DUPLICATE KEY UPDATE expires_at = VALUES(expires_at)`, d.id, d.sku, sqltx.Time(until)); err != nil {
			return fmt.Errorf("extend reservation: %w", err)
		}
		return nil
	})
}

// extendedPast tells, inside the expiry's transaction, whether the
// reservation id was extended to a time after now.
func extendedPast(ctx context.Context, tx *sql.Tx, id string, now time.Time) (bool, error) {
	var until time.Time
	err := tx.QueryRowContext(ctx, `SELECT expires_at FROM reservation_extensions WHERE detail_id = ?`, id).Scan(&until)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read extension: %w", err)
	}
	return until.After(now), nil
}

// expireExtended releases the extended reservations of skus (at most
// sweepChunk of them) whose extension ran out, counting them in w, and
// forgets (by key) the extensions of settled reservations. One read
// without locks per call; writes only for what it found.
func (l *Ledger) expireExtended(ctx context.Context, skus []string, w *sweep) error {
	now := time.Now()
	args := w.open(skus)
	n := len(args)
	if n == 0 {
		return nil
	}
	args = append(args, sqltx.Time(now))
	rows, err := l.db.QueryContext(ctx,
		`SELECT e.sku, e.detail_id, COALESCE(d.state, ''), COALESCE(d.qty, 0) FROM reservation_extensions e
		   LEFT JOIN deductions d ON d.detail_id = e.detail_id
		  WHERE e.sku IN (?`+strings.Repeat(",?", n-1)+`) AND e.expires_at < ? LIMIT 500`, args...)
	if err != nil {
		return fmt.Errorf("expired extensions: %w", err)
	}
	type due struct {
		sku, id, state string
		qty            int64
	}
	var todo []due
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.sku, &d.id, &d.state, &d.qty); err != nil {
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
		switch d.state {
		case "":
			continue // its detail has not landed: expired once it does
		case "reserved":
			if err := l.expireOne(ctx, w, d.sku, d.id, d.qty, now); err != nil {
				return err
			}
		default:
			// Settled: the extension is of no use any more.
			if _, err := l.db.ExecContext(ctx, `DELETE FROM reservation_extensions WHERE detail_id = ? AND expires_at < ?`, d.id, sqltx.Time(now)); err != nil {
				w.failed[d.sku] = fmt.Errorf("forget extension %s: %w", d.id, err)
			}
		}
	}
	return nil
}

// giveBack returns the allowance a released reservation held (a limited
// SKU's). A failure is left to the sweep, which finds the entry held for a
// released row.
func (l *Ledger) giveBack(ctx context.Context, detailID string) {
	if l.allowance == nil {
		return
	}
	sku, _, _, _, err := stockd.ParseDetailID(detailID)
	if err != nil {
		return
	}
	a := l.allowance(sku)
	if a == nil {
		return
	}
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	if _, err := a.GiveBackDetail(c, detailID); err != nil {
		l.logger.Warn("allowance not given back; the sweep will", "detail", detailID, "err", err)
	}
}

// allowanceEvery is how often the allowance sweep runs for a ttl: often
// enough that a crash's pending entry is resolved soon after it is due.
func allowanceEvery(ttl, every time.Duration) time.Duration {
	return min(max(ttl/4, every), 30*time.Second)
}

// allowanceStep is how many fields one HSCAN step of the allowance sweep
// asks for, allowanceBudget about how many one round of one SKU reads: a
// hash bigger than that is swept over several rounds (every
// allowanceEvery), each going on where the last one stopped, so that a
// round's cost does not grow with the sale. Reading a hash of 600,000
// fields whole, and looking up each held entry's row in MySQL, took
// seconds of the node's and MariaDB's CPU every 30 s (issue 13: it stalled
// every bench row after the limited one).
const (
	allowanceStep   = 500
	allowanceBudget = 50000
)

// SweepAllowance makes sku's per-user allowance converge on what MySQL
// says, after a crash or a failed Redis call between the allowance and
// the stock (ARCHITECTURE.md, "Sale rules"):
//   - a pending entry (allowance taken, outcome not recorded) older than
//     the reservation TTL is settled from the request's row: held when
//     the request's deduction is reserved or confirmed, given back when
//     it is released; without a row, held when a partition's record says
//     the request took there (its detail is still on its way), given back
//     when none does (it never took);
//   - a held entry whose row is released (the give back was lost) is
//     given back;
//   - a given-back record older than window, and a detail index whose
//     entry is gone, are forgotten.
//
// Each change is a compare-and-set on the entry as read, so a request or
// a release running meanwhile wins. One call reads about allowanceBudget
// fields of the hash, from where the previous call stopped; a pass over a
// hash of n fields takes n / allowanceBudget calls.
func (l *Ledger) SweepAllowance(ctx context.Context, sku string, a *shard.Allowance, now time.Time, window time.Duration) error {
	if l.allowCursor == nil {
		l.allowCursor = map[string]uint64{}
	}
	cursor, read := l.allowCursor[sku], 0
	budget := allowanceBudget
	if l.allowBudget > 0 {
		budget = l.allowBudget
	}
	for {
		st, next, err := a.Scan(ctx, cursor, allowanceStep)
		if err != nil {
			return err
		}
		if err := l.sweepStep(ctx, sku, a, st, now, window); err != nil {
			return err // this step again next round
		}
		cursor = next
		if cursor == 0 {
			delete(l.allowCursor, sku)
			return nil
		}
		l.allowCursor[sku] = cursor
		if read += len(st.Entries) + len(st.Details); read >= budget {
			return nil
		}
	}
}

// sweepStep is SweepAllowance for the fields of one HSCAN step.
func (l *Ledger) sweepStep(ctx context.Context, sku string, a *shard.Allowance, st shard.AllowState, now time.Time, window time.Duration) error {
	var held []shard.AllowEntry
	byReq := make(map[string]shard.AllowEntry, len(st.Entries))
	for _, e := range st.Entries {
		byReq[e.ReqID] = e
		switch e.Kind {
		case 'p':
			if now.Sub(e.At) < l.ttl {
				continue
			}
			if err := l.settlePending(ctx, sku, a, e); err != nil {
				return err
			}
		case 'h':
			held = append(held, e)
		case 'x':
			if now.Sub(e.At) > window {
				if err := a.Forget(ctx, "r:"+e.ReqID, e.Raw); err != nil {
					return err
				}
			}
		}
	}
	// A detail index's entry may have come in another step: read those.
	var others []string
	for _, req := range st.Details {
		if _, ok := byReq[req]; !ok {
			others = append(others, req)
		}
	}
	more, err := a.Entries(ctx, others)
	if err != nil {
		return err
	}
	for req, e := range more {
		byReq[req] = e
	}
	for detail, req := range st.Details {
		if e, ok := byReq[req]; !ok || e.Kind != 'h' || e.Detail != detail {
			if err := a.Forget(ctx, "d:"+detail, req); err != nil {
				return err
			}
		}
	}
	for len(held) > 0 {
		n := min(len(held), 500)
		if err := l.releasedHeld(ctx, sku, a, held[:n]); err != nil {
			return err
		}
		held = held[n:]
	}
	return nil
}

// settlePending settles one pending entry from the request's row.
func (l *Ledger) settlePending(ctx context.Context, sku string, a *shard.Allowance, e shard.AllowEntry) error {
	var detail, state string
	err := l.db.QueryRowContext(ctx,
		`SELECT detail_id, state FROM deductions WHERE sku = ? AND request_id = ?`, sku, e.ReqID).Scan(&detail, &state)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		// No row with its request id: it never took, or its detail has
		// not landed (write-back stalled, or a confirm or release wrote
		// the row early, without the ids). Its record on a partition
		// says which; a partition that does not answer leaves the entry
		// for the next sweep.
		if l.partitions != nil {
			for _, p := range l.partitions(sku) {
				took, seq, _, err := p.Took(ctx, e.ReqID)
				if err != nil {
					return fmt.Errorf("record of %s on partition %d: %w", e.ReqID, p.ID, err)
				}
				if took {
					return a.Settle(ctx, e.ReqID, e.User, e.Qty, p.DetailID(seq))
				}
			}
		}
		if _, err := a.GiveBackEntry(ctx, e.ReqID, e.Raw, false); err != nil {
			return err
		}
		l.logger.Info("allowance of a request that never took given back", "sku", sku, "request_id", e.ReqID, "user", e.User, "qty", e.Qty)
	case err != nil:
		return fmt.Errorf("read request: %w", err)
	case state == "released":
		_, err = a.GiveBackEntry(ctx, e.ReqID, e.Raw, true)
		return err
	default:
		return a.Settle(ctx, e.ReqID, e.User, e.Qty, detail)
	}
	return nil
}

// releasedHeld gives back the held entries whose deduction no longer
// holds units: its row is released, or it has no row and its partition
// was fenced and its doubt resolved (Redis lost the detail; its units
// went back to the pool with the doubt, 8.3), so no row will ever come.
func (l *Ledger) releasedHeld(ctx context.Context, sku string, a *shard.Allowance, held []shard.AllowEntry) error {
	args := make([]any, len(held))
	for i, e := range held {
		args[i] = e.Detail
	}
	rows, err := l.db.QueryContext(ctx,
		`SELECT detail_id, state FROM deductions WHERE detail_id IN (?`+strings.Repeat(",?", len(held)-1)+`)`, args...)
	if err != nil {
		return fmt.Errorf("read held details: %w", err)
	}
	states := make(map[string]string, len(held))
	for rows.Next() {
		var id, state string
		if err := rows.Scan(&id, &state); err != nil {
			rows.Close()
			return err
		}
		states[id] = state
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var resolved map[string]bool // "pid:epoch" of fenced partitions whose doubt resolved
	for _, e := range held {
		state, landed := states[e.Detail]
		if !landed {
			if resolved == nil {
				if resolved, err = l.resolvedFenced(ctx, sku); err != nil {
					return err
				}
			}
			_, pid, epoch, _, perr := stockd.ParseDetailID(e.Detail)
			if perr != nil || !resolved[strconv.Itoa(pid)+":"+strconv.FormatInt(epoch, 10)] {
				continue // on its way to MySQL
			}
		} else if state != "released" {
			continue
		}
		if _, err := a.GiveBackEntry(ctx, e.ReqID, e.Raw, true); err != nil {
			return err
		}
	}
	return nil
}

// resolvedFenced lists sku's fenced partitions whose doubt was resolved,
// as "pid:epoch".
func (l *Ledger) resolvedFenced(ctx context.Context, sku string) (map[string]bool, error) {
	rows, err := l.db.QueryContext(ctx,
		`SELECT pid, epoch FROM partitions WHERE sku = ? AND state = 'fenced' AND doubt_resolved_at IS NOT NULL`, sku)
	if err != nil {
		return nil, fmt.Errorf("read fenced partitions: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var pid int
		var epoch int64
		if err := rows.Scan(&pid, &epoch); err != nil {
			return nil, err
		}
		out[strconv.Itoa(pid)+":"+strconv.FormatInt(epoch, 10)] = true
	}
	return out, rows.Err()
}
