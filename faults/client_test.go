package faults

// Buyers: the gateway side. Every logical deduction is one op of the
// history, from its first attempt to its definite answer; a 503, 429, a
// timeout or a dropped connection is retried with the same request id,
// like a gateway does, and only ok and sold_out are definite.

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// Outcomes of an op.
const (
	statusOK      = "ok"
	statusSoldOut = "sold_out"
	statusUnknown = "unknown" // no definite answer before the buyer gave up
)

// op is one logical deduction: every attempt of one request id.
type op struct {
	Client int
	ID     string
	Qty    int64
	// Call is the first attempt's start, Return the definite answer's
	// arrival (since the history's base); Return < 0: never answered.
	Call, Return time.Duration
	// End is when the buyer stopped (answered or gave up).
	End      time.Duration
	Status   string
	Token    string
	Attempts int
	// Codes counts the answers that were not definite: HTTP status, 0 for
	// a transport error or timeout.
	Codes map[int]int
	// Latency is the last attempt's duration (the one that answered).
	Latency time.Duration
}

// pid is the partition the reservation came from (-1 without one).
func (o *op) pid() int {
	parts := strings.Split(o.Token, ":")
	if len(parts) < 6 {
		return -1
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		return -1
	}
	return n
}

// detailID is the reservation's detail id (sku:pid:epoch:seq).
func (o *op) detailID() string {
	parts := strings.Split(o.Token, ":")
	if len(parts) < 6 {
		return ""
	}
	return strings.Join(parts[:4], ":")
}

// history is every op of a case, in the order they started.
type history struct {
	base time.Time
	mu   sync.Mutex
	ops  []*op
}

func newHistory() *history { return &history{base: time.Now()} }

func (h *history) add(o *op) {
	h.mu.Lock()
	h.ops = append(h.ops, o)
	h.mu.Unlock()
}

func (h *history) now() time.Duration { return time.Since(h.base) }

// snapshot copies the ops (safe to read while buyers still run: ops are
// added only once finished).
func (h *history) snapshot() []*op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*op(nil), h.ops...)
}

// count returns ops by status and the units acknowledged.
func (h *history) count() (ok, soldOut, unknown int, units int64) {
	for _, o := range h.snapshot() {
		switch o.Status {
		case statusOK:
			ok++
			units += o.Qty
		case statusSoldOut:
			soldOut++
		default:
			unknown++
		}
	}
	return
}

// buyers run ops against one or more nodes and record them.
type buyers struct {
	t   *testing.T
	c   *stocktest.Buyer
	sku string
	// hot are the nodes' hot endpoints; a retry goes to the next one.
	hot []string
	h   *history
	// giveUp ends an op without a definite answer (status unknown).
	giveUp time.Duration
	// onOK, if set, is called with every op answered ok.
	onOK func(*op)

	badMu sync.Mutex
	bad   []string // answers no buyer should ever get

	// downUntil[i]: node i did not answer; new ops start elsewhere until
	// then (a gateway's health check).
	downMu    sync.Mutex
	downUntil map[int]time.Time
}

// startNode picks the node an op starts on: any that answered lately.
func (b *buyers) startNode() int {
	n := rand.IntN(len(b.hot))
	b.downMu.Lock()
	defer b.downMu.Unlock()
	for i := 0; i < len(b.hot); i++ {
		if time.Now().After(b.downUntil[(n+i)%len(b.hot)]) {
			return n + i
		}
	}
	return n
}

func (b *buyers) markDown(node int) {
	if len(b.hot) < 2 {
		return
	}
	b.downMu.Lock()
	b.downUntil[node%len(b.hot)] = time.Now().Add(time.Second)
	b.downMu.Unlock()
}

func newBuyers(t *testing.T, c *stocktest.Buyer, sku string, h *history, hot ...string) *buyers {
	return &buyers{t: t, c: c, sku: sku, hot: hot, h: h, giveUp: 60 * time.Second, downUntil: map[int]time.Time{}}
}

// buy runs one op to its definite answer (or until giveUp) and records it.
func (b *buyers) buy(clientID int, id string, qty int64) *op {
	o := b.begin(clientID, id, qty)
	b.finish(o)
	return o
}

// begin starts an op; it enters the history when finished.
func (b *buyers) begin(clientID int, id string, qty int64) *op {
	return &op{Client: clientID, ID: id, Qty: qty, Call: b.h.now(), Return: -1, Status: statusUnknown, Codes: map[int]int{}}
}

// attempt sends o once (to the node-th node) and tells whether the answer
// was definite.
func (b *buyers) attempt(o *op, node int) bool {
	o.Attempts++
	t0 := time.Now()
	a, err := b.c.Deduct(b.hot[node%len(b.hot)], b.sku, o.Qty, o.ID)
	o.Latency = time.Since(t0)
	switch {
	case err == nil && a.Code == 200 && a.Status == "ok":
		o.Status, o.Token, o.Return = statusOK, a.Reservation, b.h.now()
		if a.Qty != o.Qty {
			b.badAnswer("%s: ok for %d units, asked %d", o.ID, a.Qty, o.Qty)
		}
	case err == nil && a.Code == 409 && a.Status == "sold_out":
		o.Status, o.Return = statusSoldOut, b.h.now()
	case err == nil && (a.Code == 503 || a.Code == 429):
		o.Codes[a.Code]++
	case err != nil:
		o.Codes[0]++
		b.markDown(node)
	default:
		b.badAnswer("%s: answer %d %+v", o.ID, a.Code, a)
		o.Codes[a.Code]++
	}
	return o.Return >= 0
}

// finish retries o with the same request id until a definite answer (or
// giveUp from now), records it, and pays if it was ok.
func (b *buyers) finish(o *op) {
	backoff := 10 * time.Millisecond
	start := time.Now()
	node := b.startNode()
	for o.Return < 0 {
		if o.Attempts > 0 {
			if time.Since(start) > b.giveUp {
				break
			}
			time.Sleep(backoff/2 + rand.N(backoff/2+1))
			backoff = min(2*backoff, 250*time.Millisecond)
		}
		b.attempt(o, node)
		node++
	}
	o.End = b.h.now()
	b.h.add(o)
	if o.Status == statusOK && b.onOK != nil {
		b.onOK(o)
	}
}

// buyTwice runs one op as two copies of its request sent at once, the
// first to node 0 and the second to node 1 (a gateway that duplicated it),
// each retried with the same id on its own node until definite. Both
// copies must get the same answer; the op's answer is the first to
// arrive.
func (b *buyers) buyTwice(clientID int, id string, qty int64) *op {
	o := b.begin(clientID, id, qty)
	var copies [2]*op
	var wg sync.WaitGroup
	for k := range copies {
		c := b.begin(clientID, id, qty)
		copies[k] = c
		wg.Add(1)
		go func(node int) {
			defer wg.Done()
			start, backoff := time.Now(), 10*time.Millisecond
			for !b.attempt(c, node) && time.Since(start) < b.giveUp {
				time.Sleep(backoff/2 + rand.N(backoff/2+1))
				backoff = min(2*backoff, 250*time.Millisecond)
			}
		}(k)
	}
	wg.Wait()
	first := copies[0]
	for _, c := range copies {
		o.Attempts += c.Attempts
		for code, n := range c.Codes {
			o.Codes[code] += n
		}
		if c.Return >= 0 && (first.Return < 0 || c.Return < first.Return) {
			first = c
		}
	}
	o.Status, o.Token, o.Return, o.Latency = first.Status, first.Token, first.Return, first.Latency
	if c0, c1 := copies[0], copies[1]; c0.Return >= 0 && c1.Return >= 0 && (c0.Status != c1.Status || c0.Token != c1.Token) {
		b.badAnswer("%s: its copies on two nodes answered %s %q and %s %q", id, c0.Status, c0.Token, c1.Status, c1.Token)
	}
	o.End = b.h.now()
	b.h.add(o)
	if o.Status == statusOK && b.onOK != nil {
		b.onOK(o)
	}
	return o
}

func (b *buyers) badAnswer(format string, args ...any) {
	b.badMu.Lock()
	defer b.badMu.Unlock()
	if len(b.bad) < 20 {
		b.bad = append(b.bad, fmt.Sprintf(format, args...))
	}
}

// checkAnswers fails the test on answers outside the contract.
func (b *buyers) checkAnswers() {
	b.t.Helper()
	b.badMu.Lock()
	defer b.badMu.Unlock()
	if len(b.bad) > 0 {
		b.t.Errorf("answers outside the contract: %s", strings.Join(b.bad, "; "))
	}
}

// ids hands out request ids prefix-0, prefix-1, ... up to n (n < 0: no
// limit).
type ids struct {
	prefix string
	n      int64
	// variants > 0 spells each id in that many ways differing only in
	// letter case, handed out one after another (each is its own
	// request): prefix0, Prefix0, pRefix0, ..., prefix1, ...
	variants int64
	next     atomic.Int64
}

func (g *ids) take() (string, bool) {
	i := g.next.Add(1) - 1
	if g.n >= 0 && i >= g.n {
		return "", false
	}
	if g.variants > 0 {
		return caseVariant(g.prefix+strconv.FormatInt(i/g.variants, 10), i%g.variants), true
	}
	return g.prefix + strconv.FormatInt(i, 10), true
}

// caseVariant upper-cases the letters of id whose place among its letters
// is a set bit of k (k 0: id itself).
func caseVariant(id string, k int64) string {
	b := []byte(id)
	for i, bit := 0, 0; i < len(b); i++ {
		if b[i] < 'a' || b[i] > 'z' {
			continue
		}
		if k&(1<<bit) != 0 {
			b[i] -= 'a' - 'A'
		}
		bit++
	}
	return string(b)
}

// closedLoop runs workers buyers back to back, each op qty units, until
// the ids run out, stop is closed, or a worker hears sold_out while
// untilSoldOut is set. wait returns when every worker finished its op.
func (b *buyers) closedLoop(workers int, g *ids, qty int64, stop <-chan struct{}, untilSoldOut bool) (wait func()) {
	var wg sync.WaitGroup
	var soldOut atomic.Bool
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if untilSoldOut && soldOut.Load() {
					return
				}
				id, ok := g.take()
				if !ok {
					return
				}
				if o := b.buy(w, id, qty); o.Status == statusSoldOut {
					soldOut.Store(true)
				}
			}
		}()
	}
	return wg.Wait
}

// openLoop starts one op every 1/rate seconds until the ids run out,
// each on its own goroutine retrying until its answer (independent
// buyers: a slow request holds nobody else up). wait returns when every
// op finished.
func (b *buyers) openLoop(rate int, g *ids, qty int64) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			id, ok := g.take()
			if !ok {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); b.buy(i%64, id, qty) }()
			<-tick.C
		}
	}()
	return wg.Wait
}

// sellRest sells what is left one unit at a time until sold_out, with a
// few buyers, and returns the units sold; it fails the test if sold_out
// is not reached within d.
func (b *buyers) sellRest(prefix string, d time.Duration) int64 {
	b.t.Helper()
	before := len(b.h.snapshot())
	stop := make(chan struct{})
	timer := time.AfterFunc(d, func() { close(stop) })
	b.closedLoop(8, &ids{prefix: prefix, n: -1}, 1, stop, true)()
	timedOut := !timer.Stop()
	var units int64
	soldOut := false
	for _, o := range b.h.snapshot()[before:] {
		switch o.Status {
		case statusOK:
			units += o.Qty
		case statusSoldOut:
			soldOut = true
		}
	}
	if timedOut && !soldOut {
		b.t.Errorf("selling the rest: no sold_out within %s (%d units sold)", d, units)
	}
	return units
}

// maxReask bounds the acknowledged requests reask sends again.
const maxReask = 4000

// reask sends every acknowledged request id once more (to any node): the
// answer must be the first outcome, the same reservation. skip leaves out
// ops whose reservation came from a partition a fault made untrustworthy.
// It returns how many were asked and how many answered otherwise.
func (b *buyers) reask(skip func(*op) bool) (asked, differ int) {
	b.t.Helper()
	var todo []*op
	for _, o := range b.h.snapshot() {
		if o.Status == statusOK && (skip == nil || !skip(o)) {
			todo = append(todo, o)
		}
	}
	// A sample of a long history is enough (and keeps the case short).
	if len(todo) > maxReask {
		rand.Shuffle(len(todo), func(i, j int) { todo[i], todo[j] = todo[j], todo[i] })
		todo = todo[:maxReask]
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan *op)
	var samples []string
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range work {
				var a stocktest.Answer
				var err error
				for try := 0; try < 50; try++ {
					a, err = b.c.Deduct(b.hot[try%len(b.hot)], b.sku, o.Qty, o.ID)
					if err == nil && a.Code != 503 && a.Code != 429 {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				mu.Lock()
				asked++
				if err != nil || a.Code != 200 || a.Reservation != o.Token {
					differ++
					if len(samples) < 5 {
						samples = append(samples, fmt.Sprintf("%s: first %s, again %d %q %v", o.ID, o.Token, a.Code, a.Reservation, err))
					}
				}
				mu.Unlock()
			}
		}()
	}
	deadline := time.Now().Add(90 * time.Second)
	left := 0
	for _, o := range todo {
		if time.Now().After(deadline) {
			left++
			continue
		}
		work <- o
	}
	close(work)
	if left > 0 {
		b.t.Errorf("re-asking acknowledged requests: %d not asked within 90s (the node does not answer)", left)
	}
	wg.Wait()
	if differ > 0 {
		b.t.Errorf("%d of %d acknowledged requests answered differently when sent again: %s", differ, asked, strings.Join(samples, "; "))
	}
	return asked, differ
}

// percentile of ds (p in 0..100); 0 for none.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}
