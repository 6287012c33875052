package reservation

import (
	"strings"
	"testing"
)

func TestTokens(t *testing.T) {
	s := NewSigner([]byte("key"))
	tok := s.Encode("S1:2:77:5", 3)
	if got := string(s.AppendDetailToken(nil, "S1", 2, 77, 5, 3)); got != tok {
		t.Fatalf("AppendDetailToken %q != Encode %q", got, tok)
	}
	id, qty, err := s.Decode(tok)
	if err != nil || id != "S1:2:77:5" || qty != 3 {
		t.Fatalf("decode: %q %d %v", id, qty, err)
	}
	for _, bad := range []string{
		"", "nocolon", tok[:len(tok)-1] + "x", strings.Replace(tok, ":3:", ":4:", 1),
		NewSigner([]byte("other")).Encode("S1:2:77:5", 3),
	} {
		if _, _, err := s.Decode(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	buf := make([]byte, 0, 128)
	if n := testing.AllocsPerRun(100, func() { s.AppendDetailToken(buf[:0], "S1", 2, 77, 5, 3) }); n > 0 && !raceEnabled {
		t.Errorf("signing allocates %.0f times", n)
	}
}
