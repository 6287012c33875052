// Package mono is a cheap monotonic clock for freshness stamps kept in
// atomics: Now is nanoseconds on the monotonic clock, so a process frozen
// with SIGSTOP (or a wall clock stepped back) sees its stamps as old as
// they really are when it resumes. Reading it neither locks nor allocates.
package mono

import "time"

// base is an hour in the past, so that no stamp taken by Now is 0: a zero
// stamp means "never".
var base = time.Now().Add(-time.Hour)

// Now is a monotonic reading in nanoseconds, never 0.
func Now() int64 { return int64(time.Since(base)) }

// Since is the time elapsed since the stamp at (from Now).
func Since(at int64) time.Duration { return time.Duration(Now() - at) }

// Fresh tells whether the stamp at (0: never) is younger than maxAge.
func Fresh(at int64, maxAge time.Duration) bool {
	return at != 0 && Now()-at < int64(maxAge)
}
