package preallocate

import (
	"context"
	"fmt"
)

// PendingDrain is a drain committed in MySQL and not yet settled: how many
// units it took out only the partition's Redis knows (its ":a" hash).
type PendingDrain struct {
	ID  int64
	PID int
}

// Pending reads what of a SKU's allocations is committed in MySQL but not
// yet settled: the units of its pending fills (out of the pool, maybe not
// yet in Redis) and its pending drains (maybe out of Redis, not yet back
// in the pool). The audit counts both; PoolState folds them into one
// number for the sold-out verdict.
func (s *Store) Pending(ctx context.Context, name string) (fills int64, drains []PendingDrain, err error) {
	if err := s.db.QueryRowContext(ctx,
		`SELECT COALESCE(SUM(qty), 0) FROM allocations WHERE sku = ? AND kind = 'fill' AND state = 'pending'`, name).
		Scan(&fills); err != nil {
		return 0, nil, fmt.Errorf("pending fills: %w", err)
	}
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, pid FROM allocations WHERE sku = ? AND kind = 'drain' AND state = 'pending'`, name)
	if err != nil {
		return 0, nil, fmt.Errorf("pending drains: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d PendingDrain
		if err := rows.Scan(&d.ID, &d.PID); err != nil {
			return 0, nil, fmt.Errorf("pending drains: %w", err)
		}
		drains = append(drains, d)
	}
	return fills, drains, rows.Err()
}
