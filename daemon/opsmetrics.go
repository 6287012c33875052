package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stockd/stockd/shard"
)

// shardCollector exports each shard's health as this node sees it: what
// selection uses (an unhealthy shard's partitions are skipped, requests
// homed there answer 503 until a probe gets an answer).
type shardCollector struct{ shards *shard.Set }

var shardHealthyDesc = prometheus.NewDesc("stockd_shard_healthy",
	"1 while the Redis shard answers this node, 0 while it does not (its partitions then answer 503).",
	[]string{"shard"}, nil)

var shardFailoversDesc = prometheus.NewDesc("stockd_shard_failovers_total",
	"Master changes of a sentinel or cluster shard this node saw (Sentinel promoted a replica, a cluster master failed over).",
	[]string{"shard"}, nil)

func (c *shardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- shardHealthyDesc
	ch <- shardFailoversDesc
}

func (c *shardCollector) Collect(ch chan<- prometheus.Metric) {
	for _, id := range c.shards.IDs() {
		sh, err := c.shards.Get(id)
		if err != nil {
			continue // removed since IDs
		}
		v := 0.0
		if sh.Healthy() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(shardHealthyDesc, prometheus.GaugeValue, v, id)
		ch <- prometheus.MustNewConstMetric(shardFailoversDesc, prometheus.CounterValue, float64(sh.Failovers()), id)
	}
}
