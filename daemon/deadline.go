package daemon

import (
	"context"
	"sync/atomic"
	"time"
)

// deadlineTick is how long one shared request context is handed out.
const deadlineTick = time.Millisecond

// deadlines hands out the contexts that bound deductions. A context of
// its own per request (context.WithTimeout) cost a timer and two
// allocations per request, about 3% of the node's CPU under load; the
// requests that begin within one deadlineTick share one context instead,
// which ends request_timeout plus one tick after the first of them began.
// Every request therefore gets at least its request_timeout, and at most
// one tick more. Nothing cancels a shared context early: its timer ends
// it, and the scheduler and Redis calls only read its deadline and Done
// channel (a request that finished early simply stops looking).
type deadlines struct {
	timeout time.Duration
	cur     atomic.Pointer[sharedDeadline]
}

type sharedDeadline struct {
	ctx context.Context
	// until: requests that begin before it may share ctx.
	until time.Time
	// cancel is kept only to release the context's resources if it is
	// ever dropped early; the deadline's timer does that otherwise.
	cancel context.CancelFunc
}

// get returns a context that ends no sooner than timeout after now.
func (d *deadlines) get(now time.Time) context.Context {
	cur := d.cur.Load()
	if cur != nil && now.Before(cur.until) {
		return cur.ctx
	}
	ctx, cancel := context.WithDeadline(context.Background(), now.Add(d.timeout+deadlineTick))
	next := &sharedDeadline{ctx: ctx, until: now.Add(deadlineTick), cancel: cancel}
	// When another request installed one meanwhile, this one serves only
	// this request and ends at its deadline.
	d.cur.CompareAndSwap(cur, next)
	return ctx
}
