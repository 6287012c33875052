package daemon

import (
	"testing"
	"time"
)

// TestDeadlinesGiveEveryRequestItsTimeout: a shared context never ends
// before timeout after the request that uses it began, nor more than one
// tick later, and requests within one tick share it.
func TestDeadlinesGiveEveryRequestItsTimeout(t *testing.T) {
	d := &deadlines{timeout: time.Hour}
	base := time.Now()
	first := d.get(base)
	for _, off := range []time.Duration{0, deadlineTick / 2, deadlineTick - 1, deadlineTick, 3 * deadlineTick} {
		now := base.Add(off)
		ctx := d.get(now)
		dl, ok := ctx.Deadline()
		if !ok {
			t.Fatalf("+%s: no deadline", off)
		}
		if dl.Before(now.Add(d.timeout)) || dl.After(now.Add(d.timeout+deadlineTick)) {
			t.Errorf("+%s: deadline %s after the request began, want within [%s, %s]",
				off, dl.Sub(now), d.timeout, d.timeout+deadlineTick)
		}
		if shared := ctx == first; shared != (off < deadlineTick) {
			t.Errorf("+%s: shares the first context: %v", off, shared)
		}
	}
	// A clock read taken before the current context was installed still
	// gets at least its timeout.
	late := base.Add(10 * deadlineTick)
	d.get(late)
	early := late.Add(-deadlineTick / 2)
	if dl, _ := d.get(early).Deadline(); dl.Before(early.Add(d.timeout)) {
		t.Errorf("earlier clock read: deadline %s after it, want at least %s", dl.Sub(early), d.timeout)
	}
}

// TestDeadlinesEnd: the shared context ends by itself at its deadline.
func TestDeadlinesEnd(t *testing.T) {
	d := &deadlines{timeout: 10 * time.Millisecond}
	ctx := d.get(time.Now())
	select {
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the shared context did not end at its deadline")
	}
}
