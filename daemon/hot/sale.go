package hot

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/apierr"
	"github.com/stockd/stockd/internal/mono"

	"github.com/valyala/fasthttp"

	"github.com/stockd/stockd/internal/strictjson"
	"github.com/stockd/stockd/scheduler"
	stocksync "github.com/stockd/stockd/sync"
)

// The hot endpoint's side of the sale rules (issue 15): the opening and
// closing times and the user_id requirement answered from memory, the
// per-user limit's answer, and POST /v1/extend. Kept apart from hot.go so
// that a SKU without rules runs exactly the code it ran before.

// extender pushes a reservation's expiry out (the ledger).
type extender interface {
	Extend(ctx context.Context, detailID string, qty int64, until time.Time) error
}

var _ extender = (*stocksync.Ledger)(nil)

// refused answers a deduction the SKU's rules refuse before any stock is
// touched, from memory: 409 not_open or closed, 400 without user_id on a
// limited SKU. It returns whether it answered.
func (h *hot) refused(ctx *fasthttp.RequestCtx, rules *scheduler.Rules, r deductRequest, now time.Time) bool {
	switch rules.Check(now, r.userID != "") {
	case scheduler.NotOpen:
		h.m.notOpen.Inc()
		ctx.SetStatusCode(fasthttp.StatusConflict)
		buf := append(make([]byte, 0, 64), `{"status":"not_open","opens_at":"`...)
		buf = rules.OpensAt.UTC().AppendFormat(buf, time.RFC3339Nano)
		ctx.SetBody(append(buf, `"}`...))
	case scheduler.Closed:
		h.m.closed.Inc()
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"closed"}`)
	case scheduler.NeedsUser:
		h.badRequest(ctx, badInput{msg: "user_id: required, the sku has a per-user limit", field: "user_id"})
	default:
		return false
	}
	return true
}

// take runs a deduction: through the per-user allowance when the SKU has
// a limit (rules as the request found them, nil: none).
// entry and v are the registry entry the handler looked up and the verdict
// it asked when the request arrived; entry nil: the SKU was not loaded
// then (the catalogue may have loaded it since).
func (h *hot) take(c context.Context, r deductRequest, entry *scheduler.SKU, v scheduler.Verdict, rules *scheduler.Rules) (scheduler.Result, error) {
	if entry == nil {
		if entry = h.sched.Registry().Get(r.sku); entry == nil {
			return scheduler.Result{}, stockd.ErrUnknownSKU
		}
		v = h.sched.VerdictFor(entry, r.requestID, mono.Now())
	}
	return h.sched.DeductFor(c, entry, v, r.qty, r.requestID, r.userID, rules)
}

// limitReached answers 409 limit_reached with the limit.
func (h *hot) limitReached(ctx *fasthttp.RequestCtx, res scheduler.Result) {
	h.m.limitReached.Inc()
	ctx.SetStatusCode(fasthttp.StatusConflict)
	buf := append(make([]byte, 0, 64), `{"status":"limit_reached","limit":`...)
	buf = strconv.AppendInt(buf, res.Limit, 10)
	buf = append(buf, `,"held":`...)
	buf = strconv.AppendInt(buf, res.Held, 10)
	ctx.SetBody(append(buf, '}'))
}

type extendBody struct {
	Reservation *string         `json:"reservation"`
	Seconds     json.RawMessage `json:"seconds"`
}

var extendKeys = strictjson.KeysOf(extendBody{})

// extendAnswer is the 200 answer of POST /v1/extend. Capped says the
// seconds asked for were above sync.max_extension and MaxSeconds were
// granted instead.
type extendAnswer struct {
	Status     string `json:"status"`
	ExpiresAt  string `json:"expires_at"`
	Capped     bool   `json:"capped,omitempty"`
	MaxSeconds int64  `json:"max_seconds,omitempty"`
}

// extend pushes an unconfirmed reservation's expiry to now + seconds
// (capped at sync.max_extension).
func (h *hot) extend(ctx *fasthttp.RequestCtx) {
	body := ctx.PostBody()
	if err := strictjson.Check(body, extendKeys); err != nil {
		writeBad(ctx, bodyErr(err, "reservation and seconds"))
		return
	}
	var b extendBody
	if err := json.Unmarshal(body, &b); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			writeBad(ctx, inputErr(te.Field+": must be a string"))
			return
		}
		writeBad(ctx, bodyErr(err, "reservation and seconds"))
		return
	}
	if b.Reservation == nil || *b.Reservation == "" {
		writeBad(ctx, inputErr("reservation: required"))
		return
	}
	if len(b.Seconds) == 0 || string(b.Seconds) == "null" {
		writeBad(ctx, inputErr("seconds: required"))
		return
	}
	secs, err := strconv.ParseInt(string(b.Seconds), 10, 64)
	if err != nil || secs <= 0 {
		writeBad(ctx, inputErr("seconds: must be a whole number of seconds above 0"))
		return
	}
	max := int64(h.maxExtension / time.Second)
	ans := extendAnswer{Status: "reserved"}
	if secs > max {
		secs, ans.Capped, ans.MaxSeconds = max, true, max
	}
	detailID, qty, err := h.signer.Decode(*b.Reservation)
	if err != nil {
		fail(ctx, apierr.Error{Message: "reservation: unknown", Code: apierr.UnknownReservation, Field: "reservation"})
		return
	}
	until := time.Now().Add(time.Duration(secs) * time.Second).UTC()
	c, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	err = h.ext.Extend(c, detailID, qty, until)
	switch {
	case errors.Is(err, stocksync.ErrReleased):
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"released","error":"reservation: already released, cannot extend","code":"conflict"}`)
	case errors.Is(err, stocksync.ErrConfirmed):
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"confirmed","error":"reservation: already confirmed, nothing to extend","code":"conflict"}`)
	case errors.Is(err, stocksync.ErrUnknown):
		fail(ctx, apierr.Error{Message: "reservation: unknown", Code: apierr.UnknownReservation, Field: "reservation"})
	case errors.Is(err, stocksync.ErrUnverified):
		ctx.Response.Header.Set("Retry-After", "1")
		fail(ctx, apierr.Error{Message: "reservation: cannot be verified yet, retry", Code: apierr.Unavailable})
	case err != nil:
		h.logger.Warn("extend unavailable", "reservation", *b.Reservation, "err", err)
		fail(ctx, apierr.Error{Message: "unavailable, retry", Code: apierr.Unavailable})
	default:
		ans.ExpiresAt = until.Format(time.RFC3339Nano)
		out, _ := json.Marshal(ans)
		ctx.SetBody(out)
	}
}
