// Package scheduler holds the partition registry (SKU → partitions, their
// last known levels and states) and chooses, for each request, where to
// deduct.
//
// # The path of a request
//
// Every request id has a home partition (rendezvous hash of the id over the
// SKU's partition ids, the same on every node). The home holds the request's
// pointer: the one (partition, round) that may take for it, absent meaning
// (home, 1). A request first takes at its home. When that is short, the
// scheduler picks another partition by known levels and moves the pointer
// there with a compare-and-set before taking; each take leaves a record
// (took or short-in-round) on its partition. A retry or a concurrent
// duplicate therefore follows the same pointer and meets the first
// outcome: a (partition, round) that answered short answers short forever,
// the pointer moves only away from one that answered short, and a take at
// the home checks the pointer, so at most one take succeeds per request id.
// When every partition is short but stock is still on its way (pool or
// refills), the request waits and moves to the next round, in which
// partitions it found short may take again.
//
// Nodes learn of added partitions at different moments. Within a
// generation's lifetime, a request whose home is a newly added partition
// is first claimed at its older homes, from its anchor (its home under the
// settled set, the same on every node) on: the first claim decides, in
// the request's pointer slot, whether that partition stays its home or
// redirects it, so copies on nodes with different views meet at one home.
//
// # Sold out
//
// When the pool, the pending allocations and every partition are empty, the
// SKU is sold out: the registry loads the request ids that took into a Bloom
// filter and answers sold_out from memory to every id not in it. Restock
// and release (Invalidate) clear the verdict; they and every applied
// refill bump the SKU's generation, which voids a verdict still being
// computed. A verdict answers from memory only while MySQL confirmed it
// within Config.VerdictMaxAge (verdict.go): another node's restock cannot
// hide behind a late notice.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/hashx"
	"github.com/stockd/stockd/internal/mono"
	"github.com/stockd/stockd/shard"
)

var (
	// ErrUnavailable means the outcome could not be decided now (a shard
	// did not answer, or stock did not arrive in time); a retry with the
	// same request id is safe.
	ErrUnavailable = errors.New("unavailable")
)

// Config tunes selection.
type Config struct {
	// StockWait bounds how long a request waits for refills when every
	// partition is short but the pool still holds stock.
	StockWait time.Duration `yaml:"stock_wait"`
	// SweepEvery is how often a node looks at the partitions it owns and
	// refills low sub-domains (deductions on other nodes lower them).
	SweepEvery time.Duration `yaml:"sweep_every"`
	// IdleSweepEvery: the sweep reads a partition that saw no take since
	// its last look (none here, no hint from another node) only this
	// often, and IdleSweepsPerSecond caps those reads per node, so that
	// idle partitions cost a bounded number of Redis calls however many
	// there are. Partitions with takes are read every SweepEvery.
	IdleSweepEvery      time.Duration `yaml:"idle_sweep_every"`
	IdleSweepsPerSecond int           `yaml:"idle_sweeps_per_second"`
	// RetryWindow is how long a retry of a request id is guaranteed its
	// first outcome across partition changes: a closed partition stays the
	// home of the ids hashed to it this long, and partitions added by a
	// rebalance keep their generation for twice as long (4.2).
	//
	// It is also the generation length of the partitions' request records
	// and pointers in Redis: they expire between one and two windows after
	// they were last written (ARCHITECTURE 2), so a retry later than the
	// window may meet no record and is caught by MySQL's (sku, request_id)
	// key instead (6.4). Every node must use the same value.
	RetryWindow time.Duration `yaml:"retry_window"`
	// ShortWindow lets tests set a RetryWindow under the one-minute
	// minimum (a window shorter than the longest request, stock_wait
	// included, would let a request's own records expire under it).
	ShortWindow bool `yaml:"-"`
	// VerdictMaxAge bounds how old the MySQL confirmation of a sold-out
	// verdict may be when it answers sold_out from memory (see
	// verdict.go); 0: no bound (the verdict stands until invalidated).
	// The daemon sets it from cluster.view_max_age.
	VerdictMaxAge time.Duration `yaml:"-"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{StockWait: 2 * time.Second, SweepEvery: 100 * time.Millisecond, RetryWindow: 15 * time.Minute,
		IdleSweepEvery: 5 * time.Second, IdleSweepsPerSecond: 20}
}

// Validate reports the first bad field.
func (c Config) Validate() error {
	if c.StockWait <= 0 {
		return errors.New("stock_wait: must be positive")
	}
	if c.SweepEvery <= 0 {
		return errors.New("sweep_every: must be positive")
	}
	if c.IdleSweepEvery <= 0 {
		return errors.New("idle_sweep_every: must be positive")
	}
	if c.IdleSweepsPerSecond < 1 {
		return errors.New("idle_sweeps_per_second: must be at least 1")
	}
	if c.RetryWindow < time.Minute && !(c.ShortWindow && c.RetryWindow >= time.Second) {
		return errors.New("retry_window: must be at least 1m")
	}
	return nil
}

// Hooks are what the scheduler needs from the pool side; the daemon wires
// them to preallocate.
type Hooks struct {
	// Refill asks (without blocking) for sub-domain sub of p to be topped
	// up with chunk units while it holds less than capAt; done reports
	// what happened (an error: MySQL or Redis did not answer, and the
	// refill may be retried). It returns false when the request was not
	// queued. preallocate's Allocator.Request is one.
	Refill func(p *shard.Partition, sub byte, chunk, capAt int64, done func(stockd.Refill, error)) bool
	// Owns tells whether this node runs p's refills (its owner in the
	// cluster). nil: every partition is this node's.
	Owns func(p *shard.Partition) bool
	// Forward asks p's owner to refill sub-domain sub below capAt (best
	// effort: the owner's sweep catches what is lost).
	Forward func(p *shard.Partition, sub byte, capAt int64)
	// PoolState reads the pool and the pending allocations from MySQL
	// (fills by their units, each drain as at least one unit arriving).
	PoolState func(ctx context.Context, sku string) (pool, pending int64, err error)
	// Consolidate gathers scattered units so that a request for need units
	// can be served: it drains partitions holding fewer than need back to
	// the pool and fills one partition with at least need.
	Consolidate func(ctx context.Context, parts []*shard.Partition, need, chunk, threshold int64) error
	// Lost is told that p's Redis state is gone.
	Lost func(p *shard.Partition)
	// Took is told, after a take on p recorded details, when another node
	// owns p (its write-back reads p's stream when told, see Touched).
	// nil: every partition is this node's.
	Took func(p *shard.Partition)
	// Rollback is told that p's shard answered with an older sequence
	// than already seen (it lost writes).
	Rollback func(p *shard.Partition)
	// SoldOut is told when this node concluded that a SKU is sold out, so
	// that other nodes can check and answer from memory too.
	SoldOut func(sku string)
	// Head reads a SKU's version, pool and pending allocations from MySQL
	// (pending as PoolState counts it): a sold-out verdict older than
	// VerdictMaxAge is confirmed with it before it answers again.
	Head func(ctx context.Context, sku string) (version, pool, pending int64, err error)
	// Reload reloads a SKU from MySQL into the registry (its version
	// moved) and ends its sold-out verdict (Invalidate).
	Reload func(ctx context.Context, sku string) error
}

// Status of a deduction.
type Status int

// Deduction outcomes.
const (
	OK Status = iota + 1
	SoldOut
	// Reused: the request id already took for another quantity; nothing
	// was deducted (the first deduction stands).
	Reused
	// LimitReached: the user's per-user allowance is used up (Held says
	// how many units the user holds); nothing was deducted.
	LimitReached
)

// Result of a deduction.
type Result struct {
	Status Status
	// Slot, Seq and Qty identify the deduction when Status is OK.
	Partition *shard.Partition
	Seq       int64
	Qty       int64
	// Held and Limit are the units the user holds and the SKU's
	// per-user limit when Status is LimitReached.
	Held, Limit int64
}

// Scheduler chooses partitions and runs takes.
type Scheduler struct {
	cfg    Config
	reg    *Registry
	hooks  Hooks
	logger *slog.Logger
	tail   singleflight.Group

	calls         *prometheus.CounterVec
	takeCalls     prometheus.Counter
	pointCalls    prometheus.Counter
	claimCalls    prometheus.Counter
	allowCalls    prometheus.Counter
	memorySoldOut prometheus.Counter
	verdictReads  prometheus.Counter
	refillAsks    prometheus.Counter
	swaps         prometheus.Counter
	stockWait     prometheus.Histogram
}

// New returns a scheduler over reg.
func New(cfg Config, reg *Registry, hooks Hooks, logger *slog.Logger) *Scheduler {
	s := &Scheduler{cfg: cfg, reg: reg, hooks: hooks, logger: logger.With("component", "scheduler")}
	s.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "stockd_scheduler_redis_calls_total",
		Help: "Redis script calls made to serve deductions, by script (take, point, claim, allow).",
	}, []string{"script"})
	s.takeCalls = s.calls.WithLabelValues("take")
	s.pointCalls = s.calls.WithLabelValues("point")
	s.claimCalls = s.calls.WithLabelValues("claim")
	s.allowCalls = s.calls.WithLabelValues("allow")
	s.memorySoldOut = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stockd_scheduler_sold_out_from_memory_total",
		Help: "Deductions answered sold_out from memory, without Redis.",
	})
	s.verdictReads = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stockd_scheduler_verdict_reads_total",
		Help: "MySQL reads made to confirm a sold-out verdict older than cluster.view_max_age.",
	})
	s.refillAsks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stockd_scheduler_refills_requested_total",
		Help: "Refills of a sub-domain this node asked for (run here or sent to the partition's owner).",
	})
	s.swaps = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "stockd_scheduler_subdomain_swaps_total",
		Help: "Active sub-domain swaps this node observed in take replies.",
	})
	s.stockWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "stockd_scheduler_stock_wait_seconds",
		Help:    "How long deductions waited for stock because no partition held their quantity (refills in flight, the truth looked at again); a sale that never waits has no observations.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	})
	return s
}

// levelCollector exports the registry's last known partition levels.
type levelCollector struct{ reg *Registry }

var levelDesc = prometheus.NewDesc("stockd_partition_units",
	"Units in a partition's sub-domain, as this node last saw them (open partitions).",
	[]string{"sku", "partition", "sub", "shard"}, nil)

func (c *levelCollector) Describe(ch chan<- *prometheus.Desc) { ch <- levelDesc }

func (c *levelCollector) Collect(ch chan<- prometheus.Metric) {
	for _, name := range c.reg.Names() {
		sku := c.reg.Get(name)
		if sku == nil {
			continue
		}
		for _, p := range sku.Slots() {
			if !p.Open() {
				continue
			}
			pid := strconv.Itoa(p.Handle.ID)
			ch <- prometheus.MustNewConstMetric(levelDesc, prometheus.GaugeValue, float64(p.a.Load()), name, pid, "a", p.Handle.Shard.ID)
			ch <- prometheus.MustNewConstMetric(levelDesc, prometheus.GaugeValue, float64(p.b.Load()), name, pid, "b", p.Handle.Shard.ID)
		}
	}
}

// Collectors are the scheduler's metrics, for the daemon's registry.
func (s *Scheduler) Collectors() []prometheus.Collector {
	return []prometheus.Collector{s.calls, s.memorySoldOut, s.verdictReads, s.refillAsks, s.swaps, s.stockWait, &levelCollector{reg: s.reg}}
}

// Registry returns the registry.
func (s *Scheduler) Registry() *Registry { return s.reg }

type pointer struct {
	pid, round int
}

func (p pointer) String() string { return strconv.Itoa(p.pid) + ":" + strconv.Itoa(p.round) }

func parsePointer(s string) (pointer, error) {
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return pointer{}, fmt.Errorf("pointer %q: %w", s, shard.ErrBadReply)
	}
	pid, err1 := strconv.Atoi(s[:i])
	round, err2 := strconv.Atoi(s[i+1:])
	if err1 != nil || err2 != nil || round < 1 {
		return pointer{}, fmt.Errorf("pointer %q: %w", s, shard.ErrBadReply)
	}
	return pointer{pid, round}, nil
}

// Deduct takes qty units of sku for reqID, or returns the outcome an
// earlier attempt with the same id had. Its steps, in order: the sold-out
// verdict (VerdictFor, confirmed by settleVerdict), the request's home
// (homeOf), then the walk: take at the pointer's (partition, round)
// (takeStep); when short there, choose the next partition, waiting for
// stock if none has enough (pickStep), and move the pointer there
// (pointTo). The hot endpoint, which has looked the SKU up and asked its
// verdict already, calls DeductFor instead.
func (s *Scheduler) Deduct(ctx context.Context, name string, qty int64, reqID, userID string) (Result, error) {
	sku := s.reg.Get(name)
	if sku == nil {
		return Result{}, stockd.ErrUnknownSKU
	}
	return s.deduct(ctx, sku, s.VerdictFor(sku, reqID, mono.Now()), qty, reqID, userID)
}

// DeductFor is Deduct (or DeductLimited, when rules has a per-user limit)
// for a registry entry the caller holds and the verdict it asked of
// VerdictFor when the request arrived: the verdict is made once per
// request.
func (s *Scheduler) DeductFor(ctx context.Context, sku *SKU, v Verdict, qty int64, reqID, userID string, rules *Rules) (Result, error) {
	if rules != nil && rules.PerUserLimit > 0 {
		return s.deductLimited(ctx, sku, v, qty, reqID, userID, rules)
	}
	return s.deduct(ctx, sku, v, qty, reqID, userID)
}

// deduct settles the verdict v, then walks.
func (s *Scheduler) deduct(ctx context.Context, sku *SKU, v Verdict, qty int64, reqID, userID string) (Result, error) {
	sold, err := s.settleVerdict(ctx, sku, v)
	if err != nil {
		return Result{}, err
	}
	if sold {
		return Result{Status: SoldOut}, nil
	}
	// d stays on the stack (escape analysis): a walk that takes at its
	// home allocates nothing here; tried grows only on the short path.
	d := deduction{s: s, sku: sku, qty: qty, reqID: reqID, userID: userID, began: mono.Now()}
	return d.walk(ctx)
}

// deduction is one request's walk over its SKU's partitions: where its
// pointer is (cur), at which home, and the partitions found short in the
// current round (tried).
type deduction struct {
	s             *Scheduler
	sku           *SKU
	qty           int64
	reqID, userID string
	// began is when the walk began (mono.Now): a sold-out verdict
	// installed before it covers every copy of the request.
	began int64

	home  *Slot
	cur   pointer
	tried []int
	// deadline bounds the wait for stock (Config.StockWait), set at the
	// first wait.
	deadline time.Time
}

// next says what a step of the walk left to do.
type next int

const (
	done     next = iota // the walk has its outcome
	takeNext             // take at cur (the pointer moved, or stock arrived)
	pickNext             // cur is short: choose another partition
)

// walk takes at the request's home, then wherever its pointer leads, until
// one step has the outcome.
func (d *deduction) walk(ctx context.Context) (Result, error) {
	home, err := d.s.homeOf(ctx, d.sku, d.reqID)
	if err != nil {
		return Result{}, err
	}
	if home == nil {
		return Result{Status: SoldOut}, nil
	}
	d.home, d.cur = home, pointer{home.Handle.ID, 1}
	// Each step is one script call. In a contended tail a request can lose
	// the race for freshly refilled units several rounds in a row; the
	// stock wait (awaitStock) and the request's context bound it in time,
	// this only in calls.
	maxSteps := 64 + 16*len(d.sku.Slots())
	for range maxSteps {
		res, then, err := d.takeStep(ctx)
		if then == pickNext && err == nil {
			res, then, err = d.pickStep(ctx)
		}
		if err != nil || then == done {
			return res, err
		}
	}
	return Result{}, fmt.Errorf("%w: no outcome after %d steps", ErrUnavailable, maxSteps)
}

// takeStep takes at cur. A pointer to a retired partition is short there.
func (d *deduction) takeStep(ctx context.Context) (Result, next, error) {
	p := d.sku.Slot(d.cur.pid)
	if p == nil {
		if d.sku.isRetired(d.cur.pid) {
			return Result{}, pickNext, nil
		}
		// The pointer names a partition another node added and this one
		// has not loaded yet (a notice, or reload_every, brings it). Its
		// records may say the request took there: moving on could deduct
		// twice. A retry is safe.
		return Result{}, done, fmt.Errorf("%w: partition %d of %s is not loaded on this node yet", ErrUnavailable, d.cur.pid, d.sku.Name)
	}
	if !p.Handle.Shard.Healthy() {
		// The request's path goes through a shard that does not answer:
		// fail fast rather than queue behind its timeouts (its pointer or
		// record may be there, so no other partition may take instead).
		// A retry is safe.
		return Result{}, done, fmt.Errorf("%w: shard %s of partition %d does not answer", ErrUnavailable, p.Handle.Shard.ID, p.Handle.ID)
	}
	r, err := d.take(ctx, p)
	if err != nil {
		return Result{}, done, err
	}
	switch r.Code {
	case shard.Took, shard.TookEarl:
		return Result{Status: OK, Partition: p.Handle, Seq: r.Seq, Qty: r.Qty}, done, nil
	case shard.Reused:
		return Result{Status: Reused, Partition: p.Handle, Seq: r.Seq, Qty: r.Qty}, done, nil
	case shard.Moved:
		if err := d.goElsewhere(ctx, r.Pointer); err != nil {
			return Result{}, done, err
		}
		return Result{}, takeNext, nil
	case shard.Lost:
		d.s.fence(d.sku, p)
	case shard.Closed:
		// Redis says it is closed (a rebalance drained it); this node's
		// registry hears it from MySQL a moment later.
		p.open.Store(false)
	case shard.Short:
	default:
		return Result{}, done, fmt.Errorf("take: code %d: %w", r.Code, shard.ErrBadReply)
	}
	return Result{}, pickNext, nil
}

// take runs the take script at p for the request's current round, and
// tells what it learnt: p's owner that the stream has details, the
// registry p's levels, and a rollback.
func (d *deduction) take(ctx context.Context, p *Slot) (shard.TakeResult, error) {
	s := d.s
	s.takeCalls.Inc()
	r, err := p.Handle.Take(ctx, d.reqID, d.qty, d.cur.round, p == d.home, d.userID)
	if s.hooks.Took != nil && (err != nil || r.Code == shard.Took || r.Code == shard.TookEarl) {
		// Its owner's write-back reads the stream when told (a failed
		// call may have recorded details too).
		s.hooks.Took(p.Handle)
	}
	if errors.Is(err, shard.ErrRollback) {
		s.rollback(d.sku, p)
	}
	if err != nil {
		return r, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	s.observe(d.sku, p, r.Levels, r.Refill)
	return r, nil
}

// pickStep chooses where to go after cur was short: a partition known to
// hold qty, else, once stock arrived, the next round; or it ends the walk
// sold out.
func (d *deduction) pickStep(ctx context.Context) (Result, next, error) {
	d.tried = append(d.tried, d.cur.pid)
	round := d.cur.round
	to := d.sku.pick(d.qty, d.tried)
	if to == nil {
		if d.verdictCovers() {
			return d.confirmSoldOut(ctx)
		}
		if d.deadline.IsZero() {
			d.deadline = time.Now().Add(d.s.cfg.StockWait)
		}
		start := time.Now()
		v, err := d.s.awaitStock(ctx, d.sku, d.qty, d.deadline)
		d.s.stockWait.Observe(time.Since(start).Seconds())
		if err != nil {
			return Result{}, done, err
		}
		if v == SoldOut {
			return d.confirmSoldOut(ctx)
		}
		d.tried = d.tried[:0]
		round++
		if to = d.sku.pick(d.qty, d.tried); to == nil {
			return Result{}, takeNext, nil
		}
	}
	return d.pointTo(ctx, pointer{to.Handle.ID, round})
}

// verdictCovers tells whether the SKU's sold-out verdict answers for this
// walk: installed before the walk began and confirmed by MySQL within
// VerdictMaxAge of it, the same rule that answers every other request of
// the SKU from memory. Such a walk got here only because the filter of
// successful ids could not rule its id out (about 0.1% of the late
// requests, newFilter); its take found no record of a deduction, so
// looking at the truth again (awaitStock: MySQL and every partition, per
// request) would only tell what the verdict already says: that cost
// MariaDB 0.15 cores at 74,000 sold-out answers/s (issue 13).
func (d *deduction) verdictCovers() bool {
	so := d.sku.soldOut.Load()
	return so != nil && so.installed < d.began && d.s.verdictFresh(so, d.began)
}

// confirmSoldOut ends the walk sold out when no copy of the request can
// have taken meanwhile, else follows the pointer the copy moved.
func (d *deduction) confirmSoldOut(ctx context.Context) (Result, next, error) {
	if so := d.sku.soldOut.Load(); so != nil && so.installed < d.began {
		// Sold out since before this request began: no copy of it can
		// have taken after its first take.
		return Result{Status: SoldOut}, done, nil
	}
	// A copy of this request on another node may have moved the pointer
	// on and taken there meanwhile: sold out holds only while the pointer
	// still names cur.
	pr, err := d.point(ctx, d.cur)
	if err != nil {
		return Result{}, done, err
	}
	switch pr.Code {
	case shard.PointMoved:
		return Result{Status: SoldOut}, done, nil
	case shard.PointTook:
		return d.tookAtHome(pr), done, nil
	}
	if err := d.goElsewhere(ctx, pr.Pointer); err != nil {
		return Result{}, done, err
	}
	d.tried = d.tried[:0]
	return Result{}, takeNext, nil
}

// pointTo moves the request's pointer from cur to to, on its home.
func (d *deduction) pointTo(ctx context.Context, to pointer) (Result, next, error) {
	pr, err := d.point(ctx, to)
	if err != nil {
		return Result{}, done, err
	}
	switch pr.Code {
	case shard.PointMoved:
		d.cur = to
	case shard.PointConflict:
		if err := d.goElsewhere(ctx, pr.Pointer); err != nil {
			return Result{}, done, err
		}
	case shard.PointTook:
		return d.tookAtHome(pr), done, nil
	default:
		return Result{}, done, fmt.Errorf("point: code %d: %w", pr.Code, shard.ErrBadReply)
	}
	return Result{}, takeNext, nil
}

// point runs the point script on the home: cur to to.
func (d *deduction) point(ctx context.Context, to pointer) (shard.PointResult, error) {
	d.s.pointCalls.Inc()
	pr, err := d.home.Handle.Point(ctx, d.reqID, d.cur.String(), to.String())
	if err != nil {
		return pr, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return pr, nil
}

// tookAtHome is the outcome of a request whose home says it took there.
func (d *deduction) tookAtHome(pr shard.PointResult) Result {
	if pr.Qty != d.qty {
		return Result{Status: Reused, Partition: d.home.Handle, Seq: pr.Seq, Qty: pr.Qty}
	}
	return Result{Status: OK, Partition: d.home.Handle, Seq: pr.Seq, Qty: pr.Qty}
}

// goElsewhere follows what a take or point answered instead of acting at
// cur (elsewhere): a new home starts with nothing tried.
func (d *deduction) goElsewhere(ctx context.Context, answer string) error {
	home, cur, rehomed, err := d.s.elsewhere(ctx, d.sku, d.reqID, d.home, answer)
	if err != nil {
		return err
	}
	d.home, d.cur = home, cur
	if rehomed {
		d.tried = d.tried[:0]
	}
	return nil
}

// homeOf is the request's home. Without partitions added within the
// generation lifetime it is the rendezvous winner over the whole set, at
// no cost. Otherwise the request walks its home chain from its anchor (the
// home under generation 0, the same on every node) and claims at each home
// but the last: the first that holds the request's pointer or took record
// is its home; one that redirects sends it on. A claim and every take or
// point at that partition as the request's home run on one Redis, so all
// copies of the request, whatever generations their nodes have loaded,
// end at the same home (ARCHITECTURE 4.2, 4.3).
func (s *Scheduler) homeOf(ctx context.Context, sku *SKU, reqID string) (*Slot, error) {
	h := hashx.FNV64(reqID)
	newest := sku.homeUpTo(h, -1)
	if newest == nil || newest.gen.Load() == 0 {
		return newest, nil
	}
	chain := sku.homeChain(h)
	for i := 0; i < len(chain)-1; i++ {
		p := chain[i]
		if !p.Handle.Shard.Healthy() {
			return nil, fmt.Errorf("%w: shard %s of partition %d does not answer", ErrUnavailable, p.Handle.Shard.ID, p.Handle.ID)
		}
		s.claimCalls.Inc()
		cr, err := p.Handle.Claim(ctx, reqID, chain[i+1].Handle.ID, -1)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if cr.Home {
			return p, nil
		}
		q, err := s.follow(ctx, sku, reqID, p, cr.Next, chain[i+1].Handle.ID)
		if err != nil {
			return nil, err
		}
		j := slices.Index(chain, q)
		if j <= i {
			// Not where this node's chain goes (a node with another view
			// of retired partitions wrote it): the slot decided.
			return q, nil
		}
		i = j - 1
	}
	return chain[len(chain)-1], nil
}

// elsewhere resolves what a take or point answered instead of acting at
// the request's current (partition, round). A redirect means another
// attempt claimed the home for a newer one before this one took or
// pointed there (nothing was taken for the request at the old home): the
// named partition becomes the home, taken at in round 1 with nothing
// tried (rehomed). Otherwise the answer is the pointer to follow.
func (s *Scheduler) elsewhere(ctx context.Context, sku *SKU, reqID string, home *Slot, answer string) (*Slot, pointer, bool, error) {
	if pid, ok := shard.ParseRedirect(answer); ok {
		h, err := s.follow(ctx, sku, reqID, home, pid, -1)
		if err != nil {
			return nil, pointer{}, false, err
		}
		return h, pointer{h.Handle.ID, 1}, true, nil
	}
	cur, err := parsePointer(answer)
	return home, cur, false, err
}

// follow resolves a redirect to pid found in reqID's slot on at. A pid this
// node has not loaded means 503, as for a pointer (another node added it).
// A pid that left the home set (retired past the window) is stale: the
// redirect is replaced by one to next, or removed when next < 0, in which
// case at becomes the home.
func (s *Scheduler) follow(ctx context.Context, sku *SKU, reqID string, at *Slot, pid, next int) (*Slot, error) {
	for range 4 {
		if q := sku.Slot(pid); q != nil {
			return q, nil
		}
		if !sku.isRetired(pid) {
			return nil, fmt.Errorf("%w: partition %d of %s is not loaded on this node yet", ErrUnavailable, pid, sku.Name)
		}
		s.claimCalls.Inc()
		cr, err := at.Handle.Claim(ctx, reqID, next, pid)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if cr.Home {
			return at, nil
		}
		pid = cr.Next
	}
	return nil, fmt.Errorf("%w: redirects of %s keep naming retired partitions", ErrUnavailable, reqID)
}

// observe records levels from a script reply and asks for a refill of the
// idle sub-domain when the script said it is low.
func (s *Scheduler) observe(sku *SKU, p *Slot, l stockd.Levels, refill byte) {
	if p.activeB.Load() != (l.Active == 'b') {
		s.swaps.Inc() // seen here; a swap between two observations counts once
	}
	p.setLevels(l)
	if refill != 0 {
		s.requestRefill(sku, p, refill)
	}
}

const (
	// refillBackoff spaces refills of a sub-domain after one failed.
	refillBackoff = 250 * time.Millisecond
	// forwardHold spaces the requests a node sends to a partition's owner.
	forwardHold = 50 * time.Millisecond
)

// requestRefill queues one refill per (partition, sub-domain) at a time,
// and none while the pool is known empty. The refill applies while the
// sub-domain holds less than the SKU's threshold.
func (s *Scheduler) requestRefill(sku *SKU, p *Slot, sub byte) {
	s.requestRefillCap(sku, p, sub, sku.threshold.Load())
}

// requestRefillCap is requestRefill with the cap below which the refill
// applies (a request for more than the threshold raises it). A partition
// another node owns is refilled by its owner: the request goes there.
func (s *Scheduler) requestRefillCap(sku *SKU, p *Slot, sub byte, capAt int64) {
	if s.hooks.Refill == nil || !p.Open() || sku.pool.Load() == 0 {
		return
	}
	i := sub - 'a'
	if !p.refilling[i].CompareAndSwap(false, true) {
		return
	}
	s.refillAsks.Inc()
	if s.hooks.Owns != nil && !s.hooks.Owns(p.Handle) {
		if s.hooks.Forward != nil {
			s.hooks.Forward(p.Handle, sub, capAt)
		}
		time.AfterFunc(forwardHold, func() { p.refilling[i].Store(false) })
		return
	}
	ok := s.hooks.Refill(p.Handle, sub, sku.chunk.Load(), capAt, func(r stockd.Refill, err error) {
		if r.HaveLevels {
			p.setLevels(r.Levels)
		}
		if r.Closed {
			p.open.Store(false)
		}
		if err != nil {
			// MySQL or the shard unreachable: hold further requests for
			// this sub-domain back for a moment instead of retrying on
			// every deduction.
			time.AfterFunc(refillBackoff, func() { p.refilling[i].Store(false) })
			return
		}
		if r.Pool >= 0 {
			sku.pool.Store(r.Pool)
		}
		p.refilling[i].Store(false)
		if r.Applied > 0 {
			sku.gen.Add(1)
		}
		sku.changed.fire()
	})
	if !ok {
		p.refilling[i].Store(false)
	}
}

// RefillFor runs a refill another node asked this one, the owner, for.
func (s *Scheduler) RefillFor(name string, pid int, sub byte, capAt int64) {
	sku := s.reg.Get(name)
	if sku == nil || (sub != 'a' && sub != 'b') {
		return
	}
	p := sku.Slot(pid)
	if p == nil {
		return
	}
	// The asker saw stock in the pool; this node may not have yet.
	sku.pool.CompareAndSwap(0, -1)
	s.requestRefillCap(sku, p, sub, capAt)
}

// Sweep refills, for the partitions this node owns, every sub-domain below
// its SKU's threshold: deductions on other nodes lower levels this node
// does not see, and a request forwarded here may have been lost. It also
// refreshes the known levels of those partitions. Sold-out SKUs and SKUs
// whose pool is known empty are skipped.
//
// A partition is read when it saw takes since its last read (this node's
// raise its last sequence; other nodes' arrive as hints, Touched), and an
// idle one only every IdleSweepEvery, at most IdleSweepsPerSecond of them
// per second: the cost follows the activity, not the partition count.
// Other nodes also forward the refills their takes ask for (Forward), so
// the idle round is the net for a lost hint or request.
func (s *Scheduler) Sweep(ctx context.Context) {
	now := mono.Now()
	idleEvery := s.cfg.IdleSweepEvery.Nanoseconds()
	budget := max(1, int(int64(s.cfg.IdleSweepsPerSecond)*s.cfg.SweepEvery.Nanoseconds()/int64(time.Second)))
	for _, name := range s.reg.Names() {
		sku := s.reg.Get(name)
		if sku == nil || sku.SoldOut() || sku.pool.Load() == 0 {
			continue
		}
		thr := sku.threshold.Load()
		for _, p := range sku.Slots() {
			if !p.Open() || (s.hooks.Owns != nil && !s.hooks.Owns(p.Handle)) {
				continue
			}
			seq := p.Handle.LastSeq()
			active := p.touched.Swap(false) || seq != p.sweptSeq.Load()
			if !active {
				if now-p.sweptAt.Load() < idleEvery || budget == 0 {
					continue
				}
				budget--
			}
			p.sweptSeq.Store(seq)
			p.sweptAt.Store(now)
			st, err := p.Handle.Inspect(ctx)
			if err != nil || !st.Exists {
				continue
			}
			p.setLevels(st.Levels)
			if st.Levels.A < thr {
				s.requestRefill(sku, p, 'a')
			}
			if st.Levels.B < thr {
				s.requestRefill(sku, p, 'b')
			}
		}
	}
}

// Touched tells the scheduler that another node took on partition pid of
// name (a hint to its owner): the partition's stream has new entries for
// the write-back, and the next sweep reads its levels.
func (s *Scheduler) Touched(name string, pid int) {
	sku := s.reg.Get(name)
	if sku == nil {
		return
	}
	if p := sku.Slot(pid); p != nil {
		p.touched.Store(true)
		p.Handle.Notify()
	}
}

func (s *Scheduler) fence(sku *SKU, p *Slot) {
	if p.open.CompareAndSwap(true, false) {
		s.logger.Error("partition lost its state; fenced", "sku", sku.Name, "pid", p.Handle.ID, "shard", p.Handle.Shard.ID)
		if s.hooks.Lost != nil {
			s.hooks.Lost(p.Handle)
		}
	}
}

func (s *Scheduler) rollback(sku *SKU, p *Slot) {
	if p.open.CompareAndSwap(true, false) {
		s.logger.Error("partition sequence went back; fenced", "sku", sku.Name, "pid", p.Handle.ID, "shard", p.Handle.Shard.ID,
			"seen", p.Handle.LastSeq())
		if s.hooks.Rollback != nil {
			s.hooks.Rollback(p.Handle)
		}
	}
}

func (sku *SKU) refilling() bool {
	for _, p := range sku.Slots() {
		if p.refilling[0].Load() || p.refilling[1].Load() {
			return true
		}
	}
	return false
}

// awaitStock decides, when no partition is known to hold qty units, whether
// to try another round (stock arrived), to answer sold out, or to give up
// for now (ErrUnavailable).
func (s *Scheduler) awaitStock(ctx context.Context, sku *SKU, qty int64, deadline time.Time) (Status, error) {
	for {
		if sku.pick(qty, nil) != nil {
			return OK, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: no stock arrived within %s", ErrUnavailable, s.cfg.StockWait)
		}
		wake := sku.changed.wait()
		slept := false
		if sku.pool.Load() != 0 || sku.refilling() {
			remote, err := s.refillAndWait(ctx, sku, qty, wake)
			if err != nil {
				return 0, err
			}
			if !remote {
				continue
			}
			if sku.pick(qty, nil) != nil {
				return OK, nil
			}
			slept = true
		}
		// Look at the truth (pool, pending fills, every partition), once
		// for all the requests that got here together; what it finds
		// wakes the others.
		v, err, _ := s.tail.Do(sku.Name, func() (any, error) {
			ctx, cancel := detached(ctx)
			defer cancel()
			return s.refresh(ctx, sku)
		})
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		t := v.(tailState)
		switch {
		case sku.pick(qty, nil) != nil:
			return OK, nil
		case t.pool > 0 || t.pending > 0:
			if !slept {
				if err := sleep(ctx, wake, 100*time.Millisecond); err != nil {
					return 0, err
				}
			}
		case t.total >= qty:
			// Enough units, but scattered over partitions that each hold
			// fewer than qty: gather them.
			if _, err, _ := s.tail.Do(sku.Name+"/consolidate", func() (any, error) {
				ctx, cancel := detached(ctx)
				defer cancel()
				return nil, s.consolidate(ctx, sku, qty)
			}); err != nil {
				return 0, fmt.Errorf("%w: consolidate: %w", ErrUnavailable, err)
			}
		default:
			if caught, err := s.catchUp(ctx, sku); err != nil {
				return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
			} else if caught {
				continue // partitions or stock this node had not loaded: look again
			}
			if t.total == 0 {
				s.markSoldOut(ctx, sku, t)
			}
			return SoldOut, nil
		}
	}
}

// refillAndWait runs when stock is on its way (pool or refills in flight):
// it makes sure every low sub-domain of sku is being refilled (here or by
// its owner), then waits for one to land. remote tells that owners on
// other nodes refill: their refills wake nobody here, so the wait is short
// and the caller then looks at the truth.
func (s *Scheduler) refillAndWait(ctx context.Context, sku *SKU, qty int64, wake <-chan struct{}) (remote bool, err error) {
	capAt := max(sku.threshold.Load(), qty)
	for _, p := range sku.Slots() {
		l := p.Levels()
		if l.A < capAt {
			s.requestRefillCap(sku, p, 'a', capAt)
		}
		if l.B < capAt {
			s.requestRefillCap(sku, p, 'b', capAt)
		}
		remote = remote || (s.hooks.Owns != nil && p.Open() && !s.hooks.Owns(p.Handle))
	}
	if !remote {
		// Every refill that lands here wakes the waiters; the timer only
		// covers what arrives unseen.
		return false, sleep(ctx, wake, 100*time.Millisecond)
	}
	return true, sleep(ctx, wake, 50*time.Millisecond)
}

// catchUp asks MySQL (Head), once for all the requests of sku that ask
// together, whether the registry is behind its version, and reloads the
// SKU if so. It runs before a sold-out answer: a node that has not
// loaded a partition another node just added and filled would see every
// partition it knows empty and the pool at 0.
func (s *Scheduler) catchUp(ctx context.Context, sku *SKU) (bool, error) {
	if s.hooks.Head == nil || s.hooks.Reload == nil {
		return false, nil
	}
	v, err, _ := s.tail.Do(sku.Name+"/catchup", func() (any, error) {
		ctx, cancel := detached(ctx)
		defer cancel()
		version, _, _, err := s.hooks.Head(ctx, sku.Name)
		if err != nil || version <= sku.Version() {
			return false, err
		}
		return true, s.hooks.Reload(ctx, sku.Name)
	})
	if err != nil {
		return false, err
	}
	return v.(bool), nil
}

type tailState struct {
	pool, pending, total int64
	gen                  uint64
	// at is when the read of the pool started (mono.Now): a sold-out
	// verdict built on this state is confirmed as of then.
	at int64
}

// refresh reads the pool and every open partition's levels from the source.
func (s *Scheduler) refresh(ctx context.Context, sku *SKU) (tailState, error) {
	t := tailState{gen: sku.gen.Load(), at: mono.Now()}
	rose := false
	var err error
	if s.hooks.PoolState != nil {
		if t.pool, t.pending, err = s.hooks.PoolState(ctx, sku.Name); err != nil {
			return t, err
		}
		sku.pool.Store(t.pool)
	}
	for _, p := range sku.Slots() {
		if !p.Open() {
			continue
		}
		if !p.Handle.Shard.Healthy() {
			// Its levels are unknown, so the total is too: not sold out,
			// not enough. Failing at once also keeps a caller without a
			// deadline from waiting on a shard that does not answer.
			return t, fmt.Errorf("%w: shard %s of partition %d does not answer", ErrUnavailable, p.Handle.Shard.ID, p.Handle.ID)
		}
		// Takes running meanwhile raise the sequence; only one seen before
		// the read can prove that the shard went back.
		seen := p.Handle.LastSeq()
		st, err := p.Handle.Inspect(ctx)
		if err != nil {
			return t, err
		}
		if !st.Exists {
			s.fence(sku, p)
			continue
		}
		if st.Seq < seen {
			s.rollback(sku, p)
			continue
		}
		if st.Levels.Total() > p.level() {
			rose = true
		}
		p.setLevels(st.Levels)
		if st.Status != "open" {
			continue
		}
		t.total += st.Levels.Total()
	}
	if rose {
		sku.changed.fire()
	}
	return t, nil
}

func (s *Scheduler) consolidate(ctx context.Context, sku *SKU, need int64) error {
	if s.hooks.Consolidate == nil {
		return errors.New("no consolidation hook")
	}
	var parts []*shard.Partition
	for _, p := range sku.Slots() {
		if p.Open() {
			parts = append(parts, p.Handle)
		}
	}
	s.logger.Info("consolidating scattered stock", "sku", sku.Name, "need", need)
	err := s.hooks.Consolidate(ctx, parts, need, sku.chunk.Load(), sku.threshold.Load())
	if _, rerr := s.refresh(ctx, sku); err == nil {
		err = rerr
	}
	sku.changed.fire()
	return err
}

// markSoldOut loads the ids that took into a filter and, unless stock
// arrived meanwhile (gen moved), answers sold_out from memory from then on.
// t is the empty state read (its gen, and when it was read).
func (s *Scheduler) markSoldOut(ctx context.Context, sku *SKU, t tailState) {
	gen := t.gen
	if sku.soldOut.Load() != nil || sku.gen.Load() != gen {
		return
	}
	_, _, _ = s.tail.Do(sku.Name+"/soldout", func() (any, error) {
		ctx, cancel := detached(ctx)
		defer cancel()
		var ids []string
		for _, p := range sku.Slots() {
			if err := p.Handle.Successes(ctx, func(id string) { ids = append(ids, id) }); err != nil {
				s.logger.Warn("load sold-out filter", "sku", sku.Name, "err", err)
				return nil, err
			}
		}
		f := newFilter(len(ids))
		for _, id := range ids {
			f.add(id)
		}
		so := &soldOut{successes: f, installed: mono.Now()}
		so.checked.Store(t.at)
		if sku.gen.Load() == gen && sku.soldOut.CompareAndSwap(nil, so) {
			s.logger.Info("sold out", "sku", sku.Name, "successes", len(ids))
			if s.hooks.SoldOut != nil {
				s.hooks.SoldOut(sku.Name)
			}
		}
		return nil, nil
	})
}

// Invalidate forgets what the registry concluded about sku's stock: stock
// may have arrived (restock, release). pool < 0 means the pool is unknown
// now (refills are tried again).
func (s *Scheduler) Invalidate(name string, pool int64) {
	sku := s.reg.Get(name)
	if sku == nil {
		return
	}
	if pool >= 0 {
		sku.pool.Store(pool)
	} else {
		sku.pool.Store(-1)
	}
	sku.gen.Add(1)
	sku.soldOut.Store(nil)
	sku.changed.fire()
}

// Refresh reads sku's pool and levels from MySQL and Redis.
func (s *Scheduler) Refresh(ctx context.Context, name string) error {
	sku := s.reg.Get(name)
	if sku == nil {
		return stockd.ErrUnknownSKU
	}
	_, err := s.refresh(ctx, sku)
	return err
}

// detached gives work shared by several requests (singleflight) a context
// that the first request's cancellation does not end.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

func sleep(ctx context.Context, wake <-chan struct{}, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	case <-wake:
	case <-t.C:
	}
	return nil
}

// Fence stops partition pid of sku from being chosen (its Redis state is
// gone, or it was closed).
func (s *Scheduler) Fence(name string, pid int) {
	if sku := s.reg.Get(name); sku != nil {
		if p := sku.Slot(pid); p != nil {
			p.open.Store(false)
		}
	}
}

// CheckSoldOut looks at the truth (MySQL pool, every partition) and, when
// everything is empty, answers sku's requests from memory from then on.
// Another node's notice that it sold out leads here.
func (s *Scheduler) CheckSoldOut(ctx context.Context, name string) error {
	sku := s.reg.Get(name)
	if sku == nil || sku.SoldOut() {
		return nil
	}
	t, err := s.refresh(ctx, sku)
	if err != nil {
		return err
	}
	if t.pool == 0 && t.pending == 0 && t.total == 0 {
		if caught, err := s.catchUp(ctx, sku); err != nil || caught {
			return err
		}
		s.markSoldOut(ctx, sku, t)
	}
	return nil
}
