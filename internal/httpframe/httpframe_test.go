package httpframe

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	cases := []struct {
		lines  string
		http10 bool
		want   Framing
		err    error
	}{
		{"Host: x\r\nContent-Length: 12\r\n\r\n", false, Framing{Length: 12}, nil},
		{"Host: x\ncontent-length:\t7 \n\n", false, Framing{Length: 7}, nil},
		{"Transfer-Encoding: Chunked\r\n\r\n", false, Framing{Length: -1, Chunked: true}, nil},
		{"Host: x\r\n\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n", false, Framing{Length: -1}, nil}, // after the head: body
		{"", false, Framing{Length: -1}, nil},
		{"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", false, Framing{}, ErrBothLengths},
		{"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", false, Framing{}, ErrBothLengths},
		{"Content-Length: -1\r\n\r\n", false, Framing{}, ErrBadLength},
		{"Content-Length: +1\r\n\r\n", false, Framing{}, ErrBadLength},
		{"Content-Length: 1x\r\n\r\n", false, Framing{}, ErrBadLength},
		{"Content-Length: 1 2\r\n\r\n", false, Framing{}, ErrBadLength},
		{"Content-Length:\r\n\r\n", false, Framing{}, ErrBadLength},
		{"Content-Length: 1234567890123456789\r\n\r\n", false, Framing{}, ErrBadLength},
		{"Content-Length: 1\r\nContent-Length: 1\r\n\r\n", false, Framing{}, ErrManyLengths},
		{"Content-Length : 1\r\nContent-Length: 2\r\n\r\n", false, Framing{}, ErrManyLengths},
		{"Transfer-Encoding: gzip, chunked\r\n\r\n", false, Framing{}, ErrBadEncoding},
		{"Transfer-Encoding: identity\r\n\r\n", false, Framing{}, ErrBadEncoding},
		{"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", false, Framing{}, ErrManyEncodings},
		{"Transfer-Encoding:\r\n chunked\r\n\r\n", false, Framing{}, ErrFolded},
		{"Transfer-Encoding: chunked\r\n\r\n", true, Framing{}, ErrHTTP10Coding},
	}
	for _, c := range cases {
		got, err := Check([]byte(c.lines), c.http10)
		if err != c.err || (err == nil && got != c.want) {
			t.Errorf("%q: %+v %v, want %+v %v", c.lines, got, err, c.want, c.err)
		}
	}
	lines := []byte("Host: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\nUser-Agent: gw\r\n\r\n")
	if n := testing.AllocsPerRun(100, func() { Check(lines, false) }); n != 0 {
		t.Errorf("Check allocates %.0f times", n)
	}
}

// server is net/http behind Listener; it records the bodies it served.
type server struct {
	addr   string
	mu     sync.Mutex
	bodies []string
}

func newServer(t *testing.T) *server {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String()}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(r.TransferEncoding) > 0 {
				w.Header().Set("Connection", "close")
			}
			b, _ := io.ReadAll(r.Body)
			s.mu.Lock()
			s.bodies = append(s.bodies, r.Method+" "+string(b))
			s.mu.Unlock()
			io.WriteString(w, "ok "+string(b))
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *server) served() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

// exchange writes req in pieces of size step (0: at once) on one
// connection and reads answers until the server closes it.
func exchange(t *testing.T, addr, req string, step int) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		if step == 0 {
			io.WriteString(c, req)
			return
		}
		for i := 0; i < len(req); i += step {
			io.WriteString(c, req[i:min(i+step, len(req))])
			time.Sleep(time.Millisecond) // pacing: let the pieces arrive apart (separate reads on the server)
		}
	}()
	br := bufio.NewReader(c)
	var got []string
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return got
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got = append(got, resp.Status[:3]+" "+strings.TrimSpace(string(b)))
		if resp.Close {
			return got
		}
	}
}

// A connection is followed request by request: good requests before a bad
// one are served, the bad one and everything after it are not, and the 400
// comes after the answers before it.
func TestListener(t *testing.T) {
	s := newServer(t)
	post := func(body string) string {
		return "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body
	}
	smuggled := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nB\r\n0\r\n\r\n"
	for _, step := range []int{0, 1, 7} {
		got := exchange(t, s.addr, post("first")+post("GET / HTTP/1.1\r\n\r\n")+smuggled+post("after"), step)
		if len(got) != 3 || got[0] != "200 ok first" || got[1] != "200 ok GET / HTTP/1.1" || !strings.HasPrefix(got[2], `400 {"error":"request: Content-Length and Transfer-Encoding together","code":"invalid_argument"}`) {
			t.Errorf("step %d: answers %q", step, got)
		}
	}
	// Chunked alone is served, and ends the connection (unchecked after).
	got := exchange(t, s.addr, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"+post("next"), 3)
	if len(got) != 1 || got[0] != "200 ok ok" {
		t.Errorf("chunked: answers %q", got)
	}
	// A head that never ends is cut at the server's limit.
	if got := exchange(t, s.addr, "GET / HTTP/1.1\r\nX: "+strings.Repeat("a", maxHead)+"\r\n\r\n", 0); len(got) != 1 || !strings.Contains(got[0], "400 {") || !strings.Contains(got[0], ErrHeadTooLarge.Error()) {
		t.Errorf("huge head: answers %q", got)
	}
	for _, b := range s.served() {
		if strings.Contains(b, "B") || strings.Contains(b, "after") || strings.Contains(b, "next") {
			t.Errorf("served %q", b)
		}
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// BenchmarkCheck: a gateway's usual request head.
func BenchmarkCheck(b *testing.B) {
	lines := []byte("Host: stockd:8080\r\nUser-Agent: gateway/1.0\r\nContent-Type: application/json\r\nContent-Length: 64\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Check(lines, false); err != nil {
			b.Fatal(err)
		}
	}
}
