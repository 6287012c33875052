package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stockd/stockd/shard"
)

// Nodes that start at once from one directory agree on one generated
// demo secret; an empty file name gives a new secret each time; a file
// holding a short secret is refused.
func TestDemoSecretOneForAll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "var", "secret")
	var wg sync.WaitGroup
	got := make([]string, 8)
	errs := make([]error, 8)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got[i], errs[i] = demoSecret(path)
		}(i)
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil || got[i] != got[0] || len(got[i]) < MinSecret {
			t.Fatalf("node %d: %q %v; node 0: %q", i, got[i], errs[i], got[0])
		}
	}
	a, _ := demoSecret("")
	b, _ := demoSecret("")
	if a == b || len(a) < MinSecret {
		t.Fatalf("per-run secrets %q and %q", a, b)
	}
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("tooshort\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := demoSecret(short); err == nil {
		t.Fatal("short secret file accepted")
	}
}

// A node does not start without a reservation secret of at least 32
// bytes, unless in demo mode; the error names the setting.
func TestStartNeedsASecret(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AdminToken = testToken
	cfg.Shards = []shard.Config{{ID: "s1", Addr: "127.0.0.1:7001"}}
	for _, c := range []struct {
		secret string
		demo   bool
		want   string
	}{
		{"", false, "reservation_secret: required"},
		{"ten bytes!", false, "reservation_secret: must be at least 32 bytes (got 10)"},
		{"ten bytes!", true, "reservation_secret: must be at least 32 bytes (got 10)"},
		{"", true, ""},
		{testSecret, false, ""},
	} {
		cfg.ReservationSecret, cfg.Demo = c.secret, c.demo
		_, err := New(cfg, slog.Default())
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("secret %q demo %v: %v, want %q", c.secret, c.demo, err, c.want)
		}
	}
}
