package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// redisDo runs one command on r and returns its reply as a string.
func redisDo(t testing.TB, r *stocktest.Redis, args ...string) (string, error) {
	t.Helper()
	c := r.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Do(ctx, c.B().Arbitrary(args...).Build()).ToString()
}

// redisInfo is INFO section of r as key/value pairs.
func redisInfo(t testing.TB, r *stocktest.Redis, section string) map[string]string {
	t.Helper()
	s, err := redisDo(t, r, "INFO", section)
	if err != nil {
		t.Fatalf("INFO %s on %s: %v", section, r.Addr, err)
	}
	kv := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			kv[k] = v
		}
	}
	return kv
}

// waitReplicated waits until replica's link to primary is up and it has
// everything the primary wrote.
func waitReplicated(t testing.TB, primary, replica *stocktest.Redis) {
	t.Helper()
	if _, ok := stocktest.WaitFor(30*time.Second, func() bool {
		ri := redisInfo(t, replica, "replication")
		pi := redisInfo(t, primary, "replication")
		return ri["master_link_status"] == "up" && ri["slave_repl_offset"] != "" && ri["slave_repl_offset"] == pi["master_repl_offset"]
	}); !ok {
		t.Fatalf("replica %s did not catch up with %s: %v", replica.Addr, primary.Addr, redisInfo(t, replica, "replication"))
	}
}
