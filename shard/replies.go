package shard

import (
	"fmt"
	"strconv"

	"github.com/redis/rueidis"
	"github.com/stockd/stockd"
)

// The replies of the scripts in scripts/, one result type and one decoder
// per script. Each script names its codes in its header (Lua locals); the
// constants here carry the same numbers under the same names, one Go type
// per script, so a code of one script cannot be compared with another's.
// take.lua's reply (TakeCode, TakeResult) is decoded with its batch in
// take.go (decodeTake).

// ClaimCode is claim.lua's outcome.
type ClaimCode int

// Claim outcomes (claim.lua: HOME, REDIRECTED).
const (
	ClaimHome       ClaimCode = 0 // this partition is the request's home
	ClaimRedirected ClaimCode = 1 // the slot redirects to another pid
)

// ClaimResult is what claim answered.
type ClaimResult struct {
	// Home: this partition is the request's home (it holds the request's
	// pointer or took record). Otherwise Next is the pid it redirects to.
	Home bool
	Next int
}

// decodeClaim reads claim.lua's {code, text}.
func decodeClaim(vals []rueidis.RedisMessage) (ClaimResult, error) {
	code, text, err := codeText(vals)
	if err != nil {
		return ClaimResult{}, fmt.Errorf("claim: %w", err)
	}
	switch ClaimCode(code) {
	case ClaimHome:
		return ClaimResult{Home: true}, nil
	case ClaimRedirected:
		if pid, err := strconv.Atoi(text); err == nil {
			return ClaimResult{Next: pid}, nil
		}
	}
	return ClaimResult{}, fmt.Errorf("claim: code %d %q: %w", code, text, ErrBadReply)
}

// PointCode is point.lua's outcome.
type PointCode int

// Point outcomes (point.lua: CONFLICT, MOVED, TOOK).
const (
	PointConflict PointCode = 0 // the pointer is not the expected one
	PointMoved    PointCode = 1 // the pointer moved
	PointTook     PointCode = 2 // the request took here earlier
)

// PointResult is what point answered.
type PointResult struct {
	Code PointCode
	// Pointer is the current pointer after the call (moved or conflict).
	Pointer string
	// Seq and Qty describe the earlier take when Code is PointTook.
	Seq, Qty int64
}

// decodePoint reads point.lua's {code, text}.
func decodePoint(vals []rueidis.RedisMessage) (PointResult, error) {
	code, text, err := codeText(vals)
	if err != nil {
		return PointResult{}, fmt.Errorf("point: %w", err)
	}
	r := PointResult{Code: PointCode(code)}
	if r.Code == PointTook {
		if r.Seq, r.Qty, err = parseTookRecord(text); err != nil {
			return PointResult{}, err
		}
		return r, nil
	}
	r.Pointer = text
	return r, nil
}

// FindCode is find.lua's outcome.
type FindCode int

// Find outcomes (find.lua: LOST, FOUND, ABSENT).
const (
	DetailLost   FindCode = 0 // the state is missing or of another epoch
	DetailFound  FindCode = 1 // the stream holds the detail
	DetailAbsent FindCode = 2 // the stream does not hold it (see Lookup.StateSeq)
)

// Lookup is what FindDetail learnt of one deduction.
type Lookup struct {
	Code FindCode
	// Qty is the detail's qty (DetailFound).
	Qty int64
	// StateSeq is the partition's last sequence: an absent detail with a
	// sequence at or below it was trimmed (published), above it was never
	// deducted.
	StateSeq int64
}

// decodeFind reads find.lua's {code, qty, state seq}.
func decodeFind(vals []rueidis.RedisMessage) (Lookup, error) {
	n, err := ints(vals, 3)
	if err != nil {
		return Lookup{}, fmt.Errorf("find detail: %w", err)
	}
	return Lookup{Code: FindCode(n[0]), Qty: n[1], StateSeq: n[2]}, nil
}

// InitCode is init.lua's outcome.
type InitCode int

// Init outcomes (init.lua: MISSING, PRESENT, CREATED, OTHER).
const (
	InitMissing InitCode = 0 // missing and not created
	InitPresent InitCode = 1 // present with the expected epoch
	InitCreated InitCode = 3 // created now
	InitOther   InitCode = 5 // present with another epoch
)

// decodeInit reads init.lua's {code, epoch}; the epoch is not used.
func decodeInit(vals []rueidis.RedisMessage) (InitCode, error) {
	code, _, err := codeText(vals)
	if err != nil {
		return 0, fmt.Errorf("init: %w", err)
	}
	return InitCode(code), nil
}

// RefillCode is refill.lua's outcome.
type RefillCode int

// Refill outcomes (refill.lua: APPLIED, APPLIED_BEFORE, LOST, CLOSED,
// FULL, REFUSED). RefillLost to RefillRefused are final (Final).
const (
	RefillApplied       RefillCode = 1 // injected now
	RefillAppliedBefore RefillCode = 2 // injected by an earlier run of the allocation
	RefillLost          RefillCode = 5 // state missing or of another epoch
	RefillClosed        RefillCode = 6 // the partition is closed or fenced
	RefillFull          RefillCode = 7 // the sub-domain is at its cap
	RefillRefused       RefillCode = 8 // refused by an earlier run of the allocation
)

// RefillResult is what refill answered.
type RefillResult struct {
	Code   RefillCode
	Levels stockd.Levels
}

// Final reports whether an allocation answered with r will never apply.
func (r RefillResult) Final() bool {
	return r.Code == RefillLost || r.Code == RefillClosed || r.Code == RefillFull || r.Code == RefillRefused
}

// decodeRefill reads refill.lua's {code, a, b, act}.
func decodeRefill(vals []rueidis.RedisMessage) (RefillResult, error) {
	n, err := ints(vals, 4)
	if err != nil {
		return RefillResult{}, fmt.Errorf("refill: %w", err)
	}
	return RefillResult{Code: RefillCode(n[0]), Levels: stockd.Levels{A: n[1], B: n[2], Active: activeName(n[3])}}, nil
}

// DrainCode is drain.lua's outcome.
type DrainCode int

// Drain outcomes (drain.lua: DRAINED, DRAINED_BEFORE, LOST).
const (
	Drained       DrainCode = 1 // drained now
	DrainedBefore DrainCode = 2 // drained by an earlier run of the drain id
	DrainLost     DrainCode = 5 // state missing or of another epoch: nothing drained
)

// DrainResult is what drain answered: its code and the units drained.
type DrainResult struct {
	Code   DrainCode
	Amount int64
}

// decodeDrain reads drain.lua's {code, amount}.
func decodeDrain(vals []rueidis.RedisMessage) (DrainResult, error) {
	n, err := ints(vals, 2)
	if err != nil {
		return DrainResult{}, fmt.Errorf("drain: %w", err)
	}
	return DrainResult{Code: DrainCode(n[0]), Amount: n[1]}, nil
}

// State is a partition's state as inspect sees it.
type State struct {
	Exists    bool
	Levels    stockd.Levels
	Seq       int64
	Threshold int64
	Status    string // open, fenced, closed
	Epoch     string
	Backlog   int64 // entries in the detail stream (not yet trimmed by sync)
	Records   int64 // per-request records kept for dedup (the generations still read)
}

// decodeInspect reads inspect.lua's {exists, a, b, act, seq, thr, st, ep,
// stream length, records}.
func decodeInspect(vals []rueidis.RedisMessage) (State, error) {
	if len(vals) != 10 {
		return State{}, fmt.Errorf("inspect: %d values: %w", len(vals), ErrBadReply)
	}
	n, err := ints(vals[:6], 6)
	if err != nil {
		return State{}, fmt.Errorf("inspect: %w", err)
	}
	st := State{
		Exists:    n[0] == 1,
		Levels:    stockd.Levels{A: n[1], B: n[2], Active: activeName(n[3])},
		Seq:       n[4],
		Threshold: n[5],
	}
	st.Status, _ = vals[6].ToString()
	st.Epoch, _ = vals[7].ToString()
	st.Backlog, _ = vals[8].AsInt64()
	st.Records, _ = vals[9].AsInt64()
	return st, nil
}

// AllowCode is an outcome of allow.lua; each op answers with its own
// subset (see the script's header).
type AllowCode int

// Outcomes of allow.lua's take op (TAKEN, AGAIN, LIMIT, GIVEN_BACK).
const (
	// AllowTaken: the units were added to the user's count (pending).
	AllowTaken AllowCode = 1
	// AllowAgain: the request id holds an entry already (a retry).
	AllowAgain AllowCode = 2
	// AllowLimit: the user's count plus qty is above the limit; nothing
	// was written.
	AllowLimit AllowCode = 3
	// AllowGivenBack: the request was released or expired; its retry
	// needs no allowance (it meets its first outcome). Settle answers it
	// too (nothing changed).
	AllowGivenBack AllowCode = 4
)

// Outcomes of allow.lua's settle op (HELD, HELD_BEFORE; or AllowGivenBack).
const (
	AllowHeld       AllowCode = 1 // the entry is held now
	AllowHeldBefore AllowCode = 2 // the entry was held already
)

// Outcomes of allow.lua's give, givedetail and forget ops (NOTHING, DONE).
const (
	AllowNothing AllowCode = 0 // nothing matched: nothing changed
	AllowDone    AllowCode = 1 // given back (give) or deleted (forget)
)

// AllowResult is what allow.lua answered: its code, and for the take op
// the units the user holds afterwards.
type AllowResult struct {
	Code AllowCode
	Held int64
}

// decodeAllow reads allow.lua's {code} or {code, held} (take).
func decodeAllow(vals []rueidis.RedisMessage) (AllowResult, error) {
	if len(vals) != 1 && len(vals) != 2 {
		return AllowResult{}, fmt.Errorf("%d values: %w", len(vals), ErrBadReply)
	}
	n, err := ints(vals, len(vals))
	if err != nil {
		return AllowResult{}, err
	}
	r := AllowResult{Code: AllowCode(n[0])}
	if len(n) == 2 {
		r.Held = n[1]
	}
	return r, nil
}

// codeText reads a {code, text} reply.
func codeText(vals []rueidis.RedisMessage) (int64, string, error) {
	if len(vals) != 2 {
		return 0, "", fmt.Errorf("%d values: %w", len(vals), ErrBadReply)
	}
	code, err := vals[0].AsInt64()
	if err != nil {
		return 0, "", fmt.Errorf("%w: %w", ErrBadReply, err)
	}
	text, _ := vals[1].ToString()
	return code, text, nil
}

// ints reads a reply of exactly n integers.
func ints(vals []rueidis.RedisMessage, n int) ([]int64, error) {
	if len(vals) != n {
		return nil, fmt.Errorf("%d values, want %d: %w", len(vals), n, ErrBadReply)
	}
	out := make([]int64, n)
	for i := range vals {
		var err error
		if out[i], err = vals[i].AsInt64(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadReply, err)
		}
	}
	return out, nil
}
