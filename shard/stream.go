package shard

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// Detail is one deduction as recorded in a partition's stream.
type Detail struct {
	// Seq is the detail's sequence in its partition.
	Seq       int64
	RequestID string
	UserID    string
	Qty       int64
	// TimeMs is when Redis took the units (its clock, milliseconds).
	TimeMs int64
}

// Entry is one stream entry: the details one take call recorded, with
// consecutive sequences starting at First.
type Entry struct {
	ID      string
	First   int64
	Details []Detail
}

// End is the sequence after the entry's last detail: the first sequence
// of the next entry.
func (e Entry) End() int64 { return e.First + int64(len(e.Details)) }

// parseEntries reads an XRANGE reply. It walks each entry's field list as
// it came ("n", "t", then r<i>, q<i>, u<i> per detail i) instead of
// building a map of it (rueidis' AsXRange): the map, and the field names
// put together to look it up, were the largest part of what a node
// allocates per deduction. Unknown fields are skipped.
func parseEntries(msg rueidis.RedisMessage) ([]Entry, error) {
	entries, err := msg.ToArray()
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(entries))
	for _, m := range entries {
		en, err := parseEntry(m)
		if err != nil {
			return out, err
		}
		out = append(out, en)
	}
	return out, nil
}

func parseEntry(m rueidis.RedisMessage) (Entry, error) {
	var out Entry
	parts, err := m.ToArray()
	if err != nil || len(parts) != 2 {
		return out, fmt.Errorf("stream entry: %w", ErrBadReply)
	}
	if out.ID, err = parts[0].ToString(); err != nil {
		return out, fmt.Errorf("stream entry: %w", ErrBadReply)
	}
	fields, err := parts[1].ToArray()
	if err != nil || len(fields)%2 != 0 {
		return out, fmt.Errorf("entry %s: %w", out.ID, ErrBadReply)
	}
	first, _, _ := strings.Cut(out.ID, "-")
	if out.First, err = strconv.ParseInt(first, 10, 64); err != nil {
		return out, fmt.Errorf("entry %s: %w", out.ID, ErrBadReply)
	}
	n, t := -1, int64(-1)
	for i := 0; i < len(fields); i += 2 {
		name, _ := fields[i].ToString()
		switch name {
		case "n":
			v, _ := fields[i+1].ToString()
			if n, err = strconv.Atoi(v); err != nil {
				n = -1
			}
		case "t":
			v, _ := fields[i+1].ToString()
			if t, err = strconv.ParseInt(v, 10, 64); err != nil {
				t = -1
			}
		}
	}
	if n < 1 || t < 0 {
		return out, fmt.Errorf("entry %s: malformed (n, t): %w", out.ID, ErrBadReply)
	}
	out.Details = make([]Detail, n)
	for i := 0; i < len(fields); i += 2 {
		name, _ := fields[i].ToString()
		if len(name) < 2 || (name[0] != 'r' && name[0] != 'q' && name[0] != 'u') {
			continue
		}
		k, err := strconv.Atoi(name[1:])
		if err != nil || k < 0 || k >= n {
			continue
		}
		v, _ := fields[i+1].ToString()
		d := &out.Details[k]
		switch name[0] {
		case 'r':
			d.RequestID = v
		case 'q':
			if d.Qty, err = strconv.ParseInt(v, 10, 64); err != nil {
				d.Qty = 0
			}
		case 'u':
			d.UserID = v
		}
	}
	for i := range out.Details {
		d := &out.Details[i]
		d.Seq, d.TimeMs = out.First+int64(i), t
		if d.RequestID == "" || d.Qty < 1 {
			return out, fmt.Errorf("entry %s: detail %d malformed: %w", out.ID, i, ErrBadReply)
		}
	}
	return out, nil
}

// ReadEntries reads up to count entries after entry id after ("" reads
// from the start of the stream). The stream holds only details not yet
// confirmed by the broker, so reading it from the start is the backlog.
//
// On a shard in replica mode the read is followed, in the same pipeline,
// by a write and WAIT, as takes are: entries come back only once the
// replicas hold them (else ErrNotReplicated). A take whose WAIT failed was
// answered 503, but its entry is in the stream; were it written back and
// the primary then lost, the promoted replica would reuse its sequence and
// so its detail id for another request's deduction.
func (p *Partition) ReadEntries(ctx context.Context, after string, count int64) ([]Entry, error) {
	return p.readEntries(ctx, after, count, true)
}

func (p *Partition) readEntries(ctx context.Context, after string, count int64, replicated bool) ([]Entry, error) {
	c := p.Shard.client()
	start := "-"
	if after != "" {
		start = "(" + after
	}
	read := c.B().Xrange().Key(p.stream).Start(start).End("+").Count(count).Build()
	var msg rueidis.RedisMessage
	var err error
	if cfg := p.Shard.Config(); replicated && cfg.Mode() == DurabilityReplica {
		rs := c.DoMulti(ctx, read,
			c.B().Hincrby().Key(p.state).Field("touch").Increment(1).Build(),
			c.B().Wait().Numreplicas(int64(cfg.Replicas)).Timeout(cfg.WaitTimeout.Milliseconds()).Build())
		msg, err = rs[0].ToMessage()
		if err == nil {
			var n int64
			if n, err = rs[2].AsInt64(); err == nil && n < int64(cfg.Replicas) {
				err = fmt.Errorf("%w: %d of %d replicas in %s", ErrNotReplicated, n, cfg.Replicas, cfg.WaitTimeout)
			}
		}
	} else {
		msg, err = c.Do(ctx, read).ToMessage()
	}
	if err != nil {
		return nil, fmt.Errorf("read details on %s: %w", p.Shard.ID, err)
	}
	return parseEntries(msg)
}

// TrimBefore deletes the entries whose details all have sequences below
// end: the broker confirmed them. Entries from end on stay.
func (p *Partition) TrimBefore(ctx context.Context, end int64) error {
	c := p.Shard.client()
	if err := c.Do(ctx, c.B().Xtrim().Key(p.stream).Minid().Threshold(strconv.FormatInt(end, 10)+"-0").Build()).Error(); err != nil {
		return fmt.Errorf("trim details on %s: %w", p.Shard.ID, err)
	}
	return nil
}

// trimSlice is how many trims go in one pipeline (TrimAll).
const trimSlice = 32

// TrimAll trims several partitions' streams as TrimBefore does, in one
// pipeline per shard (a batch spread over a thousand partitions would
// otherwise wait a thousand round trips). It returns the partitions whose
// trim failed, with their errors.
func TrimAll(ctx context.Context, ends map[*Partition]int64) map[*Partition]error {
	type call struct {
		ps   []*Partition
		cmds rueidis.Commands
	}
	byShard := map[*Shard]*call{}
	for p, end := range ends {
		cl := byShard[p.Shard]
		if cl == nil {
			cl = &call{}
			byShard[p.Shard] = cl
		}
		c := p.Shard.client()
		cl.ps = append(cl.ps, p)
		cl.cmds = append(cl.cmds, c.B().Xtrim().Key(p.stream).Minid().Threshold(strconv.FormatInt(end, 10)+"-0").Build())
	}
	var failed map[*Partition]error
	for sh, cl := range byShard {
		// In slices: one pipeline of a thousand commands would queue the
		// shard's takes (same connection) behind it.
		for lo := 0; lo < len(cl.cmds); lo += trimSlice {
			hi := min(lo+trimSlice, len(cl.cmds))
			for i, r := range sh.client().DoMulti(ctx, cl.cmds[lo:hi]...) {
				if err := r.Error(); err != nil {
					if failed == nil {
						failed = map[*Partition]error{}
					}
					failed[cl.ps[lo+i]] = fmt.Errorf("trim details on %s: %w", sh.ID, err)
				}
			}
		}
	}
	return failed
}

// RangeDetails returns every detail still in the stream (not yet confirmed
// by the broker), for verification; in replica mode too, replicated or not.
func (p *Partition) RangeDetails(ctx context.Context) ([]Detail, error) {
	var out []Detail
	after := ""
	for {
		es, err := p.readEntries(ctx, after, 1000, false)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			out = append(out, e.Details...)
		}
		if len(es) < 1000 {
			return out, nil
		}
		after = es[len(es)-1].ID
	}
}

// DrainAmount returns what pending drain id took out of the partition, if
// the drain script ran (ok false when it has not).
func (p *Partition) DrainAmount(ctx context.Context, drainID int64) (int64, bool, error) {
	c := p.Shard.client()
	n, err := c.Do(ctx, c.B().Hget().Key(p.applied).Field("d"+strconv.FormatInt(drainID, 10)).Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("drain amount on %s: %w", p.Shard.ID, err)
	}
	return n, true, nil
}

// FindDetail looks for deduction seq in the partition's stream, in one
// read-only script on the primary.
//
// With replicated set, a detail found on a shard in replica mode is then
// waited for, as the batcher's read is: a write to the state and WAIT in
// one pipeline (the replication stream is ordered, so the replicas then
// hold the entry too), else ErrNotReplicated. A take whose WAIT failed
// answered 503 and handed out no token, but its entry is in the primary's
// stream: a forged token that releases it would return its units to the
// pool, and a failover would then also bring them back on the promoted
// replica. Releases ask for this; confirms, which only take units out of
// sale, do not (and so keep working while a promoted primary has no
// replica yet). Without replicas, a detail read here and then lost is a
// rollback, caught by sequence (the early row raises seen_seq) and fenced.
func (p *Partition) FindDetail(ctx context.Context, seq int64, replicated bool) (Lookup, error) {
	c := p.Shard.client()
	arr, err := findScript.Exec(ctx, c, []string{p.state, p.stream},
		[]string{p.epoch, strconv.FormatInt(seq, 10)}).ToArray()
	p.Shard.observe(err)
	if err != nil {
		return Lookup{}, fmt.Errorf("find detail on %s: %w", p.Shard.ID, err)
	}
	l, err := decodeFind(arr)
	if err != nil {
		return Lookup{}, err
	}
	if cfg := p.Shard.Config(); replicated && l.Code == DetailFound && cfg.Mode() == DurabilityReplica {
		rs := c.DoMulti(ctx,
			c.B().Hincrby().Key(p.state).Field("touch").Increment(1).Build(),
			c.B().Wait().Numreplicas(int64(cfg.Replicas)).Timeout(cfg.WaitTimeout.Milliseconds()).Build())
		n, err := rs[1].AsInt64()
		if err == nil {
			err = rs[0].Error()
		}
		if err != nil {
			return Lookup{}, fmt.Errorf("find detail on %s: %w", p.Shard.ID, err)
		}
		if n < int64(cfg.Replicas) {
			return Lookup{}, fmt.Errorf("find detail on %s: %w: %d of %d replicas in %s", p.Shard.ID, ErrNotReplicated, n, cfg.Replicas, cfg.WaitTimeout)
		}
	}
	return l, nil
}
