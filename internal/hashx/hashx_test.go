package hashx

import "testing"

// The values are part of the protocol between nodes and versions: request
// homes and owners must not move on an upgrade.
func TestStable(t *testing.T) {
	if got := FNV64("r1"); got != 0x8dc8307b57be76c {
		t.Errorf("FNV64(r1) = %#x", got)
	}
	if got := Mix64(FNV64("S1:0")); got != 0x591fc1cf1f2394c3 {
		t.Errorf("Mix64(FNV64(S1:0)) = %#x", got)
	}
}
