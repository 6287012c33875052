package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/stockd/stockd/bench/hist"
)

// Results is what one run produced. Counts cover the measured window
// (after -warmup) unless named total_* / warmup_*.
//
// Invariant: requests = ok + sold_out + sum(status_counts) + transport_errors.
type Results struct {
	URL             string            `json:"url"`
	IDPrefix        string            `json:"id_prefix"`
	Concurrency     int               `json:"concurrency"`
	Rate            float64           `json:"rate"` // 0 = closed loop
	Requests        uint64            `json:"requests"`
	OK              uint64            `json:"ok"`
	OKUnits         uint64            `json:"ok_units"`
	SoldOut         uint64            `json:"sold_out"`
	StatusCounts    map[string]uint64 `json:"status_counts"` // final HTTP status of other outcomes ("0" = unparseable)
	TransportErrors uint64            `json:"transport_errors"`
	Retries503      uint64            `json:"retries_503"`
	DurationS       float64           `json:"duration_s"`     // closed loop with -warmup run to its end: -d; else until the last measured answer
	ThroughputRPS   float64           `json:"throughput_rps"` // answered requests/s
	P50Ms           float64           `json:"p50_ms"`
	P90Ms           float64           `json:"p90_ms"`
	P99Ms           float64           `json:"p99_ms"`
	P999Ms          float64           `json:"p999_ms"`
	MaxMs           float64           `json:"max_ms"`
	MeanMs          float64           `json:"mean_ms"`
	SendLagP50Ms    float64           `json:"send_lag_p50_ms,omitempty"` // open loop only
	SendLagP99Ms    float64           `json:"send_lag_p99_ms,omitempty"`
	SendLagMaxMs    float64           `json:"send_lag_max_ms,omitempty"`

	WarmupRequests        uint64   `json:"warmup_requests"`
	TotalOK               uint64   `json:"total_ok"`       // incl. warmup
	TotalOKUnits          uint64   `json:"total_ok_units"` // incl. warmup; checked against -total
	Total                 int64    `json:"total"`          // -1 = unknown
	OKWithoutReservation  uint64   `json:"ok_without_reservation"`
	Oversold              bool     `json:"oversold"`
	DuplicateReservations uint64   `json:"duplicate_reservations"`
	Failures              []string `json:"failures,omitempty"`
	Warnings              []string `json:"warnings,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func merge(r *runner, workers []*worker) *Results {
	cfg := r.cfg
	res := &Results{
		URL:          strings.Join(cfg.URLs, ","),
		IDPrefix:     cfg.IDPrefix,
		Concurrency:  cfg.Concurrency,
		Rate:         cfg.Rate,
		Total:        cfg.Total,
		StatusCounts: map[string]uint64{"503": 0},
	}
	lat, lag := hist.New(), hist.New()
	var status [maxStatus]uint64
	var lastDone int64
	reservations := make(map[string]uint64)
	var dups []string
	var ndups uint64
	for _, w := range workers {
		st := &w.st
		res.Requests += st.requests
		res.OK += st.ok
		res.OKUnits += st.okUnits
		res.SoldOut += st.soldOut
		res.TransportErrors += st.transportErrors
		res.Retries503 += st.retries503
		for i, c := range st.status {
			status[i] += c
		}
		lat.Merge(st.lat)
		lag.Merge(st.lag)
		lastDone = max(lastDone, st.lastDone)

		sf := &w.safe
		res.WarmupRequests += sf.warmupRequests
		res.TotalOK += sf.ok
		res.TotalOKUnits += sf.okUnits
		res.OKWithoutReservation += sf.okNoRes
		ndups += sf.ndups
		dups = append(dups, sf.dups...)
		for k, seq := range sf.reservations {
			if prev, ok := reservations[k]; ok && prev != seq {
				ndups++
				if len(dups) < 5 {
					dups = append(dups, fmt.Sprintf("reservation %q returned for request ids %s%d and %s%d", k, cfg.IDPrefix, prev, cfg.IDPrefix, seq))
				}
				continue
			}
			reservations[k] = seq
		}
	}
	for code, c := range status {
		if c > 0 {
			res.StatusCounts[strconv.Itoa(code)] = c
		}
	}
	elapsed := time.Duration(lastDone - r.measureStart)
	if cfg.Rate == 0 && cfg.Warmup > 0 && cfg.Duration > 0 && !r.interrupted &&
		!(cfg.N > 0 && r.measured.Load() > cfg.N) {
		// Closed loop that ran its whole -d after a warmup: a worker starts
		// its next request as soon as the previous one is answered, so the
		// requests started in the window are the ones answered in it, and
		// the rate is their count over the window. Dividing by the time
		// until the last of them was answered instead would add up to one
		// latency (c in-flight requests) to the window and understate the
		// rate of slow servers: with 5s at 256 connections and ~0.5s
		// latency, by ~9%. (Without a warmup the first c requests start
		// before any answer, and lastDone is the right end.)
		elapsed = cfg.Duration
	}
	if elapsed > 0 {
		res.DurationS = elapsed.Seconds()
		res.ThroughputRPS = float64(res.Requests-res.TransportErrors) / res.DurationS
	}
	res.P50Ms = ms(lat.Quantile(0.50))
	res.P90Ms = ms(lat.Quantile(0.90))
	res.P99Ms = ms(lat.Quantile(0.99))
	res.P999Ms = ms(lat.Quantile(0.999))
	res.MaxMs = ms(lat.Max())
	res.MeanMs = ms(lat.Mean())
	if cfg.Rate > 0 && lag.Count() > 0 && res.DurationS > 0 {
		res.SendLagP50Ms = ms(lag.Quantile(0.50))
		res.SendLagP99Ms = ms(lag.Quantile(0.99))
		res.SendLagMaxMs = ms(lag.Max())
		if achieved := float64(res.Requests) / res.DurationS; achieved < 0.97*cfg.Rate && cfg.N == 0 {
			res.Warnings = append(res.Warnings, fmt.Sprintf("achieved %.0f req/s < target %g: server or generator saturated (latency still counts the backlog)", achieved, cfg.Rate))
		}
	}

	res.DuplicateReservations = ndups
	if cfg.Total >= 0 && res.TotalOKUnits > uint64(cfg.Total) {
		res.Oversold = true
		res.Failures = append(res.Failures, fmt.Sprintf("OVERSELL: %d units acknowledged ok > total %d", res.TotalOKUnits, cfg.Total))
	}
	if ndups > 0 {
		res.Failures = append(res.Failures, fmt.Sprintf("DUPLICATE RESERVATIONS: %d reservation strings returned for more than one request id", ndups))
		res.Failures = append(res.Failures, dups...)
	}
	if res.Requests > 0 && res.TransportErrors == res.Requests {
		res.Warnings = append(res.Warnings, "every request failed at the transport level (is the server up?)")
	}
	return res
}

// fmtMs prints a latency with ~3 significant digits.
func fmtMs(v float64) string {
	switch {
	case v < 1:
		return strconv.FormatFloat(v, 'f', 3, 64) + "ms"
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64) + "ms"
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + "ms"
}

func (res *Results) otherString() string {
	keys := make([]string, 0, len(res.StatusCounts))
	for k := range res.StatusCounts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		x, _ := strconv.Atoi(a)
		y, _ := strconv.Atoi(b)
		return x - y
	})
	var sb strings.Builder
	sb.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "%s: %d", k, res.StatusCounts[k])
	}
	sb.WriteByte('}')
	return sb.String()
}

func (res *Results) writeText(w io.Writer) {
	fmt.Fprintf(w, "requests %d  ok %d  sold_out %d  other %s  errors %d\n",
		res.Requests, res.OK, res.SoldOut, res.otherString(), res.TransportErrors)
	fmt.Fprintf(w, "throughput %.1f req/s   (ok %d units)\n", res.ThroughputRPS, res.OKUnits)
	fmt.Fprintf(w, "latency p50 %s  p90 %s  p99 %s  p999 %s  max %s\n",
		fmtMs(res.P50Ms), fmtMs(res.P90Ms), fmtMs(res.P99Ms), fmtMs(res.P999Ms), fmtMs(res.MaxMs))
	if res.Rate > 0 {
		fmt.Fprintf(w, "send lag p50 %s  p99 %s  max %s   (target %g req/s)\n",
			fmtMs(res.SendLagP50Ms), fmtMs(res.SendLagP99Ms), fmtMs(res.SendLagMaxMs), res.Rate)
	}
	var extra []string
	if res.Retries503 > 0 {
		extra = append(extra, fmt.Sprintf("retries_503 %d", res.Retries503))
	}
	if res.WarmupRequests > 0 {
		extra = append(extra, fmt.Sprintf("warmup_requests %d", res.WarmupRequests))
	}
	if res.Total >= 0 {
		verdict := "ok"
		if res.Oversold {
			verdict = "OVERSOLD"
		}
		extra = append(extra, fmt.Sprintf("units %d/%d %s", res.TotalOKUnits, res.Total, verdict))
	}
	if res.DuplicateReservations > 0 {
		extra = append(extra, fmt.Sprintf("DUPLICATE reservations %d", res.DuplicateReservations))
	}
	if len(extra) > 0 {
		fmt.Fprintln(w, strings.Join(extra, "  "))
	}
}

func (res *Results) writeJSONFile(path string) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
