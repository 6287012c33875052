package stocktest

import (
	"strconv"
	"sync"
	"testing"
)

// Tally counts what buyers got; it is safe for concurrent Adds.
type Tally struct {
	mu sync.Mutex
	// OK and SoldOut count the definite answers; Units is the units
	// acknowledged by the OK ones.
	OK, SoldOut int
	Units       int64
	// Other counts the remaining answers by HTTP status.
	Other map[int]int
	// Reservations maps each reservation to the request id it answered.
	Reservations map[string]string
	// Errs are the calls that got no HTTP answer.
	Errs []error
}

// NewTally returns an empty Tally.
func NewTally() *Tally {
	return &Tally{Other: map[int]int{}, Reservations: map[string]string{}}
}

// Add records request id's answer (or error). A reservation handed to two
// request ids fails t: it would be one unit sold twice.
func (o *Tally) Add(t testing.TB, id string, a Answer, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case err != nil:
		o.Errs = append(o.Errs, err)
	case a.Code == 200 && a.Status == "ok":
		o.OK++
		o.Units += a.Qty
		if prev, dup := o.Reservations[a.Reservation]; dup && prev != id {
			t.Errorf("reservation %s returned to %s and %s", a.Reservation, prev, id)
		}
		o.Reservations[a.Reservation] = id
	case a.Code == 409 && a.Status == "sold_out":
		o.SoldOut++
	default:
		o.Other[a.Code]++
	}
}

// Crowd runs n buyers at once against the hot endpoint at addr, buyer i
// asking for qty(i) units of sku under request id idPrefix+i, and returns
// the tally when all have answered.
func Crowd(t testing.TB, b *Buyer, addr, sku string, n int, idPrefix string, qty func(i int) int64) *Tally {
	t.Helper()
	o := NewTally()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			id := idPrefix + strconv.Itoa(i)
			a, err := b.Deduct(addr, sku, qty(i), id)
			o.Add(t, id, a, err)
		}(i)
	}
	close(start)
	wg.Wait()
	return o
}

// Counts are a Tally's figures at one moment.
type Counts struct {
	OK, SoldOut, Errs int
	Units             int64
}

// Snapshot returns the figures so far; safe while buyers still Add.
func (o *Tally) Snapshot() Counts {
	o.mu.Lock()
	defer o.mu.Unlock()
	return Counts{OK: o.OK, SoldOut: o.SoldOut, Errs: len(o.Errs), Units: o.Units}
}
