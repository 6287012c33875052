package sync

import (
	"context"
	"crypto/tls"
	"database/sql"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/stockd/stockd/shard"
)

// Deps are what the write-back needs from the daemon.
type Deps struct {
	DB      *sql.DB
	AMQPURL string
	// AMQPTLS, when set, is the TLS configuration of amqps:// URLs.
	AMQPTLS *tls.Config
	// Node names this node in the batches it publishes (for tracing).
	Node string
	// Partitions lists the partitions whose details this node moves (the
	// ones it owns); called every second.
	Partitions func() []*shard.Partition
	// SKUs lists the SKUs whose reservations this node expires (the ones
	// it owns); called every ExpireEvery.
	SKUs func() []string
	// Shards are the Redis shards, where confirm and release look up a
	// detail that has not reached MySQL yet.
	Shards *shard.Set
	// Returned is told when units went back to a SKU's pool (release,
	// expiry).
	Returned func(sku string)
	// Allowance returns a SKU's per-user allowance, nil when the SKU has
	// no per-user limit (sale rules, shard/allowance.go).
	Allowance func(sku string) *shard.Allowance
	// SKUPartitions lists a SKU's partitions (its home set): the sweep
	// reads a request's record on them before it gives back the
	// allowance of a request MySQL has no row of.
	SKUPartitions func(sku string) []*shard.Partition
	// AllowanceWindow is how long a given-back allowance record answers a
	// retry (the scheduler's retry window).
	AllowanceWindow time.Duration

	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Sync is the write-back pipeline and the reservation ledger of one node.
type Sync struct {
	Batcher *Batcher
	Applier *Applier
	Ledger  *Ledger
	m       *metrics
}

// Backlog is the stream entries not yet confirmed by the broker in the
// streams this node reads, as counted last (every second); the gauge
// stockd_sync_stream_backlog_entries has the same figure.
func (s *Sync) Backlog() int64 { return s.m.backlogNow.Load() }

// TakeApplyLag returns the largest time from a deduction in Redis to its
// detail row in MySQL among the details this node applied since the last
// call, and false when it applied none. One caller: the status sampler.
func (s *Sync) TakeApplyLag() (time.Duration, bool) {
	ms := s.m.lagMaxMs.Swap(-1)
	if ms < 0 {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}

// New builds the pipeline; it connects nothing until Run.
func New(cfg Config, d Deps) *Sync {
	m := newMetrics(d.Registerer)
	log := d.Logger.With("component", "sync")
	pubBroker := newBroker(d.AMQPURL, cfg.Queue, cfg.QueueType, d.AMQPTLS, log)
	return &Sync{
		m: m,
		Batcher: &Batcher{
			cfg:        cfg,
			consumer:   d.Node,
			brk:        pubBroker,
			pub:        &publisher{b: pubBroker, timeout: cfg.PublishTimeout},
			logger:     log.With("part", "batcher"),
			m:          m,
			partitions: d.Partitions,
			in:         make(chan item, cfg.BatchSize),
		},
		Applier: &Applier{
			cfg:    cfg,
			db:     d.DB,
			brk:    newBroker(d.AMQPURL, cfg.Queue, cfg.QueueType, d.AMQPTLS, log),
			logger: log.With("part", "applier"),
			m:      m,
		},
		Ledger: &Ledger{
			db:     d.DB,
			shards: d.Shards,
			ttl:    cfg.ReservationTTL,
			every:  cfg.ExpireEvery,
			logger: log.With("part", "ledger"),
			m:      m,
			skus:   d.SKUs,

			returned:        d.Returned,
			allowance:       d.Allowance,
			partitions:      d.SKUPartitions,
			allowanceWindow: d.AllowanceWindow,
		},
	}
}

// Run runs the batcher, the appliers and the expiry until ctx ends. The
// batcher publishes what it holds before it returns.
func (s *Sync) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Batcher.Run(ctx) })
	g.Go(func() error { return s.Applier.Run(ctx) })
	g.Go(func() error { return s.Ledger.Run(ctx) })
	return g.Wait()
}
