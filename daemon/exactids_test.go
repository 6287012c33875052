package daemon

// Identifiers are compared byte for byte everywhere: request ids and SKU
// names that differ only in letter case are different ids in Redis, in
// Go and in MySQL alike.

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/internal/stocktest"
)

// idAnswer is a deduction's request id, quantity and answer.
type idAnswer struct {
	id  string
	qty int64
	a   stocktest.Answer
}

// settleAll confirms or releases (release(id) true) every reservation and
// returns the request ids released. Each must answer 200.
func settleAll(t *testing.T, b *stocktest.Buyer, n *node, oks []idAnswer, release func(id string) bool) map[string]bool {
	t.Helper()
	released := map[string]bool{}
	for _, x := range oks {
		what, want := "confirm", "confirmed"
		if release(x.id) {
			what, want = "release", "released"
			released[x.id] = true
		}
		a, err := b.Post(n.hot, "/v1/"+what, fmt.Sprintf(`{"reservation":%q}`, x.a.Reservation))
		if err != nil || a.Code != 200 || a.Status != want {
			t.Errorf("%s %s of %s: %+v %v", what, x.a.Reservation, x.id, a, err)
		}
	}
	return released
}

// sellRest buys one unit at a time with fresh ids until sold_out and
// returns the answers that were ok.
func sellRest(t *testing.T, b *stocktest.Buyer, n *node, sku string, limit int) []idAnswer {
	t.Helper()
	var oks []idAnswer
	for i := 0; ; i++ {
		if i > limit {
			t.Fatalf("no sold_out after %d more buyers", limit)
		}
		id := "rest-" + strconv.Itoa(i)
		a, err := b.Deduct(n.hot, sku, 1, id)
		if err != nil {
			t.Fatal(err)
		}
		if a.Code == 409 {
			return oks
		}
		if a.Code != 200 {
			t.Fatalf("%s: %+v", id, a)
		}
		oks = append(oks, idAnswer{id: id, qty: 1, a: a})
	}
}

// checkHeld waits for write-back and asserts what callers hold against the
// books: the units held (answers ok minus releases) do not exceed total,
// each ok answer has its own detail row with its own request id in the
// state the caller put it in, nothing was doubled, and verify passes. It
// returns the units held.
func checkHeld(t *testing.T, e *env, n *node, sku string, total int64, oks []idAnswer, released, confirmed map[string]bool) int64 {
	t.Helper()
	var held int64
	tokens := map[string]string{}
	for _, x := range oks {
		if prev, dup := tokens[x.a.Reservation]; dup {
			t.Errorf("reservation %s given to %s and %s", x.a.Reservation, prev, x.id)
		}
		tokens[x.a.Reservation] = x.id
		if !released[x.id] {
			held += x.qty
		}
	}
	r := waitSynced(t, n, sku, 15*time.Second)
	t.Logf("%s: callers hold %d units of %d; verify ok %v, reserved %d, confirmed %d, released %d, doubled %d",
		sku, held, total, r.OK, r.Reserved, r.Confirmed, r.Released, r.Doubled)
	if held > total {
		t.Errorf("oversold: callers hold %d units of a %d-unit SKU", held, total)
	}
	if got := r.Reserved + r.Confirmed; got != held {
		t.Errorf("MySQL counts %d units sold, callers hold %d", got, held)
	}
	if r.Doubled != 0 {
		t.Errorf("verify reports %d doubled units", r.Doubled)
	}
	var doubledRows int
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM doubled_deductions WHERE sku = ?`, sku).Scan(&doubledRows); err != nil {
		t.Fatal(err)
	}
	if doubledRows != 0 {
		t.Errorf("%d doubled_deductions rows", doubledRows)
	}
	bad := 0
	for _, x := range oks {
		did := strings.Join(strings.Split(x.a.Reservation, ":")[:4], ":")
		var reqID, state string
		var qty int64
		err := e.db.QueryRow(`SELECT request_id, state, qty FROM deductions WHERE detail_id = ?`, did).Scan(&reqID, &state, &qty)
		want := "reserved"
		switch {
		case released[x.id]:
			want = "released"
		case confirmed[x.id]:
			want = "confirmed"
		}
		if err != nil || reqID != x.id || qty != x.qty || state != want {
			if bad++; bad <= 5 {
				t.Errorf("%s (qty %d, %s): row %s has request %q, qty %d, state %q (err %v)", x.id, x.qty, want, did, reqID, qty, state, err)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d ok answers have no row of their own in the state the caller left them", bad, len(oks))
	}
	return held
}

// The attack from issue 12: three request ids that differ only in case on
// a 10-unit SKU. Each is its own request: all three sell, each token
// confirms its own deduction, and afterwards only the 1 unit left sells.
func TestCaseVariantRequestIDs(t *testing.T) {
	e := newEnv(t, 2)
	n := startNode(t, e.config())
	const total = 10
	putSKU(t, n, "cv", total, 2, 5, 1)
	b := stocktest.NewBuyer(8)

	var oks []idAnswer
	for _, x := range []idAnswer{{id: "Order-N", qty: 3}, {id: "order-N", qty: 4}, {id: "ORDER-N", qty: 2}} {
		a, err := b.Deduct(n.hot, "cv", x.qty, x.id)
		if err != nil || a.Code != 200 {
			t.Fatalf("%s: %+v %v", x.id, a, err)
		}
		x.a = a
		oks = append(oks, x)
	}
	// Write-back first (the (sku, request_id) key meets all three), then
	// the confirms.
	waitSynced(t, n, "cv", 15*time.Second)
	confirmed := map[string]bool{}
	for _, x := range oks {
		confirmed[x.id] = true
	}
	settleAll(t, b, n, oks, func(string) bool { return false })
	waitSynced(t, n, "cv", 15*time.Second)
	oks = append(oks, sellRest(t, b, n, "cv", 3*total)...)
	if held := checkHeld(t, e, n, "cv", total, oks, nil, confirmed); held != total {
		t.Errorf("sold %d units of %d", held, total)
	}
}

// caseVariants returns k distinct spellings of base that differ only in
// letter case.
func caseVariants(rng *rand.Rand, base string, k int) []string {
	seen := map[string]bool{}
	var out []string
	for len(out) < k {
		b := []byte(base)
		for i, c := range b {
			if c >= 'a' && c <= 'z' && rng.IntN(2) == 0 {
				b[i] = c - 'a' + 'A'
			}
		}
		if s := string(b); !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// Many request ids in several case variants each, sent at once to a small
// SKU, every one sent twice (a retry, after its first answer): every
// spelling is its own request, a retry gets its first answer, half the
// reservations are confirmed and half released, and the books hold
// exactly what callers hold.
func TestCaseVariantRequestIDsCrowd(t *testing.T) {
	e := newEnv(t, 3)
	n := startNode(t, e.config())
	const total = 60
	putSKU(t, n, "cvc", total, 4, 5, 1)
	b := stocktest.NewBuyer(64)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	var reqs []idAnswer
	for i := 0; i < 30; i++ {
		for _, id := range caseVariants(rng, "order-ab-"+strconv.Itoa(i), 4) {
			reqs = append(reqs, idAnswer{id: id, qty: 1 + rng.Int64N(3)})
		}
	}
	rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
	var mu sync.Mutex
	var oks []idAnswer
	var wg sync.WaitGroup
	for _, x := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, err := b.Deduct(n.hot, "cvc", x.qty, x.id)
			if err != nil {
				t.Errorf("%s: %v", x.id, err)
				return
			}
			again, err := b.Deduct(n.hot, "cvc", x.qty, x.id)
			if err != nil || again.Code != first.Code || again.Reservation != first.Reservation {
				t.Errorf("%s: first %+v, retry %+v %v", x.id, first, again, err)
			}
			switch {
			case first.Code == 200:
				x.a = first
				mu.Lock()
				oks = append(oks, x)
				mu.Unlock()
			case first.Code != 409:
				t.Errorf("%s: %+v", x.id, first)
			}
		}()
	}
	wg.Wait()
	var held int64
	for _, x := range oks {
		held += x.qty
	}
	if held > total {
		t.Errorf("oversold before any release: callers hold %d units of %d", held, total)
	}
	// Half are confirmed or released before their details land (the
	// rows are written early), half after write-back drained.
	confirmed := map[string]bool{}
	pick := func(id string) bool {
		if rng.IntN(2) == 0 {
			return true
		}
		confirmed[id] = true
		return false
	}
	released := settleAll(t, b, n, oks[:len(oks)/2], pick)
	waitSynced(t, n, "cvc", 15*time.Second)
	for id := range settleAll(t, b, n, oks[len(oks)/2:], pick) {
		released[id] = true
	}
	waitSynced(t, n, "cvc", 15*time.Second)
	oks = append(oks, sellRest(t, b, n, "cvc", 3*total)...)
	if held := checkHeld(t, e, n, "cvc", total, oks, released, confirmed); held != total {
		t.Errorf("sold %d units of %d", held, total)
	}
	t.Logf("%d requests in %d spellings: %d ok, %d released", 2*len(reqs), len(reqs), len(oks), len(released))
}

// SKU names that differ only in case are two SKUs: creating ADV-X beside
// adv-x creates a second SKU (201), each sells exactly its own total, and
// both verify. The same request ids on both are different requests.
func TestCaseVariantSKUs(t *testing.T) {
	e := newEnv(t, 2)
	n := startNode(t, e.config())
	putSKU(t, n, "adv-x", 100, 2, 10, 2)
	var v admin.SKUView
	if code := adminDo(t, n, "PUT", "/admin/skus/ADV-X", `{"total":50,"partitions":2,"chunk":10,"threshold":2}`, &v); code != 201 {
		t.Errorf("PUT ADV-X beside adv-x: status %d, want 201 (a new SKU)", code)
	}
	if got := getSKU(t, n, "adv-x"); got.SKU != "adv-x" || got.Total != 100 {
		t.Errorf("adv-x after PUT ADV-X: %s total %d, want adv-x total 100", got.SKU, got.Total)
	}
	if got := getSKU(t, n, "ADV-X"); got.SKU != "ADV-X" || got.Total != 50 {
		t.Errorf("ADV-X: %s total %d, want ADV-X total 50", got.SKU, got.Total)
	}
	b := stocktest.NewBuyer(64)
	skus := []string{"adv-x", "ADV-X"}
	sold := make([]*stocktest.Tally, len(skus))
	var wg sync.WaitGroup
	for i, sku := range skus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The same ids on both SKUs: (sku, request id) is the key.
			sold[i] = stocktest.Crowd(t, b, n.hot, sku, 200, "buy-", func(int) int64 { return 1 })
		}()
	}
	wg.Wait()
	for i, want := range []int64{100, 50} {
		sku, o := skus[i], sold[i]
		if len(o.Errs) > 0 || len(o.Other) > 0 {
			t.Errorf("%s: errors %v, statuses %v", sku, firstErr(o.Errs), o.Other)
		}
		t.Logf("%s: %d units sold of %d", sku, o.Units, want)
		if o.Units != want {
			t.Errorf("%s: %d units sold, want exactly %d", sku, o.Units, want)
		}
		r := checkConserved(t, e, n, sku, o.Units)
		if r.Total != want || r.Doubled != 0 {
			t.Errorf("%s: verify %+v, want total %d and nothing doubled", sku, r, want)
		}
	}
}
