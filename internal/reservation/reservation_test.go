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

// During a key rotation tokens are signed with the current key and
// accepted with the current or a previous one, never with another.
func TestRotation(t *testing.T) {
	old, cur, other := []byte("old-key"), []byte("current-key"), []byte("other-key")
	s := NewSigner(cur, old)
	if got, want := s.Encode("S1:0:7:1", 2), NewSigner(cur).Encode("S1:0:7:1", 2); got != want {
		t.Fatalf("signed %q, want the current key's %q", got, want)
	}
	for _, k := range [][]byte{cur, old} {
		if _, _, err := s.Decode(NewSigner(k).Encode("S1:0:7:1", 2)); err != nil {
			t.Errorf("token signed with %q refused: %v", k, err)
		}
	}
	if _, _, err := s.Decode(NewSigner(other).Encode("S1:0:7:1", 2)); err == nil {
		t.Error("token signed with neither key accepted")
	}
	if _, _, err := NewSigner(cur).Decode(NewSigner(old).Encode("S1:0:7:1", 2)); err == nil {
		t.Error("old key accepted after it was removed")
	}
}
