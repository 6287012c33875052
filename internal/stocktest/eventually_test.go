package stocktest

import (
	"strings"
	"testing"
	"time"
)

func TestWaitReturnsOnceTrue(t *testing.T) {
	n := 0
	if err := Wait(time.Second, func() (bool, string) { n++; return n == 3, "" }); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("cond ran %d times, want 3", n)
	}
}

func TestWaitFailsWithLastMessage(t *testing.T) {
	n := 0
	err := Wait(30*time.Millisecond, func() (bool, string) { n++; return false, "seen " + string(rune('0'+n%10)) })
	if err == nil || !strings.Contains(err.Error(), "not within 30ms: seen") {
		t.Fatalf("err = %v", err)
	}
}

func TestWaitForMeasures(t *testing.T) {
	start := time.Now()
	took, ok := WaitFor(time.Second, func() bool { return time.Since(start) > 20*time.Millisecond })
	if !ok || took < 20*time.Millisecond || took > 500*time.Millisecond {
		t.Fatalf("took %s ok %v", took, ok)
	}
	if _, ok := WaitFor(10*time.Millisecond, func() bool { return false }); ok {
		t.Fatal("false condition held")
	}
}
