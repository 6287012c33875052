package sync

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	gosync "sync"
	"time"

	"github.com/stockd/stockd/shard"
)

// group is the consumer group of every detail stream.
const group = "sync"

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

type item struct {
	p *shard.Partition
	d shard.Detail
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

// Run reads and publishes until ctx ends, then publishes what it holds
// (bounded by PublishTimeout) and returns. Details it could not publish
// stay pending in Redis for the next owner or the next start.
func (b *Batcher) Run(ctx context.Context) error {
	defer b.brk.close()
	readCtx, stopReaders := context.WithCancel(ctx)
	var readers gosync.WaitGroup
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		b.loop(ctx)
	}()

	running := map[string]context.CancelFunc{}
	reconcile := func() {
		want := map[string]*shard.Partition{}
		var backlog int64
		for _, p := range b.partitions() {
			want[p.StreamKey()+"/"+p.Shard.ID] = p
			if st, err := p.Inspect(ctx); err == nil {
				backlog += st.Backlog
			}
		}
		b.m.backlog.Set(float64(backlog))
		for k, cancel := range running {
			if _, ok := want[k]; !ok {
				cancel()
				delete(running, k)
			}
		}
		for k, p := range want {
			if _, ok := running[k]; ok {
				continue
			}
			rctx, cancel := context.WithCancel(readCtx)
			running[k] = cancel
			readers.Add(1)
			go func() {
				defer readers.Done()
				b.read(rctx, p)
			}()
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

// read feeds one partition's details to the batch loop: first its own
// unacknowledged ones (from before a restart), then new ones, and now and
// then those a dead consumer left behind.
func (b *Batcher) read(ctx context.Context, p *shard.Partition) {
	log := b.logger.With("sku", p.SKU, "pid", p.ID)
	if err := p.EnsureGroup(ctx, group); err != nil && ctx.Err() == nil {
		log.Warn("detail stream group", "err", err)
	}
	count := int64(b.cfg.BatchSize)
	// First this consumer's own unacknowledged details (a restart), walking
	// forward from "0", then new ones (">").
	after := "0"
	var lastClaim time.Time // claim at once: a new owner takes over a dead one's details
	failing := false
	for ctx.Err() == nil {
		ds, err := p.ReadDetails(ctx, group, b.consumer, count, after)
		if err == nil && after != ">" {
			if len(ds) == 0 {
				after = ">"
			} else {
				after = ds[len(ds)-1].Entry
			}
		}
		if err == nil && len(ds) == 0 && time.Since(lastClaim) > b.cfg.ClaimIdle/2 {
			lastClaim = time.Now()
			ds, err = p.ClaimDetails(ctx, group, b.consumer, b.cfg.ClaimIdle.Milliseconds(), count)
			if len(ds) > 0 {
				log.Info("took over unacknowledged details", "n", len(ds))
			}
		}
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
		if len(ds) == 0 {
			sleepCtx(ctx, b.cfg.PollInterval)
			continue
		}
		for _, d := range ds {
			select {
			case b.in <- item{p: p, d: d}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// loop owns the batch buffer: it flushes on size or on BatchInterval after
// the first detail, and once more when ctx ends.
func (b *Batcher) loop(ctx context.Context) {
	batch := make([]item, 0, b.cfg.BatchSize)
	seen := map[string]bool{} // entries in the batch, against duplicates from claims
	var deadline <-chan time.Time
	var timer *time.Timer
	flush := func(ctx context.Context) {
		if len(batch) == 0 {
			return
		}
		b.flush(ctx, batch)
		batch = batch[:0]
		clear(seen)
		if timer != nil {
			timer.Stop()
		}
		deadline = nil
	}
	for {
		select {
		case it := <-b.in:
			key := it.p.StreamKey() + "/" + it.d.Entry
			if seen[key] {
				continue
			}
			seen[key] = true
			batch = append(batch, it)
			if len(batch) == 1 {
				timer = time.NewTimer(b.cfg.BatchInterval)
				deadline = timer.C
			}
			if len(batch) >= b.cfg.BatchSize {
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
					key := it.p.StreamKey() + "/" + it.d.Entry
					if !seen[key] {
						seen[key] = true
						batch = append(batch, it)
					}
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
// acknowledges its entries in Redis.
func (b *Batcher) flush(ctx context.Context, batch []item) {
	body, id := b.encode(batch)
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := b.pub.publish(ctx, id, body)
		if err == nil {
			break
		}
		b.m.published.WithLabelValues("failed").Inc()
		if attempt == 0 || attempt%20 == 0 {
			b.logger.Warn("publishing batch failed; retrying", "batch", id, "details", len(batch), "attempt", attempt+1, "err", err)
		}
		if !sleepCtx(ctx, backoff) {
			return // left pending in Redis
		}
		backoff = min(backoff*2, 2*time.Second)
	}
	b.acked(ctx, id, batch)
}

// flushOnce is the shutdown flush: one attempt.
func (b *Batcher) flushOnce(ctx context.Context, batch []item) {
	if len(batch) == 0 {
		return
	}
	body, id := b.encode(batch)
	if err := b.pub.publish(ctx, id, body); err != nil {
		b.logger.Warn("final batch not published; it stays pending in Redis", "details", len(batch), "err", err)
		return
	}
	b.acked(ctx, id, batch)
}

func (b *Batcher) acked(ctx context.Context, id string, batch []item) {
	b.m.published.WithLabelValues("confirmed").Inc()
	b.m.batchSize.Observe(float64(len(batch)))
	b.m.detailsPublished.Add(float64(len(batch)))
	byPart := map[*shard.Partition][]string{}
	for _, it := range batch {
		byPart[it.p] = append(byPart[it.p], it.d.Entry)
	}
	for p, entries := range byPart {
		if err := p.AckDetails(ctx, group, entries); err != nil {
			// They stay pending and are published again later: harmless.
			b.logger.Warn("acknowledging published details", "batch", id, "sku", p.SKU, "pid", p.ID, "err", err)
		}
	}
}

func (b *Batcher) encode(batch []item) ([]byte, string) {
	var raw [8]byte
	rand.Read(raw[:])
	w := wireBatch{ID: hex.EncodeToString(raw[:]), Node: b.consumer, Details: make([]wireDetail, len(batch))}
	for i, it := range batch {
		w.Details[i] = wireDetail{
			DetailID:  it.p.DetailID(it.d.Seq),
			SKU:       it.p.SKU,
			PID:       it.p.ID,
			RequestID: it.d.RequestID,
			UserID:    it.d.UserID,
			Qty:       it.d.Qty,
			TimeMs:    it.d.TimeMs,
		}
	}
	body, _ := json.Marshal(w) // plain structs: cannot fail
	return body, w.ID
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
