package daemon

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// errorAnswer is a 4xx body as the strict checks write it.
type errorAnswer struct {
	Status string `json:"status"`
	Qty    int64  `json:"qty"`
	Error  string `json:"error"`
	Code   string `json:"code"`
	Field  string `json:"field"`
}

// Keys are matched byte-exactly: a case variant, a look-alike, a duplicate,
// an unknown or an escaped key is a 400 naming the key, and no stock moves.
// encoding/json, which folds case, read {"qty":1,"QTY":100} as qty 100.
func TestDeductStrictKeys(t *testing.T) {
	e := newEnv(t, 1)
	n := startNode(t, e.config())
	putSKU(t, n, "S", 1000, 2, 200, 20)
	before := e.ledger("S")

	cases := []struct {
		name, body, key string
		dup             bool
	}{
		{"case variant", `{"sku":"S","qty":1,"QTY":100,"request_id":"r1"}`, "QTY", false},
		{"case variant only", `{"sku":"S","Qty":100,"request_id":"r2"}`, "Qty", false},
		{"kelvin sign", "{\"\u212aku\":\"S\",\"sku\":\"X\",\"qty\":3,\"request_id\":\"r3\"}", "\u212aku", false},
		{"kelvin sign alone", "{\"s\u212au\":\"S\",\"qty\":3,\"request_id\":\"r4\"}", "s\u212au", false},
		{"duplicate qty", `{"sku":"S","qty":1,"request_id":"r5","qty":50}`, "qty", true},
		{"duplicate sku", `{"sku":"X","qty":1,"request_id":"r6","sku":"S"}`, "sku", true},
		{"unknown key", `{"sku":"S","qty":1,"request_id":"r7","quantity":9}`, "quantity", false},
		{"escaped key", `{"s\u006bu":"S","qty":4,"request_id":"r8"}`, `s\u006bu`, false},
		{"escaped key with slow value", `{"sku":"S","q\u0074y":4.0,"request_id":"r9"}`, `q\u0074y`, false},
		{"unknown key, slow value", `{"sku":"S\u0053","qty":1,"request_id":"r10","x":{"a":[1,2]}}`, "x", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, ea := postJSON(t, n.hot, "/v1/deduct", c.body)
			if code != 400 {
				t.Errorf("status %d %+v, want 400", code, ea)
				return
			}
			want := "unknown key"
			if c.dup {
				want = "duplicate key"
			} else if strings.Contains(c.key, `\`) {
				want = "escaped key"
			}
			quoted, _ := json.Marshal(c.key)
			if ea.Field != c.key || ea.Code != "invalid_argument" || ea.Error != "body: "+want+" "+string(quoted) {
				t.Errorf("answer %+v, want body: %s naming field %q", ea, want, c.key)
			}
		})
	}
	after := e.ledger("S")
	if after.levels != before.levels || after.pool != before.pool || after.streamEntries != 0 {
		t.Errorf("refused bodies touched stock: %d details, %d units taken from partitions", after.streamEntries, before.levels+before.pool-after.levels-after.pool)
	}
	if r := verify(t, n, "S"); !r.OK || r.Reserved != 0 {
		t.Fatalf("verify after refused bodies: ok %v, reserved %d, want 0", r.OK, r.Reserved)
	}
	// The exact spelling still sells.
	if a, err := stocktest.NewBuyer(1).Deduct(n.hot, "S", 2, "ok-1"); err != nil || a.Code != 200 || a.Qty != 2 {
		t.Fatalf("plain deduct: %+v %v", a, err)
	}
}

// postJSON posts body and decodes the whole answer.
func postJSON(t *testing.T, addr, path, body string) (int, errorAnswer) {
	t.Helper()
	resp, err := http.Post("http://"+addr+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ea errorAnswer
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &ea); err != nil {
		t.Fatalf("answer %q is not JSON: %v", raw, err)
	}
	return resp.StatusCode, ea
}

// Confirm and release read {"reservation": …} and nothing else: a case
// variant must not release (or confirm) a reservation.
func TestSettleStrictKeys(t *testing.T) {
	e := newEnv(t, 1)
	n := startNode(t, e.config())
	putSKU(t, n, "S", 100, 1, 50, 5)
	b := stocktest.NewBuyer(2)
	a, err := b.Deduct(n.hot, "S", 3, "settle-1")
	if err != nil || a.Code != 200 {
		t.Fatalf("deduct: %+v %v", a, err)
	}
	tok := a.Reservation
	for _, body := range []string{
		`{"Reservation":"` + tok + `"}`,
		`{"RESERVATION":"` + tok + `"}`,
		`{"reservation":"nope","reservation":"` + tok + `"}`,
		`{"reservation":"` + tok + `","why":"x"}`,
		`{"r\u0065servation":"` + tok + `"}`,
	} {
		for _, path := range []string{"/v1/release", "/v1/confirm"} {
			a, err := b.Post(n.hot, path, body)
			if err != nil {
				t.Fatal(err)
			}
			if a.Code != 400 {
				t.Errorf("%s %s: status %d %q, want 400", path, body, a.Code, a.Status)
			}
		}
	}
	// Still reserved: a release now works, and the units are back.
	if a, err := b.Post(n.hot, "/v1/release", `{"reservation":"`+tok+`"}`); err != nil || a.Code != 200 || a.Status != "released" {
		t.Fatalf("release after refused bodies: %+v %v", a, err)
	}
	r := waitSynced(t, n, "S", 30*time.Second)
	if r.Released != 3 || r.Confirmed != 0 {
		t.Fatalf("after one release: %+v, want released 3, confirmed 0", r)
	}
}

// Admin bodies are strict too: a case variant or a duplicate is a 400,
// not a silent overwrite.
func TestAdminStrictKeys(t *testing.T) {
	e := newEnv(t, 1)
	n := startNode(t, e.config())
	putSKU(t, n, "S", 100, 1, 50, 5)
	cases := []struct{ method, path, body, key string }{
		{"PUT", "/admin/skus/S", `{"total":100,"TOTAL":999}`, "TOTAL"},
		{"PUT", "/admin/skus/S", `{"Total":999}`, "Total"},
		{"PUT", "/admin/skus/S", `{"total":100,"total":999}`, "total"},
		{"PUT", "/admin/skus/S", `{"t\u006ftal":999}`, `t\u006ftal`},
		{"PUT", "/admin/skus/S", "{\"total\":999,\"chun\u212a\":1}", "chun\u212a"},
		{"POST", "/admin/skus/S/rebalance", `{"partitions":1,"Partitions":3}`, "Partitions"},
		{"POST", "/admin/skus/S/rebalance", `{"move":{"partition":0,"shard":"s1","SHARD":"s9"}}`, "SHARD"},
		{"POST", "/admin/skus/S/rebalance", `{"move":{"partition":0,"partition":1,"shard":"s1"}}`, "partition"},
		{"POST", "/admin/shards", `{"id":"s9","ID":"s8","addr":"127.0.0.1:1"}`, "ID"},
		{"PUT", "/admin/shards/s1", `{"addr":"127.0.0.1:1","Addr":"127.0.0.1:2"}`, "Addr"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, "http://"+n.admin+c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+testToken)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var ea errorAnswer
		json.Unmarshal(raw, &ea)
		if resp.StatusCode != 400 || ea.Field != c.key || ea.Code != "invalid_argument" {
			t.Errorf("%s %s %s: %d %s, want 400 naming %q", c.method, c.path, c.body, resp.StatusCode, strings.TrimSpace(string(raw)), c.key)
		}
	}
	v := getSKU(t, n, "S")
	if v.Total != 100 || len(v.Partitions) != 1 {
		t.Errorf("refused admin bodies changed the SKU: total %d, %d partitions", v.Total, len(v.Partitions))
	}
	var shards []struct{ ID, Addr, State string }
	adminDo(t, n, "GET", "/admin/shards", "", &shards)
	if len(shards) != 1 || shards[0].Addr != e.shards[0].Addr {
		t.Errorf("refused admin bodies changed the shards: %+v", shards)
	}
}
