package stocktest

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sync"
	"testing"
)

// StockdPackage is the daemon's main package.
const StockdPackage = "github.com/stockd/stockd/daemon/cmd/stockd"

// StockdBinary returns the stockd binary of this tree, built once per test
// binary, or $STOCKD_TEST_BIN when that names one built beforehand.
func StockdBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("STOCKD_TEST_BIN"); p != "" {
		return p
	}
	return Binary(t, StockdPackage)
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

type build struct {
	once sync.Once
	path string
	err  error
}

// Binary builds the main package pkg (an import path) once per test
// binary and returns the executable's path; later calls, from any test,
// wait for that build and share it.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	buildsMu.Lock()
	b := builds[pkg]
	if b == nil {
		b = &build{}
		builds[pkg] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "stocktest-"+path.Base(pkg))
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, path.Base(pkg))
		if out, err := exec.Command("go", "build", "-o", b.path, pkg).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v: %s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("build: %v", b.err)
	}
	return b.path
}
