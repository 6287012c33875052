// Package schema opens stockd's MySQL database, creating it when missing,
// and brings its schema up to date with numbered, idempotent migrations.
//
// Tables and who writes them:
//   - skus: total, pool (unallocated units) and counters. preallocate moves
//     pool to partitions and back; sync moves counters as details land and
//     as reservations are confirmed, released or expire.
//   - partitions: the registry's truth (shard, epoch, state).
//   - allocations: every move between the pool and a partition (fill or
//     drain), pending until Redis applied it, so a crash in between is
//     finished on restart.
//   - deductions: one row per deduction (detail), keyed by detail id, with a
//     unique (sku, request_id) as the backstop against double deductions.
//   - doubled_deductions: deductions undone by that backstop.
//   - shards: the Redis instances and their state (active, draining,
//     removed); the configured ones are seeded at start.
//
// Every string column has a binary collation (utf8mb4_bin, migration 14):
// SKU names, request, user, detail and shard ids compare byte for byte in
// MySQL as they do in Redis and Go, so "r" and "R" are two request ids.
package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/stockd/stockd/internal/tlsx"
)

// migrations are applied in order; an applied one is never edited, a change
// is a new entry.
var migrations = []string{
	1: `CREATE TABLE IF NOT EXISTS skus (
  sku        VARCHAR(64) NOT NULL PRIMARY KEY,
  total      BIGINT NOT NULL,
  pool       BIGINT NOT NULL,
  reserved   BIGINT NOT NULL DEFAULT 0,
  confirmed  BIGINT NOT NULL DEFAULT 0,
  released   BIGINT NOT NULL DEFAULT 0,
  in_doubt   BIGINT NOT NULL DEFAULT 0,
  doubled    BIGINT NOT NULL DEFAULT 0,
  chunk      BIGINT NOT NULL,
  threshold  BIGINT NOT NULL,
  version    BIGINT NOT NULL DEFAULT 1,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB`,
	2: `CREATE TABLE IF NOT EXISTS partitions (
  sku        VARCHAR(64) NOT NULL,
  pid        INT NOT NULL,
  shard      VARCHAR(64) NOT NULL,
  epoch      BIGINT NOT NULL,
  state      VARCHAR(16) NOT NULL DEFAULT 'open',
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (sku, pid)
) ENGINE=InnoDB`,
	3: `CREATE TABLE IF NOT EXISTS allocations (
  id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  sku        VARCHAR(64) NOT NULL,
  pid        INT NOT NULL,
  epoch      BIGINT NOT NULL,
  kind       ENUM('fill','drain') NOT NULL,
  sub        CHAR(1) NOT NULL DEFAULT '',
  qty        BIGINT NOT NULL DEFAULT 0,
  state      ENUM('pending','applied','void') NOT NULL DEFAULT 'pending',
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  KEY by_state (state, sku)
) ENGINE=InnoDB`,
	4: `CREATE TABLE IF NOT EXISTS deductions (
  detail_id   VARCHAR(128) NOT NULL PRIMARY KEY,
  sku         VARCHAR(64) NOT NULL,
  pid         INT NOT NULL,
  request_id  VARCHAR(128) NULL,
  user_id     VARCHAR(128) NULL,
  qty         BIGINT NOT NULL,
  state       ENUM('reserved','confirmed','released') NOT NULL,
  apply_id    BIGINT NOT NULL DEFAULT 0,
  deducted_at DATETIME(6) NOT NULL,
  landed_at   DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  UNIQUE KEY sku_request (sku, request_id),
  KEY expiry (state, deducted_at),
  KEY by_apply (apply_id)
) ENGINE=InnoDB`,
	5: `CREATE TABLE IF NOT EXISTS doubled_deductions (
  detail_id   VARCHAR(128) NOT NULL PRIMARY KEY,
  sku         VARCHAR(64) NOT NULL,
  pid         INT NOT NULL,
  request_id  VARCHAR(128) NOT NULL,
  qty         BIGINT NOT NULL,
  apply_id    BIGINT NOT NULL DEFAULT 0,
  created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY by_apply (apply_id)
) ENGINE=InnoDB`,
	// Expiry runs per SKU on the node that owns the SKU.
	6: `ALTER TABLE deductions ADD INDEX expiry_by_sku (sku, state, deducted_at)`,
	// Every index costs each detail insert; expiry_by_sku serves expiry.
	7: `ALTER TABLE deductions DROP INDEX expiry`,
	// The applier finds its own rows by detail id and apply id together.
	8: `ALTER TABLE deductions DROP INDEX by_apply`,
	// A closed partition keeps serving as the home of the request ids
	// hashed to it (their pointers live there) for a retry window.
	9: `ALTER TABLE partitions ADD COLUMN closed_at DATETIME(6) NULL`,
	// Shards added at runtime (and the configured ones) with their state:
	// active (takes new partitions), draining, removed.
	10: `CREATE TABLE IF NOT EXISTS shards (
  id         VARCHAR(64) NOT NULL PRIMARY KEY,
  addr       VARCHAR(255) NOT NULL,
  state      ENUM('active','draining','removed') NOT NULL DEFAULT 'active',
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB`,
	// Which rebalance added a partition (0: the SKU's first set). Request
	// homes computed over an older generation are looked at during the
	// retry window.
	11: `ALTER TABLE partitions ADD COLUMN gen INT NOT NULL DEFAULT 0`,
	// Loss detection and in_doubt: the highest detail sequence write-back
	// landed (a shard whose sequence is lower rolled back), when the
	// partition was fenced, the units it holds in doubt, and when that
	// doubt was resolved (returned to the pool).
	12: `ALTER TABLE partitions
  ADD COLUMN seen_seq BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN fenced_at DATETIME(6) NULL,
  ADD COLUMN doubt_units BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN doubt_resolved_at DATETIME(6) NULL`,
	// The address the config file last gave a shard. A node starting with
	// the same config keeps an address an admin failover recorded; a
	// changed config address (a failover done by config) replaces it.
	13: `ALTER TABLE shards ADD COLUMN config_addr VARCHAR(255) NULL`,
	// Identifiers compare byte for byte, as Redis and Go compare them:
	// request ids and SKU names that differ only in case are different
	// (issue 12). utf8mb4_bin keeps the character set, so no stored
	// value is converted and no index grows; a case-insensitive key
	// admits fewer rows than a binary one, so no existing row can collide.
	// The database's default goes binary too, for tables created later.
	// Its trailing-space padding does not matter: identifiers hold no
	// spaces (internal/ident, shard.Config.Validate).
	14: `ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE skus CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE partitions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE allocations CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE deductions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE doubled_deductions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE shards CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
	// The partition count an operator asked for (PUT partitions, rebalance
	// partitions): a partition fenced after its shard lost data, or given
	// up on with its shard, is replaced to keep it. Back-filled from the
	// open partitions. (Statements separated by ";\n" run one by one.)
	15: `ALTER TABLE skus ADD COLUMN IF NOT EXISTS target_partitions INT NOT NULL DEFAULT 0;
UPDATE skus SET target_partitions = (SELECT COUNT(*) FROM partitions p WHERE p.sku = skus.sku AND p.state = 'open')`,
	// When a SKU was archived (DELETE /admin/skus/{sku}): its rows stay as
	// the ledger, its Redis keys and registry entries are gone, and its
	// name is not reused (issue 14).
	16: `ALTER TABLE skus ADD COLUMN IF NOT EXISTS archived_at DATETIME(6) NULL`,

	// Sale rules (issue 15): a per-user limit (0: none), the sale's
	// opening and closing times (NULL: unbounded), and the shard that
	// holds the SKU's per-user allowance hash, chosen once when a limit is
	// first set. reservation_extensions holds the expiry a buyer who is
	// paying pushed out (POST /v1/extend); a reservation without a row
	// expires reservation_ttl after its deduction, as before. Its row may
	// come before the detail's row (the detail still on its way to MySQL).
	17: `ALTER TABLE skus
  ADD COLUMN IF NOT EXISTS per_user_limit BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS opens_at DATETIME(6) NULL,
  ADD COLUMN IF NOT EXISTS closes_at DATETIME(6) NULL,
  ADD COLUMN IF NOT EXISTS limit_shard VARCHAR(64) NULL;
CREATE TABLE IF NOT EXISTS reservation_extensions (
  detail_id  VARCHAR(128) NOT NULL PRIMARY KEY,
  sku        VARCHAR(64) NOT NULL,
  expires_at DATETIME(6) NOT NULL,
  KEY by_expiry (sku, expires_at)
) ENGINE=InnoDB`,

	// The fenced partitions whose doubt is still open, found for the whole
	// catalog by one index range (the doubt resolution's round every 5 s)
	// instead of one locking read per SKU: 1,000 SKUs cost MariaDB 800
	// queries a second with nothing fenced.
	18: `ALTER TABLE partitions ADD INDEX IF NOT EXISTS open_doubt (state, doubt_resolved_at, fenced_at)`,
}

// statements splits a migration into its statements (";" at a line's
// end separates them). Each is idempotent: a crash between two of them
// runs the migration again from its first.
func statements(m string) []string {
	var out []string
	for _, st := range strings.Split(m, ";\n") {
		if st = strings.TrimSpace(st); st != "" {
			out = append(out, st)
		}
	}
	return out
}

// Open connects to the database named in dsn, creating the database when
// it does not exist, and migrates it.
func Open(ctx context.Context, dsn string) (*sql.DB, error) {
	return OpenTLS(ctx, dsn, "")
}

// OpenTLS is Open trusting the CAs in caFile for the connection (the
// DSN's own tls= setting is used when caFile is empty).
func OpenTLS(ctx context.Context, dsn, caFile string) (*sql.DB, error) {
	db, _, err := OpenSession(ctx, dsn, caFile, Session{})
	return db, err
}

// OpenSession is OpenTLS with the bounds of s set on every connection
// (session.go); info says which ones the server took.
func OpenSession(ctx context.Context, dsn, caFile string, s Session) (_ *sql.DB, info SessionInfo, _ error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, info, fmt.Errorf("mysql dsn: %w", err)
	}
	if caFile != "" {
		tc, err := tlsx.Client(caFile)
		if err != nil {
			return nil, info, fmt.Errorf("mysql_ca_file: %w", err)
		}
		host, _, _ := net.SplitHostPort(cfg.Addr)
		tc.ServerName = host
		cfg.TLS = tc
	}
	if cfg.DBName == "" {
		return nil, info, fmt.Errorf("mysql dsn: no database name")
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	// One round trip per statement: the driver fills in arguments itself
	// instead of PREPARE/EXECUTE/CLOSE, which costs MySQL more than the
	// write-back's multi-row inserts themselves.
	cfg.InterpolateParams = true
	if err := createDatabase(ctx, *cfg); err != nil {
		return nil, info, err
	}
	if info, err = sessionParams(ctx, cfg, s); err != nil {
		return nil, info, err
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, info, fmt.Errorf("mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	db.SetConnMaxLifetime(time.Hour)
	if err := checkServer(ctx, db); err != nil {
		db.Close()
		return nil, info, err
	}
	if err := Migrate(ctx, db); err != nil {
		db.Close()
		return nil, info, err
	}
	return db, info, nil
}

// checkServer refuses a server without JSON_TABLE (before MariaDB 10.6 or
// MySQL 8.0), at start: the write-back names a batch's keys with it, and
// on such a server every batch would fail and be dead-lettered instead.
func checkServer(ctx context.Context, db *sql.DB) error {
	var n int
	err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM JSON_TABLE('[1]', '$[*]' COLUMNS (a INT PATH '$')) t`).Scan(&n)
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1064 { // ER_PARSE_ERROR
		var version string
		db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version)
		return fmt.Errorf("mysql: server %s has no JSON_TABLE; stockd needs MariaDB 10.6 or later", version)
	}
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	return nil
}

func createDatabase(ctx context.Context, cfg mysql.Config) error {
	name := cfg.DBName
	cfg.DBName = ""
	conn, err := mysql.NewConnector(&cfg)
	if err != nil {
		return fmt.Errorf("mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	// Binary collation: identifiers compare byte for byte (migration 14
	// brings older databases there).
	if _, err := db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(name)+" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Migrate applies the migrations not applied yet, under a named lock so
// that nodes starting together do not race.
func Migrate(ctx context.Context, db *sql.DB) error {
	return migrateTo(ctx, db, len(migrations)-1)
}

// migrateTo applies the migrations up to version last (tests build the
// databases of older releases with it).
func migrateTo(ctx context.Context, db *sql.DB, last int) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Close()
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK('stockd_migrate', 60)").Scan(&got); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	if !got.Valid || got.Int64 != 1 {
		return fmt.Errorf("migrate: lock stockd_migrate not acquired in 60s")
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), "SELECT RELEASE_LOCK('stockd_migrate')")

	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS stockd_migrations (
  version    INT NOT NULL PRIMARY KEY,
  applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var current int
	if err := conn.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM stockd_migrations").Scan(&current); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for v := current + 1; v <= last; v++ {
		for _, st := range statements(migrations[v]) {
			if _, err := conn.ExecContext(ctx, st); err != nil {
				return fmt.Errorf("migrate: version %d: %w", v, err)
			}
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO stockd_migrations (version) VALUES (?)", v); err != nil {
			return fmt.Errorf("migrate: record version %d: %w", v, err)
		}
	}
	return nil
}

func quoteIdent(s string) string {
	out := make([]byte, 0, len(s)+2)
	out = append(out, '`')
	for i := 0; i < len(s); i++ {
		if s[i] == '`' {
			out = append(out, '`')
		}
		out = append(out, s[i])
	}
	return string(append(out, '`'))
}
