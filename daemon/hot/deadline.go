package hot

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
// requests that arrive within one deadlineTick share one context instead,
// made when the first of them asked, ending timeout plus one tick later.
// Every request therefore gets at least its timeout, and at most one tick
// more. Nothing cancels a shared context early: its timer ends it, and
// the scheduler and Redis calls only read its deadline and Done channel (a
// request that finished early simply stops looking).
type deadlines struct {
	timeout time.Duration
	cur     atomic.Pointer[sharedDeadline]
}

type sharedDeadline struct {
	ctx context.Context
	// until (mono.Now): requests that arrived before it may share ctx.
	until int64
	// cancel is kept only so that the context's resources are owned by
	// something; the deadline's timer releases them.
	cancel context.CancelFunc
}

// get returns a context that ends no sooner than timeout after arrived
// (mono.Now of the request's arrival, which is before this call).
func (d *deadlines) get(arrived int64) context.Context {
	cur := d.cur.Load()
	if cur != nil && arrived < cur.until {
		return cur.ctx
	}
	// Made now, after arrived: it ends at least timeout+tick after every
	// request that arrived before until.
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout+deadlineTick)
	next := &sharedDeadline{ctx: ctx, until: arrived + int64(deadlineTick), cancel: cancel}
	// When another request installed one meanwhile, this one serves only
	// this request and ends at its deadline.
	d.cur.CompareAndSwap(cur, next)
	return ctx
}
