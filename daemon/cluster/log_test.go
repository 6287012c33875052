package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// entries parses the JSON lines written so far.
func (l *lockedBuffer) entries(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

// Each memberlist line lands at its own level, its prefix stripped.
func TestMemberlistLogLevels(t *testing.T) {
	cases := []struct{ line, level, text string }{
		{"[DEBUG] memberlist: Stream connection from=127.0.0.1:1", "DEBUG", "Stream connection from=127.0.0.1:1"},
		{"[INFO] memberlist: Suspect n2 has failed, no acks received", "INFO", "Suspect n2 has failed, no acks received"},
		{"[WARN] memberlist: Was able to connect to n2 over TCP but UDP probes failed", "WARN", "Was able to connect to n2 over TCP but UDP probes failed"},
		{"[ERR] memberlist: Failed to send ping: write: broken pipe", "ERROR", "Failed to send ping: write: broken pipe"},
		{"no prefix at all", "DEBUG", "no prefix at all"},
	}
	for _, c := range cases {
		var buf lockedBuffer
		l := memberlistLog(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
		l.Print(c.line)
		es := buf.entries(t)
		if len(es) != 1 {
			t.Fatalf("%q: %d entries", c.line, len(es))
		}
		if es[0]["level"] != c.level || es[0]["msg"] != "memberlist" || es[0]["line"] != c.text {
			t.Errorf("%q: got %v; want level %s, line %q", c.line, es[0], c.level, c.text)
		}
	}
}

// A real memberlist warning (a UDP packet with a bad checksum) reaches the
// node's log at warn: an operator running at the default level sees it.
func TestMemberlistWarningIsLoggedAtWarn(t *testing.T) {
	var buf lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := New(Config{Name: "n1", BindAddr: "127.0.0.1:0", Fast: true}, logger)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	conn, err := net.Dial("udp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// memberlist's hasCrcMsg (12), a CRC of zero, one byte of payload.
	bad := []byte{12, 0, 0, 0, 0, 'x'}
	stocktest.Eventually(t, 20*time.Second, func() (bool, string) {
		conn.Write(bad) // UDP: resent until the warning shows
		entries := buf.entries(t)
		for _, e := range entries {
			line, _ := e["line"].(string)
			if !strings.Contains(line, "invalid checksum") {
				continue
			}
			if e["level"] != "WARN" || e["msg"] != "memberlist" || e["component"] != "cluster" {
				t.Fatalf("memberlist warning logged as %v; want level WARN, msg memberlist, component cluster", e)
			}
			return true, ""
		}
		return false, fmt.Sprintf("no memberlist checksum warning in the log after 20s:\n%v", entries)
	})
}
