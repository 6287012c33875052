package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/rueidis"
)

// checkDedupDecr is mqpeer's script: the seed's check-and-decrement on one
// key, plus a dedup record per request id, so that a retried request gets
// its first outcome instead of a second unit. 1 = ok (first time or a
// replay of an ok), 0 = sold out.
const checkDedupDecr = `local d = redis.call('GET', KEYS[2])
if d then return tonumber(d) end
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local q = tonumber(ARGV[1])
local r = 0
if n >= q then
  redis.call('DECRBY', KEYS[1], q)
  r = 1
end
redis.call('SET', KEYS[2], r, 'EX', ARGV[2])
return r`

// mqEngine is the design most teams build instead of stockd: one Redis key
// with a Lua check-and-decrement and a dedup by request id; every ok order
// is published to RabbitMQ (persistent, publisher confirms: the answer
// waits for the broker's ack), and consumers insert one order row per
// message into MySQL, each in its own transaction, with a unique request
// id (a redelivered or republished message is a duplicate key: acked, not
// inserted twice).
type mqEngine struct {
	rc     rueidis.Client
	key    string
	ttl    string
	script *rueidis.Lua

	pubConn *amqp.Connection
	pubs    []*amqp.Channel // confirm mode; request n publishes on pubs[n % len]
	next    atomic.Uint64
	queue   string

	subConn *amqp.Connection
	db      *sql.DB
	insert  string
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newMQEngine(ctx context.Context, o options) (_ *mqEngine, err error) {
	if o.queue == "" {
		return nil, errors.New("-queue: required for mqpeer")
	}
	e := &mqEngine{key: o.key, ttl: strconv.Itoa(int(o.dedupTTL.Seconds())), script: rueidis.NewLuaScript(checkDedupDecr), queue: o.queue, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	e.rc, err = rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{o.redis},
		DisableCache:      true,
		ForceSingleClient: true,
		ConnWriteTimeout:  2 * time.Second,
		Dialer:            net.Dialer{Timeout: 5 * time.Second, KeepAlive: time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", o.redis, err)
	}
	if err := e.rc.Do(ctx, e.rc.B().Set().Key(o.key).Value(strconv.FormatInt(o.stock, 10)).Build()).Error(); err != nil {
		return nil, fmt.Errorf("redis %s: set %s: %w", o.redis, o.key, err)
	}

	// MySQL: the orders table, one row per order, unique request id.
	cfg, err := mysql.ParseDSN(o.dsn)
	if err != nil {
		return nil, fmt.Errorf("-mysql: %w", err)
	}
	if cfg.DBName == "" || !validIdent(cfg.DBName) || !validIdent(o.orders) {
		return nil, errors.New("-mysql database and -orders table: letters, digits and _ only")
	}
	cfg.InterpolateParams = o.interp
	root := *cfg
	root.DBName = ""
	admin, err := sql.Open("mysql", root.FormatDSN())
	if err != nil {
		return nil, err
	}
	_, err = admin.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+cfg.DBName)
	admin.Close()
	if err != nil {
		return nil, fmt.Errorf("create database %s: %w", cfg.DBName, err)
	}
	if e.db, err = sql.Open("mysql", cfg.FormatDSN()); err != nil {
		return nil, err
	}
	e.db.SetMaxOpenConns(o.dbConns)
	e.db.SetMaxIdleConns(o.dbConns)
	q := "CREATE TABLE IF NOT EXISTS " + o.orders + ` (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  request_id VARCHAR(128) NOT NULL,
  sku VARCHAR(64) NOT NULL,
  qty INT NOT NULL,
  created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  UNIQUE KEY uq_request (request_id)
) ENGINE=InnoDB`
	if _, err := e.db.ExecContext(ctx, q); err != nil {
		return nil, fmt.Errorf("create table %s: %w", o.orders, err)
	}
	e.insert = "INSERT INTO " + o.orders + " (request_id, sku, qty) VALUES (?, ?, ?)"

	// RabbitMQ: a durable queue; publishers in confirm mode on one
	// connection, consumers on another.
	if e.pubConn, err = amqp.Dial(o.amqp); err != nil {
		return nil, fmt.Errorf("rabbitmq: %w", err)
	}
	for i := range o.mqChannels {
		ch, err := e.pubConn.Channel()
		if err != nil {
			return nil, err
		}
		if i == 0 {
			if _, err := ch.QueueDeclare(o.queue, true, false, false, false, nil); err != nil {
				return nil, fmt.Errorf("declare queue %s: %w", o.queue, err)
			}
		}
		if err := ch.Confirm(false); err != nil {
			return nil, err
		}
		e.pubs = append(e.pubs, ch)
	}
	if e.subConn, err = amqp.Dial(o.amqp); err != nil {
		return nil, fmt.Errorf("rabbitmq: %w", err)
	}
	sub, err := e.subConn.Channel()
	if err != nil {
		return nil, err
	}
	if err := sub.Qos(4*o.consumers, 0, false); err != nil {
		return nil, err
	}
	deliveries, err := sub.Consume(o.queue, "", false, false, false, false, nil)
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", o.queue, err)
	}
	for range o.consumers {
		e.wg.Add(1)
		go e.consume(deliveries)
	}
	// Load the script so the first calls are EVALSHA hits (a request id
	// no load generator sends).
	if _, err := e.script.Exec(ctx, e.rc, []string{o.key, o.key + ":req:\x00warm"}, []string{"0", e.ttl}).AsInt64(); err != nil {
		return nil, err
	}
	return e, nil
}

// order is one message: what the consumer inserts.
type order struct {
	SKU       string `json:"sku"`
	Qty       int64  `json:"qty"`
	RequestID string `json:"request_id"`
}

func (e *mqEngine) take(ctx context.Context, sku, reqID string, qty int64) (bool, error) {
	n, err := e.script.Exec(ctx, e.rc, []string{e.key, e.key + ":req:" + reqID}, []string{strconv.FormatInt(qty, 10), e.ttl}).AsInt64()
	if err != nil {
		return false, err
	}
	if n != 1 {
		return false, nil
	}
	// Also on a replayed ok: its first publish may have failed; the
	// unique request id in MySQL absorbs a second message.
	body := make([]byte, 0, 64+len(sku)+len(reqID))
	body = append(body, `{"sku":`...)
	body = strconv.AppendQuote(body, sku)
	body = append(body, `,"qty":`...)
	body = strconv.AppendInt(body, qty, 10)
	body = append(body, `,"request_id":`...)
	body = strconv.AppendQuote(body, reqID)
	body = append(body, '}')
	ch := e.pubs[e.next.Add(1)%uint64(len(e.pubs))]
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", e.queue, false, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: body,
	})
	if err != nil {
		return false, err
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil {
		return false, err
	}
	if !acked {
		return false, errors.New("rabbitmq nacked the order")
	}
	return true, nil
}

// consume inserts one order row per message, in its own transaction, and
// acks the message after the commit.
func (e *mqEngine) consume(deliveries <-chan amqp.Delivery) {
	defer e.wg.Done()
	for d := range deliveries {
		if err := e.store(d.Body); err != nil {
			_ = d.Nack(false, true)
			select {
			case <-e.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		_ = d.Ack(false)
	}
}

func (e *mqEngine) store(body []byte) error {
	var o order
	if err := jsonUnmarshal(body, &o); err != nil {
		return nil // poison: drop it (never sent by take)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, e.insert, o.RequestID, o.SKU, o.Qty); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && me.Number == 1062 {
			return nil // already stored: a redelivery or a replayed ok
		}
		return err
	}
	return tx.Commit()
}

func (e *mqEngine) close() {
	close(e.stop)
	if e.subConn != nil {
		e.subConn.Close() // ends the deliveries; unacked messages go back to the queue
	}
	e.wg.Wait()
	if e.pubConn != nil {
		e.pubConn.Close()
	}
	if e.db != nil {
		e.db.Close()
	}
	if e.rc != nil {
		e.rc.Close()
	}
}
