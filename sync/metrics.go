package sync

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics of the write-back pipeline, stockd_sync_*.
type metrics struct {
	batchSize        prometheus.Histogram
	batchTrigger     *prometheus.CounterVec
	published        *prometheus.CounterVec
	detailsPublished prometheus.Counter
	applied          *prometheus.CounterVec
	applyLag         prometheus.Histogram
	deadLettered     prometheus.Counter
	expired          prometheus.Counter
	backlog          prometheus.Gauge
	streamReads      prometheus.Counter

	// In-process copies for the status page (Sync.Backlog,
	// Sync.TakeApplyLag): the backlog as last counted, and the largest
	// apply lag (ms) since the sampler last took it, -1 for none.
	backlogNow atomic.Int64
	lagMaxMs   atomic.Int64
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		streamReads: f.NewCounter(prometheus.CounterOpts{
			Name: "stockd_sync_stream_reads_total",
			Help: "Reads of partition detail streams by the batcher (signalled by takes, or safety reads of idle streams).",
		}),
		batchSize: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "stockd_sync_batch_details",
			Help:    "Details per published batch.",
			Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500},
		}),
		batchTrigger: f.NewCounterVec(prometheus.CounterOpts{
			Name: "stockd_sync_batches_triggered_total",
			Help: "Batches flushed, by trigger (size, interval, shutdown).",
		}, []string{"trigger"}),
		published: f.NewCounterVec(prometheus.CounterOpts{
			Name: "stockd_sync_publish_total",
			Help: "Batch publish attempts, by result (confirmed by the broker, or failed).",
		}, []string{"result"}),
		detailsPublished: f.NewCounter(prometheus.CounterOpts{
			Name: "stockd_sync_details_published_total",
			Help: "Details in batches the broker confirmed.",
		}),
		applied: f.NewCounterVec(prometheus.CounterOpts{
			Name: "stockd_sync_details_applied_total",
			Help: "Details applied to MySQL, by result (inserted, duplicate, doubled).",
		}, []string{"result"}),
		applyLag: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "stockd_sync_apply_lag_seconds",
			Help:    "Time from a deduction in Redis to its detail row in MySQL.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60},
		}),
		deadLettered: f.NewCounter(prometheus.CounterOpts{
			Name: "stockd_sync_dead_lettered_total",
			Help: "Batches sent to the dead-letter queue.",
		}),
		expired: f.NewCounter(prometheus.CounterOpts{
			Name: "stockd_sync_reservations_expired_total",
			Help: "Reservations released because they were not confirmed in time.",
		}),
		backlog: f.NewGauge(prometheus.GaugeOpts{
			Name: "stockd_sync_stream_backlog_entries",
			Help: "Stream entries (one per take call, up to 64 details each) in the streams this node reads, not yet confirmed by the broker.",
		}),
	}
	m.lagMaxMs.Store(-1)
	return m
}

// lagSeen keeps the largest apply lag (ms) seen since the last take.
func (m *metrics) lagSeen(ms int64) {
	for {
		cur := m.lagMaxMs.Load()
		if ms <= cur || m.lagMaxMs.CompareAndSwap(cur, ms) {
			return
		}
	}
}
