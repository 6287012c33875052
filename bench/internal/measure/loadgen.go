package measure

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Load is one bin/loadgen run: its -json output plus what we saw.
type Load struct {
	Requests        uint64            `json:"requests"`
	OK              uint64            `json:"ok"`
	OKUnits         uint64            `json:"ok_units"`
	SoldOut         uint64            `json:"sold_out"`
	StatusCounts    map[string]uint64 `json:"status_counts"`
	TransportErrors uint64            `json:"transport_errors"`
	Retries503      uint64            `json:"retries_503"`
	DurationS       float64           `json:"duration_s"`
	Rate            float64           `json:"rate"`
	P50Ms           float64           `json:"p50_ms"`
	P99Ms           float64           `json:"p99_ms"`
	P999Ms          float64           `json:"p999_ms"`
	MaxMs           float64           `json:"max_ms"`
	SendLagP99Ms    float64           `json:"send_lag_p99_ms"`
	WarmupRequests  uint64            `json:"warmup_requests"`
	TotalOK         uint64            `json:"total_ok"`
	TotalOKUnits    uint64            `json:"total_ok_units"`
	Oversold        bool              `json:"oversold"`
	DupReservations uint64            `json:"duplicate_reservations"`
	Failures        []string          `json:"failures"`
	Warnings        []string          `json:"warnings"`

	ExitCode        int       `json:"-"`
	CPU             float64   `json:"-"` // the load generator's own CPU seconds
	Started, Exited time.Time `json:"-"`
}

// Errors counts answers that are neither ok nor sold out: transport
// errors and every other HTTP status (503 after retries, 4xx, 5xx).
func (r *Load) Errors() uint64 {
	n := r.TransportErrors
	for _, c := range r.StatusCounts {
		n += c
	}
	return n
}

// Throughput is real outcomes (ok or sold out) per second of the measured
// window; errors never count.
func (r *Load) Throughput() float64 {
	if r.DurationS <= 0 {
		return 0
	}
	return float64(r.OK+r.SoldOut) / r.DurationS
}

// WindowAnswers is the answers of the whole run, warmup included (the CPU
// window covers the warmup too): the measured real outcomes plus every
// warmup request (loadgen does not split warmup requests by outcome).
func (r *Load) WindowAnswers() float64 {
	return float64(r.OK + r.SoldOut + r.WarmupRequests)
}

// RunLoadgen runs the load generator bin with args (plus -json, a file in
// tmp) and returns its results. Exit code 1 (a consistency failure such as
// an oversell) is returned in the result, not as an error: the report
// shows it.
func RunLoadgen(ctx context.Context, bin, tmp string, args ...string) (*Load, error) {
	jsonPath := filepath.Join(tmp, "loadgen-"+randHex(4)+".json")
	defer os.Remove(jsonPath)
	args = append(args, "-json", jsonPath)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	res := &Load{Started: time.Now()}
	err := cmd.Run()
	res.Exited = time.Now()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	default:
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	if ps := cmd.ProcessState; ps != nil {
		res.CPU = (ps.UserTime() + ps.SystemTime()).Seconds()
	}
	raw, rerr := os.ReadFile(jsonPath)
	if res.ExitCode > 1 || rerr != nil {
		return nil, fmt.Errorf("loadgen %s: exit %d, no results: %s%s", strings.Join(args, " "), res.ExitCode, stdout.String(), stderr.String())
	}
	if err := json.Unmarshal(raw, res); err != nil {
		return nil, fmt.Errorf("loadgen json: %w", err)
	}
	return res, nil
}

func randHex(n int) string {
	buf := make([]byte, n)
	_, _ = rand.Read(buf)
	return hex.EncodeToString(buf)
}
