package shard

import (
	"context"
	"testing"
)

// claim decides a request's slot once: a took record or a pointer keeps
// the home here, otherwise the first claim's redirect stands for every
// later claim, and a take or point here as the request's home meets it.
// A short record alone decides nothing; a stale redirect is replaced.
func TestClaimDecidesTheSlotOnce(t *testing.T) {
	ctx := context.Background()
	p := onePartition(t)
	claim := func(id string, next, stale int) ClaimResult {
		t.Helper()
		r, err := p.Claim(ctx, id, next, stale)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	// Took here as home first: the claim keeps the home here.
	if r, err := p.Take(ctx, "took", 1, 1, true, ""); err != nil || r.Code != Took {
		t.Fatalf("take: %+v %v", r, err)
	}
	if r := claim("took", 7, -1); !r.Home {
		t.Fatalf("claim after a take: %+v", r)
	}
	// Pointed away from here first: the home stays here.
	if r, err := p.Point(ctx, "moved", "0:1", "3:1"); err != nil || r.Code != PointMoved {
		t.Fatalf("point: %+v %v", r, err)
	}
	if r := claim("moved", 7, -1); !r.Home {
		t.Fatalf("claim after a point: %+v", r)
	}
	// Only a short record (a visit as a non-home): the claim redirects,
	// and the first redirect stands.
	if r, err := p.Take(ctx, "passing", 100, 1, false, ""); err != nil || r.Code != Short {
		t.Fatalf("short take: %+v %v", r, err)
	}
	if r := claim("passing", 7, -1); r.Home || r.Next != 7 {
		t.Fatalf("claim over a short record: %+v", r)
	}
	if r := claim("passing", 9, -1); r.Home || r.Next != 7 {
		t.Fatalf("second claim: %+v, want the first redirect (7)", r)
	}
	// A take or point here as the request's home meets the redirect and
	// changes nothing.
	before := p.streamLen(t)
	if r, err := p.Take(ctx, "passing", 1, 1, true, ""); err != nil || r.Code != Moved || r.Pointer != "h7" {
		t.Fatalf("take as home after the claim: %+v %v", r, err)
	}
	if r, err := p.Point(ctx, "passing", "0:1", "2:1"); err != nil || r.Code != PointConflict || r.Pointer != "h7" {
		t.Fatalf("point after the claim: %+v %v", r, err)
	}
	if pid, ok := ParseRedirect("h7"); !ok || pid != 7 || p.streamLen(t) != before {
		t.Fatalf("redirect %d %v, stream %d→%d", pid, ok, before, p.streamLen(t))
	}
	if _, ok := ParseRedirect("7:1"); ok {
		t.Fatal("a pointer parsed as a redirect")
	}
	// A stale redirect (its partition left the home set) is replaced, or
	// removed to make this partition the home; another pid is not touched.
	if r := claim("passing", 8, 9); r.Home || r.Next != 7 {
		t.Fatalf("replace of a redirect that is not the stale one: %+v", r)
	}
	if r := claim("passing", 8, 7); r.Home || r.Next != 8 {
		t.Fatalf("replace of the stale redirect: %+v", r)
	}
	if r := claim("passing", -1, 8); !r.Home {
		t.Fatalf("removal of the stale redirect: %+v", r)
	}
	// Home again: the take passes the pointer check and meets the request's
	// short record of round 1.
	if r, err := p.Take(ctx, "passing", 1, 1, true, ""); err != nil || r.Code != Short {
		t.Fatalf("take as home once the redirect is gone: %+v %v", r, err)
	}
}
