package stocktest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// A fake hot endpoint with 10 units: the crowd's tally must add up, and
// the admin client must send the token and decode the answer.
func TestCrowdAndAdmin(t *testing.T) {
	var left atomic.Int64
	left.Store(10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/deduct":
			var req struct {
				Qty       int64  `json:"qty"`
				RequestID string `json:"request_id"`
			}
			json.NewDecoder(r.Body).Decode(&req)
			if left.Add(-req.Qty) < 0 {
				w.WriteHeader(409)
				w.Write([]byte(`{"status":"sold_out"}`))
				return
			}
			json.NewEncoder(w).Encode(map[string]any{"status": "ok", "reservation": "res-" + req.RequestID, "qty": req.Qty})
		case strings.HasPrefix(r.URL.Path, "/admin/skus/"):
			if r.Header.Get("Authorization") != "Bearer tok" {
				w.WriteHeader(401)
				return
			}
			w.WriteHeader(201)
			w.Write([]byte(`{"sku":"S1","total":10}`))
		default:
			w.WriteHeader(404)
			w.Write([]byte(`{"error":"not found"}`))
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")

	var v struct {
		Total int64 `json:"total"`
	}
	Admin{Addr: addr, Token: "tok"}.PutSKU(t, "S1", 10, 1, 10, 1, &v)
	if v.Total != 10 {
		t.Fatalf("PutSKU decoded %+v", v)
	}
	if code, _, err := (Admin{Addr: addr, Token: "wrong"}).Do("GET", "/admin/skus/S1", "", nil); err != nil || code != 401 {
		t.Fatalf("wrong token: %d %v", code, err)
	}

	o := Crowd(t, NewBuyer(8), addr, "S1", 30, "b-", func(int) int64 { return 1 })
	if o.OK != 10 || o.Units != 10 || o.SoldOut != 20 || len(o.Errs) != 0 || len(o.Reservations) != 10 {
		t.Fatalf("tally %+v", o.Snapshot())
	}
	if a, err := NewBuyer(1).Confirm(addr, "res-b-1"); err != nil || a.Code != 404 {
		t.Fatalf("confirm on the fake: %+v %v", a, err)
	}
}
