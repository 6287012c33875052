// Package client calls stockd's hot endpoint from Go: deduct, confirm,
// release, extend and stock, with the retry discipline stockd's exactly-once
// guarantee relies on.
//
// A deduction is identified by its request id. The client sends the same
// request id on every attempt (generating a UUIDv7 when the caller gives
// none), so an attempt that timed out or hit a node that died is retried
// without risking a second deduction: stockd answers a repeated request id,
// on any node, with its first outcome. Attempts are retried on 503, 429
// (after Retry-After), 408/502/504, per-attempt timeouts and connection
// errors, with jittered exponential backoff, until MaxAttempts or the
// caller's context ends. Definite answers (sold out, unknown SKU, bad
// input, ...) are returned at once as errors that errors.Is the package's
// sentinels and errors.As an *APIError.
//
// A Client spreads attempts over several nodes round-robin, moves away from
// a node that fails (connection error, timeout, 503) and probes the node's
// /readyz in the background until it answers 200 again. A Client is safe for
// concurrent use; it owns its http.Transport, which Close releases.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Config configures a Client. Only Endpoints is required.
type Config struct {
	// Endpoints are the hot endpoints of the stockd nodes, as
	// "host:port" or "http(s)://host:port".
	Endpoints []string
	// MaxAttempts bounds the attempts of one call, the first included
	// (default 8). The caller's context bounds them too.
	MaxAttempts int
	// AttemptTimeout bounds one attempt (default 6s). Keep it above the
	// server's request_timeout (default 5s): a deduction may wait that
	// long for a refill.
	AttemptTimeout time.Duration
	// BaseBackoff and MaxBackoff shape the wait between attempts:
	// exponential from BaseBackoff (default 25ms) up to MaxBackoff
	// (default 1s), with jitter. A 429's Retry-After is waited in full.
	BaseBackoff, MaxBackoff time.Duration
	// ProbeInterval is how often a node marked down is probed on /readyz
	// (default 500ms).
	ProbeInterval time.Duration
	// DialTimeout bounds a TCP connect (default 1s).
	DialTimeout time.Duration
	// MaxIdleConnsPerHost is the keep-alive pool per node (default 64).
	MaxIdleConnsPerHost int
	// MaxConnsPerHost caps the connections per node (default 0: no cap).
	MaxConnsPerHost int
	// IdleConnTimeout closes pooled connections idle this long (default
	// 60s; keep it below the server's idle_timeout, default 2m).
	IdleConnTimeout time.Duration
	// TLSConfig is used for https endpoints.
	TLSConfig *tls.Config
}

func (c *Config) setDefaults() {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 8
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = 6 * time.Second
	}
	if c.BaseBackoff <= 0 {
		c.BaseBackoff = 25 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Second
	}
	c.MaxBackoff = max(c.MaxBackoff, c.BaseBackoff)
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = 500 * time.Millisecond
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = time.Second
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = 64
	}
	if c.IdleConnTimeout <= 0 {
		c.IdleConnTimeout = 60 * time.Second
	}
}

// Client calls a stockd cluster. Create it with New; it is safe for
// concurrent use.
type Client struct {
	cfg       Config
	eps       *endpoints
	transport *http.Transport
	http      *http.Client
	prober    *prober
	ctx       context.Context // ends at Close
	cancel    context.CancelFunc
}

// New validates cfg and returns a Client with its own transport and a
// background prober for nodes marked down. Call Close when done.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("client: endpoints: at least one required")
	}
	cfg.setDefaults()
	eps := &endpoints{}
	for _, ep := range cfg.Endpoints {
		base, err := baseURL(ep)
		if err != nil {
			return nil, fmt.Errorf("client: endpoints: %q: %w", ep, err)
		}
		eps.nodes = append(eps.nodes, &node{base: base})
	}
	tr := &http.Transport{
		// No proxy from the environment: stockd is called node by node.
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       cfg.TLSConfig,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		MaxIdleConns:          cfg.MaxIdleConnsPerHost * len(eps.nodes),
		MaxIdleConnsPerHost:   cfg.MaxIdleConnsPerHost,
		MaxConnsPerHost:       cfg.MaxConnsPerHost,
		IdleConnTimeout:       cfg.IdleConnTimeout,
		ResponseHeaderTimeout: cfg.AttemptTimeout,
		ExpectContinueTimeout: time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg:       cfg,
		eps:       eps,
		transport: tr,
		// Redirects are not part of the contract: a 3xx is an answer.
		http: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		ctx:    ctx,
		cancel: cancel,
	}
	c.prober = &prober{ctx: ctx, eps: eps, http: c.http, interval: cfg.ProbeInterval, timeout: min(cfg.AttemptTimeout, time.Second)}
	c.prober.done.Add(1)
	go c.prober.loop()
	return c, nil
}

func baseURL(ep string) (string, error) {
	if !strings.Contains(ep, "://") {
		ep = "http://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", errors.New("scheme must be http or https")
	}
	if u.Host == "" {
		return "", errors.New("host required")
	}
	return u.Scheme + "://" + u.Host + strings.TrimSuffix(u.Path, "/"), nil
}

// Close stops the prober and closes idle connections. Calls in progress
// end with ErrClientClosed at their next wait; later calls fail with it.
func (c *Client) Close() error {
	c.cancel()
	c.prober.done.Wait()
	c.transport.CloseIdleConnections()
	return nil
}

// DeductRequest is a deduction to make.
type DeductRequest struct {
	SKU string
	Qty int64
	// RequestID identifies the deduction (at most 128 printable ASCII
	// characters, no spaces): a retry with the same id returns the first
	// outcome. Empty: the client generates a UUIDv7.
	RequestID string
	// UserID is optional (per-user limits).
	UserID string
}

// deductBody is exactly the keys the server accepts.
type deductBody struct {
	SKU       string `json:"sku"`
	Qty       int64  `json:"qty"`
	RequestID string `json:"request_id"`
	UserID    string `json:"user_id,omitempty"`
}

// Reservation is a successful deduction: the units are held until confirmed,
// released, or expired.
type Reservation struct {
	// Token names the reservation for Confirm, Release and Extend.
	Token     string
	SKU       string
	Qty       int64
	RequestID string
	// Attempts is the number of HTTP attempts it took.
	Attempts int
}

// Deduct takes r.Qty units of r.SKU. Definite failures are ErrSoldOut,
// ErrUnknownSKU, ErrRequestIDReused, ErrLimitReached, ErrNotOpen, ErrClosed
// and *APIError (bad input); an unknown outcome (context ended,
// ErrUnavailable) carries the request id, see RequestID.
func (c *Client) Deduct(ctx context.Context, r DeductRequest) (Reservation, error) {
	if r.RequestID == "" {
		r.RequestID = NewRequestID()
	}
	body, err := json.Marshal(deductBody{SKU: r.SKU, Qty: r.Qty, RequestID: r.RequestID, UserID: r.UserID})
	if err != nil {
		return Reservation{}, err
	}
	a, n, err := c.call(ctx, "deduct", http.MethodPost, "/v1/deduct", body)
	if err != nil {
		return Reservation{}, &RequestError{Op: "deduct", RequestID: r.RequestID, Attempts: n, Err: err}
	}
	if a.Status != "ok" || a.Reservation == "" {
		return Reservation{}, &RequestError{Op: "deduct", RequestID: r.RequestID, Attempts: n,
			Err: &APIError{Status: http.StatusOK, Code: a.Status, Message: "unexpected answer without a reservation"}}
	}
	return Reservation{Token: a.Reservation, SKU: a.SKU, Qty: a.Qty, RequestID: r.RequestID, Attempts: n}, nil
}

// settleBody is the body of confirm, release and extend.
type settleBody struct {
	Reservation string `json:"reservation"`
	Seconds     int64  `json:"seconds,omitempty"`
}

// Confirm confirms a reservation after payment. It is idempotent (a
// repeat answers success), so it is retried like Deduct. Definite failures:
// ErrNotFound, ErrReleased.
func (c *Client) Confirm(ctx context.Context, token string) error {
	return c.settle(ctx, "confirm", token)
}

// Release returns a reservation's units. It is idempotent. Definite
// failures: ErrNotFound, ErrConfirmed.
func (c *Client) Release(ctx context.Context, token string) error {
	return c.settle(ctx, "release", token)
}

func (c *Client) settle(ctx context.Context, op, token string) error {
	body, _ := json.Marshal(settleBody{Reservation: token})
	if _, n, err := c.call(ctx, op, http.MethodPost, "/v1/"+op, body); err != nil {
		return &RequestError{Op: op, Attempts: n, Err: err}
	}
	return nil
}

// Extend pushes a reserved reservation's expiry to now plus d (whole
// seconds, rounded up) and returns the new expiry.
//
// The server side of POST /v1/extend is a contract extension not every
// stockd has: a server without it answers 404 "no such route", an
// *APIError with Status 404 that is not ErrNotFound. Definite failures:
// ErrNotFound, ErrReleased, ErrConfirmed, *APIError.
func (c *Client) Extend(ctx context.Context, token string, d time.Duration) (time.Time, error) {
	secs := int64((d + time.Second - 1) / time.Second)
	if secs < 1 {
		return time.Time{}, &RequestError{Op: "extend", Err: &APIError{Status: http.StatusBadRequest,
			Code: "invalid_argument", Field: "seconds", Message: "seconds: must be at least 1"}}
	}
	body, _ := json.Marshal(settleBody{Reservation: token, Seconds: secs})
	a, n, err := c.call(ctx, "extend", http.MethodPost, "/v1/extend", body)
	if err != nil {
		return time.Time{}, &RequestError{Op: "extend", Attempts: n, Err: err}
	}
	at, err := expiresAt(a.ExpiresAt)
	if err != nil {
		return time.Time{}, &RequestError{Op: "extend", Attempts: n,
			Err: &APIError{Status: http.StatusOK, Code: a.Status, Message: "expires_at: " + err.Error()}}
	}
	return at, nil
}

// expiresAt reads "expires_at" as an RFC 3339 string or Unix seconds (the
// contract names the field, not its form).
func expiresAt(v any) (time.Time, error) {
	switch x := v.(type) {
	case string:
		return time.Parse(time.RFC3339Nano, x)
	case float64:
		sec := int64(x)
		return time.Unix(sec, int64((x-float64(sec))*1e9)), nil
	}
	return time.Time{}, errors.New("missing or not a time")
}

// Stock is a node's approximate view of a SKU.
type Stock struct {
	SKU       string
	Available int64
	SoldOut   bool
}

// Stock returns a node's approximate stock of sku. Definite failure:
// ErrUnknownSKU, *APIError.
func (c *Client) Stock(ctx context.Context, sku string) (Stock, error) {
	a, n, err := c.call(ctx, "stock", http.MethodGet, "/v1/stock/"+url.PathEscape(sku), nil)
	if err != nil {
		return Stock{}, &RequestError{Op: "stock", Attempts: n, Err: err}
	}
	return Stock{SKU: a.SKU, Available: a.Available, SoldOut: a.SoldOut}, nil
}

// maxAnswer bounds the answer body read (stockd's are well under 1 KiB).
const maxAnswer = 64 << 10

// call makes attempts until a definite answer, MaxAttempts, the end of ctx,
// or Close. It returns the 2xx answer, or the error: an *APIError for a
// definite answer, else one wrapping ErrUnavailable, ErrClientClosed or
// ctx's error, and the last failure.
func (c *Client) call(ctx context.Context, op, method, path string, body []byte) (answer, int, error) {
	var last error
	for n := 1; ; n++ {
		if err := c.ended(ctx); err != nil {
			return answer{}, n - 1, giveUp(err, last)
		}
		nd := c.eps.pick()
		status, hdr, a, err := c.attempt(ctx, nd, method, path, body)
		if err == nil {
			if status >= 200 && status < 300 {
				return a, n, nil
			}
			if !retryable(status) {
				return answer{}, n, outcome(op, status, a)
			}
		}
		var wait time.Duration
		if err != nil {
			if ctxErr := c.ended(ctx); ctxErr != nil {
				// The caller's deadline, not the node's fault.
				return answer{}, n, giveUp(ctxErr, err)
			}
			nd.markDown()
			last = fmt.Errorf("%s: %w", nd.base, err)
		} else {
			if status == http.StatusServiceUnavailable {
				nd.markDown()
			}
			last = fmt.Errorf("%s: %w", nd.base, outcome(op, status, a))
			wait = retryAfter(hdr, time.Now())
		}
		if n >= c.cfg.MaxAttempts {
			return answer{}, n, giveUp(ErrUnavailable, last)
		}
		wait = max(wait, backoff(n, c.cfg.BaseBackoff, c.cfg.MaxBackoff))
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			// The next attempt could not start in time: say so now
			// rather than sleep into the deadline.
			return answer{}, n, giveUp(context.DeadlineExceeded, last)
		}
		if err := c.sleep(ctx, wait); err != nil {
			return answer{}, n, giveUp(err, last)
		}
	}
}

// ended is ctx's error, or ErrClientClosed after Close.
func (c *Client) ended(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.ctx.Err() != nil {
		return ErrClientClosed
	}
	return nil
}

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClientClosed
	}
}

// giveUp is the error of a call that ended without a definite answer.
func giveUp(why, last error) error {
	if last == nil {
		return why
	}
	return fmt.Errorf("%w (last attempt: %w)", why, last)
}

// attempt is one HTTP exchange with nd, bounded by AttemptTimeout. err is
// set when no complete answer arrived (connection error, timeout, an
// unreadable 2xx body).
func (c *Client) attempt(ctx context.Context, nd *node, method, path string, body []byte) (int, http.Header, answer, error) {
	var a answer
	actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, method, nd.base+path, rd)
	if err != nil {
		return 0, nil, a, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, a, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return 0, nil, a, fmt.Errorf("read answer: %w", err)
	}
	if err := json.Unmarshal(b, &a); err != nil && resp.StatusCode < 300 {
		return 0, nil, a, fmt.Errorf("read answer: status %d: %w", resp.StatusCode, err)
	}
	// A non-JSON error body (a proxy's page) still has its status.
	return resp.StatusCode, resp.Header, a, nil
}
