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
