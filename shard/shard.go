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
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// ErrUnknownShard is returned when a shard id is not configured.
var ErrUnknownShard = errors.New("unknown shard")

// Config describes one Redis instance.
type Config struct {
	// ID names the shard in the registry; partitions refer to it. Never
	// reuse an id for another instance: the registry trusts it.
	ID string `yaml:"id"`
	// Addr is host:port.
	Addr     string `yaml:"addr"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// TLS enables TLS with the system roots.
	TLS bool `yaml:"tls"`
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.ID == "" {
		return errors.New("id: required")
	}
	if strings.ContainsAny(c.ID, " ,={}:") {
		return fmt.Errorf("id %q: must not contain spaces or any of ,={}:", c.ID)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("addr %q: %w", c.Addr, err)
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
}

// Shard is one Redis instance.
type Shard struct {
	ID   string
	Addr string
	c    rueidis.Client
}

// Client gives direct access for non-stock keys (detail streams).
func (s *Shard) Client() rueidis.Client { return s.c }

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
	s := &Set{prefix: opt.Prefix, opt: opt, shards: make(map[string]*Shard, len(cfgs)), logger: logger}
	for _, cfg := range cfgs {
		if err := s.Add(ctx, cfg); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Add connects to a shard and adds it; adding an id already there with the
// same address does nothing.
func (s *Set) Add(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("shard: %w", err)
	}
	s.mu.RLock()
	cur, ok := s.shards[cfg.ID]
	s.mu.RUnlock()
	if ok {
		if cur.Addr == cfg.Addr {
			return nil
		}
		return fmt.Errorf("shard %s: already at %s, not %s", cfg.ID, cur.Addr, cfg.Addr)
	}
	sh, err := dial(ctx, cfg, s.opt)
	if err != nil {
		return fmt.Errorf("shard %s (%s): %w", cfg.ID, cfg.Addr, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.shards[cfg.ID]; ok {
		sh.c.Close()
		return nil
	}
	s.shards[cfg.ID] = sh
	return nil
}

func dial(ctx context.Context, cfg Config, opt Options) (*Shard, error) {
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
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	c, err := rueidis.NewClient(o)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, opt.DialTimeout)
	defer cancel()
	if err := c.Do(pctx, c.B().Ping().Build()).Error(); err != nil {
		c.Close()
		return nil, err
	}
	return &Shard{ID: cfg.ID, Addr: cfg.Addr, c: c}, nil
}

// Get returns the shard with id.
func (s *Set) Get(id string) (*Shard, error) {
	s.mu.RLock()
	sh, ok := s.shards[id]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownShard, id)
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
		sh.c.Close()
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
	res := s.c.DoMulti(ctx, s.c.B().Dbsize().Build(), s.c.B().Info().Section("memory").Build())
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
