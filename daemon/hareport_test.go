package daemon

// The high-availability cases (ha_test.go, ha_faults_test.go) compute the
// same figures as the fault suite in ./faults/ (faults/report_test.go) from
// the buyers' answers and MySQL, and append them as one JSON line to
// $STOCKD_TEST_FAULTS_REPORT as a faults/report.Result, so that
// `go run ./faults/table` prints every case, HA included, in one table. A case that fails still writes its line,
// with failed=true.

import (
	"database/sql"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stockd/stockd/faults/report"
	"github.com/stockd/stockd/internal/stocktest"
)

// haReport collects an HA case's answers while it runs; its t.Cleanup
// holds them against MySQL, logs the figures and writes the line. The
// buyers report each request id's outcome once (retried 503s are not
// outcomes; they are counted apart). A nil *haReport ignores everything,
// so shared sale drivers can take one optionally.
type haReport struct {
	t     *testing.T
	db    *sql.DB
	sku   string
	total int64

	mu        sync.Mutex
	r         report.Result
	tokens    map[string]string          // reservation -> request id
	tokensOf  map[string]map[string]bool // request id -> reservations
	killedAt  time.Time
	firstOK   time.Time // first 200 after killedAt
	last503   time.Time // last 503 after killedAt
	n503      int       // 503 answers after killedAt
	verified  bool      // books was called
	booksSold int64     // reserved + confirmed from the last verify
	doubtPart map[int]int64

	stop, done chan struct{}
}

// newHAReport starts collecting for sku; fault says what the case does
// (the table's footnote). Call it after the case's env and node exist, so
// that its cleanup runs before theirs.
func newHAReport(t *testing.T, db *sql.DB, sku string, total int64, fault string) *haReport {
	h := &haReport{
		t: t, db: db, sku: sku, total: total,
		r:         report.Result{Case: t.Name(), Linearizable: "not checked", Extra: map[string]string{"fault": fault}},
		tokens:    map[string]string{},
		tokensOf:  map[string]map[string]bool{},
		doubtPart: map[int]int64{},
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	go h.watchDoubt()
	t.Cleanup(h.write)
	return h
}

// watchDoubt samples in_doubt (the SKU's, and each fenced partition's)
// until write.
func (h *haReport) watchDoubt() {
	defer close(h.done)
	for {
		h.sampleDoubt()
		select {
		case <-h.stop:
			h.sampleDoubt()
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (h *haReport) sampleDoubt() {
	var total int64
	if err := h.db.QueryRow(`SELECT in_doubt FROM skus WHERE sku = ?`, h.sku).Scan(&total); err != nil {
		return // not created yet
	}
	part := map[int]int64{}
	rows, err := h.db.Query(`SELECT pid, doubt_units FROM partitions WHERE sku = ? AND state = 'fenced'`, h.sku)
	if err != nil {
		return
	}
	for rows.Next() {
		var pid int
		var units int64
		if rows.Scan(&pid, &units) == nil {
			part[pid] = units
		}
	}
	rows.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.r.InDoubtMax = max(h.r.InDoubtMax, total)
	h.r.InDoubtEnd = total
	for pid, u := range part {
		h.doubtPart[pid] = max(h.doubtPart[pid], u)
	}
}

// answer records a request id's outcome: a 200 with its reservation, a
// 409 sold_out, or anything else (a transport error, another status, a
// 503 the buyer gave up on) as unanswered.
func (h *haReport) answer(id string, a stocktest.Answer, err error) {
	if h == nil {
		return
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.r.Ops++
	switch {
	case err == nil && a.Code == 200 && a.Status == "ok":
		h.r.OK++
		h.r.AckedUnits += a.Qty
		h.tokens[a.Reservation] = id
		if h.tokensOf[id] == nil {
			h.tokensOf[id] = map[string]bool{}
		}
		h.tokensOf[id][a.Reservation] = true
		if !h.killedAt.IsZero() && h.firstOK.IsZero() {
			h.firstOK = now
		}
	case err == nil && a.Code == 409 && a.Status == "sold_out":
		h.r.SoldOut++
	default:
		h.r.Unknown++
	}
}

// unavailable records a 503 the buyer will retry with the same id.
func (h *haReport) unavailable() {
	if h == nil {
		return
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.killedAt.IsZero() {
		h.n503++
		h.last503 = now
	}
}

// killed starts the recovery clock: the fault happens now.
func (h *haReport) killed() {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.killedAt = time.Now()
	h.mu.Unlock()
}

// extra adds a figure under key (the promotion time, for one).
func (h *haReport) extra(key, value string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.r.Extra[key] = value
	h.mu.Unlock()
}

// books records the case's final verify: whether it passed and what
// MySQL holds as sold.
func (h *haReport) books(ok bool, reserved, confirmed int64) {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.verified = true
	h.r.VerifyOK = ok
	h.booksSold = reserved + confirmed
	h.mu.Unlock()
}

// write holds the answers against MySQL and writes the line (t.Cleanup).
func (h *haReport) write() {
	t := h.t
	close(h.stop)
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	r := &h.r
	r.When = time.Now().UTC()
	var problems []string
	if err := h.figures(&problems); err != nil {
		problems = append(problems, "reading MySQL: "+err.Error())
		t.Errorf("report: reading MySQL: %v", err)
	}
	if !h.verified {
		problems = append(problems, "the case ended before its final verify")
	}
	if len(problems) > 0 {
		r.Extra["problems"] = strings.Join(problems, "; ")
	}
	// Recovery: the 503 window when the fault made the SKU answer 503
	// (the other shards' partitions sold all along), else the first 200
	// after the fault.
	switch {
	case h.killedAt.IsZero():
		r.RecoveryWhat = "no fault injected"
	case h.n503 > 0:
		r.Recovery = h.last503.Sub(h.killedAt)
		r.RecoveryWhat = fmt.Sprintf("kill -9 to the last 503 answered, %d answers 503 after the kill", h.n503)
	case !h.firstOK.IsZero():
		r.Recovery = h.firstOK.Sub(h.killedAt)
		r.RecoveryWhat = "kill -9 to the first ok after it, no 503 after the kill"
	default:
		r.RecoveryWhat = "kill -9, and no ok after it"
	}
	if p := r.Extra["promoted after the kill"]; p != "" {
		r.RecoveryWhat += "; promoted " + p + " after the kill"
	}
	r.Extra["503 answers after the kill"] = strconv.Itoa(h.n503)
	// Unlike the fault suite's settle, the cases' own assertions decide
	// pass or fail; a figure the assertions did not catch fails here.
	if r.Oversold > 0 || r.Lost > 0 || r.Doubled > 0 {
		t.Errorf("oversold %d units, %d acknowledged reservations lost, %d doubled: %s", r.Oversold, r.Lost, r.Doubled, r.Extra["problems"])
	}
	r.Log(t)
}

// figures computes oversold, lost, doubled and in-doubt coverage from the
// detail rows, as faults/report_test.go's settle does.
func (h *haReport) figures(problems *[]string) error {
	r := &h.r
	type row struct {
		req   sql.NullString
		state string
		qty   int64
	}
	rowsByID := map[string]row{}
	rs, err := h.db.Query(`SELECT detail_id, request_id, state, qty FROM deductions WHERE sku = ?`, h.sku)
	if err != nil {
		return err
	}
	for rs.Next() {
		var id string
		var rw row
		if err := rs.Scan(&id, &rw.req, &rw.state, &rw.qty); err != nil {
			rs.Close()
			return err
		}
		rowsByID[id] = rw
	}
	rs.Close()
	if err := rs.Err(); err != nil {
		return err
	}
	var doubledRows int
	if err := h.db.QueryRow(`SELECT COUNT(*) FROM doubled_deductions WHERE sku = ?`, h.sku).Scan(&doubledRows); err != nil {
		return err
	}
	fenced, resolved := map[int]bool{}, map[int]bool{}
	prs, err := h.db.Query(`SELECT pid, state, doubt_resolved_at IS NOT NULL FROM partitions WHERE sku = ?`, h.sku)
	if err != nil {
		return err
	}
	for prs.Next() {
		var pid int
		var state string
		var res bool
		if err := prs.Scan(&pid, &state, &res); err != nil {
			prs.Close()
			return err
		}
		fenced[pid], resolved[pid] = state == "fenced", res
	}
	prs.Close()

	// Each acknowledged reservation against its row. A reservation is
	// <sku>:<pid>:<epoch>:<seq>:<qty>:<sig>, its detail id the first four.
	var held int64
	ackedDetail := map[string]string{} // detail id -> request id
	missingOnFenced := map[int][]int64{}
	toks := make([]string, 0, len(h.tokens))
	for tok := range h.tokens {
		toks = append(toks, tok)
	}
	sort.Strings(toks)
	for _, tok := range toks {
		id := h.tokens[tok]
		parts := strings.Split(tok, ":")
		if len(parts) < 6 {
			*problems = append(*problems, "unreadable reservation "+tok)
			continue
		}
		did := strings.Join(parts[:4], ":")
		pid, _ := strconv.Atoi(parts[1])
		qty, _ := strconv.ParseInt(parts[4], 10, 64)
		ackedDetail[did] = id
		rw, ok := rowsByID[did]
		switch {
		case ok && rw.req.Valid && rw.req.String != id:
			r.Lost++
			r.LostUnits += qty
			*problems = append(*problems, fmt.Sprintf("reservation %s of %s: its row belongs to request %s", tok, id, rw.req.String))
		case ok:
			if rw.state != "released" {
				held += qty
			}
		case fenced[pid]:
			missingOnFenced[pid] = append(missingOnFenced[pid], qty)
			if !resolved[pid] {
				held += qty
			}
		default:
			r.Lost++
			r.LostUnits += qty
			if r.Lost <= 5 {
				*problems = append(*problems, fmt.Sprintf("acknowledged reservation %s of %s has no detail row", tok, id))
			}
		}
	}
	// A fenced partition's acknowledged takes whose details the rollback
	// lost are covered by its in_doubt, as far as that reaches.
	for pid, qtys := range missingOnFenced {
		doubt := h.doubtPart[pid]
		for _, q := range qtys {
			if doubt >= q {
				doubt -= q
				r.Covered++
				continue
			}
			r.Lost++
			r.LostUnits += q
			*problems = append(*problems, fmt.Sprintf("an acknowledged reservation of fenced partition %d has no row and its in_doubt does not cover it", pid))
		}
	}
	r.Held = held
	var rowUnits int64
	for _, rw := range rowsByID {
		if rw.state != "released" {
			rowUnits += rw.qty
		}
	}
	r.Oversold = max(0, held-h.total, rowUnits-h.total, h.booksSold-h.total)

	// Doubles: undone doubles, request ids with two rows (a row written
	// early by confirm or release has no request id until its detail
	// lands: the acknowledged reservation names its request), and request
	// ids answered two different reservations.
	detailsOf := map[string]map[string]bool{}
	unacked := map[string]int64{}
	for did, rw := range rowsByID {
		req := ackedDetail[did]
		if req == "" {
			unacked[rw.state] += rw.qty
		}
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
	}
	twoRows, twoTokens := 0, 0
	for _, ds := range detailsOf {
		if len(ds) > 1 {
			twoRows++
		}
	}
	for _, ts := range h.tokensOf {
		if len(ts) > 1 {
			twoTokens++
		}
	}
	r.Doubled = doubledRows + twoRows + twoTokens
	if twoTokens > 0 {
		*problems = append(*problems, fmt.Sprintf("%d request ids answered two reservations", twoTokens))
	}
	if len(unacked) > 0 {
		r.Extra["rows no buyer was told of (units)"] = fmt.Sprint(unacked)
	}
	return nil
}
