// Package sqltx runs MySQL transactions with the retries InnoDB asks for.
package sqltx

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MySQL error numbers that mean "run the transaction again".
const (
	errLockWaitTimeout = 1205
	errDeadlock        = 1213
)

// Retryable reports whether err aborted a transaction that can simply be
// run again: a deadlock or a lock-wait timeout.
func Retryable(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number == errDeadlock || me.Number == errLockWaitTimeout
	}
	return false
}

// Run runs fn in a transaction, running it again (up to 8 times, with a
// short growing pause) when InnoDB aborted it as a deadlock victim or on a
// lock-wait timeout. fn must not have effects outside the transaction.
func Run(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := once(ctx, db, fn)
		if err == nil || !Retryable(err) || attempt >= 8 {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 5 * time.Millisecond):
		}
	}
}

func once(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	// READ COMMITTED: counters are updated by increments under row locks,
	// and the gap locks of REPEATABLE READ on detail inserts would only add
	// deadlocks.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}
