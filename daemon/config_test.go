package daemon

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The documented example config parses and, apart from the values it sets
// on purpose, equals the defaults: the documentation cannot drift from the
// code without this failing.
func TestExampleConfigIsTheDefaults(t *testing.T) {
	// The secret and the admin token have no default and belong in the
	// environment.
	cfg, err := LoadConfig("../configs/stockd.example.yaml", []string{"STOCKD_RESERVATION_SECRET=" + testSecret, "STOCKD_ADMIN_TOKEN=" + testToken})
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.NodeName, want.Shards = cfg.NodeName, cfg.Shards
	want.AdminToken = testToken
	want.ReservationSecret = testSecret
	want.MySQLDSN = cfg.MySQLDSN // the example names its own database
	if len(cfg.Join) == 0 {
		cfg.Join = nil // "join: []" documents the empty default
	}
	if len(cfg.ReservationSecretPrevious) == 0 {
		cfg.ReservationSecretPrevious = nil
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("example config differs from the defaults:\n got %+v\nwant %+v", cfg, want)
	}
}

// Bad settings fail at start with a message that names them.
func TestConfigErrorsNameTheField(t *testing.T) {
	base := []string{"STOCKD_ADMIN_TOKEN=long-enough-token", "STOCKD_SHARDS=s1=127.0.0.1:7001",
		"STOCKD_RESERVATION_SECRET=" + testSecret}
	cases := []struct{ env, field string }{
		{"STOCKD_RESERVATION_SECRET=", "reservation_secret: required"},
		{"STOCKD_RESERVATION_SECRET=short-secret", "reservation_secret: must be at least 32 bytes (got 12)"},
		{"STOCKD_RESERVATION_SECRET_PREVIOUS=" + testSecret + "-old,short", "reservation_secret_previous[1]: must be at least 32 bytes (got 5)"},
		{"STOCKD_RESERVATION_SECRET_PREVIOUS=" + testSecret, "reservation_secret_previous[0]: equals reservation_secret"},
		{"STOCKD_DEMO=1\nSTOCKD_RESERVATION_SECRET=short-secret", "reservation_secret: must be at least 32 bytes"},
		{"STOCKD_HTTP_ADDR=nope", "http_addr"},
		{"STOCKD_SKU_DEFAULTS_CHUNK=0", "sku_defaults.chunk"},
		{"STOCKD_SKU_DEFAULTS_THRESHOLD=500", "sku_defaults.threshold"},
		{"STOCKD_MAX_QTY=abc", "STOCKD_MAX_QTY"},
		{"STOCKD_SYNC_BATCH_SIZE=0", "sync.batch_size"},
		{"STOCKD_GOSSIP_KEY=short", "gossip_key"},
		{"STOCKD_JOIN=nohostport", "join[0]"},
		{"STOCKD_REDIS_TIMEOUT=soon", "STOCKD_REDIS_TIMEOUT"},
		{"STOCKD_HTTP_ADRR=:1", "STOCKD_HTTP_ADRR"},
		{"STOCKD_SHARDS=s1", "STOCKD_SHARDS"},
		{"STOCKD_SHARD_DEFAULTS_DURABILITY=sometimes", "shard_defaults.durability"},
		{"STOCKD_SHARD_DEFAULTS_DURABILITY=replica", "shard_defaults.replicas"},
		{"STOCKD_READ_TOKEN=short", "read_token: at least 8 characters"},
		{"STOCKD_READ_TOKEN=long-enough-token", "read_token: must differ from admin_token"},
		{"STOCKD_ADMIN_TOKEN=dev-token", `admin_token: "dev-token" is the demo's token; set your own or demo: true`},
		{"STOCKD_READ_TOKEN=dev-read-token", `read_token: "dev-read-token" is the demo's token`},
		{"STOCKD_METRICS_ADDR=9100", "metrics_addr"},
	}
	for _, c := range cases {
		_, err := LoadConfig("", append(append([]string{}, base...), strings.Split(c.env, "\n")...))
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: error %v does not name %s", c.env, err, c.field)
		}
	}
	if _, err := LoadConfig("", base); err != nil {
		t.Fatalf("valid environment: %v", err)
	}
	// A read token and a metrics listener.
	if _, err := LoadConfig("", append(append([]string{}, base...), "STOCKD_READ_TOKEN=other-long-token", "STOCKD_METRICS_ADDR=127.0.0.1:9100")); err != nil {
		t.Fatalf("read token and metrics_addr: %v", err)
	}
	// Demo mode takes the demo's tokens.
	if _, err := LoadConfig("", append(append([]string{}, base...), "STOCKD_DEMO=1", "STOCKD_ADMIN_TOKEN=dev-token", "STOCKD_READ_TOKEN=dev-read-token")); err != nil {
		t.Fatalf("demo mode with the demo's tokens: %v", err)
	}
	// Demo mode needs no secret (one is generated at start).
	if _, err := LoadConfig("", append(append([]string{}, base...), "STOCKD_RESERVATION_SECRET=", "STOCKD_DEMO=1")); err != nil {
		t.Fatalf("demo mode without a secret: %v", err)
	}
}

// Every setting is documented in the example config (its YAML key appears
// there).
func TestExampleConfigDocumentsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../configs/stockd.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var walk func(t reflect.Type, path string)
	walk = func(ty reflect.Type, path string) {
		for i := 0; i < ty.NumField(); i++ {
			f := ty.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			if !strings.Contains(string(b), tag+":") {
				t.Errorf("setting %s%s is not in configs/stockd.example.yaml", path, tag)
			}
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Duration(0)) {
				walk(ft, path+tag+".")
			}
		}
	}
	walk(reflect.TypeOf(Config{}), "")
}

// Shards given only by id and address (STOCKD_SHARDS) take the rest of
// their settings from shard_defaults.
func TestShardDefaultsFillEnvShards(t *testing.T) {
	cfg, err := LoadConfig("", []string{"STOCKD_ADMIN_TOKEN=long-enough-token", "STOCKD_DEMO=true",
		"STOCKD_SHARDS=s1=127.0.0.1:7001,s2=127.0.0.1:7002",
		"STOCKD_SHARD_DEFAULTS_DURABILITY=replica", "STOCKD_SHARD_DEFAULTS_REPLICAS=1",
		"STOCKD_SHARD_DEFAULTS_WAIT_TIMEOUT=50ms", "STOCKD_SHARD_DEFAULTS_USERNAME=stockd"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Shards) != 2 {
		t.Fatalf("shards %+v", cfg.Shards)
	}
	for _, s := range cfg.Shards {
		if s.Mode() != "replica" || s.Replicas != 1 || s.WaitTimeout != 50*time.Millisecond || s.Username != "stockd" {
			t.Errorf("shard %s: %+v; want shard_defaults applied", s.ID, s)
		}
	}
}
