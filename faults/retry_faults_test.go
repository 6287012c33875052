//go:build faults

package faults

import (
	"testing"
	"time"
)

// Case 5: Redis calls to one shard time out (400 ms round trip against a
// 200 ms redis_timeout) in the middle of a sale that sells out: 6,000
// buyers arrive at 600 a second for 5,000 units, each retrying its
// request id until it gets an answer. Once as one 3 s spike, once
// flapping (400 ms slow, 300 ms not, for 5 s) so that calls time out in
// flight again and again. No double deduction, and porcupine finds the
// history linearizable.
func TestTimeoutRetries(t *testing.T) {
	for _, tc := range []struct {
		name            string
		spike           time.Duration
		flapOn, flapOff time.Duration
	}{
		{"spike", 3 * time.Second, 0, 0},
		{"flapping", 5 * time.Second, 400 * time.Millisecond, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runTimeoutStorm(t, timeoutStorm{total: 5000, requests: 6000, rate: 600, spikeAfter: 2 * time.Second, spike: tc.spike,
				flapOn: tc.flapOn, flapOff: tc.flapOff, latencyMS: 200, timeout: 200 * time.Millisecond})
		})
	}
}
