package faults

// The fast subset (make test): short, high-value cases, each well under
// 15 s. The whole suite is behind the faults build tag (make test-faults).

import (
	"fmt"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
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

// Buyers spell request ids in four ways that differ only in letter case
// (order-7, Order-7, oRder-7, ORder-7), sent back to back by concurrent
// buyers: each spelling is its own request. The sale sells out exactly,
// every acknowledged spelling has its own row, nothing is doubled, a
// second ask of each gets its first answer, and the history is
// linearizable against the stock model.
func TestFastCaseVariantRequestIDs(t *testing.T) {
	const (
		sku   = "cv"
		total = 300
	)
	e := newEnv(t, envOpts{shards: 2})
	d := e.startStockd(nodeOpts{})
	d.putSKU(sku, total, 4, 20, 4)
	h := newHistory()
	b := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second}), sku, h, d.hot)
	b.closedLoop(16, &ids{prefix: "order-", n: 4 * 100, variants: 4}, 1, nil, false)()
	b.checkAnswers()
	asked, _ := b.reask(nil)
	r := settle(t, e, d, sku, h, nil, settleOpts{total: total, linearizable: true})
	if r.Held != total {
		t.Errorf("the rows of acknowledged reservations hold %d units, want all %d", r.Held, total)
	}
	r.Extra["ids"] = fmt.Sprintf("100 ids in 4 case spellings each; re-asked %d acknowledged ones", asked)
	r.Log(t)
}

// Every request sent twice at once, to two nodes, while a third grows and
// shrinks the SKU (4 -> 6 -> 8 -> 10 -> 6 -> 4): the copies agree, nothing
// is doubled, and what buyers saw is linearizable (issue 12 item 3).
func TestFastRebalanceRetryPairs(t *testing.T) {
	runRebalanceRetry(t, rebalanceRetry{total: 2200, pairs: 2500, start: 4, steps: []int{6, 8, 10, 6, 4}, gap: 600 * time.Millisecond})
}
