// Package report is what one fault case cost, in one shape for every case
// that measures it: the fault suite (faults/) and the daemon's
// high-availability cases (daemon/ha*_test.go) fill a Result, log it, and
// append it as a JSON line to $STOCKD_TEST_FAULTS_REPORT, which
// faults/table renders as docs/RELIABILITY.md's table.
//
// It is a plain package, not test code, so that the table command can read
// the lines with the very type the tests write.
package report

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvPath names the environment variable holding the JSON-lines file the
// cases append to; unset, they only log.
const EnvPath = "STOCKD_TEST_FAULTS_REPORT"

// Result is one case's figures:
//
//	oversold  units acknowledged ok and not released or expired, beyond the
//	          total (or MySQL's reserved+confirmed beyond the total)
//	lost      acknowledged reservations whose detail row never reached
//	          MySQL, not counting those of a fenced partition that its
//	          in_doubt covered
//	doubled   rows in doubled_deductions, plus request ids with two detail
//	          rows
//	in_doubt  units held in doubt (the most seen during the case, and at
//	          the end)
//	recovery  from the end of the fault until the case's "works again"
type Result struct {
	Case       string `json:"case"`
	Ops        int    `json:"ops"`
	OK         int    `json:"ok"`
	SoldOut    int    `json:"sold_out"`
	Unknown    int    `json:"unknown"`
	AckedUnits int64  `json:"acked_units"`
	// Held is the acknowledged units neither released nor expired.
	Held       int64         `json:"held_units"`
	Oversold   int64         `json:"oversold"`
	Lost       int           `json:"lost"`
	LostUnits  int64         `json:"lost_units"`
	Doubled    int           `json:"doubled"`
	InDoubtMax int64         `json:"in_doubt_max"`
	InDoubtEnd int64         `json:"in_doubt_end"`
	Covered    int           `json:"in_doubt_reservations"` // acked, detail gone, covered by in_doubt
	Recovery   time.Duration `json:"recovery_ns"`
	// RecoveryWhat says what the recovery time measures.
	RecoveryWhat string `json:"recovery_what"`
	// Drain is how long write-back took to drain after the case (zero
	// when the case does not measure it).
	Drain time.Duration `json:"drain_ns"`
	// VerifiedAt is when verify first passed with write-back drained.
	VerifiedAt time.Time `json:"verified_at"`
	VerifyOK   bool      `json:"verify_ok"`
	// Contradicted counts detail rows of requests whose buyer heard
	// sold_out (a take the buyer was never told about).
	Contradicted int               `json:"contradicted"`
	Linearizable string            `json:"linearizable"`
	Extra        map[string]string `json:"extra,omitempty"`
	When         time.Time         `json:"when"`
	// Failed is whether the case failed; Log sets it.
	Failed bool `json:"failed"`
}

// Text is the figures as a two-column table for a test log.
func (r *Result) Text() string {
	var b strings.Builder
	row := func(k, v string) { fmt.Fprintf(&b, "%-28s %s\n", k, v) }
	b.WriteString("\n")
	row("case", r.Case)
	row("ops (ok/sold_out/unknown)", fmt.Sprintf("%d (%d/%d/%d), %d units acknowledged", r.Ops, r.OK, r.SoldOut, r.Unknown, r.AckedUnits))
	row("oversold (units)", fmt.Sprint(r.Oversold))
	row("lost (acked reservations)", fmt.Sprint(r.Lost))
	row("doubled", fmt.Sprint(r.Doubled))
	row("in_doubt (max/end, units)", fmt.Sprintf("%d/%d (%d acked reservations covered)", r.InDoubtMax, r.InDoubtEnd, r.Covered))
	row("recovery", fmt.Sprintf("%s (%s)", r.Recovery.Round(time.Millisecond), r.RecoveryWhat))
	if r.Drain != 0 || !r.VerifiedAt.IsZero() {
		row("write-back drain", fmt.Sprintf("%s, verify ok: %v", r.Drain.Round(time.Millisecond), r.VerifyOK))
	} else {
		row("verify ok", fmt.Sprint(r.VerifyOK))
	}
	row("sold_out contradicted", fmt.Sprint(r.Contradicted))
	row("linearizable", r.Linearizable)
	keys := make([]string, 0, len(r.Extra))
	for k := range r.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		row(k, r.Extra[k])
	}
	return b.String()
}

// Log records whether t failed, logs the figures, and appends the line to
// $STOCKD_TEST_FAULTS_REPORT when that is set. Call it last in the case
// (or in its cleanup), so that Failed says how the case ended.
func (r *Result) Log(t testing.TB) {
	t.Helper()
	r.Failed = t.Failed()
	t.Log(r.Text())
	if path := os.Getenv(EnvPath); path != "" {
		if err := Append(path, r); err != nil {
			t.Errorf("report: %v", err)
		}
	}
}

// appendMu keeps the lines of parallel cases whole.
var appendMu sync.Mutex

// Append writes r as one JSON line at the end of the file at path.
func Append(path string, r *Result) error {
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	appendMu.Lock()
	defer appendMu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
