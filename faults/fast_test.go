package faults

// The fast subset (make test): short, high-value cases, each well under
// 15 s. The whole suite is behind the faults build tag (make test-faults).

import (
	"testing"
	"time"
)

// kill -9 of an AOF shard (appendfsync everysec) in the middle of a short
// sale: the kernel keeps what Redis wrote, so nothing acknowledged is
// lost, nothing is fenced, and the sale sells out exactly.
func TestFastShardKillAOF(t *testing.T) {
	rf := shardKill("aof", 500*time.Millisecond)
	rf.requests, rf.total, rf.faultAfter, rf.workers, rf.payDelay = 2500, 2000, 600, 16, time.Second
	runRedisFault(t, rf)
}

// A one-second latency spike above the daemon's Redis timeout on one
// shard, buyers retrying the same request id until they get an answer:
// no request takes twice, and what buyers saw is linearizable.
func TestFastTimeoutRetries(t *testing.T) {
	runTimeoutStorm(t, timeoutStorm{total: 1600, requests: 2000, rate: 400, spikeAfter: time.Second, spike: time.Second, latencyMS: 200, timeout: 200 * time.Millisecond})
}

// Every request sent twice at once, to two nodes, while a third grows and
// shrinks the SKU (4 -> 6 -> 8 -> 10 -> 6 -> 4): the copies agree, nothing
// is doubled, and what buyers saw is linearizable (issue 12 item 3).
func TestFastRebalanceRetryPairs(t *testing.T) {
	runRebalanceRetry(t, rebalanceRetry{total: 2200, pairs: 2500, start: 4, steps: []int{6, 8, 10, 6, 4}, gap: 600 * time.Millisecond})
}
