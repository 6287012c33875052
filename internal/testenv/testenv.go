// Package testenv gives tests their own pieces of the real services: Redis
// instances (started as processes on free ports), a MySQL database, a key
// prefix, all removed again by t.Cleanup.
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/rueidis"
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

// Redis is a redis-server process the test owns.
type Redis struct {
	Addr string
	Port int
	Dir  string
	// conf: a config file that comes first on the command line (a
	// sentinel's, which Sentinel rewrites).
	conf string
	args []string
	cmd  *exec.Cmd
	t    testing.TB
}

// StartRedis starts a redis-server on a free port with its own directory
// and append-only file (fsync every second); it is killed when the test ends.
// extra are more redis-server arguments.
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not installed (make setup installs it): %v", err)
	}
	r := &Redis{Dir: t.TempDir(), t: t}
	r.args = append([]string{"--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
		"--appendfsync", "everysec", "--dir", r.Dir, "--protected-mode", "no"}, extra...)
	for attempt := 0; ; attempt++ {
		r.Port = FreePort(t)
		r.Addr = "127.0.0.1:" + strconv.Itoa(r.Port)
		if err := r.start(); err == nil {
			break
		} else if attempt >= 5 {
			t.Fatalf("start redis: %v", err)
		}
	}
	t.Cleanup(func() { r.Kill() })
	return r
}

func (r *Redis) start() error {
	args := append([]string{"--port", strconv.Itoa(r.Port)}, r.args...)
	if r.conf != "" {
		args = append([]string{r.conf}, args...)
	}
	cmd := exec.Command("redis-server", args...)
	logf, err := os.OpenFile(filepath.Join(r.Dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary killed by its timeout or by hand takes
	// this process with it instead of leaving an orphan on a test port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	go func() { cmd.Wait(); logf.Close() }()
	r.cmd = cmd
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", r.Addr, 100*time.Millisecond); err == nil {
			c.Close()
			if r.ping() == nil {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.Kill()
	b, _ := os.ReadFile(filepath.Join(r.Dir, "redis.log"))
	return fmt.Errorf("redis on %s did not answer: %s", r.Addr, strings.TrimSpace(string(b)))
}

func (r *Redis) ping() error {
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return c.Do(ctx, c.B().Ping().Build()).Error()
}

// Kill sends SIGKILL (a crash: no final fsync).
func (r *Redis) Kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		for i := 0; i < 100; i++ {
			if c, err := net.DialTimeout("tcp", r.Addr, 50*time.Millisecond); err != nil {
				break
			} else {
				c.Close()
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Restart starts the instance again on the same port and directory (it
// reloads its append-only file).
func (r *Redis) Restart() {
	r.t.Helper()
	if err := r.start(); err != nil {
		r.t.Fatalf("restart redis: %v", err)
	}
}

// Client returns a client to the instance, closed when the test ends.
func (r *Redis) Client() rueidis.Client {
	r.t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{r.Addr}, DisableCache: true, ForceSingleClient: true})
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
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Signal(syscall.SIGSTOP)
		r.t.Cleanup(r.Continue)
	}
}

// Continue thaws a stopped process (SIGCONT).
func (r *Redis) Continue() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Signal(syscall.SIGCONT)
	}
}
