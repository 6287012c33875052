package admin

import (
	"embed"
	"io"
	"io/fs"
	"net/http"
	"strings"

	"github.com/stockd/stockd/internal/apierr"
)

// The status page: plain HTML, one script and one style sheet, embedded in
// the binary. It holds no data itself; its script reads the JSON routes
// (/admin/cluster, /admin/shards, /admin/skus, /admin/stats) once a second, with the same
// credentials as any other admin client.
//
//go:embed ui/*
var uiFiles embed.FS

// uiIndex is the page itself, read once.
var uiIndex = func() []byte {
	b, err := uiFiles.ReadFile("ui/index.html")
	if err != nil {
		panic("admin: status page missing from the binary: " + err.Error())
	}
	return b
}()

// uiCSP allows the page its own script, style sheet and same-origin
// fetches, and nothing else (no inline script, no framing, no forms).
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// RegisterUI adds the status page to the admin API:
//
//	GET /        the page (HTML)
//	GET /ui/...  its script and style sheet
//	GET /login   HTTP Basic sign-in for browsers, back to the page
//
// The data the page shows comes from the JSON routes, which need a token
// as always (Bearer, or HTTP Basic with the token as password): the admin
// token, or the read token, which shows the page but changes nothing. The
// page's markup and code are the same for everyone and hold no data, so
// they are served without credentials: a page opened as /#token=<token>
// must load before its script can send the token (the fragment never
// reaches the server or its logs), and a headless browser cannot show the
// body of a 401. Without a token, the page first goes to /login, which
// challenges: the browser answers with the credentials it holds for this
// origin, or given in the URL (http://user:token@host/), or asks its user.
// Once the password is the token, /login redirects back to the page, whose
// requests then carry the same credentials.
func RegisterUI(s *Server) {
	s.public("GET /{$}", s.ui)
	s.public("GET /login", s.uiLogin)
	assets, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err)
	}
	files := http.StripPrefix("/ui/", http.FileServer(http.FS(assets)))
	s.public("GET /ui/", func(w http.ResponseWriter, r *http.Request) {
		// Files only: no directory listing, and the page has its own route.
		name := strings.TrimPrefix(r.URL.Path, "/ui/")
		if fi, err := fs.Stat(assets, name); err != nil || fi.IsDir() || name == "index.html" {
			writeErr(w, apierr.Error{Message: "no such file", Code: apierr.NotFound})
			return
		}
		uiHeaders(w)
		files.ServeHTTP(w, r)
	})
}

// ui serves the page.
func (s *Server) ui(w http.ResponseWriter, r *http.Request) {
	uiHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(uiIndex)
	}
}

// uiLogin challenges until the browser sends valid credentials, then sends
// it back to the page. "#signed-in" tells the page not to come back here
// if its requests still fail (a browser that does not reuse the
// credentials), which would loop.
func (s *Server) uiLogin(w http.ResponseWriter, r *http.Request) {
	uiHeaders(w)
	if s.authorized(r) {
		http.Redirect(w, r, "/#signed-in", http.StatusSeeOther)
		return
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="stockd admin (password: the admin or read token)"`)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusUnauthorized)
	if r.Method != http.MethodHead {
		io.WriteString(w, uiLoginPage)
	}
}

// uiLoginPage is what a browser shows when its user cancels the sign-in
// prompt.
const uiLoginPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stockd: sign in</title>
<link rel="stylesheet" href="/ui/status.css"></head>
<body><header><h1>stockd</h1></header><main>
<p class="error">Not signed in. The status page needs the admin token or the read token: give it
as the password (any user name) when the browser asks, or open <code>/#token=&lt;token&gt;</code>.</p>
<p><a href="/login">Sign in again</a></p>
</main></body></html>
`

func uiHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	// The page and its code change with the binary: always revalidate.
	h.Set("Cache-Control", "no-cache")
}
