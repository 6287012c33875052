package hot

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/stockd/stockd/internal/hotstats"
	"github.com/stockd/stockd/internal/reservation"
	"github.com/stockd/stockd/scheduler"
	stocksync "github.com/stockd/stockd/sync"
)

// Ledger settles reservations after the deduction: confirm, release,
// extend (the write-back's ledger).
type Ledger interface {
	reservations
	extender
}

var _ Ledger = (*stocksync.Ledger)(nil)

// Deps are what the endpoint uses of the rest of the node.
type Deps struct {
	Scheduler *scheduler.Scheduler
	Ledger    Ledger
	Signer    *reservation.Signer
	// Known confirms with MySQL whether a SKU this node has not loaded
	// exists (loading it when it does), before a 404.
	Known func(ctx context.Context, sku string) (bool, error)
	// Ready is the node's readiness, answered on /readyz.
	Ready *atomic.Bool
	// Other counts, for the status page, the answers that have no SKU
	// entry to count them.
	Other      *hotstats.Counters
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// catalogue confirms an unknown SKU with MySQL before a 404 (Deps.Known).
type catalogue struct {
	known func(ctx context.Context, sku string) (bool, error)
}

// Endpoint is one node's hot endpoint.
type Endpoint struct{ h *hot }

// New builds the endpoint and registers its metrics; it serves nothing
// until Server's is started.
func New(opts Options, deps Deps) *Endpoint {
	h := &hot{
		sched:        deps.Scheduler,
		ledger:       deps.Ledger,
		ext:          deps.Ledger,
		signer:       deps.Signer,
		catalogue:    &catalogue{known: deps.Known},
		maxQty:       opts.MaxQty,
		timeout:      opts.Timeout,
		maxExtension: opts.MaxExtension,
		http:         opts.HTTP,
		limits:       opts.Limits,
		clients:      newClientLimiter(opts.Limits),
		ready:        deps.Ready,
		other:        deps.Other,
		logger:       deps.Logger.With("component", "http"),
		m:            newHotMetrics(deps.Registerer),
	}
	h.deadlines.timeout = opts.Timeout
	return &Endpoint{h: h}
}

// Server is the endpoint's fasthttp server (one per call).
func (e *Endpoint) Server() *fasthttp.Server { return e.h.server() }

// ForgetIdleClients drops the per-client limit's buckets of clients idle
// for a minute (they are full again anyway). The daemon calls it every
// minute; without limits.client_rps it does nothing.
func (e *Endpoint) ForgetIdleClients(context.Context) {
	if e.h.clients != nil {
		e.h.clients.forget(time.Now().Add(-time.Minute))
	}
}
