package main

import (
	"net/url"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stockd/stockd/bench/hist"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func newHist() *hist.Histogram { return hist.New() }

type runtimeMem struct {
	mallocs uint64
	cpu     time.Duration // process user+sys CPU
}

func (m *runtimeMem) read() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.mallocs = ms.Mallocs
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	m.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
