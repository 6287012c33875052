// Package hot is the gateways' endpoint (fasthttp): deduct, confirm,
// release, extend, stock and health, with its request parser and its
// admission limits. The daemon builds it with New and serves
// Endpoint.Server; it reaches the rest of the node only through Deps.
package hot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/valyala/fasthttp"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/apierr"
	"github.com/stockd/stockd/internal/hotstats"
	"github.com/stockd/stockd/internal/httpframe"
	"github.com/stockd/stockd/internal/ident"
	"github.com/stockd/stockd/internal/mono"
	"github.com/stockd/stockd/internal/reservation"
	"github.com/stockd/stockd/internal/strictjson"
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
	http    HTTPConfig
	limits  Limits
	clients *clientLimiter // nil: no per-client limit
	// catalogue confirms an unknown SKU with MySQL before a 404.
	catalogue *catalogue
	// other counts, for the status page, the answers that have no SKU
	// entry to count them (scheduler.SKU.Stats): a client over its limit,
	// a SKU this node has not loaded.
	other *hotstats.Counters

	// ext and maxExtension serve POST /v1/extend (sale.go).
	ext          extender
	maxExtension time.Duration

	// deadlines bounds deductions (timeout), one context per tick.
	deadlines deadlines
}

// hotMetrics are the hot path's: deductions by outcome and their latency.
type hotMetrics struct {
	ok, soldOut, reused, unavailable, unknown, bad, shed prometheus.Counter
	latency                                              prometheus.Histogram
	// Sale rules (sale.go).
	limitReached, notOpen, closed prometheus.Counter
}

func newHotMetrics(reg prometheus.Registerer) *hotMetrics {
	f := promauto.With(reg)
	out := f.NewCounterVec(prometheus.CounterOpts{
		Name: "stockd_deductions_total",
		Help: "Deduction requests answered, by outcome (ok, sold_out, request_id_reused, unavailable, unknown_sku, bad_request, shed, limit_reached, not_open, closed).",
	}, []string{"outcome"})
	return &hotMetrics{
		ok:          out.WithLabelValues("ok"),
		soldOut:     out.WithLabelValues("sold_out"),
		reused:      out.WithLabelValues("request_id_reused"),
		unavailable: out.WithLabelValues("unavailable"),
		unknown:     out.WithLabelValues("unknown_sku"),
		bad:         out.WithLabelValues("bad_request"),
		shed:        out.WithLabelValues("shed"),

		limitReached: out.WithLabelValues("limit_reached"),
		notOpen:      out.WithLabelValues("not_open"),
		closed:       out.WithLabelValues("closed"),
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
		ReadTimeout:        h.http.ReadTimeout,
		WriteTimeout:       h.http.WriteTimeout,
		IdleTimeout:        h.http.IdleTimeout,
		MaxConnsPerIP:      h.http.MaxConnsPerIP,
		ReadBufferSize:     8 << 10,
		Concurrency:        h.http.Concurrency,
		CloseOnShutdown:    true,
		// Connection-level errors (clients going away, bodies too large)
		// are the client's business; keep them out of the error log.
		Logger:                slogPrintf{h.logger},
		NoDefaultDate:         true,
		NoDefaultServerHeader: true,
	}
}

// Routes are the routes handle serves ("METHOD /path", {name} for a
// path segment), as api/openapi.yaml lists them; the daemon's TestOpenAPI
// holds the two, and handle's path literals, in step.
var Routes = []string{
	"POST /v1/deduct",
	"POST /v1/confirm",
	"POST /v1/release",
	"POST /v1/extend",
	"GET /v1/stock/{sku}",
	"GET /healthz",
	"GET /readyz",
}

func (h *hot) handle(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	// fasthttp refuses most bad framing itself (duplicate or invalid
	// Content-Length, codings other than chunked and identity), but reads
	// Content-Length with Transfer-Encoding as chunked and accepts
	// "identity": refuse those here, from the headers as they came, and
	// close the connection, whose next bytes a proxy may frame otherwise.
	if _, err := httpframe.Check(ctx.Request.Header.RawHeaders(), !ctx.Request.Header.IsHTTP11()); err != nil {
		ctx.SetConnectionClose()
		h.m.bad.Inc()
		fail(ctx, apierr.Error{Message: "request: " + err.Error(), Code: apierr.InvalidArgument})
		return
	}
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
	case "/v1/extend":
		if !ctx.IsPost() {
			methodNotAllowed(ctx, "POST")
			return
		}
		h.extend(ctx)
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
		fail(ctx, apierr.Error{Message: "no such route", Code: apierr.NotFound})
	}
}

// parseError answers requests fasthttp could not read.
func (h *hot) parseError(ctx *fasthttp.RequestCtx, err error) {
	ctx.SetContentType("application/json")
	var ne *net.OpError
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		fail(ctx, apierr.Error{Message: "body: larger than 4096 bytes", Code: apierr.BodyTooLarge, Field: "body"})
	case errors.As(err, &ne) && ne.Timeout():
		fail(ctx, apierr.Error{Message: "request timeout", Code: apierr.RequestTimeout})
	default:
		fail(ctx, apierr.Error{Message: "malformed HTTP request", Code: apierr.InvalidArgument})
	}
}

type deductBody struct {
	SKU       *string         `json:"sku"`
	Qty       json.RawMessage `json:"qty"`
	RequestID *string         `json:"request_id"`
	UserID    *string         `json:"user_id"`
}

// deductRequest is a valid deduct body. Its strings may point into the
// request's body (parseDeduct's plain path): own copies them before
// anything that may keep them (a Redis command can outlive the handler).
type deductRequest struct {
	sku, requestID, userID string
	qty                    int64
}

// own makes r's strings its own: most requests of a flash sale are
// answered sold_out from memory without needing them past the handler,
// so the copies are made only for the others.
func (r *deductRequest) own() {
	r.sku, r.requestID, r.userID = strings.Clone(r.sku), strings.Clone(r.requestID), strings.Clone(r.userID)
}

// bodyString is b as a string without a copy; it is valid only while b
// is (see deductRequest.own).
func bodyString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// badInput is a 400 answer: its message and the field (or key) it names.
type badInput struct{ msg, field string }

// inputErr names the field a "field: problem" message starts with.
func inputErr(msg string) badInput {
	if msg == "" {
		return badInput{}
	}
	field, _, _ := strings.Cut(msg, ":")
	return badInput{msg: msg, field: field}
}

// bodyErr is the answer to a body strictjson refused: a key error names the
// key as written; malformed JSON names the body.
func bodyErr(err error, want string) badInput {
	var ke *strictjson.KeyError
	if errors.As(err, &ke) {
		return badInput{msg: ke.Error(), field: ke.Key}
	}
	return badInput{msg: "body: malformed JSON, want an object with " + want, field: "body"}
}

// parseDeduct reads and checks a deduct body; a badInput with a message is
// the 400 answer, naming the field or key. Keys are exact (see scanDeduct) on every
// path; encoding/json only decodes values the scanner does not read
// itself, once the keys are known to be exact.
func (h *hot) parseDeduct(body []byte) (deductRequest, badInput) {
	var r deductRequest
	var f fastDeduct
	if err := scanDeduct(body, &f); err != nil {
		return r, bodyErr(err, "sku, qty and request_id")
	}
	if !f.slow && f.has(keySKU) && f.has(keyQty) && f.has(keyRequestID) {
		r.sku, r.requestID, r.qty = bodyString(f.sku), bodyString(f.requestID), f.qty
		if f.has(keyUserID) {
			r.userID = bodyString(f.userID)
		}
		return r, inputErr(h.check(r, f.has(keyUserID)))
	}
	// Escaped or non-ASCII strings, numbers that are not plain integers,
	// wrong types, missing keys: encoding/json gives the exact error.
	var b deductBody
	if err := json.Unmarshal(body, &b); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return r, inputErr(te.Field + ": must be a string")
		}
		return r, bodyErr(err, "sku, qty and request_id")
	}
	if b.SKU == nil {
		return r, inputErr("sku: required")
	}
	r.sku = *b.SKU
	if err := ident.ValidSKU(r.sku); err != nil {
		return r, inputErr("sku: " + err.Error())
	}
	if len(b.Qty) == 0 || string(b.Qty) == "null" {
		return r, inputErr("qty: required")
	}
	var err error
	if r.qty, err = strconv.ParseInt(string(b.Qty), 10, 64); err != nil {
		return r, inputErr("qty: must be an integer")
	}
	if b.RequestID == nil {
		if r.qty < 1 || r.qty > h.maxQty {
			return r, inputErr("qty: must be between 1 and " + strconv.FormatInt(h.maxQty, 10))
		}
		return r, inputErr("request_id: required")
	}
	r.requestID = *b.RequestID
	if b.UserID != nil {
		r.userID = *b.UserID
	}
	return r, inputErr(h.check(r, b.UserID != nil))
}

// check validates the fields of a parsed body, in the order the errors
// are reported.
func (h *hot) check(r deductRequest, hasUser bool) string {
	if err := ident.ValidSKU(r.sku); err != nil {
		return "sku: " + err.Error()
	}
	if r.qty < 1 || r.qty > h.maxQty {
		return "qty: must be between 1 and " + strconv.FormatInt(h.maxQty, 10)
	}
	if err := ident.ValidRequestID(r.requestID, ident.MaxRequestID); err != nil {
		return "request_id: " + err.Error()
	}
	if hasUser {
		if err := ident.ValidRequestID(r.userID, ident.MaxUserID); err != nil {
			return "user_id: " + err.Error()
		}
	}
	return ""
}

func (h *hot) deduct(ctx *fasthttp.RequestCtx) {
	if h.clients != nil && !h.clients.allow(ctx.RemoteIP(), time.Now()) {
		h.shed(ctx, h.other, "too many requests from this client, slow down")
		return
	}
	r, bad := h.parseDeduct(ctx.PostBody())
	if bad.msg != "" {
		h.badRequest(ctx, bad)
		return
	}
	// The SKU's entry counts its answers for the status page (nil: not
	// loaded here, counted in h.other).
	entry := h.sched.Registry().Get(r.sku)
	if h.limits.SKUInflight > 0 && entry != nil {
		n := entry.Inflight.Add(1)
		defer entry.Inflight.Add(-1)
		if n > int64(h.limits.SKUInflight) {
			h.shed(ctx, &entry.Stats, "too many requests for this sku in progress, retry shortly")
			return
		}
	}

	// Deductions finish even while the server shuts down; only the timeout
	// ends them early. One clock read serves the verdict's freshness, the
	// deadline and the latency.
	start := mono.Now()
	// Sale rules (sale.go) and the sold-out verdict come from the entry
	// looked up above (one registry lookup per request before Deduct);
	// the wall clock is read only for a SKU that has rules.
	var rules *scheduler.Rules
	if entry != nil {
		rules = entry.Rules()
	}
	if rules != nil && h.refused(ctx, rules, r, time.Now()) {
		return
	}
	res, answered, err := h.outcome(ctx, r, entry, rules, start)
	if answered {
		return
	}
	took := mono.Since(start)
	h.m.latency.Observe(took.Seconds())
	if entry == nil && err == nil {
		entry = h.sched.Registry().Get(r.sku) // loaded by the catalogue just now
	}
	h.answer(ctx, r, entry, res, err, took)
}

// outcome is the deduction's result: from memory when the SKU's verdict
// says sold out (most of a flash sale's traffic: no Redis, no context or
// timer, no copy of the body's strings), otherwise from the scheduler,
// asking MySQL once about a SKU this node does not know. answered: a sale
// rule refused the request and the answer is written.
func (h *hot) outcome(ctx *fasthttp.RequestCtx, r deductRequest, entry *scheduler.SKU, rules *scheduler.Rules, start int64) (res scheduler.Result, answered bool, err error) {
	verdict := h.sched.VerdictFor(entry, r.requestID, start)
	if verdict == scheduler.SoldOutNow {
		return scheduler.Result{Status: scheduler.SoldOut}, false, nil
	}
	r.own()
	c := h.deadlines.get(start)
	res, err = h.take(c, r, entry, verdict, rules)
	if !unknownSKU(err) {
		return res, false, err
	}
	// Created on another node a moment ago? Ask MySQL (at most once per
	// view_max_age for every unknown name).
	known, err := h.catalogue.known(c, r.sku)
	switch {
	case err != nil:
		return res, false, fmt.Errorf("%w: %w", scheduler.ErrUnavailable, err)
	case !known:
		return res, false, stockd.ErrUnknownSKU
	}
	if rules = h.sched.Rules(r.sku); rules != nil && h.refused(ctx, rules, r, time.Now()) {
		return res, true, nil
	}
	res, err = h.take(c, r, nil, scheduler.Selling, rules)
	return res, false, err
}

// answer writes the deduction's answer and counts it (entry nil: in
// h.other).
func (h *hot) answer(ctx *fasthttp.RequestCtx, r deductRequest, entry *scheduler.SKU, res scheduler.Result, err error, took time.Duration) {
	stats := h.other
	if entry != nil {
		stats = &entry.Stats
	}
	switch {
	case unknownSKU(err):
		h.m.unknown.Inc()
		fail(ctx, apierr.Error{Message: "sku: unknown", Code: apierr.UnknownSKU, Field: "sku"})
	case err != nil:
		h.m.unavailable.Inc()
		stats.Observe(hotstats.Unavailable, took)
		h.logger.Debug("deduct unavailable", "sku", r.sku, "request_id", r.requestID, "err", err)
		fail(ctx, apierr.Error{Message: "unavailable, retry with the same request_id", Code: apierr.Unavailable, RequestID: r.requestID})
	case res.Status == scheduler.SoldOut:
		h.m.soldOut.Inc()
		stats.Observe(hotstats.SoldOut, took)
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"sold_out"}`)
	case res.Status == scheduler.LimitReached:
		h.limitReached(ctx, res)
	case res.Status == scheduler.Reused:
		// The id already took for another qty: not a retry of that
		// request, and nothing was deducted for this one.
		h.m.reused.Inc()
		fail(ctx, apierr.Error{Message: "request_id: reused with another qty", Code: apierr.RequestIDReused})
	default:
		h.m.ok.Inc()
		stats.Observe(hotstats.OK, took)
		h.ok(ctx, r.sku, res)
	}
}

// ok writes the ok answer with its signed reservation. Signing hands the
// token to an interface (the HMAC), so a buffer on the stack would escape:
// a pooled one allocates nothing.
func (h *hot) ok(ctx *fasthttp.RequestCtx, sku string, res scheduler.Result) {
	bp := okBodies.Get().(*[]byte)
	buf := append((*bp)[:0], `{"status":"ok","reservation":"`...)
	p := res.Partition
	buf = h.signer.AppendDetailToken(buf, p.SKU, p.ID, p.Epoch, res.Seq, res.Qty)
	buf = append(buf, `","sku":"`...)
	buf = append(buf, sku...)
	buf = append(buf, `","qty":`...)
	buf = strconv.AppendInt(buf, res.Qty, 10)
	buf = append(buf, '}')
	ctx.SetBody(buf)
	*bp = buf
	okBodies.Put(bp)
}

// unknownSKU tells a SKU that is not in the catalogue (404) from a failure
// that merely wraps one: errors keep their chain (%w: %w), so an
// ErrUnavailable can hold an ErrUnknownSKU from MySQL (a SKU archived while
// the request ran); that stays a 503 the caller retries.
func unknownSKU(err error) bool {
	return errors.Is(err, stockd.ErrUnknownSKU) && !errors.Is(err, scheduler.ErrUnavailable)
}

// okBodies are the buffers ok answers are built in (SetBody copies).
var okBodies = sync.Pool{New: func() any { b := make([]byte, 0, 320); return &b }}

type settleBody struct {
	Reservation *string `json:"reservation"`
}

// The 409 answers of settle: an outcome (status) that is also an error of
// this call (code).
const (
	releasedBody  = `{"status":"released","error":"reservation: already released, cannot confirm","code":"` + string(apierr.Conflict) + `"}`
	confirmedBody = `{"status":"confirmed","error":"reservation: already confirmed, cannot release","code":"` + string(apierr.Conflict) + `"}`
)

// settleKeys are the only keys of a confirm or release body.
var settleKeys = strictjson.KeysOf(settleBody{})

// settle confirms or releases a reservation; both are idempotent.
func (h *hot) settle(ctx *fasthttp.RequestCtx, confirm bool) {
	var b settleBody
	// Keys first, byte-exactly: encoding/json would take "Reservation".
	if err := strictjson.Check(ctx.PostBody(), settleKeys); err != nil {
		writeBad(ctx, bodyErr(err, "reservation"))
		return
	}
	if err := json.Unmarshal(ctx.PostBody(), &b); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			writeBad(ctx, inputErr(te.Field+": must be a string"))
			return
		}
		writeBad(ctx, bodyErr(err, "reservation"))
		return
	}
	if b.Reservation == nil || *b.Reservation == "" {
		writeBad(ctx, inputErr("reservation: required"))
		return
	}
	detailID, qty, err := h.signer.Decode(*b.Reservation)
	if err != nil {
		fail(ctx, apierr.Error{Message: "reservation: unknown", Code: apierr.UnknownReservation, Field: "reservation"})
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
		ctx.SetBodyString(releasedBody)
	case errors.Is(err, stocksync.ErrConfirmed):
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(confirmedBody)
	case errors.Is(err, stocksync.ErrUnknown):
		fail(ctx, apierr.Error{Message: "reservation: unknown", Code: apierr.UnknownReservation, Field: "reservation"})
	case errors.Is(err, stocksync.ErrUnverified):
		h.logger.Debug("settle cannot verify yet", "reservation", *b.Reservation, "err", err)
		ctx.Response.Header.Set("Retry-After", "1")
		fail(ctx, apierr.Error{Message: "reservation: cannot be verified yet, retry", Code: apierr.Unavailable})
	case err != nil:
		h.logger.Warn("settle unavailable", "reservation", *b.Reservation, "err", err)
		fail(ctx, apierr.Error{Message: "unavailable, retry", Code: apierr.Unavailable})
	case confirm:
		ctx.SetBodyString(`{"status":"confirmed"}`)
	default:
		ctx.SetBodyString(`{"status":"released"}`)
	}
}

func (h *hot) stock(ctx *fasthttp.RequestCtx, name string) {
	if err := ident.ValidSKU(name); err != nil {
		fail(ctx, apierr.Invalid("sku: "+err.Error()))
		return
	}
	sku := h.sched.Registry().Get(name)
	if sku == nil {
		c, cancel := context.WithTimeout(context.Background(), h.timeout)
		known, err := h.catalogue.known(c, name)
		cancel()
		if err != nil {
			fail(ctx, apierr.Error{Message: "unavailable, retry", Code: apierr.Unavailable})
			return
		}
		if !known {
			fail(ctx, apierr.Error{Message: "sku: unknown", Code: apierr.UnknownSKU, Field: "sku"})
			return
		}
		sku = h.sched.Registry().Get(name)
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

// shed answers 429: the request was not admitted and touched no stock.
// stats are the counters of the SKU asked for, or h.other.
func (h *hot) shed(ctx *fasthttp.RequestCtx, stats *hotstats.Counters, msg string) {
	h.m.shed.Inc()
	stats.Count(hotstats.Shed)
	ctx.Response.Header.Set("Retry-After", "1")
	fail(ctx, apierr.Error{Message: msg, Code: apierr.RateLimited})
}

func (h *hot) badRequest(ctx *fasthttp.RequestCtx, bad badInput) {
	h.m.bad.Inc()
	writeBad(ctx, bad)
}

// writeBad answers 400 invalid_argument, naming the field.
func writeBad(ctx *fasthttp.RequestCtx, bad badInput) {
	fail(ctx, apierr.Error{Message: bad.msg, Code: apierr.InvalidArgument, Field: bad.field})
}

func methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	fail(ctx, apierr.Error{Message: "method not allowed", Code: apierr.MethodNotAllowed})
}

// fail writes an error answer: every one of the hot endpoint comes here,
// with its status from its code (apierr). It allocates only for a message
// that does not fit the stack buffer.
func fail(ctx *fasthttp.RequestCtx, e apierr.Error) {
	ctx.SetStatusCode(e.Status())
	var arr [256]byte
	ctx.SetBody(e.AppendJSON(arr[:0]))
}

// slogPrintf adapts slog to fasthttp's Printf logger, at debug level.
type slogPrintf struct{ l *slog.Logger }

func (p slogPrintf) Printf(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}
