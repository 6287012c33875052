package sync

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// A batch travels as text, one line per detail, tab-separated: encoding
// and decoding JSON cost the node more than everything else write-back
// does. Every field is printable ASCII without spaces (SKUs, request and
// user ids are validated so), so no escaping is needed.
//
//	stockd-batch-v1 <TAB> <batch id> <TAB> <node>
//	<detail id> <TAB> <sku> <TAB> <pid> <TAB> <request id> <TAB> <user id or empty> <TAB> <qty> <TAB> <time ms>
//	…
//
// A body starting with "{" is read as the JSON form of wireBatch (tools,
// replays by hand).
const wireMagic = "stockd-batch-v1"

// contentType is the batch messages' content type.
const contentType = "text/tab-separated-values; charset=us-ascii; profile=" + wireMagic

// appendWireHead appends a batch's first line; the batcher's encode
// writes the detail lines after it.
func appendWireHead(out []byte, id, node string) []byte {
	out = append(out, wireMagic...)
	out = append(out, '\t')
	out = append(out, id...)
	out = append(out, '\t')
	return append(out, node...)
}

// appendWireRest appends the fields of a detail line after its detail id.
func appendWireRest(out []byte, sku string, pid int, reqID, user string, qty, ms int64) []byte {
	out = append(out, '\t')
	out = append(out, sku...)
	out = append(out, '\t')
	out = strconv.AppendInt(out, int64(pid), 10)
	out = append(out, '\t')
	out = append(out, reqID...)
	out = append(out, '\t')
	out = append(out, user...)
	out = append(out, '\t')
	out = strconv.AppendInt(out, qty, 10)
	out = append(out, '\t')
	return strconv.AppendInt(out, ms, 10)
}

// decodeWire reads a batch body (text or JSON); structural errors are
// poison.
func decodeWire(body []byte) (wireBatch, error) {
	var b wireBatch
	if len(body) > 0 && body[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			return b, fmt.Errorf("%w: %w", errPoison, err)
		}
		return b, nil
	}
	head, rest, more := bytes.Cut(body, []byte{'\n'})
	hf := bytes.Split(head, []byte{'\t'})
	if len(hf) != 3 || string(hf[0]) != wireMagic {
		return b, fmt.Errorf("%w: not a stockd batch", errPoison)
	}
	b.ID, b.Node = string(hf[1]), string(hf[2])
	if !more {
		return b, nil
	}
	b.Details = make([]wireDetail, 0, bytes.Count(rest, []byte{'\n'})+1)
	// Every detail line but the last ends in '\n'; the fields are cut in
	// place and only the ids become strings (a batch's SKU once per run of
	// equal SKUs): decoding allocated five times per detail before.
	var f [7][]byte
	sku := ""
	for i := 2; more; i++ {
		var line []byte
		line, rest, more = bytes.Cut(rest, []byte{'\n'})
		n, tab := 0, true
		for tab && n < len(f) {
			f[n], line, tab = bytes.Cut(line, []byte{'\t'})
			n++
		}
		if n != len(f) || tab { // fewer fields, or more after the 7th
			if tab {
				n += 1 + bytes.Count(line, []byte{'\t'})
			}
			return b, fmt.Errorf("%w: line %d: %d fields, want 7", errPoison, i, n)
		}
		pid, ok1 := parseUint(f[2])
		qty, ok2 := parseUint(f[5])
		ms, ok3 := parseUint(f[6])
		if !ok1 || !ok2 || !ok3 || pid > math.MaxInt32 {
			return b, fmt.Errorf("%w: line %d: bad number", errPoison, i)
		}
		if string(f[1]) != sku {
			sku = string(f[1])
		}
		var user string
		if len(f[4]) > 0 {
			user = string(f[4])
		}
		b.Details = append(b.Details, wireDetail{
			DetailID: string(f[0]), SKU: sku, PID: int(pid), RequestID: string(f[3]),
			UserID: user, Qty: qty, TimeMs: ms,
		})
	}
	return b, nil
}

// parseUint reads a decimal number of 1 to 18 digits (what the encoder
// writes for pids, quantities and times).
func parseUint(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
