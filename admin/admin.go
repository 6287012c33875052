// Package admin is the operators' HTTP API: SKUs (create, restock, show,
// verify, rebalance, in-doubt), shards (add, fail over, drain, remove), the
// cluster view, metrics, profiles and the status page. Every route but
// /healthz and the page's own static files needs a token, as
// "Authorization: Bearer <token>" or as the password of HTTP Basic: the
// admin token for everything, or the read token (optional) for GET and HEAD
// only; a change with the read token is refused (403 forbidden). A
// browser attaches Basic credentials to any request to the admin origin,
// so a change (any method but GET and HEAD) signed in with Basic must also
// come from the admin's own origin with a JSON content type (crossSite).
// Request bodies are read strictly: exact keys, no duplicates (decode). It
// holds no state; it calls the catalog the daemon wires in.
package admin

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/stockd/stockd"
	"github.com/stockd/stockd/api"
	"github.com/stockd/stockd/internal/apierr"
	"github.com/stockd/stockd/internal/ident"
	"github.com/stockd/stockd/internal/strictjson"
)

var (
	// ErrNotFound is what a catalog returns for an unknown SKU.
	ErrNotFound = errors.New("not found")
	// ErrConflict is what a catalog returns for a change the SKU's state
	// does not allow.
	ErrConflict = errors.New("conflict")
	// ErrInvalid is what a catalog returns for parameters that do not fit
	// together (or with the SKU's current ones).
	ErrInvalid = errors.New("invalid")
)

// maxBody bounds an admin request's body. (The limits on SKU parameters
// are the domain's: stockd.MaxTotal, stockd.MaxChunk, stockd.MaxPartitions.)
const maxBody = 64 << 10

// Spec is what a PUT asks for; a zero Partitions, Chunk or Threshold was
// left out.
type Spec struct {
	Total      int64
	Partitions int
	Chunk      int64
	Threshold  int64
	// Sale rules (issue 15): nil was left out (keeps the current value);
	// a zero time clears a bound (JSON null or ""), a limit of 0 removes
	// the limit.
	PerUserLimit      *int64
	OpensAt, ClosesAt *time.Time
}

// SKUView is what GET /admin/skus/{sku} shows.
type SKUView struct {
	SKU        string          `json:"sku"`
	Total      int64           `json:"total"`
	Pool       int64           `json:"pool"`
	Reserved   int64           `json:"reserved"`
	Confirmed  int64           `json:"confirmed"`
	Released   int64           `json:"released"`
	InDoubt    int64           `json:"in_doubt"`
	Doubled    int64           `json:"doubled"`
	Available  int64           `json:"available"`
	SoldOut    bool            `json:"sold_out"`
	Chunk      int64           `json:"chunk"`
	Threshold  int64           `json:"threshold"`
	Version    int64           `json:"version"`
	Partitions []PartitionView `json:"partitions"`
	Sync       SyncView        `json:"sync"`
	// Unconfirmed, on the answer of a change (PUT), names the live
	// members that did not confirm within cluster.apply_timeout that they
	// applied it; absent when every one did.
	Unconfirmed []string `json:"unconfirmed,omitempty"`

	// TargetPartitions is the open partition count kept by replacing
	// fenced partitions (PUT partitions, rebalance partitions set it).
	TargetPartitions int `json:"target_partitions"`

	// Archived is set for an archived SKU (DELETE /admin/skus/{sku}):
	// the counters are its final ledger, its partitions are closed and
	// hold nothing in Redis.
	Archived   bool       `json:"archived,omitempty"`
	ArchivedAt *time.Time `json:"archived_at,omitempty"`

	// Cached is set in a listing (GET /admin/skus): levels and seq are
	// the node's last known ones (no Redis read), backlog is not known
	// (0); GET /admin/skus/{sku} reads them from Redis.
	Cached bool `json:"cached,omitempty"`

	// Sale rules (issue 15): the per-user limit (0: none) and the sale's
	// bounds (null: unbounded).
	PerUserLimit int64      `json:"per_user_limit"`
	OpensAt      *time.Time `json:"opens_at"`
	ClosesAt     *time.Time `json:"closes_at"`
}

// PartitionView is one partition's live state.
type PartitionView struct {
	ID     int    `json:"id"`
	Shard  string `json:"shard"`
	A      int64  `json:"a"`
	B      int64  `json:"b"`
	Active string `json:"active"`
	State  string `json:"state"`
	Seq    int64  `json:"seq"`
	// Backlog is the stream entries (one per take call, up to 64
	// details each) not yet confirmed by the broker.
	Backlog int64 `json:"backlog"`
	// Error is set when the partition's shard did not answer.
	Error string `json:"error,omitempty"`
}

// SyncView is the write-back lag of a SKU.
type SyncView struct {
	// Backlog is the stream entries still in Redis (see PartitionView).
	Backlog int64 `json:"backlog"`
}

// Catalog is what the admin API manages.
type Catalog interface {
	PutSKU(ctx context.Context, name string, spec Spec) (SKUView, bool, error)
	GetSKU(ctx context.Context, name string) (SKUView, error)
	// ListSKUs lists up to limit SKUs whose names sort after cursor ("":
	// from the first), from what the node holds (the registry's last
	// known levels) and one read of MySQL's rows: no Redis call. next is
	// the cursor of the following page, "" after the last.
	ListSKUs(ctx context.Context, cursor string, limit int) (views []SKUView, next string, err error)
	// Verify returns the SKU's conservation report (any JSON value with an
	// "ok" field).
	Verify(ctx context.Context, name string) (any, error)
	// Shards lists the Redis shards.
	Shards(ctx context.Context) ([]ShardView, error)
	// AddShard connects a new Redis instance and records it.
	AddShard(ctx context.Context, id, addr string) (ShardView, error)
	// MoveShard points a shard at another address (a failover to its
	// replica); every node reconnects.
	MoveShard(ctx context.Context, id, addr string) (ShardView, error)
	// DrainShard moves every partition off a shard while selling goes on.
	DrainShard(ctx context.Context, id string) (any, error)
	// RemoveShard forgets a drained shard; it returns the members that
	// did not confirm the change in time.
	RemoveShard(ctx context.Context, id string) ([]string, error)
	// Rebalance changes a live SKU's partitions.
	Rebalance(ctx context.Context, sku string, r RebalanceSpec) (any, error)
	// InDoubt lists the SKU's fenced partitions and their doubt; with
	// resolve, it first returns every open doubt to the pool at once.
	InDoubt(ctx context.Context, sku string, resolve bool) (any, error)
	// ArchiveSKU archives a settled SKU (DELETE /admin/skus/{sku}): its
	// partitions' stock goes back to the pool, its Redis keys, registry
	// entries and metric series go on every node, its MySQL rows stay.
	// ErrConflict, with the reason, while anything is in flight.
	ArchiveSKU(ctx context.Context, sku string) (any, error)
}

// RebalanceSpec is POST /admin/skus/{sku}/rebalance: exactly one of
// Partitions (the new count of open partitions), Move (one partition to a
// shard) or Pin (keep the SKU on these shards only).
type RebalanceSpec struct {
	Partitions *int      `json:"partitions"`
	Move       *MoveSpec `json:"move"`
	Pin        []string  `json:"pin"`
}

// MoveSpec moves one partition.
type MoveSpec struct {
	Partition *int   `json:"partition"`
	Shard     string `json:"shard"`
}

// ShardView is one Redis shard as GET /admin/shards shows it.
type ShardView struct {
	ID         string `json:"id"`
	Addr       string `json:"addr"`
	State      string `json:"state"` // active, draining, removed
	Reachable  bool   `json:"reachable"`
	Healthy    bool   `json:"healthy"`    // selection uses it
	Durability string `json:"durability"` // none, aof, replica
	Partitions int    `json:"partitions"` // open partitions on it
	Keys       int64  `json:"keys"`
	MemoryUsed int64  `json:"memory_bytes"`
	Error      string `json:"error,omitempty"`
	// Kind is addr, sentinel or cluster; Master the current master
	// (sentinel) or masters (cluster, Masters), Replicas the up replicas
	// Sentinel reports; Failovers and LastFailover the master changes this
	// node saw.
	Kind     string   `json:"kind,omitempty"`
	Master   string   `json:"master,omitempty"`
	Replicas []string `json:"replicas,omitempty"`
	Masters  []string `json:"masters,omitempty"`
	// PartitionsByMaster: for a cluster shard, the open partitions
	// ("sku/pid") each master holds.
	PartitionsByMaster map[string][]string `json:"partitions_by_master,omitempty"`
	Failovers          int64               `json:"failovers"`
	LastFailover       *time.Time          `json:"last_failover,omitempty"`
	// Unconfirmed: as in SKUView (the answer of an add or a move).
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

// Server is the admin HTTP handler.
type Server struct {
	token     []byte
	readToken []byte // empty: no read-only role
	catalog   Catalog
	logger    *slog.Logger
	mux       *http.ServeMux
	routes    []string // every pattern registered, in order (Routes)
}

// Options configure the admin API.
type Options struct {
	// Token is the admin token: every route but /healthz, changes
	// included.
	Token string
	// ReadToken, when set, is the read-only token: GET and HEAD routes
	// (the status page's data and /metrics included); a change with it
	// answers 403.
	ReadToken string
	Catalog   Catalog
	// Cluster returns the cluster view for GET /admin/cluster.
	Cluster func() any
	// Metrics serves GET /metrics (Prometheus text); nil leaves it out.
	Metrics http.Handler
	// Stats returns the last minute of this node's rates, latency and
	// write-back for GET /admin/stats (the status page); nil leaves it
	// out.
	Stats  func() any
	Logger *slog.Logger
}

// New returns the admin API.
func New(o Options) *Server {
	s := &Server{
		token:     []byte(o.Token),
		readToken: []byte(o.ReadToken),
		catalog:   o.Catalog,
		logger:    o.Logger.With("component", "admin"),
		mux:       http.NewServeMux(),
	}
	s.public("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	// The API's description is no secret (it is in the repository), and
	// tools fetch it before they hold a token.
	s.public("GET /openapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Header().Set("Content-Length", strconv.Itoa(len(api.OpenAPI)))
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			w.Write(api.OpenAPI)
		}
	})
	s.handle("GET /admin/skus", s.listSKUs)
	s.handle("GET /admin/shards", func(w http.ResponseWriter, r *http.Request) {
		views, err := s.catalog.Shards(r.Context())
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, views)
	})
	s.handle("POST /admin/shards", s.addShard)
	s.handle("PUT /admin/shards/{id}", s.moveShard)
	s.handle("POST /admin/shards/{id}/drain", func(w http.ResponseWriter, r *http.Request) {
		out, err := s.catalog.DrainShard(r.Context(), r.PathValue("id"))
		if err != nil {
			s.fail(w, err)
			return
		}
		s.logger.Info("shard drained", "shard", r.PathValue("id"))
		writeJSON(w, http.StatusOK, out)
	})
	s.handle("DELETE /admin/shards/{id}", func(w http.ResponseWriter, r *http.Request) {
		unconfirmed, err := s.catalog.RemoveShard(r.Context(), r.PathValue("id"))
		if err != nil {
			s.fail(w, err)
			return
		}
		s.logger.Info("shard removed", "shard", r.PathValue("id"))
		writeJSON(w, http.StatusOK, removed{Status: "removed", Unconfirmed: unconfirmed})
	})
	s.handle("POST /admin/skus/{sku}/rebalance", s.rebalance)
	s.handle("GET /admin/skus/{sku}/in-doubt", s.inDoubt(false))
	s.handle("POST /admin/skus/{sku}/in-doubt/resolve", s.inDoubt(true))
	s.handle("PUT /admin/skus/{sku}", s.putSKU)
	s.handle("GET /admin/skus/{sku}", s.getSKU)
	s.handle("DELETE /admin/skus/{sku}", s.archiveSKU)
	s.handle("GET /admin/skus/{sku}/verify", s.verify)
	if o.Cluster != nil {
		s.handle("GET /admin/cluster", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, o.Cluster())
		})
	}
	if o.Metrics != nil {
		s.handle("GET /metrics", o.Metrics.ServeHTTP)
	}
	if o.Stats != nil {
		s.handle("GET /admin/stats", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, o.Stats())
		})
	}
	RegisterUI(s)
	// Profiles, for the hot path under load (behind the token like the rest).
	s.handle("GET /debug/pprof/", pprof.Index)
	s.handle("GET /debug/pprof/profile", pprof.Profile)
	s.handle("GET /debug/pprof/trace", pprof.Trace)
	s.handle("GET /debug/pprof/symbol", pprof.Symbol)
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(r.TransferEncoding) > 0 {
		// The daemon's framing check (httpframe.Listener) follows a
		// connection's requests by Content-Length and stops checking after
		// a chunked one: end the connection with it.
		w.Header().Set("Connection", "close")
	}
	h, pattern := s.mux.Handler(r)
	if pattern == "" {
		// No route: the mux answers 404, or 405 with Allow, in plain
		// text (or redirects to a cleaned path). Keep its status and
		// Allow, answer in JSON like every other error.
		var c capture
		h.ServeHTTP(&c, r)
		switch c.status {
		case http.StatusNotFound:
			writeErr(w, apierr.Error{Message: "no such route", Code: apierr.NotFound})
			return
		case http.StatusMethodNotAllowed:
			w.Header().Set("Allow", c.header.Get("Allow"))
			writeErr(w, apierr.Error{Message: "method not allowed", Code: apierr.MethodNotAllowed})
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// Routes returns every pattern the API registered ("GET /admin/skus"),
// for the test that keeps api/openapi.yaml in step.
func (s *Server) Routes() []string { return append([]string(nil), s.routes...) }

// capture records the status and headers of the mux's own answers.
type capture struct {
	header http.Header
	status int
}

func (c *capture) Header() http.Header {
	if c.header == nil {
		c.header = http.Header{}
	}
	return c.header
}

func (c *capture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return len(b), nil
}

func (c *capture) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
}

// public registers a route that needs no token.
func (s *Server) public(pattern string, h http.HandlerFunc) {
	s.routes = append(s.routes, pattern)
	s.mux.HandleFunc(pattern, h)
}

// handle registers an authenticated route. Authentication comes before
// routing details, so a caller without a token learns nothing (not even
// whether a SKU exists). The read token may only read: a change with it
// is refused before anything else is looked at. A request that changes
// state with credentials a browser attaches by itself (HTTP Basic) must
// also show it was not sent by another site (crossSite).
func (s *Server) handle(pattern string, h http.HandlerFunc) {
	s.routes = append(s.routes, pattern)
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		how, role := s.authenticate(r)
		if role == roleNone {
			w.Header().Set("WWW-Authenticate", `Basic realm="stockd admin (password: the admin or read token)"`)
			w.Header().Add("WWW-Authenticate", `Bearer realm="stockd"`)
			writeErr(w, apierr.Error{Message: "unauthorized", Code: apierr.Unauthorized})
			return
		}
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			h(w, r)
			return
		}
		if role != roleAdmin {
			writeErr(w, apierr.Error{Message: "the read token cannot change anything: use the admin token", Code: apierr.Forbidden})
			return
		}
		if how == authBasic {
			if code, msg := crossSite(r); code != "" {
				writeErr(w, apierr.Error{Message: msg, Code: code})
				return
			}
		}
		h(w, r)
	})
}

type auth int

const (
	authNone auth = iota
	// authBearer: "Authorization: Bearer" is never attached by a browser
	// on its own, and a page of another origin cannot set it without a
	// CORS preflight, which this API never grants.
	authBearer
	// authBasic: once a browser signed in (the status page), it attaches
	// these credentials to every request to the admin origin, whichever
	// site made it send the request.
	authBasic
)

// role is what a request's token allows.
type role int

const (
	roleNone  role = iota
	roleRead       // the read token: GET and HEAD
	roleAdmin      // the admin token: everything
)

// authenticate accepts "Bearer <token>", and HTTP Basic with the token as
// the password (any user name) so that a browser can open the status page
// and the page's own requests carry the credentials.
func (s *Server) authenticate(r *http.Request) (auth, role) {
	if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if ro := s.roleOf(got); ro != roleNone {
			return authBearer, ro
		}
		return authNone, roleNone
	}
	if _, pass, ok := r.BasicAuth(); ok {
		if ro := s.roleOf(pass); ro != roleNone {
			return authBasic, ro
		}
	}
	return authNone, roleNone
}

// roleOf compares got with both tokens in constant time, always both, so
// that the answer's timing tells nothing about either. An empty token
// (the read token when not configured) matches nothing.
func (s *Server) roleOf(got string) role {
	g := []byte(got)
	admin := subtle.ConstantTimeCompare(g, s.token) & nonEmpty(s.token)
	read := subtle.ConstantTimeCompare(g, s.readToken) & nonEmpty(s.readToken)
	switch {
	case admin == 1:
		return roleAdmin
	case read == 1:
		return roleRead
	}
	return roleNone
}

func nonEmpty(b []byte) int {
	if len(b) > 0 {
		return 1
	}
	return 0
}

func (s *Server) authorized(r *http.Request) bool {
	_, ro := s.authenticate(r)
	return ro != roleNone
}

// crossSite refuses a state-changing request a browser could have been
// made to send by another site: 403 when the browser says so (an Origin
// other than the admin's own, a Sec-Fetch-Site other than same-origin or
// none), 415 when the content type is one a plain cross-site form or fetch
// can send without a CORS preflight. Only application/json passes, even on
// routes without a body: a page of another origin cannot send it without a
// preflight, which this API never grants. An empty code passes.
func crossSite(r *http.Request) (apierr.Code, string) {
	if origin := r.Header.Get("Origin"); origin != "" {
		scheme := "http://"
		if r.TLS != nil {
			scheme = "https://"
		}
		if !strings.EqualFold(origin, scheme+r.Host) {
			return apierr.Forbidden, "cross-origin request refused: origin " + strconv.Quote(origin) + " is not this admin API's"
		}
	}
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "", "same-origin", "none":
	default:
		return apierr.Forbidden, "cross-origin request refused: Sec-Fetch-Site " + strconv.Quote(site)
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return apierr.UnsupportedMediaType, "content type: want application/json for a change signed in with HTTP Basic (or use Authorization: Bearer)"
	}
	return "", ""
}

type putBody struct {
	Total        *int64          `json:"total"`
	Partitions   *int            `json:"partitions"`
	Chunk        *int64          `json:"chunk"`
	Threshold    *int64          `json:"threshold"`
	PerUserLimit *int64          `json:"per_user_limit"`
	OpensAt      json.RawMessage `json:"opens_at"`
	ClosesAt     json.RawMessage `json:"closes_at"`
}

// MaxPerUserLimit bounds per_user_limit (as total is bounded).
const MaxPerUserLimit = stockd.MaxTotal

// saleRules checks the sale-rule fields of a PUT into sp; the error names
// the field (400).
func saleRules(b putBody, sp *Spec) error {
	if b.PerUserLimit != nil {
		if n := *b.PerUserLimit; n < 0 || n > MaxPerUserLimit {
			return &badBody{field: "per_user_limit", msg: fmt.Sprintf("per_user_limit: must be between 0 (no limit) and %d", int64(MaxPerUserLimit))}
		}
		sp.PerUserLimit = b.PerUserLimit
	}
	var err error
	if sp.OpensAt, err = saleTime("opens_at", b.OpensAt); err != nil {
		return err
	}
	if sp.ClosesAt, err = saleTime("closes_at", b.ClosesAt); err != nil {
		return err
	}
	if sp.OpensAt != nil && sp.ClosesAt != nil && !sp.OpensAt.IsZero() && !sp.ClosesAt.IsZero() && !sp.ClosesAt.After(*sp.OpensAt) {
		return &badBody{field: "closes_at", msg: "closes_at: must be after opens_at"}
	}
	return nil
}

// saleTime reads an RFC 3339 time; null or "" clears it (a zero time),
// absent keeps it (nil).
func saleTime(field string, raw json.RawMessage) (*time.Time, error) {
	if raw == nil {
		return nil, nil
	}
	var t time.Time
	if string(raw) == "null" {
		return &t, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, &badBody{field: field, msg: field + `: must be an RFC 3339 time string like "2026-11-11T00:00:00Z", or null`}
	}
	if s == "" {
		return &t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.Year() < 2000 || t.Year() > 9999 {
		return nil, &badBody{field: field, msg: field + `: must be an RFC 3339 time like "2026-11-11T00:00:00Z" (years 2000 to 9999)`}
	}
	t = t.UTC()
	return &t, nil
}

func (s *Server) putSKU(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("sku")
	if err := ident.ValidSKU(name); err != nil {
		writeErr(w, apierr.Invalid("sku: "+err.Error()))
		return
	}
	var b putBody
	if err := decode(r, &b, putKeys); err != nil {
		writeBadBody(w, err)
		return
	}
	spec, err := s.spec(b)
	if err == nil {
		err = saleRules(b, &spec)
	}
	var bb *badBody
	if errors.As(err, &bb) {
		writeBadBody(w, err)
		return
	}
	if err != nil {
		writeErr(w, apierr.Invalid(err.Error()))
		return
	}
	view, created, err := s.catalog.PutSKU(r.Context(), name, spec)
	if err != nil {
		s.fail(w, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	s.logger.Info("sku put", "sku", name, "total", spec.Total, "created", created)
	writeJSON(w, status, view)
}

// spec checks the fields a PUT gave; those it left out stay 0, meaning
// "the SKU's current value" on a restock and "the default" on creation.
func (s *Server) spec(b putBody) (Spec, error) {
	var sp Spec
	if b.Total == nil {
		return sp, errors.New("total: required")
	}
	sp.Total = *b.Total
	if sp.Total < 0 || sp.Total > stockd.MaxTotal {
		return sp, fmt.Errorf("total: must be between 0 and %d", int64(stockd.MaxTotal))
	}
	if b.Partitions != nil {
		if sp.Partitions = *b.Partitions; sp.Partitions < 1 || sp.Partitions > stockd.MaxPartitions {
			return sp, fmt.Errorf("partitions: must be between 1 and %d", stockd.MaxPartitions)
		}
	}
	if b.Chunk != nil {
		if sp.Chunk = *b.Chunk; sp.Chunk < 1 || sp.Chunk > stockd.MaxChunk {
			return sp, fmt.Errorf("chunk: must be between 1 and %d", int64(stockd.MaxChunk))
		}
	}
	if b.Threshold != nil {
		if sp.Threshold = *b.Threshold; sp.Threshold < 1 || (sp.Chunk > 0 && sp.Threshold > sp.Chunk) {
			return sp, errors.New("threshold: must be between 1 and chunk")
		}
	}
	return sp, nil
}

// Listing limits: a page holds at most MaxPage SKUs, and that many when
// the request names no limit (the status page asks without one).
const MaxPage = 1000

// listSKUs is GET /admin/skus?limit=&cursor=: a JSON array of SKUs in name
// order, levels as this node last saw them ("cached": true; per-partition
// backlog is not known there, see GET /admin/skus/{sku}). When more SKUs
// follow, the answer names the next page in the X-Next-Cursor header (and
// a Link rel="next"); the body stays an array.
func (s *Server) listSKUs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := MaxPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPage {
			writeErr(w, apierr.Invalid(fmt.Sprintf("limit: must be between 1 and %d", MaxPage)))
			return
		}
		limit = n
	}
	cursor := q.Get("cursor")
	if cursor != "" {
		if err := ident.ValidSKU(cursor); err != nil {
			writeErr(w, apierr.Invalid("cursor: "+err.Error()))
			return
		}
	}
	views, next, err := s.catalog.ListSKUs(r.Context(), cursor, limit)
	if err != nil {
		s.fail(w, err)
		return
	}
	if next != "" {
		w.Header().Set("X-Next-Cursor", next)
		w.Header().Set("Link", fmt.Sprintf(`</admin/skus?limit=%d&cursor=%s>; rel="next"`, limit, url.QueryEscape(next)))
	}
	// Not indented: at a thousand SKUs indenting cost three times the
	// rest of the answer (CPU profile of TestListingCostAt1000SKUs).
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	json.NewEncoder(w).Encode(views)
}

func (s *Server) getSKU(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("sku")
	if err := ident.ValidSKU(name); err != nil {
		writeErr(w, apierr.Invalid("sku: "+err.Error()))
		return
	}
	view, err := s.catalog.GetSKU(r.Context(), name)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view)
}

// archiveSKU is DELETE /admin/skus/{sku}: 200 with what the archive did,
// 409 with the reason while the SKU is not settled, 404 unknown.
func (s *Server) archiveSKU(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("sku")
	if err := ident.ValidSKU(name); err != nil {
		writeErr(w, apierr.Invalid("sku: "+err.Error()))
		return
	}
	out, err := s.catalog.ArchiveSKU(r.Context(), name)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger.Info("sku archived", "sku", name)
	writeJSON(w, http.StatusOK, out)
}

// removed is the answer of DELETE /admin/shards/{id}.
type removed struct {
	Status      string   `json:"status"`
	Unconfirmed []string `json:"unconfirmed,omitempty"`
}

type addShardBody struct {
	ID   *string `json:"id"`
	Addr *string `json:"addr"`
	// Sentinel or Cluster instead of Addr: a shard of kind sentinel or
	// cluster (its credentials and TLS are the node's shard_defaults).
	Sentinel *addShardSentinel `json:"sentinel"`
	Cluster  *addShardCluster  `json:"cluster"`
}

type addShardSentinel struct {
	MasterSet string   `json:"master_set"`
	Addrs     []string `json:"addrs"`
}

type addShardCluster struct {
	Addrs []string `json:"addrs"`
}

// location is the shard's location string (shard.Config.Location): the
// address, sentinel://SET@addrs or cluster://addrs; the message names the
// field that is wrong.
func (b addShardBody) location() (string, string) {
	kinds := 0
	for _, set := range []bool{b.Addr != nil && *b.Addr != "", b.Sentinel != nil, b.Cluster != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return "", "addr, sentinel, cluster: exactly one is required"
	}
	hostPorts := func(field string, addrs []string) string {
		if len(addrs) == 0 {
			return field + ": at least one host:port"
		}
		for i, a := range addrs {
			if _, _, err := net.SplitHostPort(a); err != nil || strings.ContainsAny(a, ",@") {
				return fmt.Sprintf("%s[%d]: want host:port", field, i)
			}
		}
		return ""
	}
	switch {
	case b.Sentinel != nil:
		if b.Sentinel.MasterSet == "" || strings.ContainsAny(b.Sentinel.MasterSet, "@, ") {
			return "", "sentinel.master_set: required, without spaces, commas or @"
		}
		if msg := hostPorts("sentinel.addrs", b.Sentinel.Addrs); msg != "" {
			return "", msg
		}
		return "sentinel://" + b.Sentinel.MasterSet + "@" + strings.Join(b.Sentinel.Addrs, ","), ""
	case b.Cluster != nil:
		if msg := hostPorts("cluster.addrs", b.Cluster.Addrs); msg != "" {
			return "", msg
		}
		return "cluster://" + strings.Join(b.Cluster.Addrs, ","), ""
	}
	if _, _, err := net.SplitHostPort(*b.Addr); err != nil {
		return "", "addr: want host:port"
	}
	return *b.Addr, ""
}

func (s *Server) addShard(w http.ResponseWriter, r *http.Request) {
	var b addShardBody
	if err := decode(r, &b, addShardKeys); err != nil {
		writeBadBody(w, err)
		return
	}
	switch {
	case b.ID == nil || *b.ID == "":
		writeErr(w, apierr.Invalid("id: required"))
		return
	case strings.ContainsAny(*b.ID, " ,={}:") || len(*b.ID) > 64:
		writeErr(w, apierr.Invalid("id: at most 64 characters, none of space , = { } :"))
		return
	case (b.Addr == nil || *b.Addr == "") && b.Sentinel == nil && b.Cluster == nil:
		writeErr(w, apierr.Invalid("addr: required"))
		return
	}
	loc, msg := b.location()
	if msg != "" {
		writeErr(w, apierr.Invalid(msg))
		return
	}
	v, err := s.catalog.AddShard(r.Context(), *b.ID, loc)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger.Info("shard added", "shard", *b.ID, "addr", loc)
	writeJSON(w, http.StatusCreated, v)
}

type moveShardBody struct {
	Addr *string `json:"addr"`
}

func (s *Server) moveShard(w http.ResponseWriter, r *http.Request) {
	var b moveShardBody
	if err := decode(r, &b, moveShardKeys); err != nil {
		writeBadBody(w, err)
		return
	}
	if b.Addr == nil || *b.Addr == "" {
		writeErr(w, apierr.Invalid("addr: required"))
		return
	}
	if _, _, err := net.SplitHostPort(*b.Addr); err != nil {
		writeErr(w, apierr.Invalid("addr: want host:port"))
		return
	}
	v, err := s.catalog.MoveShard(r.Context(), r.PathValue("id"), *b.Addr)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger.Warn("shard moved by an operator", "shard", r.PathValue("id"), "addr", *b.Addr)
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) rebalance(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("sku")
	if err := ident.ValidSKU(name); err != nil {
		writeErr(w, apierr.Invalid("sku: "+err.Error()))
		return
	}
	var b RebalanceSpec
	if err := decode(r, &b, rebalanceKeys); err != nil {
		writeBadBody(w, err)
		return
	}
	n := 0
	if b.Partitions != nil {
		n++
		if *b.Partitions < 1 || *b.Partitions > stockd.MaxPartitions {
			writeErr(w, apierr.Invalid(fmt.Sprintf("partitions: must be between 1 and %d", stockd.MaxPartitions)))
			return
		}
	}
	if b.Move != nil {
		n++
		if b.Move.Partition == nil || *b.Move.Partition < 0 {
			writeErr(w, apierr.Invalid("move.partition: required, a partition id"))
			return
		}
		if b.Move.Shard == "" {
			writeErr(w, apierr.Invalid("move.shard: required"))
			return
		}
	}
	if b.Pin != nil {
		n++
		if len(b.Pin) == 0 {
			writeErr(w, apierr.Invalid("pin: at least one shard"))
			return
		}
	}
	if n != 1 {
		writeErr(w, apierr.Invalid("body: exactly one of partitions, move or pin"))
		return
	}
	out, err := s.catalog.Rebalance(r.Context(), name, b)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger.Info("sku rebalanced", "sku", name)
	writeJSON(w, http.StatusOK, out)
}

// inDoubt shows (and with resolve, forces) the resolution of units held
// in doubt after a shard lost data.
func (s *Server) inDoubt(resolve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("sku")
		if err := ident.ValidSKU(name); err != nil {
			writeErr(w, apierr.Invalid("sku: "+err.Error()))
			return
		}
		out, err := s.catalog.InDoubt(r.Context(), name, resolve)
		if err != nil {
			s.fail(w, err)
			return
		}
		if resolve {
			s.logger.Warn("in-doubt units resolved by an operator", "sku", name)
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("sku")
	if err := ident.ValidSKU(name); err != nil {
		writeErr(w, apierr.Invalid("sku: "+err.Error()))
		return
	}
	rep, err := s.catalog.Verify(r.Context(), name)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeErr(w, apierr.Error{Message: err.Error(), Code: apierr.NotFound})
	case errors.Is(err, ErrConflict):
		writeErr(w, apierr.Error{Message: err.Error(), Code: apierr.Conflict})
	case errors.Is(err, ErrInvalid):
		writeErr(w, apierr.Invalid(err.Error()))
	default:
		s.logger.Error("admin request failed", "err", err)
		writeErr(w, apierr.Error{Message: err.Error(), Code: apierr.Internal})
	}
}

// badBody is a 400 for a request body, naming the field (or key) at fault
// (413 for one too large).
type badBody struct {
	field, msg string
	tooLarge   bool
}

func (e *badBody) Error() string { return e.msg }

// decode reads a JSON body strictly: keys are checked byte-exactly first
// (strictjson: an unknown key, a case variant, a duplicate or an escaped
// key is refused, naming it, where encoding/json would match keys without
// regard to case and let the last duplicate win); then trailing data and
// wrong types are errors naming the field.
func decode(r *http.Request, v any, keys strictjson.Keys) error {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &badBody{field: "body", msg: fmt.Sprintf("body: larger than %d bytes", maxBody), tooLarge: true}
		}
		return &badBody{field: "body", msg: "body: " + err.Error()}
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return &badBody{field: "body", msg: "body: empty, want a JSON object"}
	}
	if err := strictjson.Check(b, keys); err != nil {
		var ke *strictjson.KeyError
		switch {
		case errors.As(err, &ke):
			return &badBody{field: ke.Key, msg: ke.Error()}
		case errors.Is(err, strictjson.ErrNotObject):
			return &badBody{field: "body", msg: "body: want a JSON object"}
		}
		// Malformed: encoding/json says where.
		if jerr := json.Unmarshal(b, new(any)); jerr != nil {
			return &badBody{field: "body", msg: "body: malformed JSON: " + jerr.Error()}
		}
		return &badBody{field: "body", msg: "body: malformed JSON"}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // the keys are exact already; kept as a backstop
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return &badBody{field: te.Field, msg: fmt.Sprintf("%s: must be %s", te.Field, te.Type)}
		}
		return &badBody{field: "body", msg: fmt.Sprintf("body: malformed JSON: %v", err)}
	}
	return nil
}

// Each body's keys, from its json tags.
var (
	putKeys       = strictjson.KeysOf(putBody{})
	addShardKeys  = strictjson.KeysOf(addShardBody{})
	moveShardKeys = strictjson.KeysOf(moveShardBody{})
	rebalanceKeys = strictjson.KeysOf(RebalanceSpec{})
)

// writeBadBody answers 400 invalid_argument (413 body_too_large) for a
// decode error.
func writeBadBody(w http.ResponseWriter, err error) {
	var bb *badBody
	switch {
	case errors.As(err, &bb) && bb.tooLarge:
		writeErr(w, apierr.Error{Message: bb.msg, Code: apierr.BodyTooLarge, Field: bb.field})
	case errors.As(err, &bb):
		writeErr(w, apierr.Error{Message: bb.msg, Code: apierr.InvalidArgument, Field: bb.field})
	default:
		writeErr(w, apierr.Invalid(err.Error()))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// writeErr writes an error answer: every one of the admin API comes here,
// with its status from its code (apierr).
func writeErr(w http.ResponseWriter, e apierr.Error) {
	writeJSON(w, e.Status(), e)
}
