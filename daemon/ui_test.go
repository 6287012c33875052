package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stockd/stockd/admin"
	"github.com/stockd/stockd/internal/stocktest"
)

// The status page (GET / on the admin port) in a real headless Chromium:
// its partition rows carry the levels the admin API reports, both with a
// #token= fragment and with HTTP Basic credentials (the admin token or the
// read token), it shows no data with a wrong token, and it renders a
// non-blank 1280x800 page.
//
// Chromium is required: /usr/bin/chromium, or the binary CHROMIUM names.
// `make test` installs it first (scripts/chromium.sh). Set
// STOCKD_TEST_UI_SCREENSHOT=/some/file.png to keep the screenshot.
func TestStatusPage(t *testing.T) {
	browser := chromiumBinary(t)
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.ReadToken = testReadToken
	n := startNode(t, cfg)
	const sku = "ui-demo"
	putSKU(t, n, sku, 2000, 4, 50, 10)

	// Some deductions, fewer per partition than it takes to cross the
	// threshold, so that no refill follows and the levels stay put.
	b := stocktest.NewBuyer(16)
	o := stocktest.Crowd(t, b, n.hot, sku, 40, "ui-", func(i int) int64 { return int64(1 + i%3) })
	if len(o.Errs) > 0 || len(o.Other) > 0 || o.OK != 40 {
		t.Fatalf("deductions: ok %d, other %v, errors %v", o.OK, o.Other, o.Errs)
	}
	want := settledLevels(t, n, sku)

	checkServedUI(t, n, sku)

	// Token in the URL fragment: the page sends it as a Bearer token.
	dom := chromiumRun(t, browser, "--dump-dom", "--virtual-time-budget=5000",
		"http://"+n.admin+"/#token="+testToken)
	checkPartitionRows(t, "#token= page", dom, sku, want)
	for _, s := range []string{`data-member="test"`, `data-shard="s1"`, `data-shard="s2"`, `data-sku="` + sku + `"`} {
		if !strings.Contains(dom, s) {
			t.Errorf("#token= page: no %s in the DOM", s)
		}
	}
	if m := regexp.MustCompile(`<div id="error"[^>]*>`).FindString(dom); !strings.Contains(m, "hidden") {
		t.Errorf("#token= page: the error banner is visible: %s", m)
	}

	// HTTP Basic with the token as password, from the URL. The page has no
	// token, so it goes to /login; Chromium answers that 401 challenge with
	// the URL's credentials, comes back to the page and sends the same
	// credentials with the page's own fetches.
	dom = chromiumRun(t, browser, "--dump-dom", "--virtual-time-budget=5000",
		"http://anyone:"+testToken+"@"+n.admin+"/")
	checkPartitionRows(t, "Basic-auth page", dom, sku, want)

	// The read token signs in the same ways and shows the same page.
	dom = chromiumRun(t, browser, "--dump-dom", "--virtual-time-budget=5000",
		"http://anyone:"+testReadToken+"@"+n.admin+"/")
	checkPartitionRows(t, "Basic-auth page, read token", dom, sku, want)
	dom = chromiumRun(t, browser, "--dump-dom", "--virtual-time-budget=5000",
		"http://"+n.admin+"/#token="+testReadToken)
	checkPartitionRows(t, "#token= page, read token", dom, sku, want)

	// A wrong token: an error banner saying so, and no SKU data.
	dom = chromiumRun(t, browser, "--dump-dom", "--virtual-time-budget=3000", "http://"+n.admin+"/#token=wrong-token")
	if strings.Contains(dom, "data-pid=") || strings.Contains(dom, sku) {
		t.Error("page with a wrong token shows SKU data")
	}
	if m := regexp.MustCompile(`<div id="error"[^>]*>[^<]*`).FindString(dom); strings.Contains(m, "hidden") || !strings.Contains(m, "was refused") {
		t.Errorf("page with a wrong token: want a visible 'was refused' banner, got %q", m)
	}

	// A screenshot of a readable page: the right size, many colours, and
	// the level bars drawn.
	shot := filepath.Join(t.TempDir(), "status.png")
	chromiumRun(t, browser, "--screenshot="+shot, "--window-size=1280,800", "--hide-scrollbars",
		"--virtual-time-budget=5000", "http://"+n.admin+"/#token="+testToken)
	checkScreenshot(t, shot)
	if keep := os.Getenv("STOCKD_TEST_UI_SCREENSHOT"); keep != "" {
		if b, err := os.ReadFile(shot); err == nil {
			if err := os.WriteFile(keep, b, 0o644); err != nil {
				t.Errorf("keeping the screenshot: %v", err)
			}
		}
	}

	// The SKU stayed idle throughout: the levels compared are still true.
	if got := levelsOf(getSKU(t, n, sku)); got != want {
		t.Fatalf("levels moved during the check:\n before %s\n after  %s", want, got)
	}
}

// checkServedUI checks the routes and headers without a browser.
func checkServedUI(t *testing.T, n *node, sku string) {
	t.Helper()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string, auth func(*http.Request)) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+n.admin+path, nil)
		if auth != nil {
			auth(req)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	basic := func(pass string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth("anyone", pass) }
	}
	bearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) }

	if resp, _ := get("/", nil); resp.StatusCode == 404 {
		t.Fatal("GET / on the admin port: 404; the status page is not registered (admin.New must call RegisterUI)")
	}
	// The page: the same markup for everyone, and no data in it.
	for _, auth := range []func(*http.Request){nil, bearer} {
		resp, body := get("/", auth)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
			!strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") ||
			!strings.Contains(body, `src="/ui/status.js"`) {
			t.Errorf("GET /: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"))
		}
		if strings.Contains(body, sku) {
			t.Error("GET / has SKU data in its markup")
		}
	}
	// Sign-in: a Basic challenge until the token comes, then back to /.
	for _, pass := range []string{"", "wrong-token"} {
		auth := basic(pass)
		if pass == "" {
			auth = nil
		}
		resp, _ := get("/login", auth)
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("GET /login with password %q: %d, WWW-Authenticate %q; want 401 and a Basic challenge",
				pass, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	for _, tok := range []string{testToken, testReadToken} {
		if resp, _ := get("/login", basic(tok)); resp.StatusCode != 303 || resp.Header.Get("Location") != "/#signed-in" {
			t.Errorf("GET /login with %q: %d, Location %q; want 303 to /#signed-in", tok, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	// The JSON routes take Basic as well as Bearer.
	if resp, _ := get("/admin/skus", basic(testToken)); resp.StatusCode != 200 {
		t.Errorf("GET /admin/skus with Basic auth: %d", resp.StatusCode)
	}
	if resp, _ := get("/admin/skus", nil); resp.StatusCode != 401 {
		t.Errorf("GET /admin/skus without credentials: %d", resp.StatusCode)
	}
	for path, ctype := range map[string]string{"/ui/status.js": "text/javascript", "/ui/status.css": "text/css"} {
		if resp, _ := get(path, nil); resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %q, want 200 %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), ctype)
		}
	}
	for _, path := range []string{"/ui/", "/ui/index.html", "/ui/nope.js"} {
		if resp, _ := get(path, nil); resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
}

// levels is what a page must show of a SKU's partitions, comparable.
type levels string

func levelsOf(v admin.SKUView) levels {
	var sb strings.Builder
	for _, p := range v.Partitions {
		fmt.Fprintf(&sb, "[pid=%d shard=%s state=%s active=%s a=%d b=%d]", p.ID, p.Shard, p.State, p.Active, p.A, p.B)
	}
	return levels(sb.String())
}

// settledLevels waits until the SKU's levels read the same three times in
// a row, 200 ms apart (no refill or swap still under way).
func settledLevels(t *testing.T, n *node, sku string) levels {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	last, same := levels(""), 0
	for {
		v := getSKU(t, n, sku)
		if len(v.Partitions) != 4 {
			t.Fatalf("sku %s has %d partitions, want 4", sku, len(v.Partitions))
		}
		cur := levelsOf(v)
		if cur == last {
			same++
		} else {
			last, same = cur, 1
		}
		if same == 3 {
			return cur
		}
		if time.Now().After(deadline) {
			t.Fatalf("levels of %s still moving after 10s: %s", sku, cur)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var (
	trTag   = regexp.MustCompile(`<tr\b([^>]*)>`)
	tagAttr = regexp.MustCompile(`([a-zA-Z][\w-]*)="([^"]*)"`)
)

// checkPartitionRows finds the partition rows of sku in a dumped DOM and
// compares them with want.
func checkPartitionRows(t *testing.T, what, dom, sku string, want levels) {
	t.Helper()
	type row struct {
		pid               int
		shard, state, act string
		a, b              int64
	}
	var rows []row
	for _, m := range trTag.FindAllStringSubmatch(dom, -1) {
		attrs := map[string]string{}
		for _, a := range tagAttr.FindAllStringSubmatch(m[1], -1) {
			attrs[a[1]] = html.UnescapeString(a[2])
		}
		if attrs["data-sku"] != sku || attrs["data-pid"] == "" {
			continue
		}
		var r row
		var err1, err2, err3 error
		r.pid, err1 = strconv.Atoi(attrs["data-pid"])
		r.a, err2 = strconv.ParseInt(attrs["data-a"], 10, 64)
		r.b, err3 = strconv.ParseInt(attrs["data-b"], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatalf("%s: bad partition row %s: %v", what, m[0], err)
		}
		r.shard, r.state, r.act = attrs["data-shard"], attrs["data-state"], attrs["data-active"]
		rows = append(rows, r)
	}
	if len(rows) != 4 {
		t.Fatalf("%s: %d partition rows of %s in the DOM, want 4. DOM:\n%s", what, len(rows), sku, clip(dom, 4000))
	}
	var sb strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&sb, "[pid=%d shard=%s state=%s active=%s a=%d b=%d]", r.pid, r.shard, r.state, r.act, r.a, r.b)
	}
	if got := levels(sb.String()); got != want {
		t.Fatalf("%s: partition rows differ from GET /admin/skus/%s:\n page %s\n API  %s", what, sku, got, want)
	}
	t.Logf("%s: 4 partition rows match the API: %s", what, want)
}

// checkScreenshot decodes the PNG and checks that it is 1280x800, uses many
// colours, and shows the level bars (pixels in the bars' fill colours).
func checkScreenshot(t *testing.T, path string) {
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
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 800 {
		t.Fatalf("screenshot is %dx%d, want 1280x800", b.Dx(), b.Dy())
	}
	// status.css: --bar, --bar-active, --bar-low.
	fills := []color.RGBA{{0x9d, 0xb4, 0xd6, 0xff}, {0x25, 0x63, 0xeb, 0xff}, {0xe0, 0x75, 0x1a, 0xff}}
	colors := map[color.RGBA]bool{}
	barPixels := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
			colors[c] = true
			for _, f := range fills {
				if near(c, f) {
					barPixels++
					break
				}
			}
		}
	}
	// Text, tables, badges and bars give hundreds of colours; a blank or
	// error page gives a handful.
	if len(colors) < 64 {
		t.Errorf("screenshot has %d distinct colours; looks blank", len(colors))
	}
	// Eight bars of 10 px height and levels between 20 and 100 % of chunk.
	if barPixels < 2000 {
		t.Errorf("screenshot has %d pixels in the bar colours, want >= 2000 (bars not drawn?)", barPixels)
	}
	t.Logf("screenshot %s: %dx%d, %d colours, %d bar pixels", path, b.Dx(), b.Dy(), len(colors), barPixels)
}

func near(a, b color.RGBA) bool {
	d := func(x, y uint8) int {
		if x > y {
			return int(x - y)
		}
		return int(y - x)
	}
	return d(a.R, b.R) <= 3 && d(a.G, b.G) <= 3 && d(a.B, b.B) <= 3
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// chromiumBinary returns the browser to use, and fails the test (it never
// skips) if there is none.
func chromiumBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("CHROMIUM")
	if bin == "" {
		bin = "/usr/bin/chromium"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("the status-page test needs Chromium, and %s is not there (%v). "+
			"Run `bash scripts/chromium.sh` (make test does), or set CHROMIUM to a Chromium/Chrome binary.", bin, err)
	}
	return path
}

// chromiumRun runs headless Chromium with args after the flags that make
// it work here (no sandbox as root, no GPU, no network of its own, a fresh
// profile), in its own process group, and kills that group when it is done
// or after 20 s. It returns stdout and fails the test on errors.
func chromiumRun(t *testing.T, bin string, args ...string) string {
	t.Helper()
	profile, err := os.MkdirTemp("", "stockd-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(profile)
	flags := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + profile,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(flags, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	if cmd.Process != nil {
		// Helpers (zygote, utility and crash handler processes) it may
		// have left behind share its process group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		t.Fatalf("chromium %s: %v (after %s)\nstderr:\n%s", strings.Join(args, " "), err,
			time.Since(start).Round(time.Millisecond), clip(stderr.String(), 4000))
	}
	t.Logf("chromium %s: %s", args[0], time.Since(start).Round(time.Millisecond))
	return stdout.String()
}
