package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Ambiguous framing is refused on both ports, before anything acts.
func TestSmuggling(t *testing.T) {
	e := newEnv(t, 1)
	n := startNode(t, e.config())
	putSKU(t, n, "S", 1000, 2, 200, 20)
	before := e.ledger("S")

	hotHead := "POST /v1/deduct HTTP/1.1\r\nHost: " + n.hot + "\r\nContent-Type: application/json\r\n"
	for i, c := range smuggling(hotHead, `{"sku":"S","qty":7,"request_id":"smuggle-`+strconv.Itoa(0)+`"}`) {
		code, body := rawHTTP(t, n.hot, strings.Replace(c.req, "smuggle-0", "smuggle-"+strconv.Itoa(i), 1))
		if code != 400 {
			t.Errorf("hot, %s: %d %s, want 400", c.name, code, strings.TrimSpace(body))
		}
	}
	after := e.ledger("S")
	if after.levels != before.levels || after.streamEntries != 0 {
		t.Errorf("hot: refused framing deducted: levels %d -> %d, %d details", before.levels, after.levels, after.streamEntries)
	}

	adminHead := "PUT /admin/skus/S HTTP/1.1\r\nHost: " + n.admin + "\r\nAuthorization: Bearer " + testToken + "\r\nContent-Type: application/json\r\n"
	for _, c := range smuggling(adminHead, `{"total":5000}`) {
		code, body := rawHTTP(t, n.admin, c.req)
		if code != 400 {
			t.Errorf("admin, %s: %d %s, want 400", c.name, code, strings.TrimSpace(body))
		}
	}
	if v := getSKU(t, n, "S"); v.Total != 1000 {
		t.Errorf("admin: refused framing restocked: total %d, want 1000", v.Total)
	}

	// Plain framing still works on both ports, chunked included, and
	// several requests on one connection too.
	ok := "POST /v1/deduct HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(`{"sku":"S","qty":1,"request_id":"plain-1"}`)
	if code, body := rawHTTP(t, n.hot, ok); code != 200 {
		t.Errorf("hot, chunked: %d %s", code, body)
	}
	put := adminHead + "Transfer-Encoding: chunked\r\n\r\n" + chunked(`{"total":1001}`)
	if code, body := rawHTTP(t, n.admin, put); code != 200 {
		t.Errorf("admin, chunked: %d %s", code, body)
	}
	if v := getSKU(t, n, "S"); v.Total != 1001 {
		t.Errorf("admin, chunked restock: total %d, want 1001", v.Total)
	}
	twoPuts := adminHead + "Content-Length: 14\r\n\r\n" + `{"total":1002}` + adminHead + "Content-Length: 14\r\n\r\n" + `{"total":1003}`
	answers := rawPipeline(t, n.admin, twoPuts, 2)
	if len(answers) != 2 || answers[0] != 200 || answers[1] != 200 {
		t.Errorf("admin, two requests on one connection: %v", answers)
	}
	if v := getSKU(t, n, "S"); v.Total != 1003 {
		t.Errorf("admin, pipelined restocks: total %d, want 1003", v.Total)
	}
	// After a chunked request the admin port stops following the
	// connection, so nothing may be served after it on that connection,
	// whatever answered it: here net/http's own "OPTIONS *" handler.
	for _, first := range []string{
		"OPTIONS * HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /nowhere HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		adminHead + "Transfer-Encoding: chunked\r\n\r\n" + chunked(`{"total":1004}`),
	} {
		smuggled := adminHead + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(`{"total":7000}`)
		answers := rawPipeline(t, n.admin, first+smuggled, 2)
		if len(answers) != 1 {
			t.Errorf("admin, a request after %q on one connection: answers %v, want one", first[:20], answers)
		}
		if v := getSKU(t, n, "S"); v.Total == 7000 {
			t.Fatalf("admin: a request smuggled after %q restocked: total %d", first[:20], v.Total)
		}
	}
}

// rawHTTP writes req on a fresh TCP connection and reads one answer: the
// request bytes reach the server exactly as written.
func rawHTTP(t *testing.T, addr, req string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// rawPipeline writes req (several requests) on one connection and reads
// up to n answers.
func rawPipeline(t *testing.T, addr, req string, n int) []int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var codes []int
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	return codes
}

// chunked encodes body as one chunk and the last chunk.
func chunked(body string) string {
	return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body)
}

// smuggling is the framing every port refuses: each request carries a
// valid body under framing a proxy and the server could read differently.
func smuggling(head, body string) []struct{ name, req string } {
	return []struct{ name, req string }{
		{"CL and TE", head + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body)},
		{"TE and CL", head + "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunked(body)},
		{"CL and TE, CL exact", head + "Content-Length: " + strconv.Itoa(len(chunked(body))) + "\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body)},
		{"negative CL", head + "Content-Length: -1\r\n\r\n" + body},
		{"non-numeric CL", head + "Content-Length: 1x\r\n\r\n" + body},
		{"CL with a sign", head + "Content-Length: +" + strconv.Itoa(len(body)) + "\r\n\r\n" + body},
		{"two differing CL", head + "Content-Length: " + strconv.Itoa(len(body)) + "\r\nContent-Length: " + strconv.Itoa(len(body)+1) + "\r\n\r\n" + body + " "},
		{"two equal CL", head + "Content-Length: " + strconv.Itoa(len(body)) + "\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body},
		{"TE gzip, chunked", head + "Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked(body)},
		{"TE identity with CL", head + "Transfer-Encoding: identity\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body},
		{"TE twice", head + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body)},
		{"TE folded", head + "Transfer-Encoding:\r\n chunked\r\n\r\n" + chunked(body)},
		{"TE on HTTP/1.0", strings.Replace(head, "HTTP/1.1", "HTTP/1.0", 1) + "Transfer-Encoding: chunked\r\n\r\n" + chunked(body)},
	}
}
