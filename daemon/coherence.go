package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/mono"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/scheduler"
)

// Read-your-writes across the cluster (DESIGN invariant 7) rests on two
// halves (ARCHITECTURE 12.4):
//
//   - an admin change waits, up to cluster.apply_timeout, until every live
//     member has applied it (notices.publish), and names those that did
//     not;
//   - a node about to give a negative answer (404 for an unknown SKU,
//     sold_out from memory) makes sure the MySQL read it rests on started
//     less than cluster.view_max_age ago, and reads again otherwise (the
//     catalogue below; the scheduler's verdict.go for sold_out).
//
// A member that did not confirm in time (frozen, partitioned, slow) is
// covered by the second half: the admin call returned at least
// view_max_age after its commit, so any negative answer after that rests
// on a read that saw the change.

// ClusterConfig bounds how stale a node's view may be when it answers.
type ClusterConfig struct {
	// ApplyTimeout bounds how long an admin change waits for every live
	// member to confirm that it applied the change; the answer names the
	// members that did not ("unconfirmed").
	ApplyTimeout time.Duration `yaml:"apply_timeout"`
	// ViewMaxAge is the oldest MySQL read a node answers 404 (unknown
	// SKU) or sold_out from memory on; an older view is read again first
	// (at most one read per SKU, and one for all unknown names, per
	// interval).
	ViewMaxAge time.Duration `yaml:"view_max_age"`
}

// Validate reports the first bad field.
func (c ClusterConfig) Validate() error {
	switch {
	case c.ViewMaxAge <= 0:
		return errors.New("view_max_age: must be positive")
	case c.ApplyTimeout <= c.ViewMaxAge:
		// An admin call that gives up on a member must return after the
		// member's views from before the change have aged out.
		return errors.New("apply_timeout: must be longer than view_max_age")
	}
	return nil
}

// catalogueReadTimeout bounds one catalogue read and the loads it leads to.
const catalogueReadTimeout = 5 * time.Second

// errUnconfirmed: a negative answer could not be confirmed with MySQL.
var errUnconfirmed = errors.New("cannot confirm with MySQL")

// catalogue confirms with MySQL that a SKU is unknown before the node
// answers 404: a SKU created on another node may not have reached this
// one yet. One read of every SKU's head serves every unknown name for
// view_max_age, so a flood of made-up names costs one query per interval.
type catalogue struct {
	maxAge time.Duration
	loader *loader
	reg    *scheduler.Registry
	group  singleflight.Group
	// read is when the last complete read started (every SKU in MySQL
	// was then loaded); failed is when a read last failed (mono.Now).
	read, failed atomic.Int64
	// reads counts the reads (nil: not counted).
	reads prometheus.Counter
}

// known tells whether name is a SKU, loading it when MySQL has it and this
// node did not. false with a nil error: 404 is the right answer. An error
// means MySQL could not confirm (answer 503).
func (c *catalogue) known(ctx context.Context, name string) (bool, error) {
	// The answer may rest on a read started at most maxAge before this
	// request arrived: a slow read it waited for counts, one that started
	// long before (the process was frozen meanwhile) does not, and is
	// made again, a bounded number of times.
	arrived := mono.Now()
	for range 3 {
		if c.reg.Get(name) != nil {
			return true, nil
		}
		if c.read.Load() > arrived-int64(c.maxAge) {
			return false, nil
		}
		if mono.Fresh(c.failed.Load(), c.maxAge) {
			return false, errUnconfirmed
		}
		ch := c.group.DoChan("", func() (any, error) {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), catalogueReadTimeout)
			defer cancel()
			return nil, c.catchUp(ctx)
		})
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case r := <-ch:
			if r.Err != nil {
				return false, r.Err
			}
		}
	}
	return c.reg.Get(name) != nil, errUnconfirmed
}

// catchUp reads every SKU's head and loads those this node does not know.
func (c *catalogue) catchUp(ctx context.Context) error {
	at := mono.Now()
	if c.reads != nil {
		c.reads.Inc()
	}
	heads, err := c.loader.store.Heads(ctx)
	if err != nil {
		c.failed.Store(mono.Now())
		return fmt.Errorf("%w: %w", errUnconfirmed, err)
	}
	var errs []error
	for name := range heads {
		if c.reg.Get(name) != nil {
			continue
		}
		if err := c.loader.load(ctx, preallocate.SKU{Name: name}); err != nil && !errors.Is(err, stockd.ErrUnknownSKU) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		c.failed.Store(mono.Now())
		c.loader.logger.Warn("load skus found unknown before a 404", "err", err)
		return fmt.Errorf("%w: %w", errUnconfirmed, err)
	}
	c.read.Store(at)
	return nil
}
