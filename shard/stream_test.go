package shard

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"testing"
)

// What takes write, ReadEntries reads back detail for detail: request and
// user ids, quantities, sequences and the entry's time, for entries with
// and without user ids and with several details.
func TestReadEntriesReadsWhatTakesWrote(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	type want struct {
		id, user string
		qty      int64
	}
	var ws []want
	for i := 0; i < 7; i++ {
		w := want{id: "req-" + strconv.Itoa(i), qty: int64(i%3 + 1)}
		if i%2 == 0 {
			w.user = "user-" + strconv.Itoa(i)
		}
		r, err := p.Take(ctx, w.id, w.qty, 1, true, w.user)
		if err != nil || r.Code != Took {
			t.Fatalf("take %d: %+v %v", i, r, err)
		}
		ws = append(ws, w)
	}
	es, err := p.ReadEntries(ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []want
	seq := int64(1)
	for _, e := range es {
		if e.First != seq {
			t.Fatalf("entry %s starts at %d, want %d", e.ID, e.First, seq)
		}
		for _, d := range e.Details {
			if d.Seq != seq || d.TimeMs <= 0 {
				t.Fatalf("detail %+v: seq want %d, time set", d, seq)
			}
			seq++
			got = append(got, want{d.RequestID, d.UserID, d.Qty})
		}
	}
	if !reflect.DeepEqual(got, ws) {
		t.Fatalf("read back %+v, want %+v", got, ws)
	}
}

// Entries written by hand: several details in one entry, fields in any
// order, unknown fields skipped; an entry that lacks n or t, or whose
// detail lacks its request id or has no positive quantity, is refused
// (ErrBadReply), never read as a detail with missing parts.
func TestReadEntriesParsesAndRefuses(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	c := p.Shard.client()
	xadd := func(id string, fv ...string) {
		t.Helper()
		cmd := c.B().Xadd().Key(p.stream).Id(id).FieldValue()
		for i := 0; i < len(fv); i += 2 {
			cmd = cmd.FieldValue(fv[i], fv[i+1])
		}
		if err := c.Do(ctx, cmd.Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	xadd("100-0", "n", "3", "t", "1700000000000", "q1", "2", "r0", "a", "x", "ignored", "q0", "1", "r1", "b", "u1", "ub", "r2", "c", "q2", "5")
	es, err := p.ReadEntries(ctx, "", 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("read: %+v %v", es, err)
	}
	want := []Detail{
		{Seq: 100, RequestID: "a", Qty: 1, TimeMs: 1700000000000},
		{Seq: 101, RequestID: "b", UserID: "ub", Qty: 2, TimeMs: 1700000000000},
		{Seq: 102, RequestID: "c", Qty: 5, TimeMs: 1700000000000},
	}
	if es[0].ID != "100-0" || es[0].End() != 103 || !reflect.DeepEqual(es[0].Details, want) {
		t.Fatalf("entry %+v, want details %+v", es[0], want)
	}
	for i, bad := range [][]string{
		{"t", "1", "r0", "a", "q0", "1"},                      // no n
		{"n", "1", "r0", "a", "q0", "1"},                      // no t
		{"n", "2", "t", "1", "r0", "a", "q0", "1"},            // detail 1 missing
		{"n", "1", "t", "1", "r0", "a", "q0", "0"},            // qty 0
		{"n", "1", "t", "1", "q0", "1"},                       // no request id
		{"n", "1", "t", "1", "r0", "a", "q0", "one"},          // qty not a number
		{"n", "0", "t", "1"},                                  // no details
		{"n", "1", "t", "x", "r0", "a", "q0", "1"},            // t not a number
		{"n", "1", "t", "1", "r0", "a", "q0", "1", "r5", "z"}, // index beyond n: skipped, entry fine
	} {
		id := strconv.Itoa(200+10*i) + "-0"
		xadd(id, bad...)
		es, err := p.ReadEntries(ctx, "100-0", 10)
		if i == 8 {
			if err != nil || len(es) != 1 || len(es[0].Details) != 1 {
				t.Fatalf("case %d: %+v %v, want one detail", i, es, err)
			}
			continue
		}
		if !errors.Is(err, ErrBadReply) {
			t.Fatalf("case %d %v: err %v, want ErrBadReply", i, bad, err)
		}
		if err := c.Do(ctx, c.B().Xdel().Key(p.stream).Id(id).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
}
