package stocktest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Admin is a client of one node's admin API. It decodes into values the
// caller passes (admin.SKUView, sync.Report, ...) rather than importing
// them: stocktest imports no stockd package, so every package's tests can
// use it without an import cycle.
type Admin struct {
	Addr  string // host:port of the admin listener
	Token string // the admin token (Authorization: Bearer)
}

// adminHTTP's timeout only ends a call to a hung node; it is generous
// because a verify of a large SKU under the race detector takes seconds.
var adminHTTP = &http.Client{Timeout: 2 * time.Minute}

// Do sends an admin request with a JSON body ("" for none), decodes a 2xx
// answer into out when out is not nil, and returns the status and the body.
// A request that got no answer returns status 0 and the error; an answer
// that does not decode returns its status and the error.
func (a Admin) Do(method, path, body string, out any) (int, []byte, error) {
	req, err := http.NewRequest(method, "http://"+a.Addr+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.Token)
	resp, err := adminHTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, b, fmt.Errorf("%s %s: %w: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, b, nil
}

// SKUBody is the PUT /admin/skus/{sku} body of a plain SKU.
func SKUBody(total int64, partitions int, chunk, threshold int64) string {
	return fmt.Sprintf(`{"total":%d,"partitions":%d,"chunk":%d,"threshold":%d}`, total, partitions, chunk, threshold)
}

// PutSKU creates (or restocks) sku through the admin API and decodes the
// answer into out (nil: ignore it); anything but 200 or 201 fails t.
func (a Admin) PutSKU(t testing.TB, sku string, total int64, partitions int, chunk, threshold int64, out any) {
	t.Helper()
	code, b, err := a.Do("PUT", "/admin/skus/"+sku, SKUBody(total, partitions, chunk, threshold), out)
	if err != nil {
		t.Fatalf("put sku %s: %v", sku, err)
	}
	if code != 200 && code != 201 {
		t.Fatalf("put sku %s: status %d: %s", sku, code, b)
	}
}
