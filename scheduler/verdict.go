package scheduler

import (
	"context"
	"fmt"
	"time"

	"github.com/stockd/stockd/internal/mono"
)

// A sold-out verdict answers from memory only while MySQL confirmed it
// recently (Config.VerdictMaxAge): another node may have restocked, or
// units may have come back to the pool, and the notice saying so may be
// late or lost, or this process may have been frozen. The steady path
// costs an atomic load and a monotonic clock read; once per VerdictMaxAge
// the first request to find the confirmation old reads the SKU's head
// (version, pool, pending allocations) once for every request waiting.

// recheckTimeout bounds one confirmation read (a request waiting on it
// also stops at its own deadline, answering 503).
const recheckTimeout = 3 * time.Second

// Verdict is what a SKU's sold-out verdict says of one request, read from
// memory (VerdictFor).
type Verdict int

// Verdicts.
const (
	// Selling: no verdict, or the request's id may have taken before it
	// (it is in the filter of ids that did): deduct as usual.
	Selling Verdict = iota
	// SoldOutNow: sold out, and MySQL confirmed it within VerdictMaxAge of
	// the request's arrival: answer sold_out without I/O.
	SoldOutNow
	// SoldOutUnconfirmed: sold out, but the last confirmation is older:
	// Deduct confirms it (verdictHolds) before it answers.
	SoldOutUnconfirmed
)

// VerdictFor is the one sold-out check: what sku's verdict says of reqID
// for a request that arrived at arrived (mono.Now), from memory. sku nil
// (not loaded here) is Selling. The hot endpoint asks it with the entry it
// already looked up and answers SoldOutNow itself, without a context, a
// timer or a copy of the request's strings (it keeps neither string, so
// they may point into a request buffer), and hands the verdict to
// DeductFor, which confirms an unconfirmed one (settleVerdict).
func (s *Scheduler) VerdictFor(sku *SKU, reqID string, arrived int64) Verdict {
	if sku == nil {
		return Selling
	}
	so := sku.soldOut.Load()
	if so == nil || so.successes.mayContain(reqID) {
		return Selling
	}
	if !s.verdictFresh(so, arrived) {
		return SoldOutUnconfirmed
	}
	s.memorySoldOut.Inc()
	return SoldOutNow
}

// SoldOutFromMemory answers true when sku is known sold out and reqID
// certainly did not take before (not in the filter of ids that did):
// Deduct would answer sold out without I/O.
func (s *Scheduler) SoldOutFromMemory(name, reqID string) bool {
	return s.VerdictFor(s.reg.Get(name), reqID, mono.Now()) == SoldOutNow
}

// settleVerdict is Deduct's first step: true when the request is answered
// sold out. A verdict older than VerdictMaxAge is confirmed with MySQL
// first.
func (s *Scheduler) settleVerdict(ctx context.Context, sku *SKU, v Verdict) (bool, error) {
	switch v {
	case Selling:
		return false, nil
	case SoldOutNow:
		return true, nil
	}
	sold, err := s.verdictHolds(ctx, sku)
	if sold {
		s.memorySoldOut.Inc()
	}
	return sold, err
}

// verdictFresh tells whether so may answer, without confirmation, a
// request that arrived at arrived (mono.Now).
func (s *Scheduler) verdictFresh(so *soldOut, arrived int64) bool {
	if s.cfg.VerdictMaxAge <= 0 || s.hooks.Head == nil {
		return true
	}
	at := so.checked.Load()
	return at != 0 && arrived-at < int64(s.cfg.VerdictMaxAge)
}

// verdictHolds tells whether sku is still sold out, confirming its verdict
// with MySQL first when the last confirmation is too old. false: the
// verdict is gone (stock arrived), go the normal path. An error means the
// truth could not be read: answering sold_out could be wrong, so the
// request is unavailable (a retry is safe).
func (s *Scheduler) verdictHolds(ctx context.Context, sku *SKU) (bool, error) {
	// The answer may rest on a confirmation read started at most
	// VerdictMaxAge before this request arrived: a slow read this request
	// waited for counts, one that started long before (this process was
	// frozen meanwhile) does not, and is made again, a bounded number of
	// times.
	arrived := mono.Now()
	for range 3 {
		so := sku.soldOut.Load()
		if so == nil {
			return false, nil
		}
		if s.cfg.VerdictMaxAge <= 0 || s.hooks.Head == nil || so.checked.Load() > arrived-int64(s.cfg.VerdictMaxAge) {
			return true, nil
		}
		if mono.Fresh(so.failed.Load(), s.cfg.VerdictMaxAge) {
			return false, fmt.Errorf("%w: the sold-out verdict of %s cannot be confirmed (MySQL did not answer)", ErrUnavailable, sku.Name)
		}
		ch := s.tail.DoChan(sku.Name+"/recheck", func() (any, error) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recheckTimeout)
			defer cancel()
			return nil, s.recheck(ctx, sku, so)
		})
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w: confirm the sold-out verdict of %s: %w", ErrUnavailable, sku.Name, ctx.Err())
		case r := <-ch:
			if r.Err != nil {
				return false, fmt.Errorf("%w: confirm the sold-out verdict of %s: %w", ErrUnavailable, sku.Name, r.Err)
			}
		}
	}
	return false, fmt.Errorf("%w: the sold-out verdict of %s could not be confirmed in time", ErrUnavailable, sku.Name)
}

// recheck reads sku's head from MySQL and either confirms the verdict so
// (nothing can have reached the SKU: no pool, no pending allocation, same
// version) or ends it (reload on a new version, invalidate on units in the
// pool or on their way).
func (s *Scheduler) recheck(ctx context.Context, sku *SKU, so *soldOut) error {
	at := mono.Now()
	s.verdictReads.Inc()
	version, pool, pending, err := s.hooks.Head(ctx, sku.Name)
	if err != nil {
		so.failed.Store(mono.Now())
		s.logger.Warn("confirm sold-out verdict", "sku", sku.Name, "err", err)
		return err
	}
	switch {
	case version != sku.Version() && s.hooks.Reload != nil:
		// Restocked or reshaped elsewhere: load the new shape (Reload
		// ends the verdict).
		s.logger.Debug("sold-out verdict older than the sku's version; reloading", "sku", sku.Name, "version", version)
		if err := s.hooks.Reload(ctx, sku.Name); err != nil {
			so.failed.Store(mono.Now())
			return err
		}
	case version != sku.Version() || pool > 0 || pending > 0:
		s.logger.Debug("stock arrived after the sold-out verdict", "sku", sku.Name, "pool", pool, "pending", pending)
		s.Invalidate(sku.Name, pool)
	default:
		for {
			prev := so.checked.Load()
			if prev >= at || so.checked.CompareAndSwap(prev, at) {
				break
			}
		}
	}
	return nil
}
