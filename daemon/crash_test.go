package daemon

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/internal/stocktest"
)

// proc is a stockd process.
type proc struct {
	cmd        *exec.Cmd
	hot, admin string
}

// startProcCluster starts n processes from base, named n1..nN, each on its
// own gossip port and joining the first; it returns them and their
// gossip addresses.
func startProcCluster(t *testing.T, base Config, n int) ([]*proc, []string) {
	t.Helper()
	var procs []*proc
	var gossip []string
	for i := 0; i < n; i++ {
		cfg := base
		cfg.NodeName = "n" + strconv.Itoa(i+1)
		cfg.GossipAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
		if i > 0 {
			cfg.Join = []string{gossip[0]}
		}
		gossip = append(gossip, cfg.GossipAddr)
		procs = append(procs, startProc(t, cfg))
	}
	return procs, gossip
}

// startProc runs the binary with cfg passed as STOCKD_* variables.
func startProc(t *testing.T, cfg Config) *proc {
	t.Helper()
	hot := "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t))
	admin := "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t))
	if cfg.GossipAddr == "127.0.0.1:0" {
		cfg.GossipAddr = "127.0.0.1:" + strconv.Itoa(stocktest.FreePort(t))
	}
	cmd := exec.Command(stocktest.StockdBinary(t))
	cmd.Env = append(os.Environ(), procEnv(cfg, hot, admin)...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "stockd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, hot: hot, admin: admin}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("stockd log:\n%s", b)
		}
	})
	stocktest.Until(t, 30*time.Second, "stockd process ready", func() bool {
		resp, err := http.Get("http://" + hot + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

// procEnv is cfg as the STOCKD_* variables of a process.
func procEnv(cfg Config, hot, admin string) []string {
	var shards []string
	for _, s := range cfg.Shards {
		shards = append(shards, s.ID+"="+s.Addr)
	}
	return []string{
		"STOCKD_NODE_NAME=" + cfg.NodeName,
		"STOCKD_HTTP_ADDR=" + hot,
		"STOCKD_ADMIN_ADDR=" + admin,
		"STOCKD_ADMIN_TOKEN=" + cfg.AdminToken,
		"STOCKD_RESERVATION_SECRET=" + cfg.ReservationSecret,
		"STOCKD_MYSQL_DSN=" + cfg.MySQLDSN,
		"STOCKD_AMQP_URL=" + cfg.AMQPURL,
		"STOCKD_KEY_PREFIX=" + cfg.KeyPrefix,
		"STOCKD_SHARDS=" + strings.Join(shards, ","),
		"STOCKD_SYNC_QUEUE=" + cfg.Sync.Queue,
		"STOCKD_GOSSIP_ADDR=" + cfg.GossipAddr,
		"STOCKD_JOIN=" + strings.Join(cfg.Join, ","),
		"STOCKD_LOG_LEVEL=warn",
	}
}

func (p *proc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

// kill -9 in the middle of a sale, with batches in flight: after a restart
// every acknowledged reservation has its detail row in MySQL, nothing is
// counted twice and the sale goes on.
func TestKillNineMidSale(t *testing.T) {
	e := newEnv(t, 3)
	cfg := e.config()
	p := startProc(t, cfg)
	n := &node{t: t, admin: p.admin} // admin calls only
	putSKU(t, n, "k9", 50000, 4, 100, 20)
	b := stocktest.NewBuyer(16)

	stop := make(chan struct{})
	o, wg := steadySale(t, b, p.hot, "k9", "before-", 4, stop)
	stocktest.Until(t, 60*time.Second, "the sale under way before the kill", func() bool { return o.Snapshot().OK >= 300 })
	p.kill9()
	close(stop)
	wg.Wait()

	p2 := startProc(t, cfg)
	n.admin = p2.admin
	stop2 := make(chan struct{})
	o2, wg2 := steadySale(t, b, p2.hot, "k9", "after-", 4, stop2)
	stocktest.Until(t, 60*time.Second, "the restarted process selling", func() bool { return o2.Snapshot().OK >= 200 })
	close(stop2)
	wg2.Wait()

	r := waitSynced(t, n, "k9", 15*time.Second)
	// Every acknowledged reservation has its detail in MySQL.
	for _, out := range []*stocktest.Tally{o, o2} {
		for tok := range out.Reservations {
			parts := strings.Split(tok, ":")
			id := strings.Join(parts[:4], ":")
			var qty int64
			if err := e.db.QueryRow(`SELECT qty FROM deductions WHERE detail_id = ?`, id).Scan(&qty); err != nil {
				t.Fatalf("acknowledged reservation %s has no detail row: %v", tok, err)
			}
		}
	}
	// The command-line verify prints the same report.
	cmd := exec.Command(stocktest.StockdBinary(t), "verify", "k9")
	cmd.Env = append(os.Environ(), procEnv(cfg, p2.hot, p2.admin)...)
	out, err := cmd.Output()
	var cli audit.Report
	if err != nil || json.Unmarshal(out, &cli) != nil || !cli.OK || cli.Reserved != r.Reserved {
		t.Fatalf("stockd verify: %v, %s", err, out)
	}

	acked := o.Units + o2.Units
	if r.Reserved < acked {
		t.Fatalf("MySQL holds %d units, callers were told %d", r.Reserved, acked)
	}
	t.Logf("acknowledged %d before and %d after the kill; MySQL holds %d units (the rest were taken but their answers were cut off); verify %+v",
		o.Units, o2.Units, r.Reserved, r)
}

// SIGTERM under load: the node stops accepting, finishes what it accepted,
// publishes its last batches and leaves; it exits 0, nothing it answered is
// lost, and its streams hold nothing it answered.
func TestGracefulShutdownUnderLoad(t *testing.T) {
	e := newEnv(t, 3)
	cfg := e.config()
	cfg.Sync.BatchInterval = 5 * time.Second // batches are still open at the signal
	p := startProc(t, cfg)
	n := &node{t: t, admin: p.admin}
	putSKU(t, n, "term", 50000, 4, 100, 20)
	b := stocktest.NewBuyer(16)
	stop := make(chan struct{})
	o, wg := steadySale(t, b, p.hot, "term", "t-", 8, stop)
	// The signal lands mid-sale, once the batcher reads the SKU's four
	// streams (each reader's first read counts), so that batches are open.
	stocktest.Until(t, 60*time.Second, "the sale under way, its streams read", func() bool {
		return o.Snapshot().OK >= 300 && metric(t, n, "stockd_sync_stream_reads_total") >= 4
	})

	p.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("stockd exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stockd did not exit within 30s of SIGTERM")
	}
	close(stop)
	wg.Wait()

	// What it answered was published before it exited: the streams hold
	// no acknowledged detail.
	l := e.ledger("term")
	if l.streamEntries != 0 {
		t.Fatalf("%d details left in Redis streams after a graceful stop", l.streamEntries)
	}
	// A new node applies what waits in the queue; the books balance and
	// every acknowledged reservation has its row.
	n2 := startNode(t, cfg)
	r := waitSynced(t, n2, "term", 15*time.Second)
	for tok := range o.Reservations {
		parts := strings.Split(tok, ":")
		var qty int64
		if err := e.db.QueryRow(`SELECT qty FROM deductions WHERE detail_id = ?`, strings.Join(parts[:4], ":")).Scan(&qty); err != nil {
			t.Fatalf("acknowledged reservation %s has no detail row: %v", tok, err)
		}
	}
	if r.Reserved != o.Units {
		t.Fatalf("MySQL holds %d units, callers were told %d (a graceful stop answers what it took)", r.Reserved, o.Units)
	}
	t.Logf("%d deductions acknowledged, %d requests refused during the stop; verify %+v", o.OK, len(o.Errs), r)
}
