package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/stockd/stockd/daemon"
	"github.com/stockd/stockd/internal/stocktest"
)

const testVersion = "v9.8.7-test.1"
const testRevision = "0123456789abcdef0123456789abcdef01234567"

var binPath string

// TestMain builds the binary once, stamped the way the Makefile's build
// target stamps it (-ldflags -X), so the cases run the real command.
// STOCKD_TEST_BIN runs the cases against another binary instead (e.g. an
// older release, to see what they catch).
func TestMain(m *testing.M) {
	if bin := os.Getenv("STOCKD_TEST_BIN"); bin != "" {
		binPath = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "stockd-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "stockd")
	build := exec.Command("go", "build", "-o", binPath, "-ldflags",
		"-X github.com/stockd/stockd/daemon.Version="+testVersion+" -X github.com/stockd/stockd/daemon.Revision="+testRevision, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build stockd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

// stockd runs the binary with args and env (added to a clean STOCKD_*-free
// environment); a command that runs for 30s (a node that started) is
// killed and fails the test.
func stockd(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = append(cleanEnv(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("stockd %v still running after 30s (it started a node?); stderr:\n%s", args, errb.String())
	}
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatal(err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STOCKD_") {
			env = append(env, kv)
		}
	}
	return env
}

// A valid configuration from the environment alone: a node would start
// with it (were it asked to).
var validEnv = []string{"STOCKD_ADMIN_TOKEN=long-enough-token", "STOCKD_SHARDS=s1=127.0.0.1:7001",
	"STOCKD_HTTP_ADDR=127.0.0.1:0", "STOCKD_ADMIN_ADDR=127.0.0.1:0", "STOCKD_GOSSIP_ADDR=127.0.0.1:0"}

func TestVersionPrintsTheStampedVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"-version"}, {"--version"}} {
		r := stockd(t, nil, args...)
		if r.code != 0 {
			t.Fatalf("stockd %v: exit %d, stderr %s", args, r.code, r.stderr)
		}
		for _, want := range []string{"stockd " + testVersion, "commit " + testRevision, "go go1."} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("stockd %v printed %q; want %q in it", args, r.stdout, want)
			}
		}
	}
	if r := stockd(t, nil, "version", "extra"); r.code != 2 {
		t.Errorf("stockd version extra: exit %d; want 2", r.code)
	}
}

func TestHelpListsTheSubcommands(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := stockd(t, nil, args...)
		if r.code != 0 {
			t.Fatalf("stockd %v: exit %d", args, r.code)
		}
		for _, sub := range []string{"run", "verify", "check-config", "version", "help"} {
			if !strings.Contains(r.stdout, "\n  "+sub+" ") {
				t.Errorf("stockd %v does not list %s:\n%s", args, sub, r.stdout)
			}
		}
	}
	// A subcommand's -h shows its flags; asking for help is no error.
	for _, sub := range []string{"run", "verify", "check-config"} {
		if r := stockd(t, validEnv, sub, "-h"); r.code != 0 || !strings.Contains(r.stderr, "-config") {
			t.Errorf("stockd %s -h: exit %d, stderr %q", sub, r.code, r.stderr)
		}
	}
}

// A mistyped subcommand or a stray argument is a usage error with a hint,
// never a node start (the environment holds a config a node would start
// with; a started node would run past the 30s bound).
func TestUnknownSubcommandAndStrayArgumentsExit2(t *testing.T) {
	cases := []struct {
		args []string
		hint string
	}{
		{[]string{"verfy"}, `did you mean "verify"`},
		{[]string{"chek-config"}, `did you mean "check-config"`},
		{[]string{"serve"}, "stockd help"},
		{[]string{"-config", "/dev/null", "extra"}, `unexpected argument "extra"`},
		{[]string{"run", "extra"}, `unexpected argument "extra"`},
		{[]string{"check-config", "extra"}, `unexpected argument "extra"`},
		{[]string{"verify", "SKU1", "SKU2"}, `unexpected argument`},
		{[]string{"-no-such-flag"}, "flag provided but not defined"},
	}
	for _, c := range cases {
		r := stockd(t, validEnv, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.hint) {
			t.Errorf("stockd %v: exit %d, stderr %q; want exit 2 and %q", c.args, r.code, r.stderr, c.hint)
		}
		if strings.Contains(r.stderr, "serving") || r.stdout != "" {
			t.Errorf("stockd %v did something: stdout %q stderr %q", c.args, r.stdout, r.stderr)
		}
	}
}

// check-config lists every problem of a config, each by its YAML path,
// and exits 1.
func TestCheckConfigListsEveryProblem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte(`
node_name: ""
admin_token: short
http_addr: nope
max_qty: 0
log_format: xml
sku_defaults: {partitions: 0, chunk: 10, threshold: 20}
http: {read_timeout: 0s, concurrency: 0}
limits: {client_rps: -1, sku_inflight: -1}
sync: {batch_size: 0, appliers: 0}
shards:
  - {id: s1, addr: "no-port"}
  - {id: s1, addr: "127.0.0.1:7002"}
`), 0o600)
	r := stockd(t, []string{"STOCKD_REDIS_TIMEOUT=0s"}, "check-config", "-config", path)
	want := []string{"node_name", "admin_token", "reservation_secret", "http_addr", "max_qty", "log_format",
		"sku_defaults.partitions", "sku_defaults.threshold", "http.read_timeout", "http.concurrency",
		"shards[0].addr", "shards[1].id", "redis_timeout", "limits.client_rps", "limits.sku_inflight",
		"sync.batch_size", "sync.appliers"}
	if r.code != 1 {
		t.Fatalf("exit %d; want 1; stderr:\n%s", r.code, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, "  - "+w) {
			t.Errorf("problem %s not listed:\n%s", w, r.stderr)
		}
	}
	if !strings.Contains(r.stderr, strconv.Itoa(len(want))+" problem(s)") || r.stdout != "" {
		t.Errorf("want exactly %d problems and nothing on stdout; stdout %q, stderr:\n%s", len(want), r.stdout, r.stderr)
	}
	// A file that is not YAML of the config is one problem too.
	os.WriteFile(path, []byte("no_such_key: 1\n"), 0o600)
	if r := stockd(t, validEnv, "check-config", "-config", path); r.code != 1 || !strings.Contains(r.stderr, "no_such_key") {
		t.Errorf("unknown key: exit %d, stderr %q", r.code, r.stderr)
	}
}

// A valid config prints as the effective configuration (file, then
// environment, over the defaults), every secret redacted.
func TestCheckConfigPrintsEffectiveConfigRedacted(t *testing.T) {
	secrets := map[string]string{
		"admin_token":        "admin-secret-1234",
		"read_token":         "read-secret-4321",
		"reservation_secret": "reservation-secret-5678-at-least-32-bytes",
		"gossip_key":         "MDEyMzQ1Njc4OWFiY2RlZg==", // 16 bytes
		"mysql password":     "my-sql-pa@ss/word",
		"amqp password":      "amqp-pass-9",
		"redis password":     "redis-pass-1",
		"redis default pw":   "redis-default-pass-2",
	}
	path := filepath.Join(t.TempDir(), "good.yaml")
	os.WriteFile(path, []byte(fmt.Sprintf(`
node_name: n1
admin_token: %s
read_token: %s
reservation_secret: %s
gossip_key: %s
mysql_dsn: "stockd:%s@tcp(db.internal:3306)/stockd?tls=true"
amqp_url: "amqps://stockd:%s@mq.internal:5671/vhost"
shards:
  - {id: s1, addr: "10.0.0.1:6379", password: %s}
shard_defaults: {password: %s}
max_qty: 5
`, secrets["admin_token"], secrets["read_token"], secrets["reservation_secret"], secrets["gossip_key"], secrets["mysql password"],
		secrets["amqp password"], secrets["redis password"], secrets["redis default pw"])), 0o600)
	r := stockd(t, []string{"STOCKD_MAX_QTY=7", "STOCKD_LOG_FORMAT=json"}, "check-config", "-config", path)
	if r.code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", r.code, r.stderr)
	}
	for what, s := range secrets {
		if strings.Contains(r.stdout, s) {
			t.Errorf("the %s is printed:\n%s", what, r.stdout)
		}
	}
	var got daemon.Config
	if err := yaml.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("effective config is not YAML of the config: %v\n%s", err, r.stdout)
	}
	def := daemon.DefaultConfig()
	checks := []struct {
		what      string
		got, want any
	}{
		{"max_qty (env over file)", got.MaxQty, int64(7)},
		{"log_format (env)", got.LogFormat, "json"},
		{"node_name (file)", got.NodeName, "n1"},
		{"sync (defaults)", got.Sync, def.Sync},
		{"admin_token", got.AdminToken, daemon.Redacted},
		{"read_token", got.ReadToken, daemon.Redacted},
		{"reservation_secret", got.ReservationSecret, daemon.Redacted},
		{"gossip_key", got.GossipKey, daemon.Redacted},
		{"mysql_dsn", got.MySQLDSN, "stockd:REDACTED@tcp(db.internal:3306)/stockd?tls=true"},
		{"amqp_url", got.AMQPURL, "amqps://stockd:REDACTED@mq.internal:5671/vhost"},
		{"shards[0].password", got.Shards[0].Password, daemon.Redacted},
		{"shard_defaults.password", got.ShardDefaults.Password, daemon.Redacted},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v; want %v", c.what, c.got, c.want)
		}
	}
}

// The binary with log_format json: every line it writes to stderr, from
// start to stop (SIGTERM), is a JSON object with time, level and msg.
func TestBinaryJSONLogs(t *testing.T) {
	redis := stocktest.StartRedis(t)
	hot := "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t))
	cmd := exec.Command(binPath)
	cmd.Env = append(cleanEnv(),
		"STOCKD_NODE_NAME=json-test", "STOCKD_ADMIN_TOKEN=long-enough-token",
		"STOCKD_RESERVATION_SECRET=json-test-reservation-secret-of-32-bytes",
		"STOCKD_SHARDS=s1="+redis.Addr, "STOCKD_MYSQL_DSN="+stocktest.Database(t),
		"STOCKD_AMQP_URL="+stocktest.AMQPURL(), "STOCKD_SYNC_QUEUE="+stocktest.Queue(t),
		"STOCKD_KEY_PREFIX="+stocktest.Name("j"), "STOCKD_HTTP_ADDR="+hot,
		"STOCKD_ADMIN_ADDR=127.0.0.1:0", "STOCKD_GOSSIP_ADDR=127.0.0.1:0",
		"STOCKD_JOIN=127.0.0.1:1", // memberlist logs its failed joins
		"STOCKD_LOG_FORMAT=json", "STOCKD_LOG_LEVEL=debug")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})
	stocktest.Until(t, 30*time.Second, "node not ready after 30s", func() bool {
		resp, err := http.Get("http://" + hot + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("stockd exited with %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stockd did not stop within 30s of SIGTERM")
	}
	lines := 0
	sc := bufio.NewScanner(&stderr)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines++
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("stderr line %d is not JSON: %v\n%s", lines, err, sc.Bytes())
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := e[k].(string); !ok {
				t.Fatalf("stderr line %d has no %q: %s", lines, k, sc.Bytes())
			}
		}
	}
	if lines < 3 {
		t.Fatalf("only %d log lines", lines)
	}
	t.Logf("%d JSON log lines", lines)
}
