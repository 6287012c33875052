package audit

import "fmt"

// check evaluates the equation and the counters against the detail rows,
// and says in Problems what does not add up.
func (r *Report) check() {
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
}
