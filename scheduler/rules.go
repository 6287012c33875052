package scheduler

import (
	"context"
	"fmt"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/mono"
	"github.com/stockd/stockd/shard"
)

// Rules are a SKU's sale rules (issue 15): a per-user limit and an
// opening and closing time. A SKU without any has none (nil) and pays
// nothing for them: the hot path reads one pointer.
type Rules struct {
	// PerUserLimit: a user holds at most this many units at once
	// (reserved and confirmed); 0 means no limit.
	PerUserLimit int64
	// OpensAt and ClosesAt bound the sale; zero means unbounded.
	OpensAt, ClosesAt time.Time
	// Allowance is where the per-user counts live (set when
	// PerUserLimit > 0).
	Allowance *shard.Allowance
}

// Gate is what the rules say about a deduction before any stock is
// touched.
type Gate int

// Gate answers.
const (
	// Open: go on.
	Open Gate = iota
	// NotOpen: before opens_at.
	NotOpen
	// Closed: after closes_at.
	Closed
	// NeedsUser: the SKU has a per-user limit and the request names no
	// user.
	NeedsUser
)

// Rules returns the SKU's rules, nil when it has none (or is unknown).
func (s *Scheduler) Rules(name string) *Rules {
	if s.reg.ruled.Load() == 0 {
		return nil
	}
	sku := s.reg.Get(name)
	if sku == nil {
		return nil
	}
	return sku.rules.Load()
}

// Rules returns the entry's sale rules, nil when it has none.
func (s *SKU) Rules() *Rules { return s.rules.Load() }

// Check answers from memory whether r lets a deduction in at now.
func (r *Rules) Check(now time.Time, hasUser bool) Gate {
	switch {
	case !r.OpensAt.IsZero() && now.Before(r.OpensAt):
		return NotOpen
	case !r.ClosesAt.IsZero() && !now.Before(r.ClosesAt):
		return Closed
	case r.PerUserLimit > 0 && !hasUser:
		return NeedsUser
	}
	return Open
}

// DeductLimited is Deduct for a SKU with a per-user limit. The user's
// allowance is taken first, on the SKU's allowance shard; then the stock
// as Deduct takes it; then the allowance entry is settled (the request
// took: held until released or expired) or given back (no stock, or the
// id was reused for another qty). A retry meets its entry (AllowAgain) and
// so its first outcome, never limit_reached. A crash or an error between
// the two steps leaves the entry pending: it keeps counting (the limit is
// never exceeded) until the ledger's allowance sweep resolves it from
// MySQL after the reservation TTL (sync.Ledger.SweepAllowance).
func (s *Scheduler) DeductLimited(ctx context.Context, name string, qty int64, reqID, userID string, r *Rules) (Result, error) {
	sku := s.reg.Get(name)
	if sku == nil {
		return Result{}, stockd.ErrUnknownSKU
	}
	return s.deductLimited(ctx, sku, s.VerdictFor(sku, reqID, mono.Now()), qty, reqID, userID, r)
}

// deductLimited is DeductLimited for a registry entry and its verdict.
func (s *Scheduler) deductLimited(ctx context.Context, sku *SKU, v Verdict, qty int64, reqID, userID string, r *Rules) (Result, error) {
	name := sku.Name
	a := r.Allowance
	if !a.Shard.Healthy() {
		return Result{}, fmt.Errorf("%w: allowance shard %s of %s does not answer", ErrUnavailable, a.Shard.Config().ID, name)
	}
	s.allowCalls.Inc()
	code, held, err := a.Take(ctx, reqID, userID, qty, r.PerUserLimit)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	switch code {
	case shard.AllowLimit:
		return Result{Status: LimitReached, Held: held, Limit: r.PerUserLimit}, nil
	case shard.AllowGivenBack:
		// Released or expired: its retry meets the first outcome and
		// holds nothing.
		return s.deduct(ctx, sku, v, qty, reqID, userID)
	case shard.AllowTaken, shard.AllowAgain:
	default:
		return Result{}, fmt.Errorf("allowance take: code %d: %w", code, shard.ErrBadReply)
	}
	res, err := s.deduct(ctx, sku, v, qty, reqID, userID)
	if err != nil {
		// Unknown outcome: the entry stays pending (a retry finds it).
		return res, err
	}
	// The settle or give back runs even when the request's own context
	// is ending: the outcome is known, recording it saves the sweep's work.
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), recheckTimeout)
	defer cancel()
	switch res.Status {
	case OK:
		s.allowCalls.Inc()
		err = a.Settle(c, reqID, userID, res.Qty, res.Partition.DetailID(res.Seq))
	case SoldOut:
		s.allowCalls.Inc()
		_, err = a.GiveBack(c, reqID)
	case Reused:
		if code == shard.AllowTaken {
			s.allowCalls.Inc()
			_, err = a.GiveBack(c, reqID)
		}
	}
	if err != nil {
		// The outcome stands; the sweep settles the entry later.
		s.logger.Warn("allowance not settled; the sweep will", "sku", name, "request_id", reqID, "err", err)
	}
	return res, nil
}
