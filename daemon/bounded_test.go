package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/internal/stocktest"
)

// usedMemory is the shard's INFO memory used_memory.
func usedMemory(t *testing.T, c rueidis.Client) int64 {
	t.Helper()
	s, err := c.Do(context.Background(), c.B().Info().Section("memory").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(s, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("no used_memory in INFO")
	return 0
}

// dedupState counts the request records and pointers a SKU keeps in a
// shard (every generation hash of every partition), and their bytes
// (MEMORY USAGE, when bytes is set).
func dedupState(t *testing.T, c rueidis.Client, prefix, sku string, bytes bool) (fields, size int64) {
	t.Helper()
	ctx := context.Background()
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match("{"+prefix+":"+sku+":*}:*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range e.Elements {
			if i := strings.LastIndex(k, "}:"); i < 0 || (k[i+2] != 'r' && k[i+2] != 'p') {
				continue
			}
			n, err := c.Do(ctx, c.B().Hlen().Key(k).Build()).AsInt64()
			if err != nil {
				continue // expired meanwhile
			}
			fields += n
			if bytes {
				if m, err := c.Do(ctx, c.B().MemoryUsage().Key(k).Samples(0).Build()).AsInt64(); err == nil {
					size += m
				}
			}
		}
		if cursor = e.Cursor; cursor == 0 {
			return fields, size
		}
	}
}

// 200,000 unique request ids on one SKU with a 3 s retry window: a retry
// inside the window meets its first outcome; once the window has passed
// the SKU keeps no record or pointer in Redis and the shard's memory is
// back to its level before the sale; a retry after the window deducts in
// Redis again and MySQL's (sku, request_id) key catches it (doubled, its
// units back in the pool), and verify stays ok.
func TestRecordsExpireAfterRetryWindow(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config()
	cfg.Scheduler.RetryWindow = 3 * time.Second
	cfg.Scheduler.ShortWindow = true
	n := startNode(t, cfg)
	const ids = 200_000
	const sku = "bounded"
	putSKU(t, n, sku, ids+1000, 4, 5000, 1000)
	c := e.shards[0].Client()
	b := stocktest.NewBuyer(64)

	// One deduction first, so the scripts are loaded: the baseline is the
	// SKU's partitions and the scripts, without any sale's records.
	if a, err := b.Deduct(n.hot, sku, 1, "warm-up"); err != nil || a.Code != 200 {
		t.Fatalf("warm-up: %+v %v", a, err)
	}
	waitSynced(t, n, sku, 30*time.Second)
	stocktest.Until(t, 30*time.Second, "warm-up record expired", func() bool {
		f, _ := dedupState(t, c, e.prefix, sku, false)
		return f == 0
	})
	before := usedMemory(t, c)

	// The memory curve: one point a second while the test runs.
	type point struct {
		at      time.Duration
		sold    int64
		fields  int64
		memory  int64
		perID   float64 // bytes of record and pointer hashes per field
		sampled bool
	}
	var (
		curveMu sync.Mutex
		curve   []point
		sold    atomic.Int64
	)
	start := time.Now()
	sampleCtx, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
			// MEMORY USAGE of every hash every 5 s only: it walks them.
			withBytes := i%5 == 0
			f, size := dedupState(t, c, e.prefix, sku, withBytes)
			p := point{at: time.Since(start).Round(100 * time.Millisecond), sold: sold.Load(), fields: f, memory: usedMemory(t, c), sampled: withBytes}
			if withBytes && f > 0 {
				p.perID = float64(size) / float64(f)
			}
			curveMu.Lock()
			curve = append(curve, p)
			curveMu.Unlock()
		}
	}()

	// The sale: 64 buyers, 200,000 ids. The first id is retried at once
	// (inside the window) and must get its first reservation.
	first, err := b.Deduct(n.hot, sku, 1, "id-0")
	if err != nil || first.Code != 200 {
		t.Fatalf("id-0: %+v %v", first, err)
	}
	if again, err := b.Deduct(n.hot, sku, 1, "id-0"); err != nil || again.Reservation != first.Reservation {
		t.Fatalf("retry of id-0 inside the window: %+v %v, want reservation %s", again, err, first.Reservation)
	}
	sold.Add(1)
	var next atomic.Int64
	next.Store(1)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= ids {
					return
				}
				a, err := b.Deduct(n.hot, sku, 1, "id-"+strconv.FormatInt(i, 10))
				if err != nil || a.Code != 200 {
					if failed.Add(1) <= 5 {
						t.Errorf("id-%d: %+v %v", i, a, err)
					}
					continue
				}
				sold.Add(1)
			}
		}()
	}
	wg.Wait()
	saleTook := time.Since(start)
	if failed.Load() > 0 {
		t.Fatalf("%d deductions failed", failed.Load())
	}
	waitSynced(t, n, sku, 60*time.Second)

	// After the window: nothing of the sale's ids is left in Redis, and
	// the memory is back (within 10% or 2 MB of the level before).
	stocktest.Until(t, 30*time.Second, "records and pointers expired", func() bool {
		f, _ := dedupState(t, c, e.prefix, sku, false)
		return f == 0
	})
	var after int64
	stocktest.Until(t, 30*time.Second, "memory back to its level before the sale", func() bool {
		after = usedMemory(t, c)
		return after <= before+max(before/10, 2<<20)
	})
	stopSampling()
	<-sampled

	// A retry after the window: its record is gone, so Redis deducts
	// again; MySQL's key flags the second detail as doubled and returns its
	// unit to the pool.
	late, err := b.Deduct(n.hot, sku, 1, "id-0")
	if err != nil || late.Code != 200 {
		t.Fatalf("retry of id-0 after the window: %+v %v", late, err)
	}
	r := waitSynced(t, n, sku, 30*time.Second)
	if r.Doubled != 1 {
		t.Errorf("doubled %d, want 1 (the late retry, caught by MySQL)", r.Doubled)
	}
	if got := r.Reserved + r.Confirmed; got != ids+1 { // + the warm-up
		t.Errorf("MySQL holds %d sold units, want %d: the late retry must not count twice", got, ids+1)
	}

	curveMu.Lock()
	defer curveMu.Unlock()
	t.Logf("sale of %d ids took %s; used_memory before %d, after %d (window %s)", ids, saleTook.Round(time.Millisecond), before, after, cfg.Scheduler.RetryWindow)
	// A few points of the curve: every tenth, and the last.
	for i, p := range curve {
		if i%10 != 0 && i != len(curve)-1 {
			continue
		}
		line := "t=" + p.at.String() + " sold=" + strconv.FormatInt(p.sold, 10) + " records+pointers=" + strconv.FormatInt(p.fields, 10) +
			" used_memory=" + strconv.FormatInt(p.memory, 10) + " (+" + strconv.FormatInt(p.memory-before, 10) + ")"
		if p.sampled && p.fields > 0 {
			line += " bytes/field=" + strconv.FormatFloat(p.perID, 'f', 1, 64)
		}
		t.Log(line)
	}
}

// commandCalls is the shard's INFO commandstats: calls per command.
func commandCalls(t *testing.T, c rueidis.Client) map[string]int64 {
	t.Helper()
	s, err := c.Do(context.Background(), c.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(s, "\r\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		out[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.ParseInt(calls, 10, 64)
	}
	return out
}

// callsBetween is the calls made between two commandstats reads (the
// second read's own INFO left out).
func callsBetween(a, b map[string]int64) (total int64, by map[string]int64) {
	by = map[string]int64{}
	for k, v := range b {
		if d := v - a[k]; d > 0 {
			by[k] = d
			total += d
		}
	}
	by["info"]--
	total--
	return total, by
}

// adminGet sends a GET to the admin port and returns the status, the
// time it took and the X-Next-Cursor header.
func adminGet(t *testing.T, n *node, path string, out any) (int, time.Duration, string) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+n.admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	if out != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	return resp.StatusCode, took, resp.Header.Get("X-Next-Cursor")
}

// 1,000 SKUs: GET /admin/skus and the status page's poll (cluster, shards,
// SKUs) make no per-partition Redis call. Background work calls Redis too
// (write-back's reconcile inspects every partition it owns every second;
// the test turns the stream polling and the sweep down), so the script
// calls (EVALSHA: a partition read is one) during polls are compared with
// those during an idle spell as long: reading levels would add one per
// partition, 1,000 per poll; the listing adds none. The answer times are
// logged (the note's figure), not asserted.
func TestListingCostAt1000SKUs(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config()
	cfg.Sync.PollInterval = time.Hour
	cfg.Scheduler.SweepEvery = time.Hour
	n := startNode(t, cfg)
	const skus = 1000
	// Every unit in the partition (total = 2 chunks): the pool is empty,
	// so the sweep leaves the SKUs alone and the background is write-back
	// only.
	var wg sync.WaitGroup
	var next atomic.Int64
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < skus; i = next.Add(1) - 1 {
				body := `{"total":20,"partitions":1,"chunk":10,"threshold":2}`
				req, _ := http.NewRequest("PUT", "http://"+n.admin+"/admin/skus/list-"+strconv.FormatInt(1000+i, 10), strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+testToken)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 201 {
					t.Errorf("put list-%d: status %d", 1000+i, resp.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Pages: 1,000 SKUs in pages of 300 come back whole, in order, once.
	var names []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > skus/300+1 {
			t.Fatal("pagination does not end")
		}
		var page []admin.SKUView
		path := "/admin/skus?limit=300"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		code, _, nextCursor := adminGet(t, n, path, &page)
		if code != 200 {
			t.Fatalf("GET %s: %d", path, code)
		}
		for _, v := range page {
			names = append(names, v.SKU)
			if len(v.Partitions) != 1 {
				t.Fatalf("%s lists %d partitions, want 1", v.SKU, len(v.Partitions))
			}
		}
		if cursor = nextCursor; cursor == "" {
			break
		}
	}
	if len(names) != skus {
		t.Fatalf("pages list %d SKUs, want %d", len(names), skus)
	}
	for i := range names {
		if want := "list-" + strconv.Itoa(1000+i); names[i] != want {
			t.Fatalf("SKU %d of the listing is %s, want %s", i, names[i], want)
		}
	}

	// Polls for at least 5 s and 20 polls, then an idle spell as long: the
	// idle count may differ by a reconcile (1,000 inspects) at each edge,
	// which 20 polls spread thin.
	c := e.shards[0].Client()
	polls := 0
	var listTimes, pollTimes []time.Duration
	a := commandCalls(t, c)
	start := time.Now()
	for ; time.Since(start) < 5*time.Second || polls < 20; polls++ {
		pollStart := time.Now()
		var list []admin.SKUView
		code, took, _ := adminGet(t, n, "/admin/skus", &list)
		if code != 200 || len(list) != skus {
			t.Fatalf("GET /admin/skus: %d, %d SKUs", code, len(list))
		}
		listTimes = append(listTimes, took)
		for _, p := range []string{"/admin/cluster", "/admin/shards"} {
			if code, _, _ := adminGet(t, n, p, nil); code != 200 {
				t.Fatalf("GET %s: %d", p, code)
			}
		}
		pollTimes = append(pollTimes, time.Since(pollStart))
	}
	spell := time.Since(start)
	busy, busyBy := callsBetween(a, commandCalls(t, c))
	a = commandCalls(t, c)
	time.Sleep(spell) // pacing: an idle window as long as the polling spell, to compare the two counts
	idle, idleBy := callsBetween(a, commandCalls(t, c))
	extra := float64(busyBy["evalsha"]-idleBy["evalsha"]) / float64(polls)
	t.Logf("%d SKUs: %d polls in %s; Redis calls %d while polling (%v), %d idle (%v): %.1f extra script calls per poll",
		skus, polls, spell, busy, busyBy, idle, idleBy, extra)
	t.Logf("GET /admin/skus: median %s, max %s; whole status poll: median %s, max %s",
		median(listTimes), slicesMax(listTimes), median(pollTimes), slicesMax(pollTimes))
	// Reading levels would add 1,000 script calls per poll; the idle
	// spell's count varies by a reconcile (1,000 inspects) at each edge,
	// spread over the polls.
	if limit := float64(skus) / 2; extra > limit {
		t.Errorf("%.1f extra script calls per poll, want under %.0f: the listing reads Redis per partition", extra, limit)
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func slicesMax(d []time.Duration) time.Duration { return slices.Max(d) }

// skuKeys counts the keys of sku's partitions on a shard.
func skuKeys(t *testing.T, c rueidis.Client, prefix, sku string) int {
	t.Helper()
	n := 0
	var cursor uint64
	for {
		e, err := c.Do(context.Background(), c.B().Scan().Cursor(cursor).Match("{"+prefix+":"+sku+":*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Fatal(err)
		}
		n += len(e.Elements)
		if cursor = e.Cursor; cursor == 0 {
			return n
		}
	}
}

// Archiving on a three-node cluster: refused (409) while reservations are
// unconfirmed, without closing anything; a sold-out SKU, once settled, is
// archived: no key of it on any shard, no metric series on any node, verify
// ok, GET shows it archived, deductions answer 404 everywhere and PUT of
// the name is refused. A SKU with unsold stock returns it to the pool.
func TestArchiveSKUOnThreeNodes(t *testing.T) {
	e := newEnv(t, 3)
	nodes := startCluster(t, e, 3)
	b := stocktest.NewBuyer(16)
	confirmAll := func(o *stocktest.Tally) {
		t.Helper()
		for tok := range o.Reservations {
			if a, err := b.Post(nodes[1].hot, "/v1/confirm", `{"reservation":"`+tok+`"}`); err != nil || a.Code != 200 {
				t.Fatalf("confirm: %+v %v", a, err)
			}
		}
	}

	// A live sale: reservations not confirmed yet.
	putSKU(t, nodes[0], "live", 100, 3, 10, 2)
	waitKnown(t, nodes, "live")
	live := crowdOver(t, b, []string{nodes[0].hot, nodes[1].hot, nodes[2].hot}, "live", 20, "live-")
	if live.OK != 20 {
		t.Fatalf("live sale: %d ok of 20 (%+v)", live.OK, live.Other)
	}
	var refusal struct {
		Error string `json:"error"`
	}
	// At once: the deductions are still on their way to MySQL (or, if
	// write-back was quick, reserved there).
	if code := adminDoAny(t, nodes[2], "DELETE", "/admin/skus/live", &refusal); code != 409 ||
		!(strings.Contains(refusal.Error, "write-back") || strings.Contains(refusal.Error, "reserved")) {
		t.Fatalf("DELETE during a live sale: %d %q, want 409 naming the backlog or the reservations", code, refusal.Error)
	}
	// Written back, not confirmed: refused for the reservations.
	waitSynced(t, nodes[0], "live", 30*time.Second)
	if code := adminDoAny(t, nodes[2], "DELETE", "/admin/skus/live", &refusal); code != 409 || !strings.Contains(refusal.Error, "reserved") {
		t.Fatalf("DELETE with unconfirmed reservations: %d %q, want 409 naming them", code, refusal.Error)
	}
	// Refused means untouched: it still sells.
	if a, err := b.Deduct(nodes[0].hot, "live", 1, "live-after-refusal"); err != nil || a.Code != 200 {
		t.Fatalf("deduct after the refused DELETE: %+v %v", a, err)
	}

	// A sold-out SKU: 30 units, 60 buyers on three nodes, all confirmed.
	putSKU(t, nodes[0], "gone", 30, 3, 5, 1)
	waitKnown(t, nodes, "gone")
	sale := crowdOver(t, b, []string{nodes[0].hot, nodes[1].hot, nodes[2].hot}, "gone", 60, "gone-")
	if sale.OK != 30 || sale.Units != 30 {
		t.Fatalf("sale: %d ok, %d units; want 30, 30", sale.OK, sale.Units)
	}
	waitSynced(t, nodes[0], "gone", 30*time.Second)
	confirmAll(sale)
	for _, n := range nodes {
		if !strings.Contains(scrape(t, n), `sku="gone"`) {
			t.Fatalf("node %s has no metric series of gone before the archive", n.d.cfg.NodeName)
		}
	}
	var done struct {
		Status   string `json:"status"`
		Returned int64  `json:"returned_to_pool"`
		Keys     int64  `json:"keys_removed"`
		KeysErr  string `json:"keys_error"`
	}
	// Confirms may still be landing in MySQL (a confirm of a detail not
	// yet written back waits for it): until then DELETE answers 409, and
	// an operator asks again, as here.
	// A refused pass may have closed the partitions and returned their
	// units already (its 409 does not count them): done.Returned sums the
	// passes that answered 200; the pool below is the proof.
	deleteSettled := func(n *node, name string) int {
		var code int
		var returned int64
		stocktest.Until(t, 30*time.Second, "DELETE of settled "+name+" answers other than 409", func() bool {
			done.Status, done.Returned, done.Keys, done.KeysErr = "", 0, 0, ""
			code = adminDoAny(t, n, "DELETE", "/admin/skus/"+name, &done)
			returned += done.Returned
			return code != 409
		})
		done.Returned = returned
		return code
	}
	if code := deleteSettled(nodes[1], "gone"); code != 200 || done.Status != "archived" || done.KeysErr != "" {
		t.Fatalf("DELETE of the sold-out SKU: %d %+v", code, done)
	}
	if done.Keys == 0 {
		t.Errorf("the archive removed no key")
	}
	for i, r := range e.shards {
		if k := skuKeys(t, r.Client(), e.prefix, "gone"); k != 0 {
			t.Errorf("shard s%d still holds %d keys of gone", i+1, k)
		}
	}
	for _, n := range nodes {
		stocktest.Until(t, 30*time.Second, "metric series of gone removed on "+n.d.cfg.NodeName, func() bool {
			return !strings.Contains(scrape(t, n), `sku="gone"`)
		})
		if r := verify(t, n, "gone"); !r.OK || r.Confirmed != 30 {
			t.Errorf("verify of the archived SKU on %s: %+v", n.d.cfg.NodeName, r)
		}
		var v map[string]any
		if code := adminDo(t, n, "GET", "/admin/skus/gone", "", &v); code != 200 || v["archived"] != true {
			t.Errorf("GET of the archived SKU on %s: %d %v", n.d.cfg.NodeName, code, v)
		}
		if a, err := b.Deduct(n.hot, "gone", 1, "late-buyer"); err != nil || a.Code != 404 {
			t.Errorf("deduct of the archived SKU on %s: %+v %v, want 404", n.d.cfg.NodeName, a, err)
		}
		var list []admin.SKUView
		adminGet(t, n, "/admin/skus", &list)
		for _, s := range list {
			if s.SKU == "gone" {
				t.Errorf("node %s lists the archived SKU", n.d.cfg.NodeName)
			}
		}
	}
	if code := adminDo(t, nodes[2], "PUT", "/admin/skus/gone", `{"total":10}`, nil); code != 409 {
		t.Errorf("PUT of an archived name: %d, want 409", code)
	}
	if code := adminDoAny(t, nodes[0], "DELETE", "/admin/skus/gone", &done); code != 200 || done.Status != "archived" {
		t.Errorf("DELETE again: %d %+v", code, done)
	}

	// The live SKU once settled: its unsold units go back to the pool.
	waitSynced(t, nodes[0], "live", 30*time.Second)
	confirmAll(live)
	// The deduction made after the refusal (its retry returns its token),
	// confirmed too.
	if a, err := b.Deduct(nodes[0].hot, "live", 1, "live-after-refusal"); err != nil || a.Code != 200 {
		t.Fatalf("retry of live-after-refusal: %+v %v", a, err)
	} else if c, err := b.Post(nodes[0].hot, "/v1/confirm", `{"reservation":"`+a.Reservation+`"}`); err != nil || c.Code != 200 {
		t.Fatalf("confirm: %+v %v", c, err)
	}
	waitSynced(t, nodes[0], "live", 30*time.Second)
	code := deleteSettled(nodes[0], "live")
	if code != 200 {
		t.Fatalf("DELETE of the settled SKU: %d %+v", code, done)
	}
	var v struct {
		Pool      int64 `json:"pool"`
		Confirmed int64 `json:"confirmed"`
		Archived  bool  `json:"archived"`
	}
	if code := adminDo(t, nodes[2], "GET", "/admin/skus/live", "", &v); code != 200 || !v.Archived || v.Pool+v.Confirmed != 100 || v.Confirmed != 21 {
		t.Errorf("archived live SKU: %d %+v, want pool 79 and confirmed 21", code, v)
	}
	if r := verify(t, nodes[1], "live"); !r.OK {
		t.Errorf("verify of the archived live SKU: %+v", r)
	}
}

// adminDoAny is adminDo that decodes error answers too.
func adminDoAny(t *testing.T, n *node, method, path string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+n.admin+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
	}
	return resp.StatusCode
}
