// Package catalogtest builds what the tests of preallocate, scheduler and audit
// share: a fresh MySQL database with stockd's schema and a set of Redis
// shards of the test's own. It imports shard and internal/schema, so the
// tests of those two packages cannot use it; seeding the shards table is
// left to the caller (preallocate.Store.SeedShards with Addrs), so that
// preallocate's own tests can use it too.
package catalogtest

import (
	"context"
	"database/sql"
	"log/slog"
	"strconv"
	"testing"

	"github.com/stockd/stockd/internal/schema"
	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

// Catalog is a test's database and shards.
type Catalog struct {
	DB     *sql.DB
	Shards *shard.Set
	// Addrs maps shard ids ("s1", "s2", …) to their addresses.
	Addrs map[string]string
}

// New opens a fresh database with the schema and starts n Redis shards,
// ids s1…sn, with keys under a unique prefix starting with prefix; all of
// it is closed and removed when the test ends.
func New(t testing.TB, n int, prefix string) *Catalog {
	t.Helper()
	ctx := context.Background()
	db, err := schema.Open(ctx, stocktest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	c := &Catalog{DB: db, Addrs: map[string]string{}}
	var cfgs []shard.Config
	for i := 0; i < n; i++ {
		id := "s" + strconv.Itoa(i+1)
		addr := stocktest.StartRedis(t).Addr
		cfgs = append(cfgs, shard.Config{ID: id, Addr: addr})
		c.Addrs[id] = addr
	}
	set, err := shard.Open(ctx, cfgs, shard.Options{Prefix: stocktest.Name(prefix)}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	c.Shards = set
	return c
}
