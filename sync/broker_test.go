package sync

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stockd/stockd/internal/stocktest"
)

// declareRaw declares queue with args on a connection of its own, as
// another version of stockd (or an operator) would have.
func declareRaw(t *testing.T, queue string, args amqp.Table) {
	t.Helper()
	conn, err := amqp.Dial(stocktest.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := declareOne(conn, queue, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
}

// TestQueueTypeMismatchNamed: a queue that exists with the other type is
// refused with ErrQueueType, naming the setting, the queue and both types,
// in both directions and for the dead-letter queue alone too.
func TestQueueTypeMismatchNamed(t *testing.T) {
	cases := []struct {
		name, want, have string
		dlqOnly          bool
	}{
		{"classic queue, quorum wanted", QueueQuorum, QueueClassic, false},
		{"quorum queue, classic wanted", QueueClassic, QueueQuorum, false},
		{"classic dead-letter queue, quorum wanted", QueueQuorum, QueueClassic, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := stocktest.Queue(t)
			declareRaw(t, dlq(q), queueArgs(q, tc.have, true))
			bad := dlq(q)
			if !tc.dlqOnly {
				declareRaw(t, q, queueArgs(q, tc.have, false))
				bad = q
			}
			s := New(Config{Queue: q, QueueType: tc.want}, Deps{AMQPURL: stocktest.AMQPURL(), Logger: slog.Default()})
			defer s.Batcher.brk.close()
			err := s.CheckQueue(context.Background())
			if !errors.Is(err, ErrQueueType) {
				t.Fatalf("CheckQueue = %v, want ErrQueueType", err)
			}
			for _, part := range []string{"queue_type: " + tc.want, `"` + bad + `"`, "as a " + tc.have + " queue", "sync.queue_type: " + tc.have} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not say %q", err, part)
				}
			}
		})
	}
}

// TestQuorumQueueDeclared: a new deployment gets quorum queues (the
// broker accepts the quorum arguments again and refuses classic ones), and
// declaring twice is harmless (every node and every reconnect declares).
func TestQuorumQueueDeclared(t *testing.T) {
	q := stocktest.Queue(t)
	cfg := DefaultConfig()
	cfg.Queue = q
	for i := 0; i < 2; i++ {
		s := New(cfg, Deps{AMQPURL: stocktest.AMQPURL(), Logger: slog.Default()})
		if err := s.CheckQueue(context.Background()); err != nil {
			t.Fatalf("CheckQueue #%d: %v", i+1, err)
		}
		s.Batcher.brk.close()
	}
	conn, err := amqp.Dial(stocktest.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, name := range []string{q, dlq(q)} {
		if err := declareOne(conn, name, amqp.Table{"x-queue-type": QueueClassic}); err == nil {
			t.Errorf("%s accepted a classic declaration: not a quorum queue", name)
		}
	}
	if err := declare(conn, q, QueueQuorum); err != nil {
		t.Fatalf("quorum declaration refused: %v", err)
	}
}

// TestQuorumPublishConsumeDeadLetter: on a quorum queue a confirmed batch
// is delivered, one left unacknowledged by a dropped consumer comes back
// (redelivered, so the applier's idempotent insert absorbs it), and a
// nacked one lands in the dead-letter queue.
func TestQuorumPublishConsumeDeadLetter(t *testing.T) {
	q := stocktest.Queue(t)
	b := newBroker(stocktest.AMQPURL(), q, QueueQuorum, nil, slog.Default())
	defer b.close()
	p := &publisher{b: b, timeout: 10 * time.Second}
	ctx := context.Background()
	for _, id := range []string{"m1", "m2"} {
		if err := p.publish(ctx, id, []byte(id)); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	get := func(queue string) amqp.Delivery {
		t.Helper()
		ch, err := b.channel()
		if err != nil {
			t.Fatal(err)
		}
		var d amqp.Delivery
		stocktest.Until(t, 30*time.Second, "no message in "+queue+" within 30s", func() bool {
			var ok bool
			var err error
			if d, ok, err = ch.Get(queue, false); err != nil {
				t.Fatalf("get from %s: %v", queue, err)
			}
			return ok
		})
		return d
	}
	// Taken and dropped with its channel: delivered again, marked.
	first := get(q)
	first.Acknowledger.(*amqp.Channel).Close()
	again := get(q)
	if again.MessageId != first.MessageId || !again.Redelivered {
		t.Fatalf("after a dropped consumer got %s (redelivered %v), want %s again", again.MessageId, again.Redelivered, first.MessageId)
	}
	if err := again.Nack(false, false); err != nil {
		t.Fatal(err)
	}
	dead := get(dlq(q))
	if dead.MessageId != first.MessageId {
		t.Fatalf("dead-letter queue holds %s, want %s", dead.MessageId, first.MessageId)
	}
	dead.Ack(false)
	second := get(q)
	if second.MessageId == first.MessageId {
		t.Fatalf("the nacked message came back to the queue")
	}
	second.Ack(false)
}
