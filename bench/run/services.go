package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/go-sql-driver/mysql"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stockd/stockd/bench/internal/measure"
	"github.com/stockd/stockd/internal/redisproc"
)

// services are the run's temp directory, its MySQL databases (through a
// root connection), its RabbitMQ queues and its Redis processes, and the
// pids of the shared MariaDB and RabbitMQ whose CPU is measured: what the
// bench uses but does not measure as such. Each piece registers its
// cleanup before it is made, and a run killed before its cleanup is swept
// by the next one (sweepStale).
type services struct {
	*life
	mysqlBase, amqpURL string
	keep               bool // keep the temp directory

	tmp        string
	prefix     string  // Redis key prefix (scale rows: plus the row's id)
	root       *sql.DB // no default database; queries name theirs
	stockdDB   string
	baseDB     string
	queue      string
	mqQueue    string   // the mqpeer baseline's
	queues     []string // every queue of the run (deleted at the end, with their .dlq)
	shards     []*redisproc.Instance
	baseRedis  *redisproc.Instance
	scaleRedis []*redisproc.Instance
	mariadbPID int
	rabbitPID  int
	rabbitVer  string
}

// setup starts the Redis processes and stockd, and makes the databases,
// queue and SKUs. Every piece registers its own cleanup first.
func (b *bench) setup(ctx context.Context) error {
	b.meter.Clk = measure.ClockTicks()
	if err := b.makeTemp(); err != nil {
		return err
	}
	dbs := b.names()
	if err := b.openMySQL(ctx, dbs); err != nil {
		return err
	}
	if err := b.checkRabbit(); err != nil {
		return err
	}
	if err := b.startRedis(ctx); err != nil {
		return err
	}
	if err := b.startStockd(ctx); err != nil {
		return err
	}
	return b.makeSKUs(ctx)
}

// makeTemp makes the run's temp directory (logs, Redis data, profiles).
func (sv *services) makeTemp() error {
	tmp, err := os.MkdirTemp("", "stockd-bench-")
	if err != nil {
		return err
	}
	sv.tmp = tmp
	sv.onCleanup(func() {
		if sv.keep {
			os.Remove(filepath.Join(tmp, ownerName)) // nothing left to sweep
			sv.logf("kept %s", tmp)
			return
		}
		os.RemoveAll(tmp)
	})
	return nil
}

// names picks the run's id and names its key prefix, databases and queues;
// it returns the databases.
func (b *bench) names() []string {
	id := randHex(4)
	b.prefix = "bench" + id
	b.stockdDB = "stockd_bench_" + id
	b.baseDB = "stockd_bench_base_" + id
	b.queue = "stockd.bench." + id
	b.mqQueue = b.queue + ".mqpeer"
	b.queues = []string{b.queue, b.mqQueue}
	dbs := []string{b.stockdDB, b.baseDB}
	for _, sr := range b.scaleRows {
		dbs = append(dbs, b.stockdDB+"_"+sr.ID)
		b.queues = append(b.queues, b.queue+"."+sr.ID)
	}
	b.api.token = randHex(16)
	b.secret = randHex(32)
	return dbs
}

// openMySQL opens a root connection (no default database; queries name
// theirs), notes what the run will create and sweeps what killed runs
// left. The databases dbs are dropped at the end.
func (sv *services) openMySQL(ctx context.Context, dbs []string) error {
	cfg, err := mysql.ParseDSN(sv.mysqlBase)
	if err != nil {
		return fmt.Errorf("-mysql: %w", err)
	}
	cfg.DBName = ""
	root, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		return err
	}
	root.SetMaxOpenConns(2)
	sv.root = root
	sv.onCleanup(func() {
		for _, db := range dbs {
			if _, err := root.Exec("DROP DATABASE IF EXISTS " + db); err != nil {
				sv.logf("cleanup: drop database %s: %v", db, err)
			}
		}
		root.Close()
	})
	if err := root.PingContext(ctx); err != nil {
		return fmt.Errorf("MySQL at %s (make setup): %w", sv.mysqlBase, err)
	}
	// Note what we are about to create, so that a later run can remove it
	// should this one be killed before its cleanup (SIGKILL).
	own, _ := json.Marshal(ownerFile{PID: os.Getpid(), Databases: dbs, Queue: sv.queue, Queues: sv.queues})
	if err := os.WriteFile(filepath.Join(sv.tmp, ownerName), own, 0o644); err != nil {
		return err
	}
	sv.sweepStale(ctx, sv.tmp)
	sv.mariadbPID = measure.PidOf("mariadbd")
	if sv.mariadbPID == 0 {
		sv.mariadbPID = measure.PidOf("mysqld")
	}
	return nil
}

// checkRabbit reaches RabbitMQ; our own queues (and the .dlq stockd
// declares) are deleted at the end, after stockd is stopped.
func (sv *services) checkRabbit() error {
	conn, err := amqp.Dial(sv.amqpURL)
	if err != nil {
		return fmt.Errorf("RabbitMQ at %s (make setup): %w", sv.amqpURL, err)
	}
	if v, ok := conn.Properties["version"].(string); ok {
		sv.rabbitVer = v
	}
	conn.Close()
	sv.onCleanup(func() { sv.deleteQueues() })
	sv.rabbitPID = measure.PidOf("beam.smp")
	return nil
}

// startRedis starts 3 shards for stockd and 1 Redis for the rediskey
// baseline.
func (sv *services) startRedis(ctx context.Context) error {
	sv.onCleanup(func() {
		for _, r := range append(slices.Clone(sv.shards), sv.baseRedis) {
			if r != nil {
				r.Kill()
			}
		}
	})
	for i := 1; i <= 3; i++ {
		r, err := sv.newRedis(ctx, "shard"+strconv.Itoa(i))
		if err != nil {
			return err
		}
		sv.shards = append(sv.shards, r)
	}
	r, err := sv.newRedis(ctx, "baseline-redis")
	if err != nil {
		return err
	}
	sv.baseRedis = r
	if _, err := measure.ReadRedisStats(ctx, r); err != nil {
		return err
	}
	sv.logf("redis: shards %s, %s, %s; baseline %s", sv.shards[0].Addr, sv.shards[1].Addr, sv.shards[2].Addr, r.Addr)
	return nil
}

// newRedis starts redis-server on a free port with redisproc's defaults
// (AOF with fsync every second, no RDB snapshots), in its own directory
// under the temp directory. The caller stops it.
func (sv *services) newRedis(ctx context.Context, name string) (*redisproc.Instance, error) {
	return redisproc.Start(ctx, redisproc.Config{Dir: filepath.Join(sv.tmp, name), Env: cleanEnv()})
}

func (sv *services) dsn(db string) string {
	cfg, _ := mysql.ParseDSN(sv.mysqlBase)
	cfg.DBName = db
	return cfg.FormatDSN()
}

func (sv *services) deleteQueues() {
	for _, q := range sv.queues {
		sv.deleteQueue(q)
	}
}

func (sv *services) deleteQueue(queue string) {
	conn, err := amqp.Dial(sv.amqpURL)
	if err != nil {
		sv.logf("cleanup: RabbitMQ: %v (queue %s left behind)", err, queue)
		return
	}
	defer conn.Close()
	for _, q := range []string{queue, queue + ".dlq"} {
		// A channel closes after an error: one per queue.
		ch, err := conn.Channel()
		if err != nil {
			sv.logf("cleanup: RabbitMQ channel: %v", err)
			return
		}
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			sv.logf("cleanup: delete queue %s: %v", q, err)
		}
		ch.Close()
	}
}

func (sv *services) purgeQueue(queue string) {
	conn, err := amqp.Dial(sv.amqpURL)
	if err != nil {
		sv.logf("purge %s: %v", queue, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	if _, err := ch.QueuePurge(queue, false); err != nil {
		sv.logf("purge %s: %v", queue, err)
	}
}

// ownerFile is written into the temp directory of a run: who runs it and
// what it creates outside that directory.
type ownerFile struct {
	PID       int      `json:"pid"`
	Databases []string `json:"databases"`
	Queue     string   `json:"queue"`
	Queues    []string `json:"queues,omitempty"`
}

const ownerName = "bench-owner.json"

// sweepStale removes what an earlier run left behind because it was killed
// before its cleanup: its databases, queue and temp directory. Runs whose
// process is still alive are left alone. (Its processes died with it: they
// get SIGKILL when their parent dies.)
func (sv *services) sweepStale(ctx context.Context, self string) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "stockd-bench-*"))
	for _, dir := range dirs {
		if dir == self {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, ownerName))
		if err != nil {
			continue
		}
		var o ownerFile
		if json.Unmarshal(raw, &o) != nil || o.PID <= 0 {
			continue
		}
		if err := syscall.Kill(o.PID, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // still running
		}
		for _, db := range o.Databases {
			if strings.HasPrefix(db, "stockd_bench_") {
				_, _ = sv.root.ExecContext(ctx, "DROP DATABASE IF EXISTS "+db)
			}
		}
		for _, q := range append([]string{o.Queue}, o.Queues...) {
			if strings.HasPrefix(q, "stockd.bench.") {
				sv.deleteQueue(q)
			}
		}
		os.RemoveAll(dir)
		sv.logf("removed the leftovers of a killed earlier run (pid %d): %s, %v, queue %s", o.PID, dir, o.Databases, o.Queue)
	}
}
