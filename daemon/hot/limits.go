package hot

import (
	"errors"
	"hash/maphash"
	"sync"
	"time"
)

// Limits are the admission limits of the hot endpoint; a request over one
// is answered 429 before it touches stock. Zero turns a limit off.
type Limits struct {
	// ClientRPS is the deductions per second one client address may send
	// (token bucket); gateways usually share a few addresses, so set it
	// with them in mind.
	ClientRPS float64 `yaml:"client_rps"`
	// ClientBurst is the bucket size (default: one second's worth).
	ClientBurst int `yaml:"client_burst"`
	// SKUInflight caps the deductions of one SKU in progress on this node
	// (a herd waiting on refills holds goroutines and Redis calls).
	SKUInflight int `yaml:"sku_inflight"`
}

// Validate reports every bad field.
func (l Limits) Validate() error {
	var errs []error
	if l.ClientRPS < 0 {
		errs = append(errs, errors.New("client_rps: must not be negative"))
	}
	if l.ClientBurst < 0 {
		errs = append(errs, errors.New("client_burst: must not be negative"))
	}
	if l.SKUInflight < 0 {
		errs = append(errs, errors.New("sku_inflight: must not be negative"))
	}
	return errors.Join(errs...)
}

// clientLimiter is a token bucket per client address, in shards so that
// clients do not contend on one lock.
type clientLimiter struct {
	rate, burst float64
	seed        maphash.Seed
	shards      [64]limiterShard
}

type limiterShard struct {
	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newClientLimiter(l Limits) *clientLimiter {
	if l.ClientRPS <= 0 {
		return nil
	}
	c := &clientLimiter{rate: l.ClientRPS, burst: float64(l.ClientBurst), seed: maphash.MakeSeed()}
	if c.burst <= 0 {
		c.burst = max(1, l.ClientRPS)
	}
	for i := range c.shards {
		c.shards[i].buckets = map[string]*bucket{}
	}
	return c
}

// allow takes a token of client's bucket.
func (c *clientLimiter) allow(client []byte, now time.Time) bool {
	sh := &c.shards[maphash.Bytes(c.seed, client)%uint64(len(c.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.buckets[string(client)]
	if b == nil {
		b = &bucket{tokens: c.burst, last: now}
		sh.buckets[string(client)] = b
	}
	b.tokens = min(c.burst, b.tokens+now.Sub(b.last).Seconds()*c.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// forget drops the buckets of clients idle since before cutoff (they are
// full again anyway).
func (c *clientLimiter) forget(cutoff time.Time) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for k, b := range sh.buckets {
			if b.last.Before(cutoff) {
				delete(sh.buckets, k)
			}
		}
		sh.mu.Unlock()
	}
}
