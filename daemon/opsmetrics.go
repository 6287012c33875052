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

var (
	shardTakeCallsDesc = prometheus.NewDesc("stockd_shard_take_calls_total",
		"Take script calls this node sent to the shard (one per batch of requests on one partition).",
		[]string{"shard"}, nil)
	shardTakeRequestsDesc = prometheus.NewDesc("stockd_shard_take_requests_total",
		"Requests carried by this node's take script calls to the shard; divided by stockd_shard_take_calls_total, the batch size.",
		[]string{"shard"}, nil)
	shardFailoversDesc = prometheus.NewDesc("stockd_shard_failovers_total",
		"Master changes of a sentinel or cluster shard this node saw (Sentinel promoted a replica, a cluster master failed over).",
		[]string{"shard"}, nil)
)

func (c *shardCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- shardHealthyDesc
	ch <- shardTakeCallsDesc
	ch <- shardTakeRequestsDesc
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
		calls, reqs := sh.TakeBatches()
		ch <- prometheus.MustNewConstMetric(shardTakeCallsDesc, prometheus.CounterValue, float64(calls), id)
		ch <- prometheus.MustNewConstMetric(shardTakeRequestsDesc, prometheus.CounterValue, float64(reqs), id)
		ch <- prometheus.MustNewConstMetric(shardFailoversDesc, prometheus.CounterValue, float64(sh.Failovers()), id)
	}
}
