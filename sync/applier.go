package sync

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/ident"
	"github.com/stockd/stockd/internal/sqltx"
)

// errPoison marks a message that can never be applied (malformed).
var errPoison = errors.New("poison batch")

// Applier consumes batches and writes them to MySQL exactly once.
type Applier struct {
	cfg    Config
	db     *sql.DB
	brk    *broker
	logger *slog.Logger
	m      *metrics
}

// Run consumes with cfg.Appliers channels until ctx ends. A batch being
// applied when ctx ends is not acknowledged; the broker delivers it again.
func (a *Applier) Run(ctx context.Context) error {
	defer a.brk.close()
	var wg gosync.WaitGroup
	for i := 0; i < a.cfg.Appliers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a.consume(ctx, "stockd-applier-"+strconv.Itoa(i))
		}(i)
	}
	wg.Wait()
	return nil
}

func (a *Applier) consume(ctx context.Context, tag string) {
	backoff := 100 * time.Millisecond
	failing := false
	for ctx.Err() == nil {
		ch, err := a.brk.channel()
		if err == nil {
			if err = ch.Qos(a.cfg.Prefetch, 0, false); err != nil {
				ch.Close()
			}
		}
		var deliveries <-chan amqp.Delivery
		if err == nil {
			if deliveries, err = ch.Consume(a.cfg.Queue, tag, false, false, false, false, nil); err != nil {
				ch.Close()
			}
		}
		if err != nil {
			if !failing {
				a.logger.Warn("applier cannot consume; retrying", "err", err)
				failing = true
			}
			sleepCtx(ctx, backoff)
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		if failing {
			a.logger.Info("applier consuming again")
		}
		failing, backoff = false, 100*time.Millisecond
		a.deliveries(ctx, deliveries)
		go ch.Close()
	}
}

func (a *Applier) deliveries(ctx context.Context, deliveries <-chan amqp.Delivery) {
	for {
		select {
		case <-ctx.Done():
			return
		case d, ok := <-deliveries:
			if !ok {
				return // channel or connection closed: reconnect
			}
			a.handle(ctx, d)
		}
	}
}

// handle applies one delivery: ack after commit; poison and repeatedly
// failing batches go to the dead-letter queue; while MySQL is unreachable
// it keeps trying (the batch is not lost, and nothing behind it is lost).
func (a *Applier) handle(ctx context.Context, d amqp.Delivery) {
	batch, err := decodeBatch(d.Body)
	if err != nil {
		a.logger.Error("poison message to the dead-letter queue", "message", d.MessageId, "err", err)
		a.m.deadLettered.Inc()
		d.Nack(false, false)
		return
	}
	backoff := 50 * time.Millisecond
	failures := 0
	for {
		res, err := apply(ctx, a.db, batch.Details, a.cfg.LoadData)
		if err == nil {
			if err := d.Ack(false); err != nil {
				// Redelivered later; applying again is a no-op.
				a.logger.Warn("ack after commit failed", "batch", batch.ID, "err", err)
			}
			a.m.applied.WithLabelValues("inserted").Add(float64(res.Inserted))
			a.m.applied.WithLabelValues("duplicate").Add(float64(res.Duplicates))
			a.m.applied.WithLabelValues("doubled").Add(float64(res.Doubled))
			now := time.Now()
			maxLag := int64(-1)
			for _, det := range batch.Details {
				lag := now.Sub(time.UnixMilli(det.TimeMs))
				a.m.applyLag.Observe(lag.Seconds())
				maxLag = max(maxLag, lag.Milliseconds())
			}
			a.m.lagSeen(maxLag)
			if res.Doubled > 0 {
				a.logger.Error("double deductions undone by the (sku, request_id) backstop", "batch", batch.ID, "units", res.DoubledUnits)
			}
			return
		}
		if ctx.Err() != nil {
			return // not acked: delivered again to whoever consumes next
		}
		if transient(err) {
			if failures == 0 || failures%50 == 0 {
				a.logger.Warn("applying batch failed; retrying", "batch", batch.ID, "err", err)
			}
		} else {
			failures++
			a.logger.Warn("applying batch failed", "batch", batch.ID, "attempt", failures, "err", err)
			if failures >= a.cfg.MaxAttempts {
				a.logger.Error("batch to the dead-letter queue after repeated failures", "batch", batch.ID, "err", err)
				a.m.deadLettered.Inc()
				d.Nack(false, false)
				return
			}
		}
		sleepCtx(ctx, backoff)
		backoff = min(backoff*2, 2*time.Second)
	}
}

// transient tells errors that go away by themselves (MySQL restarting,
// connections dropped) from errors in the data.
func transient(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1040, 1053, 1205, 1213, 1927, 2006, 2013:
			return true // too many connections, shutdown, lock, killed
		}
		return false
	}
	return !errors.Is(err, errPoison)
}

func decodeBatch(body []byte) (wireBatch, error) {
	b, err := decodeWire(body)
	if err != nil {
		return b, err
	}
	if len(b.Details) == 0 {
		return b, fmt.Errorf("%w: no details", errPoison)
	}
	for i, d := range b.Details {
		sku, pid, _, _, err := stockd.ParseDetailID(d.DetailID)
		switch {
		case err != nil:
			return b, fmt.Errorf("%w: details[%d]: %v", errPoison, i, err)
		case sku != d.SKU || pid != d.PID:
			return b, fmt.Errorf("%w: details[%d]: detail id %s does not match sku %s pid %d", errPoison, i, d.DetailID, d.SKU, d.PID)
		case ident.ValidSKU(d.SKU) != nil:
			return b, fmt.Errorf("%w: details[%d]: bad sku", errPoison, i)
		case ident.ValidRequestID(d.RequestID, ident.MaxRequestID) != nil:
			return b, fmt.Errorf("%w: details[%d]: bad request id", errPoison, i)
		case d.UserID != "" && ident.ValidRequestID(d.UserID, ident.MaxUserID) != nil:
			return b, fmt.Errorf("%w: details[%d]: bad user id", errPoison, i)
		case d.Qty < 1 || d.TimeMs < 1:
			return b, fmt.Errorf("%w: details[%d]: bad qty or time", errPoison, i)
		}
	}
	return b, nil
}

// ApplyResult counts what one batch did.
type ApplyResult struct {
	Inserted, Duplicates, Doubled int
	DoubledUnits                  int64
}

// Apply writes details in one transaction: each is inserted keyed by its
// detail id (a repeat is a no-op) and the SKUs' counters move by what was
// inserted, never read-modify-write. A detail whose (sku, request_id) is
// already taken by another detail is a double deduction: it is recorded
// in doubled_deductions and its units go back to the pool.
//
// A detail of a fenced partition (its shard lost data) moves its units out
// of in_doubt: to reserved while the doubt is open, or, once the doubt was
// resolved (its units already went back to the pool after the reservation
// TTL), it lands released, as the expired reservation it is. Every batch
// also raises its partitions' seen_seq, against which a shard that comes
// back with an older sequence is caught.
//
// A batch may carry a detail more than once (a reader that restarted
// re-read its stream into the same batch); each detail id is applied once.
func Apply(ctx context.Context, db *sql.DB, all []wireDetail) (ApplyResult, error) {
	return apply(ctx, db, all, true)
}

// apply is Apply; load false inserts with INSERT only (sync.load_data).
func apply(ctx context.Context, db *sql.DB, all []wireDetail, load bool) (ApplyResult, error) {
	details := distinct(all)
	rows := make([]row, len(details))
	for i := range details {
		_, pid, epoch, seq, _ := stockd.ParseDetailID(details[i].DetailID)
		rows[i] = row{wireDetail: &details[i], part: partKey{details[i].SKU, pid, epoch}, seq: seq}
	}
	var res ApplyResult
	err := sqltx.Run(ctx, db, func(tx *sql.Tx) error {
		res = ApplyResult{}
		applyID := newApplyID()
		parts, err := partitionsOf(ctx, tx, rows)
		if err != nil {
			return err
		}
		n, err := insert(ctx, tx, rows, parts, applyID, load)
		if err != nil {
			return fmt.Errorf("insert details: %w", err)
		}
		// The common case: every detail is new (no redelivery, no early
		// confirm or release, no double): no row needs a second look, and
		// inserted stays nil, which says "all of them".
		var inserted, doubled map[string]bool
		if n != int64(len(rows)) {
			inserted, doubled = make(map[string]bool, len(rows)), map[string]bool{}
			if err := secondLook(ctx, tx, rows, applyID, inserted, doubled); err != nil {
				return err
			}
		}
		return moveCounters(ctx, tx, rows, parts, inserted, doubled, &res)
	})
	res.Duplicates = len(all) - res.Inserted - res.Doubled
	return res, err
}

// row is a detail with its id parsed once.
type row struct {
	*wireDetail
	part partKey
	seq  int64
}

// The details of a batch go into MySQL with one statement. LOAD DATA
// LOCAL INFILE, the rows streamed from memory as tab-separated text, costs
// MariaDB about a quarter less CPU per row than the same rows as one
// multi-row INSERT (issue 13: 7.2 against 9.7 µs per row on the
// deductions table), because the server reads plain fields instead of
// parsing SQL literals. Its IGNORE skips rows whose keys exist, exactly as
// INSERT IGNORE does, and it runs inside the transaction. A server that
// refuses local files (local_infile=OFF, MySQL 8's default) gets the
// multi-row INSERT instead, from the first refusal on.
//
// The server reads only what the driver's handler for this one statement
// returns; the driver opens no file (allowAllFiles stays off).
var loadRefused atomic.Bool

// detailCols are the columns the applier writes, in the order of both forms.
const detailCols = `detail_id, sku, pid, request_id, user_id, qty, state, apply_id, deducted_at`

// MySQL errors that mean "this server (or connection) takes no local files".
const (
	errNotAllowedCommand  = 1148 // ER_NOT_ALLOWED_COMMAND (local_infile=OFF)
	errLocalFilesDisabled = 3948 // MySQL 8: ER_CLIENT_LOCAL_FILES_DISABLED
)

// readerSeq names each statement's reader uniquely (the driver's registry
// of readers is global).
var readerSeq atomic.Uint64

// insert inserts rows (their keys may exist: those are skipped) and
// returns how many it inserted.
func insert(ctx context.Context, tx *sql.Tx, rows []row, parts map[partKey]partState, applyID int64, load bool) (int64, error) {
	if load && !loadRefused.Load() {
		n, err := loadRows(ctx, tx, rows, parts, applyID)
		var me *mysql.MySQLError
		if err == nil || !errors.As(err, &me) || (me.Number != errNotAllowedCommand && me.Number != errLocalFilesDisabled) {
			return n, err
		}
		// A refused statement changed nothing; the transaction goes on.
		if loadRefused.CompareAndSwap(false, true) {
			slog.Default().Warn("MySQL refuses LOAD DATA LOCAL INFILE; write-back inserts details with INSERT (more server CPU per detail)", "err", err)
		}
	}
	return insertRows(ctx, tx, rows, parts, applyID)
}

func detailState(parts map[partKey]partState, d row) string {
	if parts[d.part].resolved {
		return "released"
	}
	return "reserved"
}

// loadRows is insert with LOAD DATA LOCAL INFILE: one line per row, fields
// separated by tabs, NULL as \N, backslash, tab and newline escaped (the
// statement's defaults; the ids are printable ASCII, so only the backslash
// can occur).
func loadRows(ctx context.Context, tx *sql.Tx, rows []row, parts map[partKey]partState, applyID int64) (int64, error) {
	body := make([]byte, 0, len(rows)*112)
	for _, d := range rows {
		body = appendField(body, d.DetailID)
		body = append(body, '\t')
		body = appendField(body, d.SKU)
		body = append(body, '\t')
		body = strconv.AppendInt(body, int64(d.PID), 10)
		body = append(body, '\t')
		body = appendField(body, d.RequestID)
		body = append(body, '\t')
		if d.UserID == "" {
			body = append(body, `\N`...)
		} else {
			body = appendField(body, d.UserID)
		}
		body = append(body, '\t')
		body = strconv.AppendInt(body, d.Qty, 10)
		body = append(body, '\t')
		body = append(body, detailState(parts, d)...)
		body = append(body, '\t')
		body = strconv.AppendInt(body, applyID, 10)
		body = append(body, '\t')
		body = time.UnixMilli(d.TimeMs).UTC().AppendFormat(body, "2006-01-02 15:04:05.000000")
		body = append(body, '\n')
	}
	name := "stockd-details-" + strconv.FormatUint(readerSeq.Add(1), 10)
	mysql.RegisterReaderHandler(name, func() io.Reader { return bytes.NewReader(body) })
	defer mysql.DeregisterReaderHandler(name)
	res, err := tx.ExecContext(ctx, `LOAD DATA LOCAL INFILE 'Reader::`+name+`' IGNORE INTO TABLE deductions CHARACTER SET utf8mb4 (`+detailCols+`)`)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// appendField appends s escaped for LOAD DATA's default format.
func appendField(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b = append(b, '\\', '\\')
		case '\t':
			b = append(b, '\\', 't')
		case '\n':
			b = append(b, '\\', 'n')
		default:
			b = append(b, c)
		}
	}
	return b
}

// insertRows is insert with one multi-row INSERT IGNORE, its values
// interpolated by the driver (one round trip). (Server-side prepared
// statements cost MariaDB more here: a batch's size varies, so it takes
// several executions of statements of fixed sizes, each dearer than
// parsing the same rows as text; measured in issue 13.)
func insertRows(ctx context.Context, tx *sql.Tx, rows []row, parts map[partKey]partState, applyID int64) (int64, error) {
	const head = `INSERT IGNORE INTO deductions (` + detailCols + `) VALUES `
	const one = "(?,?,?,?,?,?,?,?,?)"
	var q strings.Builder
	q.Grow(len(head) + len(rows)*(len(one)+1))
	q.WriteString(head)
	args := make([]any, 0, len(rows)*9)
	for i, d := range rows {
		if i > 0 {
			q.WriteByte(',')
		}
		q.WriteString(one)
		var user any
		if d.UserID != "" {
			user = d.UserID
		}
		args = append(args, d.DetailID, d.SKU, d.PID, d.RequestID, user, d.Qty, detailState(parts, d), applyID, time.UnixMilli(d.TimeMs).UTC())
	}
	res, err := tx.ExecContext(ctx, q.String(), args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// distinct drops the repeats of a detail id within one batch, keeping the
// first copy: the one a multi-row INSERT IGNORE inserts. The counters move
// once per detail id inserted; looping over the repeats would count a row
// as many times as the batch names it.
func distinct(details []wireDetail) []wireDetail {
	seen := seenPool.Get().(map[string]struct{})
	defer func() {
		clear(seen)
		seenPool.Put(seen)
	}()
	var out []wireDetail // nil until the first repeat
	for i, d := range details {
		if _, ok := seen[d.DetailID]; ok {
			if out == nil {
				out = append(make([]wireDetail, 0, len(details)), details[:i]...)
			}
			continue
		}
		seen[d.DetailID] = struct{}{}
		if out != nil {
			out = append(out, d)
		}
	}
	if out == nil {
		return details
	}
	return out
}

// seenPool keeps distinct's sets from batch to batch: a set of a batch's
// 2,000 ids was the largest allocation of the write-back.
var seenPool = gosync.Pool{New: func() any { return map[string]struct{}{} }}

// partKey names a partition of one epoch.
type partKey struct {
	sku   string
	pid   int
	epoch int64
}

// sortPartKeys orders keys by SKU, then pid: every transaction locks
// partition rows in this order, so two of them cannot deadlock on it.
func sortPartKeys(keys []partKey) {
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].sku != keys[j].sku {
			return keys[i].sku < keys[j].sku
		}
		return keys[i].pid < keys[j].pid
	})
}

// partState is what the applier needs of a partition.
type partState struct {
	fenced   bool // its doubt is open: units move from in_doubt
	resolved bool // its doubt was resolved: details land released
}

// The applier names a batch's partitions and SKUs to MySQL as one JSON
// array bound to one placeholder and read back as rows by JSON_TABLE
// (MariaDB 10.6, MySQL 8.0), which each statement joins to the table by
// its primary key, the array first (STRAIGHT_JOIN): one statement per
// table for any number of keys, each key one index lookup, and the rows
// locked in the array's order, which is sorted. The forms before this
// were linear per row in the number of keys (OR-ed key predicates,
// CASE … WHEN per key): on a batch of 1,000 SKUs their three statements
// cost MariaDB about 33 ms, 33 µs per detail, four times the insert of
// the details (issue 13); these cost about 14.
const (
	partsTable = `JSON_TABLE(?, '$[*]' COLUMNS (sku VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]', pid INT PATH '$[1]'`
	skusTable  = `JSON_TABLE(?, '$[*]' COLUMNS (sku VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]'`
)

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

// partitionsOf reads (and locks, so that a fence or a doubt resolution
// cannot slip between this read and the insert) the partitions of a batch,
// in one lock order: sorted by SKU, then pid.
func partitionsOf(ctx context.Context, tx *sql.Tx, rows []row) (map[partKey]partState, error) {
	out := map[partKey]partState{}
	var keys []partKey
	for _, d := range rows {
		if _, ok := out[d.part]; !ok {
			out[d.part] = partState{}
			keys = append(keys, d.part)
		}
	}
	sortPartKeys(keys)
	b := []byte{'['}
	for i, k := range keys {
		if i > 0 && k.sku == keys[i-1].sku && k.pid == keys[i-1].pid {
			continue // another epoch of the same row
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = append(appendJSONString(append(b, '['), k.sku), ',')
		b = append(strconv.AppendInt(b, int64(k.pid), 10), ']')
	}
	b = append(b, ']')
	rs, err := tx.QueryContext(ctx, `SELECT p.sku, p.pid, p.epoch, p.state, p.doubt_resolved_at IS NOT NULL
FROM `+partsTable+`)) v STRAIGHT_JOIN partitions p FORCE INDEX (PRIMARY) ON p.sku = v.sku AND p.pid = v.pid
FOR UPDATE`, b)
	if err != nil {
		return nil, fmt.Errorf("partitions of a batch: %w", err)
	}
	defer rs.Close()
	for rs.Next() {
		var k partKey
		var state string
		var resolved bool
		if err := rs.Scan(&k.sku, &k.pid, &k.epoch, &state, &resolved); err != nil {
			return nil, fmt.Errorf("partitions of a batch: %w", err)
		}
		if _, ok := out[k]; ok { // another epoch of the partition: not this batch's
			out[k] = partState{fenced: state == "fenced" && !resolved, resolved: state == "fenced" && resolved}
		}
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("partitions of a batch: %w", err)
	}
	return out, nil
}

// secondLook sorts a batch that did not insert whole: which rows this
// transaction inserted, which existed (repeats; early confirms and
// releases, which get their request id now), and which are doubles.
func secondLook(ctx context.Context, tx *sql.Tx, details []row, applyID int64, inserted, doubled map[string]bool) error {
	ids := make([]any, len(details))
	for i, d := range details {
		ids[i] = d.DetailID
	}
	present, err := presentIDs(ctx, tx, ids)
	if err != nil {
		return err
	}
	// Rows a confirm or release wrote before the detail landed have no
	// request id yet; give them theirs, so the (sku, request_id) key
	// guards them too. IGNORE: if another detail already holds the
	// request id, the early row was that request's double, and it is
	// settled already (released: units back; confirmed: the other one
	// expires).
	for _, d := range details {
		if !present[d.DetailID].noRequest {
			continue
		}
		var user any
		if d.UserID != "" {
			user = d.UserID
		}
		if _, err := tx.ExecContext(ctx,
			`UPDATE IGNORE deductions SET request_id = ?, user_id = ? WHERE detail_id = ? AND request_id IS NULL`,
			d.RequestID, user, d.DetailID); err != nil {
			return fmt.Errorf("fill request id: %w", err)
		}
	}
	// Not present after the insert: its (sku, request_id) belongs to
	// another detail.
	var dq strings.Builder
	var dargs []any
	for _, d := range details {
		if present[d.DetailID].ok {
			continue
		}
		if dq.Len() == 0 {
			dq.WriteString(`INSERT IGNORE INTO doubled_deductions (detail_id, sku, pid, request_id, qty, apply_id) VALUES `)
		} else {
			dq.WriteByte(',')
		}
		dq.WriteString("(?,?,?,?,?,?)")
		dargs = append(dargs, d.DetailID, d.SKU, d.PID, d.RequestID, d.Qty, applyID)
	}
	if dq.Len() > 0 {
		if _, err := tx.ExecContext(ctx, dq.String(), dargs...); err != nil {
			return fmt.Errorf("insert doubles: %w", err)
		}
	}
	for _, table := range []string{"deductions", "doubled_deductions"} {
		mine, err := insertedBy(ctx, tx, table, applyID, ids)
		if err != nil {
			return err
		}
		for _, id := range mine {
			if table == "deductions" {
				inserted[id] = true
			} else {
				doubled[id] = true
			}
		}
	}
	return nil
}

// moveCounters moves the SKUs' and partitions' counters by what this
// transaction inserted (inserted nil: every row), in one lock order.
func moveCounters(ctx context.Context, tx *sql.Tx, details []row, parts map[partKey]partState,
	inserted, doubled map[string]bool, res *ApplyResult) error {
	bySKU := map[string]*skuDelta{}
	doubt := map[partKey]int64{}
	seen := map[partKey]int64{}
	for _, d := range details {
		k := d.part
		if d.seq > seen[k] {
			seen[k] = d.seq
		}
		if inserted != nil && !inserted[d.DetailID] && !doubled[d.DetailID] {
			continue
		}
		x := bySKU[d.SKU]
		if x == nil {
			x = &skuDelta{}
			bySKU[d.SKU] = x
		}
		st := parts[k]
		switch {
		case doubled[d.DetailID]:
			res.Doubled++
			res.DoubledUnits += d.Qty
			x.doubled += d.Qty
			if !st.resolved { // resolved: the pool already has them
				x.pool += d.Qty
			}
		case st.resolved:
			res.Inserted++
			x.released += d.Qty
		default:
			res.Inserted++
			x.reserved += d.Qty
		}
		if st.fenced {
			x.inDoubt -= d.Qty
			doubt[k] += d.Qty
		}
	}
	skus := make([]string, 0, len(bySKU))
	for s := range bySKU {
		skus = append(skus, s)
	}
	sort.Strings(skus) // one lock order for every applier
	if err := updateSKUs(ctx, tx, skus, bySKU); err != nil {
		return fmt.Errorf("update counters: %w", err)
	}
	keys := make([]partKey, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sortPartKeys(keys)
	if err := updatePartitions(ctx, tx, keys, seen, doubt); err != nil {
		return fmt.Errorf("update partitions: %w", err)
	}
	return nil
}

// skuDelta is how a batch moves one SKU's counters.
type skuDelta struct{ reserved, released, inDoubt, pool, doubled int64 }

// updateSKUs moves the counters of skus (sorted) in one statement, by
// increments only.
func updateSKUs(ctx context.Context, tx *sql.Tx, skus []string, by map[string]*skuDelta) error {
	if len(skus) == 0 {
		return nil
	}
	b := []byte{'['}
	for i, s := range skus {
		if i > 0 {
			b = append(b, ',')
		}
		x := by[s]
		b = appendJSONString(append(b, '['), s)
		for _, v := range [...]int64{x.reserved, x.released, x.inDoubt, x.pool, x.doubled} {
			b = strconv.AppendInt(append(b, ','), v, 10)
		}
		b = append(b, ']')
	}
	b = append(b, ']')
	_, err := tx.ExecContext(ctx, `UPDATE `+skusTable+`,
  reserved BIGINT PATH '$[1]', released BIGINT PATH '$[2]', in_doubt BIGINT PATH '$[3]', pool BIGINT PATH '$[4]', doubled BIGINT PATH '$[5]')) v
STRAIGHT_JOIN skus s FORCE INDEX (PRIMARY) ON s.sku = v.sku
SET s.reserved = s.reserved + v.reserved, s.released = s.released + v.released, s.in_doubt = s.in_doubt + v.in_doubt,
  s.pool = s.pool + v.pool, s.doubled = s.doubled + v.doubled`, b)
	return err
}

// updatePartitions raises seen_seq and lowers doubt_units of the
// partitions keys (sorted) in one statement; a row of another epoch of a
// key's partition keeps its values.
func updatePartitions(ctx context.Context, tx *sql.Tx, keys []partKey, seen, doubt map[partKey]int64) error {
	if len(keys) == 0 {
		return nil
	}
	b := []byte{'['}
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(append(b, '['), k.sku)
		for _, v := range [...]int64{int64(k.pid), k.epoch, seen[k], doubt[k]} {
			b = strconv.AppendInt(append(b, ','), v, 10)
		}
		b = append(b, ']')
	}
	b = append(b, ']')
	_, err := tx.ExecContext(ctx, `UPDATE `+partsTable+`,
  epoch BIGINT PATH '$[2]', seen BIGINT PATH '$[3]', doubt BIGINT PATH '$[4]')) v
STRAIGHT_JOIN partitions p FORCE INDEX (PRIMARY) ON p.sku = v.sku AND p.pid = v.pid AND p.epoch = v.epoch
SET p.seen_seq = GREATEST(p.seen_seq, v.seen), p.doubt_units = p.doubt_units - v.doubt`, b)
	return err
}

// insertedBy lists the rows of table among ids that apply transaction
// applyID inserted (they carry its apply id; the lookup goes by the
// primary key, so apply_id needs no index of its own).
func insertedBy(ctx context.Context, tx *sql.Tx, table string, applyID int64, ids []any) ([]string, error) {
	var out []string
	for start := 0; start < len(ids); start += 1000 {
		chunk := ids[start:min(start+1000, len(ids))]
		args := append([]any{applyID}, chunk...)
		rows, err := tx.QueryContext(ctx,
			`SELECT detail_id FROM `+table+` WHERE apply_id = ? AND detail_id IN (?`+strings.Repeat(",?", len(chunk)-1)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("inserted %s: %w", table, err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

type presence struct {
	ok        bool // a row with this detail id exists
	noRequest bool // and its request id is not known yet
}

func presentIDs(ctx context.Context, tx *sql.Tx, ids []any) (map[string]presence, error) {
	out := make(map[string]presence, len(ids))
	for start := 0; start < len(ids); start += 1000 {
		chunk := ids[start:min(start+1000, len(ids))]
		rows, err := tx.QueryContext(ctx,
			`SELECT detail_id, request_id IS NULL FROM deductions WHERE detail_id IN (?`+strings.Repeat(",?", len(chunk)-1)+`)`, chunk...)
		if err != nil {
			return nil, fmt.Errorf("present details: %w", err)
		}
		for rows.Next() {
			var id string
			var noRequest bool
			if err := rows.Scan(&id, &noRequest); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = presence{ok: true, noRequest: noRequest}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// newApplyID names one apply transaction; rows it inserted carry it, so
// the counters move by exactly what this transaction inserted.
func newApplyID() int64 {
	var b [8]byte
	rand.Read(b[:])
	return int64(binary.BigEndian.Uint64(b[:])>>1) | 1
}
