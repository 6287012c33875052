package httpframe

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/stockd/stockd/internal/apierr"
)

// maxHead is the largest request head passed on (ErrHeadTooLarge); the
// admin API's requests need far less than net/http's default 1 MiB.
const maxHead = 64 << 10

// refusalWriteTimeout bounds the write of a 400 to a client that does not
// read.
const refusalWriteTimeout = 5 * time.Second

// lingerTimeout bounds the wait for a refused client to stop sending.
const lingerTimeout = time.Second

// Listener returns ln with every request head checked before the server
// reads it. A connection follows its requests' framing: a head, then
// Content-Length bytes of body, then the next head. A request with bad
// framing never reaches the server: the connection ends there, answered
// 400 (after the answers to the requests before it). After a chunked
// request the connection is passed through unchecked, so the server must
// close the connection after answering it (the admin API sets
// "Connection: close" on chunked requests).
func Listener(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c}, nil
}

// conn is read by the server's connection goroutine and, while a handler
// runs, by net/http's background read; never both at once.
type conn struct {
	net.Conn
	in      []byte     // read from Conn, not framed yet
	out     []byte     // framed, for the server
	body    int64      // body bytes of the current request not passed yet
	raw     bool       // after a chunked request: pass everything
	readErr error      // from Conn, returned once in has been framed
	mu      sync.Mutex // refused: set by Read, read by Close (maybe from Shutdown)
	refused []byte     // the 400 to write when the server closes the connection

	closeOnce sync.Once
	closeErr  error
	scratch   [4096]byte
}

func (c *conn) Read(p []byte) (int, error) {
	for {
		if len(c.out) > 0 {
			n := copy(p, c.out)
			c.out = c.out[n:]
			return n, nil
		}
		if c.refused != nil {
			return 0, io.EOF // the server closes; Close answers
		}
		if len(c.in) > 0 && c.frame() {
			continue
		}
		if c.readErr != nil {
			err := c.readErr
			c.readErr = nil
			return 0, err
		}
		if len(c.in) == 0 && (c.raw || c.body > 0) {
			if !c.raw && int64(len(p)) > c.body {
				p = p[:c.body]
			}
			n, err := c.Conn.Read(p)
			if !c.raw {
				c.body -= int64(n)
			}
			return n, err
		}
		n, err := c.Conn.Read(c.scratch[:])
		c.in = append(c.in, c.scratch[:n]...)
		if err != nil {
			if n == 0 {
				return 0, err // a timeout keeps what in holds
			}
			c.readErr = err
		}
	}
}

// frame moves what it can from in to out, or refuses; false when it needs
// more input.
func (c *conn) frame() bool {
	switch {
	case c.raw:
		c.out, c.in = c.in, nil
		return true
	case c.body > 0:
		k := min(c.body, int64(len(c.in)))
		c.out, c.in = c.in[:k], c.in[k:]
		c.body -= k
		return true
	}
	line, end := headEnd(c.in)
	switch {
	case end > maxHead || (end < 0 && len(c.in) > maxHead):
		c.refuse(ErrHeadTooLarge)
		return true
	case end < 0:
		return false
	}
	if line <= 0 {
		c.refuse(ErrHead)
		return true
	}
	reqLine := bytes.TrimSuffix(c.in[:line-1], []byte("\r"))
	f, err := Check(c.in[line:end], bytes.HasSuffix(reqLine, []byte(" HTTP/1.0")))
	if err != nil {
		c.refuse(err)
		return true
	}
	c.out, c.in = c.in[:end], c.in[end:]
	if f.Chunked {
		c.raw = true
	} else if f.Length > 0 {
		c.body = f.Length
	}
	return true
}

// headEnd returns the index after the request line and the index after
// the empty line that ends the head, or -1 for an incomplete head. A head
// that starts with an empty line has line 0 and is refused (net/http
// refuses it too).
func headEnd(b []byte) (line, end int) {
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		return 0, -1
	}
	line = nl + 1
	if nl == 0 || (nl == 1 && b[0] == '\r') {
		return 0, line
	}
	for i := line; i < len(b); {
		switch {
		case b[i] == '\n':
			return line, i + 1
		case b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n':
			return line, i + 2
		case b[i] == '\r' && i+1 == len(b):
			return line, -1
		}
		nl := bytes.IndexByte(b[i:], '\n')
		if nl < 0 {
			return line, -1
		}
		i += nl + 1
	}
	return line, -1
}

// refuse drops the rest of the connection's input and prepares the 400.
func (c *conn) refuse(err error) {
	c.in, c.body, c.raw = nil, 0, false
	c.mu.Lock()
	defer c.mu.Unlock()
	msg, _ := json.Marshal(apierr.Error{Message: "request: " + err.Error(), Code: apierr.InvalidArgument})
	msg = append(msg, '\n')
	c.refused = append([]byte("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "+
		strconv.Itoa(len(msg))+"\r\n\r\n"), msg...)
}

// Close writes the pending 400, after whatever the server wrote before.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		refused := c.refused
		c.mu.Unlock()
		if refused != nil {
			c.Conn.SetWriteDeadline(time.Now().Add(refusalWriteTimeout))
			c.Conn.Write(refused)
			// Closing with unread input resets the connection, and the
			// client may lose the 400: end our side, then read what is
			// left for a moment (as net/http does).
			if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
				c.Conn.SetReadDeadline(time.Now().Add(lingerTimeout))
				io.Copy(io.Discard, io.LimitReader(c.Conn, maxHead))
			}
		}
		c.closeErr = c.Conn.Close()
	})
	return c.closeErr
}
