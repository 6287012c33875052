package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/daemon/cluster"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
)

// Kinds of registry notices nodes gossip to each other. A notice is a hint
// to look at the truth (MySQL, Redis) now rather than at the next reload;
// losing one costs at most a reload interval.
const (
	// noticeChanged: a SKU's row changed (created, restocked, a partition
	// fenced); Version is the new version, 0 when unknown.
	noticeChanged = "changed"
	// noticeSoldOut: a node found the SKU sold out.
	noticeSoldOut = "soldout"
	// noticeReturned: units went back to the SKU's pool (release, expiry).
	noticeReturned = "returned"
	// noticeRefill: sent to a partition's owner, asking it to refill a
	// sub-domain (the sender's deductions saw it low).
	noticeRefill = "refill"
	// noticeShards: the shard list changed (added, draining, removed).
	noticeShards = "shards"
	// noticeApply: sent to each member by the node that made an admin
	// change: apply these notices (Items), then acknowledge ID to From.
	noticeApply = "apply"
	// noticeAck: From applied the notices of apply ID.
	noticeAck = "ack"
	// noticeWritten: sent to partitions' owner, listing (Items: SKU, PID)
	// the partitions the sender took on: their streams have new details
	// for the owner's write-back (see writeHints).
	noticeWritten = "written"
)

type notice struct {
	Kind    string `json:"k"`
	SKU     string `json:"s"`
	Version int64  `json:"v,omitempty"`
	// Refill requests: partition, sub-domain and cap.
	PID int    `json:"p,omitempty"`
	Sub string `json:"b,omitempty"`
	Cap int64  `json:"c,omitempty"`
	// Apply and ack: the sender, the change's id and what to apply.
	From  string   `json:"f,omitempty"`
	ID    uint64   `json:"i,omitempty"`
	Items []notice `json:"n,omitempty"`
}

// notices sends and applies registry notices.
type notices struct {
	peer   *cluster.Peer
	loader *loader
	sched  *scheduler.Scheduler
	reg    *scheduler.Registry
	logger *slog.Logger
	// applyTimeout bounds how long publish waits for acknowledgements;
	// viewMaxAge is how old a member's view may be (cluster config).
	applyTimeout, viewMaxAge time.Duration
	// reload carries SKUs a push/pull showed newer elsewhere.
	reload chan string
	// work carries the notices to apply, from the reader of the inbox
	// (which handles acknowledgements itself, so that they are never
	// stuck behind a slow reload).
	work chan notice

	// unconfirmed counts the members publish named (nil: not counted).
	unconfirmed prometheus.Counter

	seq     atomic.Uint64
	mu      sync.Mutex
	waiting map[uint64]*ackWait
}

// ackWait is one published change waiting for its acknowledgements.
type ackWait struct {
	pending map[string]bool
	done    chan struct{}
}

// refill asks the owner of partition pid of sku to refill sub below capAt.
func (n *notices) refill(sku string, pid int, sub byte, capAt int64) {
	b, _ := json.Marshal(notice{Kind: noticeRefill, SKU: sku, PID: pid, Sub: string(sub), Cap: capAt})
	if err := n.peer.SendTo(n.peer.Owner(partitionKey(sku, pid)), b); err != nil {
		n.logger.Debug("refill request not sent", "sku", sku, "pid", pid, "err", err)
	}
}

func (n *notices) send(kind, sku string, version int64) {
	b, _ := json.Marshal(notice{Kind: kind, SKU: sku, Version: version})
	n.peer.Broadcast(kind+"/"+sku, b)
}

// publish tells every member about an admin change this node committed and
// applied, and waits until each member that was alive has applied it too,
// or applyTimeout passed. It returns the members that did not confirm in
// time, sorted. The notices are gossiped as well, for members this node
// does not see.
//
// Members lost less than recentlyGone ago (failed, or partitioned away
// and perhaps still answering) are named unconfirmed too.
//
// When some member did not confirm, or a known member is not alive,
// publish returns no earlier than viewMaxAge after it started: from then
// on, a node that did not apply the change gives no negative answer on a
// view from before it (it reads MySQL again first).
func (n *notices) publish(ctx context.Context, items ...notice) []string {
	start := time.Now()
	for _, it := range items {
		b, _ := json.Marshal(it)
		n.peer.Broadcast(it.Kind+"/"+it.SKU, b)
	}
	var targets, unconfirmed []string
	absent := false
	for _, m := range n.peer.Members() {
		switch {
		case m.IsSelf:
		case m.State == "alive":
			targets = append(targets, m.Name)
		default:
			absent = true
			if time.Since(m.Since) < recentlyGone {
				unconfirmed = append(unconfirmed, m.Name)
			}
		}
	}
	if len(targets) > 0 {
		id := n.seq.Add(1)
		w := &ackWait{pending: map[string]bool{}, done: make(chan struct{})}
		for _, name := range targets {
			w.pending[name] = true
		}
		n.mu.Lock()
		if n.waiting == nil {
			n.waiting = map[uint64]*ackWait{}
		}
		n.waiting[id] = w
		n.mu.Unlock()
		b, _ := json.Marshal(notice{Kind: noticeApply, From: n.peer.Name(), ID: id, Items: items})
		for _, name := range targets {
			// A TCP send to a frozen member can take its time: never
			// inside the bound.
			go func() {
				if err := n.peer.SendReliable(name, b); err != nil {
					n.logger.Debug("change not sent", "member", name, "err", err)
				}
			}()
		}
		t := time.NewTimer(n.applyTimeout)
		select {
		case <-w.done:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		n.mu.Lock()
		delete(n.waiting, id)
		for name := range w.pending {
			unconfirmed = append(unconfirmed, name)
		}
		n.mu.Unlock()
	}
	slices.Sort(unconfirmed)
	if len(unconfirmed) > 0 || absent {
		if d := n.viewMaxAge - time.Since(start); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
	}
	if len(unconfirmed) > 0 {
		if n.unconfirmed != nil {
			n.unconfirmed.Add(float64(len(unconfirmed)))
		}
		n.logger.Warn("change not confirmed by every member in time", "members", unconfirmed, "timeout", n.applyTimeout)
	}
	return unconfirmed
}

// recentlyGone is how long a member that stopped being alive is still
// named in publish's answer.
const recentlyGone = time.Minute

// acked records from's acknowledgement of change id.
func (n *notices) acked(id uint64, from string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w := n.waiting[id]
	if w == nil || !w.pending[from] {
		return
	}
	delete(w.pending, from)
	if len(w.pending) == 0 {
		close(w.done)
	}
}

// run applies incoming notices until ctx ends. Push/pull state is every
// SKU's version: a node that missed a notice catches up on the next
// exchange.
func (n *notices) run(ctx context.Context) {
	n.reload = make(chan string, 256)
	n.work = make(chan notice, 1024)
	n.peer.SetState(func() []byte {
		versions := map[string]int64{}
		for _, name := range n.reg.Names() {
			if s := n.reg.Get(name); s != nil {
				versions[name] = s.Version()
			}
		}
		b, _ := json.Marshal(versions)
		return b
	}, func(buf []byte) {
		var versions map[string]int64
		if json.Unmarshal(buf, &versions) != nil {
			return
		}
		for name, v := range versions {
			if s := n.reg.Get(name); s == nil || s.Version() < v {
				select {
				case n.reload <- name:
				default: // the reload timer catches up
				}
			}
		}
	})
	go n.read(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case name := <-n.reload:
			n.reloadSKU(ctx, name)
		case m := <-n.work:
			if m.Kind != noticeApply {
				n.apply(ctx, m)
				continue
			}
			ok := true
			for _, it := range m.Items {
				ok = n.apply(ctx, it) && ok
			}
			if ok {
				// Acknowledge only what was applied: a member that
				// failed is named unconfirmed by the sender.
				b, _ := json.Marshal(notice{Kind: noticeAck, From: n.peer.Name(), ID: m.ID})
				go func() {
					if err := n.peer.SendReliable(m.From, b); err != nil {
						n.logger.Debug("ack not sent", "member", m.From, "err", err)
					}
				}()
			}
		}
	}
}

// read takes messages off the inbox: acknowledgements are recorded at
// once, everything else goes to run's loop (dropped when it is that far
// behind: the reload timer catches up, and the sender names this node
// unconfirmed).
func (n *notices) read(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-n.peer.Inbox():
			var m notice
			if err := json.Unmarshal(b, &m); err != nil {
				n.logger.Warn("bad notice", "err", err)
				continue
			}
			if m.Kind == noticeAck {
				n.acked(m.ID, m.From)
				continue
			}
			if m.Kind == noticeWritten {
				// In memory and at once: the write-back's lag waits on it.
				for _, it := range m.Items {
					n.sched.Touched(it.SKU, it.PID)
				}
				continue
			}
			select {
			case n.work <- m:
			default:
				n.logger.Warn("notice dropped: the notice loop is behind", "kind", m.Kind, "sku", m.SKU)
			}
		}
	}
}

// apply acts on one notice; false when it could not (the truth could not
// be read).
func (n *notices) apply(ctx context.Context, m notice) bool {
	switch m.Kind {
	case noticeChanged:
		if s := n.reg.Get(m.SKU); m.Version == 0 || s == nil || s.Version() < m.Version {
			return n.reloadSKU(ctx, m.SKU)
		}
	case noticeSoldOut:
		if err := n.sched.CheckSoldOut(ctx, m.SKU); err != nil {
			n.logger.Warn("check sold out", "sku", m.SKU, "err", err)
		}
	case noticeReturned:
		n.sched.Invalidate(m.SKU, -1)
	case noticeShards:
		if err := n.loader.syncShards(ctx); err != nil {
			n.logger.Warn("connect shards after notice", "err", err)
			return false
		}
	case noticeRefill:
		if len(m.Sub) == 1 {
			n.sched.RefillFor(m.SKU, m.PID, m.Sub[0], m.Cap)
		}
	}
	return true
}

func (n *notices) reloadSKU(ctx context.Context, name string) bool {
	sku, err := n.loader.store.Get(ctx, name)
	if errors.Is(err, stockd.ErrUnknownSKU) {
		// Archived (or never created): nothing of it stays here.
		n.loader.forget(name)
		return true
	}
	if err == nil {
		err = n.loader.load(ctx, sku)
	}
	if err != nil {
		n.logger.Warn("reload after notice", "sku", name, "err", err)
		return false
	}
	return true
}

// clusterView is GET /admin/cluster: the members and what each owns.
type clusterView struct {
	Self    string                `json:"self"`
	Members []cluster.Member      `json:"members"`
	Owners  map[string]*ownership `json:"owners"`
}

type ownership struct {
	Partitions []string `json:"partitions"`
	SKUs       []string `json:"skus"`
}

func newClusterView(peer *cluster.Peer, reg *scheduler.Registry) clusterView {
	v := clusterView{Self: peer.Name(), Members: peer.Members(), Owners: map[string]*ownership{}}
	for _, name := range peer.Alive() {
		v.Owners[name] = &ownership{Partitions: []string{}, SKUs: []string{}}
	}
	for _, name := range reg.Names() {
		if o := v.Owners[peer.Owner(skuKey(name))]; o != nil {
			o.SKUs = append(o.SKUs, name)
		}
		if s := reg.Get(name); s != nil {
			for _, p := range s.Slots() {
				if o := v.Owners[peer.Owner(partitionKey(name, p.Handle.ID))]; o != nil {
					o.Partitions = append(o.Partitions, partitionKey(name, p.Handle.ID))
				}
			}
		}
	}
	return v
}

// writeHints tells partitions' owners that this node took on them, so
// that an owner's write-back reads those streams at once instead of
// polling every stream it owns (sync.Batcher). Takes mark a partition
// (one map look-up when it is marked already); every interval the marks
// are cleared, then sent, one message per owner. Clearing before sending
// makes a take that found its mark set covered by the message: its entry
// was in the stream before the take returned. A lost message delays those
// details to the owner's safety read (sync.idle_poll_interval).
// hintBytes bounds the items of one write hint (memberlist's datagrams
// hold about 1,400 bytes).
const hintBytes = 1000

type writeHints struct {
	peer    *cluster.Peer
	logger  *slog.Logger
	pending sync.Map // *shard.Partition -> struct{}
}

func (h *writeHints) took(p *shard.Partition) {
	if _, ok := h.pending.Load(p); ok {
		return
	}
	h.pending.LoadOrStore(p, struct{}{})
}

// send clears the marks and tells each owner which of its partitions
// were taken on (the daemon runs it every sync.poll_interval).
func (h *writeHints) send(context.Context) {
	byOwner := map[string][]notice{}
	h.pending.Range(func(k, _ any) bool {
		h.pending.Delete(k)
		p := k.(*shard.Partition)
		if owner := h.peer.Owner(partitionKey(p.SKU, p.ID)); owner != h.peer.Name() {
			byOwner[owner] = append(byOwner[owner], notice{SKU: p.SKU, PID: p.ID})
		}
		return true
	})
	for owner, items := range byOwner {
		// Best effort datagrams: a few hundred bytes of items each.
		for len(items) > 0 {
			n, size := 0, 0
			for n < len(items) && (n == 0 || size+len(items[n].SKU)+24 <= hintBytes) {
				size += len(items[n].SKU) + 24
				n++
			}
			b, _ := json.Marshal(notice{Kind: noticeWritten, Items: items[:n]})
			items = items[n:]
			if err := h.peer.SendTo(owner, b); err != nil {
				h.logger.Debug("write hint not sent", "member", owner, "err", err)
			}
		}
	}
}
