package daemon

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stockd/stockd/internal/stocktest"
)

// A browser signed in with HTTP Basic attaches the token to any request to
// the admin origin; what a cross-site page can make it send must not act.
func TestAdminCSRF(t *testing.T) {
	e := newEnv(t, 2)
	n := startNode(t, e.config())
	spare := stocktest.StartRedis(t)
	putSKU(t, n, "S", 1000, 4, 50, 5)
	self := "http://" + n.admin

	send := func(method, path, body string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, self+path, strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(raw))
	}
	basic := "Basic " + basicCreds("anyone", testToken)
	routes := []struct{ method, path, body string }{
		{"POST", "/admin/shards/s1/drain", ""},
		{"POST", "/admin/skus/S/rebalance", `{"partitions":2}`},
		{"POST", "/admin/skus/S/in-doubt/resolve", ""},
		{"PUT", "/admin/skus/S", `{"total":5}`},
		{"POST", "/admin/shards", `{"id":"s3","addr":"` + spare.Addr + `"}`},
		{"PUT", "/admin/shards/s2", `{"addr":"127.0.0.1:1"}`},
		{"DELETE", "/admin/shards/s2", ""},
	}
	attacks := []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"form, evil origin", map[string]string{"Authorization": basic, "Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"}, 403},
		{"text/plain, evil origin", map[string]string{"Authorization": basic, "Content-Type": "text/plain", "Origin": "http://evil.example"}, 403},
		{"JSON, evil origin", map[string]string{"Authorization": basic, "Content-Type": "application/json", "Origin": "http://evil.example"}, 403},
		{"JSON, null origin", map[string]string{"Authorization": basic, "Content-Type": "application/json", "Origin": "null"}, 403},
		{"JSON, hot port's origin", map[string]string{"Authorization": basic, "Content-Type": "application/json", "Origin": "http://" + n.hot}, 403},
		{"text/plain, cross-site fetch", map[string]string{"Authorization": basic, "Content-Type": "text/plain", "Sec-Fetch-Site": "cross-site"}, 403},
		{"JSON, same-site fetch", map[string]string{"Authorization": basic, "Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403},
		{"text/plain, no origin", map[string]string{"Authorization": basic, "Content-Type": "text/plain"}, 415},
		{"form, no origin", map[string]string{"Authorization": basic, "Content-Type": "application/x-www-form-urlencoded"}, 415},
		{"multipart, no origin", map[string]string{"Authorization": basic, "Content-Type": "multipart/form-data; boundary=x"}, 415},
		{"no content type, no origin", map[string]string{"Authorization": basic}, 415},
	}
	for _, a := range attacks {
		for _, r := range routes {
			code, body := send(r.method, r.path, r.body, a.hdr)
			var ea errorAnswer
			json.Unmarshal([]byte(body), &ea)
			wantCode := "forbidden"
			if a.want == 415 {
				wantCode = "unsupported_media_type"
			}
			if code != a.want || ea.Code != wantCode {
				t.Errorf("%s: %s %s: %d %s, want %d %s", a.name, r.method, r.path, code, body, a.want, wantCode)
			}
		}
	}
	// Nothing changed: shards, SKU total and partitions.
	type shardView struct{ ID, Addr, State string }
	shards := func() map[string]shardView {
		var list []shardView
		adminDo(t, n, "GET", "/admin/shards", "", &list)
		m := map[string]shardView{}
		for _, s := range list {
			m[s.ID] = s
		}
		return m
	}
	got := shards()
	if len(got) != 2 || got["s1"].State != "active" || got["s2"].State != "active" || got["s2"].Addr != e.shards[1].Addr {
		t.Errorf("shards after the attacks: %+v", got)
	}
	if v := getSKU(t, n, "S"); v.Total != 1000 {
		t.Errorf("SKU total after the attacks: %d, want 1000", v.Total)
	} else if open, _ := openOn(v); open != 4 {
		t.Errorf("open partitions after the attacks: %d, want 4", open)
	}

	// What is allowed: a non-browser client with Bearer (even without a
	// JSON content type, as curl -d sends), and the admin's own origin with
	// Basic and JSON.
	bearer := map[string]string{"Authorization": "Bearer " + testToken, "Content-Type": "application/x-www-form-urlencoded"}
	sameOrigin := map[string]string{"Authorization": basic, "Content-Type": "application/json", "Origin": self, "Sec-Fetch-Site": "same-origin"}
	noBodyJSON := map[string]string{"Authorization": basic, "Content-Type": "application/json; charset=utf-8"}
	if code, body := send("PUT", "/admin/skus/S", `{"total":1100}`, bearer); code != 200 {
		t.Errorf("Bearer restock: %d %s", code, body)
	}
	if code, body := send("POST", "/admin/skus/S/rebalance", `{"partitions":3}`, sameOrigin); code != 200 {
		t.Errorf("same-origin Basic rebalance: %d %s", code, body)
	}
	if code, body := send("POST", "/admin/skus/S/in-doubt/resolve", "", noBodyJSON); code != 200 {
		t.Errorf("Basic resolve with a JSON content type, no origin: %d %s", code, body)
	}
	if code, body := send("POST", "/admin/shards", `{"id":"s3","addr":"`+spare.Addr+`"}`, sameOrigin); code != 201 {
		t.Errorf("same-origin Basic add shard: %d %s", code, body)
	}
	if code, body := send("POST", "/admin/shards/s1/drain", "", map[string]string{"Authorization": "Bearer " + testToken}); code != 200 {
		t.Errorf("Bearer drain: %d %s", code, body)
	}
	// GETs stay simple: a Basic GET without a content type or origin works.
	if code, body := send("GET", "/admin/skus/S", "", map[string]string{"Authorization": basic}); code != 200 {
		t.Errorf("Basic GET: %d %s", code, body)
	}
	v := getSKU(t, n, "S")
	if open, _ := openOn(v); v.Total != 1100 || open != 3 {
		t.Errorf("after the allowed calls: total %d, %d open partitions; want 1100 and 3", v.Total, open)
	}
	if got := shards(); got["s1"].State != "draining" || got["s3"].State != "active" {
		t.Errorf("shards after the allowed calls: %+v", got)
	}
}

func basicCreds(user, pass string) string {
	r, _ := http.NewRequest("GET", "http://x/", nil)
	r.SetBasicAuth(user, pass)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}
