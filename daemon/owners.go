package daemon

import (
	"strconv"

	"github.com/stockd/stockd/daemon/cluster"
	"github.com/stockd/stockd/scheduler"
	"github.com/stockd/stockd/shard"
)

// owners tells which background work is this node's: the member that
// rendezvous hashing over the live members picks for the work's key
// (cluster.Peer.Owner). A partition's refills and write-back go by
// partitionKey; a SKU's expiry, doubt resolution and healing by skuKey.
// Every step of that work is idempotent, so two owners for a moment of a
// membership change are harmless.
type owners struct {
	peer *cluster.Peer
	reg  *scheduler.Registry
}

// partitionKey names a partition's background work for ownership.
func partitionKey(sku string, pid int) string { return sku + "/" + strconv.Itoa(pid) }

// skuKey names a SKU's background work (expiry) for ownership.
func skuKey(sku string) string { return "sku:" + sku }

// partition tells whether this node owns partition pid of sku.
func (o owners) partition(sku string, pid int) bool { return o.peer.Owns(partitionKey(sku, pid)) }

// handle is partition for a partition's handle.
func (o owners) handle(p *shard.Partition) bool { return o.partition(p.SKU, p.ID) }

// sku tells whether this node owns the SKU's background work.
func (o owners) sku(name string) bool { return o.peer.Owns(skuKey(name)) }

// partitions are the registry's partitions this node owns.
func (o owners) partitions() []*shard.Partition {
	var owned []*shard.Partition
	for _, p := range o.reg.Handles() {
		if o.handle(p) {
			owned = append(owned, p)
		}
	}
	return owned
}

// skus are the registry's SKUs this node owns.
func (o owners) skus() []string {
	var owned []string
	for _, name := range o.reg.Names() {
		if o.sku(name) {
			owned = append(owned, name)
		}
	}
	return owned
}
