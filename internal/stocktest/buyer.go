package stocktest

import (
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// Answer is one answer of the hot endpoint (DESIGN.md's HTTP contract).
type Answer struct {
	Code        int    `json:"-"` // the HTTP status; the body's "code" is not this
	Status      string `json:"status"`
	Reservation string `json:"reservation"`
	SKU         string `json:"sku"`
	Qty         int64  `json:"qty"`
	Error       string `json:"error"`
	RequestID   string `json:"request_id"`
}

// BuyerOptions shape a Buyer's connections.
type BuyerOptions struct {
	// Conns bounds the connections per node (default 2048).
	Conns int
	// Timeout bounds one call, like a gateway's own timeout (default 30 s).
	Timeout time.Duration
	// LocalAddr, if set, is the loopback address the connections come
	// from: another "client IP" for per-client limits.
	LocalAddr string
}

// Buyer is a keep-alive client of the hot endpoints: what a gateway sends,
// and nothing more. It never retries on its own; tests that model a
// gateway's retries do so around it, with the same request id.
type Buyer struct {
	c       *fasthttp.Client
	timeout time.Duration
}

// NewBuyer returns a Buyer with up to conns connections per node and a
// 30 s timeout per call.
func NewBuyer(conns int) *Buyer { return NewBuyerWith(BuyerOptions{Conns: conns}) }

// NewBuyerWith returns a Buyer shaped by o.
func NewBuyerWith(o BuyerOptions) *Buyer {
	if o.Conns <= 0 {
		o.Conns = 2048
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	c := &fasthttp.Client{
		MaxConnsPerHost:     o.Conns,
		MaxConnWaitTimeout:  o.Timeout,
		ReadTimeout:         o.Timeout,
		WriteTimeout:        o.Timeout,
		MaxIdleConnDuration: time.Minute,
		// A buyer that gave up does not retry on its own.
		MaxIdemponentCallAttempts: 1,
	}
	if o.LocalAddr != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(o.LocalAddr)}, Timeout: o.Timeout}
		c.Dial = func(addr string) (net.Conn, error) { return d.Dial("tcp", addr) }
	}
	return &Buyer{c: c, timeout: o.Timeout}
}

// Do sends any request over the Buyer's connections, within its timeout.
func (b *Buyer) Do(req *fasthttp.Request, resp *fasthttp.Response) error {
	return b.c.DoTimeout(req, resp, b.timeout)
}

// PostRaw POSTs a JSON body to addr (host:port) and returns the status and
// a copy of the body.
func (b *Buyer) PostRaw(addr, path, body string) (int, []byte, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + path)
	req.Header.SetMethod("POST")
	req.Header.SetContentType("application/json")
	req.SetBodyString(body)
	if err := b.Do(req, resp); err != nil {
		return 0, nil, err
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...), nil
}

// Post POSTs a JSON body and decodes the answer; a body that is not JSON
// is an error (with the status in the Answer).
func (b *Buyer) Post(addr, path, body string) (Answer, error) {
	code, raw, err := b.PostRaw(addr, path, body)
	if err != nil {
		return Answer{}, err
	}
	a := Answer{Code: code}
	if err := json.Unmarshal(raw, &a); err != nil {
		return a, fmt.Errorf("status %d, body %q: %w", a.Code, raw, err)
	}
	return a, nil
}

// Deduct asks for qty units of sku under request id id.
func (b *Buyer) Deduct(addr, sku string, qty int64, id string) (Answer, error) {
	return b.Post(addr, "/v1/deduct", fmt.Sprintf(`{"sku":%q,"qty":%d,"request_id":%q}`, sku, qty, id))
}

// Confirm confirms a reservation (payment went through).
func (b *Buyer) Confirm(addr, reservation string) (Answer, error) {
	return b.Settle(addr, "confirm", reservation)
}

// Release returns a reservation's units (payment failed).
func (b *Buyer) Release(addr, reservation string) (Answer, error) {
	return b.Settle(addr, "release", reservation)
}

// Settle POSTs /v1/{what} for a reservation: confirm, release or extend.
func (b *Buyer) Settle(addr, what, reservation string) (Answer, error) {
	return b.Post(addr, "/v1/"+what, fmt.Sprintf(`{"reservation":%q}`, reservation))
}
