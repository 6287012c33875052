// Package plan is what the bench measures: the rows (the designs stockd is
// compared with, and stockd's own rows), the scale rows (shapes of
// deployment), and the sizes of the SKUs they sell. The orchestrator runs
// them; the report describes them with the same names and numbers.
package plan

import (
	"fmt"
	"strconv"
)

// The SKUs stockd sells during the bench.
const (
	HotSKU       = "bench-hot"
	HotTotal     = 200_000_000 // never sells out
	HotParts     = 4
	HotChunk     = 1000
	HotThreshold = 200

	// The limited row: the hot SKU's sizes, plus a per-user limit that
	// never refuses (LimitUsers users share at most HotTotal units, far
	// below LimitPerUser each), so that the row measures the allowance
	// scripts alone.
	LimitSKU      = "bench-limited"
	LimitPerUser  = 1_000_000
	LimitUsers    = 10_000
	LimitMaxCOnly = true // the limited row runs at the highest concurrency only (bench time)

	SoldSKU       = "bench-soldout"
	SoldTotal     = 2000
	SoldChunk     = 100
	SoldThreshold = 20

	BaselineStock = 1_000_000_000_000 // never sells out
	BaselineConns = 64                // bounded MySQL pool of the baselines

	// MQOrders is the mqpeer baseline's orders table (in the baseline
	// database).
	MQOrders = "bench_orders"
)

// Scenario is one row of the main tables.
type Scenario struct {
	Name     string
	Title    string
	Mode     string // bin/baseline -mode; "" for the stockd rows
	MaxCOnly bool   // run at the highest concurrency of -c only
}

// Scenarios are the rows, in the order they run and are reported.
var Scenarios = []Scenario{
	{"rowlock", "MySQL row lock (`SELECT … FOR UPDATE` + `UPDATE`, one row)", "rowlock", false},
	{"condupdate", "MySQL conditional `UPDATE … WHERE stock >= ?` (autocommit)", "condupdate", false},
	{"rediskey", "Redis, one key, Lua check-and-decrement", "rediskey", false},
	{"mqpeer", "what teams build instead: Redis key + Lua with request-id dedup, a confirmed persistent RabbitMQ message per order, a consumer inserting one MySQL row per order", "mqpeer", false},
	{"floor", "HTTP floor: fasthttp answering 200 without work", "floor", false},
	// soldout runs right after the floor it is compared with: after the
	// write-back rows, MariaDB flushes their pages for many seconds (0.2
	// to 0.4 cores, at innodb_io_capacity 200), which the settle gate
	// cannot wait out and which no sold-out answer causes.
	{"soldout", "stockd after sell-out (every answer `sold_out`)", "", false},
	{"stockd", "stockd: 1 node, 1 hot SKU, 4 partitions on 3 Redis shards", "", false},
	{"limited", "the stockd row on a SKU with a per-user limit that refuses nothing (`per_user_limit` 1,000,000), requests spread over 10,000 `user_id`s", "", LimitMaxCOnly},
}

// ScenarioByName is the row called n, or nil.
func ScenarioByName(n string) *Scenario {
	for i := range Scenarios {
		if Scenarios[i].Name == n {
			return &Scenarios[i]
		}
	}
	return nil
}

// WritesBack tells the rows whose runs wait for their write-back to drain
// (and report it): stockd's deducting rows and mqpeer.
func WritesBack(name string) bool {
	return name == "stockd" || name == "limited" || name == "mqpeer"
}

// PerDeduction tells the rows whose CPU is per deduction (ok answer), not
// per answer: stockd's deducting rows.
func PerDeduction(name string) bool { return name == "stockd" || name == "limited" }

// ScaleRow is one shape of deployment the scale rows compare; each gets a
// cluster of its own (nodes, shards, database, queue, key prefix), started
// for its runs and stopped after them.
type ScaleRow struct {
	ID, Name, Title string
	Shards, Nodes   int
	SKUs            int // hot SKUs, requests spread evenly over them
	Parts           int // partitions per SKU
}

// ScaleParts is the partitions of the single hot SKU of the scale rows: as
// many as the most shards, so that every shard of every row holds some.
const ScaleParts = 6

// ScaleSKU is the name (or the prefix of the names) of the scale rows' SKUs.
const ScaleSKU = "bench-scale"

// ScaleRows are the scale rows, the many-SKU row with skus SKUs
// (-scale-skus).
func ScaleRows(skus int) []ScaleRow {
	return []ScaleRow{
		{"s1", "shards-1", "1 node, 1 shard, 1 hot SKU", 1, 1, 1, ScaleParts},
		{"s3", "shards-3", "1 node, 3 shards, 1 hot SKU", 3, 1, 1, ScaleParts},
		{"s6", "shards-6", "1 node, 6 shards, 1 hot SKU", 6, 1, 1, ScaleParts},
		{"k1000", fmt.Sprintf("skus-%d", skus), fmt.Sprintf("1 node, 3 shards, %s hot SKUs (1 partition each, spread over the shards), requests spread over them", groupDigits(skus)), 3, 1, skus, 1},
		{"n3", "nodes-3", "3 nodes, 3 shards, 1 hot SKU, the load generator's connections spread over the nodes", 3, 3, 1, ScaleParts},
	}
}

// groupDigits writes n with thousands separators (1,000).
func groupDigits(n int) string {
	s := strconv.Itoa(n)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// TakeShape is one shape of the take call cost rows: take calls (or
// PINGs) sent straight from the bench process to a Redis of their own,
// with no HTTP, no stockd and no write-back, so that Redis's CPU per call
// and per request is the script's alone. They bound what any row that
// goes through take can cost Redis at the batch size it reaches.
type TakeShape struct {
	Name, Title string
	Partitions  int // 0: PING instead of take
	Callers     int // goroutines calling in a loop, each waiting for its answer
}

// TakeParts is the partitions of the spread shape.
const TakeParts = 1000

// TakeShapes are the take call cost rows, in the order they run.
var TakeShapes = []TakeShape{
	{"ping-1", "PING, 1 caller: every command wakes Redis up on its own", 0, 1},
	{"ping-64", "PING, 64 callers: commands pipelined, several per wake-up", 0, 64},
	{"hot-1", "take, 1 partition, 1 caller", 1, 1},
	{"hot-8", "take, 1 partition, 8 callers", 1, 8},
	{"hot-64", "take, 1 partition, 64 callers", 1, 64},
	{"spread-64", fmt.Sprintf("take, %s partitions, 64 callers, each request on a partition picked at random (about one request per partition in a call)", groupDigits(TakeParts)), TakeParts, 64},
}
