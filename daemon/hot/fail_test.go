package hot

import (
	"encoding/json"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/stockd/stockd/internal/apierr"
)

// An error answer of the hot endpoint costs no allocation (fail appends
// into a stack buffer), so shedding and bad input stay cheap under load.
func TestHotErrorAnswerDoesNotAllocate(t *testing.T) {
	var ctx fasthttp.RequestCtx
	for _, e := range []apierr.Error{
		{Message: "too many requests for this sku in progress, retry shortly", Code: apierr.RateLimited},
		{Message: "sku: unknown", Code: apierr.UnknownSKU, Field: "sku"},
		{Message: "unavailable, retry with the same request_id", Code: apierr.Unavailable, RequestID: "order-1001"},
	} {
		if n := testing.AllocsPerRun(100, func() { fail(&ctx, e) }); n != 0 {
			t.Errorf("%s: %v allocations per answer, want 0", e.Code, n)
		}
		var got apierr.Error
		if err := json.Unmarshal(ctx.Response.Body(), &got); err != nil || got != e || ctx.Response.StatusCode() != e.Status() {
			t.Errorf("%s: answered %d %s", e.Code, ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
}
