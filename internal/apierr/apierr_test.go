package apierr

import (
	"encoding/json"
	"testing"
)

// AppendJSON writes what encoding/json writes, for the strings a caller
// can put in a message or a field (keys as sent, request ids).
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `quo"te`, `back\slash`, "nl\ncr\rtab\t", "\x00\x1f\x7f", "<a>&", "é ü 中", "bad\xffutf8", "\u2028\u2029", "\xe2\x80"} {
		e := Error{Message: "m: " + s, Code: InvalidArgument, Field: s, RequestID: s}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := e.AppendJSON(nil); string(got) != string(want) {
			t.Errorf("%q:\n got %s\nwant %s", s, got, want)
		}
	}
}

func TestAppendJSONDoesNotAllocate(t *testing.T) {
	e := Error{Message: "sku: unknown", Code: UnknownSKU}
	var arr [128]byte
	if n := testing.AllocsPerRun(100, func() { _ = e.AppendJSON(arr[:0]) }); n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}

func TestEveryCodeHasItsStatus(t *testing.T) {
	for _, c := range Codes() {
		if s := c.Status(); s < 400 || s > 599 {
			t.Errorf("%s: status %d", c, s)
		}
	}
	if got := Invalid("qty: must be an integer"); got.Field != "qty" || got.Status() != 400 {
		t.Errorf("Invalid: %+v", got)
	}
	if got := Invalid("partitions do not fit: x"); got.Field != "" {
		t.Errorf("Invalid names a field that is not one: %+v", got)
	}
}
