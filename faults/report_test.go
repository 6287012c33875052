package faults

// The end of every case: wait for write-back to drain and verify to pass,
// then hold the buyers' answers against MySQL and report what the fault
// cost (the figures of report.Result: oversold, lost, doubled, in doubt,
// recovery).

import (
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/stockd/stockd/audit"
	"github.com/stockd/stockd/faults/report"
	"github.com/stockd/stockd/internal/stocktest"
	"github.com/stockd/stockd/scheduler"
)

// doubtWatch samples in_doubt from MySQL while a case runs.
type doubtWatch struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	max  int64
	part map[int]int64 // pid -> most units seen in doubt
}

func watchDoubt(e *env, sku string) *doubtWatch {
	w := &doubtWatch{stop: make(chan struct{}), done: make(chan struct{}), part: map[int]int64{}}
	go func() {
		defer close(w.done)
		for {
			w.sample(e.db, sku)
			select {
			case <-w.stop:
				w.sample(e.db, sku)
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	e.t.Cleanup(w.close)
	return w
}

func (w *doubtWatch) sample(db *sql.DB, sku string) {
	var total int64
	if err := db.QueryRow(`SELECT in_doubt FROM skus WHERE sku = ?`, sku).Scan(&total); err != nil {
		return
	}
	rows, err := db.Query(`SELECT pid, doubt_units FROM partitions WHERE sku = ? AND state = 'fenced'`, sku)
	if err != nil {
		return
	}
	defer rows.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.max = max(w.max, total)
	for rows.Next() {
		var pid int
		var units int64
		if rows.Scan(&pid, &units) == nil {
			w.part[pid] = max(w.part[pid], units)
		}
	}
}

func (w *doubtWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *doubtWatch) maxSeen() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max
}

// settleOpts say what a case tolerates and checks.
type settleOpts struct {
	total int64
	// drainWithin bounds the wait for write-back and verify.
	drainWithin time.Duration
	// fenced: partitions may be fenced (loss detected); their reservations
	// whose details are gone count as in doubt, their units may still be
	// in doubt at the end, buyers may have heard sold_out for takes the
	// shard forgot, and there is no linearizability check (doubt returns
	// units to the pool, the model's stock never grows).
	fenced bool
	// linearizable runs porcupine over the history.
	linearizable bool
	// requestTimeout is the daemon's; unanswered ops may still take until
	// it passed.
	requestTimeout time.Duration
}

// settle waits for the books to balance and computes the case's figures;
// it fails the test on any oversold, lost, doubled or contradicted unit
// (beyond what opts tolerate).
func settle(t *testing.T, e *env, d *stockd, sku string, h *history, w *doubtWatch, o settleOpts) *report.Result {
	t.Helper()
	if o.drainWithin == 0 {
		o.drainWithin = 60 * time.Second
	}
	if o.requestTimeout == 0 {
		o.requestTimeout = 5 * time.Second
	}
	r := &report.Result{Case: t.Name(), When: time.Now().UTC(), Extra: map[string]string{}, Linearizable: "not checked"}
	ops := h.snapshot()
	r.Ops = len(ops)
	for _, op := range ops {
		switch op.Status {
		case statusOK:
			r.OK++
			r.AckedUnits += op.Qty
		case statusSoldOut:
			r.SoldOut++
		default:
			r.Unknown++
		}
	}

	// Write-back drained and the books balance.
	start := time.Now()
	var rep audit.Report
	var verr error
	_, r.VerifyOK = stocktest.WaitFor(o.drainWithin, func() bool {
		rep, verr = d.verify(sku)
		return verr == nil && rep.OK && rep.InFlightDetails == 0
	})
	r.Drain = time.Since(start)
	r.VerifiedAt = time.Now()
	if !r.VerifyOK {
		t.Errorf("verify not ok with write-back drained within %s: %+v %v", o.drainWithin, rep, verr)
	}
	if w != nil {
		w.close()
		r.InDoubtMax = w.maxSeen()
	}
	r.InDoubtEnd = rep.InDoubt
	r.InDoubtMax = max(r.InDoubtMax, rep.InDoubt)

	// The rows.
	type row struct {
		req   sql.NullString
		state string
		qty   int64
	}
	rowsByID := map[string]row{}
	rs, err := e.db.Query(`SELECT detail_id, request_id, state, qty FROM deductions WHERE sku = ?`, sku)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id string
		var rw row
		if err := rs.Scan(&id, &rw.req, &rw.state, &rw.qty); err != nil {
			t.Fatal(err)
		}
		rowsByID[id] = rw
	}
	rs.Close()
	var doubledRows int
	if err := e.db.QueryRow(`SELECT COUNT(*) FROM doubled_deductions WHERE sku = ?`, sku).Scan(&doubledRows); err != nil {
		t.Fatal(err)
	}
	fenced := map[int]bool{}
	resolved := map[int]bool{}
	prs, err := e.db.Query(`SELECT pid, state, doubt_resolved_at IS NOT NULL FROM partitions WHERE sku = ?`, sku)
	if err != nil {
		t.Fatal(err)
	}
	for prs.Next() {
		var pid int
		var state string
		var res bool
		if err := prs.Scan(&pid, &state, &res); err != nil {
			t.Fatal(err)
		}
		fenced[pid] = state == "fenced"
		resolved[pid] = res
	}
	prs.Close()

	// Each acknowledged reservation against its row.
	byID := map[string]*op{}
	tokens := map[string]string{}
	var held int64
	missingOnFenced := map[int][]*op{}
	var problems []string
	for _, op := range ops {
		byID[op.ID] = op
		if op.Status != statusOK {
			continue
		}
		did := op.detailID()
		if prev, dup := tokens[op.Token]; dup {
			problems = append(problems, fmt.Sprintf("reservation %s given to %s and %s", op.Token, byID[prev].describe(), op.describe()))
		}
		tokens[op.Token] = op.ID
		rw, ok := rowsByID[did]
		switch {
		case ok && rw.req.Valid && rw.req.String != op.ID:
			r.Lost++
			r.LostUnits += op.Qty
			problems = append(problems, fmt.Sprintf("reservation %s of %s: its row belongs to request %s", op.Token, op.ID, rw.req.String))
		case ok:
			if rw.state != "released" {
				held += op.Qty
			}
		case fenced[op.pid()]:
			missingOnFenced[op.pid()] = append(missingOnFenced[op.pid()], op)
			if !resolved[op.pid()] {
				held += op.Qty
			}
		default:
			r.Lost++
			r.LostUnits += op.Qty
			if r.Lost <= 5 {
				problems = append(problems, fmt.Sprintf("acknowledged reservation %s of %s has no detail row", op.Token, op.ID))
			}
		}
	}
	for pid, missing := range missingOnFenced {
		var doubt int64
		if w != nil {
			w.mu.Lock()
			doubt = w.part[pid]
			w.mu.Unlock()
		}
		for _, op := range missing {
			if doubt >= op.Qty {
				doubt -= op.Qty
				r.Covered++
				continue
			}
			r.Lost++
			r.LostUnits += op.Qty
			problems = append(problems, fmt.Sprintf("acknowledged reservation %s of fenced partition %d has no row and its in_doubt does not cover it", op.Token, pid))
		}
	}
	r.Held = held
	if over := held - o.total; over > 0 {
		r.Oversold = over
	}
	if over := rep.Reserved + rep.Confirmed - o.total; over > r.Oversold {
		r.Oversold = over
	}

	// Doubles: undone doubles, and request ids with two rows (a row
	// written early by confirm/release carries no request id until the
	// detail lands: the acknowledged token names its request).
	ackedDetail := map[string]string{} // detail id -> request id
	for tok, id := range tokens {
		if parts := strings.Split(tok, ":"); len(parts) >= 4 {
			ackedDetail[strings.Join(parts[:4], ":")] = id
		}
	}
	detailsOf := map[string]map[string]bool{}
	for did, rw := range rowsByID {
		req := ackedDetail[did]
		if rw.req.Valid {
			req = rw.req.String
		}
		if req == "" {
			continue
		}
		if detailsOf[req] == nil {
			detailsOf[req] = map[string]bool{}
		}
		detailsOf[req][did] = true
		if op := byID[req]; op != nil && op.Status == statusSoldOut {
			r.Contradicted++
			if r.Contradicted <= 3 {
				problems = append(problems, fmt.Sprintf("request %s heard sold_out but its take %s landed", req, did))
			}
		}
	}
	// Takes no buyer was told about (answers cut off, or the buyer heard
	// sold_out / gave up): by state.
	unacked := map[string]int64{}
	for did, rw := range rowsByID {
		if _, ok := ackedDetail[did]; !ok {
			unacked[rw.state] += rw.qty
		}
	}
	if len(unacked) > 0 {
		r.Extra["rows no buyer was told of (units)"] = fmt.Sprint(unacked)
	}
	r.Extra["books at the end"] = fmt.Sprintf("pool %d, sub-domains %d, reserved %d, confirmed %d, released %d, in_doubt %d",
		rep.Pool, rep.SubDomains, rep.Reserved, rep.Confirmed, rep.Released, rep.InDoubt)
	twoRows := 0
	for _, ds := range detailsOf {
		if len(ds) > 1 {
			twoRows++
		}
	}
	r.Doubled = doubledRows + twoRows

	// Linearizability of what buyers saw.
	if o.linearizable {
		if r.Lost > 0 || len(problems) > 0 {
			// The answers already disagree with the books; the search
			// would only time out proving it again.
			r.Linearizable = "not checked: answers and books disagree (see problems)"
		} else if rep.Released != 0 || rep.InDoubt != 0 {
			t.Errorf("linearizability check needs a case without releases or doubt: released %d, in_doubt %d", rep.Released, rep.InDoubt)
		} else {
			// No attempt of an unanswered op may still be taking when
			// the books are read.
			var lastGiveUp time.Duration
			for _, op := range ops {
				if op.Status == statusUnknown {
					lastGiveUp = max(lastGiveUp, op.End)
				}
			}
			if wait := lastGiveUp + o.requestTimeout - h.now(); r.Unknown > 0 && wait > 0 {
				time.Sleep(wait)
				if rep, verr = d.verify(sku); verr != nil || !rep.OK {
					t.Errorf("verify after waiting for unanswered requests: %+v %v", rep, verr)
				}
			}
			left := o.total - rep.Reserved - rep.Confirmed
			lin := checkLinearizable(t, t.Name(), o.total, ops, left, h.now())
			r.Linearizable = fmt.Sprintf("%s (%d ops, %d unanswered, %s)", lin.Result, lin.Ops, lin.Unknowns, lin.Took.Round(time.Millisecond))
			if lin.Result != porcupine.Ok {
				t.Errorf("history not linearizable against the stock model: %s; visualisation: %s", lin.Result, lin.Visual)
			}
		}
	}

	// Verdict.
	if r.Oversold > 0 {
		t.Errorf("OVERSOLD by %d units (acknowledged and held %d, MySQL reserved+confirmed %d, total %d)", r.Oversold, held, rep.Reserved+rep.Confirmed, o.total)
	}
	if r.Lost > 0 {
		t.Errorf("%d acknowledged reservations lost (%d units)", r.Lost, r.LostUnits)
	}
	if r.Doubled > 0 {
		t.Errorf("%d doubled deductions (%d undone by the backstop, %d request ids with two rows)", r.Doubled, doubledRows, twoRows)
	}
	if !o.fenced {
		if r.Contradicted > 0 {
			t.Errorf("%d requests heard sold_out although their take landed", r.Contradicted)
		}
		if r.InDoubtMax > 0 {
			t.Errorf("%d units went in doubt in a case without data loss", r.InDoubtMax)
		}
		for pid, f := range fenced {
			if f {
				t.Errorf("partition %d fenced in a case without data loss", pid)
			}
		}
	} else if r.InDoubtEnd != 0 {
		t.Errorf("%d units still in doubt at the end", r.InDoubtEnd)
	}
	if len(problems) > 0 {
		t.Errorf("problems: %s", strings.Join(problems, "; "))
	}
	return r
}

// homePID is the request's home partition, as the scheduler computes it.
func homePID(sku, id string, pids []int) int { return scheduler.HomeOf(sku, id, pids) }

// describe is an op for a problem report.
func (o *op) describe() string {
	return fmt.Sprintf("%s [%s..%s, %d attempts, not definite %v]", o.ID, o.Call.Round(time.Millisecond), o.Return.Round(time.Millisecond), o.Attempts, o.Codes)
}
