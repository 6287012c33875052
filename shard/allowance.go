package shard

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

var (
	//go:embed scripts/allow.lua
	allowSrc    string
	allowScript = newReplicated(allowSrc)
)

// Allowance is the per-user allowance of one limited SKU (allow.lua): the
// units each user holds, across every partition and node, with one entry
// per request so that a retry is never counted twice.
type Allowance struct {
	SKU   string
	Shard *Shard
	key   string
	// ops batches the takes and settles that arrive while an allowance
	// call is in flight (allow.lua's batch op): one call per batch, not
	// two per limited deduction.
	ops allowBatcher
}

// Allowance returns the handle of sku's allowance hash on shardID.
func (s *Set) Allowance(sku, shardID string) (*Allowance, error) {
	sh, err := s.Get(shardID)
	if err != nil {
		return nil, err
	}
	return &Allowance{SKU: sku, Shard: sh, key: "{" + s.prefix + ":" + sku + ":allow}"}, nil
}

// Key is the allowance hash's key.
func (a *Allowance) Key() string { return a.key }

// run runs one op of allow.lua on the SKU's allowance hash.
func (a *Allowance) run(ctx context.Context, args ...string) (AllowResult, error) {
	vals, err := allowScript.exec(ctx, a.Shard, a.key, []string{a.key}, args)
	if err != nil {
		return AllowResult{}, fmt.Errorf("allowance of %s: %w", a.SKU, err)
	}
	r, err := decodeAllow(vals)
	if err != nil {
		return AllowResult{}, fmt.Errorf("allowance of %s: %w", a.SKU, err)
	}
	return r, nil
}

// allowOp is one op waiting in an allowance's batch.
type allowOp struct {
	args []string // op name, then its arguments
	res  AllowResult
	err  error
	// wake is signalled when res is ready or when this op must lead the
	// next batch.
	wake chan struct{}
	lead bool
}

var allowOpPool = sync.Pool{New: func() any { return &allowOp{wake: make(chan struct{}, 1)} }}

// allowBatcher is the take combiner's scheme for one allowance hash: the
// caller that finds no call in flight leads, the waiters share the next
// call, a finished leader hands the lead to the first waiter. The hash is
// one key, so this holds on a Redis Cluster too.
type allowBatcher struct {
	mu    sync.Mutex
	busy  bool
	queue []*allowOp
}

// batched runs one op (take or settle) in a batch of the ops waiting.
func (a *Allowance) batched(ctx context.Context, args ...string) (AllowResult, error) {
	op := allowOpPool.Get().(*allowOp)
	op.args, op.lead = args, false
	b := &a.ops
	b.mu.Lock()
	if b.busy {
		b.queue = append(b.queue, op)
		b.mu.Unlock()
		<-op.wake
		if !op.lead {
			return op.done()
		}
		b.mu.Lock()
	} else {
		b.busy = true
	}
	k := min(len(b.queue), maxBatch-1)
	batch := make([]*allowOp, 0, k+1)
	batch = append(batch, op)
	batch = append(batch, b.queue[:k]...)
	rest := copy(b.queue, b.queue[k:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	b.mu.Unlock()

	a.runBatch(ctx, batch)

	b.mu.Lock()
	if len(b.queue) > 0 {
		next := b.queue[0]
		b.queue = b.queue[1:]
		next.lead = true
		next.wake <- struct{}{}
	} else {
		b.busy = false
	}
	b.mu.Unlock()
	for _, x := range batch[1:] {
		x.wake <- struct{}{}
	}
	return op.done()
}

func (op *allowOp) done() (AllowResult, error) {
	r, err := op.res, op.err
	op.args = nil
	allowOpPool.Put(op)
	return r, err
}

// runBatch runs batch as one call: a single op as itself, several as
// allow.lua's batch op (per op {code, held or 0}).
func (a *Allowance) runBatch(ctx context.Context, batch []*allowOp) {
	if len(batch) == 1 {
		batch[0].res, batch[0].err = a.run(ctx, batch[0].args...)
		return
	}
	args := []string{"batch", strconv.Itoa(len(batch))}
	for _, op := range batch {
		args = append(args, op.args[0], strconv.Itoa(len(op.args)-1))
		args = append(args, op.args[1:]...)
	}
	vals, err := allowScript.exec(ctx, a.Shard, a.key, []string{a.key}, args)
	if err == nil && len(vals) != 2*len(batch) {
		err = fmt.Errorf("%d values for %d ops: %w", len(vals), len(batch), ErrBadReply)
	}
	for i, op := range batch {
		op.res, op.err = AllowResult{}, err
		if err == nil {
			op.res, op.err = decodeAllow(vals[2*i : 2*i+2])
		}
		if op.err != nil {
			op.err = fmt.Errorf("allowance of %s: %w", a.SKU, op.err)
		}
	}
}

func nowMs() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }

// Take counts qty units of user for reqID when the user's count stays
// within limit. held is the user's count afterwards (before, when the
// limit was reached).
func (a *Allowance) Take(ctx context.Context, reqID, user string, qty, limit int64) (code AllowCode, held int64, err error) {
	r, err := a.batched(ctx, "take", reqID, user, strconv.FormatInt(qty, 10), strconv.FormatInt(limit, 10), nowMs())
	return r.Code, r.Held, err
}

// Settle records that reqID took (detail): its entry is held until the
// reservation is released or expires.
func (a *Allowance) Settle(ctx context.Context, reqID, user string, qty int64, detail string) error {
	_, err := a.batched(ctx, "settle", reqID, user, strconv.FormatInt(qty, 10), detail)
	return err
}

// GiveBack removes reqID's entry when it is still pending (its take found
// no stock): the user's count drops by its qty.
func (a *Allowance) GiveBack(ctx context.Context, reqID string) (bool, error) {
	r, err := a.run(ctx, "give", reqID, "p", nowMs(), "0")
	return err == nil && r.Code == AllowDone, err
}

// GiveBackEntry gives reqID's entry back when it still reads entry; tomb
// leaves a record that the request was given back (release, expiry).
func (a *Allowance) GiveBackEntry(ctx context.Context, reqID, entry string, tomb bool) (bool, error) {
	t := "0"
	if tomb {
		t = "1"
	}
	r, err := a.run(ctx, "give", reqID, entry, nowMs(), t)
	return err == nil && r.Code == AllowDone, err
}

// GiveBackDetail gives back the entry held for a deduction (release,
// expiry). Nothing happens when the detail holds none.
func (a *Allowance) GiveBackDetail(ctx context.Context, detail string) (bool, error) {
	r, err := a.run(ctx, "givedetail", detail, nowMs())
	return err == nil && r.Code == AllowDone, err
}

// Forget deletes field when it still reads value.
func (a *Allowance) Forget(ctx context.Context, field, value string) error {
	_, err := a.run(ctx, "forget", field, value)
	return err
}

// AllowEntry is one request's entry, as the sweep reads it.
type AllowEntry struct {
	ReqID string
	Raw   string // the value, for compare-and-give
	Kind  byte   // 'p' pending, 'h' held, 'x' given back
	Qty   int64
	User  string
	At    time.Time // pending: when taken; given back: when given back
	// Detail is the deduction of a held entry.
	Detail string
}

// AllowState is part of an allowance hash (one step of a Scan).
type AllowState struct {
	Entries []AllowEntry
	// Details maps a held entry's detail id to its request id.
	Details map[string]string
}

// Scan reads one HSCAN step of the hash from cursor (0: the start): about
// count fields, and the cursor of the next step (0: the pass is over).
// The sweep reads the hash this way, a step at a time, never whole: a
// limited SKU's hash holds an entry and a detail index per request of the
// retry window (hundreds of thousands on a big sale), and HGETALL of it
// blocked the shard, and the node, for as long as it took. A field may
// come twice in one pass, and a field written during the pass may not
// come at all (HSCAN's guarantees); the sweep's changes are compare-and-set
// on the value read, so neither matters.
func (a *Allowance) Scan(ctx context.Context, cursor uint64, count int64) (AllowState, uint64, error) {
	st := AllowState{Details: map[string]string{}}
	c := a.Shard.client()
	e, err := c.Do(ctx, c.B().Hscan().Key(a.key).Cursor(cursor).Count(count).Build()).AsScanEntry()
	a.Shard.observe(err)
	if err != nil {
		return st, 0, fmt.Errorf("allowance of %s: %w", a.SKU, err)
	}
	for i := 0; i+1 < len(e.Elements); i += 2 {
		f, v := e.Elements[i], e.Elements[i+1]
		switch {
		case strings.HasPrefix(f, "d:"):
			st.Details[f[2:]] = v
		case strings.HasPrefix(f, "r:"):
			st.Entries = append(st.Entries, parseAllowEntry(f[2:], v))
		}
	}
	return st, e.Cursor, nil
}

// Entries reads the entries of reqIDs (absent ones are left out).
func (a *Allowance) Entries(ctx context.Context, reqIDs []string) (map[string]AllowEntry, error) {
	out := make(map[string]AllowEntry, len(reqIDs))
	if len(reqIDs) == 0 {
		return out, nil
	}
	fields := make([]string, len(reqIDs))
	for i, r := range reqIDs {
		fields[i] = "r:" + r
	}
	c := a.Shard.client()
	vals, err := c.Do(ctx, c.B().Hmget().Key(a.key).Field(fields...).Build()).ToArray()
	a.Shard.observe(err)
	if err != nil {
		return nil, fmt.Errorf("allowance of %s: %w", a.SKU, err)
	}
	for i, v := range vals {
		if s, err := v.ToString(); err == nil && i < len(reqIDs) {
			out[reqIDs[i]] = parseAllowEntry(reqIDs[i], s)
		}
	}
	return out, nil
}

func parseAllowEntry(reqID, v string) AllowEntry {
	e := AllowEntry{ReqID: reqID, Raw: v}
	if v == "" {
		return e
	}
	e.Kind = v[0]
	parts := strings.SplitN(v, ":", 3)
	switch e.Kind {
	case 'x':
		if len(parts) >= 2 {
			ms, _ := strconv.ParseInt(parts[1], 10, 64)
			e.At = time.UnixMilli(ms)
		}
	case 'p':
		// p:<qty>:<ms>:<user>
		rest := strings.SplitN(v, ":", 4)
		if len(rest) == 4 {
			e.Qty, _ = strconv.ParseInt(rest[1], 10, 64)
			ms, _ := strconv.ParseInt(rest[2], 10, 64)
			e.At, e.User = time.UnixMilli(ms), rest[3]
		}
	case 'h':
		// h:<qty>:<sku>:<pid>:<epoch>:<seq>:<user>
		rest := strings.SplitN(v, ":", 7)
		if len(rest) == 7 {
			e.Qty, _ = strconv.ParseInt(rest[1], 10, 64)
			e.Detail = strings.Join(rest[2:6], ":")
			e.User = rest[6]
		}
	}
	return e
}

// Took reads reqID's record on the partition: whether it took here, and
// the deduction's sequence and qty when it did. The allowance sweep asks
// it before it gives back the allowance of a request MySQL has no row of
// (its detail may still be on its way).
func (p *Partition) Took(ctx context.Context, reqID string) (took bool, seq, qty int64, err error) {
	c := p.Shard.client()
	rec, err := c.Do(ctx, c.B().Hget().Key(p.records).Field(reqID).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return false, 0, 0, nil
	}
	p.Shard.observe(err)
	if err != nil {
		return false, 0, 0, err
	}
	if !strings.HasPrefix(rec, "o:") {
		return false, 0, 0, nil
	}
	seq, qty, err = parseTookRecord(rec)
	return err == nil, seq, qty, err
}
