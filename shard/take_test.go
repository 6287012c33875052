package shard

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// onePartition is a partition with 10+10 units on a Redis of its own.
func onePartition(t *testing.T) *Partition {
	t.Helper()
	ctx := context.Background()
	set, err := Open(ctx, []Config{{ID: "s1", Addr: stocktest.StartRedis(t).Addr}}, Options{Prefix: stocktest.Name("take")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	p, err := set.Partition("sku", 0, 42, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Init(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	for i, sub := range []byte{'a', 'b'} {
		if _, err := p.Refill(ctx, int64(i+1), sub, 10, 1); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func (p *Partition) streamLen(t *testing.T) int64 {
	t.Helper()
	c := p.Shard.client()
	n, err := c.Do(context.Background(), c.B().Xlen().Key(p.stream).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A shard that went back (its sequence below one already seen) must not
// sell: a take there would reuse a lost deduction's sequence, and so its
// detail id, and its record would answer retries with it. Once the
// partition is fenced, surviving records still answer their retries.
func TestTakeRefusesRolledBackState(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	for _, id := range []string{"r1", "r2", "r3"} {
		if r, err := p.Take(ctx, id, 1, 1, true, ""); err != nil || r.Code != Took {
			t.Fatalf("take %s: %+v %v", id, r, err)
		}
	}
	// The shard comes back from an older copy: the last two takes are gone
	// from its state (as from a lagging replica), but this node saw them.
	c := p.Shard.client()
	if err := c.Do(ctx, c.B().Hset().Key(p.state).FieldValue().FieldValue("seq", "1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, c.B().Hdel().Key(p.records).Field("r2", "r3").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	before, _ := p.Inspect(ctx)
	streamBefore := p.streamLen(t)

	for _, id := range []string{"new", "r3"} {
		if r, err := p.Take(ctx, id, 1, 1, true, ""); !errors.Is(err, ErrRollback) {
			t.Fatalf("take %s on a rolled-back state: %+v %v; want ErrRollback", id, r, err)
		}
	}
	after, _ := p.Inspect(ctx)
	if after.Seq != before.Seq || after.Levels != before.Levels || after.Records != before.Records || p.streamLen(t) != streamBefore {
		t.Fatalf("the refused takes changed the partition: %+v -> %+v", before, after)
	}

	// Fenced: the retry of r1 (its record survived) meets its first
	// outcome; a new request is told the partition is closed.
	if err := p.SetStatus(ctx, "fenced"); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Take(ctx, "r1", 1, 1, true, ""); err != nil || r.Code != TookEarl || r.Seq != 1 {
		t.Fatalf("retry of r1 on the fenced partition: %+v %v; want took earlier, sequence 1", r, err)
	}
	if r, err := p.Take(ctx, "new", 1, 1, true, ""); err != nil || r.Code != Closed {
		t.Fatalf("new request on the fenced partition: %+v %v; want closed", r, err)
	}
}

// A partition whose state is gone still sends a request homed there along
// the pointer written since (point does not need the state), so a retry
// walks the same path as its first attempt.
func TestTakeOnLostStateFollowsPointer(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	c := p.Shard.client()
	if err := c.Do(ctx, c.B().Del().Key(p.state).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Take(ctx, "x", 1, 1, true, ""); err != nil || r.Code != Lost {
		t.Fatalf("first attempt on the lost state: %+v %v; want lost", r, err)
	}
	if pr, err := p.Point(ctx, "x", "0:1", "3:1"); err != nil || pr.Code != PointMoved {
		t.Fatalf("point: %+v %v", pr, err)
	}
	if r, err := p.Take(ctx, "x", 1, 1, true, ""); err != nil || r.Code != Moved || r.Pointer != "3:1" {
		t.Fatalf("retry homed on the lost state: %+v %v; want moved to 3:1", r, err)
	}
	// Not homed here, or no pointer: lost.
	if r, err := p.Take(ctx, "x", 1, 1, false, ""); err != nil || r.Code != Lost {
		t.Fatalf("non-home take on the lost state: %+v %v; want lost", r, err)
	}
	if r, err := p.Take(ctx, "y", 1, 1, true, ""); err != nil || r.Code != Lost {
		t.Fatalf("home take without pointer on the lost state: %+v %v; want lost", r, err)
	}
}

// A take whose XADD fails (the state went back, its stream did not) must
// leave nothing behind: a record written before the error would answer the
// request's retry with a deduction that never happened.
func TestFailedTakeWritesNothing(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	for _, id := range []string{"r1", "r2", "r3"} {
		if _, err := p.Take(ctx, id, 1, 1, true, ""); err != nil {
			t.Fatal(err)
		}
	}
	c := p.Shard.client()
	if err := c.Do(ctx, c.B().Hset().Key(p.state).FieldValue().FieldValue("seq", "1").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// A handle that has seen nothing (a node that never took here).
	fresh := NewPartition("", p.SKU, p.ID, p.Epoch, p.Shard)
	fresh.state, fresh.records, fresh.pointers, fresh.stream, fresh.applied = p.state, p.records, p.pointers, p.stream, p.applied
	before, _ := p.Inspect(ctx)
	for i := 0; i < 2; i++ {
		if r, err := fresh.Take(ctx, "new", 1, 1, true, ""); err == nil {
			t.Fatalf("attempt %d: take answered %+v; want the script's XADD error", i+1, r)
		}
	}
	after, _ := p.Inspect(ctx)
	if after.Levels != before.Levels || after.Records != before.Records || after.Seq != before.Seq {
		t.Fatalf("a failed take changed the partition: %+v -> %+v", before, after)
	}
}

// A request id that took, sent again with another qty, is answered reused
// with the first deduction, as a home and as a non-home, and deducts
// nothing; the same qty is answered took earlier.
func TestTakeReusedWithAnotherQty(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	first, err := p.Take(ctx, "r1", 2, 1, true, "")
	if err != nil || first.Code != Took {
		t.Fatalf("first take: %+v %v", first, err)
	}
	for _, home := range []bool{true, false} {
		r, err := p.Take(ctx, "r1", 3, 1, home, "")
		if err != nil || r.Code != Reused || r.Seq != first.Seq || r.Qty != 2 || r.Levels.Total() != first.Levels.Total() {
			t.Fatalf("other qty (home %v): %+v %v; want reused with seq %d qty 2 and levels unchanged", home, r, err, first.Seq)
		}
	}
	if r, err := p.Take(ctx, "r1", 2, 1, true, ""); err != nil || r.Code != TookEarl || r.Seq != first.Seq {
		t.Fatalf("same qty: %+v %v", r, err)
	}
	if n := p.streamLen(t); n != 1 {
		t.Fatalf("%d stream entries, want 1", n)
	}
}

// FindDetail tells a detail in the stream (with its qty) from one trimmed
// after publishing and from one never deducted, and refuses another epoch.
func TestFindDetail(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	for i, id := range []string{"r1", "r2", "r3", "r4"} {
		if r, err := p.Take(ctx, id, int64(i+1), 1, true, ""); err != nil || r.Code != Took || r.Seq != int64(i+1) {
			t.Fatalf("take %s: %+v %v", id, r, err)
		}
	}
	if err := p.TrimBefore(ctx, 3); err != nil {
		t.Fatal(err)
	}
	prefix := strings.TrimPrefix(strings.SplitN(p.state, ":", 2)[0], "{")
	other := NewPartition(prefix, p.SKU, p.ID, p.Epoch+1, p.Shard)
	cases := []struct {
		p    *Partition
		seq  int64
		want Lookup
	}{
		{p, 1, Lookup{Code: DetailAbsent, StateSeq: 4}}, // trimmed
		{p, 2, Lookup{Code: DetailAbsent, StateSeq: 4}}, // trimmed
		{p, 3, Lookup{Code: DetailFound, Qty: 3, StateSeq: 4}},
		{p, 4, Lookup{Code: DetailFound, Qty: 4, StateSeq: 4}},
		{p, 5, Lookup{Code: DetailAbsent, StateSeq: 4}}, // never deducted
		{p, 1000, Lookup{Code: DetailAbsent, StateSeq: 4}},
		{other, 3, Lookup{Code: DetailLost}},
	}
	for _, c := range cases {
		got, err := c.p.FindDetail(ctx, c.seq, false)
		if err != nil || got != c.want {
			t.Errorf("epoch %d seq %d: %+v %v, want %+v", c.p.Epoch, c.seq, got, err, c.want)
		}
	}
	// Concurrent takes share entries (the combiner): every detail is still
	// found, with its own qty.
	var wg sync.WaitGroup
	seqs := make(chan int64, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := p.Take(ctx, "c"+strconv.Itoa(i), 1, 1, true, "")
			if err != nil || r.Code != Took {
				t.Errorf("take c%d: %+v %v", i, r, err)
				return
			}
			seqs <- r.Seq
		}(i)
	}
	wg.Wait()
	close(seqs)
	for seq := range seqs {
		if got, err := p.FindDetail(ctx, seq, false); err != nil || got.Code != DetailFound || got.Qty != 1 {
			t.Errorf("seq %d after concurrent takes: %+v %v", seq, got, err)
		}
	}
	t.Logf("%d entries hold 12 details", p.streamLen(t))
}

// In replica mode a detail found in the primary's stream counts for a
// release only once a replica holds it: a take whose WAIT failed (answered
// 503, no token handed out) is in the primary's stream but must not have
// its units returned.
func TestFindDetailWaitsForReplicas(t *testing.T) {
	ctx := context.Background()
	primary := stocktest.StartRedis(t)
	replica := stocktest.StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port), "--repl-diskless-sync-delay", "0")
	c := primary.Client()
	stocktest.Eventually(t, 10*time.Second, func() (bool, string) {
		info, _ := c.Do(ctx, c.B().Info().Section("replication").Build()).ToString()
		return strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online"), "replica did not sync: " + info
	})
	set, err := Open(ctx, []Config{{ID: "s1", Addr: primary.Addr, Settings: Settings{
		// 2 s: ample for a loaded machine's replica to acknowledge; the
		// frozen replica below then costs one such wait per call.
		Durability: DurabilityReplica, Replicas: 1, WaitTimeout: 2 * time.Second}}},
		Options{Prefix: stocktest.Name("find")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	p, err := set.Partition("sku", 0, 42, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Init(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Refill(ctx, 1, 'a', 10, 10); err != nil {
		t.Fatal(err)
	}
	r, err := p.Take(ctx, "r1", 2, 1, true, "")
	if err != nil || r.Code != Took {
		t.Fatalf("take: %+v %v", r, err)
	}
	if got, err := p.FindDetail(ctx, r.Seq, true); err != nil || got.Code != DetailFound || got.Qty != 2 {
		t.Fatalf("replicated detail: %+v %v", got, err)
	}
	replica.Stop()
	if _, err := p.Take(ctx, "r2", 3, 1, true, ""); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("take with the replica frozen: %v, want ErrNotReplicated", err)
	}
	if got, err := p.FindDetail(ctx, r.Seq+1, true); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("detail of the take that was not replicated: %+v %v, want ErrNotReplicated", got, err)
	}
	// Without waiting (a confirm) the primary's stream answers.
	if got, err := p.FindDetail(ctx, r.Seq+1, false); err != nil || got.Code != DetailFound || got.Qty != 3 {
		t.Fatalf("unreplicated detail without waiting: %+v %v", got, err)
	}
}

// TestTakeBatchesCountCallsAndRequests: concurrent takes on one partition
// share script calls, and the shard's counters say how many calls carried
// how many requests.
func TestTakeBatchesCountCallsAndRequests(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	const n = 16 // within the partition's 20 units
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, err := p.Take(ctx, "b"+strconv.Itoa(i), 1, 1, true, ""); err != nil || r.Code != Took {
				t.Errorf("take %d: %+v %v", i, r, err)
			}
		}()
	}
	wg.Wait()
	calls, reqs := p.Shard.TakeBatches()
	if reqs != n || calls < 1 || calls > n {
		t.Errorf("TakeBatches = %d calls, %d requests; want %d requests in 1..%d calls", calls, reqs, n, n)
	}
}
