// Package sync carries deduction details from Redis to MySQL, exactly once,
// and runs the reservation lifecycle (confirm, release, expiry) and the
// conservation check (verify).
//
// The path of a detail:
//
//	take.lua ──XADD──▶ partition stream ──batcher──▶ RabbitMQ ──applier──▶ MySQL
//
// The batcher reads the streams of the partitions this node owns (from
// their start: a stream holds only details no node got confirmed yet),
// gathers details into a batch that goes when it reaches BatchSize or
// BatchInterval after its first detail, publishes it as one persistent
// message and waits for the broker's confirm; only then does it trim the
// entries from Redis. The applier consumes batches
// (manual ack, bounded prefetch) and inserts each detail keyed by its detail
// id in one transaction that also moves the SKU's counters by exactly what
// was inserted, then acks the message. A batch delivered twice, a detail
// published twice (crash between confirm and delete, a takeover) or a
// release that got there first change nothing the second time.
//
// The package is named sync after its job; importers alias it (stocksync).
package sync

import (
	"errors"
	"fmt"
	"time"
)

// Queue types (Config.QueueType).
const (
	// QueueQuorum: a replicated, durable RabbitMQ quorum queue; its
	// dead-letter queue is a quorum queue too and dead-lettering is
	// at-least-once, so a batch on its way to the dead-letter queue
	// survives a broker node's crash.
	QueueQuorum = "quorum"
	// QueueClassic: a durable classic queue (stockd's queue before
	// quorum queues).
	QueueClassic = "classic"
)

// Config tunes write-back and the reservation lifecycle.
type Config struct {
	// Queue is the durable RabbitMQ queue of detail batches; poison
	// messages go to Queue+".dlq".
	Queue string `yaml:"queue"`
	// QueueType is the RabbitMQ queue type of Queue and its dead-letter
	// queue: quorum (the default; replicated over the broker cluster's
	// nodes by Raft, survives the loss of a minority) or classic (one
	// node's queue, what stockd declared before quorum queues). A queue
	// that already exists with the other type stops the start with
	// ErrQueueType: the broker cannot change a queue's type in place.
	QueueType string `yaml:"queue_type"`
	// BatchSize: a batch is published as soon as it holds this many details.
	BatchSize int `yaml:"batch_size"`
	// BatchInterval: a batch is published at the latest this long after its
	// first detail.
	BatchInterval time.Duration `yaml:"batch_interval"`
	// PollInterval: a partition stream is read at most this often while
	// takes keep signalling it (they gather into one read); a take is read
	// at the latest this long after it was recorded.
	PollInterval time.Duration `yaml:"poll_interval"`
	// IdlePollInterval: a stream no take signalled (this node's takes,
	// other nodes' hints) is read anyway after this long, as a safety net
	// for a lost hint, within the IdleReadsPerSecond budget.
	IdlePollInterval time.Duration `yaml:"idle_poll_interval"`
	// IdleReadsPerSecond caps those safety reads per node, so that idle
	// partitions cost a bounded number of Redis calls however many there
	// are (with more idle streams than IdlePollInterval*IdleReadsPerSecond
	// a round over them takes longer).
	IdleReadsPerSecond int `yaml:"idle_reads_per_second"`
	// PublishTimeout bounds the wait for one broker confirm.
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	// Appliers consume batches in parallel on this node.
	Appliers int `yaml:"appliers"`
	// Prefetch is how many unacknowledged batches one applier holds.
	Prefetch int `yaml:"prefetch"`
	// MaxAttempts: a batch that fails this many times for a reason other
	// than MySQL being unreachable goes to the dead-letter queue.
	MaxAttempts int `yaml:"max_attempts"`
	// ReservationTTL: an unconfirmed reservation is released after this.
	ReservationTTL time.Duration `yaml:"reservation_ttl"`
	// ExpireEvery is how often expired reservations are looked for.
	ExpireEvery time.Duration `yaml:"expire_every"`
	// MaxExtension caps POST /v1/extend: a reservation's expiry is pushed
	// to at most now + MaxExtension.
	MaxExtension time.Duration `yaml:"max_extension"`

	// LoadData: the applier writes detail rows with LOAD DATA LOCAL INFILE
	// (cheaper for MySQL), falling back to INSERT when the server refuses
	// local files. false: always INSERT (for a proxy that breaks LOAD DATA
	// LOCAL in another way).
	LoadData bool `yaml:"load_data"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Queue:              "stockd.details",
		QueueType:          QueueQuorum,
		BatchSize:          2000,
		BatchInterval:      time.Second,
		PollInterval:       50 * time.Millisecond,
		IdlePollInterval:   5 * time.Second,
		IdleReadsPerSecond: 20,
		PublishTimeout:     5 * time.Second,
		Appliers:           2,
		Prefetch:           4,
		MaxAttempts:        5,
		ReservationTTL:     15 * time.Minute,
		ExpireEvery:        time.Second,
		MaxExtension:       15 * time.Minute,
		LoadData:           true,
	}
}

// Validate reports every bad field (errors.Join, one line each).
func (c Config) Validate() error {
	var errs []error
	if c.Queue == "" {
		errs = append(errs, errors.New("queue: required"))
	}
	switch c.QueueType {
	case QueueQuorum, QueueClassic:
	default:
		errs = append(errs, fmt.Errorf("queue_type %q: want quorum or classic", c.QueueType))
	}
	if c.BatchSize < 1 || c.BatchSize > 10000 {
		errs = append(errs, errors.New("batch_size: must be between 1 and 10000"))
	}
	if c.BatchInterval <= 0 {
		errs = append(errs, errors.New("batch_interval: must be positive"))
	}
	if c.PollInterval <= 0 {
		errs = append(errs, errors.New("poll_interval: must be positive"))
	}
	if c.IdlePollInterval <= 0 {
		errs = append(errs, errors.New("idle_poll_interval: must be positive"))
	}
	if c.IdleReadsPerSecond < 1 {
		errs = append(errs, errors.New("idle_reads_per_second: must be at least 1"))
	}
	if c.PublishTimeout <= 0 {
		errs = append(errs, errors.New("publish_timeout: must be positive"))
	}
	if c.Appliers < 1 {
		errs = append(errs, errors.New("appliers: must be at least 1"))
	}
	if c.Prefetch < 1 {
		errs = append(errs, errors.New("prefetch: must be at least 1"))
	}
	if c.MaxAttempts < 1 {
		errs = append(errs, errors.New("max_attempts: must be at least 1"))
	}
	if c.ReservationTTL < time.Second {
		errs = append(errs, errors.New("reservation_ttl: must be at least 1s"))
	}
	if c.ExpireEvery <= 0 {
		errs = append(errs, errors.New("expire_every: must be positive"))
	}
	if c.MaxExtension < time.Second {
		errs = append(errs, errors.New("max_extension: must be at least 1s"))
	}
	return errors.Join(errs...)
}

// dlq names the dead-letter queue of queue.
func dlq(queue string) string { return queue + ".dlq" }
