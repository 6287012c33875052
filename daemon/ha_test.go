package daemon

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/shard"
)

// startErr runs a node that must refuse to start and returns its error.
func startErr(t *testing.T, cfg Config) error {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		return err
	}
	d, err := New(cfg, NewLogger(newTestWriter(t), cfg.LogLevel))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
		cancel()
		<-done
		t.Fatal("the node started")
		return nil
	case err := <-done:
		return err
	}
}

// Bad high-availability configuration stops the start with an error that
// names the field: a shard entry of two kinds, a master set no sentinel
// monitors, a cluster seed that is a standalone node, a write-back queue
// that exists with the other type.
func TestHAConfigErrorsNameTheField(t *testing.T) {
	e := newEnv(t, 1)
	standalone := e.shards[0].Addr
	sentinels := stocktest.StartSentinelSet(t, stocktest.Name("set"), 0, 1)
	classic := stocktest.Queue(t)
	conn, err := amqp.Dial(stocktest.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDeclare(classic, true, false, false, false, amqp.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": classic + ".dlq"})
	}
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		shard shard.Config
		queue string
		want  []string
	}{
		{"two kinds in one entry", shard.Config{ID: "s1", Addr: standalone, Sentinel: &shard.SentinelConfig{MasterSet: sentinels.Name, Addrs: sentinels.SentinelAddrs()}},
			"", []string{"shards[0].addr, sentinel: one kind per shard entry"}},
		{"kind contradicts the fields", shard.Config{ID: "s1", KindName: shard.KindCluster, Addr: standalone},
			"", []string{`shards[0].kind "cluster": but the entry sets addr`}},
		{"master set no sentinel monitors", shard.Config{ID: "s1", Sentinel: &shard.SentinelConfig{MasterSet: "no-such-set", Addrs: sentinels.SentinelAddrs()}},
			"", []string{"shard s1", `sentinel.master_set "no-such-set"`, "does not monitor it"}},
		{"cluster seed that is a standalone node", shard.Config{ID: "s1", Cluster: &shard.ClusterConfig{Addrs: []string{standalone}}},
			"", []string{"shard s1", fmt.Sprintf("cluster.addrs[0] %q", standalone), "cluster-enabled no"}},
		{"classic queue, quorum configured", shard.Config{ID: "s1", Addr: standalone},
			classic, []string{"sync.queue_type: quorum", "exists as a classic queue", "sync.queue_type: classic"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.config()
			cfg.Shards = []shard.Config{tc.shard}
			if tc.queue != "" {
				cfg.Sync.Queue = tc.queue
			}
			err := startErr(t, cfg)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// shardsView is GET /admin/shards as this test reads it.
type haShardView struct {
	ID           string     `json:"id"`
	Kind         string     `json:"kind"`
	Master       string     `json:"master"`
	Replicas     []string   `json:"replicas"`
	Failovers    int64      `json:"failovers"`
	LastFailover *time.Time `json:"last_failover"`
}

func haShard(t *testing.T, n *node, id string) haShardView {
	t.Helper()
	var all []haShardView
	if code := adminDo(t, n, "GET", "/admin/shards", "", &all); code != 200 {
		t.Fatalf("GET /admin/shards: %d", code)
	}
	for _, v := range all {
		if v.ID == id {
			return v
		}
	}
	t.Fatalf("no shard %s in %+v", id, all)
	return haShardView{}
}

// A Sentinel-managed shard in replica mode: the primary is killed (-9)
// mid-sale, Sentinel promotes a replica, and stockd follows without any
// admin call. Buyers retry 503s with the same request id; every unit sells
// exactly once, MySQL holds what callers were told, nothing is in doubt,
// and the shard list shows the new master and the failover.
func TestHASentinelFailoverFollowed(t *testing.T) { sentinelFailoverSale(t, 1500) }

// sentinelFailoverSale is TestHASentinelFailoverFollowed with total units
// (the faults-tagged TestHASentinelFailover8000 sells the 8,000).
func sentinelFailoverSale(t *testing.T, total int64) {
	e := newEnv(t, 1)
	set := stocktest.StartSentinelSet(t, stocktest.Name("set"), 2, 3)
	cfg := e.config()
	cfg.Shards = append(cfg.Shards, shard.Config{ID: "s2", Sentinel: &shard.SentinelConfig{MasterSet: set.Name, Addrs: set.SentinelAddrs()},
		Settings: shard.Settings{Durability: shard.DurabilityReplica, Replicas: 1, WaitTimeout: time.Second}})
	n := startNode(t, cfg)
	if v := haShard(t, n, "s2"); v.Kind != shard.KindSentinel {
		t.Fatalf("s2 kind %q, want sentinel", v.Kind)
	}
	// Four partitions over two shards: the sentinel shard holds some.
	putSKU(t, n, "ha", total, 4, 50, 10)
	hr := newHAReport(t, e.db, "ha", total, fmt.Sprintf("Sentinel shard (primary, 2 replicas, 3 sentinels; durability replica) beside a standalone shard, "+
		"%d units in 4 partitions; kill -9 of the primary once a third sold, no admin call", total))

	b := stocktest.NewBuyer(16)
	o := stocktest.NewTally()
	var sold, unavailable atomic.Int64
	var killedAt, last503 atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				for {
					a, err := b.Deduct(n.hot, "ha", 1, id)
					if err == nil && a.Code == 503 {
						unavailable.Add(1)
						last503.Store(time.Now().UnixNano())
						hr.unavailable()
						// Pacing: a gateway's backoff before its retry.
						time.Sleep(20 * time.Millisecond)
						continue // the same request id: its first outcome or a new one
					}
					o.Add(t, id, a, err)
					hr.answer(id, a, err)
					if err == nil && a.Code == 200 {
						sold.Add(1)
					}
					if err == nil && a.Code == 409 {
						return
					}
					break
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}(w)
	}
	// Kill the primary once a third is sold.
	stocktest.Eventually(t, 60*time.Second, func() (bool, string) {
		return sold.Load() >= total/3, fmt.Sprintf("only %d sold in 60s", sold.Load())
	})
	old := set.Primary
	soldBefore := sold.Load()
	unavailBefore := unavailable.Load()
	killedAt.Store(time.Now().UnixNano())
	hr.killed()
	old.Kill()
	t.Cleanup(func() { old.Restart() }) // if the test stops early; see below
	newMaster := ""
	if err := stocktest.Wait(60*time.Second, func() (bool, string) {
		m, err := set.Master()
		if err == nil && m != old.Addr {
			newMaster = m
		}
		return newMaster != "", ""
	}); err != nil {
		close(stop)
		t.Fatal("sentinel did not promote a replica in 60s")
	}
	promoted := time.Duration(time.Now().UnixNano() - killedAt.Load())
	hr.extra("promoted after the kill", promoted.Round(time.Millisecond).String())
	wg.Wait()
	close(stop)
	if int64(o.OK) != total || len(o.Errs) != 0 || len(o.Other) != 0 {
		t.Fatalf("sold %d of %d (errors %v, statuses %v)", o.OK, total, o.Errs, o.Other)
	}
	// 503s stop once the shard's partitions sell again (the other shard
	// sold all along): the last 503 after the kill bounds the shard's
	// unavailability.
	window := time.Duration(0)
	if l := last503.Load(); l > killedAt.Load() {
		window = time.Duration(l - killedAt.Load())
	}
	t.Logf("sentinel failover: %d sold before the kill, Sentinel promoted a replica after %s, last 503 %s after the kill, %d answers 503 (retried with the same request id)",
		soldBefore, promoted.Round(time.Millisecond), window.Round(time.Millisecond), unavailable.Load()-unavailBefore)

	// Every acknowledged request retried gets its first outcome: nothing
	// acknowledged was lost, nothing sold twice.
	for tok, id := range o.Reservations {
		var a stocktest.Answer
		var err error
		stocktest.Until(t, 60*time.Second, "a definite answer to the retry of "+id, func() bool {
			a, err = b.Deduct(n.hot, "ha", 1, id)
			return err != nil || a.Code != 503
		})
		if err != nil || a.Code != 200 || a.Reservation != tok {
			t.Fatalf("retry of %s after the failover: %+v %v, want %s", id, a, err, tok)
		}
	}
	r := checkConserved(t, e, n, "ha", total)
	hr.books(r.OK, r.Reserved, r.Confirmed)
	if r.InDoubt != 0 || r.Doubled != 0 || r.Pool != 0 {
		t.Fatalf("after the failover: %+v", r)
	}
	// The shard view follows the master the sentinels name now (on a
	// loaded machine Sentinel may fail over twice).
	var v haShardView
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		newMaster, _ = set.Master()
		v = haShard(t, n, "s2")
		return v.Master == newMaster && newMaster != old.Addr && v.Failovers >= 1 && v.LastFailover != nil,
			fmt.Sprintf("shard view after the failover: %+v, want master %s and a failover", v, newMaster)
	})
	if m := metric(t, n, `stockd_shard_failovers_total{shard="s2"}`); m < 1 {
		t.Fatalf("stockd_shard_failovers_total{shard=\"s2\"} = %v", m)
	}
	// The old primary comes back and Sentinel makes it a replica of the
	// new master (whichever it is by now): the sale's outcome stands.
	old.Restart()
	set.WaitMasterReplicas(t, 2)
	rep, err := Verify(context.Background(), cfg, "ha")
	hr.books(err == nil && rep.OK, rep.Reserved, rep.Confirmed)
	if err != nil || !rep.OK {
		t.Fatalf("stockd verify after the failover: %+v %v", rep, err)
	}
}

// POST /admin/shards takes the kinds too: a sentinel shard is added and
// shown with its kind and master; an entry of two kinds, and a master set
// no sentinel monitors, are refused naming the field.
func TestHAAddShardKinds(t *testing.T) {
	e := newEnv(t, 1)
	set := stocktest.StartSentinelSet(t, stocktest.Name("set"), 0, 1)
	n := startNode(t, e.config())
	addrs := `["` + strings.Join(set.SentinelAddrs(), `","`) + `"]`
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"id":"x1","addr":"127.0.0.1:1","cluster":{"addrs":["127.0.0.1:2"]}}`, 400, "addr, sentinel, cluster: exactly one"},
		{`{"id":"x2","sentinel":{"master_set":"no-such-set","addrs":` + addrs + `}}`, 409, "sentinel.master_set"},
		{`{"id":"x3","sentinel":{"master_set":"` + set.Name + `","addrs":["nope"]}}`, 400, "sentinel.addrs[0]: want host:port"},
	} {
		req, _ := http.NewRequest("POST", "http://"+n.admin+"/admin/shards", strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: %d %s, want %d saying %q", tc.body, resp.StatusCode, b, tc.code, tc.want)
		}
	}
	var v haShardView
	body := `{"id":"s9","sentinel":{"master_set":"` + set.Name + `","addrs":` + addrs + `}}`
	if code := adminDo(t, n, "POST", "/admin/shards", body, &v); code != 201 {
		t.Fatalf("add sentinel shard: %d", code)
	}
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		v = haShard(t, n, "s9")
		return v.Kind == shard.KindSentinel && v.Master == set.Primary.Addr, fmt.Sprintf("s9 after the add: %+v", v)
	})
}
