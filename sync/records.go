package sync

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// Records reads the deduction rows write-back keeps in MySQL (deductions,
// written by the applier and moved by the ledger, and doubled_deductions,
// written by the backstop) for those who only look: the audit.
type Records struct {
	db *sql.DB
}

// NewRecords reads db (already migrated).
func NewRecords(db *sql.DB) *Records { return &Records{db: db} }

// DetailSums are units in detail rows.
type DetailSums struct {
	Reserved  int64 `json:"reserved"`
	Confirmed int64 `json:"confirmed"`
	Released  int64 `json:"released"`
	Doubled   int64 `json:"doubled"`
	Rows      int64 `json:"rows"`
}

// Sums adds up a SKU's detail rows by state, and its doubles.
func (r *Records) Sums(ctx context.Context, sku string) (DetailSums, error) {
	var s DetailSums
	rows, err := r.db.QueryContext(ctx,
		`SELECT state, COALESCE(SUM(qty), 0), COUNT(*) FROM deductions WHERE sku = ? GROUP BY state`, sku)
	if err != nil {
		return s, fmt.Errorf("detail sums: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var units, n int64
		if err := rows.Scan(&state, &units, &n); err != nil {
			return s, fmt.Errorf("detail sums: %w", err)
		}
		s.Rows += n
		switch state {
		case "reserved":
			s.Reserved = units
		case "confirmed":
			s.Confirmed = units
		case "released":
			s.Released = units
		}
	}
	if err := rows.Err(); err != nil {
		return s, fmt.Errorf("detail sums: %w", err)
	}
	if err := r.db.QueryRowContext(ctx,
		`SELECT COALESCE(SUM(qty), 0) FROM doubled_deductions WHERE sku = ?`, sku).Scan(&s.Doubled); err != nil {
		return s, fmt.Errorf("detail sums: %w", err)
	}
	return s, nil
}

// landedBatch bounds the ids of one Landed query.
const landedBatch = 1000

// Landed tells which of the detail ids MySQL holds, as a deduction or as
// a double.
func (r *Records) Landed(ctx context.Context, ids []string) (map[string]bool, error) {
	landed := map[string]bool{}
	for start := 0; start < len(ids); start += landedBatch {
		if err := r.landed(ctx, ids[start:min(start+landedBatch, len(ids))], landed); err != nil {
			return nil, fmt.Errorf("landed details: %w", err)
		}
	}
	return landed, nil
}

func (r *Records) landed(ctx context.Context, chunk []string, into map[string]bool) error {
	args := make([]any, len(chunk))
	for i, id := range chunk {
		args[i] = id
	}
	in := `(?` + strings.Repeat(",?", len(chunk)-1) + `)`
	rows, err := r.db.QueryContext(ctx,
		`SELECT detail_id FROM deductions WHERE detail_id IN `+in+`
		 UNION ALL SELECT detail_id FROM doubled_deductions WHERE detail_id IN `+in, append(args, args...)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return err
		}
		into[id] = true
	}
	return rows.Err()
}
