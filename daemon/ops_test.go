package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// syncBuffer is a log destination several goroutines write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

// runNode starts a daemon logging to w in cfg's log format.
func runNode(t *testing.T, cfg Config, w *syncBuffer) *node {
	t.Helper()
	d, err := New(cfg, NewFormatLogger(w, cfg.LogLevel, cfg.LogFormat))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{t: t, d: d, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-n.done:
		t.Fatalf("daemon exited at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon not ready after 30s")
	}
	n.hot, n.admin = d.Addrs()
	t.Cleanup(func() { n.stop() })
	return n
}

// With log_format json every line a node writes, memberlist's included,
// from start to stop, is one JSON object with time, level and msg.
func TestJSONLogsParseLineByLine(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config()
	cfg.LogFormat = "json"
	cfg.LogLevel = "debug"
	// A peer that is not there: memberlist logs its failed joins.
	cfg.Join = []string{"127.0.0.1:1"}
	var out syncBuffer
	n := runNode(t, cfg, &out)
	putSKU(t, n, "j1", 10, 1, 5, 1)
	deadline := time.Now().Add(20 * time.Second)
	for !bytes.Contains(out.Bytes(), []byte(`"msg":"memberlist"`)) {
		if time.Now().After(deadline) {
			t.Fatalf("no memberlist line after 20s:\n%s", out.Bytes())
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.stop()

	lines, memberlist := 0, 0
	sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines++
		var entry map[string]any
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Fatalf("line %d is not a JSON object: %v\n%s", lines, err, sc.Bytes())
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := entry[k].(string); !ok {
				t.Fatalf("line %d has no string %q: %s", lines, k, sc.Bytes())
			}
		}
		if entry["msg"] == "memberlist" {
			memberlist++
		}
	}
	if lines < 3 || !bytes.Contains(out.Bytes(), []byte(`"msg":"serving"`)) || !bytes.Contains(out.Bytes(), []byte(`"msg":"stopped"`)) {
		t.Fatalf("%d lines, want the node's start and stop among them:\n%s", lines, out.Bytes())
	}
	t.Logf("%d JSON lines, %d from memberlist", lines, memberlist)
}

// The demo config (make run) gossips and advertises on loopback, not on
// the machine's first private address.
func TestDemoConfigGossipsOnLoopback(t *testing.T) {
	demo, err := LoadConfig("../configs/stockd.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, 1)
	cfg := e.config()
	host, _, err := net.SplitHostPort(demo.GossipAddr)
	if err != nil {
		t.Fatal(err)
	}
	cfg.GossipAddr = net.JoinHostPort(host, "0") // the demo's host, a free port
	cfg.GossipAdvertiseAddr = demo.GossipAdvertiseAddr
	n := startNode(t, cfg)
	adv, _, err := net.SplitHostPort(n.d.GossipAddr())
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(adv); ip == nil || !ip.IsLoopback() {
		t.Fatalf("configs/stockd.yaml gossip_addr %q advertises %s; want a loopback address", demo.GossipAddr, n.d.GossipAddr())
	}
}

// With shutdown_delay a stopping node answers /readyz 503 and still
// serves deductions until the delay ends; then its listeners close.
func TestShutdownDelayServesWhileNotReady(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config()
	cfg.ShutdownDelay = 15 * time.Second // ample for a loaded machine between the 503 and the deduction
	n := startNode(t, cfg)
	putSKU(t, n, "d1", 100, 1, 10, 2)
	b := stocktest.NewBuyer(2)
	if a, err := b.Deduct(n.hot, "d1", 1, "before"); err != nil || a.Code != 200 {
		t.Fatalf("deduct before the stop: %+v %v", a, err)
	}
	readyz := func() int {
		resp, err := http.Get("http://" + n.hot + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := readyz(); code != 200 {
		t.Fatalf("/readyz before the stop: %d", code)
	}

	stopped := make(chan struct{})
	go func() { n.stop(); close(stopped) }()
	deadline := time.Now().Add(10 * time.Second)
	for readyz() != 503 {
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not turn 503 within 10s of the stop")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a, err := b.Deduct(n.hot, "d1", 1, "draining")
	if err != nil || a.Code != 200 {
		t.Fatalf("deduct while draining (readyz 503): %+v %v; want 200", a, err)
	}
	<-stopped
	if _, err := net.DialTimeout("tcp", n.hot, time.Second); err == nil {
		t.Fatal("hot listener still open after the node stopped")
	}
}
