package daemon

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/stockd/stockd/internal/hotstats"
	"github.com/stockd/stockd/scheduler"
)

// statusSampler keeps the last minute of this node's answers, per SKU and
// node-wide, and of its write-back, for the status page (GET
// /admin/stats): the page needs no Prometheus. Once per interval it takes
// every SKU's hot counters (scheduler.SKU.Stats) into that SKU's ring,
// adds them up for the node's ring, and samples the write-back's lag and
// backlog.
//
// Memory is bounded: a ring holds hotstats.Window samples; a SKU has a
// ring only while it answered something within the window, and loses it
// when it leaves the registry.
type statusSampler struct {
	reg      *scheduler.Registry
	other    *hotstats.Counters // answers without a SKU entry
	interval time.Duration
	// writeback returns the backlog and the largest apply lag since the
	// last call (false: nothing applied).
	writeback func() (backlog int64, lag time.Duration, applied bool)

	mu      sync.Mutex
	node    hotstats.Ring
	lag     hotstats.Floats // seconds, NaN when nothing was applied
	backlog hotstats.Floats // stream entries
	skus    map[string]*hotstats.Ring
}

func newStatusSampler(reg *scheduler.Registry, other *hotstats.Counters, interval time.Duration,
	writeback func() (int64, time.Duration, bool)) *statusSampler {
	return &statusSampler{reg: reg, other: other, interval: interval, writeback: writeback,
		skus: map[string]*hotstats.Ring{}}
}

// run samples every interval until ctx ends.
func (s *statusSampler) run(ctx context.Context) {
	every(ctx, s.interval, func(context.Context) { s.sample() })
}

// sample takes one interval's counts.
func (s *statusSampler) sample() {
	var node hotstats.Sample
	if o, ok := s.other.Take(); ok {
		node.Merge(&o)
	}
	backlog, lag, applied := s.writeback()

	s.mu.Lock()
	defer s.mu.Unlock()
	names := s.reg.Names()
	seen := make(map[string]bool, len(s.skus))
	for _, name := range names {
		sku := s.reg.Get(name)
		if sku == nil {
			continue
		}
		smp, ok := sku.Stats.Take()
		r := s.skus[name]
		if ok {
			node.Merge(&smp)
			if r == nil {
				r = new(hotstats.Ring)
				s.skus[name] = r
			}
		}
		if r == nil {
			continue
		}
		r.Add(smp)
		if r.Idle() {
			delete(s.skus, name)
			continue
		}
		seen[name] = true
	}
	for name := range s.skus {
		if !seen[name] {
			delete(s.skus, name) // gone from the registry
		}
	}
	s.node.Add(node)
	s.backlog.Add(float64(backlog))
	if applied {
		s.lag.Add(lag.Seconds())
	} else {
		s.lag.Add(math.NaN())
	}
}

// statusView is GET /admin/stats.
type statusView struct {
	IntervalSeconds float64 `json:"interval_seconds"`
	WindowSeconds   float64 `json:"window_seconds"`
	// Node is every deduction this node answered.
	Node nodeStatus `json:"node"`
	// SKUs are the SKUs this node answered within the window (the others
	// are idle here).
	SKUs map[string]hotstats.View `json:"skus"`
}

type nodeStatus struct {
	hotstats.View
	// WritebackLag is, per interval, the largest time from a deduction in
	// Redis to its row in MySQL among the details this node applied
	// (null: none applied).
	WritebackLag []hotstats.Num `json:"writeback_lag_seconds"`
	// WritebackBacklog is, per interval, the stream entries not yet
	// confirmed by the broker in the streams this node reads.
	WritebackBacklog []hotstats.Num `json:"writeback_backlog"`
	// WritebackLagMax and WritebackBacklogNow sum the window up: its
	// largest lag (null: nothing applied) and the latest backlog.
	WritebackLagMax     hotstats.Num `json:"writeback_lag_max_seconds"`
	WritebackBacklogNow int64        `json:"writeback_backlog_now"`
}

// view returns the window as JSON-ready values.
func (s *statusSampler) view() statusView {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := statusView{
		IntervalSeconds: s.interval.Seconds(),
		WindowSeconds:   s.interval.Seconds() * hotstats.Window,
		Node:            nodeStatus{View: s.node.View(s.interval)},
		SKUs:            make(map[string]hotstats.View, len(s.skus)),
	}
	lag := s.lag.Values()
	backlog := s.backlog.Values()
	v.Node.WritebackLag = hotstats.Nums(lag)
	v.Node.WritebackBacklog = hotstats.Nums(backlog)
	lagMax := math.NaN()
	for _, l := range lag {
		if !math.IsNaN(l) && (math.IsNaN(lagMax) || l > lagMax) {
			lagMax = l
		}
	}
	v.Node.WritebackLagMax = hotstats.Num(lagMax)
	if len(backlog) > 0 {
		v.Node.WritebackBacklogNow = int64(backlog[len(backlog)-1])
	}
	for name, r := range s.skus {
		v.SKUs[name] = r.View(s.interval)
	}
	return v
}
