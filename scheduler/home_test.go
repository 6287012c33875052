package scheduler

import (
	"strconv"
	"testing"

	"github.com/stockd/stockd/shard"
)

// HomeOf is what tools and the fault suite use to predict where a request
// lands; it must agree with the scheduler's own choice for every id.
func TestHomeOfAgreesWithScheduler(t *testing.T) {
	r := NewRegistry()
	info := SKUInfo{Name: "home-sku"}
	pids := []int{0, 1, 2, 5, 9}
	for _, id := range pids {
		info.Partitions = append(info.Partitions, PartitionInfo{Handle: &shard.Partition{SKU: "home-sku", ID: id}, Open: true})
	}
	s := r.Upsert(info)
	seen := map[int]int{}
	for i := 0; i < 5000; i++ {
		id := "req-" + strconv.Itoa(i)
		want := s.home(id).H.ID
		if got := HomeOf("home-sku", id, pids); got != want {
			t.Fatalf("HomeOf(%q) = %d, scheduler chose %d", id, got, want)
		}
		seen[want]++
	}
	if len(seen) != len(pids) {
		t.Fatalf("5000 ids reached only partitions %v", seen)
	}
	if got := HomeOf("home-sku", "x", nil); got != -1 {
		t.Fatalf("HomeOf with no partitions = %d, want -1", got)
	}
}
