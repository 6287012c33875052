package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/valyala/fasthttp"

	"github.com/stockd/stockd/internal/ident"
	"github.com/stockd/stockd/internal/reservation"
	"github.com/stockd/stockd/scheduler"
	stocksync "github.com/stockd/stockd/sync"
)

// maxHotBody is the largest body the hot endpoint reads; larger ones are
// answered 413 before any work.
const maxHotBody = 4 << 10

// reservations is the lifecycle of a deduction after it was made.
type reservations interface {
	Confirm(ctx context.Context, detailID string, qty int64) error
	Release(ctx context.Context, detailID string, qty int64) error
}

// hot serves the gateways' endpoint: deduct, confirm, release, stock,
// health.
type hot struct {
	sched   *scheduler.Scheduler
	ledger  reservations
	signer  *reservation.Signer
	maxQty  int64
	timeout time.Duration
	ready   *atomic.Bool
	logger  *slog.Logger
	m       *hotMetrics
}

// hotMetrics are the hot path's: deductions by outcome and their latency.
type hotMetrics struct {
	ok, soldOut, unavailable, unknown, bad prometheus.Counter
	latency                                prometheus.Histogram
}

func newHotMetrics(reg prometheus.Registerer) *hotMetrics {
	f := promauto.With(reg)
	out := f.NewCounterVec(prometheus.CounterOpts{
		Name: "stockd_deductions_total",
		Help: "Deduction requests answered, by outcome (ok, sold_out, unavailable, unknown_sku, bad_request).",
	}, []string{"outcome"})
	return &hotMetrics{
		ok:          out.WithLabelValues("ok"),
		soldOut:     out.WithLabelValues("sold_out"),
		unavailable: out.WithLabelValues("unavailable"),
		unknown:     out.WithLabelValues("unknown_sku"),
		bad:         out.WithLabelValues("bad_request"),
		latency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "stockd_deduct_seconds",
			Help:    "Time to decide a deduction (valid requests), waits for refills included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
	}
}

func (h *hot) server() *fasthttp.Server {
	return &fasthttp.Server{
		Handler:            h.handle,
		ErrorHandler:       h.parseError,
		Name:               "stockd",
		MaxRequestBodySize: maxHotBody,
		ReadTimeout:        30 * time.Second,
		WriteTimeout:       10 * time.Second,
		IdleTimeout:        120 * time.Second,
		ReadBufferSize:     8 << 10,
		Concurrency:        64 << 10,
		CloseOnShutdown:    true,
		// Connection-level errors (clients going away, bodies too large)
		// are the client's business; keep them out of the error log.
		Logger:                slogPrintf{h.logger},
		NoDefaultDate:         true,
		NoDefaultServerHeader: true,
	}
}

func (h *hot) handle(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	path := ctx.Path()
	switch string(path) {
	case "/v1/deduct":
		if !ctx.IsPost() {
			methodNotAllowed(ctx, "POST")
			return
		}
		h.deduct(ctx)
	case "/v1/confirm", "/v1/release":
		if !ctx.IsPost() {
			methodNotAllowed(ctx, "POST")
			return
		}
		h.settle(ctx, string(path) == "/v1/confirm")
	case "/healthz":
		ctx.SetBodyString(`{"status":"ok"}`)
	case "/readyz":
		if h.ready.Load() {
			ctx.SetBodyString(`{"status":"ready"}`)
		} else {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
			ctx.SetBodyString(`{"status":"not ready"}`)
		}
	default:
		if len(path) > len("/v1/stock/") && string(path[:len("/v1/stock/")]) == "/v1/stock/" {
			if !ctx.IsGet() && !ctx.IsHead() {
				methodNotAllowed(ctx, "GET")
				return
			}
			h.stock(ctx, string(path[len("/v1/stock/"):]))
			return
		}
		writeErr(ctx, fasthttp.StatusNotFound, "no such route")
	}
}

// parseError answers requests fasthttp could not read.
func (h *hot) parseError(ctx *fasthttp.RequestCtx, err error) {
	ctx.SetContentType("application/json")
	var ne *net.OpError
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		writeErr(ctx, fasthttp.StatusRequestEntityTooLarge, "body: larger than 4096 bytes")
	case errors.As(err, &ne) && ne.Timeout():
		writeErr(ctx, fasthttp.StatusRequestTimeout, "request timeout")
	default:
		writeErr(ctx, fasthttp.StatusBadRequest, "malformed HTTP request")
	}
}

type deductBody struct {
	SKU       *string         `json:"sku"`
	Qty       json.RawMessage `json:"qty"`
	RequestID *string         `json:"request_id"`
	UserID    *string         `json:"user_id"`
}

func (h *hot) deduct(ctx *fasthttp.RequestCtx) {
	var b deductBody
	if err := json.Unmarshal(ctx.PostBody(), &b); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			h.badRequest(ctx, te.Field+": must be a string")
			return
		}
		h.badRequest(ctx, "body: malformed JSON, want an object with sku, qty and request_id")
		return
	}
	if b.SKU == nil {
		h.badRequest(ctx, "sku: required")
		return
	}
	if err := ident.ValidSKU(*b.SKU); err != nil {
		h.badRequest(ctx, "sku: "+err.Error())
		return
	}
	if len(b.Qty) == 0 || string(b.Qty) == "null" {
		h.badRequest(ctx, "qty: required")
		return
	}
	qty, err := strconv.ParseInt(string(b.Qty), 10, 64)
	if err != nil {
		h.badRequest(ctx, "qty: must be an integer")
		return
	}
	if qty < 1 || qty > h.maxQty {
		h.badRequest(ctx, "qty: must be between 1 and "+strconv.FormatInt(h.maxQty, 10))
		return
	}
	if b.RequestID == nil {
		h.badRequest(ctx, "request_id: required")
		return
	}
	if err := ident.ValidRequestID(*b.RequestID, ident.MaxRequestID); err != nil {
		h.badRequest(ctx, "request_id: "+err.Error())
		return
	}
	var userID string
	if b.UserID != nil {
		if err := ident.ValidRequestID(*b.UserID, ident.MaxUserID); err != nil {
			h.badRequest(ctx, "user_id: "+err.Error())
			return
		}
		userID = *b.UserID
	}

	// Deductions finish even while the server shuts down; only the timeout
	// ends them early.
	start := time.Now()
	c, cancel := context.WithTimeout(context.Background(), h.timeout)
	res, err := h.sched.Deduct(c, *b.SKU, qty, *b.RequestID, userID)
	cancel()
	h.m.latency.Observe(time.Since(start).Seconds())
	switch {
	case errors.Is(err, scheduler.ErrUnknownSKU):
		h.m.unknown.Inc()
		writeErr(ctx, fasthttp.StatusNotFound, "sku: unknown")
	case err != nil:
		h.m.unavailable.Inc()
		h.logger.Debug("deduct unavailable", "sku", *b.SKU, "request_id", *b.RequestID, "err", err)
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		buf := append(make([]byte, 0, 96+len(*b.RequestID)), `{"error":"unavailable, retry with the same request_id","request_id":`...)
		buf = strconv.AppendQuote(buf, *b.RequestID)
		ctx.SetBody(append(buf, '}'))
	case res.Status == scheduler.SoldOut:
		h.m.soldOut.Inc()
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"sold_out"}`)
	default:
		h.m.ok.Inc()
		token := h.signer.Encode(res.Partition.DetailID(res.Seq), res.Qty)
		buf := make([]byte, 0, 64+len(token)+len(*b.SKU))
		buf = append(buf, `{"status":"ok","reservation":"`...)
		buf = append(buf, token...)
		buf = append(buf, `","sku":"`...)
		buf = append(buf, *b.SKU...)
		buf = append(buf, `","qty":`...)
		buf = strconv.AppendInt(buf, res.Qty, 10)
		buf = append(buf, '}')
		ctx.SetBody(buf)
	}
}

type settleBody struct {
	Reservation *string `json:"reservation"`
}

// settle confirms or releases a reservation; both are idempotent.
func (h *hot) settle(ctx *fasthttp.RequestCtx, confirm bool) {
	var b settleBody
	if err := json.Unmarshal(ctx.PostBody(), &b); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			writeErr(ctx, fasthttp.StatusBadRequest, te.Field+": must be a string")
			return
		}
		writeErr(ctx, fasthttp.StatusBadRequest, "body: malformed JSON, want an object with reservation")
		return
	}
	if b.Reservation == nil || *b.Reservation == "" {
		writeErr(ctx, fasthttp.StatusBadRequest, "reservation: required")
		return
	}
	detailID, qty, err := h.signer.Decode(*b.Reservation)
	if err != nil {
		writeErr(ctx, fasthttp.StatusNotFound, "reservation: unknown")
		return
	}
	c, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	if confirm {
		err = h.ledger.Confirm(c, detailID, qty)
	} else {
		err = h.ledger.Release(c, detailID, qty)
	}
	switch {
	case errors.Is(err, stocksync.ErrReleased):
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"released","error":"reservation: already released, cannot confirm"}`)
	case errors.Is(err, stocksync.ErrConfirmed):
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"confirmed","error":"reservation: already confirmed, cannot release"}`)
	case err != nil:
		h.logger.Warn("settle unavailable", "reservation", *b.Reservation, "err", err)
		writeErr(ctx, fasthttp.StatusServiceUnavailable, "unavailable, retry")
	case confirm:
		ctx.SetBodyString(`{"status":"confirmed"}`)
	default:
		ctx.SetBodyString(`{"status":"released"}`)
	}
}

func (h *hot) stock(ctx *fasthttp.RequestCtx, name string) {
	if err := ident.ValidSKU(name); err != nil {
		writeErr(ctx, fasthttp.StatusBadRequest, "sku: "+err.Error())
		return
	}
	sku := h.sched.Registry().Get(name)
	if sku == nil {
		writeErr(ctx, fasthttp.StatusNotFound, "sku: unknown")
		return
	}
	avail := sku.Available()
	buf := make([]byte, 0, 96)
	buf = append(buf, `{"sku":"`...)
	buf = append(buf, name...)
	buf = append(buf, `","available":`...)
	buf = strconv.AppendInt(buf, avail, 10)
	buf = append(buf, `,"sold_out":`...)
	buf = strconv.AppendBool(buf, sku.SoldOut() || avail == 0)
	buf = append(buf, '}')
	ctx.SetBody(buf)
}

func (h *hot) badRequest(ctx *fasthttp.RequestCtx, msg string) {
	h.m.bad.Inc()
	writeErr(ctx, fasthttp.StatusBadRequest, msg)
}

func methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	writeErr(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed")
}

func writeErr(ctx *fasthttp.RequestCtx, status int, msg string) {
	ctx.SetStatusCode(status)
	buf := append(make([]byte, 0, 16+len(msg)), `{"error":`...)
	buf = strconv.AppendQuote(buf, msg)
	ctx.SetBody(append(buf, '}'))
}

// slogPrintf adapts slog to fasthttp's Printf logger, at debug level.
type slogPrintf struct{ l *slog.Logger }

func (p slogPrintf) Printf(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}
