package shard

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"testing"

	"github.com/stockd/stockd/internal/stocktest"
)

// partitionsOnOneShard are n partitions with 10+10 units each, all on one
// Redis of their own.
func partitionsOnOneShard(t *testing.T, n int) []*Partition {
	t.Helper()
	ctx := context.Background()
	set, err := Open(ctx, []Config{{ID: "s1", Addr: stocktest.StartRedis(t).Addr}}, Options{Prefix: stocktest.Name("comb")}, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Close)
	ps := make([]*Partition, n)
	for i := range ps {
		sku := "sku" + strconv.Itoa(i/2)
		if ps[i], err = set.Partition(sku, i%2, 42, "s1"); err != nil {
			t.Fatal(err)
		}
		if _, err := ps[i].Init(ctx, 1, true); err != nil {
			t.Fatal(err)
		}
		for j, sub := range []byte{'a', 'b'} {
			if _, err := ps[i].Refill(ctx, int64(j+1), sub, 10, 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	return ps
}

// Concurrent takes on several partitions of one shard share script calls
// across partitions, and each partition sells exactly as it would alone:
// its own stock, its own sequence, one detail per request in its own
// stream, retries answered from its own records.
func TestTakeCombinesPartitionsOfAShard(t *testing.T) {
	ctx := context.Background()
	ps := partitionsOnOneShard(t, 6)
	const per = 12 // of each partition's 20 units
	var wg sync.WaitGroup
	for round := range 2 { // the second round retries the first's ids
		for i := range per {
			for j, p := range ps {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r, err := p.Take(ctx, "r"+strconv.Itoa(i), 1, 1, true, "")
					want := Took
					if round == 1 {
						want = TookEarl
					}
					if err != nil || r.Code != want || r.Seq < 1 || r.Seq > per {
						t.Errorf("round %d take r%d on partition %d: %+v %v; want code %d", round, i, j, r, err, want)
					}
				}()
			}
		}
		wg.Wait()
	}
	for j, p := range ps {
		st, err := p.Inspect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Seq != per || st.Levels.Total() != 20-per {
			t.Errorf("partition %d: seq %d, %d units left; want %d and %d", j, st.Seq, st.Levels.Total(), per, 20-per)
		}
	}
	calls, reqs := ps[0].Shard.TakeBatches()
	if reqs != 2*per*int64(len(ps)) || calls >= reqs {
		t.Errorf("TakeBatches = %d calls, %d requests; want %d requests in fewer calls", calls, reqs, 2*per*len(ps))
	}
}

// One take call over several partitions answers each as a call of its own
// would: a partition that lost its state, one that went back and one whose
// stream refuses the entry do not change what the others sell, and write
// nothing themselves.
func TestCombinedTakeIsolatesPartitions(t *testing.T) {
	ctx := context.Background()
	ps := partitionsOnOneShard(t, 4)
	ok, lost, back, refused := ps[0], ps[1], ps[2], ps[3]
	c := ok.Shard.client()
	for _, p := range []*Partition{back, refused} {
		for _, id := range []string{"x1", "x2", "x3"} {
			if r, err := p.Take(ctx, id, 1, 1, true, ""); err != nil || r.Code != Took {
				t.Fatalf("take %s: %+v %v", id, r, err)
			}
		}
		// The state goes back to sequence 1; its stream does not.
		if err := c.Do(ctx, c.B().Hset().Key(p.state).FieldValue().FieldValue("seq", "1").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	// A handle of refused that has seen nothing (another node): the script
	// takes, and the XADD is refused.
	fresh := NewPartition("", refused.SKU, refused.ID, refused.Epoch, refused.Shard)
	fresh.state, fresh.records, fresh.pointers, fresh.stream, fresh.applied = refused.state, refused.records, refused.pointers, refused.stream, refused.applied
	if err := c.Do(ctx, c.B().Del().Key(lost.state).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	before := map[*Partition]State{}
	for _, p := range ps {
		before[p], _ = p.Inspect(ctx)
	}

	call := func(p *Partition, id string) *takeCall {
		return &takeCall{p: p, reqID: id, qty: 1, round: 1, home: true, wake: make(chan struct{}, 1)}
	}
	batch := []*takeCall{call(ok, "a"), call(lost, "b"), call(back, "c"), call(fresh, "d"), call(ok, "e"), call(ok, "a")}
	runTake(ctx, ok.Shard, batch)

	want := []struct {
		code TakeCode
		seq  int64
		err  error
	}{{Took, 1, nil}, {Lost, 0, nil}, {0, 0, ErrRollback}, {0, 0, errors.New("XADD")}, {Took, 2, nil}, {TookEarl, 1, nil}}
	for i, w := range want {
		got := batch[i]
		switch {
		case w.err == nil && (got.err != nil || got.res.Code != w.code || got.res.Seq != w.seq):
			t.Errorf("call %d (%s): %+v %v; want code %d seq %d", i, got.reqID, got.res, got.err, w.code, w.seq)
		case w.err != nil && got.err == nil:
			t.Errorf("call %d (%s): %+v; want an error", i, got.reqID, got.res)
		case errors.Is(w.err, ErrRollback) && !errors.Is(got.err, ErrRollback):
			t.Errorf("call %d (%s): %v; want ErrRollback", i, got.reqID, got.err)
		}
	}
	if l := batch[0].res.Levels; l.Total() != 18 {
		t.Errorf("levels of ok after two takes: %+v; want 18 units", l)
	}
	for _, p := range []*Partition{lost, back, refused} {
		after, _ := p.Inspect(ctx)
		b := before[p]
		if after.Seq != b.Seq || after.Levels != b.Levels || after.Records != b.Records {
			t.Errorf("partition %d changed: %+v -> %+v", p.ID, b, after)
		}
	}
	if n := ok.streamLen(t); n != 1 {
		t.Errorf("ok's stream holds %d entries; want 1", n)
	}
}
