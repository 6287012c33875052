package stockd

import (
	"strings"
	"testing"
)

func TestDetailIDRoundTrip(t *testing.T) {
	id := DetailID("S-1.x", 12, 987654321, 42)
	if id != "S-1.x:12:987654321:42" {
		t.Fatalf("id %q", id)
	}
	if !strings.HasPrefix(id, DetailPrefix("S-1.x", 12, 987654321)) {
		t.Fatalf("%q does not start with its partition's prefix", id)
	}
	sku, pid, epoch, seq, err := ParseDetailID(id)
	if err != nil || sku != "S-1.x" || pid != 12 || epoch != 987654321 || seq != 42 {
		t.Fatalf("parse: %q %d %d %d %v", sku, pid, epoch, seq, err)
	}
	for _, bad := range []string{"", "S:1:2", "S:1:2:3:4", "S:x:2:3", "S:1:y:3", "S:1:2:z"} {
		if _, _, _, _, err := ParseDetailID(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
