package shard

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
	"github.com/stockd/stockd"
)

var (
	//go:embed scripts/take.lua
	takeSrc string
	//go:embed scripts/point.lua
	pointSrc string
	//go:embed scripts/refill.lua
	refillSrc string
	//go:embed scripts/drain.lua
	drainSrc string
	//go:embed scripts/init.lua
	initSrc string
	//go:embed scripts/inspect.lua
	inspectSrc string
	//go:embed scripts/claim.lua
	claimSrc string
	//go:embed scripts/find.lua
	findSrc string

	takeScript   = newReplicated(takeSrc)
	pointScript  = newReplicated(pointSrc)
	refillScript = newReplicated(refillSrc)
	drainScript  = newReplicated(drainSrc)
	initScript   = newReplicated(initSrc)
	claimScript  = newReplicated(claimSrc)
	// inspect and find only read, but they go out as plain EVALSHA, not
	// EVALSHA_RO: rueidis retries read-only commands by itself across a
	// reconnect, which waits out a dead shard for the caller's whole
	// context, and it recycles such a retried command while the dead
	// connection's writer may still read it (a data race the race detector
	// caught with a shard killed under confirms). The callers decide about
	// retries (a 503, the next sweep).
	inspectScript = rueidis.NewLuaScript(inspectSrc)
	findScript    = rueidis.NewLuaScript(findSrc)
)

// ErrBadReply means a script answered in a shape this code does not know;
// it points at a version skew between the Go code and the scripts.
var ErrBadReply = errors.New("unexpected script reply")

// Partition is a handle on one partition's keys on its shard. It is
// immutable; levels live in Redis and in the scheduler's registry.
type Partition struct {
	SKU   string
	ID    int
	Epoch int64
	Shard *Shard

	epoch string
	pid   string
	// keys: state, records, pointers, stream, applied; records and
	// pointers are the bases of their generation hashes (RecordWindow)
	state, records, pointers, stream, applied string
	// window is the records' generation length in ms (RecordWindow).
	window string
	// detailPrefix is what its detail ids start with (stockd.DetailPrefix).
	detailPrefix string

	// takes batches this partition's takes when its shard cannot run one
	// script over several partitions (a Redis Cluster); otherwise the
	// shard's combiner does (take.go).
	takes combiner
	// lastSeq is the highest detail sequence seen of this partition (its
	// takes, and what write-back landed); a take that returns a sequence
	// not above it means the shard rolled back.
	lastSeq atomic.Int64
	// written is signalled (without blocking, capacity one) after every
	// take call of this handle that recorded details: the write-back reads
	// the stream when it is, not on a timer (see Written).
	written chan struct{}
}

// Written is signalled after a take call through this handle recorded
// details in the stream (and by Notify). It holds at most one signal: a
// reader that drains it and then reads the stream sees every entry
// recorded before the signal.
func (p *Partition) Written() <-chan struct{} { return p.written }

// Notify signals Written without blocking: the stream may hold new
// entries (another node's takes, as that node told this one).
func (p *Partition) Notify() {
	select {
	case p.written <- struct{}{}:
	default:
	}
}

// ErrRollback means the partition's shard answered with a sequence lower
// than one already seen: it lost writes (restart from an older file, or a
// failover to a lagging replica).
var ErrRollback = errors.New("partition sequence went back: the shard lost writes")

// ObserveSeq records that sequence seq of the partition exists (landed in
// MySQL, or seen by another path).
func (p *Partition) ObserveSeq(seq int64) {
	for {
		cur := p.lastSeq.Load()
		if seq <= cur || p.lastSeq.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// LastSeq is the highest sequence seen of the partition.
func (p *Partition) LastSeq() int64 { return p.lastSeq.Load() }

// Partition returns the handle for (sku, id) with the given epoch on shard.
func (s *Set) Partition(sku string, id int, epoch int64, shardID string) (*Partition, error) {
	sh, err := s.Get(shardID)
	if err != nil {
		return nil, err
	}
	p := NewPartition(s.prefix, sku, id, epoch, sh)
	if s.opt.RecordWindow > 0 {
		p.window = strconv.FormatInt(s.opt.RecordWindow.Milliseconds(), 10)
	}
	return p, nil
}

// DefaultRecordWindow is the generation length of records and pointers
// when Options.RecordWindow is not set (scheduler.retry_window's default).
const DefaultRecordWindow = 15 * time.Minute

// NewPartition builds the handle; tag is {prefix:sku:id}.
func NewPartition(prefix, sku string, id int, epoch int64, sh *Shard) *Partition {
	pid := strconv.Itoa(id)
	tag := "{" + prefix + ":" + sku + ":" + pid + "}"
	return &Partition{
		SKU: sku, ID: id, Epoch: epoch, Shard: sh,
		epoch:    strconv.FormatInt(epoch, 10),
		pid:      pid,
		state:    tag + ":s",
		records:  tag + ":r",
		pointers: tag + ":p",
		stream:   tag + ":x",
		applied:  tag + ":a",
		window:   strconv.FormatInt(DefaultRecordWindow.Milliseconds(), 10),
		written:  make(chan struct{}, 1),

		detailPrefix: stockd.DetailPrefix(sku, id, epoch),
	}
}

// StreamKey is the detail stream of the partition.
func (p *Partition) StreamKey() string { return p.stream }

// RecordsKey is the base name of the per-request records' generation
// hashes: generation g is RecordsKey()+g (see RecordWindow).
func (p *Partition) RecordsKey() string { return p.records }

// PointersKey is the base name of the pointers' generation hashes.
func (p *Partition) PointersKey() string { return p.pointers }

// DetailID names one deduction everywhere (MySQL key, reservation token):
// sku, partition, epoch and the partition's sequence number.
func (p *Partition) DetailID(seq int64) string {
	return string(p.AppendDetailID(nil, seq))
}

// AppendDetailID appends the id of deduction seq to b.
func (p *Partition) AppendDetailID(b []byte, seq int64) []byte {
	return strconv.AppendInt(append(b, p.detailPrefix...), seq, 10)
}

// Point moves reqID's pointer on this (home) partition from expect to next.
func (p *Partition) Point(ctx context.Context, reqID, expect, next string) (PointResult, error) {
	vals, err := pointScript.exec(ctx, p.Shard, p.state, []string{p.records, p.pointers}, []string{reqID, expect, next, p.pid, p.window})
	if err != nil {
		return PointResult{}, fmt.Errorf("point on %s: %w", p.Shard.ID, err)
	}
	return decodePoint(vals)
}

// parseTookRecord parses "o:<seq>:<qty>".
func parseTookRecord(rec string) (seq, qty int64, err error) {
	parts := strings.Split(rec, ":")
	if len(parts) != 3 || parts[0] != "o" {
		return 0, 0, fmt.Errorf("record %q: %w", rec, ErrBadReply)
	}
	if seq, err = strconv.ParseInt(parts[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("record %q: %w", rec, ErrBadReply)
	}
	if qty, err = strconv.ParseInt(parts[2], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("record %q: %w", rec, ErrBadReply)
	}
	return seq, qty, nil
}

// Refill injects allocation id (qty units) into sub-domain sub, unless the
// sub-domain already holds capAt or more.
func (p *Partition) Refill(ctx context.Context, allocID int64, sub byte, qty, capAt int64) (RefillResult, error) {
	vals, err := refillScript.exec(ctx, p.Shard, p.state,
		[]string{p.state, p.applied},
		[]string{strconv.FormatInt(allocID, 10), string(sub), strconv.FormatInt(qty, 10), p.epoch, strconv.FormatInt(capAt, 10)})
	if err != nil {
		return RefillResult{}, fmt.Errorf("refill on %s: %w", p.Shard.ID, err)
	}
	return decodeRefill(vals)
}

// Drain takes every unit out of the partition under drain id; close also
// stops it from selling or being refilled again. It returns the code
// (Drained, DrainedBefore or DrainLost) and the units drained.
func (p *Partition) Drain(ctx context.Context, drainID int64, close bool) (DrainCode, int64, error) {
	c := "0"
	if close {
		c = "1"
	}
	vals, err := drainScript.exec(ctx, p.Shard, p.state,
		[]string{p.state, p.applied},
		[]string{strconv.FormatInt(drainID, 10), p.epoch, c})
	if err != nil {
		return 0, 0, fmt.Errorf("drain on %s: %w", p.Shard.ID, err)
	}
	r, err := decodeDrain(vals)
	return r.Code, r.Amount, err
}

// Init creates the partition's state when create is set and it is missing,
// and sets its threshold.
func (p *Partition) Init(ctx context.Context, threshold int64, create bool) (InitCode, error) {
	c := "0"
	if create {
		c = "1"
	}
	vals, err := initScript.exec(ctx, p.Shard, p.state,
		[]string{p.state},
		[]string{p.epoch, strconv.FormatInt(threshold, 10), c})
	if err != nil {
		return 0, fmt.Errorf("init on %s: %w", p.Shard.ID, err)
	}
	return decodeInit(vals)
}

// SetStatus sets the partition's status in Redis (fenced, closed) when its
// state exists with this epoch; takes and refills then refuse it.
func (p *Partition) SetStatus(ctx context.Context, status string) error {
	c := p.Shard.client()
	ep, err := c.Do(ctx, c.B().Hget().Key(p.state).Field("ep").Build()).ToString()
	if rueidis.IsRedisNil(err) || (err == nil && ep != p.epoch) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.Do(ctx, c.B().Hset().Key(p.state).FieldValue().FieldValue("st", status).Build()).Error()
}

// Claim decides whether this partition is reqID's home or redirects it to
// partition next (writing the redirect unless the request's pointer or
// took record is here, or another redirect was written first). stale, when
// not negative, is a pid whose redirect the caller knows to be stale (the
// partition left the home set): such a redirect is replaced by one to
// next, or removed when next is negative (this partition becomes the
// home).
func (p *Partition) Claim(ctx context.Context, reqID string, next, stale int) (ClaimResult, error) {
	nx, st := "", ""
	if next >= 0 {
		nx = strconv.Itoa(next)
	}
	if stale >= 0 {
		st = strconv.Itoa(stale)
	}
	vals, err := claimScript.exec(ctx, p.Shard, p.state, []string{p.records, p.pointers}, []string{reqID, nx, st, p.window})
	if err != nil {
		return ClaimResult{}, fmt.Errorf("claim on %s: %w", p.Shard.ID, err)
	}
	return decodeClaim(vals)
}

// ParseRedirect reads a redirect "h<pid>" found in a request's pointer
// slot (take's moved, point's conflict); ok is false for a pointer.
func ParseRedirect(s string) (pid int, ok bool) {
	if len(s) < 2 || s[0] != 'h' {
		return 0, false
	}
	pid, err := strconv.Atoi(s[1:])
	return pid, err == nil
}

// Inspect reads the partition's state.
func (p *Partition) Inspect(ctx context.Context) (State, error) {
	vals, err := inspectScript.Exec(ctx, p.Shard.client(),
		[]string{p.state, p.stream, p.records}, []string{p.window}).ToArray()
	if err != nil {
		return State{}, fmt.Errorf("inspect on %s: %w", p.Shard.ID, err)
	}
	return decodeInspect(vals)
}

// Successes calls fn with every request id that took on this partition
// and whose record is still kept (the generations of records within the
// retry window, RecordWindow). It scans the record generations around the
// shard's clock; callers use it once a partition's set of successes is
// final (the SKU is sold out).
func (p *Partition) Successes(ctx context.Context, fn func(reqID string)) error {
	c := p.Shard.client()
	t, err := c.Do(ctx, c.B().Time().Build()).AsIntSlice()
	if err != nil {
		return fmt.Errorf("time on %s: %w", p.Shard.ID, err)
	}
	if len(t) != 2 {
		return fmt.Errorf("time on %s: %w", p.Shard.ID, ErrBadReply)
	}
	w, _ := strconv.ParseInt(p.window, 10, 64)
	g := (t[0]*1000 + t[1]/1000) / w
	// g+1 too: the clock may pass a generation's end during the scan.
	for _, gen := range []int64{g - 1, g, g + 1} {
		if err := p.scanRecords(ctx, p.records+strconv.FormatInt(gen, 10), fn); err != nil {
			return err
		}
	}
	return nil
}

func (p *Partition) scanRecords(ctx context.Context, key string, fn func(reqID string)) error {
	var cursor uint64
	for {
		e, err := p.Shard.client().Do(ctx, p.Shard.client().B().Hscan().Key(key).Cursor(cursor).Count(1000).Build()).AsScanEntry()
		if err != nil {
			return fmt.Errorf("scan records on %s: %w", p.Shard.ID, err)
		}
		for i := 0; i+1 < len(e.Elements); i += 2 {
			if strings.HasPrefix(e.Elements[i+1], "o:") {
				fn(e.Elements[i])
			}
		}
		cursor = e.Cursor
		if cursor == 0 {
			return nil
		}
	}
}

func activeName(n int64) byte {
	if n == 1 {
		return 'b'
	}
	return 'a'
}

// replicated is a script that, on a shard in replica mode, is followed by
// WAIT in the same pipeline (one connection, so the WAIT covers it): a
// WAIT sent on its own may go out on another connection and prove nothing.
type replicated struct {
	lua *rueidis.Lua
	src string
	sha string
}

func newReplicated(src string) *replicated {
	sum := sha1.Sum([]byte(src))
	return &replicated{lua: rueidis.NewLuaScript(src), src: src, sha: hex.EncodeToString(sum[:])}
}

// exec runs the script on sh and returns its array reply. On a shard in
// replica mode the pipeline is: the script, a write to touch (a counter in
// the partition's state), then WAIT; the write makes the WAIT cover every
// earlier write to the shard (the replication stream is ordered), even
// when the script itself wrote nothing (a retry answered from its record).
// Fewer replicas than required is ErrNotReplicated.
func (r *replicated) exec(ctx context.Context, sh *Shard, touch string, keys, args []string) ([]rueidis.RedisMessage, error) {
	c := sh.client()
	cfg := sh.Config()
	if cfg.Mode() != DurabilityReplica {
		vals, err := r.lua.Exec(ctx, c, keys, args).ToArray()
		sh.observe(err)
		return vals, err
	}
	run := func(script rueidis.Completed) []rueidis.RedisResult {
		return c.DoMulti(ctx, script,
			c.B().Hincrby().Key(touch).Field("touch").Increment(1).Build(),
			c.B().Wait().Numreplicas(int64(cfg.Replicas)).Timeout(cfg.WaitTimeout.Milliseconds()).Build())
	}
	res := run(c.B().Evalsha().Sha1(r.sha).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build())
	if err := res[0].Error(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		res = run(c.B().Eval().Script(r.src).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build())
	}
	vals, err := res[0].ToArray()
	sh.observe(err)
	if err != nil {
		return nil, err
	}
	n, err := res[2].AsInt64()
	if err != nil {
		return nil, err
	}
	if n < int64(cfg.Replicas) {
		return nil, fmt.Errorf("%w: %d of %d replicas in %s", ErrNotReplicated, n, cfg.Replicas, cfg.WaitTimeout)
	}
	return vals, nil
}
