// Package apierr is the one list of the error codes both stockd APIs (the
// hot endpoint and the admin API) put in an error answer, and the one way
// such an answer is written:
//
//	{"error":"<text for people>","code":"<stable code>","field":"<key>"}
//
// "error" is free text and may change; "code" is the contract (README,
// api/openapi.yaml): a caller decides on it. "field" names the field or key
// of a 400 (invalid_argument) when one is at fault. Outcome answers (200,
// and the 409 statuses of a deduction) carry "status" instead and are not
// errors.
package apierr

import (
	"strings"
	"unicode/utf8"
)

// Code is a stable error code.
type Code string

// The codes, each with the one HTTP status it is answered with.
const (
	InvalidArgument      Code = "invalid_argument"       // 400: bad input; "field" names it
	Unauthorized         Code = "unauthorized"           // 401: no token, or a wrong one
	Forbidden            Code = "forbidden"              // 403: read token on a change; cross-site request
	NotFound             Code = "not_found"              // 404: no such route, or no such admin resource
	UnknownSKU           Code = "unknown_sku"            // 404: deduct or stock of a SKU that does not exist
	UnknownReservation   Code = "unknown_reservation"    // 404: confirm or release of a token not recognised
	MethodNotAllowed     Code = "method_not_allowed"     // 405: see the Allow header
	RequestTimeout       Code = "request_timeout"        // 408: the request did not arrive in time
	Conflict             Code = "conflict"               // 409: the resource's state does not allow it
	BodyTooLarge         Code = "body_too_large"         // 413
	UnsupportedMediaType Code = "unsupported_media_type" // 415: a Basic-auth change without application/json
	RequestIDReused      Code = "request_id_reused"      // 422: the request id took another qty
	RateLimited          Code = "rate_limited"           // 429: shed before touching stock; see Retry-After
	Internal             Code = "internal"               // 500
	Unavailable          Code = "unavailable"            // 503: retry (with the same request_id)
)

var statuses = map[Code]int{
	InvalidArgument:      400,
	Unauthorized:         401,
	Forbidden:            403,
	NotFound:             404,
	UnknownSKU:           404,
	UnknownReservation:   404,
	MethodNotAllowed:     405,
	RequestTimeout:       408,
	Conflict:             409,
	BodyTooLarge:         413,
	UnsupportedMediaType: 415,
	RequestIDReused:      422,
	RateLimited:          429,
	Internal:             500,
	Unavailable:          503,
}

// Status is the HTTP status answered with c (500 for a code not listed).
func (c Code) Status() int {
	if s, ok := statuses[c]; ok {
		return s
	}
	return 500
}

// Codes returns every code, for documentation and the tests that keep
// api/openapi.yaml in step.
func Codes() []Code {
	out := make([]Code, 0, len(statuses))
	for c := range statuses {
		out = append(out, c)
	}
	return out
}

// Error is one error answer. The json tags give encoding/json's form (the
// admin API's); AppendJSON writes the same without allocating (the hot
// endpoint's).
type Error struct {
	Message string `json:"error"`
	Code    Code   `json:"code"`
	Field   string `json:"field,omitempty"`
	// RequestID: a 503 of a deduction repeats the request id to retry
	// with.
	RequestID string `json:"request_id,omitempty"`
}

// Invalid is a 400 whose message starts with the field at fault
// ("qty: must be ..."): the field is the text before the first colon, if
// it is one word.
func Invalid(msg string) Error {
	e := Error{Message: msg, Code: InvalidArgument}
	if field, _, ok := strings.Cut(msg, ":"); ok && field != "" && !strings.ContainsAny(field, " \t\"") {
		e.Field = field
	}
	return e
}

// Status is the HTTP status of e.
func (e Error) Status() int { return e.Code.Status() }

// AppendJSON appends e as a JSON object, as encoding/json writes it
// (HTML-safe escaping included).
func (e Error) AppendJSON(b []byte) []byte {
	b = append(b, `{"error":`...)
	b = appendString(b, e.Message)
	b = append(b, `,"code":`...)
	b = appendString(b, string(e.Code))
	if e.Field != "" {
		b = append(b, `,"field":`...)
		b = appendString(b, e.Field)
	}
	if e.RequestID != "" {
		b = append(b, `,"request_id":`...)
		b = appendString(b, e.RequestID)
	}
	return append(b, '}')
}

const hex = "0123456789abcdef"

// appendString quotes s as encoding/json does: \" \\ \n \r \t, other
// control characters and < > & as \u00XX, U+2028 and U+2029 escaped,
// invalid UTF-8 as \ufffd.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
