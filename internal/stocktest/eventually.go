package stocktest

import (
	"fmt"
	"testing"
	"time"
)

// Polling starts fast so a condition that is almost true costs a few
// milliseconds, and backs off to a ceiling low enough that measured
// recovery times (the fault suite reports them) stay accurate to ~50 ms.
const (
	firstPoll = 5 * time.Millisecond
	maxPoll   = 50 * time.Millisecond
)

// Eventually polls cond until it reports true, and fails t with cond's
// last message once timeout has passed. cond runs at least once.
func Eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	if err := Wait(timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// Until is Eventually for a condition that has nothing to say: it fails
// with what.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, timeout, func() (bool, string) { return cond(), what })
}

// Wait polls cond like Eventually but returns an error carrying cond's last
// message instead of failing a test, for goroutines (which must not call
// t.Fatal) and for callers that decide themselves what a timeout means.
func Wait(timeout time.Duration, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	pause := firstPoll
	for {
		ok, msg := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if msg == "" {
				return fmt.Errorf("not within %s", timeout)
			}
			return fmt.Errorf("not within %s: %s", timeout, msg)
		}
		time.Sleep(pause)
		pause = min(2*pause, maxPoll)
	}
}

// WaitFor polls cond until it holds or timeout passes, and returns how long
// that took and whether it held: for tests that measure a recovery rather
// than only require it.
func WaitFor(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	err := Wait(timeout, func() (bool, string) { return cond(), "" })
	return time.Since(start), err == nil
}
