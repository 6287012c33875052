// Package shard owns the Redis instances that hold partition stock and the
// Lua scripts that are the only code touching stock keys: take (deduct),
// point (a request's path), refill, drain, init and inspect.
//
// A partition lives on one shard. Its keys share the hash tag
// {<prefix>:<sku>:<pid>} so that one script sees all of them, on a single
// instance or in Redis Cluster alike.
package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/tlsx"
)

// Durability modes of a shard.
const (
	// DurabilityNone: Redis keeps stock in memory only. A restart loses
	// it; stockd detects the loss, fences the shard's partitions and holds
	// what they may have sold in doubt.
	DurabilityNone = "none"
	// DurabilityAOF: the instance runs with appendonly (fsync every second
	// or always). A process crash loses nothing (the kernel has the file);
	// a machine crash can lose up to a second, which stockd detects like a
	// rollback. Checked at start.
	DurabilityAOF = "aof"
	// DurabilityReplica: every take and pointer move is followed by WAIT
	// replicas wait_timeout in the same pipeline, and is answered as
	// failed-and-retryable unless that many replicas have it; a failover to
	// a replica loses nothing acknowledged.
	DurabilityReplica = "replica"
)

// Config describes one Redis instance.
type Config struct {
	// ID names the shard in the registry; partitions refer to it. Never
	// reuse an id for another instance: the registry trusts it.
	ID string `yaml:"id"`
	// KindName is addr, sentinel or cluster; optional, the kind is the one
	// whose field (addr, sentinel, cluster) the entry sets.
	KindName string `yaml:"kind"`
	// Addr is host:port of a standalone instance (kind addr).
	Addr string `yaml:"addr"`
	// Sentinel is a Sentinel-managed master set (kind sentinel).
	Sentinel *SentinelConfig `yaml:"sentinel,omitempty"`
	// Cluster is a Redis Cluster (kind cluster).
	Cluster  *ClusterConfig `yaml:"cluster,omitempty"`
	Settings `yaml:",inline"`
}

// Settings are a shard's settings other than its id and address (the
// daemon's shard_defaults are one).
type Settings struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// TLS enables TLS (system roots, or CAFile).
	TLS bool `yaml:"tls"`
	// CAFile is a PEM file of CAs to trust for TLS instead of the system
	// roots.
	CAFile string `yaml:"ca_file"`
	// Durability is none, aof (the default) or replica.
	Durability string `yaml:"durability"`
	// Replicas is how many replicas must have a write (replica mode).
	Replicas int `yaml:"replicas"`
	// WaitTimeout bounds the WAIT for them (replica mode).
	WaitTimeout time.Duration `yaml:"wait_timeout"`
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// of a sentinel shard (Username and Password are the Redis ones).
	SentinelUsername string `yaml:"sentinel_username"`
	SentinelPassword string `yaml:"sentinel_password"`
	// SentinelTLS and SentinelCAFile: TLS to the sentinels.
	SentinelTLS    bool   `yaml:"sentinel_tls"`
	SentinelCAFile string `yaml:"sentinel_ca_file"`
}

// For is the configuration of shard id at loc (a Config.Location: host:port,
// sentinel://SET@addrs or cluster://addrs) with these settings.
func (s Settings) For(id, loc string) Config { return Config{ID: id, Settings: s}.At(loc) }

// Mode is the durability mode, aof when not set.
func (c Config) Mode() string {
	if c.Durability == "" {
		return DurabilityAOF
	}
	return c.Durability
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.ID == "" {
		return errors.New("id: required")
	}
	if strings.ContainsAny(c.ID, " ,={}:") {
		return fmt.Errorf("id %q: must not contain spaces or any of ,={}:", c.ID)
	}
	if err := c.validateKind(); err != nil {
		return err
	}
	switch c.Mode() {
	case DurabilityNone, DurabilityAOF:
	case DurabilityReplica:
		if c.Kind() == KindCluster {
			// WAIT has no key: in a cluster it goes to some node, not
			// the one the take went to, and would prove nothing.
			return errors.New("durability replica: not with kind cluster (WAIT would reach another node than the write); use aof")
		}
		if c.Replicas < 1 {
			return errors.New("replicas: at least 1 in replica mode")
		}
		if c.WaitTimeout <= 0 {
			return errors.New("wait_timeout: must be positive in replica mode")
		}
	default:
		return fmt.Errorf("durability %q: want none, aof or replica", c.Durability)
	}
	if c.CAFile != "" && !c.TLS {
		return errors.New("ca_file: set tls: true too")
	}
	return nil
}

// Options tune every shard client.
type Options struct {
	// Prefix starts every key stockd writes, so several deployments or
	// tests can share an instance.
	Prefix string
	// Timeout bounds one command round trip (rueidis ConnWriteTimeout).
	Timeout time.Duration
	// DialTimeout bounds connecting.
	DialTimeout time.Duration
	// CheckDurability refuses a shard in aof mode whose instance does not
	// run with appendonly (false: a warning).
	CheckDurability bool
	// StartUnreachable lets Open (and AddUnreachable) add a shard that does
	// not answer: it starts unhealthy, its durability is checked when it
	// first answers, and until then selection avoids it and requests that
	// need it answer 503. Without it Open fails.
	StartUnreachable bool
	// Logger receives warnings (durability, health).
	Logger *slog.Logger
	// RecordWindow is the generation length of the partitions' records
	// and pointers (scheduler.retry_window): each is kept for at least one
	// and at most two windows after it was last written, then expires
	// (ARCHITECTURE 2). 0: DefaultRecordWindow. Every node must use the
	// same value.
	RecordWindow time.Duration
	// OnBack runs when Probe finds an unhealthy shard answering, before
	// requests use it again: the daemon marks fenced in Redis the
	// partitions MySQL fenced while the shard did not answer. nil: nothing.
	OnBack func(ctx context.Context, id string)
}

// Shard is one Redis instance. Its address can change under a live node (a
// failover to a replica): the client is swapped, handles keep the *Shard.
type Shard struct {
	ID string

	cfg     atomic.Pointer[Config]
	c       atomic.Pointer[rueidis.Client]
	healthy atomic.Bool
	// failures counts the errors since the last success.
	failures atomic.Int32
	// unchecked: added while it did not answer; its durability is checked
	// (by Probe) before it counts as healthy.
	unchecked atomic.Bool
	// takeCalls and takeRequests count the take script calls sent to the
	// shard and the requests they carried (their ratio is the batch size).
	takeCalls, takeRequests atomic.Int64
	// takes batches the takes of the shard's partitions (take.go).
	takes combiner
	// redial: a sentinel or cluster shard none of whose addresses
	// answered when it was added; its client is a stand-in until Probe
	// dials it for real.
	redial atomic.Bool
	topo   topo
}

// TakeBatches returns how many take script calls this node sent to the
// shard and how many requests they carried in all.
func (s *Shard) TakeBatches() (calls, requests int64) {
	return s.takeCalls.Load(), s.takeRequests.Load()
}

func (s *Shard) client() rueidis.Client { return *s.c.Load() }

// Client gives direct access for non-stock keys.
func (s *Shard) Client() rueidis.Client { return s.client() }

// Addr is the shard's location (Config.Location): its address for kind
// addr, sentinel://SET@sentinels or cluster://seeds otherwise.
func (s *Shard) Addr() string { return s.cfg.Load().Location() }

// Config is the shard's current configuration.
func (s *Shard) Config() Config { return *s.cfg.Load() }

// Healthy tells whether the shard answered lately. Selection avoids the
// partitions of an unhealthy shard; requests homed there fail fast.
func (s *Shard) Healthy() bool { return s.healthy.Load() }

// observe records the outcome of a call: a network error or timeout makes
// the shard unhealthy until a probe (or call) succeeds.
func (s *Shard) observe(err error) {
	if _, isRedis := rueidis.IsRedisErr(err); err == nil || isRedis || errors.Is(err, ErrNotReplicated) || errors.Is(err, ErrBadReply) {
		if s.unchecked.Load() {
			return // healthy only once Probe has checked its durability
		}
		if s.failures.Swap(0) != 0 || !s.healthy.Load() {
			s.healthy.Store(true)
		}
		return
	}
	s.failures.Add(1)
	s.healthy.Store(false)
}

// Ping asks the shard to answer. It leaves the shard's health alone: that
// follows the calls that serve requests (and Probe), and a ping that is
// only slow on a loaded machine must not turn requests away.
func (s *Shard) Ping(ctx context.Context) error {
	c := s.client()
	return c.Do(ctx, c.B().Ping().Build()).Error()
}

// ErrNotReplicated means a write did not reach the shard's required
// replicas within wait_timeout (replica mode); it happened on the primary,
// so the caller must retry (with the same request id) rather than act on it.
var ErrNotReplicated = errors.New("write not replicated in time")

// Set is the shards, keyed by id. Shards can be added while it is in use
// (an operator adds a Redis instance); handles keep their *Shard.
type Set struct {
	prefix string
	opt    Options
	logger *slog.Logger

	mu     sync.RWMutex
	shards map[string]*Shard
}

// Open connects to every shard. It fails, naming the shard, when one does
// not answer.
func Open(ctx context.Context, cfgs []Config, opt Options, logger *slog.Logger) (*Set, error) {
	if opt.Timeout <= 0 {
		opt.Timeout = 2 * time.Second
	}
	if opt.DialTimeout <= 0 {
		opt.DialTimeout = 2 * time.Second
	}
	if opt.Logger == nil {
		opt.Logger = logger
	}
	s := &Set{prefix: opt.Prefix, opt: opt, shards: make(map[string]*Shard, len(cfgs)), logger: logger}
	for _, cfg := range cfgs {
		add := s.Add
		if opt.StartUnreachable {
			add = s.AddUnreachable
		}
		if err := add(ctx, cfg); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// AddUnreachable is Add, except that with Options.StartUnreachable a shard
// that does not answer is added all the same, unhealthy (see there). A
// shard that answers and fails its durability check is still refused.
func (s *Set) AddUnreachable(ctx context.Context, cfg Config) error {
	err := s.add(ctx, cfg, s.opt.StartUnreachable)
	var ue *unreachableError
	if !errors.As(err, &ue) {
		return err
	}
	sh := &Shard{ID: cfg.ID}
	sh.c.Store(&ue.c)
	sh.cfg.Store(&cfg)
	sh.unchecked.Store(true)
	sh.redial.Store(ue.redial)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.shards[cfg.ID]; ok {
		ue.c.Close()
		return nil
	}
	s.shards[cfg.ID] = sh
	s.logger.Error("shard does not answer: started without it; its partitions answer 503 until it does", "shard", cfg.ID, "addr", cfg.Location(), "err", ue.err)
	return nil
}

// unreachableError is a shard that did not answer, with the client that
// keeps trying (rueidis redials on the next command).
type unreachableError struct {
	c   rueidis.Client
	err error
	// redial: c is a stand-in (a sentinel or cluster shard); Probe dials
	// the real client.
	redial bool
}

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

// Add connects to a shard and adds it; adding an id already there with the
// same address does nothing.
func (s *Set) Add(ctx context.Context, cfg Config) error { return s.add(ctx, cfg, false) }

// add is Add; with keep, a shard that does not answer comes back as an
// *unreachableError holding its (open) client.
func (s *Set) add(ctx context.Context, cfg Config, keep bool) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("shard: %w", err)
	}
	s.mu.RLock()
	cur, ok := s.shards[cfg.ID]
	s.mu.RUnlock()
	if ok {
		if cur.Addr() == cfg.Location() {
			return nil
		}
		return fmt.Errorf("shard %s: already at %s, not %s", cfg.ID, cur.Addr(), cfg.Location())
	}
	c, err := dial(ctx, cfg, s.opt, keep)
	if err != nil {
		return fmt.Errorf("shard %s (%s): %w", cfg.ID, cfg.Location(), err)
	}
	sh := &Shard{ID: cfg.ID}
	sh.c.Store(&c)
	sh.cfg.Store(&cfg)
	sh.healthy.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.shards[cfg.ID]; ok {
		c.Close()
		return nil
	}
	s.shards[cfg.ID] = sh
	return nil
}

// dial connects to cfg's instance, pings it and checks its durability.
// With keep, an instance that does not answer comes back as an
// *unreachableError holding the client (which redials on its next
// command); without, that client is closed.
func dial(ctx context.Context, cfg Config, opt Options, keep bool) (rueidis.Client, error) {
	if cfg.Kind() != KindAddr {
		return dialManaged(ctx, cfg, opt, keep)
	}
	o, err := clientOption(cfg, opt)
	if err != nil {
		return nil, err
	}
	// ForceSingleClient: NewClient returns a client even when the first
	// dial fails; it dials again on the next command.
	unreachable := func(c rueidis.Client, err error) (rueidis.Client, error) {
		if keep {
			return nil, &unreachableError{c: c, err: err}
		}
		c.Close()
		return nil, err
	}
	c, err := rueidis.NewClient(o)
	if err != nil {
		// A Redis error (a wrong password, an unknown user) is a
		// configuration to fix, not a shard that is down.
		if _, isRedis := rueidis.IsRedisErr(err); c != nil && !isRedis {
			return unreachable(c, err)
		}
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, opt.DialTimeout)
	defer cancel()
	if err := c.Do(pctx, c.B().Ping().Build()).Error(); err != nil {
		if _, isRedis := rueidis.IsRedisErr(err); !isRedis {
			return unreachable(c, err)
		}
		c.Close()
		return nil, err
	}
	if err := checkDurability(pctx, c, cfg, opt); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// clientOption is the rueidis option of a standalone instance at cfg.Addr.
func clientOption(cfg Config, opt Options) (rueidis.ClientOption, error) {
	o := rueidis.ClientOption{
		InitAddress:       []string{cfg.Addr},
		Username:          cfg.Username,
		Password:          cfg.Password,
		DisableCache:      true,
		ForceSingleClient: true,
		ConnWriteTimeout:  opt.Timeout,
		Dialer:            net.Dialer{Timeout: opt.DialTimeout, KeepAlive: time.Second},
	}
	if cfg.TLS {
		tc, err := tlsx.Client(cfg.CAFile)
		if err != nil {
			return o, fmt.Errorf("ca_file: %w", err)
		}
		o.TLSConfig = tc
	}
	return o, nil
}

// dialManaged connects to a sentinel or cluster shard. A configuration
// that cannot work (a master set no sentinel monitors, a cluster seed that
// is a standalone node) is an error naming the field; with keep, a shard
// none of whose addresses answers comes back as an *unreachableError
// holding a stand-in client (Probe dials the real one later).
func dialManaged(ctx context.Context, cfg Config, opt Options, keep bool) (rueidis.Client, error) {
	o, err := clientOption(cfg, opt)
	if err != nil {
		return nil, err
	}
	unreachable := func(err error) (rueidis.Client, error) {
		if !keep {
			return nil, err
		}
		// The stand-in answers nothing: a single client to a port no one
		// listens on (it is never marked healthy: the shard is unchecked).
		so := o
		so.InitAddress = []string{"127.0.0.1:1"}
		c, _ := rueidis.NewClient(so)
		if c == nil {
			return nil, err
		}
		return nil, &unreachableError{c: c, err: err, redial: true}
	}
	pctx, cancel := context.WithTimeout(ctx, opt.DialTimeout+2*time.Second)
	defer cancel()
	switch cfg.Kind() {
	case KindSentinel:
		if _, err := sentinelMaster(pctx, cfg, opt); err != nil {
			if errors.Is(err, ErrMasterSetUnknown) {
				return nil, err
			}
			return unreachable(err)
		}
		o.InitAddress = cfg.Sentinel.Addrs
		o.ForceSingleClient = false
		if o.Sentinel, err = sentinelOption(cfg, o); err != nil {
			return nil, err
		}
	case KindCluster:
		if err := checkClusterSeeds(pctx, cfg, opt); err != nil {
			if errors.Is(err, ErrNotCluster) {
				return nil, err
			}
			if _, isRedis := rueidis.IsRedisErr(errors.Unwrap(err)); isRedis {
				return nil, err
			}
			return unreachable(err)
		}
		o.InitAddress = cfg.Cluster.Addrs
		o.ForceSingleClient = false
	}
	c, err := rueidis.NewClient(o)
	if err != nil {
		if _, isRedis := rueidis.IsRedisErr(err); isRedis {
			return nil, err
		}
		return unreachable(err)
	}
	if err := c.Do(pctx, c.B().Ping().Build()).Error(); err != nil {
		if _, isRedis := rueidis.IsRedisErr(err); isRedis || !keep {
			c.Close()
			return nil, err
		}
		// The master is down (a failover under way): the client follows
		// the sentinels or the cluster by itself.
		return nil, &unreachableError{c: c, err: err}
	}
	if err := checkDurability(pctx, c, cfg, opt); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// sentinelOption is how the client of a sentinel shard (o) reaches its
// sentinels.
func sentinelOption(cfg Config, o rueidis.ClientOption) (rueidis.SentinelOption, error) {
	so := rueidis.SentinelOption{
		MasterSet: cfg.Sentinel.MasterSet,
		Username:  cfg.SentinelUsername,
		Password:  cfg.SentinelPassword,
		Dialer:    o.Dialer,
		// +switch-master is the fast path; this catches a missed one.
		TopologyRefreshInterval: 2 * time.Second,
	}
	if cfg.SentinelTLS {
		tc, err := tlsx.Client(cfg.SentinelCAFile)
		if err != nil {
			return so, fmt.Errorf("sentinel_ca_file: %w", err)
		}
		so.TLSConfig = tc
	}
	return so, nil
}

// checkDurability makes sure the instance can keep the promise of cfg's
// mode.
func checkDurability(ctx context.Context, c rueidis.Client, cfg Config, opt Options) error {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	switch cfg.Mode() {
	case DurabilityAOF:
		kv, err := c.Do(ctx, c.B().ConfigGet().Parameter("appendonly").Build()).AsStrMap()
		if err != nil {
			log.Warn("cannot check appendonly (CONFIG GET refused?); trusting the configuration", "shard", cfg.ID, "err", err)
			return nil
		}
		if kv["appendonly"] != "yes" {
			if opt.CheckDurability {
				return fmt.Errorf("durability aof, but the instance runs with appendonly %q: turn it on, or declare the shard durability none (durability_check: warn only warns)", kv["appendonly"])
			}
			log.Warn("shard declared aof runs without appendonly: a restart loses its stock (it will be fenced and held in doubt)", "shard", cfg.ID)
		}
	case DurabilityReplica:
		info, err := c.Do(ctx, c.B().Info().Section("replication").Build()).ToString()
		if err == nil {
			for _, line := range strings.Split(info, "\r\n") {
				if v, ok := strings.CutPrefix(line, "connected_slaves:"); ok {
					if n, _ := strconv.Atoi(v); n < cfg.Replicas {
						log.Warn("shard in replica mode has fewer replicas connected than required: deductions answer 503 until they connect",
							"shard", cfg.ID, "connected", n, "required", cfg.Replicas)
					}
				}
			}
		}
	}
	return nil
}

// Replace points shard id at another address (a failover to a replica):
// it connects there first, then swaps the client.
func (s *Set) Replace(ctx context.Context, id, addr string) error {
	sh, err := s.Get(id)
	if err != nil {
		return err
	}
	cfg := sh.Config()
	if cfg.Location() == addr {
		return nil
	}
	if cfg.Kind() != KindAddr {
		return fmt.Errorf("shard %s is a %s shard: its failovers are %s's, not an admin call", id, cfg.Kind(), map[string]string{KindSentinel: "Sentinel", KindCluster: "the cluster"}[cfg.Kind()])
	}
	cfg = cfg.At(addr)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("shard: %w", err)
	}
	c, err := dial(ctx, cfg, s.opt, false)
	if err != nil {
		return fmt.Errorf("shard %s (%s): %w", id, addr, err)
	}
	old := sh.c.Swap(&c)
	sh.cfg.Store(&cfg)
	sh.healthy.Store(true)
	sh.failures.Store(0)
	(*old).Close()
	s.logger.Warn("shard moved", "shard", id, "addr", addr)
	return nil
}

// Probe pings the unhealthy shards every interval until ctx ends, so that
// selection uses them again once they answer.
func (s *Set) Probe(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.RLock()
		var sick []*Shard
		for _, sh := range s.shards {
			if !sh.Healthy() {
				sick = append(sick, sh)
			}
		}
		s.mu.RUnlock()
		for _, sh := range sick {
			pctx, cancel := context.WithTimeout(ctx, every)
			if sh.redial.Load() {
				// Added while none of its sentinels or seeds answered.
				dctx, dcancel := context.WithTimeout(ctx, s.opt.DialTimeout+2*time.Second)
				c, err := dial(dctx, sh.Config(), s.opt, false)
				dcancel()
				if err != nil {
					cancel()
					continue
				}
				sh.redial.Store(false)
				(*sh.c.Swap(&c)).Close()
			}
			c := sh.client()
			err := c.Do(pctx, c.B().Ping().Build()).Error()
			if err == nil && sh.unchecked.Load() {
				// First answer of a shard added while unreachable: the
				// check Add would have made.
				if err = checkDurability(pctx, c, sh.Config(), s.opt); err != nil {
					if sh.failures.Add(1)%240 == 1 { // about once a minute
						s.logger.Error("shard answers but fails its durability check: not used", "shard", sh.ID, "err", err)
					}
					cancel()
					continue
				}
				sh.unchecked.Store(false)
			}
			cancel()
			if err == nil && s.opt.OnBack != nil {
				bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				s.opt.OnBack(bctx, sh.ID)
				cancel()
			}
			sh.observe(err)
			if err == nil {
				s.logger.Info("shard answers again", "shard", sh.ID)
			}
		}
	}
}

// Get returns the shard with id.
func (s *Set) Get(id string) (*Shard, error) {
	s.mu.RLock()
	sh, ok := s.shards[id]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", stockd.ErrUnknownShard, id)
	}
	return sh, nil
}

// IDs lists the shard ids in sorted order.
func (s *Set) IDs() []string {
	s.mu.RLock()
	ids := make([]string, 0, len(s.shards))
	for id := range s.shards {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	sort.Strings(ids)
	return ids
}

// Prefix is the key prefix of this deployment.
func (s *Set) Prefix() string { return s.prefix }

// Close closes every client.
func (s *Set) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sh := range s.shards {
		sh.client().Close()
	}
}

// Stats are a shard's size, for the admin view.
type Stats struct {
	Keys       int64
	MemoryUsed int64
}

// Stats reads DBSIZE and used_memory.
func (s *Shard) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	c := s.client()
	res := c.DoMulti(ctx, c.B().Dbsize().Build(), c.B().Info().Section("memory").Build())
	n, err := res[0].AsInt64()
	if err != nil {
		return st, err
	}
	st.Keys = n
	info, err := res[1].ToString()
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			st.MemoryUsed, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return st, nil
}

// DeleteSKUKeys removes every key of sku's partitions from every shard
// (state, records and pointers of every generation, stream, applied
// fills): an archived SKU leaves nothing in Redis. It finds them with
// SCAN by their hash tag, so it costs a pass over each shard's keyspace;
// archiving is rare. It returns the keys removed. Shards that do not
// answer are named in the error (their keys stay; run it again).
func (s *Set) DeleteSKUKeys(ctx context.Context, sku string) (int64, error) {
	head := "{" + s.prefix + ":" + sku + ":"
	var n int64
	var errs []error
	for _, id := range s.IDs() {
		sh, err := s.Get(id)
		if err != nil {
			continue
		}
		c := sh.client()
		var cursor uint64
		for {
			e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(head+"*").Count(1000).Build()).AsScanEntry()
			if err != nil {
				errs = append(errs, fmt.Errorf("scan %s: %w", id, err))
				break
			}
			var keys []string
			for _, k := range e.Elements {
				// Only "{prefix:sku:<pid>}:…": not the keys of a SKU whose
				// name continues with ':'.
				rest := k[len(head):]
				end := strings.Index(rest, "}:")
				if end > 0 && strings.Trim(rest[:end], "0123456789") == "" {
					keys = append(keys, k)
				}
			}
			// One UNLINK per key: the partitions' keys are in different
			// slots (Redis Cluster refuses a multi-key command across them).
			cmds := make(rueidis.Commands, 0, len(keys))
			for _, k := range keys {
				cmds = append(cmds, c.B().Unlink().Key(k).Build())
			}
			failed := false
			for _, r := range c.DoMulti(ctx, cmds...) {
				m, err := r.AsInt64()
				if err != nil {
					errs = append(errs, fmt.Errorf("unlink on %s: %w", id, err))
					failed = true
					break
				}
				n += m
			}
			if failed {
				break
			}
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	return n, errors.Join(errs...)
}
