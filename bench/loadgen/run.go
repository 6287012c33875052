package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stockd/stockd/bench/hist"
	"github.com/valyala/fasthttp"
)

const maxStatus = 600 // status codes >= this (or < 100) are counted under 0

var (
	statusOK       = []byte(`"status":"ok"`)
	statusSoldOut  = []byte(`"status":"sold_out"`)
	statusKey      = []byte(`"status":`)
	reservationKey = []byte(`"reservation":"`)
	qtyKey         = []byte(`"qty":`)
)

// stats is one worker's tally for the measured window.
type stats struct {
	requests        uint64 // logical requests (retries folded in)
	ok              uint64
	okUnits         uint64
	soldOut         uint64
	transportErrors uint64
	retries503      uint64
	status          [maxStatus]uint64 // final status of "other" outcomes
	lat             *hist.Histogram
	lag             *hist.Histogram // open loop: actual send - intended send
	lastDone        int64           // ns since base of last measured completion
}

// safety is one worker's tally over the whole run, warmup included.
type safety struct {
	warmupRequests uint64
	ok             uint64
	okUnits        uint64
	okNoRes        uint64            // ok answers without a reservation field
	reservations   map[string]uint64 // reservation -> request counter
	dups           []string          // first few duplicate descriptions
	ndups          uint64
}

type runner struct {
	cfg          config
	base         time.Time
	measureStart int64 // ns since base
	end          int64 // ns since base; MaxInt64 if no time limit
	period       float64
	slot         atomic.Uint64 // request counter; open loop: timeline slot
	measured     atomic.Int64  // measured-request tickets (for -n)
	stopped      atomic.Bool
	interrupted  bool // the run was cancelled (set before merge)
	done         chan struct{}
	stopOnce     sync.Once
	bodyParts    [][]byte   // body = parts[0] id parts[1] id ... parts[k]
	skuParts     [][][]byte // -skus > 1: the body parts of each SKU; request seq uses skuParts[seq % len]
	prefix       []byte
	users        uint64 // -users: request seq carries "user_id":"u<seq % users>"
}

// userTail closes the default body after the user number when -users > 0.
var userTail = []byte(`"}`)

type worker struct {
	r      *runner
	client *fasthttp.HostClient
	req    *fasthttp.Request
	resp   *fasthttp.Response
	buf    []byte
	timer  *time.Timer
	st     stats
	safe   safety
}

func (r *runner) now() int64 { return int64(time.Since(r.base)) }

func (r *runner) stop() {
	r.stopOnce.Do(func() {
		r.stopped.Store(true)
		close(r.done)
	})
}

// buildBodyParts turns the body template into constant parts around the
// request id placeholders.
func buildBodyParts(cfg config) ([][]byte, error) {
	if cfg.BodyTemplate == "" {
		sku, _ := json.Marshal(cfg.SKU)
		head := `{"sku":` + string(sku) + `,"qty":` + strconv.Itoa(cfg.Qty) + `,"request_id":"`
		if cfg.Users > 0 {
			// buildBody appends the user number and userTail.
			return [][]byte{[]byte(head), []byte(`","user_id":"u`)}, nil
		}
		return [][]byte{[]byte(head), []byte(`"}`)}, nil
	}
	return parseTemplate(cfg.BodyTemplate)
}

// buildSKUParts is the default body's parts for each of cfg.SKUs SKUs,
// named <sku>-<i>; nil for one SKU.
func buildSKUParts(cfg config) [][][]byte {
	if cfg.SKUs <= 1 {
		return nil
	}
	out := make([][][]byte, cfg.SKUs)
	for i := range out {
		c := cfg
		c.SKU = cfg.SKU + "-" + strconv.Itoa(i)
		c.BodyTemplate = ""
		out[i], _ = buildBodyParts(c)
	}
	return out
}

// parseTemplate splits a printf-style template that may only use %s (the
// request id) and %% (a literal percent sign).
func parseTemplate(t string) ([][]byte, error) {
	var parts [][]byte
	var cur []byte
	for i := 0; i < len(t); i++ {
		if t[i] != '%' {
			cur = append(cur, t[i])
			continue
		}
		if i+1 >= len(t) {
			return nil, errors.New("-body-template: trailing %")
		}
		i++
		switch t[i] {
		case '%':
			cur = append(cur, '%')
		case 's':
			parts = append(parts, cur)
			cur = nil
		default:
			return nil, fmt.Errorf("-body-template: unsupported verb %%%c (only %%s and %%%%)", t[i])
		}
	}
	parts = append(parts, cur)
	if len(parts) < 2 {
		return nil, errors.New("-body-template: needs a %s for the request id")
	}
	return parts, nil
}

func newHostClient(u *url.URL, conns int, timeout time.Duration) *fasthttp.HostClient {
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	return &fasthttp.HostClient{
		Addr:                          host,
		IsTLS:                         u.Scheme == "https",
		MaxConns:                      conns,
		MaxIdleConnDuration:           time.Minute,
		ReadTimeout:                   timeout,
		WriteTimeout:                  timeout,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		MaxIdemponentCallAttempts:     1,
	}
}

// run executes one load test and returns its merged results.
func run(ctx context.Context, cfg config) (*Results, error) {
	if len(cfg.URLs) == 0 {
		cfg.URLs = []string{cfg.URL}
	}
	var urls []*url.URL
	for _, s := range cfg.URLs {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("-url: %v", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("-url %q: need http(s)://host[:port]/path", s)
		}
		urls = append(urls, u)
	}
	parts, err := buildBodyParts(cfg)
	if err != nil {
		return nil, err
	}
	r := &runner{
		cfg:          cfg,
		measureStart: int64(cfg.Warmup),
		end:          math.MaxInt64,
		done:         make(chan struct{}),
		bodyParts:    parts,
		skuParts:     buildSKUParts(cfg),
		prefix:       []byte(cfg.IDPrefix),
		users:        uint64(cfg.Users),
	}
	if cfg.Duration > 0 {
		r.end = int64(cfg.Warmup + cfg.Duration)
	}
	if cfg.Rate > 0 {
		r.period = 1e9 / cfg.Rate
	}

	// Worker i sends to target i mod n; with shared connections, each
	// target has one HostClient with as many connections as its workers.
	var shared []*fasthttp.HostClient
	if cfg.Conns == connsShared {
		for t, u := range urls {
			n := cfg.Concurrency / len(urls)
			if t < cfg.Concurrency%len(urls) {
				n++
			}
			shared = append(shared, newHostClient(u, n, cfg.Timeout))
		}
	}
	workers := make([]*worker, cfg.Concurrency)
	for i := range workers {
		t := i % len(urls)
		w := &worker{r: r}
		if shared != nil {
			w.client = shared[t]
		} else {
			w.client = newHostClient(urls[t], 1, cfg.Timeout)
		}
		w.req = fasthttp.AcquireRequest()
		w.resp = fasthttp.AcquireResponse()
		w.req.SetRequestURI(cfg.URLs[t])
		w.req.Header.SetMethod(fasthttp.MethodPost)
		w.req.Header.SetContentType("application/json")
		w.buf = make([]byte, 0, 256)
		w.timer = time.NewTimer(time.Hour)
		w.timer.Stop()
		w.st.lat = hist.New()
		if cfg.Rate > 0 {
			w.st.lag = hist.New()
		}
		w.safe.reservations = make(map[string]uint64)
		workers[i] = w
	}

	stopWatch := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			r.stop()
		case <-stopWatch:
		}
	}()

	var wg sync.WaitGroup
	r.base = time.Now()
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.loop()
		}()
	}
	wg.Wait()
	close(stopWatch)
	interrupted := ctx.Err() != nil
	r.interrupted = interrupted

	res := merge(r, workers)
	if interrupted {
		res.Warnings = append(res.Warnings, "interrupted: partial results")
	}
	for _, w := range workers {
		fasthttp.ReleaseRequest(w.req)
		fasthttp.ReleaseResponse(w.resp)
		if cfg.Conns != connsShared {
			w.client.CloseIdleConnections()
		}
	}
	for _, c := range shared {
		c.CloseIdleConnections()
	}
	return res, nil
}

// loop is the hot path: no allocations except for ok answers (the
// reservation uniqueness map).
func (w *worker) loop() {
	r := w.r
	open := r.period > 0
	for !r.stopped.Load() {
		seq := r.slot.Add(1) - 1
		var start, intended int64
		if open {
			intended = int64(float64(seq) * r.period)
			if intended >= r.end {
				return
			}
			// Worker is free: any delay below is the generator's own timer
			// jitter, not the server's fault, so latency starts at the
			// actual send. If the slot is already due, every worker was busy
			// (server backlog): latency starts at the intended time.
			if r.measuredTicket(intended) {
				return
			}
			now := r.now()
			if intended > now {
				if !w.sleep(time.Duration(intended - now)) {
					return
				}
				start = r.now()
			} else {
				start = intended
			}
		} else {
			start = r.now()
			if start >= r.end {
				return
			}
			if r.measuredTicket(start) {
				return
			}
			intended = start
		}
		measured := intended >= r.measureStart

		w.buildBody(seq)
		sent := r.now()
		code, retries, err := w.exchange()
		doneAt := r.now()
		w.account(seq, measured, code, retries, err, time.Duration(doneAt-start))
		if measured {
			w.st.lastDone = doneAt
			if open {
				w.st.lag.Record(time.Duration(sent - intended))
			}
		}
		if err != nil {
			// Don't spin on a dead server.
			if !w.sleep(time.Millisecond) {
				return
			}
		}
	}
}

// measuredTicket reports whether the -n budget is exhausted (true = stop).
func (r *runner) measuredTicket(t int64) bool {
	if r.cfg.N <= 0 || t < r.measureStart {
		return false
	}
	return r.measured.Add(1) > r.cfg.N
}

// sleep waits d or until the run is stopped (returns false).
func (w *worker) sleep(d time.Duration) bool {
	w.timer.Reset(d)
	select {
	case <-w.timer.C:
		return true
	case <-w.r.done:
		w.timer.Stop()
		return false
	}
}

func (w *worker) buildBody(seq uint64) {
	parts := w.r.bodyParts
	if sp := w.r.skuParts; sp != nil {
		parts = sp[seq%uint64(len(sp))]
	}
	b := append(w.buf[:0], parts[0]...)
	for _, p := range parts[1:] {
		b = append(b, w.r.prefix...)
		b = strconv.AppendUint(b, seq, 10)
		b = append(b, p...)
	}
	if u := w.r.users; u > 0 {
		b = strconv.AppendUint(b, seq%u, 10)
		b = append(b, userTail...)
	}
	w.buf = b
	w.req.SetBody(b)
}

// exchange sends the prepared request, retrying 503s with the same body
// (same request_id). It returns the final status code.
func (w *worker) exchange() (code, retries int, err error) {
	for attempt := 0; ; attempt++ {
		if err = w.client.Do(w.req, w.resp); err != nil {
			return 0, retries, err
		}
		code = w.resp.StatusCode()
		if code != fasthttp.StatusServiceUnavailable || !w.r.cfg.Retry503 || attempt >= w.r.cfg.MaxRetries {
			return code, retries, nil
		}
		retries++
		// 0.5, 1, 2, 4, 8 ms
		if !w.sleep(time.Duration(500*time.Microsecond) << attempt) {
			return code, retries, nil
		}
	}
}

// classify maps an answer to ok / sold_out / other.
type outcome int

const (
	outOK outcome = iota
	outSoldOut
	outOther
)

func classify(code int, body []byte) outcome {
	switch {
	case code == fasthttp.StatusConflict:
		return outSoldOut
	case code >= 200 && code < 300:
		if bytes.Contains(body, statusOK) {
			return outOK
		}
		if bytes.Contains(body, statusSoldOut) {
			return outSoldOut
		}
		if !bytes.Contains(body, statusKey) {
			return outOK // baseline without a status field: 2xx means ok
		}
		return outOther
	}
	return outOther
}

// parseQty reads "qty":N from an ok answer; fallback if absent.
func parseQty(body []byte, fallback uint64) uint64 {
	i := bytes.Index(body, qtyKey)
	if i < 0 {
		return fallback
	}
	b := body[i+len(qtyKey):]
	for len(b) > 0 && b[0] == ' ' {
		b = b[1:]
	}
	var n uint64
	j := 0
	for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
		n = n*10 + uint64(b[j]-'0')
	}
	if j == 0 {
		return fallback
	}
	return n
}

// reservation returns the "reservation":"…" value, or nil.
func reservation(body []byte) []byte {
	i := bytes.Index(body, reservationKey)
	if i < 0 {
		return nil
	}
	b := body[i+len(reservationKey):]
	j := bytes.IndexByte(b, '"')
	if j < 0 {
		return nil
	}
	return b[:j]
}

func (w *worker) account(seq uint64, measured bool, code, retries int, err error, lat time.Duration) {
	st := &w.st
	if measured {
		st.requests++
		st.retries503 += uint64(retries)
	} else {
		w.safe.warmupRequests++
	}
	if err != nil {
		if measured {
			st.transportErrors++
		}
		return
	}
	body := w.resp.Body()
	out := classify(code, body)
	if out == outOK {
		units := parseQty(body, uint64(w.r.cfg.Qty))
		w.safe.ok++
		w.safe.okUnits += units
		if res := reservation(body); res != nil {
			w.noteReservation(res, seq)
		} else {
			w.safe.okNoRes++
		}
		if measured {
			st.ok++
			st.okUnits += units
		}
	}
	if !measured {
		return
	}
	st.lat.Record(lat)
	switch out {
	case outSoldOut:
		st.soldOut++
	case outOther:
		if code < 100 || code >= maxStatus {
			code = 0
		}
		st.status[code]++
	}
}

func (w *worker) noteReservation(res []byte, seq uint64) {
	if prev, ok := w.safe.reservations[string(res)]; ok { // no alloc for lookup
		if prev != seq {
			w.safe.addDup(string(res), prev, seq, w.r.prefix)
		}
		return
	}
	w.safe.reservations[string(res)] = seq
}

func (s *safety) addDup(res string, a, b uint64, prefix []byte) {
	s.ndups++
	if len(s.dups) < 5 {
		p := string(prefix)
		s.dups = append(s.dups, fmt.Sprintf("reservation %q returned for request ids %s%d and %s%d", res, p, a, p, b))
	}
}
