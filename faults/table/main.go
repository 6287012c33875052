// Command table prints the fault suite's report (the JSON lines the suite
// writes to $STOCKD_TEST_FAULTS_REPORT; make test-faults uses
// var/faults-report.jsonl) as the markdown table of docs/RELIABILITY.md.
//
//	go run ./faults/table var/faults-report.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/stockd/stockd/faults/report"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./faults/table REPORT.jsonl")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	fmt.Println("| Case | Answers (ok / sold out / none) | Oversold | Lost | Doubled | In doubt max / end (acked covered) | Recovery | Verify | Linearizable | Passed |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	var faults []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var r report.Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			fmt.Fprintln(os.Stderr, "bad line:", err)
			os.Exit(1)
		}
		lin, _, _ := strings.Cut(r.Linearizable, " (")
		pass := "yes"
		if r.Failed {
			pass = "**NO**"
		}
		fmt.Printf("| %s | %d (%d / %d / %d) | %d | %d | %d | %d / %d (%d) | %s | %v | %s | %s |\n",
			r.Case, r.Ops, r.OK, r.SoldOut, r.Unknown, r.Oversold, r.Lost, r.Doubled,
			r.InDoubtMax, r.InDoubtEnd, r.Covered, r.Recovery.Round(time.Millisecond), r.VerifyOK, lin, pass)
		if what := r.Extra["fault"]; what != "" {
			faults = append(faults, fmt.Sprintf("- **%s**: %s. Recovery: %s.", r.Case, what, r.RecoveryWhat))
		} else if r.RecoveryWhat != "" {
			faults = append(faults, fmt.Sprintf("- **%s**: recovery: %s.", r.Case, r.RecoveryWhat))
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println()
	for _, l := range faults {
		fmt.Println(l)
	}
}
