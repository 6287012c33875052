package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/stockd/stockd/internal/stocktest"
)

// stockdMetric is a stockd metric name inside a PromQL expression.
var stockdMetric = regexp.MustCompile(`stockd_[a-z_]+`)

// dashboardQueries returns every PromQL expression of the Grafana
// dashboard: panel targets and template variable queries.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../contrib/grafana/stockd.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("contrib/grafana/stockd.json: %v", err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return out
}

// alertQueries returns the expr of every rule of the alert rules file.
func alertQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../contrib/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("contrib/prometheus/alerts.yml: %v", err)
	}
	var out []string
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			out = append(out, r.Expr)
		}
	}
	return out
}

// scrape returns a node's /metrics (the one fetch the metric helpers share).
func scrape(t *testing.T, n *node) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+n.admin+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// scrapeNames returns the metric family names a node's /metrics serves.
func scrapeNames(t *testing.T, n *node) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, line := range strings.Split(scrape(t, n), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
		}
	}
	return names
}

// served tells whether name is a served family, or a histogram's
// _bucket/_sum/_count series of one.
func served(names map[string]bool, name string) bool {
	if names[name] {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && names[base] {
			return true
		}
	}
	return false
}

// Every stockd metric the dashboard and the alert rules query is one a
// node serves: a renamed or removed metric fails here instead of leaving
// an empty panel or an alert that can never fire. And every metric a node
// serves passes promtool's name lint.
func TestDashboardAndAlertsQueryServedMetrics(t *testing.T) {
	want := map[string][]string{} // metric -> where
	for _, q := range dashboardQueries(t) {
		for _, m := range stockdMetric.FindAllString(q, -1) {
			want[m] = append(want[m], "contrib/grafana/stockd.json")
		}
	}
	for _, q := range alertQueries(t) {
		for _, m := range stockdMetric.FindAllString(q, -1) {
			want[m] = append(want[m], "contrib/prometheus/alerts.yml")
		}
	}
	if len(want) < 10 {
		t.Fatalf("only %d stockd metrics found in the dashboard and alerts; the parsing is broken", len(want))
	}

	e := newEnv(t, 2)
	n := startNode(t, e.config())
	// Labelled series appear once used: a SKU (per-SKU gauges, refills),
	// deductions and their write-back (publish and apply counters).
	putSKU(t, n, "c1", 50, 2, 10, 2)
	b := stocktest.NewBuyer(8)
	stocktest.Crowd(t, b, n.hot, "c1", 20, "c-", func(int) int64 { return 1 })
	waitSynced(t, n, "c1", 30*time.Second)

	var missing []string
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		names := scrapeNames(t, n)
		missing = missing[:0]
		for m, where := range want {
			if !served(names, m) {
				missing = append(missing, m+" (in "+strings.Join(where, ", ")+")")
			}
		}
		sort.Strings(missing)
		return len(missing) == 0, fmt.Sprintf("queried but not served by a node:\n  %s", strings.Join(missing, "\n  "))
	})
	t.Logf("%d stockd metrics queried, all served", len(want))

	// The names follow Prometheus's naming guide as far as its linter
	// checks (counters end in _total, base units, no unit in a label):
	// promtool check metrics, over everything a node serves.
	out, err := promtoolCmd(t, "check", "metrics").CombinedOutputWithInput(scrape(t, n))
	if err != nil || len(strings.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics on a node's /metrics: %v\n%s", err, out)
	}
}

// promtool is Debian's; `make test` installs it (scripts/promtool.sh).
type promtoolRun struct {
	bin  string
	args []string
}

func promtoolCmd(t *testing.T, args ...string) promtoolRun {
	t.Helper()
	bin := os.Getenv("PROMTOOL")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("promtool"); err != nil {
			t.Fatal("promtool not found: run scripts/promtool.sh (make test does; it installs Debian's prometheus package), or set PROMTOOL")
		}
	}
	return promtoolRun{bin, args}
}

// CombinedOutputWithInput runs promtool with stdin.
func (p promtoolRun) CombinedOutputWithInput(stdin string) (string, error) {
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The alert rules are valid Prometheus rules and pass their unit tests.
// promtool comes from Debian's prometheus package; `make test` installs it
// (scripts/promtool.sh).
func TestAlertRulesPassPromtool(t *testing.T) {
	bin := promtoolCmd(t).bin
	for _, args := range [][]string{
		{"check", "rules", "../contrib/prometheus/alerts.yml"},
		// Each alert fires on the series it is meant for, quiet otherwise.
		{"test", "rules", "../contrib/prometheus/alerts_test.yml"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s: %s", strings.Join(args, " "), out)
	}
}
