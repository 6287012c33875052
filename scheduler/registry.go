package scheduler

import (
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/internal/hashx"
	"github.com/stockd/stockd/internal/hotstats"
	"github.com/stockd/stockd/shard"
)

// SKUInfo is what the registry is loaded from (MySQL is the truth).
type SKUInfo struct {
	Name      string
	Chunk     int64
	Threshold int64
	Pool      int64
	Version   int64
	// Partitions are every partition of the SKU, open or not: closed and
	// fenced ones still hold the pointers of requests homed on them.
	Partitions []PartitionInfo
	// Rules are the sale rules; nil when the SKU has none.
	Rules *Rules
	// Retired are the pids of partitions that left the home set (closed
	// longer than the retry window ago, or on a removed shard). A pointer
	// naming one of them is treated as short; a pointer naming a pid that
	// is neither here nor in Partitions names a partition this node has
	// not loaded yet.
	Retired []int
}

// PartitionInfo is one partition.
type PartitionInfo struct {
	Handle *shard.Partition
	Open   bool
	// Gen orders partitions added by rebalancing within the generation
	// lifetime (twice the retry window, 4.2): 0 for the SKU's settled set,
	// 1, 2, … for each later addition. A request whose home under the
	// whole set is in a generation above 0 walks its homes from the
	// settled set's up (SKU.homeChain, Scheduler.homeOf).
	Gen int
}

// SKU is the registry entry of one SKU. Its fields are read on the hot path
// without locks.
type SKU struct {
	Name string

	// parts is every partition (the home set), sorted by pid; replaced as a
	// whole when partitions are added or removed.
	parts atomic.Pointer[[]*Slot]
	// retired is SKUInfo.Retired, sorted.
	retired atomic.Pointer[[]int]

	chunk     atomic.Int64
	threshold atomic.Int64
	version   atomic.Int64
	// pool is the last known unallocated stock in MySQL.
	pool atomic.Int64
	// gen counts stock arrivals (restock, release, refill); a sold-out
	// verdict computed under an older gen is void.
	gen atomic.Uint64
	// soldOut is set once pool and partitions are empty.
	soldOut atomic.Pointer[soldOut]
	// changed wakes requests waiting for stock.
	changed signal
	// rules are the sale rules, nil when none (rules.go).
	rules atomic.Pointer[Rules]
	// Inflight counts this node's deductions of the SKU in progress (the
	// hot endpoint's admission limit).
	Inflight atomic.Int64
	// Stats counts the hot endpoint's answers for the status page; the
	// entry lives as long as the SKU, so do its counts.
	Stats hotstats.Counters
}

type soldOut struct {
	successes *filter
	// installed is when the verdict was installed (mono.Now): no take
	// of the SKU can succeed after it while the verdict stands.
	installed int64
	// checked is when MySQL last confirmed the verdict (mono.Now at the
	// start of the read that found pool and pending allocations empty and
	// the version unchanged); failed is when a confirmation last failed.
	checked, failed atomic.Int64
}

// Slot is the registry's view of one partition: the handle on its keys in
// Redis (Handle, from package shard, which runs the scripts) and what this
// node last knew of it (levels from every script reply that touched it,
// open, refills in flight, sweep marks). One partition has one slot per
// node; the scheduler picks slots, and takes through their handles.
type Slot struct {
	Handle *shard.Partition
	seed   uint64
	gen    atomic.Int32

	a, b      atomic.Int64
	activeB   atomic.Bool
	open      atomic.Bool
	refilling [2]atomic.Bool

	// Sweep: the last sequence and time (mono) it read the partition at,
	// and whether another node hinted a take since (Touched).
	sweptSeq atomic.Int64
	sweptAt  atomic.Int64
	touched  atomic.Bool
}

// Levels are the last known levels.
func (p *Slot) Levels() stockd.Levels {
	l := stockd.Levels{A: p.a.Load(), B: p.b.Load(), Active: 'a'}
	if p.activeB.Load() {
		l.Active = 'b'
	}
	return l
}

// Open tells whether the partition may sell.
func (p *Slot) Open() bool { return p.open.Load() }

func (p *Slot) setLevels(l stockd.Levels) {
	p.a.Store(l.A)
	p.b.Store(l.B)
	p.activeB.Store(l.Active == 'b')
}

func (p *Slot) level() int64 { return p.a.Load() + p.b.Load() }

// Slots returns the SKU's partitions, sorted by pid (do not modify).
func (s *SKU) Slots() []*Slot { return *s.parts.Load() }

// Version is the registry version the entry was loaded at.
func (s *SKU) Version() int64 { return s.version.Load() }

// Pool is the last known pool.
func (s *SKU) Pool() int64 { return s.pool.Load() }

// SoldOut tells whether the SKU is known sold out.
func (s *SKU) SoldOut() bool { return s.soldOut.Load() != nil }

// Available is the approximate stock: pool plus last known levels.
func (s *SKU) Available() int64 {
	if s.SoldOut() {
		return 0
	}
	n := max(s.pool.Load(), 0)
	for _, p := range s.Slots() {
		if p.Open() {
			n += p.level()
		}
	}
	return n
}

// Slot returns the entry of partition pid, or nil.
func (s *SKU) Slot(pid int) *Slot {
	parts := s.Slots()
	i := sort.Search(len(parts), func(i int) bool { return parts[i].Handle.ID >= pid })
	if i < len(parts) && parts[i].Handle.ID == pid {
		return parts[i]
	}
	return nil
}

// home is the request's home partition: the rendezvous-hash winner over all
// partitions. It depends only on the request id and the set of partition
// ids, so every node and every retry agrees on it.
func (s *SKU) home(reqID string) *Slot {
	return s.homeUpTo(hashx.FNV64(reqID), -1)
}

// HomeOf is the home partition id of a request among pids, computed
// exactly as the scheduler does; -1 when pids is empty. Tests and tools use
// it to know which partition (and so which shard) a request lands on.
func HomeOf(sku, reqID string, pids []int) int {
	h := hashx.FNV64(reqID)
	best, bestW := -1, uint64(0)
	for _, pid := range pids {
		if w := hashx.Mix64(h ^ partitionSeed(sku, pid)); best < 0 || w > bestW {
			best, bestW = pid, w
		}
	}
	return best
}

// partitionSeed is a partition's rendezvous seed: fixed by the SKU name and
// the partition id, so every node derives the same one.
func partitionSeed(sku string, pid int) uint64 {
	return hashx.Mix64(hashx.FNV64(sku + ":" + strconv.Itoa(pid)))
}

// homeUpTo is the rendezvous winner among partitions of generation <= gen
// (all when gen < 0).
func (s *SKU) homeUpTo(h uint64, gen int) *Slot {
	var best *Slot
	var bestW uint64
	for _, p := range s.Slots() {
		if gen >= 0 && int(p.gen.Load()) > gen {
			continue
		}
		if w := hashx.Mix64(h ^ p.seed); best == nil || w > bestW {
			best, bestW = p, w
		}
	}
	return best
}

// homeChain lists the request's homes under the sets of generations 0,
// 0..1, …, 0..k (the whole set), oldest first, leaving out a home equal to
// the one before it. Its first element is the request's anchor: every node
// computes it alike, whichever generations it has loaded (4.2).
func (s *SKU) homeChain(h uint64) []*Slot {
	top := 0
	for _, p := range s.Slots() {
		top = max(top, int(p.gen.Load()))
	}
	var out []*Slot
	for g := 0; g <= top; g++ {
		if p := s.homeUpTo(h, g); p != nil && (len(out) == 0 || p != out[len(out)-1]) {
			out = append(out, p)
		}
	}
	return out
}

// pick chooses an open partition on a healthy shard with at least qty
// known units, not in tried, at random weighted by level.
func (s *SKU) pick(qty int64, tried []int) *Slot {
	var sum int64
	parts := s.Slots()
	for _, p := range parts {
		if l := p.level(); l >= qty && p.Open() && p.Handle.Shard.Healthy() && !contains(tried, p.Handle.ID) {
			sum += l
		}
	}
	if sum == 0 {
		return nil
	}
	r := rand.Int64N(sum)
	for _, p := range parts {
		if l := p.level(); l >= qty && p.Open() && p.Handle.Shard.Healthy() && !contains(tried, p.Handle.ID) {
			if r < l {
				return p
			}
			r -= l
		}
	}
	return nil
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Registry maps SKU names to entries. Reads are lock-free (copy on write).
type Registry struct {
	mu   sync.Mutex
	skus atomic.Pointer[map[string]*SKU]
	// ruled counts the SKUs with sale rules: while it is 0 the hot path
	// does not even look a SKU's rules up (Scheduler.Rules).
	ruled atomic.Int64
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	r := &Registry{}
	m := map[string]*SKU{}
	r.skus.Store(&m)
	return r
}

// Get returns the SKU entry or nil.
func (r *Registry) Get(name string) *SKU { return (*r.skus.Load())[name] }

// Names lists the SKUs.
func (r *Registry) Names() []string {
	m := *r.skus.Load()
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Handles lists every partition of every SKU.
func (r *Registry) Handles() []*shard.Partition {
	var out []*shard.Partition
	for _, s := range *r.skus.Load() {
		for _, p := range s.Slots() {
			out = append(out, p.Handle)
		}
	}
	return out
}

// Upsert adds or updates a SKU from info, keeping the known levels and
// flags of partitions it already had (same pid, epoch and shard), and
// returns the entry.
func (r *Registry) Upsert(info SKUInfo) *SKU {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.skus.Load()
	s := old[info.Name]
	if s == nil {
		s = &SKU{Name: info.Name}
		s.changed.init()
		empty := []*Slot{}
		s.parts.Store(&empty)
		next := make(map[string]*SKU, len(old)+1)
		for k, v := range old {
			next[k] = v
		}
		next[info.Name] = s
		defer r.skus.Store(&next)
	}
	s.chunk.Store(info.Chunk)
	s.threshold.Store(info.Threshold)
	s.version.Store(info.Version)
	s.pool.Store(info.Pool)
	if old := s.rules.Swap(info.Rules); (old == nil) != (info.Rules == nil) {
		if info.Rules != nil {
			r.ruled.Add(1)
		} else {
			r.ruled.Add(-1)
		}
	}

	prev := s.Slots()
	parts := make([]*Slot, 0, len(info.Partitions))
	for _, pi := range info.Partitions {
		var p *Slot
		for _, q := range prev {
			if q.Handle.ID == pi.Handle.ID && q.Handle.Epoch == pi.Handle.Epoch && q.Handle.Shard == pi.Handle.Shard {
				p = q
				break
			}
		}
		if p == nil {
			p = &Slot{Handle: pi.Handle, seed: partitionSeed(info.Name, pi.Handle.ID)}
			p.touched.Store(true) // swept once soon
		} else {
			p.Handle.ObserveSeq(pi.Handle.LastSeq())
		}
		p.gen.Store(int32(pi.Gen))
		p.open.Store(pi.Open)
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i].Handle.ID < parts[j].Handle.ID })
	s.parts.Store(&parts)
	retired := slices.Clone(info.Retired)
	slices.Sort(retired)
	s.retired.Store(&retired)
	return s
}

// Remove drops a SKU from the registry (it was archived): its levels,
// its metric series and its sold-out verdict go with it. Requests for it
// then find no entry (404 once MySQL confirms, 12.4).
func (r *Registry) Remove(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.skus.Load()
	gone, ok := old[name]
	if !ok {
		return
	}
	// The hot path skips the rules lookup while no SKU has rules.
	if gone.rules.Swap(nil) != nil {
		r.ruled.Add(-1)
	}
	next := make(map[string]*SKU, len(old))
	for k, v := range old {
		if k != name {
			next[k] = v
		}
	}
	r.skus.Store(&next)
}

// isRetired tells whether pid is a partition that left the home set.
func (s *SKU) isRetired(pid int) bool {
	r := s.retired.Load()
	if r == nil {
		return false
	}
	_, ok := slices.BinarySearch(*r, pid)
	return ok
}

// signal is a broadcast: wait returns a channel closed by the next fire.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) init() { s.ch = make(chan struct{}) }

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}
