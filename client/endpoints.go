package client

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// node is one stockd hot endpoint.
type node struct {
	base string // "http://host:port", no trailing slash
	// down is set when an attempt on the node failed at the transport
	// level or with 503; the prober clears it once /readyz answers 200.
	down      atomic.Bool
	downSince atomic.Int64 // unix nanos of the latest markDown
}

// endpoints spreads attempts over the nodes round-robin, skipping nodes
// that are down; when every node is down it still picks one (the one down
// longest), since an attempt is the only way to learn that one is back.
type endpoints struct {
	nodes []*node
	next  atomic.Uint64
}

// pick returns the node for the next attempt.
func (e *endpoints) pick() *node {
	n := uint64(len(e.nodes))
	start := e.next.Add(1) - 1
	for i := range n {
		if nd := e.nodes[(start+i)%n]; !nd.down.Load() {
			return nd
		}
	}
	oldest := e.nodes[start%n]
	for _, nd := range e.nodes {
		if nd.downSince.Load() < oldest.downSince.Load() {
			oldest = nd
		}
	}
	return oldest
}

func (nd *node) markDown() {
	nd.downSince.Store(time.Now().UnixNano())
	nd.down.Store(true)
}

// prober brings down nodes back: every interval it asks each down node's
// /readyz and marks it up on 200. It runs until ctx ends.
type prober struct {
	ctx      context.Context
	eps      *endpoints
	http     *http.Client
	interval time.Duration
	timeout  time.Duration
	done     sync.WaitGroup
}

func (p *prober) loop() {
	defer p.done.Done()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			for _, nd := range p.eps.nodes {
				if nd.down.Load() && p.ready(nd) {
					nd.down.Store(false)
				}
			}
		}
	}
}

// ready asks nd's /readyz.
func (p *prober) ready(nd *node) bool {
	ctx, cancel := context.WithTimeout(p.ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, nd.base+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
