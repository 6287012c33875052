package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Session bounds how long one of stockd's transactions can hold InnoDB
// locks others wait for. A node frozen (SIGSTOP, a long GC pause, a VM
// stall) between two statements of a transaction keeps its row locks: the
// SKU row a refill read FOR UPDATE stops every other node's refills and
// write-back on that SKU for as long as the freeze lasts.
type Session struct {
	// IdleTxTimeout: the server aborts a transaction that waits this long
	// for its next statement, and closes its connection (MariaDB's
	// idle_transaction_timeout, whole seconds). Its locks go free; the
	// transaction is rolled back whole. MySQL has no such variable: there
	// it is not set. 0: not set.
	IdleTxTimeout time.Duration
	// LockWaitTimeout: a statement waiting this long for a row lock fails
	// with error 1205 and its transaction is run again
	// (innodb_lock_wait_timeout, whole seconds). 0: the server's default.
	LockWaitTimeout time.Duration
}

// SessionInfo says what OpenSession set.
type SessionInfo struct {
	// Server is the server's version string.
	Server string
	// IdleTxTimeout is false when the server has no
	// idle_transaction_timeout (MySQL, MariaDB before 10.3) or it was not
	// asked for.
	IdleTxTimeout bool
}

// errUnknownVariable is MySQL's "Unknown system variable".
const errUnknownVariable = 1193

// sessionParams adds s to cfg's session variables (the driver sets them
// with SET on every new connection), after asking the server whether it
// knows idle_transaction_timeout. A variable the DSN sets itself is left
// as the DSN says.
func sessionParams(ctx context.Context, cfg *mysql.Config, s Session) (SessionInfo, error) {
	var info SessionInfo
	probe := *cfg
	probe.DBName = ""
	probe.Params = nil
	conn, err := mysql.NewConnector(&probe)
	if err != nil {
		return info, fmt.Errorf("mysql: %w", err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&info.Server); err != nil {
		return info, fmt.Errorf("mysql: %w", err)
	}
	if s.IdleTxTimeout > 0 {
		var v int64
		err := db.QueryRowContext(ctx, "SELECT @@SESSION.idle_transaction_timeout").Scan(&v)
		var me *mysql.MySQLError
		switch {
		case err == nil:
			info.IdleTxTimeout = true
		case errors.As(err, &me) && me.Number == errUnknownVariable:
		default:
			return info, fmt.Errorf("mysql: %w", err)
		}
	}
	set := func(name string, d time.Duration) {
		if _, ok := cfg.Params[name]; ok {
			return
		}
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params[name] = strconv.FormatInt(int64(max(time.Second, d.Round(time.Second))/time.Second), 10)
	}
	if info.IdleTxTimeout {
		set("idle_transaction_timeout", s.IdleTxTimeout)
	}
	if s.LockWaitTimeout > 0 {
		set("innodb_lock_wait_timeout", s.LockWaitTimeout)
	}
	return info, nil
}
