package sync

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/shard"
)

// Report is the conservation check of one SKU (DESIGN.md invariant 2):
//
//	total = pool + pending_fills + pending_drains + sub_domains + in_flight
//	        + reserved + confirmed + in_doubt
//
// where in_flight is the details still in Redis streams that MySQL does not
// hold yet, and the counters equal the sums of the detail rows. It is exact
// at a quiet moment (no traffic, write-back drained); under traffic the
// terms are read at slightly different instants.
type Report struct {
	OK  bool   `json:"ok"`
	SKU string `json:"sku"`

	Total         int64 `json:"total"`
	Pool          int64 `json:"pool"`
	PendingFills  int64 `json:"pending_fills"`
	PendingDrains int64 `json:"pending_drains"`
	SubDomains    int64 `json:"sub_domains"`
	InFlight      int64 `json:"in_flight"`
	Reserved      int64 `json:"reserved"`
	Confirmed     int64 `json:"confirmed"`
	InDoubt       int64 `json:"in_doubt"`
	// Sum is the right-hand side of the equation.
	Sum int64 `json:"sum"`

	Released int64 `json:"released"`
	Doubled  int64 `json:"doubled"`
	// PartitionDoubt is the sum of the fenced partitions' open doubt,
	// which in_doubt must equal.
	PartitionDoubt int64 `json:"partition_doubt"`

	// Details are the sums of the detail rows by state, and of the doubles.
	Details DetailSums `json:"details"`
	// InFlightDetails counts the details behind InFlight.
	InFlightDetails int64 `json:"in_flight_details"`
	// Problems says what does not add up.
	Problems []string `json:"problems"`
}

// DetailSums are units in detail rows.
type DetailSums struct {
	Reserved  int64 `json:"reserved"`
	Confirmed int64 `json:"confirmed"`
	Released  int64 `json:"released"`
	Doubled   int64 `json:"doubled"`
	Rows      int64 `json:"rows"`
}

// Verify evaluates the conservation equation for sku from MySQL and Redis.
func Verify(ctx context.Context, db *sql.DB, shards *shard.Set, sku string) (Report, error) {
	r := Report{SKU: sku, Problems: []string{}}
	err := db.QueryRowContext(ctx,
		`SELECT total, pool, reserved, confirmed, released, in_doubt, doubled FROM skus WHERE sku = ?`, sku).
		Scan(&r.Total, &r.Pool, &r.Reserved, &r.Confirmed, &r.Released, &r.InDoubt, &r.Doubled)
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("verify %s: %w", sku, stockd.ErrUnknownSKU)
	}
	if err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	if err := db.QueryRowContext(ctx,
		`SELECT COALESCE(SUM(qty), 0) FROM allocations WHERE sku = ? AND kind = 'fill' AND state = 'pending'`, sku).
		Scan(&r.PendingFills); err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}

	type part struct {
		pid       int
		shard     string
		epoch     int64
		state     string
		doubt     int64
		shardGone bool
	}
	rows, err := db.QueryContext(ctx,
		`SELECT p.pid, p.shard, p.epoch, p.state, p.doubt_units, COALESCE(s.state = 'removed', FALSE)
		   FROM partitions p LEFT JOIN shards s ON s.id = p.shard WHERE p.sku = ? ORDER BY p.pid`, sku)
	if err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	var parts []part
	for rows.Next() {
		var p part
		if err := rows.Scan(&p.pid, &p.shard, &p.epoch, &p.state, &p.doubt, &p.shardGone); err != nil {
			rows.Close()
			return r, err
		}
		parts = append(parts, p)
		r.PartitionDoubt += p.doubt
	}
	rows.Close()
	handles := map[int]*shard.Partition{}
	var inStreams []shard.Detail
	var streamIDs []string
	for _, p := range parts {
		h, err := shards.Partition(sku, p.pid, p.epoch, p.shard)
		if err != nil {
			if p.state != "open" {
				continue // closed on a removed shard: drained, nothing left there
			}
			return r, err
		}
		handles[p.pid] = h
		if p.state == "fenced" {
			// Its Redis cannot be trusted: what it holds or still streams
			// is counted in in_doubt.
			continue
		}
		st, err := h.Inspect(ctx)
		if err != nil {
			return r, err
		}
		if st.Exists && st.Epoch == fmt.Sprint(p.epoch) {
			r.SubDomains += st.Levels.Total()
		}
		ds, err := h.RangeDetails(ctx)
		if err != nil {
			return r, err
		}
		for _, d := range ds {
			inStreams = append(inStreams, d)
			streamIDs = append(streamIDs, h.DetailID(d.Seq))
		}
	}

	// Pending drains: their units left Redis if the script ran.
	drows, err := db.QueryContext(ctx,
		`SELECT id, pid FROM allocations WHERE sku = ? AND kind = 'drain' AND state = 'pending'`, sku)
	if err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	type drain struct {
		id  int64
		pid int
	}
	var drains []drain
	for drows.Next() {
		var d drain
		if err := drows.Scan(&d.id, &d.pid); err != nil {
			drows.Close()
			return r, err
		}
		drains = append(drains, d)
	}
	drows.Close()
	for _, d := range drains {
		if h := handles[d.pid]; h != nil {
			n, ok, err := h.DrainAmount(ctx, d.id)
			if err != nil {
				return r, err
			}
			if ok {
				r.PendingDrains += n
			}
		}
	}

	// In flight: stream details MySQL does not hold.
	landed := map[string]bool{}
	for start := 0; start < len(streamIDs); start += 1000 {
		chunk := streamIDs[start:min(start+1000, len(streamIDs))]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		q := `SELECT detail_id FROM deductions WHERE detail_id IN (?` + strings.Repeat(",?", len(chunk)-1) + `)
		      UNION ALL SELECT detail_id FROM doubled_deductions WHERE detail_id IN (?` + strings.Repeat(",?", len(chunk)-1) + `)`
		lrows, err := db.QueryContext(ctx, q, append(args, args...)...)
		if err != nil {
			return r, fmt.Errorf("verify: %w", err)
		}
		for lrows.Next() {
			var id string
			if err := lrows.Scan(&id); err != nil {
				lrows.Close()
				return r, err
			}
			landed[id] = true
		}
		lrows.Close()
	}
	for i, d := range inStreams {
		if !landed[streamIDs[i]] {
			r.InFlight += d.Qty
			r.InFlightDetails++
		}
	}

	srows, err := db.QueryContext(ctx, `SELECT state, COALESCE(SUM(qty), 0), COUNT(*) FROM deductions WHERE sku = ? GROUP BY state`, sku)
	if err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	for srows.Next() {
		var state string
		var units, n int64
		if err := srows.Scan(&state, &units, &n); err != nil {
			srows.Close()
			return r, err
		}
		r.Details.Rows += n
		switch state {
		case "reserved":
			r.Details.Reserved = units
		case "confirmed":
			r.Details.Confirmed = units
		case "released":
			r.Details.Released = units
		}
	}
	srows.Close()
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(SUM(qty), 0) FROM doubled_deductions WHERE sku = ?`, sku).
		Scan(&r.Details.Doubled); err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}

	r.Sum = r.Pool + r.PendingFills + r.PendingDrains + r.SubDomains + r.InFlight + r.Reserved + r.Confirmed + r.InDoubt
	if r.Sum != r.Total {
		r.Problems = append(r.Problems, fmt.Sprintf("total %d but the terms add up to %d (%+d)", r.Total, r.Sum, r.Sum-r.Total))
	}
	for _, c := range []struct {
		name            string
		counter, detail int64
	}{
		{"reserved", r.Reserved, r.Details.Reserved},
		{"confirmed", r.Confirmed, r.Details.Confirmed},
		{"released", r.Released, r.Details.Released},
		{"doubled", r.Doubled, r.Details.Doubled},
	} {
		if c.counter != c.detail {
			r.Problems = append(r.Problems, fmt.Sprintf("counter %s is %d but its detail rows hold %d", c.name, c.counter, c.detail))
		}
	}
	if r.InDoubt != r.PartitionDoubt {
		r.Problems = append(r.Problems, fmt.Sprintf("counter in_doubt is %d but the fenced partitions hold %d in doubt", r.InDoubt, r.PartitionDoubt))
	}
	if r.Pool < 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("pool is negative (%d)", r.Pool))
	}
	r.OK = len(r.Problems) == 0
	return r, nil
}
