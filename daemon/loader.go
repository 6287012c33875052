package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
)

// loader keeps the registry (and the shard connections) in line with
// MySQL.
type loader struct {
	store  *preallocate.Store
	alloc  *preallocate.Allocator
	sched  *scheduler.Scheduler
	shards *shard.Set
	logger *slog.Logger
	// owns tells whether this node tops up a partition (its owner; nil:
	// every partition).
	owns func(sku string, pid int) bool
	// window is how long a closed partition stays a home; a newly added
	// one keeps its generation twice as long (scheduler.retry_window).
	window time.Duration
	// shardDefaults configure the shards known only from MySQL.
	shardDefaults shard.Settings

	mu sync.Mutex
	// due is when each SKU's window-derived view changes (a closed
	// partition leaves the home set, an added one stops being new).
	due map[string]time.Time
	// heads are MySQL's last seen version, pool and in_doubt per SKU.
	heads map[string]preallocate.Head
}

// syncShards connects the shards MySQL knows and this node does not (added
// at runtime, on another node perhaps).
func (l *loader) syncShards(ctx context.Context) error {
	rows, err := l.store.Shards(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rows {
		if r.State == "removed" {
			continue
		}
		if sh, err := l.shards.Get(r.ID); err == nil {
			if sh.Addr() != r.Addr {
				// A failover moved it: connect there.
				if err := l.shards.Replace(ctx, r.ID, r.Addr); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if err := l.shards.AddUnreachable(ctx, l.shardDefaults.For(r.ID, r.Addr)); err != nil {
			errs = append(errs, err)
		} else {
			l.logger.Info("connected shard", "shard", r.ID, "addr", r.Addr)
		}
	}
	return errors.Join(errs...)
}

func (l *loader) loadAll(ctx context.Context) error {
	skus, err := l.store.List(ctx)
	if err != nil {
		return err
	}
	for _, sku := range skus {
		if err := l.load(ctx, sku); err != nil {
			return err
		}
	}
	return nil
}

// load brings sku's partitions' Redis state up, tops up those this node
// owns and puts the SKU in the registry with fresh levels.
func (l *loader) load(ctx context.Context, sku preallocate.SKU) error {
	// One snapshot for Ensure and the registry: a partition added after it
	// is brought up by whoever added it and loaded on the next change.
	sku, err := l.store.Get(ctx, sku.Name)
	if err != nil {
		return err
	}
	open, err := l.alloc.Ensure(ctx, sku)
	if err != nil {
		return fmt.Errorf("sku %s: %w", sku.Name, err)
	}
	var owned []*shard.Partition
	for _, p := range open {
		if l.owns == nil || l.owns(p.SKU, p.ID) {
			owned = append(owned, p)
		}
	}
	if err := l.alloc.TopUp(ctx, sku, owned); err != nil {
		l.logger.Warn("top up", "sku", sku.Name, "err", err)
	}
	info, due, err := l.registryInfo(ctx, sku, time.Now())
	if err != nil {
		return err
	}
	l.sched.Registry().Upsert(info)
	l.sched.Invalidate(sku.Name, sku.Pool)
	if err := l.sched.Refresh(ctx, sku.Name); err != nil {
		l.logger.Warn("refresh levels", "sku", sku.Name, "err", err)
	}
	l.mu.Lock()
	if l.due == nil {
		l.due = map[string]time.Time{}
	}
	if due.IsZero() {
		delete(l.due, sku.Name)
	} else {
		l.due[sku.Name] = due
	}
	l.mu.Unlock()
	return nil
}

// registryInfo turns MySQL's rows into the registry's view at now:
//   - open and fenced partitions are all in the home set;
//   - a closed partition stays in it for the retry window after it closed
//     (requests hashed to it keep their pointers there), then leaves, but
//     not while its stream still holds details: the batcher reads the
//     registry's partitions, and a broker outage longer than the window
//     would otherwise strand them (staying longer is always safe for
//     retries: it only extends the window);
//   - partitions added by a rebalance within twice the window keep a
//     generation (1, 2, … in order), so that a request whose home moved
//     to one of them is claimed at its older homes first.
//
// It also returns when this view next changes by the clock alone.
func (l *loader) registryInfo(ctx context.Context, sku preallocate.SKU, now time.Time) (scheduler.SKUInfo, time.Time, error) {
	info := scheduler.SKUInfo{Name: sku.Name, Chunk: sku.Chunk, Threshold: sku.Threshold, Pool: sku.Pool, Version: sku.Version}
	rules, err := l.rules(sku)
	if err != nil {
		return info, time.Time{}, err
	}
	info.Rules = rules
	var due time.Time
	soonest := func(t time.Time) {
		if t.After(now) && (due.IsZero() || t.Before(due)) {
			due = t
		}
	}
	// Partitions added by rebalances within the generation lifetime keep
	// their generation (renumbered 1, 2, … in order); older ones count as
	// the settled set. The lifetime is twice the retry window: a request
	// first served by a node that had not loaded a generation yet (at most
	// reload_every after it was added, while MySQL answers) is anchored
	// under the older set, and all its retries within the window must
	// still be (ARCHITECTURE 4.2).
	life := 2 * l.window
	var gens []int
	for _, rp := range sku.Partitions {
		if rp.Gen > 0 && rp.CreatedAt.Add(life).After(now) {
			soonest(rp.CreatedAt.Add(life))
			if !slices.Contains(gens, rp.Gen) {
				gens = append(gens, rp.Gen)
			}
		}
	}
	sort.Ints(gens)
	gen := map[int]int{}
	for _, rp := range sku.Partitions {
		if i := slices.Index(gens, rp.Gen); i >= 0 && rp.CreatedAt.Add(life).After(now) {
			gen[rp.ID] = i + 1
		}
	}
	for _, rp := range sku.Partitions {
		lingering := false
		if rp.State == "closed" {
			if rp.ClosedAt.Add(l.window).After(now) {
				soonest(rp.ClosedAt.Add(l.window))
			} else {
				lingering = true
			}
		}
		h, err := l.shards.Partition(sku.Name, rp.ID, rp.Epoch, rp.Shard)
		if lingering {
			if err != nil || !l.unsynced(ctx, h) {
				// Out of the retry window and written back: no longer a home.
				info.Retired = append(info.Retired, rp.ID)
				continue
			}
			soonest(now.Add(lingerRecheck))
		}
		if err != nil {
			if rp.State != "open" {
				l.logger.Warn("partition on an unknown shard left out of the home set", "sku", sku.Name, "pid", rp.ID, "shard", rp.Shard)
				info.Retired = append(info.Retired, rp.ID)
				continue
			}
			return info, due, fmt.Errorf("sku %s partition %d: %w (its shard is neither configured nor recorded)", sku.Name, rp.ID, err)
		}
		h.ObserveSeq(rp.SeenSeq)
		info.Partitions = append(info.Partitions, scheduler.PartitionInfo{Handle: h, Open: rp.State == "open", Gen: gen[rp.ID]})
	}
	return info, due, nil
}

// forget drops an archived SKU from this node: its registry entry (and
// with it its partitions' levels, metric series and write-back readers)
// and the figures its metrics came from.
func (l *loader) forget(name string) {
	l.sched.Registry().Remove(name)
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.due, name)
	if _, ok := l.heads[name]; ok {
		// reload ranges over the map it stored, without the lock: replace
		// it rather than change it.
		heads := make(map[string]preallocate.Head, len(l.heads))
		for k, v := range l.heads {
			if k != name {
				heads[k] = v
			}
		}
		l.heads = heads
	}
}

// rules are sku's sale rules for the registry, nil when it has none.
func (l *loader) rules(sku preallocate.SKU) (*scheduler.Rules, error) {
	if sku.PerUserLimit == 0 && sku.OpensAt.IsZero() && sku.ClosesAt.IsZero() {
		return nil, nil
	}
	r := &scheduler.Rules{PerUserLimit: sku.PerUserLimit, OpensAt: sku.OpensAt, ClosesAt: sku.ClosesAt}
	if r.PerUserLimit > 0 {
		a, err := l.shards.Allowance(sku.Name, sku.LimitShard)
		if err != nil {
			return nil, fmt.Errorf("sku %s allowance on shard %q: %w", sku.Name, sku.LimitShard, err)
		}
		r.Allowance = a
	}
	return r, nil
}

// lingerRecheck is how often a closed partition kept past the retry window
// for its unsynced details is looked at again.
const lingerRecheck = 30 * time.Second

// unsynced tells whether a closed partition's stream still holds details
// (true too when its shard does not answer: keeping it is the safe side).
func (l *loader) unsynced(ctx context.Context, h *shard.Partition) bool {
	if !h.Shard.Healthy() {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := h.Inspect(ctx)
	n := st.Backlog
	if err != nil {
		l.logger.Warn("closed partition kept in the registry: its backlog is unknown", "sku", h.SKU, "pid", h.ID, "shard", h.Shard.ID, "err", err)
		return true
	}
	if n > 0 {
		l.logger.Warn("closed partition kept in the registry past the retry window: its details are not all written back", "sku", h.SKU, "pid", h.ID, "entries", n)
	}
	return n > 0
}

// observeSeen feeds every open partition's handle the highest sequence
// that write-back landed in MySQL (from any node). A take checks the
// shard's state against it, so a shard that went back (a restart from an
// older file, a failover to a lagging replica) is caught by every node
// within reload_every of the write-back, not only by a node that took
// there itself or loaded the SKU since: the lost deductions whose details
// MySQL holds are exactly those whose sequences a take on the old state
// would reuse.
func (l *loader) observeSeen(ctx context.Context) error {
	seen, err := l.store.SeenSeqs(ctx)
	if err != nil {
		return err
	}
	reg := l.sched.Registry()
	for _, s := range seen {
		sku := reg.Get(s.SKU)
		if sku == nil {
			continue
		}
		for _, p := range sku.Slots() {
			if p.Handle.ID == s.PID && p.Handle.Epoch == s.Epoch {
				p.Handle.ObserveSeq(s.Seq)
				break
			}
		}
	}
	return nil
}

// refresh compares the registry with MySQL and reloads what changed
// elsewhere (created, restocked, partitions changed, units returned); the
// daemon runs it every reload_every.
func (l *loader) refresh(ctx context.Context) {
	if err := l.reload(ctx); err != nil && ctx.Err() == nil {
		l.logger.Warn("registry reload", "err", err)
	}
}

func (l *loader) reload(ctx context.Context) error {
	if err := l.syncShards(ctx); err != nil {
		l.logger.Warn("connect shards", "err", err)
	}
	if err := l.observeSeen(ctx); err != nil {
		l.logger.Warn("read seen sequences", "err", err)
	}
	heads, err := l.store.Heads(ctx)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.heads = heads
	l.mu.Unlock()
	reg := l.sched.Registry()
	for _, name := range reg.Names() {
		if _, ok := heads[name]; ok {
			continue
		}
		// Not among the live SKUs: archived (or the heads were read before
		// a SKU that a notice just loaded was created): ask for it.
		if _, err := l.store.Get(ctx, name); errors.Is(err, stockd.ErrUnknownSKU) {
			l.forget(name)
		}
	}
	now := time.Now()
	for name, h := range heads {
		sku := reg.Get(name)
		l.mu.Lock()
		due, timed := l.due[name]
		l.mu.Unlock()
		switch {
		case sku == nil || sku.Version() != h.Version || (timed && now.After(due)):
			full, err := l.store.Get(ctx, name)
			if err != nil {
				return err
			}
			if err := l.load(ctx, full); err != nil {
				return err
			}
		case h.Pool > 0 && (sku.SoldOut() || sku.Pool() == 0):
			l.sched.Invalidate(name, h.Pool)
		}
	}
	return nil
}

// skuCollector exports per-SKU figures MySQL holds, as of the last reload.
type skuCollector struct{ loader *loader }

var (
	inDoubtDesc = prometheus.NewDesc("stockd_sku_in_doubt_units",
		"Units held in_doubt (a shard lost data; never re-sold until reconciled).", []string{"sku"}, nil)
	poolDesc = prometheus.NewDesc("stockd_sku_pool_units",
		"Units in the SKU's MySQL pool (not allocated to partitions).", []string{"sku"}, nil)
)

func (c *skuCollector) Describe(ch chan<- *prometheus.Desc) { ch <- inDoubtDesc; ch <- poolDesc }

func (c *skuCollector) Collect(ch chan<- prometheus.Metric) {
	c.loader.mu.Lock()
	defer c.loader.mu.Unlock()
	for name, h := range c.loader.heads {
		ch <- prometheus.MustNewConstMetric(inDoubtDesc, prometheus.GaugeValue, float64(h.InDoubt), name)
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(h.Pool), name)
	}
}
