// Package daemon is stockd's composition root: it reads the configuration,
// connects MySQL and the Redis shards, loads the partition registry, wires
// the workers (preallocate, scheduler, sync, admin) together and runs them
// until its context ends, then stops them in order.
package daemon

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"golang.org/x/sync/errgroup"

	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/daemon/cluster"
	"github.com/stockd/stockd/daemon/hot"
	"github.com/stockd/stockd/internal/httpframe"
	"github.com/stockd/stockd/internal/reservation"
	"github.com/stockd/stockd/internal/schema"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
	stocksync "github.com/stockd/stockd/sync"
)

// Daemon is one stockd node. New validates its configuration; Run, called
// once, opens what the node needs, wires its workers and serves.
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

	// What Run opens (open); the lifecycle closes it.
	signer                    *reservation.Signer
	db                        *sql.DB
	store                     *preallocate.Store
	shards                    *shard.Set
	hotLn, adminLn, metricsLn net.Listener
	peer                      *cluster.Peer

	// The workers (wire). They reach each other only through the hooks
	// they are given at construction: methods and closures of the Daemon
	// that read these fields when called, so a hook may name a worker
	// built after the one it is given to.
	metrics  *prometheus.Registry
	reg      *scheduler.Registry
	own      owners
	alloc    *preallocate.Allocator
	sched    *scheduler.Scheduler
	hints    *writeHints
	heal     *healer
	loader   *loader
	notices  *notices
	wb       *stocksync.Sync
	cat      *catalog
	status   *statusSampler
	endpoint *hot.Endpoint

	hotSrv               *fasthttp.Server
	adminSrv, metricsSrv *http.Server
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

// Run serves until ctx ends, then shuts down in order (stop): stop
// accepting and finish in-flight requests, stop background work and
// publish the last write-back batches, leave the cluster, close
// connections. Run is called once.
func (d *Daemon) Run(ctx context.Context) error {
	var lc lifecycle
	defer lc.close()
	if err := d.open(ctx, &lc); err != nil {
		return err
	}
	if err := d.wire(ctx); err != nil {
		return err
	}
	return d.serve(ctx)
}

// open reads the reservation secret, connects MySQL and the Redis shards,
// binds the listeners and creates the cluster peer, registering each
// teardown on lc beside the construction it undoes.
func (d *Daemon) open(ctx context.Context, lc *lifecycle) error {
	cfg := d.cfg
	var err error
	if d.signer, err = reservationSigner(cfg, d.logger); err != nil {
		return err
	}
	if err := d.openMySQL(ctx, lc); err != nil {
		return err
	}
	if err := d.openShards(ctx, lc); err != nil {
		return err
	}
	// Listen before the peer: the cluster advertises the bound addresses.
	if d.hotLn, err = listen(lc, cfg.HTTPAddr); err != nil {
		return fmt.Errorf("http_addr: %w", err)
	}
	if d.adminLn, err = listen(lc, cfg.AdminAddr); err != nil {
		return fmt.Errorf("admin_addr: %w", err)
	}
	if cfg.MetricsAddr != "" {
		if d.metricsLn, err = listen(lc, cfg.MetricsAddr); err != nil {
			return fmt.Errorf("metrics_addr: %w", err)
		}
	}
	return d.openPeer()
}

func (d *Daemon) openMySQL(ctx context.Context, lc *lifecycle) error {
	cfg := d.cfg
	db, sess, err := schema.OpenSession(ctx, cfg.MySQLDSN, cfg.MySQLCAFile, schema.Session{
		IdleTxTimeout: cfg.MySQLIdleTxTimeout, LockWaitTimeout: cfg.MySQLLockWaitTimeout})
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	lc.onClose(func() { db.Close() })
	if cfg.MySQLIdleTxTimeout > 0 && !sess.IdleTxTimeout {
		d.logger.Warn("the MySQL server has no idle_transaction_timeout: a frozen node's open transaction holds its locks until it thaws",
			"server", sess.Server, "mysql_idle_tx_timeout", cfg.MySQLIdleTxTimeout)
	}
	d.db, d.store = db, preallocate.NewStore(db)
	return nil
}

func (d *Daemon) openShards(ctx context.Context, lc *lifecycle) error {
	cfg := d.cfg
	shardCfgs, err := recordedShards(ctx, d.store, cfg.Shards, d.logger)
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
		// A shard that answers again may hold partitions fenced
		// meanwhile, still open in its Redis: the healer marks them
		// before requests use it (built in wire, before Probe runs).
		OnBack: func(ctx context.Context, id string) {
			if d.heal != nil {
				d.heal.back(ctx, id)
			}
		},
	}, d.logger)
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	lc.onClose(shards.Close)
	d.shards = shards
	return nil
}

// listen binds addr; the listener is closed at lc's close.
func listen(lc *lifecycle, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	lc.onClose(func() { ln.Close() })
	return ln, nil
}

// openPeer creates this node's cluster member. It joins when serve runs
// it and leaves when stop says, after the write-back's last batches.
func (d *Daemon) openPeer() error {
	cfg := d.cfg
	peer, err := cluster.New(cluster.Config{
		Name:          cfg.NodeName,
		BindAddr:      cfg.GossipAddr,
		AdvertiseAddr: cfg.GossipAdvertiseAddr,
		Join:          cfg.Join,
		Key:           cfg.GossipKey,
		Meta:          cluster.Meta{HTTP: d.hotLn.Addr().String(), Admin: d.adminLn.Addr().String(), Version: Build().Version},
		Fast:          cfg.GossipFast,
	}, d.logger)
	if err != nil {
		return err
	}
	d.peer, d.gossipAddr = peer, peer.Addr()
	return nil
}

// serve runs the servers, the cluster membership and the background work
// under one errgroup until ctx ends or one of them fails, then stops them
// in order.
func (d *Daemon) serve(ctx context.Context) error {
	// Background work outlives the HTTP servers by a little: in-flight
	// deductions may still ask for refills while they finish.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	// Membership outlives background work: leaving hands this node's
	// work to the others, after its last batches went out.
	memberCtx, leave := context.WithCancel(context.WithoutCancel(ctx))
	defer leave()

	g, gctx := errgroup.WithContext(ctx)
	writeBackDone := make(chan struct{})
	g.Go(func() error {
		defer close(writeBackDone)
		return d.wb.Run(workCtx)
	})
	g.Go(func() error { return d.peer.Run(memberCtx) })
	d.runBackground(loops{g: g, ctx: workCtx})
	d.runServers(g)
	g.Go(func() error {
		<-gctx.Done()
		d.stop(ctx, stopWork, writeBackDone, leave)
		return nil
	})
	d.markReady()

	err := g.Wait()
	d.logger.Info("stopped", "err", err)
	return err
}

// runBackground starts the node's background work.
func (d *Daemon) runBackground(l loops) {
	cfg := d.cfg
	l.g.Go(func() error { return d.alloc.Run(l.ctx) })
	l.every(cfg.ReloadEvery, d.loader.refresh)
	l.run(d.notices.run)
	l.run(func(ctx context.Context) { d.shards.Probe(ctx, 250*time.Millisecond) })
	l.run(func(ctx context.Context) { d.shards.Watch(ctx, time.Second) })
	l.run(d.heal.run)
	l.run(d.status.run)
	l.every(time.Minute, d.endpoint.ForgetIdleClients)
	l.every(5*time.Second, d.resolveDoubts)
	l.every(cfg.Sync.PollInterval, d.hints.send)
	l.every(cfg.Scheduler.SweepEvery, d.sched.Sweep)
}

// resolveDoubts ends the doubt a shard's data loss left on the SKUs this
// node owns once every reservation that could still be confirmed has
// expired, and tells the others.
func (d *Daemon) resolveDoubts(ctx context.Context) {
	cutoff := time.Now().Add(-d.cfg.Sync.ReservationTTL)
	due, err := d.alloc.DoubtsDue(ctx, cutoff)
	if err != nil {
		if ctx.Err() == nil {
			d.logger.Warn("resolve in-doubt units", "err", err)
		}
		return
	}
	for _, name := range due {
		if d.reg.Get(name) == nil || !d.own.sku(name) {
			continue
		}
		n, err := d.alloc.ResolveDoubts(ctx, name, cutoff, false)
		if err != nil && ctx.Err() == nil {
			d.logger.Warn("resolve in-doubt units", "sku", name, "err", err)
		}
		if n > 0 {
			// Background work: gossip, without waiting for
			// acknowledgements (the others' verdicts are confirmed with
			// MySQL before they answer).
			for _, m := range d.cat.returned(ctx, name) {
				d.notices.send(m.Kind, m.SKU, m.Version)
			}
		}
	}
}

// runServers serves the hot endpoint, the admin API and, with
// metrics_addr, the metrics listener.
func (d *Daemon) runServers(g *errgroup.Group) {
	g.Go(func() error {
		if err := d.hotSrv.Serve(d.hotLn); err != nil {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := d.adminSrv.Serve(httpframe.Listener(d.adminLn)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin: %w", err)
		}
		return nil
	})
	if d.metricsLn != nil {
		g.Go(func() error {
			if err := d.metricsSrv.Serve(httpframe.Listener(d.metricsLn)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics: %w", err)
			}
			return nil
		})
	}
}

// markReady publishes the bound addresses and turns /readyz ready.
func (d *Daemon) markReady() {
	d.httpAddr, d.adminAddr = d.hotLn.Addr().String(), d.adminLn.Addr().String()
	if d.metricsLn != nil {
		d.metricsAddr = d.metricsLn.Addr().String()
	}
	d.ready.Store(true)
	d.addrsOnce.Do(func() { close(d.addrsCh) })
	d.logger.Info("serving", "http", d.httpAddr, "admin", d.adminAddr, "metrics", d.metricsAddr, "gossip", d.gossipAddr, "shards", len(d.cfg.Shards), "skus", len(d.reg.Names()))
}

// writeBackGrace bounds how long stop waits for the write-back beyond its
// last publish (sync.publish_timeout) before the node leaves anyway.
const writeBackGrace = 5 * time.Second

// stop shuts the node down in order, each step time-limited: stop being
// ready (and, asked to stop, keep serving for shutdown_delay), stop the
// servers, stop background work, wait for the write-back to publish what
// it holds, then leave the cluster: leaving hands this node's partitions
// to others, whose write-back should find their streams already drained.
func (d *Daemon) stop(ctx context.Context, stopWork func(), writeBackDone <-chan struct{}, leave func()) {
	log := d.logger
	d.ready.Store(false)
	log.Info("shutting down")
	if ctx.Err() != nil && d.cfg.ShutdownDelay > 0 {
		// Asked to stop (not failing): keep serving while load
		// balancers see /readyz answer 503 and take the node out.
		log.Info("draining before closing the listeners", "shutdown_delay", d.cfg.ShutdownDelay)
		time.Sleep(d.cfg.ShutdownDelay)
	}
	d.stopServers()
	stopWork()
	wait := d.cfg.Sync.PublishTimeout + writeBackGrace
	t := time.NewTimer(wait)
	select {
	case <-writeBackDone:
	case <-t.C:
		log.Warn("write-back still stopping; leaving the cluster anyway", "waited", wait)
	}
	t.Stop()
	leave()
}

// stopServers stops accepting and lets in-flight requests finish, within
// 10 s for the three servers together.
func (d *Daemon) stopServers() {
	log := d.logger
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.hotSrv.ShutdownWithContext(sctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	// fasthttp's Shutdown closes only the listeners Serve has
	// registered: a stop right after the start can come before Serve
	// ran, and Serve would then accept for ever. Closing the listener
	// here makes that Serve return at once (a closed listener is its
	// normal end).
	_ = d.hotLn.Close()
	if err := d.adminSrv.Shutdown(sctx); err != nil {
		log.Warn("admin shutdown", "err", err)
	}
	// Unstarted without metrics_addr: Shutdown then returns at once.
	if err := d.metricsSrv.Shutdown(sctx); err != nil {
		log.Warn("metrics shutdown", "err", err)
	}
}

// Verify runs the conservation check of sku against the services cfg
// names, without starting a node (the `stockd verify` command).
func Verify(ctx context.Context, cfg Config, sku string) (audit.Report, error) {
	db, err := schema.OpenTLS(ctx, cfg.MySQLDSN, cfg.MySQLCAFile)
	if err != nil {
		return audit.Report{}, fmt.Errorf("mysql: %w", err)
	}
	defer db.Close()
	store := preallocate.NewStore(db)
	shardCfgs, err := recordedShards(ctx, store, cfg.Shards, slog.Default())
	if err != nil {
		return audit.Report{}, err
	}
	shards, err := shard.Open(ctx, shardCfgs, shard.Options{Prefix: cfg.KeyPrefix, Timeout: cfg.RedisTimeout, RecordWindow: cfg.Scheduler.RetryWindow}, slog.Default())
	if err != nil {
		return audit.Report{}, fmt.Errorf("redis: %w", err)
	}
	defer shards.Close()
	// The SKU may have partitions on shards added at runtime.
	l := &loader{store: store, shards: shards, logger: slog.Default(), shardDefaults: cfg.ShardDefaults}
	if err := l.syncShards(ctx); err != nil {
		return audit.Report{}, fmt.Errorf("redis: %w", err)
	}
	return audit.New(store, stocksync.NewRecords(db), shards).Verify(ctx, sku)
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
