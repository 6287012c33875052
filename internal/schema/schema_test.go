package schema

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/stockd/stockd/internal/stocktest"
)

// idColumns are the identifier columns; every one must compare byte for
// byte.
var idColumns = []string{
	"skus.sku",
	"partitions.sku", "partitions.shard",
	"allocations.sku",
	"deductions.detail_id", "deductions.sku", "deductions.request_id", "deductions.user_id",
	"doubled_deductions.detail_id", "doubled_deductions.sku", "doubled_deductions.request_id",
	"shards.id",
}

// checkBinary asserts that the database's default collation and every
// string column of its tables are binary, the identifier columns among
// them.
func checkBinary(t *testing.T, db *sql.DB) {
	t.Helper()
	var dbColl string
	if err := db.QueryRow(`SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()`).Scan(&dbColl); err != nil {
		t.Fatal(err)
	}
	if dbColl != "utf8mb4_bin" {
		t.Errorf("database default collation %s, want utf8mb4_bin", dbColl)
	}
	rows, err := db.Query(`SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS
	  WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var table, col, coll string
		if err := rows.Scan(&table, &col, &coll); err != nil {
			t.Fatal(err)
		}
		seen[table+"."+col] = true
		if coll != "utf8mb4_bin" {
			t.Errorf("%s.%s: collation %s, want utf8mb4_bin", table, col, coll)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, c := range idColumns {
		if !seen[c] {
			t.Errorf("identifier column %s not found", c)
		}
	}
}

// collation is the collation of table.column.
func collation(t *testing.T, db *sql.DB, table, column string) string {
	t.Helper()
	var coll string
	if err := db.QueryRow(`SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?`,
		table, column).Scan(&coll); err != nil {
		t.Fatal(err)
	}
	return coll
}

func mustExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

func isDuplicate(err error) bool {
	var me *mysql.MySQLError
	return err != nil && errors.As(err, &me) && me.Number == 1062
}

// checkCaseVariants inserts, beside the rows of sku "adv-x" and request
// "r", their case variants, which a binary key admits, and checks that a
// true duplicate is still refused and lookups are exact.
func checkCaseVariants(t *testing.T, db *sql.DB) {
	t.Helper()
	mustExec(t, db, `INSERT INTO skus (sku, total, pool, chunk, threshold) VALUES ('ADV-X', 50, 50, 10, 2)`)
	mustExec(t, db, `INSERT INTO partitions (sku, pid, shard, epoch) VALUES ('ADV-X', 0, 'S1', 2)`)
	mustExec(t, db, `INSERT INTO shards (id, addr) VALUES ('S1', '127.0.0.1:2')`)
	mustExec(t, db, `INSERT INTO deductions (detail_id, sku, pid, request_id, user_id, qty, state, deducted_at)
	  VALUES ('adv-x:0:1:2', 'adv-x', 0, 'R', 'U', 4, 'reserved', NOW(6))`)
	mustExec(t, db, `INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	  VALUES ('ADV-X:0:2:1', 'ADV-X', 0, 'r', 2, 'reserved', NOW(6))`)
	mustExec(t, db, `INSERT INTO doubled_deductions (detail_id, sku, pid, request_id, qty) VALUES ('ADV-X:0:1:1', 'adv-x', 0, 'r', 1)`)
	_, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	  VALUES ('adv-x:0:1:3', 'adv-x', 0, 'r', 1, 'reserved', NOW(6))`)
	if !isDuplicate(err) {
		t.Errorf("a second (adv-x, r): %v, want a duplicate key error", err)
	}
	for _, c := range []struct {
		q    string
		args []any
		want int
	}{
		{`SELECT COUNT(*) FROM skus WHERE sku = ?`, []any{"adv-x"}, 1},
		{`SELECT COUNT(*) FROM skus WHERE sku = ?`, []any{"Adv-X"}, 0},
		{`SELECT COUNT(*) FROM deductions WHERE sku = ? AND request_id = ?`, []any{"adv-x", "r"}, 1},
		{`SELECT COUNT(*) FROM deductions WHERE sku = ? AND request_id = ?`, []any{"adv-x", "R"}, 1},
		{`SELECT COUNT(*) FROM deductions WHERE request_id IN (?, ?)`, []any{"r", "R"}, 3},
		{`SELECT COUNT(*) FROM shards WHERE id = ?`, []any{"s1"}, 1},
		{`SELECT COUNT(*) FROM doubled_deductions x JOIN deductions d ON d.sku = x.sku AND d.request_id = x.request_id WHERE x.detail_id = ?`, []any{"ADV-X:0:1:1"}, 1},
	} {
		var got int
		if err := db.QueryRow(c.q, c.args...).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("%s %v: %d rows, want %d", c.q, c.args, got, c.want)
		}
	}
	// The write-back's lookup by (sku, request_id) still uses its key.
	var id, selType, table string
	var parts, keys, key, keyLen, ref, extra sql.NullString
	var nrows sql.NullInt64
	if err := db.QueryRow(`EXPLAIN SELECT detail_id FROM deductions WHERE sku = ? AND request_id = ?`, "adv-x", "r").
		Scan(&id, &selType, &table, &parts, &keys, &key, &keyLen, &ref, &nrows, &extra); err != nil {
		t.Fatal(err)
	}
	if key.String != "sku_request" {
		t.Errorf("lookup by (sku, request_id) uses key %q, want sku_request", key.String)
	}
}

// undoneVariants is docs/OPERATIONS.md's query (Upgrades, "Schema 14") for the
// requests the case-insensitive key undid as doubles of another spelling.
const undoneVariants = `SELECT x.sku, x.detail_id, x.request_id, x.qty, d.request_id AS undone_for
    FROM doubled_deductions x
    JOIN deductions d ON d.sku = x.sku AND LOWER(d.request_id) = LOWER(x.request_id)
   WHERE BINARY d.request_id <> BINARY x.request_id`

// checkUndoneVariants runs that query: it finds R, undone for r.
func checkUndoneVariants(t *testing.T, db *sql.DB, when string) {
	t.Helper()
	rows, err := db.Query(undoneVariants)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	defer rows.Close()
	var found []string
	for rows.Next() {
		var sku, detail, req, undoneFor string
		var qty int64
		if err := rows.Scan(&sku, &detail, &req, &qty, &undoneFor); err != nil {
			t.Fatal(err)
		}
		found = append(found, detail+" "+req+" for "+undoneFor)
	}
	if len(found) != 1 || found[0] != "adv-x:0:1:9 R for r" {
		t.Errorf("%s: README's query finds %q, want [adv-x:0:1:9 R for r]", when, found)
	}
}

// A database created by the releases before migration 14, with data in
// it, migrates: every string column becomes binary, the rows are intact,
// and case variants fit side by side while true duplicates do not.
func TestMigrateOldDatabaseToBinary(t *testing.T) {
	ctx := context.Background()
	db := stocktest.OpenDB(t, stocktest.Database(t))
	if err := migrateTo(ctx, db, 13); err != nil {
		t.Fatal(err)
	}
	// What an old release wrote, including a SKU merged from two
	// spellings (the restock of ADV-X landed on adv-x's row).
	mustExec(t, db, `INSERT INTO skus (sku, total, pool, reserved, chunk, threshold) VALUES ('adv-x', 50, 40, 3, 10, 2)`)
	mustExec(t, db, `INSERT INTO partitions (sku, pid, shard, epoch) VALUES ('adv-x', 0, 's1', 1), ('adv-x', 1, 's1', 1)`)
	mustExec(t, db, `INSERT INTO shards (id, addr) VALUES ('s1', '127.0.0.1:1')`)
	mustExec(t, db, `INSERT INTO allocations (sku, pid, epoch, kind, sub, qty, state) VALUES ('adv-x', 0, 1, 'fill', 'a', 10, 'applied')`)
	mustExec(t, db, `INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	  VALUES ('adv-x:0:1:1', 'adv-x', 0, 'r', 3, 'reserved', NOW(6))`)
	// R, undone by the old key as a double of r.
	mustExec(t, db, `INSERT INTO doubled_deductions (detail_id, sku, pid, request_id, qty) VALUES ('adv-x:0:1:9', 'adv-x', 0, 'R', 4)`)
	checkUndoneVariants(t, db, "before migration 14")
	if coll := collation(t, db, "deductions", "request_id"); strings.HasSuffix(coll, "_bin") {
		t.Logf("the server's default collation is binary already (%s)", coll)
	} else {
		// The old schema folds case: R is the same request as r.
		_, err := db.Exec(`INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
		  VALUES ('adv-x:0:1:2', 'ADV-X', 0, 'R', 4, 'reserved', NOW(6))`)
		if !isDuplicate(err) {
			t.Fatalf("old schema (%s): (ADV-X, R) beside (adv-x, r): %v, want a duplicate key error", coll, err)
		}
		t.Logf("before migration 14: deductions.request_id is %s, (ADV-X, R) is a duplicate of (adv-x, r)", coll)
	}

	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	checkBinary(t, db)
	checkUndoneVariants(t, db, "after migration 14")
	var total, pool, reserved int64
	var req string
	if err := db.QueryRow(`SELECT s.total, s.pool, s.reserved, d.request_id FROM skus s JOIN deductions d ON d.sku = s.sku WHERE s.sku = 'adv-x'`).
		Scan(&total, &pool, &reserved, &req); err != nil {
		t.Fatal(err)
	}
	if total != 50 || pool != 40 || reserved != 3 || req != "r" {
		t.Errorf("rows after the migration: total %d pool %d reserved %d request %q", total, pool, reserved, req)
	}
	checkCaseVariants(t, db)

	// Migrating again changes nothing; a crash inside migration 14 runs
	// it again from its first statement, which must work too.
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	for _, st := range statements(migrations[14]) {
		mustExec(t, db, st)
	}
	checkBinary(t, db)
}

// A database stockd creates itself is binary from the start.
func TestOpenCreatesBinaryDatabase(t *testing.T) {
	ctx := context.Background()
	cfg, err := mysql.ParseDSN(stocktest.MySQLBase())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DBName = stocktest.Name("stockd_t")
	t.Cleanup(func() {
		c := *cfg
		c.DBName = ""
		if admin, err := sql.Open("mysql", c.FormatDSN()); err == nil {
			admin.Exec("DROP DATABASE IF EXISTS " + cfg.DBName)
			admin.Close()
		}
	})
	db, err := Open(ctx, cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	checkBinary(t, db)
	mustExec(t, db, `INSERT INTO skus (sku, total, pool, chunk, threshold) VALUES ('adv-x', 100, 100, 10, 2)`)
	mustExec(t, db, `INSERT INTO partitions (sku, pid, shard, epoch) VALUES ('adv-x', 0, 's1', 1)`)
	mustExec(t, db, `INSERT INTO shards (id, addr) VALUES ('s1', '127.0.0.1:1')`)
	mustExec(t, db, `INSERT INTO deductions (detail_id, sku, pid, request_id, qty, state, deducted_at)
	  VALUES ('adv-x:0:1:1', 'adv-x', 0, 'r', 3, 'reserved', NOW(6))`)
	checkCaseVariants(t, db)
}
