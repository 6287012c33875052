package stockd

// Levels are a partition's two sub-domain levels and which one is active,
// as a script last answered them.
type Levels struct {
	A, B   int64
	Active byte // 'a' or 'b'
}

// Total is the stock of both sub-domains.
func (l Levels) Total() int64 { return l.A + l.B }

// Refill is what a refill of one sub-domain did: preallocate produces it
// (MySQL transaction, then the refill script), the scheduler reads it to
// update its registry. A refill that failed (MySQL or Redis did not
// answer) comes with an error beside it and may be retried.
type Refill struct {
	// Applied is the units injected now (0 when the pool was empty, the
	// sub-domain was full enough, or Redis refused the allocation).
	Applied int64
	// Pool is the SKU's pool right after the transaction, -1 when unknown.
	Pool int64
	// Levels are the partition's levels after the refill, when Redis
	// answered (HaveLevels).
	Levels     Levels
	HaveLevels bool
	// Lost is set when Redis no longer holds the partition's state.
	Lost bool
	// Voided is set when Redis refused the allocation for good and its
	// units went back to the pool.
	Voided bool
	// Closed is set when the refusal was because the partition is closed.
	Closed bool
}
