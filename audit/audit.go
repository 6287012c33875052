// Package audit checks a SKU's conservation equation (DESIGN.md invariant
// 2) from what MySQL and Redis hold. It only reads: the catalog's tables
// through preallocate's Store, the deduction rows through sync's Records,
// and each partition's Redis through its shard handle. The admin route
// GET /admin/skus/{sku}/verify and the `stockd verify` command answer with
// its Report.
package audit

import (
	"context"
	"errors"
	"fmt"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/preallocate"
	"github.com/stockd/stockd/shard"
	stocksync "github.com/stockd/stockd/sync"
)

// Report is the conservation check of one SKU:
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
	Details stocksync.DetailSums `json:"details"`
	// InFlightDetails counts the details behind InFlight.
	InFlightDetails int64 `json:"in_flight_details"`
	// Problems says what does not add up.
	Problems []string `json:"problems"`
}

// Auditor reads the three places a SKU's units can be.
type Auditor struct {
	catalog *preallocate.Store
	records *stocksync.Records
	shards  *shard.Set
}

// New builds an auditor; it holds nothing of its own, so one per call is
// as good as one per node.
func New(catalog *preallocate.Store, records *stocksync.Records, shards *shard.Set) *Auditor {
	return &Auditor{catalog: catalog, records: records, shards: shards}
}

// Verify evaluates the conservation equation for sku. An unknown SKU is a
// stockd.ErrUnknownSKU; an archived one is checked like a live one.
func (a *Auditor) Verify(ctx context.Context, sku string) (Report, error) {
	r := Report{SKU: sku, Problems: []string{}}
	k, err := a.catalog.GetArchived(ctx, sku)
	if errors.Is(err, stockd.ErrUnknownSKU) {
		return r, fmt.Errorf("verify %s: %w", sku, stockd.ErrUnknownSKU)
	}
	if err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	r.counters(k)
	fills, drains, err := a.catalog.Pending(ctx, sku)
	if err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	r.PendingFills = fills
	redis, err := a.readRedis(ctx, k)
	if err != nil {
		return r, err
	}
	r.SubDomains = redis.subDomains
	if r.PendingDrains, err = redis.drained(ctx, drains); err != nil {
		return r, err
	}
	if err := a.inFlight(ctx, &r, redis.streams); err != nil {
		return r, err
	}
	if r.Details, err = a.records.Sums(ctx, sku); err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	r.check()
	return r, nil
}

// counters copies the SKU's row: the total, the pool, the counters, and
// the open doubt of its fenced partitions.
func (r *Report) counters(k preallocate.SKU) {
	r.Total, r.Pool = k.Total, k.Pool
	r.Reserved, r.Confirmed, r.Released = k.Reserved, k.Confirmed, k.Released
	r.InDoubt, r.Doubled = k.InDoubt, k.Doubled
	for _, p := range k.Partitions {
		r.PartitionDoubt += p.Doubt
	}
}

// inFlight counts the stream details MySQL does not hold yet.
func (a *Auditor) inFlight(ctx context.Context, r *Report, streams []streamDetail) error {
	ids := make([]string, len(streams))
	for i, d := range streams {
		ids[i] = d.id
	}
	landed, err := a.records.Landed(ctx, ids)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	for _, d := range streams {
		if !landed[d.id] {
			r.InFlight += d.qty
			r.InFlightDetails++
		}
	}
	return nil
}
