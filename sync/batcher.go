package sync

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/stockd/stockd/shard"
)

// wireBatch is the message body of one batch.
type wireBatch struct {
	ID      string       `json:"id"`
	Node    string       `json:"node"`
	Details []wireDetail `json:"details"`
}

// wireDetail is one deduction in a batch.
type wireDetail struct {
	DetailID  string `json:"d"`
	SKU       string `json:"s"`
	PID       int    `json:"p"`
	RequestID string `json:"r"`
	UserID    string `json:"u,omitempty"`
	Qty       int64  `json:"q"`
	TimeMs    int64  `json:"t"`
}

// item is one stream entry (all its details go into one batch, so that
// a confirmed batch covers whole entries and the stream can be trimmed).
type item struct {
	p *shard.Partition
	e shard.Entry
}

// Batcher moves details from the streams of the partitions this node owns
// into RabbitMQ batches, and deletes them from Redis once confirmed.
type Batcher struct {
	cfg      Config
	consumer string
	pub      *publisher
	brk      *broker
	logger   *slog.Logger
	m        *metrics
	// partitions lists the partitions whose streams this node reads now.
	partitions func() []*shard.Partition
	in         chan item
}

// reader is one partition stream's reader goroutine, as reconcile sees it.
type reader struct {
	p      *shard.Partition
	cancel context.CancelFunc
	// read: the reader got entries since reconcile last counted the
	// stream; backlog is the stream's length as counted last. A stream
	// with nothing read since a count of zero is not counted again: it
	// is empty unless a take signalled it (and then the reader reads).
	read    atomic.Bool
	backlog int64
	// polled is when reconcile last woke the reader for a safety read.
	polled time.Time
}

// Run reads and publishes until ctx ends, then publishes what it holds
// (bounded by PublishTimeout) and returns. Details it could not publish
// stay pending in Redis for the next owner or the next start.
//
// A reader reads its stream when its partition signals new entries
// (shard.Partition.Written: this node's takes, and other nodes' takes as
// they tell the owner), not on a timer; reconcile, once a second, also
// wakes at most IdleReadsPerSecond readers not read for IdlePollInterval
// (entries whose signal was lost), so that the Redis calls of idle
// partitions stay bounded however many partitions there are.
func (b *Batcher) Run(ctx context.Context) error {
	defer b.brk.close()
	readCtx, stopReaders := context.WithCancel(ctx)
	var readers gosync.WaitGroup
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		b.loop(ctx)
	}()

	running := map[string]*reader{}
	var order []string // keys of running, for the round of safety reads
	cursor := 0
	reconcile := func() {
		want := map[string]*shard.Partition{}
		for _, p := range b.partitions() {
			want[p.StreamKey()+"/"+p.Shard.ID] = p
		}
		changed := false
		for k, r := range running {
			if p, ok := want[k]; !ok || p != r.p {
				// Gone, or a new handle (a reload): a new handle's takes
				// signal the new one, so its reader starts again.
				r.cancel()
				delete(running, k)
				changed = true
			}
		}
		for k, p := range want {
			if _, ok := running[k]; ok {
				continue
			}
			rctx, cancel := context.WithCancel(readCtx)
			r := &reader{p: p, cancel: cancel, polled: time.Now()}
			r.read.Store(true) // count it once
			running[k] = r
			changed = true
			readers.Add(1)
			go func() {
				defer readers.Done()
				b.read(rctx, r)
			}()
		}
		if changed {
			order = order[:0]
			for k := range running {
				order = append(order, k)
			}
			cursor = 0
		}
		// The backlog: only streams read from since their last count (or
		// not empty then) are counted again.
		var backlog int64
		for _, r := range running {
			if r.read.Swap(false) || r.backlog > 0 {
				if st, err := r.p.Inspect(ctx); err == nil {
					r.backlog = st.Backlog
				} else {
					r.read.Store(true)
				}
			}
			backlog += r.backlog
		}
		b.m.backlog.Set(float64(backlog))
		b.m.backlogNow.Store(backlog)
		// Safety reads, round robin, bounded.
		now := time.Now()
		budget := b.cfg.IdleReadsPerSecond
		for i := 0; i < len(order) && budget > 0; i++ {
			k := order[cursor%len(order)]
			cursor++
			r := running[k]
			if r == nil || now.Sub(r.polled) < b.cfg.IdlePollInterval {
				continue
			}
			r.polled = now
			r.p.Notify()
			budget--
		}
	}
	reconcile()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			reconcile()
		case <-ctx.Done():
			stopReaders()
			readers.Wait()
			<-loopDone
			return nil
		}
	}
}

// read feeds one partition's entries to the batch loop, from the start of
// its stream: the stream holds only details no node got confirmed yet, so
// a node that takes a partition over (its owner died) or restarts starts
// with exactly the backlog. Two owners for a moment publish the same
// details twice, which MySQL absorbs by detail id.
//
// Once caught up (a read returned less than a batch), it waits for the
// partition's signal (shard.Partition.Written), which it drains before
// every read: an entry recorded after the drain signals again, so none
// waits for more than PollInterval once signalled.
func (b *Batcher) read(ctx context.Context, r *reader) {
	p := r.p
	log := b.logger.With("sku", p.SKU, "pid", p.ID)
	after := ""
	failing := false
	count := int64(b.cfg.BatchSize)
	for ctx.Err() == nil {
		select {
		case <-p.Written():
		default:
		}
		es, err := p.ReadEntries(ctx, after, count)
		b.m.streamReads.Inc()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				log.Warn("reading details", "err", err)
				failing = true
			}
			sleepCtx(ctx, b.cfg.PollInterval*4)
			continue
		}
		failing = false
		for _, e := range es {
			select {
			case b.in <- item{p: p, e: e}:
			case <-ctx.Done():
				return
			}
		}
		if len(es) > 0 {
			after = es[len(es)-1].ID
			r.read.Store(true)
		}
		if int64(len(es)) >= count {
			continue
		}
		// Caught up: at most one read per PollInterval (takes meanwhile
		// gather into it), and none until something signals.
		if !sleepCtx(ctx, b.cfg.PollInterval) {
			return
		}
		select {
		case <-p.Written():
		case <-ctx.Done():
			return
		}
	}
}

// loop owns the batch buffer: it flushes on size or on BatchInterval after
// the first detail, and once more when ctx ends.
func (b *Batcher) loop(ctx context.Context) {
	var batch []item
	details := 0
	// held is the end of each stream's last entry in batch. A reader that
	// stopped and started again (ownership left the node and came back)
	// reads its stream from the start: entries ending at or below held
	// are in this batch already (or in one the broker confirmed).
	held := map[string]int64{}
	add := func(it item) bool {
		k := it.p.StreamKey() + "/" + it.p.Shard.ID
		if it.e.End() <= held[k] {
			b.logger.Debug("skipping an entry the batch holds already (its reader restarted)", "sku", it.p.SKU, "pid", it.p.ID, "entry", it.e.ID)
			return false
		}
		held[k] = it.e.End()
		batch = append(batch, it)
		details += len(it.e.Details)
		return true
	}
	var deadline <-chan time.Time
	var timer *time.Timer
	flush := func(ctx context.Context) {
		if len(batch) == 0 {
			return
		}
		if !b.flush(ctx, batch) {
			// Interrupted by shutdown before the broker confirmed: the
			// batch stays for the shutdown flush below.
			return
		}
		batch, details = nil, 0
		clear(held)
		if timer != nil {
			timer.Stop()
		}
		deadline = nil
	}
	for {
		select {
		case it := <-b.in:
			if !add(it) {
				continue
			}
			if len(batch) == 1 {
				timer = time.NewTimer(b.cfg.BatchInterval)
				deadline = timer.C
			}
			if details >= b.cfg.BatchSize {
				b.m.batchTrigger.WithLabelValues("size").Inc()
				flush(ctx)
			}
		case <-deadline:
			b.m.batchTrigger.WithLabelValues("interval").Inc()
			flush(ctx)
		case <-ctx.Done():
			// Drain what readers already handed over, then one last try.
			for {
				select {
				case it := <-b.in:
					add(it)
					continue
				default:
				}
				break
			}
			fctx, cancel := context.WithTimeout(context.Background(), b.cfg.PublishTimeout)
			b.m.batchTrigger.WithLabelValues("shutdown").Inc()
			b.flushOnce(fctx, batch)
			cancel()
			return
		}
	}
}

// flush publishes batch until the broker confirms it (or ctx ends), then
// acknowledges its entries in Redis. It reports whether the broker
// confirmed.
func (b *Batcher) flush(ctx context.Context, batch []item) bool {
	body, id := b.encode(batch)
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := b.pub.publish(ctx, id, body)
		if err == nil {
			break
		}
		b.m.published.WithLabelValues("failed").Inc()
		if attempt == 0 || attempt%20 == 0 {
			b.logger.Warn("publishing batch failed; retrying", "batch", id, "entries", len(batch), "attempt", attempt+1, "err", err)
		}
		if !sleepCtx(ctx, backoff) {
			return false // left pending in Redis
		}
		backoff = min(backoff*2, 2*time.Second)
	}
	b.acked(ctx, id, batch)
	return true
}

// flushOnce is the shutdown flush: one attempt.
func (b *Batcher) flushOnce(ctx context.Context, batch []item) {
	if len(batch) == 0 {
		return
	}
	body, id := b.encode(batch)
	if err := b.pub.publish(ctx, id, body); err != nil {
		b.logger.Warn("final batch not published; it stays in Redis for the next owner", "entries", len(batch), "err", err)
		return
	}
	b.acked(ctx, id, batch)
}

func (b *Batcher) acked(ctx context.Context, id string, batch []item) {
	n := 0
	end := map[*shard.Partition]int64{}
	for _, it := range batch {
		n += len(it.e.Details)
		end[it.p] = max(end[it.p], it.e.End())
	}
	b.m.published.WithLabelValues("confirmed").Inc()
	b.m.batchSize.Observe(float64(n))
	b.m.detailsPublished.Add(float64(n))
	// The broker has the batch: trimming must not stop because shutdown
	// began meanwhile, or a graceful stop leaves published details in the
	// streams (harmless, but published again by the next owner).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.PublishTimeout)
	defer cancel()
	for p, err := range shard.TrimAll(ctx, end) {
		// They stay and are published again later: harmless.
		b.logger.Warn("trimming published details", "batch", id, "sku", p.SKU, "pid", p.ID, "err", err)
	}
}

// encode writes batch as the wire format (encodeWire's) straight from
// the stream entries, without a wireDetail per detail in between.
func (b *Batcher) encode(batch []item) ([]byte, string) {
	var raw [8]byte
	rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	n := 0
	for _, it := range batch {
		n += len(it.e.Details)
	}
	out := appendWireHead(make([]byte, 0, 64+n*112), id, b.consumer)
	for _, it := range batch {
		for _, d := range it.e.Details {
			out = it.p.AppendDetailID(append(out, '\n'), d.Seq)
			out = appendWireRest(out, it.p.SKU, it.p.ID, d.RequestID, d.UserID, d.Qty, d.TimeMs)
		}
	}
	return out, id
}

// sleepCtx sleeps d unless ctx ends first; it reports whether it slept.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
