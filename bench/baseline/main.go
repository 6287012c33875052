// Command baseline serves stockd's hot endpoint, POST /v1/deduct, on top of
// a naive stock engine, so that `make bench` can compare stockd with the
// designs it replaces. Every mode uses the same HTTP front as stockd
// (fasthttp with stockd's server settings, the same JSON request body parsed
// the same way, the same answers):
//
//	200 {"status":"ok","reservation":"…","sku":"…","qty":N}
//	409 {"status":"sold_out"}
//	400 {"error":"…"} bad input · 503 {"error":"…"} the engine failed
//
// Modes (-mode):
//
//	rowlock     MySQL pessimistic lock: BEGIN; SELECT stock … FOR UPDATE;
//	            UPDATE … SET stock = stock - qty; COMMIT (one row).
//	condupdate  MySQL conditional update, autocommit:
//	            UPDATE … SET stock = stock - ? WHERE id = ? AND stock >= ?
//	rediskey    one Redis key, a Lua check-and-decrement script called through
//	            rueidis (auto-pipelining).
//	mqpeer      what most teams build instead: one Redis key, a Lua
//	            check-and-decrement with a dedup by request id, one
//	            RabbitMQ message per ok order (persistent, publisher
//	            confirms) and consumers inserting one order row per message
//	            into MySQL in its own transaction (unique request id).
//	floor       no engine at all: reads the body and answers ok. The HTTP
//	            floor of the machine.
//
// The MySQL modes use a bounded connection pool (-db-conns): a handler
// waits for a free connection instead of failing, so every request gets a
// real outcome even when the load generator opens more connections than
// the server's max_connections.
//
// On start the binary creates its database, table and row (or key) and sets
// the stock to -stock. GET /healthz answers 200 once it is ready.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/rueidis"
	"github.com/valyala/fasthttp"
)

const (
	maxBody = 4 << 10 // stockd's maxHotBody
	maxQty  = 100     // stockd's default max_qty
	maxID   = 128     // stockd's request id bound
)

// checkAndDecr is the seed's step-2 script: take qty from one key if it
// holds enough.
const checkAndDecr = `local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local q = tonumber(ARGV[1])
if n >= q then
  redis.call('DECRBY', KEYS[1], q)
  return 1
end
return 0`

type options struct {
	mode       string
	orders     string
	queue      string
	amqp       string
	dedupTTL   time.Duration
	mqChannels int
	consumers  int

	addr    string
	dsn     string
	table   string
	redis   string
	key     string
	stock   int64
	dbConns int
	interp  bool
	timeout time.Duration
}

// engine takes qty units; ok=false means sold out.
type engine interface {
	take(ctx context.Context, sku, reqID string, qty int64) (ok bool, err error)
	close()
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "", "rowlock | condupdate | rediskey | mqpeer | floor")
	flag.StringVar(&o.orders, "orders", "bench_orders", "MySQL table of the orders (mqpeer; created if missing)")
	flag.StringVar(&o.queue, "queue", "", "RabbitMQ queue of the orders (mqpeer; declared durable if missing)")
	flag.StringVar(&o.amqp, "amqp", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL (mqpeer)")
	flag.DurationVar(&o.dedupTTL, "dedup-ttl", time.Hour, "lifetime of a request id's dedup record in Redis (mqpeer)")
	flag.IntVar(&o.mqChannels, "mq-channels", 4, "publisher channels (confirm mode) on the one publisher connection (mqpeer)")
	flag.IntVar(&o.consumers, "consumers", 32, "consumer goroutines inserting orders, each one transaction per message (mqpeer; prefetch 4 per consumer)")
	flag.StringVar(&o.addr, "addr", "127.0.0.1:9090", "listen address of the HTTP front")
	flag.StringVar(&o.dsn, "mysql", "root@tcp(127.0.0.1:3306)/stockd_bench", "MySQL DSN with a database name (rowlock, condupdate); the database is created if missing")
	flag.StringVar(&o.table, "table", "bench_stock", "MySQL table (created if missing; row id 1 holds the stock)")
	flag.StringVar(&o.redis, "redis", "127.0.0.1:6379", "Redis address (rediskey)")
	flag.StringVar(&o.key, "key", "stockd_bench:stock", "Redis key holding the stock (rediskey)")
	flag.Int64Var(&o.stock, "stock", 1_000_000_000_000, "initial stock, set on start")
	flag.IntVar(&o.dbConns, "db-conns", 64, "MySQL connections at most; handlers wait for a free one")
	flag.BoolVar(&o.interp, "interpolate", true, "MySQL: interpolate arguments client-side (one round trip per statement); false: the driver's default, a server-side prepare, execute and close per statement")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Second, "bound on one deduction (stockd's request_timeout); past it: 503")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("baseline: unexpected arguments %q", flag.Args())
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "baseline: %v\n", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	var eng engine
	var err error
	switch o.mode {
	case "rowlock", "condupdate":
		eng, err = newSQLEngine(ctx, o)
	case "rediskey":
		eng, err = newRedisEngine(ctx, o)
	case "mqpeer":
		eng, err = newMQEngine(ctx, o)
	case "floor":
		eng = nil
	default:
		return fmt.Errorf("-mode %q: want rowlock, condupdate, rediskey, mqpeer or floor", o.mode)
	}
	if err != nil {
		return err
	}
	if eng != nil {
		defer eng.close()
	}

	f := &front{eng: eng, timeout: o.timeout}
	handler := f.handle
	if eng == nil {
		handler = f.floor
	}
	// The settings of stockd's hot server (daemon/hot/hot.go).
	srv := &fasthttp.Server{
		Handler:               handler,
		Name:                  "baseline",
		MaxRequestBodySize:    maxBody,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          10 * time.Second,
		IdleTimeout:           120 * time.Second,
		ReadBufferSize:        8 << 10,
		Concurrency:           64 << 10,
		CloseOnShutdown:       true,
		NoDefaultDate:         true,
		NoDefaultServerHeader: true,
		Logger:                quiet{},
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		_ = srv.ShutdownWithContext(context.Background())
		return nil
	case err := <-done:
		return err
	}
}

type quiet struct{}

func (quiet) Printf(string, ...any) {}

// front is the HTTP side, shared by every mode.
type front struct {
	eng     engine
	timeout time.Duration
	seq     atomic.Uint64
}

// deductBody is stockd's (daemon/hot/hot.go), parsed the same way.
type deductBody struct {
	SKU       *string         `json:"sku"`
	Qty       json.RawMessage `json:"qty"`
	RequestID *string         `json:"request_id"`
	UserID    *string         `json:"user_id"`
}

func (f *front) route(ctx *fasthttp.RequestCtx) bool {
	ctx.SetContentType("application/json")
	switch string(ctx.Path()) {
	case "/v1/deduct":
		if !ctx.IsPost() {
			writeErr(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed")
			return false
		}
		return true
	case "/healthz", "/readyz":
		ctx.SetBodyString(`{"status":"ok"}`)
	default:
		writeErr(ctx, fasthttp.StatusNotFound, "no such route")
	}
	return false
}

func (f *front) handle(ctx *fasthttp.RequestCtx) {
	if !f.route(ctx) {
		return
	}
	var b deductBody
	if err := json.Unmarshal(ctx.PostBody(), &b); err != nil {
		writeErr(ctx, fasthttp.StatusBadRequest, "body: malformed JSON, want an object with sku, qty and request_id")
		return
	}
	if b.SKU == nil || *b.SKU == "" || len(*b.SKU) > 64 {
		writeErr(ctx, fasthttp.StatusBadRequest, "sku: required")
		return
	}
	qty, err := strconv.ParseInt(string(b.Qty), 10, 64)
	if err != nil || qty < 1 || qty > maxQty {
		writeErr(ctx, fasthttp.StatusBadRequest, "qty: must be an integer between 1 and "+strconv.Itoa(maxQty))
		return
	}
	if b.RequestID == nil || *b.RequestID == "" || len(*b.RequestID) > maxID {
		writeErr(ctx, fasthttp.StatusBadRequest, "request_id: required")
		return
	}
	c, cancel := context.WithTimeout(context.Background(), f.timeout)
	ok, err := f.eng.take(c, *b.SKU, *b.RequestID, qty)
	cancel()
	switch {
	case err != nil:
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		buf := append(make([]byte, 0, 96+len(*b.RequestID)), `{"error":"unavailable, retry with the same request_id","request_id":`...)
		buf = strconv.AppendQuote(buf, *b.RequestID)
		ctx.SetBody(append(buf, '}'))
	case !ok:
		ctx.SetStatusCode(fasthttp.StatusConflict)
		ctx.SetBodyString(`{"status":"sold_out"}`)
	default:
		f.ok(ctx, *b.SKU, qty)
	}
}

// ok writes stockd's ok answer. The reservation is unique per answer (the
// load generator checks that no reservation is returned twice) and about
// as long as stockd's signed token.
func (f *front) ok(ctx *fasthttp.RequestCtx, sku string, qty int64) {
	buf := make([]byte, 0, 128+len(sku))
	buf = append(buf, `{"status":"ok","reservation":"`...)
	buf = append(buf, sku...)
	buf = append(buf, ":0:1:"...)
	buf = strconv.AppendUint(buf, f.seq.Add(1), 10)
	buf = append(buf, ':')
	buf = strconv.AppendInt(buf, qty, 10)
	buf = append(buf, ":baselinebaseline"...)
	buf = append(buf, `","sku":"`...)
	buf = append(buf, sku...)
	buf = append(buf, `","qty":`...)
	buf = strconv.AppendInt(buf, qty, 10)
	buf = append(buf, '}')
	ctx.SetBody(buf)
}

// floor answers ok without parsing or deducting anything.
func (f *front) floor(ctx *fasthttp.RequestCtx) {
	if !f.route(ctx) {
		return
	}
	_ = ctx.PostBody()
	buf := make([]byte, 0, 96)
	buf = append(buf, `{"status":"ok","reservation":"x`...)
	buf = strconv.AppendUint(buf, f.seq.Add(1), 10)
	buf = append(buf, `","sku":"floor","qty":1}`...)
	ctx.SetBody(buf)
}

func writeErr(ctx *fasthttp.RequestCtx, status int, msg string) {
	ctx.SetStatusCode(status)
	buf := append(make([]byte, 0, 16+len(msg)), `{"error":`...)
	buf = strconv.AppendQuote(buf, msg)
	ctx.SetBody(append(buf, '}'))
}

// sqlEngine is the MySQL baselines.
type sqlEngine struct {
	db      *sql.DB
	rowlock bool
	sel     string
	upd     string
	cond    string
}

func newSQLEngine(ctx context.Context, o options) (*sqlEngine, error) {
	cfg, err := mysql.ParseDSN(o.dsn)
	if err != nil {
		return nil, fmt.Errorf("-mysql: %w", err)
	}
	if cfg.DBName == "" {
		return nil, errors.New("-mysql: no database name")
	}
	if !validIdent(cfg.DBName) || !validIdent(o.table) {
		return nil, errors.New("database and table names: letters, digits and _ only")
	}
	// One round trip per statement: the driver interpolates the arguments
	// instead of preparing, executing and closing a statement each time.
	cfg.InterpolateParams = o.interp
	name := cfg.DBName
	root := *cfg
	root.DBName = ""
	admin, err := sql.Open("mysql", root.FormatDSN())
	if err != nil {
		return nil, err
	}
	_, err = admin.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+name)
	admin.Close()
	if err != nil {
		return nil, fmt.Errorf("create database %s: %w", name, err)
	}
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(o.dbConns)
	db.SetMaxIdleConns(o.dbConns)
	db.SetConnMaxLifetime(time.Hour)
	t := o.table
	for _, q := range []string{
		"CREATE TABLE IF NOT EXISTS " + t + " (id BIGINT NOT NULL PRIMARY KEY, stock BIGINT NOT NULL) ENGINE=InnoDB",
		"INSERT INTO " + t + " (id, stock) VALUES (1, " + strconv.FormatInt(o.stock, 10) + ") ON DUPLICATE KEY UPDATE stock = VALUES(stock)",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			db.Close()
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	e := &sqlEngine{
		db:      db,
		rowlock: o.mode == "rowlock",
		sel:     "SELECT stock FROM " + t + " WHERE id = 1 FOR UPDATE",
		upd:     "UPDATE " + t + " SET stock = stock - ? WHERE id = 1",
		cond:    "UPDATE " + t + " SET stock = stock - ? WHERE id = 1 AND stock >= ?",
	}
	// Open the pool up front so the first measured requests do not pay for
	// the handshakes.
	conns := make([]*sql.Conn, 0, o.dbConns)
	for range o.dbConns {
		c, err := db.Conn(ctx)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
	return e, nil
}

func (e *sqlEngine) take(ctx context.Context, _, _ string, qty int64) (bool, error) {
	if !e.rowlock {
		res, err := e.db.ExecContext(ctx, e.cond, qty, qty)
		if err != nil {
			return false, err
		}
		n, err := res.RowsAffected()
		return n == 1, err
	}
	tx, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var stock int64
	if err := tx.QueryRowContext(ctx, e.sel).Scan(&stock); err != nil {
		return false, err
	}
	if stock < qty {
		return false, tx.Commit()
	}
	if _, err := tx.ExecContext(ctx, e.upd, qty); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

func (e *sqlEngine) close() { e.db.Close() }

func validIdent(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// redisEngine is the single-key Redis baseline.
type redisEngine struct {
	c      rueidis.Client
	key    string
	script *rueidis.Lua
}

func newRedisEngine(ctx context.Context, o options) (*redisEngine, error) {
	// The options of stockd's shard clients (shard/shard.go); rueidis
	// auto-pipelines concurrent calls on its one connection.
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{o.redis},
		DisableCache:      true,
		ForceSingleClient: true,
		ConnWriteTimeout:  2 * time.Second,
		Dialer:            net.Dialer{Timeout: 5 * time.Second, KeepAlive: time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", o.redis, err)
	}
	if err := c.Do(ctx, c.B().Set().Key(o.key).Value(strconv.FormatInt(o.stock, 10)).Build()).Error(); err != nil {
		c.Close()
		return nil, fmt.Errorf("redis %s: set %s: %w", o.redis, o.key, err)
	}
	e := &redisEngine{c: c, key: o.key, script: rueidis.NewLuaScript(checkAndDecr)}
	// Load the script so the first calls are EVALSHA hits.
	if _, err := e.take(ctx, "", "", 1); err != nil {
		c.Close()
		return nil, err
	}
	return e, nil
}

func (e *redisEngine) take(ctx context.Context, _, _ string, qty int64) (bool, error) {
	n, err := e.script.Exec(ctx, e.c, []string{e.key}, []string{strconv.FormatInt(qty, 10)}).AsInt64()
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

func (e *redisEngine) close() { e.c.Close() }

var jsonUnmarshal = json.Unmarshal
