package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/bench/internal/plan"
)

// profileRun runs the stockd row's load once more (not counted in its
// medians) and captures a CPU profile of stockd from its admin port
// meanwhile.
func (b *bench) profileRun(ctx context.Context) error {
	c := slices.Max(b.opt.conc)
	secs := max(1, int(b.opt.duration.Seconds()))
	if err := b.waitQuiet(ctx, b.ourPIDs()); err != nil {
		return err
	}
	type got struct {
		raw []byte
		err error
	}
	ch := make(chan got, 1)
	go func() {
		raw, err := b.fetchProfile(ctx, secs)
		ch <- got{raw, err}
	}()
	args := append(lgArgs(b.hotURL(), plan.HotSKU, c, fmt.Sprintf("b%s-profile-", b.prefix)),
		"-d", b.opt.duration.String(), "-warmup", b.opt.warmup.String())
	m, err := b.measure(ctx, b.stockdGroups(), b.shards, []string{b.admin}, args...)
	if err != nil {
		return err
	}
	g := <-ch
	b.hotAcked += int64(m.Load.TotalOKUnits)
	if _, _, err := b.waitReserved(ctx, plan.HotSKU, b.hotAcked, b.drainLimit()); err != nil {
		return err
	}
	p := &measure.Profile{Load: m.Load, Seconds: float64(secs), Calls: m.TakeCalls, Requests: m.TakeReqs}
	b.profile = p
	if g.err != nil {
		p.Err = g.err.Error()
		b.note("stockd CPU profile: %v", g.err)
		return nil
	}
	if err := b.attribute(ctx, p, g.raw); err != nil || p.Err != "" {
		return err
	}
	var parts []string
	for _, s := range p.Shares {
		parts = append(parts, fmt.Sprintf("%.0f%% %s", 100*s.Sec/max(p.Total, 1e-9), strings.SplitN(s.Part, " (", 2)[0]))
	}
	b.logf("stockd CPU profile (%.0f/s, %.2f CPU s sampled over %ds): %s", m.Load.Throughput(), p.Total, secs, strings.Join(parts, ", "))
	return nil
}

// fetchProfile waits out the warmup, then samples stockd's CPU for secs.
func (b *bench) fetchProfile(ctx context.Context, secs int) ([]byte, error) {
	if err := measure.Sleep(ctx, b.opt.warmup); err != nil {
		return nil, err
	}
	code, out, err := b.api.do(ctx, b.admin, http.MethodGet, "/debug/pprof/profile?seconds="+strconv.Itoa(secs), "")
	if err == nil && code != 200 {
		err = fmt.Errorf("GET /debug/pprof/profile: %d %s", code, bytes.TrimSpace(out))
	}
	return out, err
}

// attribute saves the profile raw and fills p from `go tool pprof`: the
// samples by part, and the top functions.
func (b *bench) attribute(ctx context.Context, p *measure.Profile, raw []byte) error {
	path := filepath.Join(b.tmp, "stockd.cpu.pprof")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		return err
	}
	traces, err := exec.CommandContext(ctx, b.goBin, "tool", "pprof", "-traces", filepath.Join(b.bin, "stockd"), path).Output()
	if err != nil {
		p.Err = "go tool pprof -traces: " + err.Error()
		b.note("stockd CPU profile: %s", p.Err)
		return nil
	}
	p.Total, p.Shares = measure.Attribute(traces)
	if top, err := exec.CommandContext(ctx, b.goBin, "tool", "pprof", "-top", "-nodecount=15", filepath.Join(b.bin, "stockd"), path).Output(); err == nil {
		p.Top = measure.TopLines(string(top))
	}
	return nil
}
