package daemon

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// Admin: authentication first, strict bodies, restock keeps what the body
// leaves out.
func TestAdminSKUs(t *testing.T) {
	e := newEnv(t, 2)
	n := startNode(t, e.config())

	do := func(method, path, token, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+n.admin+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}

	// No or wrong token: 401, whether or not the SKU exists.
	for _, tok := range []string{"", "wrong-token"} {
		for _, path := range []string{"/admin/skus/none", "/admin/skus/none/verify", "/metrics"} {
			if code, _ := do("GET", path, tok, ""); code != 401 {
				t.Fatalf("GET %s with token %q: %d, want 401", path, tok, code)
			}
		}
	}
	if code, _ := do("GET", "/healthz", "", ""); code != 200 {
		t.Fatalf("healthz: %d", code)
	}

	bad := []struct{ body, field string }{
		{`{`, "body"},
		{`{}`, "total"},
		{`{"total":-1}`, "total"},
		{`{"total":"10"}`, "total"},
		{`{"total":10,"partitions":0}`, "partitions"},
		{`{"total":10,"partitions":1000}`, "partitions"},
		{`{"total":10,"chunk":0}`, "chunk"},
		{`{"total":10,"chunk":5,"threshold":6}`, "threshold"},
		{`{"total":10,"colour":"red"}`, "colour"},
	}
	for _, c := range bad {
		code, m := do("PUT", "/admin/skus/A1", testToken, c.body)
		// Decode errors name the field in "field" (a refused key is
		// `body: unknown key "colour"`); checks of values start with it.
		msg, _ := m["error"].(string)
		if code != 400 || (!strings.HasPrefix(msg, c.field+":") && m["field"] != c.field) {
			t.Fatalf("PUT %s: %d %v; want 400 naming %s", c.body, code, m, c.field)
		}
	}

	if code, m := do("PUT", "/admin/skus/A1", testToken, `{"total":100,"partitions":3,"chunk":20,"threshold":5}`); code != 201 {
		t.Fatalf("create: %d %v", code, m)
	}
	// Restock with only a total keeps partitions, chunk and threshold.
	code, m := do("PUT", "/admin/skus/A1", testToken, `{"total":150}`)
	if code != 200 || m["total"].(float64) != 150 || m["chunk"].(float64) != 20 || m["threshold"].(float64) != 5 {
		t.Fatalf("restock: %d %v", code, m)
	}
	if code, m := do("PUT", "/admin/skus/A1", testToken, `{"total":150,"partitions":5}`); code != 409 || strings.HasPrefix(m["error"].(string), "conflict: conflict") {
		t.Fatalf("partition change by PUT: %d %v, want 409", code, m)
	}
	if code, m := do("PUT", "/admin/skus/A1", testToken, `{"total":150,"threshold":50}`); code != 400 {
		t.Fatalf("threshold above the SKU's chunk: %d %v, want 400", code, m)
	}
	if code, _ := do("GET", "/admin/skus/nope", testToken, ""); code != 404 {
		t.Fatalf("unknown SKU: %d, want 404", code)
	}
	if r := verify(t, n, "A1"); !r.OK || r.Total != 150 {
		t.Fatalf("verify after restock: %+v", r)
	}
}
