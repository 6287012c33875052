package client

import (
	"errors"
	"fmt"
	"net/http"
)

// Outcomes of a call, for errors.Is. Each is a definite answer of stockd:
// retrying it with the same request id gives the same answer, so the client
// never does.
var (
	// ErrSoldOut: 409 sold_out, nothing was deducted.
	ErrSoldOut = errors.New("stockd: sold out")
	// ErrUnknownSKU: 404 on deduct or stock, the SKU does not exist.
	ErrUnknownSKU = errors.New("stockd: unknown sku")
	// ErrNotFound: 404 on confirm, release or extend, the reservation
	// token is not recognised.
	ErrNotFound = errors.New("stockd: reservation not found")
	// ErrReleased: 409 status released, the reservation was released (by
	// the caller, by expiry, or by resolved doubt) and cannot be confirmed.
	ErrReleased = errors.New("stockd: reservation already released")
	// ErrConfirmed: 409 status confirmed, the reservation was confirmed and
	// cannot be released.
	ErrConfirmed = errors.New("stockd: reservation already confirmed")
	// ErrRequestIDReused: 422 request_id_reused, the request id was used
	// before with another quantity; use a new request id.
	ErrRequestIDReused = errors.New("stockd: request id reused with another qty")

	// ErrLimitReached, ErrNotOpen and ErrClosed are the 409 statuses
	// limit_reached, not_open and closed of a SKU with a per-user limit or
	// a sale window (contract extension; servers without it never answer
	// them).
	ErrLimitReached = errors.New("stockd: per-user limit reached")
	ErrNotOpen      = errors.New("stockd: sale not open yet")
	ErrClosed       = errors.New("stockd: sale closed")

	// ErrUnavailable: every attempt failed with something worth retrying
	// (503, 429, timeout, connection error) and MaxAttempts ran out. The
	// outcome is unknown: retry later with the same request id.
	ErrUnavailable = errors.New("stockd: unavailable")
	// ErrClientClosed: the Client was closed.
	ErrClientClosed = errors.New("stockd: client closed")
)

// APIError is an answer of stockd that is not a success. Definite outcomes
// with a sentinel (ErrSoldOut, ErrNotFound, ...) are APIErrors too and
// unwrap to it, so errors.Is and errors.As both work.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Code is the answer's "code" (invalid_argument, unknown_sku,
	// rate_limited, ...: the list is in README and api/openapi.yaml) or,
	// for 409 answers, its "status" (sold_out, released, ...).
	Code string
	// Message is the answer's "error".
	Message string
	// Field is the field or key a 400 answer names.
	Field string

	kind error // the sentinel, if any
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Code
	}
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("stockd: %d %s", e.Status, msg)
}

// Unwrap returns the sentinel of the outcome (nil for the rest).
func (e *APIError) Unwrap() error { return e.kind }

// RequestError is every error a call returns: which call, the request id it
// used (deduct only), how many attempts it made, and why it ended.
type RequestError struct {
	// Op is "deduct", "confirm", "release", "extend" or "stock".
	Op string
	// RequestID is the deduction's request id (given or generated). When
	// the outcome is unknown (context ended, ErrUnavailable), deduct again
	// later with this id: it returns the first outcome, never a second
	// deduction (within the server's scheduler.retry_window, default
	// 15m).
	RequestID string
	// Attempts is the number of HTTP attempts made.
	Attempts int
	// Err is the outcome: an *APIError, or for an unknown outcome an error
	// that wraps the context's error or ErrUnavailable and the last
	// attempt's failure.
	Err error
}

func (e *RequestError) Error() string {
	if e.RequestID != "" {
		return fmt.Sprintf("%s %s (%d attempts): %v", e.Op, e.RequestID, e.Attempts, e.Err)
	}
	return fmt.Sprintf("%s (%d attempts): %v", e.Op, e.Attempts, e.Err)
}

func (e *RequestError) Unwrap() error { return e.Err }

// RequestID returns the request id carried by err (a deduct's), or "".
func RequestID(err error) string {
	var re *RequestError
	if errors.As(err, &re) {
		return re.RequestID
	}
	return ""
}

// answer is the JSON of every hot endpoint answer, success or not.
type answer struct {
	Status      string `json:"status"`
	Reservation string `json:"reservation"`
	SKU         string `json:"sku"`
	Qty         int64  `json:"qty"`
	Error       string `json:"error"`
	Code        string `json:"code"`
	Field       string `json:"field"`
	Available   int64  `json:"available"`
	SoldOut     bool   `json:"sold_out"`
	ExpiresAt   any    `json:"expires_at"`
}

// outcome maps a definite non-2xx answer of op to its APIError.
func outcome(op string, status int, a answer) *APIError {
	e := &APIError{Status: status, Code: a.Code, Message: a.Error, Field: a.Field}
	switch status {
	case http.StatusNotFound:
		switch {
		case a.Code == "unknown_sku":
			e.kind = ErrUnknownSKU
		case a.Code == "unknown_reservation":
			e.kind = ErrNotFound
		case a.Code == "not_found" || a.Error == "no such route":
			// The node has no such endpoint (Extend against a server
			// without it, or an endpoint URL with a wrong path): not an
			// answer about the SKU or the reservation.
		case op == "deduct" || op == "stock":
			// A server older than the error codes.
			e.kind = ErrUnknownSKU
		default:
			e.kind = ErrNotFound
		}
	case http.StatusConflict:
		// The 409 outcomes name themselves in "status" (sold_out,
		// released, ...), which is more precise than their "code"
		// (conflict, when there is one): Code is the status.
		kind := a.Status
		if kind == "" {
			kind = a.Code
		}
		e.Code = kind
		switch kind {
		case "sold_out":
			e.kind = ErrSoldOut
		case "released":
			e.kind = ErrReleased
		case "confirmed":
			e.kind = ErrConfirmed
		case "limit_reached":
			e.kind = ErrLimitReached
		case "not_open":
			e.kind = ErrNotOpen
		case "closed":
			e.kind = ErrClosed
		}
	case http.StatusUnprocessableEntity:
		if a.Code == "request_id_reused" {
			e.kind = ErrRequestIDReused
		}
	}
	return e
}
