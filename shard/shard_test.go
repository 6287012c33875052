package shard

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// With StartUnreachable a shard that does not answer is added unhealthy,
// and counts as healthy only once it answers and passes the durability
// check Add would have made; without it, Open fails.
func TestStartUnreachable(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	good := stocktest.StartRedis(t)                        // appendonly yes
	noAOF := stocktest.StartRedis(t, "--appendonly", "no") // declared aof below: must be refused
	good.Kill()
	noAOF.Kill()
	cfgs := []Config{{ID: "good", Addr: good.Addr}, {ID: "noaof", Addr: noAOF.Addr}}
	opt := Options{Prefix: stocktest.Name("unreach"), CheckDurability: true, DialTimeout: 200 * time.Millisecond}

	if _, err := Open(ctx, cfgs, opt, slog.Default()); err == nil {
		t.Fatal("Open without StartUnreachable accepted shards that do not answer")
	}
	opt.StartUnreachable = true
	set, err := Open(ctx, cfgs, opt, slog.Default())
	if err != nil {
		t.Fatalf("Open with StartUnreachable: %v", err)
	}
	defer set.Close()
	g, _ := set.Get("good")
	n, _ := set.Get("noaof")
	if g.Healthy() || n.Healthy() {
		t.Fatal("a shard that does not answer counts as healthy")
	}
	go set.Probe(ctx, 50*time.Millisecond)
	good.Restart()
	noAOF.Restart()
	stocktest.Until(t, 5*time.Second, "shard not healthy 5s after it came back", g.Healthy)
	// A call that succeeds on the unchecked shard does not make it healthy.
	c := n.client()
	n.observe(c.Do(ctx, c.B().Ping().Build()).Error())
	// Pacing: ten probe periods (50 ms) in which the shard must not turn
	// healthy; a change that does not happen leaves nothing to wait for.
	time.Sleep(500 * time.Millisecond)
	if n.Healthy() {
		t.Fatal("a shard declared aof that runs without appendonly became healthy")
	}
}
