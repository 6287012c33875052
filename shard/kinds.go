package shard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/stockd/stockd/internal/tlsx"
)

// Kinds of shard: how stockd reaches the Redis that holds its partitions.
const (
	// KindAddr is one standalone instance at Config.Addr; an operator
	// moves it to a replica by hand (POST /admin/shards/{id}/failover).
	KindAddr = "addr"
	// KindSentinel is a master set that Redis Sentinel watches and fails
	// over: the client asks the sentinels for the master and follows
	// +switch-master. stockd's epoch and sequence checks judge what the
	// promoted replica holds (nothing acknowledged lost with durability
	// replica; a rollback fenced and healed with aof).
	KindSentinel = "sentinel"
	// KindCluster is a Redis Cluster: partitions spread over its masters
	// by their hash tag (every script keeps to one slot); MOVED, ASK and
	// the cluster's own failovers are the client's business.
	KindCluster = "cluster"
)

// SentinelConfig names a Sentinel-managed master set. The sentinels'
// own credentials and TLS are Settings.Sentinel*.
type SentinelConfig struct {
	// MasterSet is the name the sentinels monitor (sentinel monitor NAME).
	MasterSet string `yaml:"master_set"`
	// Addrs are sentinel host:port addresses (three or more in production).
	Addrs []string `yaml:"addrs"`
}

// ClusterConfig names a Redis Cluster by seed addresses.
type ClusterConfig struct {
	// Addrs are host:port of some of the cluster's nodes; the client
	// learns the rest (CLUSTER SLOTS).
	Addrs []string `yaml:"addrs"`
}

// Location prefixes: a shard's location is one string (recorded in MySQL's
// shards.addr), host:port for KindAddr.
const (
	sentinelScheme = "sentinel://"
	clusterScheme  = "cluster://"
)

// Kind is the shard's kind: Config.Kind, or the one whose fields are set.
func (c Config) Kind() string {
	if c.KindName != "" {
		return c.KindName
	}
	switch {
	case c.Sentinel != nil:
		return KindSentinel
	case c.Cluster != nil:
		return KindCluster
	}
	return KindAddr
}

// Location is where the shard is as one string: host:port,
// sentinel://SET@host:port,host:port or cluster://host:port,host:port.
// MySQL records it, so a node that knows a shard only by id connects the
// same way.
func (c Config) Location() string {
	switch {
	case c.Sentinel != nil:
		return sentinelScheme + c.Sentinel.MasterSet + "@" + strings.Join(c.Sentinel.Addrs, ",")
	case c.Cluster != nil:
		return clusterScheme + strings.Join(c.Cluster.Addrs, ",")
	}
	return c.Addr
}

// At is c located at loc (a Location string).
func (c Config) At(loc string) Config {
	c.Addr, c.Sentinel, c.Cluster, c.KindName = "", nil, nil, ""
	switch {
	case strings.HasPrefix(loc, sentinelScheme):
		set, addrs, _ := strings.Cut(strings.TrimPrefix(loc, sentinelScheme), "@")
		c.Sentinel = &SentinelConfig{MasterSet: set, Addrs: splitAddrs(addrs)}
	case strings.HasPrefix(loc, clusterScheme):
		c.Cluster = &ClusterConfig{Addrs: splitAddrs(strings.TrimPrefix(loc, clusterScheme))}
	default:
		c.Addr = loc
	}
	return c
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// validateKind checks that exactly one kind's fields are set and that
// they are well formed; errors name the field.
func (c Config) validateKind() error {
	var set []string
	if c.Addr != "" {
		set = append(set, "addr")
	}
	if c.Sentinel != nil {
		set = append(set, "sentinel")
	}
	if c.Cluster != nil {
		set = append(set, "cluster")
	}
	switch {
	case len(set) > 1:
		return fmt.Errorf("%s: one kind per shard entry, this one sets %s", strings.Join(set, ", "), strings.Join(set, " and "))
	case len(set) == 0:
		return errors.New("addr: required (or sentinel, or cluster)")
	}
	switch c.KindName {
	case "", set[0]:
	case KindAddr, KindSentinel, KindCluster:
		return fmt.Errorf("kind %q: but the entry sets %s", c.KindName, set[0])
	default:
		return fmt.Errorf("kind %q: want addr, sentinel or cluster", c.KindName)
	}
	hostPorts := func(field string, addrs []string) error {
		if len(addrs) == 0 {
			return fmt.Errorf("%s: at least one host:port", field)
		}
		for i, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fmt.Errorf("%s[%d] %q: %w", field, i, a, err)
			}
		}
		return nil
	}
	switch set[0] {
	case "addr":
		if _, _, err := net.SplitHostPort(c.Addr); err != nil {
			return fmt.Errorf("addr %q: %w", c.Addr, err)
		}
	case "sentinel":
		if c.Sentinel.MasterSet == "" || strings.ContainsAny(c.Sentinel.MasterSet, "@, ") {
			return fmt.Errorf("sentinel.master_set %q: required, without spaces, commas or @", c.Sentinel.MasterSet)
		}
		if err := hostPorts("sentinel.addrs", c.Sentinel.Addrs); err != nil {
			return err
		}
		if c.SentinelCAFile != "" && !c.SentinelTLS {
			return errors.New("sentinel_ca_file: set sentinel_tls: true too")
		}
	case "cluster":
		if err := hostPorts("cluster.addrs", c.Cluster.Addrs); err != nil {
			return err
		}
	}
	return nil
}

// ErrMasterSetUnknown: none of the sentinels monitors the master set.
var ErrMasterSetUnknown = errors.New("no sentinel monitors this master set")

// ErrNotCluster: a cluster seed is a standalone node.
var ErrNotCluster = errors.New("not a Redis Cluster node")

// sentinelMaster asks the sentinels, in order, for the master of the set.
// A sentinel that answers that it does not know the set makes it a
// configuration error (ErrMasterSetUnknown, naming the field); none
// answering is an unreachable shard.
func sentinelMaster(ctx context.Context, cfg Config, opt Options) (master string, err error) {
	var errs []error
	for i, a := range cfg.Sentinel.Addrs {
		c, err := sentinelClient(cfg, opt, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		master, err := askMaster(ctx, c, cfg.Sentinel.MasterSet)
		c.Close()
		switch {
		case errors.Is(err, ErrMasterSetUnknown):
			return "", fmt.Errorf("sentinel.master_set %q: the sentinel at sentinel.addrs[%d] %s does not monitor it: %w", cfg.Sentinel.MasterSet, i, a, err)
		case err != nil:
			errs = append(errs, fmt.Errorf("sentinel %s: %w", a, err))
		default:
			return master, nil
		}
	}
	return "", fmt.Errorf("no sentinel answers: %w", errors.Join(errs...))
}

func askMaster(ctx context.Context, c rueidis.Client, set string) (string, error) {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	res := c.Do(pctx, c.B().SentinelGetMasterAddrByName().Master(set).Build())
	if res.Error() != nil {
		if rueidis.IsRedisNil(res.Error()) {
			return "", ErrMasterSetUnknown
		}
		return "", res.Error()
	}
	hp, err := res.AsStrSlice()
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", ErrMasterSetUnknown
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// sentinelClient is a plain client to one sentinel (its own credentials
// and TLS).
func sentinelClient(cfg Config, opt Options, addr string) (rueidis.Client, error) {
	o := rueidis.ClientOption{
		InitAddress:       []string{addr},
		Username:          cfg.SentinelUsername,
		Password:          cfg.SentinelPassword,
		DisableCache:      true,
		ForceSingleClient: true,
		ConnWriteTimeout:  opt.Timeout,
		Dialer:            net.Dialer{Timeout: opt.DialTimeout, KeepAlive: time.Second},
	}
	if cfg.SentinelTLS {
		tc, err := tlsx.Client(cfg.SentinelCAFile)
		if err != nil {
			return nil, fmt.Errorf("sentinel_ca_file: %w", err)
		}
		o.TLSConfig = tc
	}
	return rueidis.NewClient(o)
}

// checkClusterSeeds refuses a cluster seed that is a standalone node (the
// client would quietly fall back to a single instance).
func checkClusterSeeds(ctx context.Context, cfg Config, opt Options) error {
	reached := false
	var errs []error
	for i, a := range cfg.Cluster.Addrs {
		one := cfg.At(a)
		o, err := clientOption(one, opt)
		if err != nil {
			return err
		}
		c, err := rueidis.NewClient(o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, opt.DialTimeout)
		info, err := c.Do(pctx, c.B().Info().Section("cluster").Build()).ToString()
		cancel()
		c.Close()
		if err != nil {
			if _, isRedis := rueidis.IsRedisErr(err); isRedis {
				return err
			}
			errs = append(errs, err)
			continue
		}
		reached = true
		if !strings.Contains(info, "cluster_enabled:1") {
			return fmt.Errorf("cluster.addrs[%d] %q: %w: it runs with cluster-enabled no (use addr for a standalone instance)", i, a, ErrNotCluster)
		}
	}
	if !reached {
		return fmt.Errorf("no cluster seed answers: %w", errors.Join(errs...))
	}
	return nil
}

// Topology is what the shard's client is connected to, for the admin view.
type Topology struct {
	Kind string `json:"kind"`
	// Master is the current master's host:port (the address for KindAddr).
	Master string `json:"master"`
	// Replicas are the master's replicas the sentinels see up.
	Replicas []string `json:"replicas,omitempty"`
	// Masters are a cluster's masters.
	Masters []string `json:"masters,omitempty"`
	// slots are the slot ranges of each cluster master.
	slots map[string][][2]int
	// Failovers counts master changes this node saw.
	Failovers int64 `json:"failovers"`
	// LastFailover is when this node last saw the master change.
	LastFailover time.Time `json:"last_failover,omitempty"`
}

// topo is a shard's topology, owned by Set.Watch.
type topo struct {
	cur       atomic.Pointer[Topology]
	failovers atomic.Int64
}

// Topology is the shard's last observed topology.
func (s *Shard) Topology() Topology {
	if t := s.topo.cur.Load(); t != nil {
		return *t
	}
	cfg := s.Config()
	return Topology{Kind: cfg.Kind(), Master: cfg.Addr}
}

// Failovers is how many master changes this node saw on the shard.
func (s *Shard) Failovers() int64 { return s.topo.failovers.Load() }

// Watch follows the masters of the sentinel and cluster shards every
// interval until ctx ends: a changed master is counted as a failover and
// logged; what it means for the partitions there the epoch and sequence
// checks of the next calls decide.
func (s *Set) Watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.mu.RLock()
		var watched []*Shard
		for _, sh := range s.shards {
			if sh.Config().Kind() != KindAddr {
				watched = append(watched, sh)
			}
		}
		s.mu.RUnlock()
		for _, sh := range watched {
			wctx, cancel := context.WithTimeout(ctx, every+2*time.Second)
			s.observeTopology(wctx, sh)
			cancel()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Set) observeTopology(ctx context.Context, sh *Shard) {
	cfg := sh.Config()
	next := Topology{Kind: cfg.Kind()}
	switch cfg.Kind() {
	case KindSentinel:
		master, replicas, err := sentinelView(ctx, cfg, s.opt)
		if err != nil {
			return // keep the last view; the sentinels may be restarting
		}
		next.Master, next.Replicas = master, replicas
	case KindCluster:
		masters, slots, err := clusterMasters(ctx, sh.client())
		if err != nil {
			return
		}
		next.Masters, next.slots = masters, slots
		next.Master = strings.Join(masters, ",")
	}
	prev := sh.topo.cur.Load()
	next.Failovers, next.LastFailover = sh.topo.failovers.Load(), time.Time{}
	if prev != nil {
		next.LastFailover = prev.LastFailover
		if prev.Master != "" && prev.Master != next.Master && (cfg.Kind() == KindSentinel || changedMasters(prev.Masters, next.Masters)) {
			next.Failovers = sh.topo.failovers.Add(1)
			next.LastFailover = time.Now()
			s.logger.Warn("shard master changed: failover", "shard", sh.ID, "kind", cfg.Kind(), "from", prev.Master, "to", next.Master)
		}
	}
	sh.topo.cur.Store(&next)
}

// changedMasters tells whether a master left the set (a failover), not
// only a master added (resharding out).
func changedMasters(prev, next []string) bool {
	have := map[string]bool{}
	for _, m := range next {
		have[m] = true
	}
	for _, m := range prev {
		if !have[m] {
			return true
		}
	}
	return false
}

// sentinelView is the master and its up replicas, from the first sentinel
// that answers.
func sentinelView(ctx context.Context, cfg Config, opt Options) (string, []string, error) {
	var errs []error
	for _, a := range cfg.Sentinel.Addrs {
		c, err := sentinelClient(cfg, opt, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		master, err := askMaster(ctx, c, cfg.Sentinel.MasterSet)
		if err != nil {
			c.Close()
			errs = append(errs, err)
			continue
		}
		var replicas []string
		list, err := c.Do(ctx, c.B().Arbitrary("SENTINEL", "REPLICAS", cfg.Sentinel.MasterSet).Build()).ToArray()
		c.Close()
		if err == nil {
			for _, r := range list {
				kv, err := r.AsStrMap()
				if err != nil {
					continue
				}
				if f := kv["flags"]; strings.Contains(f, "s_down") || strings.Contains(f, "o_down") || strings.Contains(f, "disconnected") {
					continue
				}
				replicas = append(replicas, net.JoinHostPort(kv["ip"], kv["port"]))
			}
		}
		return master, replicas, nil
	}
	return "", nil, errors.Join(errs...)
}

// clusterMasters lists the masters of a cluster that are not failed, and
// the slot ranges each serves.
func clusterMasters(ctx context.Context, c rueidis.Client) ([]string, map[string][][2]int, error) {
	nodes, err := c.Do(ctx, c.B().ClusterNodes().Build()).ToString()
	if err != nil {
		return nil, nil, err
	}
	var masters []string
	slots := map[string][][2]int{}
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		masters = append(masters, addr)
		for _, rg := range f[min(len(f), 8):] {
			lo, hi, ok := strings.Cut(rg, "-")
			if !ok {
				hi = lo
			}
			l, err1 := strconv.Atoi(lo)
			h, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil {
				slots[addr] = append(slots[addr], [2]int{l, h})
			}
		}
	}
	sort.Strings(masters)
	return masters, slots, nil
}

// MasterOf is the cluster master serving the slot of key, as last
// observed ("" when unknown or not a cluster).
func (t Topology) MasterOf(key string) string {
	slot := int(KeySlot(key))
	for m, rs := range t.slots {
		for _, r := range rs {
			if slot >= r[0] && slot <= r[1] {
				return m
			}
		}
	}
	return ""
}

// KeySlot is Redis Cluster's slot of key: CRC16 (XMODEM) of its hash tag
// (the part between the first { and the next }, when not empty) mod 16384.
func KeySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

// StateKey is the partition's state key (its hash tag decides its slot).
func (p *Partition) StateKey() string { return p.state }
