// Package sqltx runs MySQL transactions with the retries InnoDB asks for.
package sqltx

import (
	"context"
	"database/sql"
	"database/sql/driver"
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

// errLostBeforeCommit marks a connection lost before COMMIT was sent: the
// server rolls the transaction back (or already did: idle_transaction_timeout
// aborts an idle transaction and closes its connection), so it committed
// nothing and can run again on another connection.
type errLostBeforeCommit struct{ error }

func (e errLostBeforeCommit) Unwrap() error { return e.error }

// lost reports whether err says the connection is gone.
func lost(err error) bool {
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn)
}

// Run runs fn in a transaction, running it again (up to 8 times, with a
// short growing pause) when InnoDB aborted it as a deadlock victim or on a
// lock-wait timeout, or when the connection was lost before COMMIT was
// sent. A COMMIT whose answer was lost is not run again (it may have
// committed): that error goes to the caller. fn must not have effects
// outside the transaction.
func Run(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := once(ctx, db, fn)
		again := Retryable(err)
		if early, ok := err.(errLostBeforeCommit); ok {
			err, again = early.error, true
		}
		if err == nil || !again || attempt >= 8 {
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
		if lost(err) {
			return errLostBeforeCommit{err}
		}
		return err
	}
	err = tx.Commit()
	if errors.Is(err, driver.ErrBadConn) {
		// The driver could not even send COMMIT.
		return errLostBeforeCommit{err}
	}
	return err
}

// Time is t as a query argument compared with a DATETIME(6) column: in UTC
// and cut to the column's microseconds. The driver writes a time.Time with
// all nine digits of its nanoseconds, and MariaDB does not take a literal
// finer than the column as a bound of an index range: the expiry sweep's
// `deducted_at < ?` then read every reserved detail of the SKU through
// the index (3 million of them, 320 ms, every sweep) instead of the expired
// ones only, and MariaDB's CPU per deduction doubled as the table grew
// (issue 13).
func Time(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
