package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"

	"github.com/stockd/stockd/daemon/cluster"
	"github.com/stockd/stockd/scheduler"
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
)

type notice struct {
	Kind    string `json:"k"`
	SKU     string `json:"s"`
	Version int64  `json:"v,omitempty"`
	// Refill requests: partition, sub-domain and cap.
	PID int    `json:"p,omitempty"`
	Sub string `json:"b,omitempty"`
	Cap int64  `json:"c,omitempty"`
}

// notices sends and applies registry notices.
type notices struct {
	peer   *cluster.Peer
	loader *loader
	logger *slog.Logger
	// reload carries SKUs a push/pull showed newer elsewhere.
	reload chan string
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

// run applies incoming notices until ctx ends. Push/pull state is every
// SKU's version: a node that missed a notice catches up on the next
// exchange.
func (n *notices) run(ctx context.Context, sched *scheduler.Scheduler, reg *scheduler.Registry) {
	n.reload = make(chan string, 256)
	n.peer.SetState(func() []byte {
		versions := map[string]int64{}
		for _, name := range reg.Names() {
			if s := reg.Get(name); s != nil {
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
			if s := reg.Get(name); s == nil || s.Version() < v {
				select {
				case n.reload <- name:
				default: // the reload timer catches up
				}
			}
		}
	})
	for {
		select {
		case <-ctx.Done():
			return
		case name := <-n.reload:
			n.reloadSKU(ctx, name)
		case b := <-n.peer.Inbox():
			var m notice
			if err := json.Unmarshal(b, &m); err != nil {
				n.logger.Warn("bad notice", "err", err)
				continue
			}
			switch m.Kind {
			case noticeChanged:
				if s := reg.Get(m.SKU); m.Version == 0 || s == nil || s.Version() < m.Version {
					n.reloadSKU(ctx, m.SKU)
				}
			case noticeSoldOut:
				if err := sched.CheckSoldOut(ctx, m.SKU); err != nil {
					n.logger.Warn("check sold out", "sku", m.SKU, "err", err)
				}
			case noticeReturned:
				sched.Invalidate(m.SKU, -1)
			case noticeShards:
				if err := n.loader.syncShards(ctx); err != nil {
					n.logger.Warn("connect shards after notice", "err", err)
				}
			case noticeRefill:
				if len(m.Sub) == 1 {
					sched.RefillFor(m.SKU, m.PID, m.Sub[0], m.Cap)
				}
			}
		}
	}
}

func (n *notices) reloadSKU(ctx context.Context, name string) {
	sku, err := n.loader.store.Get(ctx, name)
	if err == nil {
		err = n.loader.load(ctx, sku)
	}
	if err != nil {
		n.logger.Warn("reload after notice", "sku", name, "err", err)
	}
}

// partitionKey names a partition's background work for ownership.
func partitionKey(sku string, pid int) string { return sku + "/" + strconv.Itoa(pid) }

// skuKey names a SKU's background work (expiry) for ownership.
func skuKey(sku string) string { return "sku:" + sku }

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
			for _, p := range s.Partitions() {
				if o := v.Owners[peer.Owner(partitionKey(name, p.H.ID))]; o != nil {
					o.Partitions = append(o.Partitions, partitionKey(name, p.H.ID))
				}
			}
		}
	}
	return v
}
