package daemon

import (
	"encoding/json"
	"strconv"
	"testing"
)

// The fast parser reads what it accepts exactly as encoding/json does, and
// gives up on everything else.
func TestParseDeductFast(t *testing.T) {
	cases := []struct {
		body string
		fast bool
	}{
		{`{"sku":"S1","qty":2,"request_id":"r1"}`, true},
		{` { "request_id" : "r1" , "qty" : 7 , "sku" : "S-1.x_2", "user_id":"u9" } `, true},
		{"{\n\t\"sku\":\"S1\",\r\n\"qty\":-3,\"request_id\":\"r\"}", true},
		{`{"sku":"S1","qty":1,"request_id":"r1","extra":true,"n":null,"m":12,"s":"x"}`, true},
		{`{"sku":"S1","qty":1,"request_id":"r1","sku":"S2"}`, true},
		{`{}`, true},
		{`{"sku":"S\u0031","qty":1,"request_id":"r1"}`, false},
		{`{"sku":"S1","qty":1.5,"request_id":"r1"}`, false},
		{`{"sku":"S1","qty":1e1,"request_id":"r1"}`, false},
		{`{"sku":"S1","qty":01,"request_id":"r1"}`, false},
		{`{"sku":"S1","qty":"1","request_id":"r1"}`, false},
		{`{"sku":"S1","qty":99999999999999999999,"request_id":"r1"}`, false},
		{`{"SKU":"S1","qty":1,"request_id":"r1"}`, false},
		{`{"sku":"S1","qty":1,"request_id":"r1","o":{}}`, false},
		{`{"sku":"S1","qty":1,"request_id":"r1"}x`, false},
		{`{"sku":"S1","qty":1,"request_id":"r1",}`, false},
		{`{"sku":"Sé","qty":1,"request_id":"r1"}`, false},
		{`[1]`, false},
		{``, false},
		{`{"sku":"S1"`, false},
	}
	for _, c := range cases {
		var f fastDeduct
		got := parseDeductFast([]byte(c.body), &f)
		if got != c.fast {
			t.Errorf("%q: fast %v, want %v", c.body, got, c.fast)
			continue
		}
		if !got {
			continue
		}
		var b deductBody
		if err := json.Unmarshal([]byte(c.body), &b); err != nil {
			t.Errorf("%q: fast path accepted what encoding/json rejects: %v", c.body, err)
			continue
		}
		if (b.SKU != nil) != f.hasSKU || (b.SKU != nil && *b.SKU != string(f.sku)) {
			t.Errorf("%q: sku %q vs %v", c.body, f.sku, b.SKU)
		}
		if (b.RequestID != nil) != f.hasReq || (b.RequestID != nil && *b.RequestID != string(f.requestID)) {
			t.Errorf("%q: request_id %q vs %v", c.body, f.requestID, b.RequestID)
		}
		if len(b.Qty) > 0 != f.hasQty || (f.hasQty && string(b.Qty) != strconv.FormatInt(f.qty, 10)) {
			t.Errorf("%q: qty %d vs %s", c.body, f.qty, b.Qty)
		}
	}
	body := []byte(`{"sku":"S1","qty":2,"request_id":"r1","user_id":"u"}`)
	if n := testing.AllocsPerRun(100, func() {
		var f fastDeduct
		parseDeductFast(body, &f)
	}); n != 0 {
		t.Errorf("fast parse allocates %.0f times", n)
	}
}

// FuzzParseDeductFast: whatever the fast parser accepts, encoding/json
// accepts with the same values.
func FuzzParseDeductFast(f *testing.F) {
	f.Add(`{"sku":"S1","qty":2,"request_id":"r1"}`)
	f.Add(`{"a":1,"sku":"x","qty":-0,"request_id":"y"}`)
	f.Fuzz(func(t *testing.T, body string) {
		var fd fastDeduct
		if !parseDeductFast([]byte(body), &fd) {
			return
		}
		var b deductBody
		if err := json.Unmarshal([]byte(body), &b); err != nil {
			t.Fatalf("%q: accepted, encoding/json says %v", body, err)
		}
		if fd.hasQty && string(b.Qty) != strconv.FormatInt(fd.qty, 10) {
			if q, err := strconv.ParseInt(string(b.Qty), 10, 64); err != nil || q != fd.qty {
				t.Fatalf("%q: qty %d vs %s", body, fd.qty, b.Qty)
			}
		}
		if fd.hasSKU && (b.SKU == nil || *b.SKU != string(fd.sku)) {
			t.Fatalf("%q: sku differs", body)
		}
	})
}
