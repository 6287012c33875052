package hot

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/stockd/stockd/internal/strictjson"
)

// scanDeduct reads plain bodies in place, hands anything unusual to
// encoding/json (slow), and refuses keys that are not exact.
func TestScanDeduct(t *testing.T) {
	cases := []struct {
		body string
		slow bool
		key  string // refused, naming this key
		err  error  // refused as malformed or not an object
	}{
		{body: `{"sku":"S1","qty":2,"request_id":"r1"}`},
		{body: ` { "request_id" : "r1" , "qty" : 7 , "sku" : "S-1.x_2", "user_id":"u9" } `},
		{body: "{\n\t\"sku\":\"S1\",\r\n\"qty\":-3,\"request_id\":\"r\"}"},
		{body: `{}`},
		{body: `{"sku":"S\u0031","qty":1,"request_id":"r1"}`, slow: true},
		{body: `{"sku":"S1","qty":1.5,"request_id":"r1"}`, slow: true},
		{body: `{"sku":"S1","qty":1e1,"request_id":"r1"}`, slow: true},
		{body: `{"sku":"S1","qty":"1","request_id":"r1"}`, slow: true},
		{body: `{"sku":"S1","qty":99999999999999999999,"request_id":"r1"}`, slow: true},
		{body: `{"sku":"Sé","qty":1,"request_id":"r1"}`, slow: true},
		{body: `{"sku":{"a":[1,{}]},"qty":null,"request_id":true}`, slow: true},
		{body: `{"sku":"S1","qty":1,"request_id":"r1","extra":true}`, key: "extra"},
		{body: `{"SKU":"S1","qty":1,"request_id":"r1"}`, key: "SKU"},
		{body: `{"sku":"S","qty":1,"QTY":100,"request_id":"r"}`, key: "QTY"},
		{body: "{\"\u212aku\":\"S\"}", key: "\u212aku"},
		{body: `{"sku":"S1","qty":1,"request_id":"r1","sku":"S2"}`, key: "sku"},
		{body: `{"sku":"S1","qty":1.5,"qty":2}`, key: "qty"},
		{body: `{"s\u006bu":"S1"}`, key: `s\u006bu`},
		{body: `{"sku":"S1","qty":01,"request_id":"r1"}`, err: strictjson.ErrSyntax},
		{body: `{"sku":"S1","qty":1,"request_id":"r1","o":{}}`, key: "o"},
		{body: `{"sku":"S1","qty":1,"request_id":"r1"}x`, err: strictjson.ErrSyntax},
		{body: `{"sku":"S1","qty":1,"request_id":"r1",}`, err: strictjson.ErrSyntax},
		{body: `{"sku":"S1"`, err: strictjson.ErrSyntax},
		{body: ``, err: strictjson.ErrSyntax},
		{body: `[1]`, err: strictjson.ErrNotObject},
	}
	for _, c := range cases {
		var f fastDeduct
		err := scanDeduct([]byte(c.body), &f)
		var ke *strictjson.KeyError
		switch {
		case c.key != "":
			if !errors.As(err, &ke) || ke.Key != c.key {
				t.Errorf("%s: %v, want a refusal naming %q", c.body, err, c.key)
			}
		case c.err != nil:
			if err != c.err {
				t.Errorf("%s: %v, want %v", c.body, err, c.err)
			}
		case err != nil:
			t.Errorf("%s: %v", c.body, err)
		case f.slow != c.slow:
			t.Errorf("%s: slow %v, want %v", c.body, f.slow, c.slow)
		}
	}
	body := []byte(`{"sku":"S1","qty":2,"request_id":"r1","user_id":"u"}`)
	if n := testing.AllocsPerRun(100, func() {
		var f fastDeduct
		scanDeduct(body, &f)
	}); n != 0 {
		t.Errorf("scanning a plain body allocates %.0f times", n)
	}
}

// refDeduct is the reference reading of a deduct body: encoding/json's
// tokens, keys compared exactly after decoding, duplicates counted.
type refDeduct struct {
	valid  bool // one JSON object
	keysOK bool // every key one of the four, once
	vals   map[string]json.RawMessage
}

func readRef(body []byte) refDeduct {
	var r refDeduct
	if !json.Valid(body) {
		return r
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return r
	}
	r.valid, r.keysOK, r.vals = true, true, map[string]json.RawMessage{}
	for dec.More() {
		tok, _ := dec.Token()
		k := tok.(string)
		var v json.RawMessage
		dec.Decode(&v)
		switch _, dup := r.vals[k]; {
		case dup:
			r.keysOK = false
		case k != "sku" && k != "qty" && k != "request_id" && k != "user_id":
			r.keysOK = false
		}
		r.vals[k] = v
	}
	return r
}

// FuzzParseDeduct: whenever the parser accepts a body, the reference reads
// a valid object with exactly the allowed keys, once each, and the same
// value in every field; whenever the reference finds any other key (a case
// variant, a look-alike, an unknown one) or a repeated one, the parser
// refuses.
func FuzzParseDeduct(f *testing.F) {
	f.Add(`{"sku":"S1","qty":2,"request_id":"r1"}`)
	f.Add(`{"a":1,"sku":"x","qty":-0,"request_id":"y"}`)
	f.Add(`{"sku":"S","qty":1,"QTY":100,"request_id":"r"}`)
	f.Add(`{"sku":"S\u0031","qty":1.0,"request_id":"r","user_id":"\u0075"}`)
	f.Add("{\"\u212aku\":\"S\",\"qty\":1,\"request_id\":\"r\"}")
	f.Add(`{"sku":"S","qty":1,"request_id":"r","qty":2}`)
	h := &hot{maxQty: 100}
	f.Fuzz(func(t *testing.T, body string) {
		r, bad := h.parseDeduct([]byte(body))
		ref := readRef([]byte(body))
		if bad.msg != "" {
			return
		}
		if !ref.valid || !ref.keysOK {
			t.Fatalf("%q: accepted; reference: valid %v, keys exact and unique %v", body, ref.valid, ref.keysOK)
		}
		str := func(k string) (string, bool) {
			raw, ok := ref.vals[k]
			var s string
			if ok && json.Unmarshal(raw, &s) != nil {
				t.Fatalf("%q: accepted, %s is %s", body, k, raw)
			}
			return s, ok
		}
		if s, ok := str("sku"); !ok || s != r.sku {
			t.Fatalf("%q: sku %q, reference %q", body, r.sku, s)
		}
		if s, ok := str("request_id"); !ok || s != r.requestID {
			t.Fatalf("%q: request_id %q, reference %q", body, r.requestID, s)
		}
		if s, _ := str("user_id"); s != r.userID {
			t.Fatalf("%q: user_id %q, reference %q", body, r.userID, s)
		}
		if q, err := strconv.ParseInt(string(ref.vals["qty"]), 10, 64); err != nil || q != r.qty {
			t.Fatalf("%q: qty %d, reference %s", body, r.qty, ref.vals["qty"])
		}
	})
}

// The parser's refusals of keys name them, whatever path the values take.
func TestParseDeductRefusals(t *testing.T) {
	h := &hot{maxQty: 100}
	for body, want := range map[string]badInput{
		`{"sku":"S","qty":1,"QTY":100,"request_id":"r"}`:     {`body: unknown key "QTY"`, "QTY"},
		`{"sku":"S\u0053","qty":1.0,"request_id":"r","x":1}`: {`body: unknown key "x"`, "x"},
		`{"qty":1,"qty":1}`:                      {`body: duplicate key "qty"`, "qty"},
		`{"s\u006bu":"S"}`:                       {`body: escaped key "s\\u006bu"`, `s\u006bu`},
		`{"sku":"S","qty":1`:                     {"body: malformed JSON, want an object with sku, qty and request_id", "body"},
		`{"sku":"S","qty":1.5,"request_id":"r"}`: {"qty: must be an integer", "qty"},
		`{"sku":7,"qty":1,"request_id":"r"}`:     {"sku: must be a string", "sku"},
		`{"sku":"S","request_id":"r"}`:           {"qty: required", "qty"},
	} {
		if _, got := h.parseDeduct([]byte(body)); got != want {
			t.Errorf("%s: %+v, want %+v", body, got, want)
		}
	}
	if _, got := h.parseDeduct([]byte(`{"sku":"S","qty":1,"request_id":"r"}`)); got.msg != "" || strings.Contains(got.field, "x") {
		t.Errorf("plain body refused: %+v", got)
	}
}

// BenchmarkParseDeduct: the common body, keys checked, read in place.
func BenchmarkParseDeduct(b *testing.B) {
	h := &hot{maxQty: 100}
	body := []byte(`{"sku":"S1","qty":2,"request_id":"order-1001","user_id":"u-42"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, bad := h.parseDeduct(body); bad.msg != "" {
			b.Fatal(bad.msg)
		}
	}
}
