package daemon

import (
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/stockd/stockd/internal/stocktest"
)

// Bad input is answered 400 (413 for a large body, 404 for an unknown
// SKU) with an error naming the field, and touches no stock.
func TestBadInput(t *testing.T) {
	e := newEnv(t, 1)
	n := startNode(t, e.config())
	putSKU(t, n, "S1", 100, 2, 10, 2)
	before := e.ledger("S1")

	long := strings.Repeat("x", 65)
	cases := []struct {
		name, body string
		code       int
		field      string
	}{
		{"malformed json", `{"sku":"S1","qty":1,`, 400, "body"},
		{"not an object", `[1,2]`, 400, "body"},
		{"empty body", ``, 400, "body"},
		{"missing sku", `{"qty":1,"request_id":"a"}`, 400, "sku"},
		{"empty sku", `{"sku":"","qty":1,"request_id":"a"}`, 400, "sku"},
		{"over-long sku", `{"sku":"` + long + `","qty":1,"request_id":"a"}`, 400, "sku"},
		{"sku with a brace", `{"sku":"S{1}","qty":1,"request_id":"a"}`, 400, "sku"},
		{"sku not a string", `{"sku":12,"qty":1,"request_id":"a"}`, 400, "sku"},
		{"missing qty", `{"sku":"S1","request_id":"a"}`, 400, "qty"},
		{"zero qty", `{"sku":"S1","qty":0,"request_id":"a"}`, 400, "qty"},
		{"negative qty", `{"sku":"S1","qty":-3,"request_id":"a"}`, 400, "qty"},
		{"qty above max", `{"sku":"S1","qty":101,"request_id":"a"}`, 400, "qty"},
		{"fractional qty", `{"sku":"S1","qty":1.5,"request_id":"a"}`, 400, "qty"},
		{"qty as string", `{"sku":"S1","qty":"1","request_id":"a"}`, 400, "qty"},
		{"qty exponent", `{"sku":"S1","qty":1e1,"request_id":"a"}`, 400, "qty"},
		{"qty huge", `{"sku":"S1","qty":99999999999999999999,"request_id":"a"}`, 400, "qty"},
		{"missing request id", `{"sku":"S1","qty":1}`, 400, "request_id"},
		{"request id too long", `{"sku":"S1","qty":1,"request_id":"` + strings.Repeat("r", 129) + `"}`, 400, "request_id"},
		{"request id with space", `{"sku":"S1","qty":1,"request_id":"a b"}`, 400, "request_id"},
		{"user id not a string", `{"sku":"S1","qty":1,"request_id":"a","user_id":7}`, 400, "user_id"},
		{"unknown sku", `{"sku":"nope","qty":1,"request_id":"a"}`, 404, "sku"},
		{"body over 4 KiB", `{"sku":"S1","qty":1,"request_id":"a","pad":"` + strings.Repeat("p", 5000) + `"}`, 413, "body"},
	}
	b := stocktest.NewBuyer(4)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := b.Post(n.hot, "/v1/deduct", c.body)
			if err != nil {
				t.Fatal(err)
			}
			if a.Code != c.code {
				t.Fatalf("status %d (%q), want %d", a.Code, a.Error, c.code)
			}
			if !strings.HasPrefix(a.Error, c.field+":") {
				t.Fatalf("error %q does not name %q", a.Error, c.field)
			}
		})
	}
	// Wrong methods and routes.
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + n.hot + "/v1/deduct")
	if err := b.Do(req, resp); err != nil || resp.StatusCode() != 405 {
		t.Fatalf("GET /v1/deduct: %d %v, want 405", resp.StatusCode(), err)
	}

	after := e.ledger("S1")
	if after.levels != before.levels || after.pool != before.pool || after.streamEntries != 0 {
		t.Fatalf("bad input touched stock: before %+v, after %+v", before, after)
	}
}
