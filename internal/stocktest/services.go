// Services: each test gets its own pieces of the real services: Redis
// instances (started as processes on free ports through internal/redisproc),
// a MySQL database, a key prefix, a RabbitMQ queue, all removed again by
// t.Cleanup.

package stocktest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net"
	"os"
	"testing"

	"github.com/go-sql-driver/mysql"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/rueidis"

	"github.com/stockd/stockd/internal/redisproc"
)

// MySQLBase is the server tests use; STOCKD_TEST_MYSQL overrides it (a DSN
// without database name).
func MySQLBase() string {
	if v := os.Getenv("STOCKD_TEST_MYSQL"); v != "" {
		return v
	}
	return "root@tcp(127.0.0.1:3306)/"
}

// AMQPURL is the broker tests use; STOCKD_TEST_AMQP overrides it.
func AMQPURL() string {
	if v := os.Getenv("STOCKD_TEST_AMQP"); v != "" {
		return v
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// Name returns a unique lowercase name with prefix, for databases, key
// prefixes and queues.
func Name(prefix string) string {
	var b [6]byte
	rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// Database creates a fresh database and returns its DSN; it is dropped when
// the test ends.
func Database(t testing.TB) string {
	t.Helper()
	name := Name("stockd_t")
	cfg, err := mysql.ParseDSN(MySQLBase())
	if err != nil {
		t.Fatalf("mysql dsn: %v", err)
	}
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database (is MariaDB running? make setup): %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			return
		}
		defer db.Close()
		db.Exec("DROP DATABASE IF EXISTS " + name)
	})
	cfg.DBName = name
	cfg.ParseTime = true
	return cfg.FormatDSN()
}

// OpenDB opens dsn for the test's own queries.
func OpenDB(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// FreePort returns a TCP port free on 127.0.0.1 right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Redis is a redis-server process the test owns (internal/redisproc,
// bound to the test: a failure to start fails the test, and the process is
// killed when the test ends).
type Redis struct {
	*redisproc.Instance
	t testing.TB
}

// StartRedis starts a redis-server on a free port with its own directory
// and append-only file (fsync every second); it is killed when the test ends.
// extra are more redis-server arguments.
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	return startRedis(t, redisproc.Config{Dir: t.TempDir(), Args: extra})
}

func startRedis(t testing.TB, cfg redisproc.Config) *Redis {
	t.Helper()
	in, err := redisproc.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(in.Kill)
	return &Redis{Instance: in, t: t}
}

// Restart starts the instance again on the same port and directory (it
// reloads its append-only file).
func (r *Redis) Restart() {
	r.t.Helper()
	if err := r.Instance.Restart(context.Background()); err != nil {
		r.t.Fatalf("restart redis: %v", err)
	}
}

// Client returns a client to the instance, closed when the test ends.
func (r *Redis) Client() rueidis.Client {
	r.t.Helper()
	c, err := r.NewClient()
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(c.Close)
	return c
}

// Queue returns a unique queue name; the queue and its dead-letter queue
// are deleted when the test ends.
func Queue(t testing.TB) string {
	t.Helper()
	name := Name("stockd.t")
	t.Cleanup(func() {
		conn, err := amqp.Dial(AMQPURL())
		if err != nil {
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		defer ch.Close()
		ch.QueueDelete(name, false, false, false)
		ch.QueueDelete(name+".dlq", false, false, false)
	})
	return name
}

// Stop freezes the process (SIGSTOP): it keeps its connections but answers
// nothing, like a hung or partitioned instance. The test's cleanup thaws it.
func (r *Redis) Stop() {
	r.Freeze()
	r.t.Cleanup(r.Thaw)
}

// Continue thaws a stopped process (SIGCONT).
func (r *Redis) Continue() { r.Thaw() }
