// Package admin is the operators' HTTP API: SKUs (create, restock, show,
// verify, rebalance, in-doubt), shards (add, fail over, drain, remove), the
// cluster view, metrics, profiles and the status page. Every route but
// /healthz and the page's own static files needs the admin token, as
// "Authorization: Bearer <token>" or as the password of HTTP Basic. It
// holds no state; it calls the catalog the daemon wires in.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/stockd/stockd/internal/ident"
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

// Limits on SKU parameters.
const (
	MaxTotal      = 1_000_000_000_000
	MaxChunk      = 1_000_000_000
	MaxPartitions = 256
	maxBody       = 64 << 10
)

// Spec is what a PUT asks for; a zero Partitions, Chunk or Threshold was
// left out.
type Spec struct {
	Total      int64
	Partitions int
	Chunk      int64
	Threshold  int64
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

	// TargetPartitions is the open partition count kept by replacing
	// fenced partitions (PUT partitions, rebalance partitions set it).
	TargetPartitions int `json:"target_partitions"`
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
	ListSKUs(ctx context.Context) ([]SKUView, error)
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
	// RemoveShard forgets a drained shard.
	RemoveShard(ctx context.Context, id string) error
	// Rebalance changes a live SKU's partitions.
	Rebalance(ctx context.Context, sku string, r RebalanceSpec) (any, error)
	// InDoubt lists the SKU's fenced partitions and their doubt; with
	// resolve, it first returns every open doubt to the pool at once.
	InDoubt(ctx context.Context, sku string, resolve bool) (any, error)
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
}

// Server is the admin HTTP handler.
type Server struct {
	token   []byte
	catalog Catalog
	logger  *slog.Logger
	mux     *http.ServeMux
}

// Options configure the admin API.
type Options struct {
	// Token is the bearer token of every route but /healthz.
	Token   string
	Catalog Catalog
	// Cluster returns the cluster view for GET /admin/cluster.
	Cluster func() any
	// Metrics serves GET /metrics (Prometheus text); nil leaves it out.
	Metrics http.Handler
	Logger  *slog.Logger
}

// New returns the admin API.
func New(o Options) *Server {
	s := &Server{
		token:   []byte(o.Token),
		catalog: o.Catalog,
		logger:  o.Logger.With("component", "admin"),
		mux:     http.NewServeMux(),
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.handle("GET /admin/skus", func(w http.ResponseWriter, r *http.Request) {
		views, err := s.catalog.ListSKUs(r.Context())
		if err != nil {
			s.fail(w, err)
			return
		}
		writeJSON(w, http.StatusOK, views)
	})
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
		if err := s.catalog.RemoveShard(r.Context(), r.PathValue("id")); err != nil {
			s.fail(w, err)
			return
		}
		s.logger.Info("shard removed", "shard", r.PathValue("id"))
		writeJSON(w, http.StatusOK, map[string]string{"status": "removed"})
	})
	s.handle("POST /admin/skus/{sku}/rebalance", s.rebalance)
	s.handle("GET /admin/skus/{sku}/in-doubt", s.inDoubt(false))
	s.handle("POST /admin/skus/{sku}/in-doubt/resolve", s.inDoubt(true))
	s.handle("PUT /admin/skus/{sku}", s.putSKU)
	s.handle("GET /admin/skus/{sku}", s.getSKU)
	s.handle("GET /admin/skus/{sku}/verify", s.verify)
	if o.Cluster != nil {
		s.handle("GET /admin/cluster", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, o.Cluster())
		})
	}
	if o.Metrics != nil {
		s.handle("GET /metrics", o.Metrics.ServeHTTP)
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
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// handle registers an authenticated route. Authentication comes before
// routing details, so a caller without the token learns nothing (not even
// whether a SKU exists).
func (s *Server) handle(pattern string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="stockd admin (password: the admin token)"`)
			w.Header().Add("WWW-Authenticate", `Bearer realm="stockd"`)
			writeError(w, http.StatusUnauthorized, "unauthorized")
			return
		}
		h(w, r)
	})
}

// authorized accepts "Bearer <token>", and HTTP Basic with the token as
// the password (any user name) so that a browser can open the status page
// and the page's own requests carry the credentials.
func (s *Server) authorized(r *http.Request) bool {
	if len(s.token) == 0 {
		return false
	}
	if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return subtle.ConstantTimeCompare([]byte(got), s.token) == 1
	}
	if _, pass, ok := r.BasicAuth(); ok {
		return subtle.ConstantTimeCompare([]byte(pass), s.token) == 1
	}
	return false
}

type putBody struct {
	Total      *int64 `json:"total"`
	Partitions *int   `json:"partitions"`
	Chunk      *int64 `json:"chunk"`
	Threshold  *int64 `json:"threshold"`
}

func (s *Server) putSKU(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("sku")
	if err := ident.ValidSKU(name); err != nil {
		writeError(w, http.StatusBadRequest, "sku: "+err.Error())
		return
	}
	var b putBody
	if err := decode(r, &b); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	spec, err := s.spec(b)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
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
	if sp.Total < 0 || sp.Total > MaxTotal {
		return sp, fmt.Errorf("total: must be between 0 and %d", int64(MaxTotal))
	}
	if b.Partitions != nil {
		if sp.Partitions = *b.Partitions; sp.Partitions < 1 || sp.Partitions > MaxPartitions {
			return sp, fmt.Errorf("partitions: must be between 1 and %d", MaxPartitions)
		}
	}
	if b.Chunk != nil {
		if sp.Chunk = *b.Chunk; sp.Chunk < 1 || sp.Chunk > MaxChunk {
			return sp, fmt.Errorf("chunk: must be between 1 and %d", int64(MaxChunk))
		}
	}
	if b.Threshold != nil {
		if sp.Threshold = *b.Threshold; sp.Threshold < 1 || (sp.Chunk > 0 && sp.Threshold > sp.Chunk) {
			return sp, errors.New("threshold: must be between 1 and chunk")
		}
	}
	return sp, nil
}

func (s *Server) getSKU(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("sku")
	if err := ident.ValidSKU(name); err != nil {
		writeError(w, http.StatusBadRequest, "sku: "+err.Error())
		return
	}
	view, err := s.catalog.GetSKU(r.Context(), name)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, view)
}

type addShardBody struct {
	ID   *string `json:"id"`
	Addr *string `json:"addr"`
}

func (s *Server) addShard(w http.ResponseWriter, r *http.Request) {
	var b addShardBody
	if err := decode(r, &b); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	switch {
	case b.ID == nil || *b.ID == "":
		writeError(w, http.StatusBadRequest, "id: required")
		return
	case strings.ContainsAny(*b.ID, " ,={}:") || len(*b.ID) > 64:
		writeError(w, http.StatusBadRequest, "id: at most 64 characters, none of space , = { } :")
		return
	case b.Addr == nil || *b.Addr == "":
		writeError(w, http.StatusBadRequest, "addr: required")
		return
	}
	if _, _, err := net.SplitHostPort(*b.Addr); err != nil {
		writeError(w, http.StatusBadRequest, "addr: want host:port")
		return
	}
	v, err := s.catalog.AddShard(r.Context(), *b.ID, *b.Addr)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.logger.Info("shard added", "shard", *b.ID, "addr", *b.Addr)
	writeJSON(w, http.StatusCreated, v)
}

type moveShardBody struct {
	Addr *string `json:"addr"`
}

func (s *Server) moveShard(w http.ResponseWriter, r *http.Request) {
	var b moveShardBody
	if err := decode(r, &b); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if b.Addr == nil || *b.Addr == "" {
		writeError(w, http.StatusBadRequest, "addr: required")
		return
	}
	if _, _, err := net.SplitHostPort(*b.Addr); err != nil {
		writeError(w, http.StatusBadRequest, "addr: want host:port")
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
		writeError(w, http.StatusBadRequest, "sku: "+err.Error())
		return
	}
	var b RebalanceSpec
	if err := decode(r, &b); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n := 0
	if b.Partitions != nil {
		n++
		if *b.Partitions < 1 || *b.Partitions > MaxPartitions {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("partitions: must be between 1 and %d", MaxPartitions))
			return
		}
	}
	if b.Move != nil {
		n++
		if b.Move.Partition == nil || *b.Move.Partition < 0 {
			writeError(w, http.StatusBadRequest, "move.partition: required, a partition id")
			return
		}
		if b.Move.Shard == "" {
			writeError(w, http.StatusBadRequest, "move.shard: required")
			return
		}
	}
	if b.Pin != nil {
		n++
		if len(b.Pin) == 0 {
			writeError(w, http.StatusBadRequest, "pin: at least one shard")
			return
		}
	}
	if n != 1 {
		writeError(w, http.StatusBadRequest, "body: exactly one of partitions, move or pin")
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
			writeError(w, http.StatusBadRequest, "sku: "+err.Error())
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
		writeError(w, http.StatusBadRequest, "sku: "+err.Error())
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
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrConflict):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		s.logger.Error("admin request failed", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// decode reads a JSON body strictly: unknown fields, trailing data and
// wrong types are errors naming the field.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &te):
			return fmt.Errorf("%s: must be %s", te.Field, te.Type)
		case errors.As(err, &mbe):
			return fmt.Errorf("body: larger than %d bytes", maxBody)
		case errors.Is(err, io.EOF):
			return errors.New("body: empty, want a JSON object")
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return fmt.Errorf("%s: unknown field", strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`))
		default:
			return fmt.Errorf("body: malformed JSON: %v", err)
		}
	}
	if dec.More() {
		return errors.New("body: trailing data after the JSON object")
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
