package shard

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

var (
	//go:embed scripts/ack.lua
	ackSrc    string
	ackScript = rueidis.NewLuaScript(ackSrc)
)

// Detail is one deduction as recorded in a partition's stream.
type Detail struct {
	// Entry is the stream entry id, "<seq>-0".
	Entry     string
	Seq       int64
	RequestID string
	UserID    string
	Qty       int64
	// TimeMs is when Redis took the units (its clock, milliseconds).
	TimeMs int64
}

func parseDetail(e rueidis.XRangeEntry) (Detail, error) {
	d := Detail{Entry: e.ID, RequestID: e.FieldValues["r"], UserID: e.FieldValues["u"]}
	seq, _, _ := strings.Cut(e.ID, "-")
	var err1, err2, err3 error
	d.Seq, err1 = strconv.ParseInt(seq, 10, 64)
	d.Qty, err2 = strconv.ParseInt(e.FieldValues["q"], 10, 64)
	d.TimeMs, err3 = strconv.ParseInt(e.FieldValues["t"], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil || d.RequestID == "" || d.Qty < 1 {
		return d, fmt.Errorf("detail %s: malformed entry %v: %w", e.ID, e.FieldValues, ErrBadReply)
	}
	return d, nil
}

func parseDetails(entries []rueidis.XRangeEntry) ([]Detail, error) {
	out := make([]Detail, 0, len(entries))
	for _, e := range entries {
		if e.FieldValues == nil {
			continue // deleted while pending
		}
		d, err := parseDetail(e)
		if err != nil {
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}

// EnsureGroup creates the consumer group on the partition's stream (and
// the stream) unless it exists.
func (p *Partition) EnsureGroup(ctx context.Context, group string) error {
	c := p.Shard.c
	err := c.Do(ctx, c.B().XgroupCreate().Key(p.stream).Group(group).Id("0").Mkstream().Build()).Error()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group on %s: %w", p.Shard.ID, err)
	}
	return nil
}

// ReadDetails reads up to count details for consumer. after ">" reads new
// ones; any other entry id ("0" to start) reads the consumer's own
// unacknowledged ones after it, which is how a restarted consumer finds
// what it read but never saw confirmed.
func (p *Partition) ReadDetails(ctx context.Context, group, consumer string, count int64, after string) ([]Detail, error) {
	c := p.Shard.c
	id := after
	res, err := c.Do(ctx, c.B().Xreadgroup().Group(group, consumer).Count(count).Streams().Key(p.stream).Id(id).Build()).AsXRead()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		if strings.HasPrefix(err.Error(), "NOGROUP") {
			if gerr := p.EnsureGroup(ctx, group); gerr != nil {
				return nil, gerr
			}
			return nil, nil
		}
		return nil, fmt.Errorf("read details on %s: %w", p.Shard.ID, err)
	}
	return parseDetails(res[p.stream])
}

// ClaimDetails takes over up to count details that other consumers (a node
// that died or gave the partition up) left unacknowledged for minIdleMs.
func (p *Partition) ClaimDetails(ctx context.Context, group, consumer string, minIdleMs, count int64) ([]Detail, error) {
	c := p.Shard.c
	arr, err := c.Do(ctx, c.B().Xautoclaim().Key(p.stream).Group(group).Consumer(consumer).
		MinIdleTime(strconv.FormatInt(minIdleMs, 10)).Start("0").Count(count).Build()).ToArray()
	if err != nil {
		if strings.HasPrefix(err.Error(), "NOGROUP") {
			return nil, p.EnsureGroup(ctx, group)
		}
		return nil, fmt.Errorf("claim details on %s: %w", p.Shard.ID, err)
	}
	if len(arr) < 2 {
		return nil, fmt.Errorf("claim details: %w", ErrBadReply)
	}
	entries, err := arr[1].AsXRange()
	if err != nil {
		return nil, fmt.Errorf("claim details: %w", err)
	}
	return parseDetails(entries)
}

// AckDetails acknowledges and deletes entries (after the broker confirmed
// them).
func (p *Partition) AckDetails(ctx context.Context, group string, entries []string) error {
	if len(entries) == 0 {
		return nil
	}
	args := make([]string, 0, len(entries)+1)
	args = append(args, group)
	args = append(args, entries...)
	if err := ackScript.Exec(ctx, p.Shard.c, []string{p.stream}, args).Error(); err != nil {
		return fmt.Errorf("ack details on %s: %w", p.Shard.ID, err)
	}
	return nil
}

// RangeDetails returns every detail still in the stream (not yet confirmed
// by the broker), for verification.
func (p *Partition) RangeDetails(ctx context.Context) ([]Detail, error) {
	c := p.Shard.c
	var out []Detail
	start := "-"
	for {
		entries, err := c.Do(ctx, c.B().Xrange().Key(p.stream).Start(start).End("+").Count(1000).Build()).AsXRange()
		if err != nil {
			return nil, fmt.Errorf("range details on %s: %w", p.Shard.ID, err)
		}
		ds, err := parseDetails(entries)
		if err != nil {
			return nil, err
		}
		out = append(out, ds...)
		if len(entries) < 1000 {
			return out, nil
		}
		start = "(" + entries[len(entries)-1].ID
	}
}

// DrainAmount returns what pending drain id took out of the partition, if
// the drain script ran (ok false when it has not).
func (p *Partition) DrainAmount(ctx context.Context, drainID int64) (int64, bool, error) {
	c := p.Shard.c
	n, err := c.Do(ctx, c.B().Hget().Key(p.applied).Field("d"+strconv.FormatInt(drainID, 10)).Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("drain amount on %s: %w", p.Shard.ID, err)
	}
	return n, true, nil
}
