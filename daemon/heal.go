package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/shard"
)

// healer keeps the SKUs this node owns selling after partitions leave
// (DESIGN.md invariant 8): every tick it pings every shard, notes since
// when each has not answered, and has preallocate.Heal replace, for each
// SKU it owns (key sku:SKU), the partitions fenced since (lost or rolled
// back) and those on shards unreachable for replace_after. A shard that
// answers again gets st = fenced on the partitions MySQL fenced meanwhile.
type healer struct {
	alloc  *preallocate.Allocator
	shards *shard.Set
	logger *slog.Logger
	// owns tells whether this node owns sku's background work.
	owns func(sku string) bool
	// changed puts sku's new shape in this node's registry and tells the
	// others (catalog.healed).
	changed func(ctx context.Context, sku string)
	// after is replace_after (0: never give up on an unreachable shard).
	after time.Duration
	every time.Duration
	// pingTimeout is redis_timeout: a ping slower than a call may be
	// counts as not answering.
	pingTimeout time.Duration
	kick        chan struct{}

	// down is when each shard was first seen not answering (run only).
	down map[string]time.Time
	// warned limits the "nowhere to replace" warning to one a minute.
	warned time.Time
}

// healTimeout bounds one SKU's Heal (the rebalance lock alone may take 30 s).
const healTimeout = time.Minute

func newHealer(alloc *preallocate.Allocator, shards *shard.Set, owns func(sku string) bool, changed func(ctx context.Context, sku string),
	after, pingTimeout time.Duration, logger *slog.Logger) *healer {
	every := time.Second
	if after > 0 {
		every = min(every, max(after/4, 100*time.Millisecond))
	}
	return &healer{
		alloc: alloc, shards: shards, owns: owns, changed: changed,
		after: after, every: every, pingTimeout: pingTimeout,
		logger: logger.With("component", "heal"),
		kick:   make(chan struct{}, 1),
		down:   map[string]time.Time{},
	}
}

// poke asks for a look now (a partition was just fenced here).
func (h *healer) poke() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// run heals every tick, or when poked, until ctx ends.
func (h *healer) run(ctx context.Context) {
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.kick:
		}
		h.step(ctx)
	}
}

func (h *healer) step(ctx context.Context) {
	view := h.observeShards(ctx)
	var goneIDs []string
	for id := range view.Gone {
		goneIDs = append(goneIDs, id)
	}
	names, err := h.alloc.HealCandidates(ctx, goneIDs)
	if err != nil {
		if ctx.Err() == nil {
			h.logger.Warn("heal: list skus short of partitions", "err", err)
		}
		return
	}
	for _, name := range names {
		if !h.owns(name) {
			continue
		}
		// Bounded: a shard may die under it, and Redis reads are retried
		// until their context ends.
		hctx, cancel := context.WithTimeout(ctx, healTimeout)
		reps, err := h.alloc.Heal(hctx, name, view)
		cancel()
		if len(reps) > 0 {
			h.changed(ctx, name)
		}
		switch {
		case errors.Is(err, preallocate.ErrNoHealthyShard) || errors.Is(err, preallocate.ErrConflict):
			// Nothing answers, or an admin rebalance holds the SKU:
			// the next tick looks again.
			if time.Since(h.warned) > time.Minute {
				h.warned = time.Now()
				h.logger.Warn("partitions not replaced yet", "sku", name, "err", err)
			}
		case err != nil && ctx.Err() == nil:
			h.logger.Warn("replace partitions", "sku", name, "err", err)
		}
	}
}

// back marks fenced in Redis the partitions MySQL fenced on shard id
// (run by the shard probe before the shard counts as healthy again).
func (h *healer) back(ctx context.Context, id string) {
	if err := h.alloc.MarkFenced(ctx, id); err != nil && ctx.Err() == nil {
		h.logger.Warn("mark fenced partitions of a shard back", "shard", id, "err", err)
	}
}

// observeShards pings every shard (in parallel), marks fenced the
// partitions of the shards that answer again, and returns which answered
// and which have not answered for replace_after. Its pings leave the
// shards' health flags alone: one slow ping on a loaded machine must not
// turn requests away.
func (h *healer) observeShards(ctx context.Context) preallocate.ShardView {
	ids := h.shards.IDs()
	answered := make([]bool, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		sh, err := h.shards.Get(id)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, h.pingTimeout)
			defer cancel()
			answered[i] = sh.Ping(pctx) == nil
		}()
	}
	wg.Wait()
	now := time.Now()
	view := preallocate.ShardView{Gone: map[string]bool{}, Up: map[string]bool{}}
	for i, id := range ids {
		view.Up[id] = answered[i]
		since, wasDown := h.down[id]
		switch {
		case answered[i] && wasDown:
			delete(h.down, id)
			h.logger.Info("shard answers again; marking its fenced partitions in redis", "shard", id, "down_for", now.Sub(since).Round(time.Millisecond))
			mctx, cancel := context.WithTimeout(ctx, healTimeout)
			err := h.alloc.MarkFenced(mctx, id)
			cancel()
			if err != nil && ctx.Err() == nil {
				h.logger.Warn("mark fenced partitions", "shard", id, "err", err)
			}
		case answered[i]:
		case !wasDown:
			h.down[id] = now
		case h.after > 0 && now.Sub(since) >= h.after:
			view.Gone[id] = true
		}
	}
	return view
}
