// Package httpframe refuses HTTP/1.x requests whose body framing a proxy
// in front of stockd and stockd itself could read differently (request
// smuggling): Content-Length together with Transfer-Encoding, a
// Content-Length that is not one plain decimal number, more than one
// Content-Length or Transfer-Encoding, a Transfer-Encoding other than
// "chunked", Transfer-Encoding on HTTP/1.0, and folded header lines.
//
// Check judges one request's header lines; the hot port (fasthttp) calls
// it from its handler on the raw headers fasthttp kept. net/http, which
// serves the admin port, drops Content-Length when Transfer-Encoding is
// present and answers unknown codings 501 itself, before any handler, so
// the admin port reads its connections through Listener, which checks
// every request head before net/http sees it.
package httpframe

import (
	"bytes"
	"errors"
)

// Framing errors; each is a 400.
var (
	ErrBothLengths   = errors.New("Content-Length and Transfer-Encoding together")
	ErrBadLength     = errors.New("Content-Length must be one decimal number")
	ErrManyLengths   = errors.New("more than one Content-Length")
	ErrBadEncoding   = errors.New("Transfer-Encoding other than chunked")
	ErrManyEncodings = errors.New("more than one Transfer-Encoding")
	ErrHTTP10Coding  = errors.New("Transfer-Encoding on HTTP/1.0")
	ErrFolded        = errors.New("folded header line")
	ErrHead          = errors.New("malformed request head")
	ErrHeadTooLarge  = errors.New("request head larger than 64 KiB")
)

// Framing is how a valid request delimits its body.
type Framing struct {
	Length  int64 // the Content-Length, or -1 when there is none
	Chunked bool  // Transfer-Encoding: chunked
}

// maxLengthDigits keeps a Content-Length within int64.
const maxLengthDigits = 18

// Check reads the header lines of one request (after the request line; each
// ending in "\n" or "\r\n"; an empty line or the end of lines ends them)
// and returns its framing, or the reason to refuse it. It does not
// allocate.
func Check(lines []byte, http10 bool) (Framing, error) {
	f := Framing{Length: -1}
	lengths, codings := 0, 0
	for len(lines) > 0 {
		var line []byte
		if nl := bytes.IndexByte(lines, '\n'); nl >= 0 {
			line, lines = lines[:nl], lines[nl+1:]
		} else {
			line, lines = lines, nil
		}
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) == 0 {
			break
		}
		// obs-fold: a line that continues the one before it.
		if line[0] == ' ' || line[0] == '\t' || (len(lines) > 0 && (lines[0] == ' ' || lines[0] == '\t')) {
			return f, ErrFolded
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue // not a header; the server refuses the request itself
		}
		// A name with white space before the colon is no valid header,
		// but a lenient reader might take it for one: count it.
		name, value := trimOWS(line[:colon]), trimOWS(line[colon+1:])
		switch {
		case equalFold(name, "content-length"):
			if lengths++; lengths > 1 {
				return f, ErrManyLengths
			}
			n, ok := parseLength(value)
			if !ok {
				return f, ErrBadLength
			}
			f.Length = n
		case equalFold(name, "transfer-encoding"):
			if codings++; codings > 1 {
				return f, ErrManyEncodings
			}
			if !equalFold(value, "chunked") {
				return f, ErrBadEncoding
			}
			f.Chunked = true
		}
	}
	switch {
	case codings > 0 && lengths > 0:
		return f, ErrBothLengths
	case codings > 0 && http10:
		return f, ErrHTTP10Coding
	}
	return f, nil
}

func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > maxLengthDigits {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares b with the lower-case ASCII s, ignoring ASCII case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
