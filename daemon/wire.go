package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/daemon/hot"
	"github.com/stockd/stockd/internal/hotstats"
	"github.com/stockd/stockd/internal/tlsx"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
	stocksync "github.com/stockd/stockd/sync"
)

// wire builds the workers, each given at construction the hooks through
// which it reaches the others (workers never import each other), loads
// the registry, then builds the write-back, the metrics and the servers.
func (d *Daemon) wire(ctx context.Context) error {
	d.metrics = prometheus.NewRegistry()
	d.reg = scheduler.NewRegistry()
	d.own = owners{peer: d.peer, reg: d.reg}
	d.wireWorkers()
	if err := d.load(ctx); err != nil {
		return err
	}
	if err := d.wireWriteBack(ctx); err != nil {
		return err
	}
	d.registerMetrics()
	d.wireHot()
	d.wireAdmin()
	return nil
}

// wireWorkers builds the refill side of the node: the allocator, the
// scheduler, the healer, the loader and the notices between nodes.
func (d *Daemon) wireWorkers() {
	cfg, log := d.cfg, d.logger
	d.alloc = preallocate.New(cfg.Preallocate, d.db, d.shards, preallocate.Hooks{
		Owns:   d.own.partition,
		OnLost: d.partitionLost,
	}, log)
	d.hints = &writeHints{peer: d.peer, logger: log.With("component", "hints")}
	d.sched = d.newScheduler()
	d.heal = newHealer(d.alloc, d.shards, d.own.sku,
		func(ctx context.Context, sku string) { d.cat.healed(ctx, sku) },
		cfg.Preallocate.ReplaceAfter, cfg.RedisTimeout, log)
	d.loader = &loader{store: d.store, alloc: d.alloc, sched: d.sched, shards: d.shards, logger: log, owns: d.own.partition,
		window: cfg.Scheduler.RetryWindow, shardDefaults: cfg.ShardDefaults}
	d.notices = &notices{peer: d.peer, loader: d.loader, sched: d.sched, reg: d.reg,
		logger:       log.With("component", "notices"),
		applyTimeout: cfg.Cluster.ApplyTimeout, viewMaxAge: cfg.Cluster.ViewMaxAge,
		unconfirmed: promauto.With(d.metrics).NewCounter(prometheus.CounterOpts{
			Name: "stockd_cluster_unconfirmed_total",
			Help: "Members that did not confirm an admin change of this node within cluster.apply_timeout.",
		}),
	}
}

// newScheduler builds the scheduler: refills go to the allocator (on the
// partition's owner), verdicts and reloads to the notices and the loader.
func (d *Daemon) newScheduler() *scheduler.Scheduler {
	cfg := d.cfg.Scheduler
	cfg.VerdictMaxAge = d.cfg.Cluster.ViewMaxAge
	return scheduler.New(cfg, d.reg, scheduler.Hooks{
		Took:   d.hints.took,
		Refill: d.alloc.Request,
		// One node refills a partition: its owner. The others forward
		// what their deductions see, and the owner's sweep covers the rest.
		Owns:        d.own.handle,
		Forward:     func(p *shard.Partition, sub byte, capAt int64) { d.notices.refill(p.SKU, p.ID, sub, capAt) },
		PoolState:   d.store.PoolState,
		Consolidate: d.alloc.Consolidate,
		Lost:        func(p *shard.Partition) { d.alloc.Fence(context.Background(), p, preallocate.ReasonLost) },
		Rollback:    func(p *shard.Partition) { d.alloc.Fence(context.Background(), p, preallocate.ReasonRollback) },
		SoldOut:     func(sku string) { d.notices.send(noticeSoldOut, sku, 0) },
		Head:        d.store.VersionedPoolState,
		Reload:      func(ctx context.Context, sku string) error { return d.loader.load(ctx, preallocate.SKU{Name: sku}) },
	}, d.logger)
}

// partitionLost: Redis showed that a partition lost its data and the
// allocator fenced it (preallocate.Hooks.OnLost). Stop selling there, tell
// the others, and have the partition replaced.
func (d *Daemon) partitionLost(sku string, pid int) {
	d.sched.Fence(sku, pid)
	d.notices.send(noticeChanged, sku, 0)
	d.heal.poke()
}

// load finishes the allocations a crash left between MySQL and Redis,
// connects the shards added at runtime (recorded in MySQL), then loads the
// registry.
func (d *Daemon) load(ctx context.Context) error {
	if err := d.alloc.ApplyPending(ctx, 0); err != nil {
		d.logger.Warn("pending allocations left for the sweep", "err", err)
	}
	if err := d.loader.syncShards(ctx); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return d.loader.loadAll(ctx)
}

// wireWriteBack builds the write-back and the reservation ledger.
func (d *Daemon) wireWriteBack(ctx context.Context) error {
	cfg := d.cfg
	var amqpTLS *tls.Config
	if cfg.AMQPCAFile != "" {
		var err error
		if amqpTLS, err = tlsx.Client(cfg.AMQPCAFile); err != nil {
			return fmt.Errorf("amqp_ca_file: %w", err)
		}
	}
	d.wb = stocksync.New(cfg.Sync, stocksync.Deps{
		DB:         d.db,
		AMQPURL:    cfg.AMQPURL,
		AMQPTLS:    amqpTLS,
		Node:       cfg.NodeName,
		Partitions: d.own.partitions,
		SKUs:       d.own.skus,
		Shards:     d.shards,
		Returned:   d.unitsReturned,
		// A limited SKU's per-user allowance is given back on release and
		// expiry, and swept by the SKU's owner (sync/extend.go).
		Allowance:       d.allowance,
		SKUPartitions:   d.skuPartitions,
		AllowanceWindow: cfg.Scheduler.RetryWindow,
		Registerer:      d.metrics,
		Logger:          d.logger,
	})
	// A write-back queue of the other type stops the start here, named,
	// rather than as a broker error repeated by every publish.
	if err := d.wb.CheckQueue(ctx); err != nil {
		return fmt.Errorf("sync.%w", err)
	}
	return nil
}

// unitsReturned: units went back to a SKU's pool (release, expiry), which
// makes every node's sold-out verdict stale and the partitions refillable
// (sync.Deps.Returned).
func (d *Daemon) unitsReturned(sku string) {
	d.sched.Invalidate(sku, -1)
	d.notices.send(noticeReturned, sku, 0)
}

// allowance is a SKU's per-user allowance, nil without a per-user limit
// (sync.Deps.Allowance).
func (d *Daemon) allowance(sku string) *shard.Allowance {
	if r := d.sched.Rules(sku); r != nil {
		return r.Allowance
	}
	return nil
}

// skuPartitions are a SKU's partitions in the registry
// (sync.Deps.SKUPartitions).
func (d *Daemon) skuPartitions(name string) []*shard.Partition {
	sku := d.reg.Get(name)
	if sku == nil {
		return nil
	}
	var out []*shard.Partition
	for _, p := range sku.Slots() {
		out = append(out, p.Handle)
	}
	return out
}

// registerMetrics adds the process's and the workers' collectors to the
// node's private registry (the workers built with a Registerer have
// registered theirs).
func (d *Daemon) registerMetrics() {
	m := d.metrics
	m.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoGauge())
	m.MustRegister(d.sched.Collectors()...)
	m.MustRegister(d.alloc.Collectors()...)
	m.MustRegister(&skuCollector{loader: d.loader}, &shardCollector{shards: d.shards})
	m.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "stockd_cluster_members",
		Help: "Alive members of the cluster as this node sees them, itself included.",
	}, func() float64 { return float64(len(d.peer.Alive())) }))
}

// wireHot builds the hot endpoint and the status sampler that reads its
// counters.
func (d *Daemon) wireHot() {
	cfg := d.cfg
	other := new(hotstats.Counters)
	d.status = newStatusSampler(d.reg, other, time.Second, func() (int64, time.Duration, bool) {
		lag, applied := d.wb.TakeApplyLag()
		return d.wb.Backlog(), lag, applied
	})
	// An unknown SKU is confirmed with MySQL before a 404.
	known := &catalogue{maxAge: cfg.Cluster.ViewMaxAge, loader: d.loader, reg: d.reg,
		reads: promauto.With(d.metrics).NewCounter(prometheus.CounterOpts{
			Name: "stockd_catalogue_reads_total",
			Help: "MySQL reads of the catalogue made to confirm an unknown SKU before a 404 (at most one per cluster.view_max_age).",
		})}
	d.endpoint = hot.New(hot.Options{
		MaxQty:       cfg.MaxQty,
		Timeout:      cfg.RequestTimeout,
		MaxExtension: cfg.Sync.MaxExtension,
		HTTP:         cfg.HTTP,
		Limits:       cfg.Limits,
	}, hot.Deps{
		Scheduler:  d.sched,
		Ledger:     d.wb.Ledger,
		Signer:     d.signer,
		Known:      known.known,
		Ready:      &d.ready,
		Other:      other,
		Registerer: d.metrics,
		Logger:     d.logger,
	})
	d.hotSrv = d.endpoint.Server()
}

// wireAdmin builds the admin API over the catalog, and the token-less
// metrics server.
func (d *Daemon) wireAdmin() {
	cfg := d.cfg
	d.cat = &catalog{db: d.db, store: d.store, alloc: d.alloc, sched: d.sched, loader: d.loader, notices: d.notices,
		ttl: cfg.Sync.ReservationTTL, defaults: preallocate.Spec{
			Partitions: cfg.SKUDefaults.Partitions,
			Chunk:      cfg.SKUDefaults.Chunk,
			Threshold:  cfg.SKUDefaults.Threshold,
		}}
	metricsHandler := promhttp.HandlerFor(d.metrics, promhttp.HandlerOpts{})
	adm := admin.New(admin.Options{
		Token:     cfg.AdminToken,
		ReadToken: cfg.ReadToken,
		Catalog:   d.cat,
		Cluster:   func() any { return newClusterView(d.peer, d.reg) },
		Metrics:   metricsHandler,
		Stats:     func() any { return d.status.view() },
		Logger:    d.logger,
	})
	d.adminRoutes = adm.Routes()
	// The framing check (httpframe.Listener) stops following a connection
	// after a chunked request and relies on the admin API closing it;
	// net/http's own "OPTIONS *" answer would keep it open.
	d.adminSrv = &http.Server{Handler: adm, ReadHeaderTimeout: 10 * time.Second, DisableGeneralOptionsHandler: true}
	d.metricsSrv = metricsServer(metricsHandler)
}

// metricsServer serves metrics_addr: GET /metrics only, without a token
// (every other path 404), for scrapers on a private interface. Framing is
// checked as on the admin port (a chunked request ends its connection).
func metricsServer(metrics http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	return &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
		mux.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second, DisableGeneralOptionsHandler: true}
}
