package sqltx

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/stockd/stockd/internal/stocktest"
)

// A transaction whose connection dies before COMMIT (killed by the server:
// idle_transaction_timeout, KILL, a restart) committed nothing; Run runs
// it again on a fresh connection, and its effect lands exactly once.
func TestRunAgainAfterConnectionLostBeforeCommit(t *testing.T) {
	ctx := context.Background()
	dsn := stocktest.Database(t)
	db := stocktest.OpenDB(t, dsn)
	admin := stocktest.OpenDB(t, dsn)
	if _, err := db.Exec(`CREATE TABLE c (id INT PRIMARY KEY, n INT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO c VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	const runs = 20
	attempts := 0
	for i := 0; i < runs; i++ {
		first := true
		err := Run(ctx, db, func(tx *sql.Tx) error {
			attempts++
			if _, err := tx.ExecContext(ctx, `UPDATE c SET n = n + 1 WHERE id = 1`); err != nil {
				return err
			}
			if first {
				first = false
				var id int64
				if err := tx.QueryRowContext(ctx, `SELECT CONNECTION_ID()`).Scan(&id); err != nil {
					return err
				}
				if _, err := admin.ExecContext(ctx, fmt.Sprintf(`KILL %d`, id)); err != nil {
					return err
				}
			}
			_, err := tx.ExecContext(ctx, `UPDATE c SET n = n WHERE id = 1`)
			return err
		})
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	var n int
	if err := db.QueryRow(`SELECT n FROM c WHERE id = 1`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != runs {
		t.Fatalf("%d runs, each killed once before COMMIT, counted %d (attempts %d)", runs, n, attempts)
	}
}
