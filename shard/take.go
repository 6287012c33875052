package shard

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/redis/rueidis"
	"github.com/stockd/stockd"
)

// TakeCode is take.lua's outcome for one request. (The other scripts'
// codes and decoders are in replies.go.)
type TakeCode int

// Take outcomes; the numbers are take.lua's own, the locals in its header
// (TOOK, TOOK_EARLIER, SHORT, MOVED, LOST, CLOSED, ROLLED_BACK, REUSED,
// STREAM_REFUSED).
const (
	Took     TakeCode = 1 // deducted now
	TookEarl TakeCode = 2 // deducted by an earlier attempt of the same request
	Short    TakeCode = 3 // not enough stock here (recorded for the request)
	Moved    TakeCode = 4 // the request's pointer names another (partition, round)
	Lost     TakeCode = 5 // state missing or of another epoch: the shard lost data
	Closed   TakeCode = 6 // fenced or closed: never sells again
	// RolledBack: the state's sequence is below one already seen (the
	// shard lost writes); the script did nothing. Take reports it as
	// ErrRollback.
	RolledBack TakeCode = 7
	// Reused: the request id took here earlier for another quantity (Seq
	// and Qty are that deduction's); nothing was deducted.
	Reused TakeCode = 9
	// StreamRefused: the partition's detail stream refused the batch's
	// entry (the state went back, its stream did not); nothing of the
	// partition was written. Take reports it as an error with Redis's message.
	StreamRefused TakeCode = 10
)

// Refill needs, as take.lua answers them.
const (
	needNone  = 0
	needA     = 1
	needB     = 2
	takeHead  = 4 // a, b, act, need: per partition
	takeWidth = 4 // code, seq, qty, text: per request
)

// Limits of one take call, so that one script never holds Redis long: the
// work is a few reads and writes per partition and a few table operations
// per request (about 15 µs per partition and 1 µs per request here).
const (
	maxBatch    = 64 // requests
	maxPartsPer = 32 // partitions
	// takeLanes is how many take calls a shard's combiner keeps in flight.
	// One: requests that arrive while a call runs wait for the next, and
	// the calls carry more of them (measured with two lanes: 16 requests
	// per call instead of 22 at c = 256, 1.5 instead of 3 at half of the
	// maximum rate, so more Redis and stockd CPU per deduction). Redis runs
	// one script at a time anyway.
	takeLanes = 1
)

// TakeResult is what take answered for one request.
type TakeResult struct {
	Code   TakeCode
	Levels stockd.Levels
	Seq    int64 // the detail's sequence when Code is Took, TookEarl or Reused
	Qty    int64 // the quantity taken (TookEarl, Reused: by the first attempt)
	// Refill names the idle sub-domain ('a' or 'b') when it is below the
	// threshold, 0 otherwise.
	Refill  byte
	Pointer string // Moved: "<pid>:<round>", or a redirect "h<pid>"
}

// takeCall is one request waiting in a combiner.
type takeCall struct {
	p             *Partition
	reqID, userID string
	qty           int64
	round         int
	home          bool

	res TakeResult
	err error
	// wake is signalled (buffered, so the call can be pooled) when res is
	// ready or when this call must lead the next batch.
	wake chan struct{}
	lead bool
}

var callPool = sync.Pool{New: func() any { return &takeCall{wake: make(chan struct{}, 1)} }}

// combiner gathers the takes that arrive while take calls are in flight,
// so that they share the next call: one script run and one round trip
// instead of one per request. A shard's combiner mixes the partitions of
// the shard (one script takes for several partitions, each atomically as
// its own call would); a Redis Cluster shard cannot run a script over
// keys of several hash slots, and every partition's keys carry their own
// hash tag, so there each partition has its own combiner with one lane.
//
// There is no timer and no extra goroutine: a caller that finds a free
// lane leads; a finished leader hands its lane to the first waiter.
type combiner struct {
	mu       sync.Mutex
	inflight int
	queue    []*takeCall
}

// combinesTakes tells whether one take script may cover several of the
// shard's partitions (all their keys on one Redis).
func (s *Shard) combinesTakes() bool { return s.cfg.Load().Kind() != KindCluster }

// Take deducts qty for reqID in round, or returns the request's earlier
// outcome here. home tells whether this partition is the request's home (the
// holder of its pointer). Concurrent takes on one shard are batched.
func (p *Partition) Take(ctx context.Context, reqID string, qty int64, round int, home bool, userID string) (TakeResult, error) {
	c := callPool.Get().(*takeCall)
	c.p, c.reqID, c.userID, c.qty, c.round, c.home, c.lead = p, reqID, userID, qty, round, home, false
	cb, lanes, parts := &p.takes, 1, 1
	if p.Shard.combinesTakes() {
		cb, lanes, parts = &p.Shard.takes, takeLanes, maxPartsPer
	}
	cb.mu.Lock()
	if cb.inflight < lanes {
		cb.inflight++
	} else {
		cb.queue = append(cb.queue, c)
		cb.mu.Unlock()
		<-c.wake
		if !c.lead {
			return c.done()
		}
		cb.mu.Lock()
	}
	// Leading: this call and what waits (in order), up to the limits.
	batch := cb.pick(c, parts)
	cb.promote(lanes)
	cb.mu.Unlock()

	runTake(ctx, p.Shard, batch)

	cb.mu.Lock()
	cb.inflight--
	cb.promote(lanes)
	cb.mu.Unlock()
	for _, x := range batch {
		if x != c {
			x.wake <- struct{}{}
		}
	}
	return c.done()
}

// done returns the call's result and recycles it.
func (c *takeCall) done() (TakeResult, error) {
	res, err := c.res, c.err
	c.p = nil
	callPool.Put(c)
	return res, err
}

// pick removes from the queue the calls that the leader's take call
// carries: the leader first, then the waiters in order, up to maxBatch
// requests and parts partitions. The caller holds mu.
func (cb *combiner) pick(lead *takeCall, parts int) []*takeCall {
	batch := make([]*takeCall, 1, min(len(cb.queue)+1, maxBatch))
	batch[0] = lead
	seen := 1
	n := 0
	for _, x := range cb.queue {
		if len(batch) == maxBatch {
			break
		}
		if !inBatch(batch, x.p) {
			if seen == parts {
				break
			}
			seen++
		}
		batch = append(batch, x)
		n++
	}
	rest := copy(cb.queue, cb.queue[n:])
	clear(cb.queue[rest:])
	cb.queue = cb.queue[:rest]
	return batch
}

// inBatch tells whether a call of p is in batch.
func inBatch(batch []*takeCall, p *Partition) bool {
	for _, x := range batch {
		if x.p == p {
			return true
		}
	}
	return false
}

// promote hands free lanes to the first waiters. The caller holds mu.
func (cb *combiner) promote(lanes int) {
	for cb.inflight < lanes && len(cb.queue) > 0 {
		next := cb.queue[0]
		cb.queue = cb.queue[1:]
		cb.inflight++
		next.lead = true
		next.wake <- struct{}{}
	}
	if len(cb.queue) == 0 {
		cb.queue = cb.queue[:0:cap(cb.queue)]
	}
}

// takeGroup is one partition's part of a take call: its calls, in order,
// and the sequence seen of it before the call was sent.
type takeGroup struct {
	p     *Partition
	calls []*takeCall
	prev  int64
}

// groupTakes splits batch by partition, keeping each partition's calls in
// their order.
func groupTakes(batch []*takeCall) []takeGroup {
	groups := make([]takeGroup, 0, 4)
next:
	for _, c := range batch {
		for i := range groups {
			if groups[i].p == c.p {
				groups[i].calls = append(groups[i].calls, c)
				continue next
			}
		}
		groups = append(groups, takeGroup{p: c.p, calls: []*takeCall{c}})
	}
	return groups
}

// runTake runs one take call on sh for batch and fills every call's result.
func runTake(ctx context.Context, sh *Shard, batch []*takeCall) {
	groups := groupTakes(batch)
	sh.takeCalls.Add(1)
	sh.takeRequests.Add(int64(len(batch)))
	keys := make([]string, 0, 4*len(groups))
	args := make([]string, 0, 1+4*len(groups)+5*len(batch))
	args = append(args, strconv.Itoa(len(groups)))
	for i := range groups {
		g := &groups[i]
		p := g.p
		// The sequence seen before the call was sent is what the state's
		// must not be below (the script refuses to take on a state that
		// went back) and what its new sequences must exceed.
		g.prev = p.lastSeq.Load()
		keys = append(keys, p.state, p.records, p.pointers, p.stream)
		args = append(args, p.epoch, strconv.Itoa(len(g.calls)), strconv.FormatInt(g.prev, 10), p.window)
		for _, c := range g.calls {
			self := ""
			if c.home {
				self = p.pid
			}
			args = append(args, c.reqID, strconv.FormatInt(c.qty, 10), strconv.Itoa(c.round), self, c.userID)
		}
	}
	vals, err := takeScript.exec(ctx, sh, groups[0].p.state, keys, args)
	// The streams may hold new entries now (also when the reply was lost:
	// the script may have run): the write-back reads them (Written).
	for i := range groups {
		groups[i].p.Notify()
	}
	if err == nil && len(vals) != takeHead*len(groups)+takeWidth*len(batch) {
		err = fmt.Errorf("%w: %d values for %d partitions and %d requests", ErrBadReply, len(vals), len(groups), len(batch))
	}
	if err != nil {
		err = fmt.Errorf("take on %s: %w", sh.ID, err)
		for _, c := range batch {
			c.res, c.err = TakeResult{}, err
		}
		return
	}
	for i := range groups {
		vals = decodeTake(sh, &groups[i], vals)
	}
}

// decodeTake fills the results of g's calls from the front of vals (the
// partition's part of take.lua's reply) and returns the rest.
func decodeTake(sh *Shard, g *takeGroup, vals []rueidis.RedisMessage) []rueidis.RedisMessage {
	var head [takeHead]int64
	var err error
	for i := 0; err == nil && i < takeHead; i++ {
		if head[i], err = vals[i].AsInt64(); err != nil {
			err = fmt.Errorf("take on %s: %w: %w", sh.ID, ErrBadReply, err)
		}
	}
	rest := vals[takeHead+takeWidth*len(g.calls):]
	if err != nil {
		for _, c := range g.calls {
			c.res, c.err = TakeResult{}, err
		}
		return rest
	}
	levels := stockd.Levels{A: head[0], B: head[1], Active: activeName(head[2])}
	var refill byte
	switch head[3] {
	case needA:
		refill = 'a'
	case needB:
		refill = 'b'
	}
	rolledBack := false
	for i, c := range g.calls {
		v := vals[takeHead+takeWidth*i:]
		code, err1 := v[0].AsInt64()
		seq, err2 := v[1].AsInt64()
		qty, err3 := v[2].AsInt64()
		if err := errors.Join(err1, err2, err3); err != nil {
			c.res, c.err = TakeResult{}, fmt.Errorf("take on %s: %w: %w", sh.ID, ErrBadReply, err)
			continue
		}
		switch TakeCode(code) {
		case RolledBack:
			c.res, c.err = TakeResult{}, fmt.Errorf("take on %s: %w", sh.ID, ErrRollback)
			continue
		case StreamRefused:
			text, _ := v[3].ToString()
			c.res, c.err = TakeResult{}, fmt.Errorf("take on %s: %s", sh.ID, text)
			continue
		}
		c.res = TakeResult{Code: TakeCode(code), Levels: levels, Seq: seq, Qty: qty, Refill: refill}
		c.err = nil
		if c.res.Code == Moved {
			c.res.Pointer, _ = v[3].ToString()
		}
		if c.res.Code == Took {
			if seq <= g.prev {
				rolledBack = true
			}
			g.p.ObserveSeq(seq)
		}
	}
	if rolledBack {
		for _, c := range g.calls {
			if c.res.Code == Took {
				c.res, c.err = TakeResult{}, fmt.Errorf("take on %s: %w", sh.ID, ErrRollback)
			}
		}
	}
	return rest
}
