package daemon

import (
	"context"
	"time"

	"golang.org/x/sync/errgroup"
)

// lifecycle is the teardown of what Run opened. Each step is registered
// right after the construction it undoes (alertmanager's app/lifecycle.go),
// so the functions that open things need no cleanup of their own when a
// later step fails; close runs the steps in reverse order, as deferred
// calls in Run would.
type lifecycle struct{ undo []func() }

// onClose registers f to run at close.
func (l *lifecycle) onClose(f func()) { l.undo = append(l.undo, f) }

// close runs the registered steps, last first.
func (l *lifecycle) close() {
	for i := len(l.undo) - 1; i >= 0; i-- {
		l.undo[i]()
	}
	l.undo = nil
}

// loops runs the node's background work in serve's errgroup: each loop is
// a named method, run here rather than written out as a closure in Run
// (nsqd's waitGroup.Wrap). A loop returns when ctx ends.
type loops struct {
	g   *errgroup.Group
	ctx context.Context
}

// run runs fn(ctx).
func (l loops) run(fn func(ctx context.Context)) {
	l.g.Go(func() error { fn(l.ctx); return nil })
}

// every runs fn every d.
func (l loops) every(d time.Duration, fn func(ctx context.Context)) {
	l.run(func(ctx context.Context) { every(ctx, d, fn) })
}

// every calls fn every d (the first time d from now) until ctx ends; a
// call that overruns d delays the next one rather than overlapping it.
func every(ctx context.Context, d time.Duration, fn func(ctx context.Context)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn(ctx)
		}
	}
}
