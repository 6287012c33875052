package daemon

import (
	"encoding/json"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// statsView is GET /admin/stats, as far as the tests read it.
type statsView struct {
	Node struct {
		Minute           minuteView `json:"minute"`
		Deductions       []*float64 `json:"deductions_per_second"`
		WritebackBacklog []*float64 `json:"writeback_backlog"`
	} `json:"node"`
	SKUs map[string]struct {
		Minute minuteView `json:"minute"`
	} `json:"skus"`
}

type minuteView struct {
	Seconds     float64  `json:"seconds"`
	Deductions  *float64 `json:"deductions_per_second"`
	SoldOut     *float64 `json:"sold_out_per_second"`
	Shed        *float64 `json:"shed_per_second"`
	P99         *float64 `json:"p99_seconds"`
	Answers     uint64   `json:"answers"`
	Unavailable *float64 `json:"unavailable_per_second"`
}

func getStats(t *testing.T, n *node) statsView {
	t.Helper()
	var v statsView
	if code := adminDo(t, n, "GET", "/admin/stats", "", &v); code != 200 {
		t.Fatalf("GET /admin/stats: %d", code)
	}
	return v
}

// The status page under load, in headless Chromium signed in with the read
// token: a SKU whose last units were taken (and that nobody asked for
// since) shows SOLD OUT, and GET /admin/stats counted exactly its answers;
// while a sale runs, the node's and the SKUs' rates (deductions, 429s, and
// sold_out from a SKU that sells out meanwhile) and p99 are above zero and
// their sparklines have points, and the screenshot shows the sparklines
// and the sold-out badge.
func TestStatusPageRatesUnderLoad(t *testing.T) {
	browser := chromiumBinary(t)
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.ReadToken = testReadToken
	// A low in-flight limit, so that the sale's concurrent buyers also get
	// 429s for the page to show.
	cfg.Limits.SKUInflight = 2
	n := startNode(t, cfg)

	// Sold out by successful deductions only: one buyer at a time takes
	// every unit, and no request finds the SKU empty afterwards (so the
	// scheduler never reached a sold-out verdict).
	const gone = "ui-gone"
	total := int64(20)
	putSKU(t, n, gone, total, 2, 10, 2)
	b := stocktest.NewBuyer(4)
	for i := int64(0); i < total; i++ {
		id := "gone-" + strconv.FormatInt(i, 10)
		a, err := b.Deduct(n.hot, gone, 1, id)
		if err != nil || a.Code != 200 {
			t.Fatalf("deduct %s of %s: %d %+v %v", id, gone, a.Code, a, err)
		}
	}
	if v := getSKU(t, n, gone); !v.SoldOut {
		t.Fatalf("GET /admin/skus/%s after all %d units were taken: sold_out false (%+v)", gone, total, v)
	}
	// Its answers, counted by the sampler within a second or two.
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		st := getStats(t, n).SKUs[gone]
		return st.Minute.Answers == uint64(total), "answers of " + gone + " in /admin/stats: " + strconv.FormatUint(st.Minute.Answers, 10)
	})

	// A sale that runs through the rest of the test, and a small one that
	// sells out during it and then answers sold_out.
	const sale, late = "ui-sale", "ui-late"
	putSKU(t, n, sale, 1_000_000, 4, 500, 100)
	putSKU(t, n, late, 200, 2, 50, 10)
	var ok, shed, soldOut, other atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				sku := sale
				if w == 0 {
					sku = late
				}
				a, err := b.Deduct(n.hot, sku, 1, "sale-"+strconv.Itoa(w)+"-"+strconv.Itoa(i))
				switch {
				case err == nil && a.Code == 200:
					ok.Add(1)
				case err == nil && a.Code == 429:
					shed.Add(1)
				case err == nil && a.Code == 409 && a.Status == "sold_out":
					soldOut.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	stopSale := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopSale)
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		st := getStats(t, n)
		s := st.SKUs[sale].Minute
		l := st.SKUs[late].Minute
		return positive(st.Node.Minute.Deductions) && positive(st.Node.Minute.SoldOut) &&
				positive(s.Deductions) && positive(s.Shed) && positive(s.P99) && positive(l.SoldOut),
			"stats of the sale: " + mustJSON(s) + ", of " + late + ": " + mustJSON(l)
	})
	// Sparklines long enough to show in the screenshot: the sale's
	// deductions over at least five seconds.
	stocktest.Eventually(t, 30*time.Second, func() (bool, string) {
		st := getStats(t, n)
		points := 0
		for _, v := range st.Node.Deductions {
			if positive(v) {
				points++
			}
		}
		return points >= 5, "seconds with deductions in the node's series: " + strconv.Itoa(points)
	})

	dom := chromiumRun(t, browser, "--dump-dom", "--virtual-time-budget=5000",
		"http://"+n.admin+"/#token="+testReadToken)
	node := rateTiles(t, "node", section(dom, `id="node-rates"`, "</section>"))
	saleTiles := rateTiles(t, sale, section(dom, `data-sku="`+sale+`"`, "</article>"))
	goneCard := section(dom, `data-sku="`+gone+`"`, "</article>")
	goneTiles := rateTiles(t, gone, goneCard)
	lateCard := section(dom, `data-sku="`+late+`"`, "</article>")
	lateTiles := rateTiles(t, late, lateCard)
	for _, c := range []struct {
		what  string
		tiles map[string]tile
		keys  []string
	}{
		{"node", node, []string{"deductions", "sold_out", "shed", "p99"}},
		{sale, saleTiles, []string{"deductions", "shed", "p99"}},
		{late, lateTiles, []string{"sold_out"}},
	} {
		for _, k := range c.keys {
			tl, found := c.tiles[k]
			if !found || !(tl.value > 0) || tl.points < 2 || !(tl.max > 0) {
				t.Errorf("%s tile %q: %+v (found %v); want a value > 0 and a sparkline of >= 2 points, highest > 0", c.what, k, tl, found)
			}
		}
	}
	for _, k := range []string{"sold_out", "unavailable", "lag", "backlog"} {
		if _, found := node[k]; !found {
			t.Errorf("node tiles: no %q tile (have %v)", k, node)
		}
	}
	for _, k := range []string{"deductions", "sold_out", "unavailable", "shed", "p99"} {
		if _, found := goneTiles[k]; !found {
			t.Errorf("%s tiles: no %q tile (have %v)", gone, k, goneTiles)
		}
	}
	for _, c := range []struct{ sku, card string }{{gone, goneCard}, {late, lateCard}} {
		if !strings.Contains(c.card, `data-sold-out="true"`) || !strings.Contains(c.card, `<span class="badge b-soldout">sold out</span>`) {
			t.Errorf("card of %s, all units taken: not marked sold out:\n%s", c.sku, clip(c.card, 2000))
		}
	}
	if saleCard := section(dom, `data-sku="`+sale+`"`, "</article>"); !strings.Contains(saleCard, `<span class="badge b-onsale">on sale</span>`) {
		t.Errorf("card of %s: not on sale:\n%s", sale, clip(saleCard, 2000))
	}
	t.Logf("page under load: node %+v; %s %+v; %s %+v; %s %+v", node, sale, saleTiles, late, lateTiles, gone, goneTiles)

	// The screenshot under load: sparklines drawn and the sold-out badge.
	shot := filepath.Join(t.TempDir(), "status-load.png")
	chromiumRun(t, browser, "--screenshot="+shot, "--window-size=1280,800", "--hide-scrollbars",
		"--virtual-time-budget=5000", "http://"+n.admin+"/#token="+testReadToken)
	checkLoadScreenshot(t, shot)
	if keep := os.Getenv("STOCKD_TEST_UI_LOAD_SCREENSHOT"); keep != "" {
		if b, err := os.ReadFile(shot); err == nil {
			if err := os.WriteFile(keep, b, 0o644); err != nil {
				t.Errorf("keeping the screenshot: %v", err)
			}
		}
	}

	stopSale()
	if other.Load() > 0 {
		t.Errorf("sale: %d answers neither 200, 409 sold_out nor 429", other.Load())
	}
	t.Logf("sale: %d ok, %d shed (429), %d sold_out", ok.Load(), shed.Load(), soldOut.Load())
	// The sampler counts no answer the buyers did not get (the sale may
	// have lasted longer than the minute kept, so fewer is possible).
	bought := uint64(ok.Load() + shed.Load() + soldOut.Load())
	st := getStats(t, n)
	if got := st.SKUs[sale].Minute.Answers + st.SKUs[late].Minute.Answers; got == 0 || got > bought {
		t.Errorf("answers of %s in /admin/stats: %d; the buyers got %d", sale, got, bought)
	}
}

func positive(v *float64) bool { return v != nil && *v > 0 }

// tile is one rate tile of the page.
type tile struct {
	value, max float64
	points     int
}

var rateTile = regexp.MustCompile(`(?s)<div class="rate(?: [^"]*)?"([^>]*)>.*?<svg([^>]*)>`)

// rateTiles reads the rate tiles of a DOM fragment, by data-rate.
func rateTiles(t *testing.T, what, frag string) map[string]tile {
	t.Helper()
	out := map[string]tile{}
	for _, m := range rateTile.FindAllStringSubmatch(frag, -1) {
		div, svg := attrs(m[1]), attrs(m[2])
		var tl tile
		tl.value, _ = strconv.ParseFloat(div["data-value"], 64)
		tl.max, _ = strconv.ParseFloat(svg["data-max"], 64)
		tl.points, _ = strconv.Atoi(svg["data-points"])
		out[div["data-rate"]] = tl
	}
	if len(out) == 0 {
		t.Fatalf("%s: no rate tiles in:\n%s", what, clip(frag, 3000))
	}
	return out
}

func attrs(s string) map[string]string {
	out := map[string]string{}
	for _, a := range tagAttr.FindAllStringSubmatch(s, -1) {
		out[a[1]] = a[2]
	}
	return out
}

// section is dom from the first from to the next to after it ("" if none).
func section(dom, from, to string) string {
	i := strings.Index(dom, from)
	if i < 0 {
		return ""
	}
	j := strings.Index(dom[i:], to)
	if j < 0 {
		return dom[i:]
	}
	return dom[i : i+j]
}

// checkLoadScreenshot checks a 1280x800 screenshot for the sparklines
// (status.css --spark and --spark-area) and the sold-out badge
// (.b-soldout's background).
func checkLoadScreenshot(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: not a PNG: %v", path, err)
	}
	b := img.Bounds()
	if b.Dx() != 1280 || b.Dy() != 800 {
		t.Fatalf("screenshot is %dx%d, want 1280x800", b.Dx(), b.Dy())
	}
	spark := []color.RGBA{{0x7c, 0x3a, 0xed, 0xff}, {0xe9, 0xe0, 0xfc, 0xff}}
	soldOut := color.RGBA{0xfb, 0xda, 0xda, 0xff}
	sparkPx, badgePx := 0, 0
	colors := map[color.RGBA]bool{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
			colors[c] = true
			if near(c, spark[0]) || near(c, spark[1]) {
				sparkPx++
			}
			if near(c, soldOut) {
				badgePx++
			}
		}
	}
	if len(colors) < 64 {
		t.Errorf("screenshot has %d distinct colours; looks blank", len(colors))
	}
	// Sparklines with an area under them: the node's deductions and p99
	// and the sale's alone are hundreds of pixels each.
	if sparkPx < 1000 {
		t.Errorf("screenshot has %d pixels in the sparkline colours, want >= 1000 (sparklines not drawn?)", sparkPx)
	}
	// The badge is about 70x16 px.
	if badgePx < 300 {
		t.Errorf("screenshot has %d pixels in the sold-out badge colour, want >= 300 (no SOLD OUT badge?)", badgePx)
	}
	t.Logf("screenshot %s: %dx%d, %d colours, %d sparkline pixels, %d sold-out badge pixels", path, b.Dx(), b.Dy(), len(colors), sparkPx, badgePx)
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
