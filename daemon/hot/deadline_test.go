package hot

import (
	"testing"
	"time"

	"github.com/stockd/stockd/internal/mono"
)

// TestDeadlinesGiveEveryRequestItsTimeout: a shared context never ends
// before timeout after any request that uses it arrived, nor more than one
// tick later, and requests arriving within one tick share it.
func TestDeadlinesGiveEveryRequestItsTimeout(t *testing.T) {
	d := &deadlines{timeout: time.Hour}
	arrived := mono.Now()
	before := time.Now() // not before the arrival: a lower bound would be weaker
	first := d.get(arrived)
	after := time.Now()
	dl, ok := first.Deadline()
	if !ok {
		t.Fatal("no deadline")
	}
	// Requests arriving up to one tick later (their wall clock at most
	// before+tick) share it, and still get their timeout.
	if dl.Before(before.Add(d.timeout+deadlineTick)) || dl.After(after.Add(d.timeout+deadlineTick)) {
		t.Errorf("deadline %s after the call, want timeout+tick %s", dl.Sub(before), d.timeout+deadlineTick)
	}
	for _, off := range []time.Duration{0, deadlineTick / 2, deadlineTick - 1, deadlineTick, 3 * deadlineTick} {
		ctx := d.get(arrived + int64(off))
		if shared := ctx == first; shared != (off < deadlineTick) {
			t.Errorf("+%s: shares the first context: %v, want %v", off, shared, off < deadlineTick)
		}
	}
	// A request that arrived before the current context was made (its
	// goroutine ran late) shares it: made after its arrival, it ends later.
	late := mono.Now() + int64(10*deadlineTick)
	cur := d.get(late)
	if d.get(late-int64(deadlineTick)) != cur {
		t.Error("a request that arrived before the current context does not share it")
	}
}

// TestDeadlinesEnd: the shared context ends by itself at its deadline.
func TestDeadlinesEnd(t *testing.T) {
	d := &deadlines{timeout: 10 * time.Millisecond}
	ctx := d.get(mono.Now())
	select {
	case <-ctx.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the shared context did not end at its deadline")
	}
}
