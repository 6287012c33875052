package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/stockd/stockd/api"
	"github.com/stockd/stockd/daemon/hot"
	"github.com/stockd/stockd/internal/apierr"
	"github.com/stockd/stockd/internal/stocktest"
)

// TestOpenAPI drives a real node through every route of both APIs and
// every error status it can be brought to answer, and validates each
// request and answer against api/openapi.yaml; it also holds the
// document's routes equal to the ones the server registers, and its error
// codes equal to apierr's. So the document cannot drift from the code.
// The log ends with the routes x statuses coverage.
func TestOpenAPI(t *testing.T) {
	v := newAPIValidator(t)
	v.checkCodes()

	e := newEnv(t, 1)
	cfg, my, _ := e.proxied(e.config())
	cfg.ReadToken = testReadToken
	// One deduction in progress per SKU: a second one is shed (429).
	cfg.Limits.SKUInflight = 1
	// /readyz answers 503 while a stopping node drains.
	cfg.ShutdownDelay = 5 * time.Second
	cfg.RequestTimeout = 3 * time.Second
	// A request that does not arrive in time is answered 408.
	cfg.HTTP.ReadTimeout = 2 * time.Second
	n := startNode(t, cfg)
	v.n = n
	v.checkRoutes()

	v.hotRoutes(t)
	v.saleRules(t)
	v.extend(t)
	v.adminSKUs(t)
	v.listPages(t)
	v.archive(t)
	v.adminShards(t)
	v.adminOther(t)
	v.outsideDocument(t)
	v.unavailable(t, e, my)
	v.noActiveShard(t)
	v.notReady(t)
	v.report()
}

// exchange is one request and the status it must get.
type exchange struct {
	port   string // "hot" or "admin"
	method string
	path   string // with its query
	body   string
	auth   string // "" (admin token on the admin port), "none", "read", "wrong", "basic", "basic-read"
	header map[string]string
	want   int
	// invalid: the request breaks the document on purpose (a 400, a 413):
	// it is not required to validate.
	invalid bool
}

type apiValidator struct {
	t      *testing.T
	doc    *openapi3.T
	router routers.Router
	n      *node
	client *http.Client
	opts   *openapi3filter.Options

	mu      sync.Mutex
	seen    map[string]int // "METHOD /doc/path STATUS" -> exchanges
	outside map[string]int // answers for routes outside the document
}

var registerTextDecoders sync.Once

func newAPIValidator(t *testing.T) *apiValidator {
	t.Helper()
	registerTextDecoders.Do(func() {
		for _, ct := range []string{"text/html", "text/css", "text/javascript"} {
			openapi3filter.RegisterBodyDecoder(ct, openapi3filter.PlainBodyDecoder)
		}
	})
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatalf("api/openapi.yaml: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("api/openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	if doc.OpenAPIMajorMinor() != "3.1" {
		t.Fatalf("api/openapi.yaml: openapi %q, want 3.1", doc.OpenAPI)
	}
	// Route by path alone: the servers name the two ports by their
	// defaults, and the test's node listens on others.
	routed, err := loader.LoadFromData(api.OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	routed.Servers = nil
	for _, pi := range routed.Paths.Map() {
		pi.Servers = nil
	}
	router, err := gorillamux.NewRouter(routed)
	if err != nil {
		t.Fatal(err)
	}
	return &apiValidator{
		t: t, doc: doc, router: router,
		client: &http.Client{
			Timeout: 60 * time.Second,
			// /login's 303 is an answer to check, not to follow.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		opts: &openapi3filter.Options{
			AuthenticationFunc:    openapi3filter.NoopAuthenticationFunc,
			IncludeResponseStatus: true,
			MultiError:            true,
		},
		seen:    map[string]int{},
		outside: map[string]int{},
	}
}

// documented returns every "METHOD /path" of the document.
func (v *apiValidator) documented() []string {
	var out []string
	for path, pi := range v.doc.Paths.Map() {
		for method := range pi.Operations() {
			out = append(out, method+" "+path)
		}
	}
	sort.Strings(out)
	return out
}

// checkRoutes holds the document's routes equal to the server's: the
// patterns the running node's admin API registered, the hot endpoint's
// hot.Routes, and every path literal of hot.handle covered by hot.Routes.
func (v *apiValidator) checkRoutes() {
	t := v.t
	var served []string
	if len(v.n.d.adminRoutes) == 0 {
		t.Fatal("the node registered no admin routes")
	}
	for _, p := range v.n.d.adminRoutes {
		// net/http patterns to document paths: "/{$}" is "/", a
		// subtree ("/ui/") is its files ("/ui/{file}").
		p = strings.Replace(p, "/{$}", "/", 1)
		served = append(served, p)
	}
	served = append(served, hot.Routes...)
	doc := v.documented()
	// A route matches an operation of the document when it is the
	// same, when it is a literal path a template of the document takes
	// ("/debug/pprof/profile" and "/debug/pprof/{profile}"), or when it
	// is a subtree the operation is in ("/ui/" and "/ui/{file}").
	matches := func(route, op string) bool {
		if route == op {
			return true
		}
		method, path, _ := strings.Cut(route, " ")
		opMethod, opPath, _ := strings.Cut(op, " ")
		if method != opMethod {
			return false
		}
		if strings.HasSuffix(path, "/") && strings.HasPrefix(opPath, path) && len(opPath) > len(path) {
			return true
		}
		rs, os := strings.Split(path, "/"), strings.Split(opPath, "/")
		if len(rs) != len(os) {
			return false
		}
		for i := range rs {
			if rs[i] != os[i] && !(strings.HasPrefix(os[i], "{") && !strings.HasPrefix(rs[i], "{")) {
				return false
			}
		}
		return true
	}
	for _, r := range served {
		if !slices.ContainsFunc(doc, func(op string) bool { return matches(r, op) }) {
			t.Errorf("route %q is served but not in api/openapi.yaml", r)
		}
	}
	for _, op := range doc {
		if !slices.ContainsFunc(served, func(r string) bool { return matches(r, op) }) {
			t.Errorf("api/openapi.yaml documents %q, which no server registers", op)
		}
	}
	// hot.handle routes with a switch on the path: each literal it
	// compares a path with must be a route above (or a prefix of one).
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "hot/hot.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "handle" {
			continue
		}
		ast.Inspect(fn.Body, func(nd ast.Node) bool {
			lit, ok := nd.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, _ := strconv.Unquote(lit.Value)
			if !strings.HasPrefix(s, "/") {
				return true
			}
			if !slices.ContainsFunc(hot.Routes, func(r string) bool {
				_, path, _ := strings.Cut(r, " ")
				return strings.HasPrefix(path, s)
			}) {
				t.Errorf("hot.handle routes %q, which hot.Routes (and so api/openapi.yaml) does not list", s)
			}
			return true
		})
	}
}

// checkCodes holds the document's ErrorCode enum equal to apierr's codes.
func (v *apiValidator) checkCodes() {
	s := v.doc.Components.Schemas["ErrorCode"]
	if s == nil || s.Value == nil {
		v.t.Fatal("api/openapi.yaml: no ErrorCode schema")
	}
	var doc, code []string
	for _, e := range s.Value.Enum {
		doc = append(doc, fmt.Sprint(e))
	}
	for _, c := range apierr.Codes() {
		code = append(code, string(c))
		if !strings.Contains(s.Value.Description, strconv.Itoa(c.Status())+" ") {
			v.t.Errorf("ErrorCode's description does not give status %d (%s)", c.Status(), c)
		}
	}
	sort.Strings(doc)
	sort.Strings(code)
	if !slices.Equal(doc, code) {
		v.t.Errorf("ErrorCode enum %v, apierr codes %v", doc, code)
	}
}

// request builds ex's request.
func (v *apiValidator) request(ex exchange) *http.Request {
	addr := v.n.hot
	if ex.port == "admin" {
		addr = v.n.admin
	}
	var body io.Reader = http.NoBody
	if ex.body != "" {
		body = strings.NewReader(ex.body)
	}
	req, err := http.NewRequest(ex.method, "http://"+addr+ex.path, body)
	if err != nil {
		v.t.Fatal(err)
	}
	if ex.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if ex.port == "admin" {
		switch ex.auth {
		case "":
			req.Header.Set("Authorization", "Bearer "+testToken)
		case "read":
			req.Header.Set("Authorization", "Bearer "+testReadToken)
		case "wrong":
			req.Header.Set("Authorization", "Bearer not-the-token")
		case "basic":
			req.SetBasicAuth("ops", testToken)
		case "basic-read":
			req.SetBasicAuth("ops", testReadToken)
		}
	}
	for k, val := range ex.header {
		if val == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, val)
		}
	}
	return req
}

// do sends ex, checks its status, validates the request and the answer
// against the document, and returns the answer's body.
func (v *apiValidator) do(t *testing.T, ex exchange) []byte {
	t.Helper()
	resp, err := v.client.Do(v.request(ex))
	if err != nil {
		t.Fatalf("%s %s: %v", ex.method, ex.path, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: %v", ex.method, ex.path, err)
	}
	if resp.StatusCode != ex.want {
		t.Errorf("%s %s (%s): status %d %s, want %d", ex.method, ex.path, ex.port, resp.StatusCode, body, ex.want)
	}
	v.validate(t, ex, resp, body)
	return body
}

func (v *apiValidator) validate(t *testing.T, ex exchange, resp *http.Response, body []byte) {
	t.Helper()
	what := fmt.Sprintf("%s %s (%s) -> %d %s", ex.method, ex.path, ex.port, resp.StatusCode, bytes.TrimSpace(body))
	req := v.request(ex)
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		// Outside the document: an unknown path or an undeclared method,
		// which every route answers the same way (info.description).
		v.outsideAnswer(t, what, resp.StatusCode, resp.Header, body)
		return
	}
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: v.opts}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil && !ex.invalid {
		t.Errorf("%s: the request does not fit api/openapi.yaml: %v", what, err)
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Body:                   io.NopCloser(bytes.NewReader(body)),
		Options:                v.opts,
	}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("%s: the answer does not fit api/openapi.yaml: %v", what, err)
	}
	v.checkCode(t, what, resp.StatusCode, resp.Header, body)
	v.mu.Lock()
	v.seen[route.Method+" "+route.Path+" "+strconv.Itoa(resp.StatusCode)]++
	v.mu.Unlock()
}

// checkCode: a JSON error answer's code is answered with its status.
func (v *apiValidator) checkCode(t *testing.T, what string, status int, h http.Header, body []byte) {
	t.Helper()
	if status < 400 || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		return
	}
	var a struct {
		Code   string  `json:"code"`
		Error  *string `json:"error"`
		Status *string `json:"status"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if a.Status != nil && a.Error == nil {
		return // an outcome (409 sold_out, 503 not ready), not an error
	}
	if a.Code == "" {
		t.Errorf("%s: an error answer without a code", what)
		return
	}
	if got := apierr.Code(a.Code).Status(); got != status {
		t.Errorf("%s: code %s is answered with %d, apierr says %d", what, a.Code, status, got)
	}
}

// outsideAnswer checks an answer for a route outside the document (an
// unknown path, an undeclared method, refused framing) against the error
// schema its status documents.
func (v *apiValidator) outsideAnswer(t *testing.T, what string, status int, h http.Header, body []byte) {
	t.Helper()
	schema := map[int]string{400: "ErrorInvalidArgument", 404: "ErrorNotFound", 405: "ErrorMethodNotAllowed", 408: "ErrorRequestTimeout"}[status]
	if schema == "" {
		t.Errorf("%s: outside the document, want 400, 404, 405 or 408", what)
		return
	}
	if status == http.StatusMethodNotAllowed && h.Get("Allow") == "" {
		t.Errorf("%s: 405 without Allow", what)
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: content type %q", what, ct)
	}
	var val any
	if err := json.Unmarshal(body, &val); err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if err := v.doc.Components.Schemas[schema].Value.VisitJSON(val, openapi3.EnableJSONSchema2020()); err != nil {
		t.Errorf("%s: does not fit %s: %v", what, schema, err)
	}
	v.checkCode(t, what, status, h, body)
	v.mu.Lock()
	v.outside[strconv.Itoa(status)+" "+schema]++
	v.mu.Unlock()
}

func (v *apiValidator) deduct(t *testing.T, sku, reqID string, want int) string {
	t.Helper()
	body := v.do(t, exchange{port: "hot", method: "POST", path: "/v1/deduct", body: fmt.Sprintf(`{"sku":%q,"qty":1,"request_id":%q}`, sku, reqID), want: want})
	var a struct {
		Reservation string `json:"reservation"`
	}
	json.Unmarshal(body, &a)
	return a.Reservation
}

func settleBodyOf(tok string) string { return fmt.Sprintf(`{"reservation":%q}`, tok) }

// answerOf reads an answer's status (an outcome's) and field (a 400's).
func answerOf(body []byte) (status, field string) {
	var a struct {
		Status string `json:"status"`
		Field  string `json:"field"`
	}
	json.Unmarshal(body, &a)
	return a.Status, a.Field
}

// wantField fails unless body is an error naming field.
func wantField(t *testing.T, what string, body []byte, field string) {
	t.Helper()
	if _, got := answerOf(body); got != field {
		t.Errorf("%s: field %q, want %q: %s", what, got, field, body)
	}
}

// wantStatus fails unless body is an answer with status.
func wantStatus(t *testing.T, what string, body []byte, status string) {
	t.Helper()
	if got, _ := answerOf(body); got != status {
		t.Errorf("%s: status %q, want %q: %s", what, got, status, body)
	}
}

func (v *apiValidator) hotRoutes(t *testing.T) {
	hot := func(method, path, body string, want int, invalid bool) []byte {
		return v.do(t, exchange{port: "hot", method: method, path: path, body: body, want: want, invalid: invalid})
	}
	hot("GET", "/healthz", "", 200, false)
	hot("GET", "/readyz", "", 200, false)
	v.do(t, exchange{port: "admin", method: "PUT", path: "/admin/skus/S1", body: `{"total":100,"partitions":2,"chunk":10,"threshold":2}`, want: 201})

	tok1 := v.deduct(t, "S1", "r1", 200)
	hot("POST", "/v1/deduct", `{"sku":"S1","qty":2,"request_id":"r1"}`, 422, false)
	hot("POST", "/v1/deduct", `{"sku":"nope","qty":1,"request_id":"r9"}`, 404, false)
	hot("POST", "/v1/deduct", `{"sku":"S1","qty":0,"request_id":"r9"}`, 400, true)
	hot("POST", "/v1/deduct", `{"sku":"S1","qty":1,"request_id":"r9","pad":"`+strings.Repeat("p", 5000)+`"}`, 413, true)
	v.do(t, exchange{port: "admin", method: "PUT", path: "/admin/skus/gone", body: `{"total":1,"partitions":1,"chunk":1,"threshold":1}`, want: 201})
	v.deduct(t, "gone", "g1", 200)
	v.deduct(t, "gone", "g2", 409) // sold out

	hot("GET", "/v1/stock/S1", "", 200, false)
	hot("GET", "/v1/stock/nope", "", 404, false)
	hot("GET", "/v1/stock/S%7B1%7D", "", 400, true)

	hot("POST", "/v1/confirm", settleBodyOf(tok1), 200, false)
	hot("POST", "/v1/confirm", settleBodyOf(tok1), 200, false) // idempotent
	hot("POST", "/v1/release", settleBodyOf(tok1), 409, false)
	tok2 := v.deduct(t, "S1", "r2", 200)
	hot("POST", "/v1/release", settleBodyOf(tok2), 200, false)
	hot("POST", "/v1/confirm", settleBodyOf(tok2), 409, false)
	for _, op := range []string{"/v1/confirm", "/v1/release"} {
		hot("POST", op, settleBodyOf("bogus-token"), 404, false)
		hot("POST", op, `{}`, 400, true)
		hot("POST", op, `{"reservation":"`+strings.Repeat("t", 5000)+`"}`, 413, false)
	}
}

func (v *apiValidator) adminSKUs(t *testing.T) {
	adm := func(ex exchange) []byte { ex.port = "admin"; return v.do(t, ex) }
	adm(exchange{method: "GET", path: "/healthz", auth: "none", want: 200})
	if got := adm(exchange{method: "GET", path: "/openapi.yaml", auth: "none", want: 200}); !bytes.Equal(got, api.OpenAPI) {
		t.Error("GET /openapi.yaml does not serve api/openapi.yaml")
	}
	for _, auth := range []string{"", "read", "basic", "basic-read"} {
		adm(exchange{method: "GET", path: "/admin/skus", auth: auth, want: 200})
	}
	adm(exchange{method: "GET", path: "/admin/skus", auth: "none", want: 401})
	adm(exchange{method: "GET", path: "/admin/skus", auth: "wrong", want: 401})

	adm(exchange{method: "GET", path: "/admin/skus/S1", want: 200})
	adm(exchange{method: "GET", path: "/admin/skus/nope", want: 404})
	adm(exchange{method: "GET", path: "/admin/skus/S%7B1", want: 400, invalid: true})
	adm(exchange{method: "GET", path: "/admin/skus/S1", auth: "none", want: 401})

	put := `{"total":10,"partitions":1,"chunk":5,"threshold":1}`
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: put, auth: "read", want: 403})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: put, auth: "none", want: 401})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: put, auth: "basic", header: map[string]string{"Content-Type": "text/plain"}, want: 415, invalid: true})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: put, auth: "basic", header: map[string]string{"Origin": "http://evil.example"}, want: 403})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: put, auth: "basic", header: map[string]string{"Origin": "http://" + v.n.admin, "Sec-Fetch-Site": "same-origin"}, want: 201})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: `{"total":20}`, want: 200})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: `{"total":-1}`, want: 400, invalid: true})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: `{"Total":1}`, want: 400, invalid: true})
	adm(exchange{method: "PUT", path: "/admin/skus/S%7B2", body: put, want: 400, invalid: true})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: `{"total":1,"pad":"` + strings.Repeat("p", 70<<10) + `"}`, want: 413, invalid: true})
	adm(exchange{method: "PUT", path: "/admin/skus/S2", body: `{"total":20,"partitions":3}`, want: 409})

	adm(exchange{method: "GET", path: "/admin/skus/S1/verify", want: 200})
	adm(exchange{method: "GET", path: "/admin/skus/nope/verify", want: 404})
	adm(exchange{method: "GET", path: "/admin/skus/S%7B/verify", want: 400, invalid: true})
	adm(exchange{method: "GET", path: "/admin/skus/S1/verify", auth: "none", want: 401})

	adm(exchange{method: "GET", path: "/admin/skus/S1/in-doubt", want: 200})
	adm(exchange{method: "GET", path: "/admin/skus/nope/in-doubt", want: 404})
	adm(exchange{method: "GET", path: "/admin/skus/S%7B/in-doubt", want: 400, invalid: true})
	adm(exchange{method: "GET", path: "/admin/skus/S1/in-doubt", auth: "none", want: 401})
	adm(exchange{method: "POST", path: "/admin/skus/S1/in-doubt/resolve", want: 200})
	adm(exchange{method: "POST", path: "/admin/skus/nope/in-doubt/resolve", want: 404})
	adm(exchange{method: "POST", path: "/admin/skus/S%7B/in-doubt/resolve", want: 400, invalid: true})
	adm(exchange{method: "POST", path: "/admin/skus/S1/in-doubt/resolve", auth: "none", want: 401})
	adm(exchange{method: "POST", path: "/admin/skus/S1/in-doubt/resolve", auth: "read", want: 403})
	adm(exchange{method: "POST", path: "/admin/skus/S1/in-doubt/resolve", auth: "basic", want: 415})

	rb := "/admin/skus/S2/rebalance"
	adm(exchange{method: "POST", path: rb, body: `{"partitions":2}`, want: 200})
	adm(exchange{method: "POST", path: rb, body: `{"partitions":1}`, want: 200}) // closes one
	var sku struct {
		Partitions []struct {
			ID    int    `json:"id"`
			State string `json:"state"`
		} `json:"partitions"`
	}
	json.Unmarshal(adm(exchange{method: "GET", path: "/admin/skus/S2", want: 200}), &sku)
	closed := -1
	for _, p := range sku.Partitions {
		if p.State != "open" {
			closed = p.ID
		}
	}
	if closed < 0 {
		t.Fatalf("no closed partition after a rebalance to 1: %+v", sku)
	}
	adm(exchange{method: "POST", path: rb, body: fmt.Sprintf(`{"move":{"partition":%d,"shard":"s1"}}`, closed), want: 400})
	adm(exchange{method: "POST", path: rb, body: `{"partitions":1,"pin":["s1"]}`, want: 400, invalid: true})
	adm(exchange{method: "POST", path: rb, body: `{"partitions":"x"}`, want: 400, invalid: true})
	adm(exchange{method: "POST", path: rb, body: `{"pin":["` + strings.Repeat("s", 70<<10) + `"]}`, want: 413})
	adm(exchange{method: "POST", path: "/admin/skus/nope/rebalance", body: `{"partitions":1}`, want: 404})
	adm(exchange{method: "POST", path: "/admin/skus/S%7B/rebalance", body: `{"partitions":1}`, want: 400, invalid: true})
	adm(exchange{method: "POST", path: rb, body: `{"partitions":1}`, auth: "none", want: 401})
	adm(exchange{method: "POST", path: rb, body: `{"partitions":1}`, auth: "read", want: 403})
	adm(exchange{method: "POST", path: rb, body: `{"partitions":1}`, auth: "basic", header: map[string]string{"Content-Type": "text/plain"}, want: 415, invalid: true})
}

func (v *apiValidator) adminShards(t *testing.T) {
	adm := func(ex exchange) []byte { ex.port = "admin"; return v.do(t, ex) }
	r := stocktest.StartRedis(t)
	adm(exchange{method: "GET", path: "/admin/shards", want: 200})
	adm(exchange{method: "GET", path: "/admin/shards", auth: "none", want: 401})
	add := fmt.Sprintf(`{"id":"s2","addr":%q}`, r.Addr)
	adm(exchange{method: "POST", path: "/admin/shards", body: add, auth: "read", want: 403})
	adm(exchange{method: "POST", path: "/admin/shards", body: add, auth: "none", want: 401})
	adm(exchange{method: "POST", path: "/admin/shards", body: add, auth: "basic", header: map[string]string{"Content-Type": "text/plain"}, want: 415, invalid: true})
	adm(exchange{method: "POST", path: "/admin/shards", body: `{"id":"s 2","addr":"x:1"}`, want: 400, invalid: true})
	adm(exchange{method: "POST", path: "/admin/shards", body: `{"id":"s3","addr":"` + strings.Repeat("a", 70<<10) + `"}`, want: 413})
	adm(exchange{method: "POST", path: "/admin/shards", body: add, want: 201})
	adm(exchange{method: "POST", path: "/admin/shards", body: add, want: 201}) // the same again: nothing to change
	adm(exchange{method: "POST", path: "/admin/shards", body: `{"id":"s2","addr":"127.0.0.1:1"}`, want: 409})

	move := fmt.Sprintf(`{"addr":%q}`, r.Addr)
	adm(exchange{method: "PUT", path: "/admin/shards/s2", body: move, want: 200})
	adm(exchange{method: "PUT", path: "/admin/shards/nope", body: move, want: 404})
	adm(exchange{method: "PUT", path: "/admin/shards/s2", body: `{"addr":"nohostport"}`, want: 400})
	adm(exchange{method: "PUT", path: "/admin/shards/s2", body: `{"addr":"127.0.0.1:1"}`, want: 409})
	adm(exchange{method: "PUT", path: "/admin/shards/s2", body: `{"addr":"` + strings.Repeat("a", 70<<10) + `"}`, want: 413})
	adm(exchange{method: "PUT", path: "/admin/shards/s2", body: move, auth: "none", want: 401})
	adm(exchange{method: "PUT", path: "/admin/shards/s2", body: move, auth: "read", want: 403})
	adm(exchange{method: "PUT", path: "/admin/shards/s2", body: move, auth: "basic", header: map[string]string{"Content-Type": "text/plain"}, want: 415, invalid: true})

	adm(exchange{method: "POST", path: "/admin/shards/s2/drain", want: 200})
	adm(exchange{method: "POST", path: "/admin/shards/nope/drain", want: 404})
	adm(exchange{method: "POST", path: "/admin/shards/s2/drain", auth: "none", want: 401})
	adm(exchange{method: "POST", path: "/admin/shards/s2/drain", auth: "read", want: 403})
	adm(exchange{method: "POST", path: "/admin/shards/s2/drain", auth: "basic", want: 415})
	adm(exchange{method: "DELETE", path: "/admin/shards/s1", want: 409}) // holds S1's partitions
	adm(exchange{method: "DELETE", path: "/admin/shards/s2", auth: "none", want: 401})
	adm(exchange{method: "DELETE", path: "/admin/shards/s2", auth: "read", want: 403})
	adm(exchange{method: "DELETE", path: "/admin/shards/s2", auth: "basic", want: 415})
	adm(exchange{method: "DELETE", path: "/admin/shards/s2", want: 200})
	adm(exchange{method: "DELETE", path: "/admin/shards/nope", want: 404})
}

func (v *apiValidator) adminOther(t *testing.T) {
	adm := func(ex exchange) []byte { ex.port = "admin"; return v.do(t, ex) }
	adm(exchange{method: "GET", path: "/admin/cluster", want: 200})
	adm(exchange{method: "GET", path: "/admin/cluster", auth: "none", want: 401})
	adm(exchange{method: "GET", path: "/admin/stats", auth: "read", want: 200})
	adm(exchange{method: "GET", path: "/admin/stats", auth: "none", want: 401})
	adm(exchange{method: "GET", path: "/metrics", auth: "read", want: 200})
	adm(exchange{method: "GET", path: "/metrics", auth: "none", want: 401})
	adm(exchange{method: "GET", path: "/debug/pprof/", want: 200})
	adm(exchange{method: "GET", path: "/debug/pprof/", auth: "none", want: 401})
	adm(exchange{method: "GET", path: "/debug/pprof/heap?debug=1", want: 200})
	adm(exchange{method: "GET", path: "/debug/pprof/goroutine", want: 200})
	adm(exchange{method: "GET", path: "/debug/pprof/nope", want: 404})
	adm(exchange{method: "GET", path: "/debug/pprof/heap", auth: "none", want: 401})
	adm(exchange{method: "GET", path: "/", auth: "none", want: 200})
	adm(exchange{method: "GET", path: "/login", auth: "none", want: 401})
	adm(exchange{method: "GET", path: "/login", auth: "basic-read", want: 303})
	adm(exchange{method: "GET", path: "/ui/status.css", auth: "none", want: 200})
	adm(exchange{method: "GET", path: "/ui/status.js", auth: "none", want: 200})
	adm(exchange{method: "GET", path: "/ui/nope.js", auth: "none", want: 404})
	adm(exchange{method: "GET", path: "/ui/index.html", auth: "none", want: 404})
}

// outsideDocument: unknown paths, undeclared methods and refused framing
// on both ports answer the documented error schema.
func (v *apiValidator) outsideDocument(t *testing.T) {
	for _, port := range []string{"hot", "admin"} {
		v.do(t, exchange{port: port, method: "GET", path: "/no/such/route", want: 404})
	}
	v.do(t, exchange{port: "hot", method: "GET", path: "/v1/deduct", want: 405})
	v.do(t, exchange{port: "hot", method: "DELETE", path: "/v1/stock/S1", want: 405})
	v.do(t, exchange{port: "admin", method: "POST", path: "/admin/skus", body: "{}", want: 405})
	v.do(t, exchange{port: "admin", method: "DELETE", path: "/admin/skus/S1/verify", want: 405})

	v.rawExchange(t, "hot", v.n.hot, "POST /v1/deduct HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"sku\":", 408)
	smuggled := "POST /v1/deduct HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nB\r\n0\r\n\r\n"
	for port, addr := range map[string]string{"hot": v.n.hot, "admin": v.n.admin} {
		v.rawExchange(t, port, addr, smuggled, 400)
	}
}

// rawExchange writes raw bytes to addr and checks the answer against the
// error schema of want.
func (v *apiValidator) rawExchange(t *testing.T, port, addr, raw string, want int) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, raw)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s: %q: %v", port, raw, err)
	}
	body, _ := io.ReadAll(resp.Body)
	what := fmt.Sprintf("raw %q (%s) -> %d %s", raw, port, resp.StatusCode, body)
	if resp.StatusCode != want {
		t.Errorf("%s, want %d", what, want)
	}
	v.outsideAnswer(t, what, resp.StatusCode, resp.Header, body)
}

// saleRules: a SKU with a per-user limit and a sale window answers
// not_open, closed and limit_reached (409 outcomes), and 400 naming
// user_id for a deduction without one; bad rules are 400s.
func (v *apiValidator) saleRules(t *testing.T) {
	adm := func(body string, want int, invalid bool) []byte {
		return v.do(t, exchange{port: "admin", method: "PUT", path: "/admin/skus/R1", body: body, want: want, invalid: invalid})
	}
	ded := func(body string, want int) []byte {
		return v.do(t, exchange{port: "hot", method: "POST", path: "/v1/deduct", body: body, want: want})
	}
	at := func(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339) }
	var view struct {
		PerUserLimit int64   `json:"per_user_limit"`
		OpensAt      *string `json:"opens_at"`
	}
	json.Unmarshal(adm(fmt.Sprintf(`{"total":10,"partitions":1,"chunk":5,"threshold":1,"per_user_limit":2,"opens_at":%q}`, at(time.Hour)), 201, false), &view)
	if view.PerUserLimit != 2 || view.OpensAt == nil {
		t.Errorf("PUT R1 with rules: the view shows per_user_limit %d, opens_at %v", view.PerUserLimit, view.OpensAt)
	}
	wantStatus(t, "deduct before opens_at", ded(`{"sku":"R1","qty":1,"request_id":"rule-1","user_id":"u1"}`, 409), "not_open")
	adm(`{"total":10,"opens_at":null}`, 200, false)
	wantField(t, "deduct without user_id on a limited SKU", ded(`{"sku":"R1","qty":1,"request_id":"rule-2"}`, 400), "user_id")
	// not_open took nothing: the same request id buys once the sale opens.
	ded(`{"sku":"R1","qty":1,"request_id":"rule-1","user_id":"u1"}`, 200)
	ded(`{"sku":"R1","qty":1,"request_id":"rule-3","user_id":"u1"}`, 200)
	wantStatus(t, "deduct beyond the limit", ded(`{"sku":"R1","qty":1,"request_id":"rule-4","user_id":"u1"}`, 409), "limit_reached")
	adm(fmt.Sprintf(`{"total":10,"opens_at":%q,"closes_at":%q}`, at(-2*time.Hour), at(-time.Hour)), 200, false)
	wantStatus(t, "deduct after closes_at", ded(`{"sku":"R1","qty":1,"request_id":"rule-5","user_id":"u2"}`, 409), "closed")
	adm(`{"total":10,"opens_at":"","closes_at":null,"per_user_limit":0}`, 200, false)
	wantField(t, "a negative limit", adm(`{"total":10,"per_user_limit":-1}`, 400, true), "per_user_limit")
	wantField(t, "an unparsable time", adm(`{"total":10,"opens_at":"tomorrow"}`, 400, true), "opens_at")
	wantField(t, "closes_at before opens_at", adm(fmt.Sprintf(`{"total":10,"opens_at":%q,"closes_at":%q}`, at(2*time.Hour), at(time.Hour)), 400, false), "closes_at")
}

// extend: POST /v1/extend's answers.
func (v *apiValidator) extend(t *testing.T) {
	ext := func(body string, want int, invalid bool) []byte {
		return v.do(t, exchange{port: "hot", method: "POST", path: "/v1/extend", body: body, want: want, invalid: invalid})
	}
	body := func(tok string, secs int64) string { return fmt.Sprintf(`{"reservation":%q,"seconds":%d}`, tok, secs) }
	tok := v.deduct(t, "S1", "ext-1", 200)
	ext(body(tok, 60), 200, false)
	var capped struct {
		Capped     bool  `json:"capped"`
		MaxSeconds int64 `json:"max_seconds"`
	}
	json.Unmarshal(ext(body(tok, 1<<40), 200, false), &capped)
	if !capped.Capped || capped.MaxSeconds < 1 {
		t.Errorf("extend beyond sync.max_extension: %+v, want capped with max_seconds", capped)
	}
	ext(body("bogus-token", 60), 404, false)
	wantField(t, "extend without seconds", ext(settleBodyOf(tok), 400, true), "seconds")
	wantField(t, "extend by 0 seconds", ext(body(tok, 0), 400, true), "seconds")
	wantField(t, "extend without a reservation", ext(`{"seconds":60}`, 400, true), "reservation")
	ext(`{"reservation":"`+strings.Repeat("t", 5000)+`","seconds":60}`, 413, false)
	v.do(t, exchange{port: "hot", method: "POST", path: "/v1/confirm", body: settleBodyOf(tok), want: 200})
	wantStatus(t, "extend a confirmed reservation", ext(body(tok, 60), 409, false), "confirmed")
	tok = v.deduct(t, "S1", "ext-2", 200)
	v.do(t, exchange{port: "hot", method: "POST", path: "/v1/release", body: settleBodyOf(tok), want: 200})
	wantStatus(t, "extend a released reservation", ext(body(tok, 60), 409, false), "released")
}

// listPages: GET /admin/skus a page at a time.
func (v *apiValidator) listPages(t *testing.T) {
	ex := exchange{port: "admin", method: "GET", path: "/admin/skus?limit=1", want: 200}
	resp, err := v.client.Do(v.request(ex))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	v.validate(t, ex, resp, body)
	next := resp.Header.Get("X-Next-Cursor")
	if resp.StatusCode != 200 || next == "" || !strings.Contains(resp.Header.Get("Link"), `rel="next"`) {
		t.Fatalf("GET /admin/skus?limit=1 with more SKUs: %d, X-Next-Cursor %q, Link %q", resp.StatusCode, next, resp.Header.Get("Link"))
	}
	v.do(t, exchange{port: "admin", method: "GET", path: "/admin/skus?limit=1&cursor=" + next, auth: "read", want: 200})
	for path, field := range map[string]string{"/admin/skus?limit=0": "limit", "/admin/skus?limit=1001": "limit", "/admin/skus?cursor=S%7B": "cursor"} {
		wantField(t, path, v.do(t, exchange{port: "admin", method: "GET", path: path, want: 400, invalid: true}), field)
	}
}

// archive: DELETE /admin/skus/{sku} refuses a SKU with a reservation in
// flight, archives it once settled, and again; the archived view.
func (v *apiValidator) archive(t *testing.T) {
	adm := func(ex exchange) []byte { ex.port = "admin"; return v.do(t, ex) }
	adm(exchange{method: "PUT", path: "/admin/skus/A1", body: `{"total":5,"partitions":1,"chunk":2,"threshold":1}`, want: 201})
	del := exchange{method: "DELETE", path: "/admin/skus/A1"}
	for _, ex := range []exchange{
		{auth: "none", want: 401},
		{auth: "read", want: 403},
		{auth: "basic", want: 415},
		{auth: "basic", header: map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, want: 403},
	} {
		ex.method, ex.path = del.method, del.path
		adm(ex)
	}
	adm(exchange{method: "DELETE", path: "/admin/skus/nope", want: 404})
	adm(exchange{method: "DELETE", path: "/admin/skus/S%7B", want: 400, invalid: true})
	tok := v.deduct(t, "A1", "arch-1", 200)
	adm(exchange{method: "DELETE", path: del.path, want: 409}) // reserved, not settled
	v.do(t, exchange{port: "hot", method: "POST", path: "/v1/release", body: settleBodyOf(tok), want: 200})
	// Settled once the release is written back to MySQL.
	del.port, del.want = "admin", http.StatusOK
	var resp *http.Response
	var body []byte
	_ = stocktest.Wait(30*time.Second, func() (bool, string) { // still 409 at the end: reported below
		var err error
		if resp, err = v.client.Do(v.request(del)); err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusConflict {
			v.validate(t, exchange{port: "admin", method: del.method, path: del.path, want: 409}, resp, body)
			return false, ""
		}
		return true, ""
	})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE A1 after its release: %d %s", resp.StatusCode, body)
	}
	v.validate(t, del, resp, body)
	adm(exchange{method: "DELETE", path: del.path, auth: "basic", header: map[string]string{"Content-Type": "application/json"}, want: 200}) // again
	var view struct {
		Archived   bool    `json:"archived"`
		ArchivedAt *string `json:"archived_at"`
	}
	json.Unmarshal(adm(exchange{method: "GET", path: del.path, auth: "read", want: 200}), &view)
	if !view.Archived || view.ArchivedAt == nil {
		t.Errorf("GET an archived SKU: archived %v, archived_at %v", view.Archived, view.ArchivedAt)
	}
	var listed []struct {
		SKU string `json:"sku"`
	}
	json.Unmarshal(adm(exchange{method: "GET", path: "/admin/skus", auth: "read", want: 200}), &listed)
	for _, l := range listed {
		if l.SKU == "A1" {
			t.Error("GET /admin/skus lists the archived SKU A1")
		}
	}
	adm(exchange{method: "PUT", path: del.path, body: `{"total":5}`, want: 409}) // names are not reused
	v.deduct(t, "A1", "arch-2", 404)
}

// unavailable: 503 and 429 from a dependency that does not answer.
func (v *apiValidator) unavailable(t *testing.T, e *env, my *stocktest.Proxy) {
	hot := func(method, path, body string, want int) {
		v.do(t, exchange{port: "hot", method: method, path: path, body: body, want: want})
	}
	// MySQL cut: an unknown SKU cannot be confirmed unknown; a
	// reservation cannot be settled.
	tok := v.deduct(t, "S1", "r3", 200)
	my.Cut()
	hot("GET", "/v1/stock/fresh-name", "", 503)
	hot("POST", "/v1/confirm", settleBodyOf(tok), 503)
	hot("POST", "/v1/release", settleBodyOf(tok), 503)
	hot("POST", "/v1/extend", fmt.Sprintf(`{"reservation":%q,"seconds":60}`, tok), 503)
	// The admin API answers what MySQL's failure leaves it: 500.
	adm := func(ex exchange) { ex.port, ex.want = "admin", 500; v.do(t, ex) }
	adm(exchange{method: "GET", path: "/admin/skus"})
	adm(exchange{method: "GET", path: "/admin/skus/S1"})
	adm(exchange{method: "GET", path: "/admin/skus/S1/verify"})
	adm(exchange{method: "GET", path: "/admin/skus/S1/in-doubt"})
	adm(exchange{method: "POST", path: "/admin/skus/S1/in-doubt/resolve"})
	adm(exchange{method: "PUT", path: "/admin/skus/S1", body: `{"total":100}`})
	adm(exchange{method: "DELETE", path: "/admin/skus/S1"})
	adm(exchange{method: "POST", path: "/admin/skus/S1/rebalance", body: `{"partitions":2}`})
	adm(exchange{method: "GET", path: "/admin/shards"})
	adm(exchange{method: "POST", path: "/admin/shards", body: fmt.Sprintf(`{"id":"s1","addr":%q}`, e.shards[0].Addr)})
	adm(exchange{method: "PUT", path: "/admin/shards/s1", body: fmt.Sprintf(`{"addr":%q}`, e.shards[0].Addr)})
	adm(exchange{method: "POST", path: "/admin/shards/s1/drain"})
	adm(exchange{method: "DELETE", path: "/admin/shards/s1"})
	my.Restore()

	// Redis frozen: a deduction cannot be decided (503, with its request
	// id); a second one for the same SKU meanwhile is shed (429).
	e.shards[0].Stop()
	got := map[int]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; !(got[503] && got[429]) && time.Now().Before(deadline); i++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for j := 0; j < 2; j++ {
			wg.Add(1)
			go func(j int) {
				defer wg.Done()
				ex := exchange{port: "hot", method: "POST", path: "/v1/deduct", body: fmt.Sprintf(`{"sku":"S1","qty":1,"request_id":"hang-%d-%d"}`, i, j)}
				resp, err := v.client.Do(v.request(ex))
				if err != nil {
					t.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				ex.want = resp.StatusCode
				v.validate(t, ex, resp, body)
				mu.Lock()
				got[resp.StatusCode] = true
				mu.Unlock()
			}(j)
		}
		wg.Wait()
	}
	e.shards[0].Continue()
	if !got[503] || !got[429] {
		t.Errorf("deductions with Redis frozen answered %v, want 503 and 429", got)
	}
}

// noActiveShard: draining the only shard leaves nowhere to move its
// partitions, nor to rebalance to (409). It leaves the node without an
// active shard: the last step before the node stops.
func (v *apiValidator) noActiveShard(t *testing.T) {
	v.do(t, exchange{port: "admin", method: "POST", path: "/admin/shards/s1/drain", want: 409})
	v.do(t, exchange{port: "admin", method: "POST", path: "/admin/skus/S1/rebalance", body: `{"partitions":3}`, want: 409})
}

// notReady: a stopping node answers /readyz 503 while it drains.
func (v *apiValidator) notReady(t *testing.T) {
	// The node stops in the background; the test waits for it before
	// it ends, so that the cleanup's stop finds it stopped.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		v.n.stop()
	}()
	defer func() { <-stopped }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := v.client.Get("http://" + v.n.hot + "/readyz")
		if err != nil {
			break
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			v.validate(t, exchange{port: "hot", method: "GET", path: "/readyz", want: 503}, resp, body)
			return
		}
	}
	t.Error("/readyz never answered 503 while the node stopped")
}

// report logs the routes x statuses the test exercised, of those the
// document gives, and fails for a documented route never exercised.
func (v *apiValidator) report() {
	t := v.t
	var all, missing []string
	routes := map[string]bool{}
	for path, pi := range v.doc.Paths.Map() {
		for method, op := range pi.Operations() {
			for status := range op.Responses.Map() {
				key := method + " " + path + " " + status
				all = append(all, key)
				if v.seen[key] == 0 {
					missing = append(missing, key)
				} else {
					routes[method+" "+path] = true
				}
			}
		}
	}
	for _, op := range v.documented() {
		if !routes[op] {
			t.Errorf("route %s: no exchange of the test reached it", op)
		}
	}
	sort.Strings(missing)
	exchanges := 0
	for _, c := range v.seen {
		exchanges += c
	}
	outside := 0
	for _, c := range v.outside {
		outside += c
	}
	t.Logf("openapi coverage: %d routes, %d of %d documented route x status pairs exercised (%d exchanges validated); %d answers outside the document validated against their error schema (%v)",
		len(v.documented()), len(all)-len(missing), len(all), exchanges, outside, v.outside)
	t.Logf("openapi coverage: documented but not exercised: %s", strings.Join(missing, ", "))
}
