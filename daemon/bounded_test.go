package daemon

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
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

// waitUntil polls cond until it holds, failing the test after within.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(100 * time.Millisecond)
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
	b := newBuyer(64)

	// One deduction first, so the scripts are loaded: the baseline is the
	// SKU's partitions and the scripts, without any sale's records.
	if a, err := b.deduct(n.hot, sku, 1, "warm-up"); err != nil || a.Code != 200 {
		t.Fatalf("warm-up: %+v %v", a, err)
	}
	waitSynced(t, n, sku, 30*time.Second)
	waitUntil(t, 30*time.Second, "warm-up record expired", func() bool {
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
	first, err := b.deduct(n.hot, sku, 1, "id-0")
	if err != nil || first.Code != 200 {
		t.Fatalf("id-0: %+v %v", first, err)
	}
	if again, err := b.deduct(n.hot, sku, 1, "id-0"); err != nil || again.Reservation != first.Reservation {
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
				a, err := b.deduct(n.hot, sku, 1, "id-"+strconv.FormatInt(i, 10))
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
	waitUntil(t, 30*time.Second, "records and pointers expired", func() bool {
		f, _ := dedupState(t, c, e.prefix, sku, false)
		return f == 0
	})
	var after int64
	waitUntil(t, 30*time.Second, "memory back to its level before the sale", func() bool {
		after = usedMemory(t, c)
		return after <= before+max(before/10, 2<<20)
	})
	stopSampling()
	<-sampled

	// A retry after the window: its record is gone, so Redis deducts
	// again; MySQL's key flags the second detail as doubled and returns its
	// unit to the pool.
	late, err := b.deduct(n.hot, sku, 1, "id-0")
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
