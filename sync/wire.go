package sync

import (
	"bytes"
	"encoding/json"
	"fmt"
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

func encodeWire(w wireBatch) []byte {
	out := make([]byte, 0, 64+len(w.Details)*96)
	out = append(out, wireMagic...)
	out = append(out, '\t')
	out = append(out, w.ID...)
	out = append(out, '\t')
	out = append(out, w.Node...)
	for _, d := range w.Details {
		out = append(out, '\n')
		out = append(out, d.DetailID...)
		out = append(out, '\t')
		out = append(out, d.SKU...)
		out = append(out, '\t')
		out = strconv.AppendInt(out, int64(d.PID), 10)
		out = append(out, '\t')
		out = append(out, d.RequestID...)
		out = append(out, '\t')
		out = append(out, d.UserID...)
		out = append(out, '\t')
		out = strconv.AppendInt(out, d.Qty, 10)
		out = append(out, '\t')
		out = strconv.AppendInt(out, d.TimeMs, 10)
	}
	return out
}

// decodeWire reads a batch body (text or JSON); structural errors are
// poison.
func decodeWire(body []byte) (wireBatch, error) {
	var b wireBatch
	if len(body) > 0 && body[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			return b, fmt.Errorf("%w: %v", errPoison, err)
		}
		return b, nil
	}
	lines := bytes.Split(body, []byte{'\n'})
	head := bytes.Split(lines[0], []byte{'\t'})
	if len(head) != 3 || string(head[0]) != wireMagic {
		return b, fmt.Errorf("%w: not a stockd batch", errPoison)
	}
	b.ID, b.Node = string(head[1]), string(head[2])
	b.Details = make([]wireDetail, 0, len(lines)-1)
	for i, line := range lines[1:] {
		f := bytes.Split(line, []byte{'\t'})
		if len(f) != 7 {
			return b, fmt.Errorf("%w: line %d: %d fields, want 7", errPoison, i+2, len(f))
		}
		pid, err1 := strconv.Atoi(string(f[2]))
		qty, err2 := strconv.ParseInt(string(f[5]), 10, 64)
		ms, err3 := strconv.ParseInt(string(f[6]), 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			return b, fmt.Errorf("%w: line %d: bad number", errPoison, i+2)
		}
		b.Details = append(b.Details, wireDetail{
			DetailID: string(f[0]), SKU: string(f[1]), PID: pid, RequestID: string(f[3]),
			UserID: string(f[4]), Qty: qty, TimeMs: ms,
		})
	}
	return b, nil
}
