package sync

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	gosync "sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// broker keeps one AMQP connection per role (publishing, consuming) and
// dials it again after the broker closed it; every new connection declares
// the topology (the batch queue and its dead-letter queue) first.
type broker struct {
	url    string
	tls    *tls.Config // nil: amqps URLs use the system roots
	queue  string
	typ    string // QueueQuorum or QueueClassic
	logger *slog.Logger

	mu   gosync.Mutex
	conn *amqp.Connection
	// blocked is set while the broker blocks publishing (memory or disk
	// alarm): confirms stop coming until it lifts.
	blocked atomic.Bool
}

func newBroker(url, queue, typ string, tc *tls.Config, logger *slog.Logger) *broker {
	return &broker{url: url, queue: queue, typ: typ, tls: tc, logger: logger}
}

// channel returns a new channel on the live connection, dialing when needed.
func (b *broker) channel() (*amqp.Channel, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil || b.conn.IsClosed() {
		conn, err := amqp.DialConfig(b.url, amqp.Config{
			Heartbeat:       5 * time.Second,
			TLSClientConfig: b.tls,
			Properties:      amqp.Table{"connection_name": "stockd"},
		})
		if err != nil {
			return nil, fmt.Errorf("amqp dial: %w", err)
		}
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
		go func() {
			for bl := range blocked {
				b.blocked.Store(bl.Active)
				if bl.Active {
					b.logger.Warn("broker blocked publishing", "reason", bl.Reason)
				} else {
					b.logger.Info("broker unblocked publishing")
				}
			}
		}()
		if err := declare(conn, b.queue, b.typ); err != nil {
			conn.Close()
			return nil, fmt.Errorf("amqp topology: %w", err)
		}
		b.conn = conn
	}
	ch, err := b.conn.Channel()
	if err != nil {
		b.conn.Close()
		return nil, fmt.Errorf("amqp channel: %w", err)
	}
	return ch, nil
}

// ErrQueueType means a queue stockd declares already exists with another
// type than sync.queue_type: RabbitMQ cannot change a queue's type in
// place, so the start stops and says what to do.
var ErrQueueType = errors.New("queue exists with another type")

// queueTypeError is ErrQueueType with the queue and both types.
type queueTypeError struct{ queue, want, have string }

func (e *queueTypeError) Error() string {
	return fmt.Sprintf("queue_type: %s, but the RabbitMQ queue %q exists as a %s queue (a queue's type cannot change): "+
		"set sync.queue_type: %s to keep using it, or move it to %s as docs/OPERATIONS.md says (drain the queue, delete it and its .dlq, start again)",
		e.want, e.queue, e.have, e.have, e.want)
}

func (e *queueTypeError) Unwrap() error { return ErrQueueType }

// queueArgs are the declaration arguments of queue (the batch queue, whose
// dead letters go to dlq(queue)) or, with dead false, of its dead-letter
// queue. They never change for a type: RabbitMQ refuses a declaration whose
// arguments differ from the existing queue's.
//
// Quorum queues (RabbitMQ 3.10 and later) are always durable, never
// exclusive or auto-delete. Dead-lettering from them is at-least-once
// (x-dead-letter-strategy, which needs x-overflow reject-publish): a batch
// on its way to the dead-letter queue is not dropped by a node crash. No
// x-delivery-limit: the applier decides what is poison (sync.max_attempts);
// a limit would dead-letter a sound batch that was only redelivered by
// connection losses. (RabbitMQ 4.0 gives quorum queues a default delivery
// limit of 20; see docs/OPERATIONS.md for the policy that lifts it.)
func queueArgs(queue, typ string, dead bool) amqp.Table {
	switch {
	case typ == QueueClassic && dead:
		return nil
	case typ == QueueClassic:
		return amqp.Table{
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": dlq(queue),
		}
	case dead:
		return amqp.Table{"x-queue-type": QueueQuorum}
	default:
		return amqp.Table{
			"x-queue-type":              QueueQuorum,
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": dlq(queue),
			"x-dead-letter-strategy":    "at-least-once",
			"x-overflow":                "reject-publish",
		}
	}
}

// declare makes the durable batch queue and its dead-letter queue of type
// typ. A queue that exists with the other type gives a *queueTypeError
// rather than the broker's PRECONDITION_FAILED: after that refusal (which
// closes the channel) the queue is declared with the other type's
// arguments on a fresh channel, and if the broker accepts them that is the
// type the queue has.
func declare(conn *amqp.Connection, queue, typ string) error {
	other := QueueClassic
	if typ == QueueClassic {
		other = QueueQuorum
	}
	for _, q := range []struct {
		name string
		dead bool
	}{{queue, false}, {dlq(queue), true}} {
		err := declareOne(conn, q.name, queueArgs(queue, typ, q.dead))
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed &&
			declareOne(conn, q.name, queueArgs(queue, other, q.dead)) == nil {
			return &queueTypeError{queue: q.name, want: typ, have: other}
		}
		if err != nil {
			return fmt.Errorf("declare %s: %w", q.name, err)
		}
	}
	return nil
}

// DeclareQueues declares queue and its dead-letter queue of type typ
// exactly as a node does (for tools and tests that must meet a node's
// declaration, e.g. a consumer started before it).
func DeclareQueues(conn *amqp.Connection, queue, typ string) error {
	return declare(conn, queue, typ)
}

// declareOne declares one durable queue on its own channel (a refusal
// closes the channel it came on).
func declareOne(conn *amqp.Connection, name string, args amqp.Table) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	_, err = ch.QueueDeclare(name, true, false, false, false, args)
	return err
}

func (b *broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		b.conn.Close()
		b.conn = nil
	}
}

// publisher publishes with confirms on one channel, reopened after errors.
type publisher struct {
	b       *broker
	timeout time.Duration
	ch      *amqp.Channel
}

var (
	// errNacked means the broker refused a message (nack).
	errNacked = errors.New("broker nacked the batch")
	// errBlocked means the broker is blocking publishers (memory or disk
	// alarm); publishing waits rather than pile frames onto the socket.
	errBlocked = errors.New("broker is blocking publishers")
)

// publish sends body persistently and waits for the broker's confirm.
func (p *publisher) publish(ctx context.Context, id string, body []byte) error {
	if p.b.blocked.Load() {
		return errBlocked
	}
	if p.ch == nil || p.ch.IsClosed() {
		ch, err := p.b.channel()
		if err != nil {
			return err
		}
		if err := ch.Confirm(false); err != nil {
			ch.Close()
			return fmt.Errorf("amqp confirm mode: %w", err)
		}
		p.ch = ch
	}
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(cctx, "", p.b.queue, false, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		ContentType:  contentType,
		MessageId:    id,
		Timestamp:    time.Now(),
		Body:         body,
	})
	if err != nil {
		p.reset()
		return fmt.Errorf("amqp publish: %w", err)
	}
	ok, err := dc.WaitContext(cctx)
	if err != nil {
		// No confirm in time (connection lost or blocked): the message may
		// or may not be queued; it is published again, which is harmless.
		p.reset()
		return fmt.Errorf("amqp confirm: %w", err)
	}
	if !ok {
		return errNacked
	}
	return nil
}

// reset drops the channel. Closing waits for the broker's answer, which a
// blocked or dead connection never sends, so it happens on the side.
func (p *publisher) reset() {
	if p.ch != nil {
		go p.ch.Close()
		p.ch = nil
	}
}

// CheckQueue declares the queues once before the node starts, so that a
// queue of the wrong type (ErrQueueType) stops the start with a message
// that says what to do. A broker that does not answer is no reason to stop:
// the hot path sells without it and write-back catches up when it is back.
func (s *Sync) CheckQueue(ctx context.Context) error {
	ch, err := s.Batcher.brk.channel()
	if err == nil {
		ch.Close()
		return nil
	}
	var qe *queueTypeError
	if errors.As(err, &qe) {
		return qe
	}
	if ctx.Err() == nil {
		s.Batcher.logger.Warn("broker not reachable at start; write-back waits for it", "err", err)
	}
	return nil
}
