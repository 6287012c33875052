package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/daemon/cluster"
	"github.com/stockd/stockd/daemon/hot"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
	stocksync "github.com/stockd/stockd/sync"
)

// Config is the whole daemon configuration. Every field can be set in the
// YAML file and overridden by an environment variable named STOCKD_ plus
// the field's YAML path in upper case joined by underscores, e.g.
// STOCKD_HTTP_ADDR or STOCKD_SKU_DEFAULTS_CHUNK. STOCKD_SHARDS takes
// "id=host:port,id=host:port".
type Config struct {
	// NodeName names this node in logs and in the cluster.
	NodeName string `yaml:"node_name"`
	// HTTPAddr is the hot endpoint (deduct, confirm, release, stock).
	HTTPAddr string `yaml:"http_addr"`
	// AdminAddr is the admin API.
	AdminAddr string `yaml:"admin_addr"`
	// AdminToken is the bearer token every admin route but /healthz needs.
	AdminToken string `yaml:"admin_token"`
	// ReadToken, optional, is a read-only admin token: GET and HEAD
	// routes, the status page and /metrics; changes answer 403.
	ReadToken string `yaml:"read_token"`
	// MetricsAddr, optional, is a listener that serves GET /metrics only,
	// without a token, for scrapers. Empty: none. Bind it to a private
	// interface.
	MetricsAddr string `yaml:"metrics_addr"`
	// ReservationSecret signs reservation tokens; every node of a cluster
	// needs the same one. Required, at least 32 bytes, unless Demo.
	ReservationSecret string `yaml:"reservation_secret"`
	// ReservationSecretPrevious are older secrets still accepted when
	// verifying tokens (never used to sign): a rotation in progress.
	ReservationSecretPrevious []string `yaml:"reservation_secret_previous"`
	// Demo marks a demonstration deployment (make run, make run-cluster):
	// an empty ReservationSecret is then generated at random, and shared
	// through DemoSecretFile.
	Demo bool `yaml:"demo"`
	// DemoSecretFile is where demo mode keeps its generated secret, so
	// that a restarted demo node and the demo nodes sharing the directory
	// accept each other's tokens. Empty: a new secret every run.
	DemoSecretFile string `yaml:"demo_secret_file"`
	// GossipAddr is where this node gossips with the other nodes
	// (memberlist, UDP and TCP).
	GossipAddr string `yaml:"gossip_addr"`
	// GossipAdvertiseAddr is the address the other nodes reach this one's
	// gossip at; empty: derived from GossipAddr.
	GossipAdvertiseAddr string `yaml:"gossip_advertise_addr"`
	// Join lists the gossip addresses of nodes to join at start
	// (STOCKD_JOIN takes them comma-separated). Empty: a cluster of one
	// until others join it.
	Join []string `yaml:"join"`
	// GossipKey encrypts gossip: base64 of 16, 24 or 32 random bytes, the
	// same on every node. Empty: unencrypted (a trusted network only).
	GossipKey string `yaml:"gossip_key"`
	// GossipFast shortens failure detection to about a second; for tests
	// on loopback, not for real networks.
	GossipFast bool `yaml:"-"`
	// MySQLDSN is a go-sql-driver/mysql DSN; its database is created when
	// missing.
	MySQLDSN string `yaml:"mysql_dsn"`
	// MySQLCAFile, when set, is a PEM file of CAs: MySQL is reached over
	// TLS trusting them (a DSN's own tls= parameter works too).
	MySQLCAFile string `yaml:"mysql_ca_file"`
	// MySQLIdleTxTimeout: MariaDB aborts a stockd transaction that waits
	// this long for its next statement (idle_transaction_timeout), so a
	// frozen node cannot hold the SKU row lock for the whole sale. Whole
	// seconds; 0 turns it off. MySQL lacks the variable: not set there.
	MySQLIdleTxTimeout time.Duration `yaml:"mysql_idle_tx_timeout"`
	// MySQLLockWaitTimeout: a statement waiting this long for a row lock
	// fails and its transaction is run again (innodb_lock_wait_timeout).
	// Whole seconds; 0: the server's default (50 s).
	MySQLLockWaitTimeout time.Duration `yaml:"mysql_lock_wait_timeout"`
	// AMQPURL is the RabbitMQ URL for write-back batches (amqps:// for TLS).
	AMQPURL string `yaml:"amqp_url"`
	// AMQPCAFile, when set, is a PEM file of CAs trusted for amqps://.
	AMQPCAFile string `yaml:"amqp_ca_file"`
	// KeyPrefix starts every Redis key of this deployment.
	KeyPrefix string `yaml:"key_prefix"`
	// Shards are the Redis instances holding partitions.
	Shards []shard.Config `yaml:"shards"`
	// ShardDefaults are the settings of shards this node knows only by id
	// and address: those of STOCKD_SHARDS, those added at runtime
	// (POST /admin/shards) and those another node recorded in MySQL.
	ShardDefaults shard.Settings `yaml:"shard_defaults"`
	// RedisTimeout bounds a Redis round trip; a deduction that hits it
	// answers 503 and is safe to retry with the same request id.
	RedisTimeout time.Duration `yaml:"redis_timeout"`
	// DurabilityCheck: refuse (the default) stops the start when a shard
	// declared aof runs without appendonly; warn only logs it.
	DurabilityCheck string `yaml:"durability_check"`
	// SKUDefaults apply to PUT /admin/skus when the body leaves a field out.
	SKUDefaults SKUDefaults `yaml:"sku_defaults"`
	// MaxQty is the largest qty one deduction may ask for.
	MaxQty int64 `yaml:"max_qty"`
	// RequestTimeout bounds one deduction, waits for refills included.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// HTTP tunes the hot endpoint's server.
	HTTP hot.HTTPConfig `yaml:"http"`
	// Limits are the hot endpoint's admission limits (429).
	Limits hot.Limits `yaml:"limits"`
	// ReloadEvery is how often the registry is compared with MySQL (SKUs
	// created or restocked elsewhere).
	ReloadEvery time.Duration `yaml:"reload_every"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// Cluster bounds how long a node may answer from a view older than a
	// change another node committed (coherence.go).
	Cluster ClusterConfig `yaml:"cluster"`
	// LogFormat is text (slog's key=value lines) or json (one JSON object
	// a line, for log shippers).
	LogFormat string `yaml:"log_format"`
	// ShutdownDelay is how long a stopping node keeps serving after
	// /readyz turned 503, so that load balancers stop sending to it
	// before its listeners close.
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`

	Scheduler   scheduler.Config   `yaml:"scheduler"`
	Preallocate preallocate.Config `yaml:"preallocate"`
	Sync        stocksync.Config   `yaml:"sync"`
}

// SKUDefaults are per-SKU defaults.
type SKUDefaults struct {
	// Partitions a new SKU gets.
	Partitions int `yaml:"partitions"`
	// Chunk is how many units one refill moves from the pool into a
	// sub-domain.
	Chunk int64 `yaml:"chunk"`
	// Threshold: a sub-domain below it is swapped out and refilled.
	Threshold int64 `yaml:"threshold"`
}

// DefaultConfig returns a configuration that works against the services of
// a development machine.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:        host,
		HTTPAddr:        ":8080",
		AdminAddr:       ":8081",
		DemoSecretFile:  "var/demo-reservation-secret",
		GossipAddr:      ":7946",
		MySQLDSN:        "root@tcp(127.0.0.1:3306)/stockd",
		AMQPURL:         "amqp://guest:guest@127.0.0.1:5672/",
		KeyPrefix:       "stockd",
		RedisTimeout:    2 * time.Second,
		DurabilityCheck: "refuse",
		SKUDefaults:     SKUDefaults{Partitions: 4, Chunk: 100, Threshold: 20},
		MaxQty:          100,
		RequestTimeout:  5 * time.Second,
		ReloadEvery:     2 * time.Second,
		HTTP: hot.HTTPConfig{ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
			IdleTimeout: 2 * time.Minute, Concurrency: 64 << 10},
		LogLevel:    "info",
		Cluster:     ClusterConfig{ApplyTimeout: 2 * time.Second, ViewMaxAge: 100 * time.Millisecond},
		LogFormat:   "text",
		Scheduler:   scheduler.DefaultConfig(),
		Preallocate: preallocate.DefaultConfig(),
		Sync:        stocksync.DefaultConfig(),

		MySQLIdleTxTimeout:   5 * time.Second,
		MySQLLockWaitTimeout: 10 * time.Second,
	}
}

// LoadConfig reads the YAML file at path (if not empty) over the defaults,
// then the STOCKD_* environment, then validates.
func LoadConfig(path string, environ []string) (Config, error) {
	cfg, err := ReadConfig(path, environ)
	if err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// ReadConfig is LoadConfig without the validation: the file over the
// defaults, then the environment (stockd check-config validates itself, to
// list every problem).
func ReadConfig(path string, environ []string) (Config, error) {
	cfg := DefaultConfig()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) /* empty file */ {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(&cfg, environ); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Validate reports every bad field, each by its YAML path (errors.Join:
// one line each).
func (c Config) Validate() error {
	var errs []error
	bad := func(err error) { errs = append(errs, err) }
	// badUnder adds each of a section's problems under the section's path.
	badUnder := func(path string, err error) {
		for _, e := range Problems(err) {
			bad(fmt.Errorf("%s%w", path, e))
		}
	}
	if c.NodeName == "" {
		bad(errors.New("node_name: required"))
	}
	if _, err := cluster.DecodeKey(c.GossipKey); err != nil {
		bad(fmt.Errorf("gossip_key: %w", err))
	}
	if c.GossipAdvertiseAddr != "" {
		if _, _, err := net.SplitHostPort(c.GossipAdvertiseAddr); err != nil {
			bad(fmt.Errorf("gossip_advertise_addr %q: %w", c.GossipAdvertiseAddr, err))
		}
	}
	for i, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			bad(fmt.Errorf("join[%d] %q: %w", i, j, err))
		}
	}
	for _, a := range []struct{ name, addr string }{{"http_addr", c.HTTPAddr}, {"admin_addr", c.AdminAddr}, {"gossip_addr", c.GossipAddr}} {
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			bad(fmt.Errorf("%s %q: %w", a.name, a.addr, err))
		}
	}
	if len(c.AdminToken) < 8 {
		bad(errors.New("admin_token: required, at least 8 characters"))
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			bad(fmt.Errorf("metrics_addr %q: %w", c.MetricsAddr, err))
		}
	}
	if err := c.validateTokens(); err != nil {
		bad(err)
	}
	if err := c.validateSecrets(); err != nil {
		bad(err)
	}
	if c.MySQLDSN == "" {
		bad(errors.New("mysql_dsn: required"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"mysql_idle_tx_timeout", c.MySQLIdleTxTimeout}, {"mysql_lock_wait_timeout", c.MySQLLockWaitTimeout}} {
		if d.v < 0 || d.v%time.Second != 0 {
			return fmt.Errorf("%s: whole seconds, 0 or more", d.name)
		}
	}
	if c.AMQPURL == "" {
		bad(errors.New("amqp_url: required"))
	}
	if c.KeyPrefix == "" || strings.ContainsAny(c.KeyPrefix, "{}: ") {
		bad(errors.New("key_prefix: required, without braces, colons or spaces"))
	}
	if len(c.Shards) == 0 {
		bad(errors.New("shards: at least one Redis shard is required"))
	}
	seen := map[string]bool{}
	badUnder("shard_defaults.", c.ShardDefaults.For("defaults", "127.0.0.1:1").Validate())
	for i, s := range c.Shards {
		badUnder(fmt.Sprintf("shards[%d].", i), s.Validate())
		if seen[s.ID] {
			bad(fmt.Errorf("shards[%d].id %q: duplicate", i, s.ID))
		}
		seen[s.ID] = true
	}
	if c.RedisTimeout <= 0 {
		bad(errors.New("redis_timeout: must be positive"))
	}
	if c.DurabilityCheck != "refuse" && c.DurabilityCheck != "warn" {
		bad(fmt.Errorf("durability_check %q: want refuse or warn", c.DurabilityCheck))
	}
	badUnder("sku_defaults.", c.SKUDefaults.Validate())
	if c.MaxQty < 1 {
		bad(errors.New("max_qty: must be at least 1"))
	}
	if c.RequestTimeout <= 0 {
		bad(errors.New("request_timeout: must be positive"))
	}
	badUnder("http.", c.HTTP.Validate())
	badUnder("limits.", c.Limits.Validate())
	if c.ReloadEvery <= 0 {
		bad(errors.New("reload_every: must be positive"))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad(fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel))
	}
	badUnder("cluster.", c.Cluster.Validate())
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad(fmt.Errorf("log_format %q: want text or json", c.LogFormat))
	}
	if c.ShutdownDelay < 0 {
		bad(errors.New("shutdown_delay: must not be negative"))
	}
	badUnder("scheduler.", c.Scheduler.Validate())
	badUnder("preallocate.", c.Preallocate.Validate())
	badUnder("sync.", c.Sync.Validate())
	return errors.Join(errs...)
}

// The demo's tokens (configs/stockd.yaml, the README's examples): published,
// so refused unless Demo.
const (
	DemoAdminToken = "dev-token"
	DemoReadToken  = "dev-read-token"
)

// validateTokens checks the read token and refuses the demo's tokens
// outside demo mode (admin_token's length is checked with the rest).
func (c Config) validateTokens() error {
	var errs []error
	if c.ReadToken != "" {
		switch {
		case len(c.ReadToken) < 8:
			errs = append(errs, errors.New("read_token: at least 8 characters (or empty: no read-only token)"))
		case c.ReadToken == c.AdminToken:
			errs = append(errs, errors.New("read_token: must differ from admin_token"))
		}
	}
	if !c.Demo {
		for _, f := range []struct{ name, value string }{{"admin_token", c.AdminToken}, {"read_token", c.ReadToken}} {
			if f.value == DemoAdminToken || f.value == DemoReadToken {
				errs = append(errs, fmt.Errorf("%s: %q is the demo's token; set your own or demo: true", f.name, f.value))
			}
		}
	}
	return errors.Join(errs...)
}

// MinSecret is the shortest reservation secret accepted, in bytes.
const MinSecret = 32

// validateSecrets checks the reservation secrets: a secret that can be
// guessed lets anyone sign tokens (and, before stockd checked that a
// token's deduction exists, create units with them).
func (c Config) validateSecrets() error {
	switch n := len(c.ReservationSecret); {
	case n == 0 && !c.Demo:
		return fmt.Errorf("reservation_secret: required, at least %d bytes, the same on every node (e.g. `openssl rand -hex 32`); or demo: true to generate one for a demo", MinSecret)
	case n > 0 && n < MinSecret:
		return fmt.Errorf("reservation_secret: must be at least %d bytes (got %d)", MinSecret, n)
	}
	for i, p := range c.ReservationSecretPrevious {
		switch {
		case len(p) < MinSecret:
			return fmt.Errorf("reservation_secret_previous[%d]: must be at least %d bytes (got %d)", i, MinSecret, len(p))
		case p == c.ReservationSecret:
			return fmt.Errorf("reservation_secret_previous[%d]: equals reservation_secret", i)
		}
	}
	return nil
}

// Validate checks SKU parameters and reports every bad one.
func (d SKUDefaults) Validate() error {
	var errs []error
	if d.Partitions < 1 || d.Partitions > stockd.MaxPartitions {
		errs = append(errs, fmt.Errorf("partitions: must be between 1 and %d", stockd.MaxPartitions))
	}
	if d.Chunk < 1 {
		errs = append(errs, errors.New("chunk: must be at least 1"))
	}
	if d.Threshold < 1 || d.Threshold > d.Chunk {
		errs = append(errs, errors.New("threshold: must be between 1 and chunk"))
	}
	return errors.Join(errs...)
}

// applyEnv sets fields from STOCKD_* variables.
func applyEnv(cfg *Config, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "STOCKD_") {
			env[k] = v
		}
	}
	var envShards []shard.Config
	if v, ok := env["STOCKD_SHARDS"]; ok {
		shards, err := parseShards(v)
		if err != nil {
			return fmt.Errorf("STOCKD_SHARDS: %w", err)
		}
		envShards = shards
		delete(env, "STOCKD_SHARDS")
	}
	if err := setFromEnv(reflect.ValueOf(cfg).Elem(), "STOCKD", env); err != nil {
		return err
	}
	if envShards != nil {
		// The rest of each shard's settings: shard_defaults, as set by
		// the file or by STOCKD_SHARD_DEFAULTS_*.
		cfg.Shards = cfg.Shards[:0]
		for _, s := range envShards {
			cfg.Shards = append(cfg.Shards, cfg.ShardDefaults.For(s.ID, s.Addr))
		}
	}
	for k := range env {
		// A misspelt variable would silently do nothing; the test suite's
		// own STOCKD_TEST_* variables are not settings.
		if !strings.HasPrefix(k, "STOCKD_TEST_") {
			return fmt.Errorf("%s: no such setting", k)
		}
	}
	return nil
}

func setFromEnv(v reflect.Value, prefix string, env map[string]string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		fv := v.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			if err := setFromEnv(fv, name, env); err != nil {
				return err
			}
			continue
		}
		s, ok := env[name]
		if !ok {
			continue
		}
		delete(env, name)
		if err := setValue(fv, s); err != nil {
			return fmt.Errorf("%s=%q: %w", name, s, err)
		}
	}
	return nil
}

func setValue(fv reflect.Value, s string) error {
	switch {
	case fv.Type() == reflect.TypeOf(time.Duration(0)):
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		fv.SetInt(int64(d))
	case fv.Kind() == reflect.String:
		fv.SetString(s)
	case fv.Kind() == reflect.Int, fv.Kind() == reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return errors.New("not an integer")
		}
		fv.SetInt(n)
	case fv.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return errors.New("not a number")
		}
		fv.SetFloat(f)
	case fv.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("not a boolean")
		}
		fv.SetBool(b)
	case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.String:
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// parseShards parses "id=host:port,id=host:port".
func parseShards(s string) ([]shard.Config, error) {
	var out []shard.Config
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		id, addr, ok := strings.Cut(item, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want id=host:port", item)
		}
		out = append(out, shard.Config{ID: id, Addr: addr})
	}
	return out, nil
}
