// Package daemon is stockd's composition root: it reads the configuration,
// connects MySQL and the Redis shards, loads the partition registry, wires
// the workers (preallocate, scheduler, sync, admin) together and runs them
// until its context ends, then stops them in order.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/daemon/cluster"
	"github.com/stockd/stockd/daemon/hot"
	"github.com/stockd/stockd/internal/hotstats"
	"github.com/stockd/stockd/internal/httpframe"
	"github.com/stockd/stockd/internal/schema"
	"github.com/stockd/stockd/internal/tlsx"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
	stocksync "github.com/stockd/stockd/sync"
)

// Daemon is one stockd node.
type Daemon struct {
	cfg    Config
	logger *slog.Logger
	ready  atomic.Bool

	addrsOnce   sync.Once
	addrsCh     chan struct{}
	httpAddr    string
	adminAddr   string
	gossipAddr  string
	metricsAddr string
	// adminRoutes are the patterns the admin API registered (set before
	// Ready), for the test that holds api/openapi.yaml to them.
	adminRoutes []string
}

// Version is this build's version, stamped at build time (-ldflags -X);
// Build() falls back to what the toolchain recorded. Advertised to the
// other nodes.
var Version = "dev"

// New validates cfg; it starts nothing.
func New(cfg Config, logger *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &Daemon{
		cfg:     cfg,
		logger:  logger.With("node", cfg.NodeName),
		addrsCh: make(chan struct{}),
	}, nil
}

// Ready is closed once the daemon serves; Addrs then returns where.
func (d *Daemon) Ready() <-chan struct{} { return d.addrsCh }

// Addrs returns the bound hot and admin addresses (after Ready).
func (d *Daemon) Addrs() (hotAddr, adminAddr string) { return d.httpAddr, d.adminAddr }

// MetricsAddr returns where the token-less /metrics listener is bound
// (after Ready); empty without metrics_addr.
func (d *Daemon) MetricsAddr() string { return d.metricsAddr }

// GossipAddr returns where this node gossips (after Ready).
func (d *Daemon) GossipAddr() string { return d.gossipAddr }

// Run serves until ctx ends, then shuts down in order: stop accepting and
// finish in-flight requests, stop background work, close connections.
func (d *Daemon) Run(ctx context.Context) error {
	cfg := d.cfg
	log := d.logger

	signer, err := reservationSigner(cfg, log)
	if err != nil {
		return err
	}
	db, sess, err := schema.OpenSession(ctx, cfg.MySQLDSN, cfg.MySQLCAFile, schema.Session{
		IdleTxTimeout: cfg.MySQLIdleTxTimeout, LockWaitTimeout: cfg.MySQLLockWaitTimeout})
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	defer db.Close()
	if cfg.MySQLIdleTxTimeout > 0 && !sess.IdleTxTimeout {
		log.Warn("the MySQL server has no idle_transaction_timeout: a frozen node's open transaction holds its locks until it thaws",
			"server", sess.Server, "mysql_idle_tx_timeout", cfg.MySQLIdleTxTimeout)
	}

	store := preallocate.NewStore(db)
	shardCfgs, err := recordedShards(ctx, store, cfg.Shards, log)
	if err != nil {
		return err
	}
	shards, err := shard.Open(ctx, shardCfgs, shard.Options{
		Prefix:          cfg.KeyPrefix,
		Timeout:         cfg.RedisTimeout,
		CheckDurability: cfg.DurabilityCheck != "warn",
		RecordWindow:    cfg.Scheduler.RetryWindow,
		// A shard that is down must not keep the node down: the others
		// sell, and its partitions answer 503 until it answers.
		StartUnreachable: true,
	}, log)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	defer shards.Close()

	// Listen before joining: the cluster advertises the bound addresses.
	hotLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http_addr: %w", err)
	}
	defer hotLn.Close()
	adminLn, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return fmt.Errorf("admin_addr: %w", err)
	}
	defer adminLn.Close()
	var metricsLn net.Listener
	if cfg.MetricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return fmt.Errorf("metrics_addr: %w", err)
		}
		defer metricsLn.Close()
	}
	peer, err := cluster.New(cluster.Config{
		Name:          cfg.NodeName,
		BindAddr:      cfg.GossipAddr,
		AdvertiseAddr: cfg.GossipAdvertiseAddr,
		Join:          cfg.Join,
		Key:           cfg.GossipKey,
		Meta:          cluster.Meta{HTTP: hotLn.Addr().String(), Admin: adminLn.Addr().String(), Version: Build().Version},
		Fast:          cfg.GossipFast,
	}, log)
	if err != nil {
		return err
	}
	d.gossipAddr = peer.Addr()

	alloc := preallocate.New(cfg.Preallocate, db, shards, log)
	alloc.Owns = func(sku string, pid int) bool { return peer.Owns(partitionKey(sku, pid)) }
	notices := &notices{peer: peer, logger: log.With("component", "notices"),
		applyTimeout: cfg.Cluster.ApplyTimeout, viewMaxAge: cfg.Cluster.ViewMaxAge}
	reg := scheduler.NewRegistry()
	// loadSKU is the loader's, made below (the loader needs the
	// scheduler).
	var loadSKU func(ctx context.Context, sku string) error
	schedCfg := cfg.Scheduler
	schedCfg.VerdictMaxAge = cfg.Cluster.ViewMaxAge
	hints := &writeHints{peer: peer, logger: log.With("component", "hints")}
	var sched *scheduler.Scheduler
	sched = scheduler.New(schedCfg, reg, scheduler.Hooks{
		Took: hints.took,
		Refill: func(p *shard.Partition, sub byte, chunk, capAt int64, done func(scheduler.RefillResult)) bool {
			return alloc.Request(p, sub, chunk, capAt, func(o preallocate.Outcome, err error) {
				done(scheduler.RefillResult{Levels: o.Levels, HaveLevels: o.HaveLevels, Applied: o.Applied, Pool: o.Pool, Failed: err != nil, Closed: o.Closed})
			})
		},
		// One node refills a partition: its owner. The others forward
		// what their deductions see, and the owner's sweep covers the rest.
		Owns:        func(p *shard.Partition) bool { return peer.Owns(partitionKey(p.SKU, p.ID)) },
		Forward:     func(p *shard.Partition, sub byte, capAt int64) { notices.refill(p.SKU, p.ID, sub, capAt) },
		PoolState:   store.PoolState,
		Consolidate: alloc.Consolidate,
		Lost: func(p *shard.Partition) {
			alloc.Fence(context.Background(), p, preallocate.ReasonLost)
		},
		Rollback: func(p *shard.Partition) {
			alloc.Fence(context.Background(), p, preallocate.ReasonRollback)
		},
		SoldOut: func(sku string) { notices.send(noticeSoldOut, sku, 0) },
		Head:    store.VersionedPoolState,
		Reload:  func(ctx context.Context, sku string) error { return loadSKU(ctx, sku) },
	}, log)
	heal := newHealer(alloc, shards, cfg.Preallocate.ReplaceAfter, cfg.RedisTimeout, log)
	heal.owns = func(sku string) bool { return peer.Owns(skuKey(sku)) }
	alloc.OnLost = func(sku string, pid int) {
		sched.Fence(sku, pid)
		notices.send(noticeChanged, sku, 0)
		heal.poke()
	}

	// Finish allocations a crash left between MySQL and Redis, then load.
	if err := alloc.ApplyPending(ctx, 0); err != nil {
		log.Warn("pending allocations left for the sweep", "err", err)
	}
	loader := &loader{store: store, alloc: alloc, sched: sched, shards: shards, logger: log, window: cfg.Scheduler.RetryWindow, shardDefaults: cfg.ShardDefaults}
	loadSKU = func(ctx context.Context, sku string) error { return loader.load(ctx, preallocate.SKU{Name: sku}) }
	// Shards added at runtime (recorded in MySQL) are connected too.
	if err := loader.syncShards(ctx); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if err := loader.loadAll(ctx); err != nil {
		return err
	}
	notices.loader = loader

	metrics := prometheus.NewRegistry()
	notices.unconfirmed = promauto.With(metrics).NewCounter(prometheus.CounterOpts{
		Name: "stockd_cluster_unconfirmed_total",
		Help: "Members that did not confirm an admin change of this node within cluster.apply_timeout.",
	})
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfoGauge())
	var amqpTLS *tls.Config
	if cfg.AMQPCAFile != "" {
		if amqpTLS, err = tlsx.Client(cfg.AMQPCAFile); err != nil {
			return fmt.Errorf("amqp_ca_file: %w", err)
		}
	}
	wb := stocksync.New(cfg.Sync, stocksync.Deps{
		DB:      db,
		AMQPURL: cfg.AMQPURL,
		AMQPTLS: amqpTLS,
		Node:    cfg.NodeName,
		Partitions: func() []*shard.Partition {
			var owned []*shard.Partition
			for _, p := range reg.Handles() {
				if peer.Owns(partitionKey(p.SKU, p.ID)) {
					owned = append(owned, p)
				}
			}
			return owned
		},
		SKUs: func() []string {
			var owned []string
			for _, name := range reg.Names() {
				if peer.Owns(skuKey(name)) {
					owned = append(owned, name)
				}
			}
			return owned
		},
		Shards:     shards,
		Registerer: metrics,
		Logger:     log,
	})
	// A write-back queue of the other type stops the start here, named,
	// rather than as a broker error repeated by every publish.
	if err := wb.CheckQueue(ctx); err != nil {
		return fmt.Errorf("sync.%w", err)
	}
	metrics.MustRegister(sched.Collectors()...)
	metrics.MustRegister(alloc.Collectors()...)
	metrics.MustRegister(&skuCollector{loader: loader}, &shardCollector{shards: shards})
	metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "stockd_cluster_members",
		Help: "Alive members of the cluster as this node sees them, itself included.",
	}, func() float64 { return float64(len(peer.Alive())) }))
	// Units back in the pool (release, expiry) make every node's sold-out
	// verdict stale and the partitions refillable.
	wb.Ledger.Returned = func(sku string) {
		sched.Invalidate(sku, -1)
		notices.send(noticeReturned, sku, 0)
	}

	other := new(hotstats.Counters)
	status := newStatusSampler(reg, other, time.Second, func() (int64, time.Duration, bool) {
		lag, applied := wb.TakeApplyLag()
		return wb.Backlog(), lag, applied
	})
	// A limited SKU's per-user allowance is given back on release and
	// expiry, and swept by the SKU's owner (sync/extend.go).
	wb.Ledger.Allowance = func(sku string) *shard.Allowance {
		if r := sched.Rules(sku); r != nil {
			return r.Allowance
		}
		return nil
	}
	wb.Ledger.Partitions = func(name string) []*shard.Partition {
		sku := reg.Get(name)
		if sku == nil {
			return nil
		}
		var out []*shard.Partition
		for _, p := range sku.Partitions() {
			out = append(out, p.H)
		}
		return out
	}
	wb.Ledger.AllowanceWindow = cfg.Scheduler.RetryWindow
	// An unknown SKU is confirmed with MySQL before a 404.
	known := &catalogue{maxAge: cfg.Cluster.ViewMaxAge, loader: loader, reg: reg,
		reads: promauto.With(metrics).NewCounter(prometheus.CounterOpts{
			Name: "stockd_catalogue_reads_total",
			Help: "MySQL reads of the catalogue made to confirm an unknown SKU before a 404 (at most one per cluster.view_max_age).",
		})}
	endpoint := hot.New(hot.Options{
		MaxQty:       cfg.MaxQty,
		Timeout:      cfg.RequestTimeout,
		MaxExtension: cfg.Sync.MaxExtension,
		HTTP:         cfg.HTTP,
		Limits:       cfg.Limits,
	}, hot.Deps{
		Scheduler:  sched,
		Ledger:     wb.Ledger,
		Signer:     signer,
		Known:      known.known,
		Ready:      &d.ready,
		Other:      other,
		Registerer: metrics,
		Logger:     log,
	})

	cat := &catalog{db: db, store: store, alloc: alloc, sched: sched, loader: loader, notices: notices, ttl: cfg.Sync.ReservationTTL, defaults: preallocate.Spec{
		Partitions: cfg.SKUDefaults.Partitions,
		Chunk:      cfg.SKUDefaults.Chunk,
		Threshold:  cfg.SKUDefaults.Threshold,
	}}
	heal.changed = cat.healed
	metricsHandler := promhttp.HandlerFor(metrics, promhttp.HandlerOpts{})
	adm := admin.New(admin.Options{
		Token:     cfg.AdminToken,
		ReadToken: cfg.ReadToken,
		Catalog:   cat,
		Cluster:   func() any { return newClusterView(peer, reg) },
		Metrics:   metricsHandler,
		Stats:     func() any { return status.view() },
		Logger:    log,
	})

	d.adminRoutes = adm.Routes()

	hotSrv := endpoint.Server()
	// The framing check (httpframe.Listener) stops following a connection
	// after a chunked request and relies on the admin API closing it;
	// net/http's own "OPTIONS *" answer would keep it open.
	adminSrv := &http.Server{Handler: adm, ReadHeaderTimeout: 10 * time.Second, DisableGeneralOptionsHandler: true}
	// metrics_addr: GET /metrics only, without a token (every other path
	// 404), for scrapers on a private interface. Framing is checked as on
	// the admin port (a chunked request ends its connection).
	metricsMux := http.NewServeMux()
	metricsMux.Handle("GET /metrics", metricsHandler)
	metricsSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 {
			w.Header().Set("Connection", "close")
		}
		metricsMux.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second, DisableGeneralOptionsHandler: true}

	// Background work outlives the HTTP servers by a little: in-flight
	// deductions may still ask for refills while they finish.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return alloc.Run(workCtx) })
	g.Go(func() error { return wb.Run(workCtx) })
	g.Go(func() error { loader.reloadEvery(workCtx, cfg.ReloadEvery); return nil })
	// Membership outlives serving too: leaving hands this node's work to
	// the others, after its last batches went out.
	g.Go(func() error { return peer.Run(workCtx) })
	g.Go(func() error { notices.run(workCtx, sched, reg); return nil })
	// A shard that answers again may hold partitions fenced meanwhile,
	// still open in its Redis: mark them before requests use it.
	shards.OnBack(heal.back)
	g.Go(func() error { shards.Probe(workCtx, 250*time.Millisecond); return nil })
	g.Go(func() error { shards.Watch(workCtx, time.Second); return nil })
	g.Go(func() error { heal.run(workCtx); return nil })
	g.Go(func() error { status.run(workCtx); return nil })
	g.Go(func() error {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-workCtx.Done():
				return nil
			case <-t.C:
				endpoint.ForgetIdleClients(workCtx)
			}
		}
	})
	// Doubt left by a shard's data loss resolves by itself once every
	// reservation that could still be confirmed has expired (the owner of
	// the SKU does it).
	g.Go(func() error {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-workCtx.Done():
				return nil
			case <-t.C:
			}
			for _, name := range reg.Names() {
				if !peer.Owns(skuKey(name)) {
					continue
				}
				n, err := alloc.ResolveDoubts(workCtx, name, time.Now().Add(-cfg.Sync.ReservationTTL), false)
				if err != nil && workCtx.Err() == nil {
					log.Warn("resolve in-doubt units", "sku", name, "err", err)
				}
				if n > 0 {
					// Background work: gossip, without waiting for
					// acknowledgements (the others' verdicts are
					// confirmed with MySQL before they answer).
					for _, m := range cat.returned(workCtx, name) {
						notices.send(m.Kind, m.SKU, m.Version)
					}
				}
			}
		}
	})
	g.Go(func() error {
		hints.run(workCtx, cfg.Sync.PollInterval)
		return nil
	})
	g.Go(func() error {
		t := time.NewTicker(cfg.Scheduler.SweepEvery)
		defer t.Stop()
		for {
			select {
			case <-workCtx.Done():
				return nil
			case <-t.C:
				sched.Sweep(workCtx)
			}
		}
	})
	g.Go(func() error {
		if err := hotSrv.Serve(hotLn); err != nil {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := adminSrv.Serve(httpframe.Listener(adminLn)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin: %w", err)
		}
		return nil
	})
	if metricsLn != nil {
		g.Go(func() error {
			if err := metricsSrv.Serve(httpframe.Listener(metricsLn)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		d.ready.Store(false)
		log.Info("shutting down")
		if ctx.Err() != nil && cfg.ShutdownDelay > 0 {
			// Asked to stop (not failing): keep serving while load
			// balancers see /readyz answer 503 and take the node out.
			log.Info("draining before closing the listeners", "shutdown_delay", cfg.ShutdownDelay)
			time.Sleep(cfg.ShutdownDelay)
		}
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hotSrv.ShutdownWithContext(sctx); err != nil {
			log.Warn("http shutdown", "err", err)
		}
		// fasthttp's Shutdown closes only the listeners Serve has
		// registered: a stop right after the start can come before Serve
		// ran, and Serve would then accept for ever. Closing the listener
		// here makes that Serve return at once (a closed listener is its
		// normal end).
		_ = hotLn.Close()
		if err := adminSrv.Shutdown(sctx); err != nil {
			log.Warn("admin shutdown", "err", err)
		}
		// Unstarted without metrics_addr: Shutdown then returns at once.
		if err := metricsSrv.Shutdown(sctx); err != nil {
			log.Warn("metrics shutdown", "err", err)
		}
		stopWork()
		return nil
	})

	d.httpAddr, d.adminAddr = hotLn.Addr().String(), adminLn.Addr().String()
	if metricsLn != nil {
		d.metricsAddr = metricsLn.Addr().String()
	}
	d.ready.Store(true)
	d.addrsOnce.Do(func() { close(d.addrsCh) })
	log.Info("serving", "http", d.httpAddr, "admin", d.adminAddr, "metrics", d.metricsAddr, "gossip", d.gossipAddr, "shards", len(cfg.Shards), "skus", len(reg.Names()))

	err = g.Wait()
	log.Info("stopped", "err", err)
	return err
}

// Verify runs the conservation check of sku against the services cfg
// names, without starting a node (the `stockd verify` command).
func Verify(ctx context.Context, cfg Config, sku string) (stocksync.Report, error) {
	db, err := schema.OpenTLS(ctx, cfg.MySQLDSN, cfg.MySQLCAFile)
	if err != nil {
		return stocksync.Report{}, fmt.Errorf("mysql: %w", err)
	}
	defer db.Close()
	store := preallocate.NewStore(db)
	shardCfgs, err := recordedShards(ctx, store, cfg.Shards, slog.Default())
	if err != nil {
		return stocksync.Report{}, err
	}
	shards, err := shard.Open(ctx, shardCfgs, shard.Options{Prefix: cfg.KeyPrefix, Timeout: cfg.RedisTimeout, RecordWindow: cfg.Scheduler.RetryWindow}, slog.Default())
	if err != nil {
		return stocksync.Report{}, fmt.Errorf("redis: %w", err)
	}
	defer shards.Close()
	// The SKU may have partitions on shards added at runtime.
	l := &loader{store: store, shards: shards, logger: slog.Default(), shardDefaults: cfg.ShardDefaults}
	if err := l.syncShards(ctx); err != nil {
		return stocksync.Report{}, fmt.Errorf("redis: %w", err)
	}
	return stocksync.Verify(ctx, db, shards, sku)
}

// recordedShards records the configured shards in MySQL and returns them
// at the addresses MySQL holds, so that a node (re)starting connects where
// an admin failover moved a shard rather than to the dead primary its
// config file still names.
func recordedShards(ctx context.Context, store *preallocate.Store, configured []shard.Config, log *slog.Logger) ([]shard.Config, error) {
	seed := make(map[string]string, len(configured))
	for _, sc := range configured {
		seed[sc.ID] = sc.Location()
	}
	if err := store.SeedShards(ctx, seed); err != nil {
		return nil, err
	}
	rows, err := store.Shards(ctx)
	if err != nil {
		return nil, err
	}
	addr := make(map[string]string, len(rows))
	for _, r := range rows {
		addr[r.ID] = r.Addr
	}
	out := make([]shard.Config, len(configured))
	for i, sc := range configured {
		if a := addr[sc.ID]; a != "" && a != sc.Location() {
			log.Warn("shard address from an admin failover, not the config file", "shard", sc.ID, "config", sc.Location(), "recorded", a)
			sc = sc.At(a)
		}
		out[i] = sc
	}
	return out, nil
}
