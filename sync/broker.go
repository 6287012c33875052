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
	logger *slog.Logger

	mu   gosync.Mutex
	conn *amqp.Connection
	// blocked is set while the broker blocks publishing (memory or disk
	// alarm): confirms stop coming until it lifts.
	blocked atomic.Bool
}

func newBroker(url, queue string, tc *tls.Config, logger *slog.Logger) *broker {
	return &broker{url: url, queue: queue, tls: tc, logger: logger}
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
		ch, err := conn.Channel()
		if err == nil {
			err = declare(ch, b.queue)
			ch.Close()
		}
		if err != nil {
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

// declare makes the durable batch queue and its dead-letter queue.
func declare(ch *amqp.Channel, queue string) error {
	if _, err := ch.QueueDeclare(dlq(queue), true, false, false, false, nil); err != nil {
		return err
	}
	_, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table{
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": dlq(queue),
	})
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
