package main

import (
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil || o.quick || o.out != "docs/BENCHMARKS.md" || o.reps != 3 || o.duration != 5*time.Second || o.warmup != time.Second || len(o.conc) != 2 {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	o, err = parseFlags([]string{"-quick"})
	if err != nil || o.out != "/tmp/BENCHMARKS.quick.md" || o.reps != 1 || o.duration != 2*time.Second {
		t.Fatalf("quick must not write docs/BENCHMARKS.md by default: %+v %v", o, err)
	}
	o, err = parseFlags([]string{"-quick", "-out", "x.md", "-reps", "2", "-c", "8, 16"})
	if err != nil || o.out != "x.md" || o.reps != 2 || o.conc[0] != 8 || o.conc[1] != 16 {
		t.Fatalf("explicit flags: %+v %v", o, err)
	}
	for _, bad := range [][]string{{"-reps", "0"}, {"-c", "x"}, {"-only", "nope"}, {"extra"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
