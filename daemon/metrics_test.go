package daemon

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/stockd/stockd/internal/stocktest"
)

// /metrics parses as Prometheus text and counts what the test did.
func TestMetrics(t *testing.T) {
	e := newEnv(t, 2)
	n := startNode(t, e.config())
	putSKU(t, n, "m1", 100, 2, 10, 2)
	b := stocktest.NewBuyer(32)
	o := stocktest.Crowd(t, b, n.hot, "m1", 150, "m-", func(int) int64 { return 1 })
	if o.OK != 100 || o.SoldOut != 50 {
		t.Fatalf("ok %d sold_out %d", o.OK, o.SoldOut)
	}
	for _, body := range []string{`{`, `{"sku":"m1","qty":0,"request_id":"z"}`} {
		b.Post(n.hot, "/v1/deduct", body)
	}
	waitSynced(t, n, "m1", 10*time.Second)

	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(scrape(t, n)))
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f, ok := fams[name]
		if !ok {
			t.Fatalf("metric %s missing", name)
		}
		var sum float64
	metrics:
		for _, m := range f.Metric {
			for _, lp := range m.Label {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metrics
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				sum += m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				sum += m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
		return sum
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"stockd_deductions_total", map[string]string{"outcome": "ok"}, 100},
		{"stockd_deductions_total", map[string]string{"outcome": "sold_out"}, 50},
		{"stockd_deductions_total", map[string]string{"outcome": "bad_request"}, 2},
		{"stockd_deduct_seconds", nil, 150},
		{"stockd_sync_details_applied_total", map[string]string{"result": "inserted"}, 100},
		{"stockd_cluster_members", nil, 1},
		{"stockd_sku_in_doubt_units", map[string]string{"sku": "m1"}, 0},
	}
	for _, c := range checks {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The first sold_out answer of a SKU comes from looking at the truth
	// after no partition held the unit (no verdict yet): a stock wait.
	if got := value("stockd_scheduler_stock_wait_seconds", nil); got < 1 {
		t.Errorf("stockd_scheduler_stock_wait_seconds observed %v waits, want at least the one that found the sell-out", got)
	}
	// Every take call carries at least one request.
	if calls, reqs := value("stockd_shard_take_calls_total", map[string]string{"shard": "s1"}), value("stockd_shard_take_requests_total", map[string]string{"shard": "s1"}); calls < 1 || reqs < calls {
		t.Errorf("take script calls %v, requests %v", calls, reqs)
	}
	for _, name := range []string{"stockd_partition_units", "stockd_preallocate_refills_total",
		"stockd_scheduler_redis_calls_total", "stockd_sync_batch_details", "stockd_sync_apply_lag_seconds",
		"stockd_sync_publish_total", "stockd_sync_stream_backlog_entries", "stockd_scheduler_subdomain_swaps_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
}
