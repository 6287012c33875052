package daemon

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/stockd/stockd/internal/stocktest"
)

const testReadToken = "test-read-token-456"

// send makes one HTTP request with the given headers and returns the
// status and the body.
func send(t *testing.T, method, url, body string, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// adminReq sends an admin request with a Bearer token ("" for none).
func adminReq(t *testing.T, addr, method, path, token, body string) (int, []byte) {
	t.Helper()
	hdr := map[string]string{}
	if token != "" {
		hdr["Authorization"] = "Bearer " + token
	}
	return send(t, method, "http://"+addr+path, body, hdr)
}

func parseMetrics(b []byte) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(strings.NewReader(string(b)))
}

// adminState is what the change routes could change, read with the admin
// token: every SKU's books and partitions, every shard's address and
// state. Values that move by themselves (memory, keys, reachability) are
// left out.
func adminState(t *testing.T, n *node) string {
	t.Helper()
	var skus []struct {
		SKU, Total, Pool, Version, TargetPartitions any
		Partitions                                  []struct{ ID, Shard, State any }
	}
	var shards []struct{ ID, Addr, State, Partitions any }
	var sb strings.Builder
	for path, out := range map[string]any{"/admin/skus": &skus, "/admin/shards": &shards} {
		code, b := adminReq(t, n.admin, "GET", path, testToken, "")
		if code != 200 {
			t.Fatalf("GET %s with the admin token: %d %s", path, code, b)
		}
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	for _, v := range []any{skus, shards} {
		b, _ := json.Marshal(v)
		sb.Write(b)
	}
	return sb.String()
}

// The read token reads everything the admin token reads and changes
// nothing: every change route answers 403 forbidden, Bearer or Basic, and
// the state read back with the admin token is the same. No token or a
// wrong one is 401, as before.
func TestAdminReadToken(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.ReadToken = testReadToken
	n := startNode(t, cfg)
	spare := stocktest.StartRedis(t)
	putSKU(t, n, "R", 1000, 4, 50, 5)

	// Reads: the same status with either token, and 200 or 404.
	reads := []string{"/admin/skus", "/admin/skus/R", "/admin/skus/none", "/admin/skus/R/verify",
		"/admin/skus/none/verify", "/admin/skus/R/in-doubt", "/admin/shards", "/admin/cluster", "/admin/stats",
		"/metrics", "/debug/pprof/", "/debug/pprof/symbol"}
	for _, path := range reads {
		for _, method := range []string{"GET", "HEAD"} {
			want, _ := adminReq(t, n.admin, method, path, testToken, "")
			got, body := adminReq(t, n.admin, method, path, testReadToken, "")
			if got != want || (got != 200 && got != 404) {
				t.Errorf("%s %s with the read token: %d %s; with the admin token %d", method, path, got, body, want)
			}
		}
	}
	code, body := adminReq(t, n.admin, "GET", "/metrics", testReadToken, "")
	if _, err := parseMetrics(body); code != 200 || err != nil {
		t.Errorf("/metrics with the read token: %d, not Prometheus text: %v", code, err)
	}

	// Changes: each would succeed with the admin token (in this order:
	// the drain makes the removal possible).
	changes := []struct{ method, path, body string }{
		{"PUT", "/admin/skus/R", `{"total":5000}`},
		{"PUT", "/admin/skus/NEW", `{"total":10}`},
		{"POST", "/admin/skus/R/rebalance", `{"partitions":2}`},
		{"POST", "/admin/skus/R/in-doubt/resolve", ""},
		{"POST", "/admin/shards", `{"id":"s3","addr":"` + spare.Addr + `"}`},
		{"PUT", "/admin/shards/s1", `{"addr":"` + spare.Addr + `"}`},
		{"POST", "/admin/shards/s2/drain", ""},
		{"DELETE", "/admin/shards/s2", ""},
	}
	creds := []struct {
		name string
		hdr  map[string]string
	}{
		{"Bearer", map[string]string{"Authorization": "Bearer " + testReadToken, "Content-Type": "application/json"}},
		{"Basic, same origin", map[string]string{"Authorization": "Basic " + basicCreds("anyone", testReadToken),
			"Content-Type": "application/json", "Origin": "http://" + n.admin, "Sec-Fetch-Site": "same-origin"}},
	}
	before := adminState(t, n)
	refused := 0
	for _, c := range changes {
		for _, cr := range creds {
			code, body := send(t, c.method, "http://"+n.admin+c.path, c.body, cr.hdr)
			var m struct{ Error, Code string }
			json.Unmarshal(body, &m)
			if code != 403 || m.Code != "forbidden" || m.Error == "" {
				t.Errorf("%s %s with the read token (%s): %d %s; want 403 forbidden", c.method, c.path, cr.name, code, body)
				continue
			}
			refused++
		}
	}
	if after := adminState(t, n); after != before {
		t.Errorf("the read token changed the state:\n before %s\n after  %s", before, after)
	}
	if code, _ := adminReq(t, n.admin, "GET", "/admin/skus/NEW", testToken, ""); code != 404 {
		t.Errorf("GET /admin/skus/NEW after a refused create: %d, want 404", code)
	}
	t.Logf("%d of %d changes with the read token refused", refused, len(changes)*len(creds))

	// No token, a wrong one: 401, reads and changes alike.
	for _, tok := range []string{"", "wrong-token-789"} {
		for _, r := range []struct{ method, path, body string }{{"GET", "/admin/skus", ""}, {"GET", "/metrics", ""}, changes[0]} {
			if code, body := adminReq(t, n.admin, r.method, r.path, tok, r.body); code != 401 {
				t.Errorf("%s %s with token %q: %d %s; want 401", r.method, r.path, tok, code, body)
			}
		}
	}
	// The admin token still changes things.
	if code, body := adminReq(t, n.admin, "PUT", "/admin/skus/R", testToken, `{"total":5000}`); code != 200 {
		t.Errorf("restock with the admin token: %d %s", code, body)
	}
}

// metrics_addr serves GET /metrics without a token and nothing else; the
// admin port's /metrics still needs one; the listener closes with the node.
func TestMetricsAddr(t *testing.T) {
	e := newEnv(t, 1)
	cfg := e.config()
	cfg.MetricsAddr = "127.0.0.1:0"
	n := startNode(t, cfg)
	putSKU(t, n, "M", 100, 2, 10, 2)
	addr := n.d.MetricsAddr()
	if addr == "" {
		t.Fatal("MetricsAddr is empty with metrics_addr set")
	}

	code, body := send(t, "GET", "http://"+addr+"/metrics", "", nil)
	fams, err := parseMetrics(body)
	if code != 200 || err != nil {
		t.Fatalf("GET /metrics on metrics_addr without a token: %d, parse error %v", code, err)
	}
	if _, ok := fams["stockd_build_info"]; !ok {
		t.Errorf("metrics_addr /metrics has no stockd_build_info; families: %d", len(fams))
	}
	for _, path := range []string{"/", "/healthz", "/admin/skus", "/admin/skus/M", "/metrics/x", "/debug/pprof/", "/login"} {
		if code, _ := send(t, "GET", "http://"+addr+path, "", nil); code != 404 {
			t.Errorf("GET %s on metrics_addr: %d, want 404", path, code)
		}
	}
	if code, _ := adminReq(t, n.admin, "GET", "/metrics", "", ""); code != 401 {
		t.Errorf("GET /metrics on the admin port without a token: %d, want 401", code)
	}
	// Ambiguous framing is refused as on the admin port.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	head := make([]byte, 12)
	if _, err := io.ReadFull(c, head); err != nil || string(head) != "HTTP/1.1 400" {
		t.Errorf("Content-Length with Transfer-Encoding on metrics_addr: %q %v, want HTTP/1.1 400", head, err)
	}
	c.Close()

	n.stop()
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("metrics_addr %s still accepts connections after the node stopped", addr)
	}
}

// The demo's published tokens (configs/stockd.yaml, the README) stop a
// node that is not in demo mode, with an error naming the field; in demo
// mode the node starts and takes them.
func TestDemoTokensRefusedOutsideDemo(t *testing.T) {
	e := newEnv(t, 1)
	for _, c := range []struct {
		field string
		set   func(*Config)
		want  string
	}{
		{"admin_token", func(c *Config) { c.AdminToken = DemoAdminToken },
			`admin_token: "dev-token" is the demo's token; set your own or demo: true`},
		{"read_token", func(c *Config) { c.ReadToken = DemoReadToken },
			`read_token: "dev-read-token" is the demo's token; set your own or demo: true`},
	} {
		cfg := e.config()
		c.set(&cfg)
		if _, err := New(cfg, NewLogger(newTestWriter(t), cfg.LogLevel)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: start-up error %v; want one containing %q", c.field, err, c.want)
		}
	}
	cfg := e.config()
	cfg.AdminToken, cfg.ReadToken, cfg.Demo = DemoAdminToken, DemoReadToken, true
	n := startNode(t, cfg)
	for _, tok := range []string{DemoAdminToken, DemoReadToken} {
		if code, _ := adminReq(t, n.admin, "GET", "/admin/skus", tok, ""); code != 200 {
			t.Errorf("demo mode: GET /admin/skus with %q: %d, want 200", tok, code)
		}
	}
	if code, _ := adminReq(t, n.admin, "PUT", "/admin/skus/D", DemoReadToken, `{"total":1}`); code != 403 {
		t.Errorf("demo mode: PUT with the read token: %d, want 403", code)
	}
}
