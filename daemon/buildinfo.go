package daemon

import (
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Revision is the commit this binary was built from, stamped at build time
// like Version (the Makefile's build target sets both with -ldflags -X).
var Revision string

// BuildInfo says which build a binary is.
type BuildInfo struct {
	// Version: the stamped Version (`git describe --always --dirty`), else
	// the module version or commit the Go toolchain recorded, else "dev".
	Version string `json:"version"`
	// Revision: the stamped Revision, else the recorded commit ("-dirty"
	// when the tree had changes), else "unknown".
	Revision string `json:"revision"`
	// GoVersion is the Go release that compiled the binary.
	GoVersion string `json:"go_version"`
}

// Build returns this binary's build information.
var Build = sync.OnceValue(func() BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = nil
	}
	return resolveBuild(Version, Revision, runtime.Version(), bi)
})

// resolveBuild applies the fallbacks: stamped values first, then what the
// toolchain recorded (bi may be nil), then "dev" and "unknown". The go
// command records vcs.* only when it builds inside a git checkout (not a
// git worktree, nor with -buildvcs=false); module versions only for
// `go install module@version`.
func resolveBuild(version, revision, goVersion string, bi *debug.BuildInfo) BuildInfo {
	b := BuildInfo{Version: version, Revision: revision, GoVersion: goVersion}
	var vcsRev, mainVersion string
	var dirty bool
	if bi != nil {
		mainVersion = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				vcsRev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if b.Revision == "" && vcsRev != "" {
		b.Revision = vcsRev
		if dirty {
			b.Revision += "-dirty"
		}
	}
	if b.Version == "" || b.Version == "dev" {
		switch {
		case mainVersion != "" && mainVersion != "(devel)":
			b.Version = mainVersion
		case vcsRev != "":
			b.Version = vcsRev[:min(len(vcsRev), 12)]
			if dirty {
				b.Version += "-dirty"
			}
		default:
			b.Version = "dev"
		}
	}
	if b.Revision == "" {
		b.Revision = "unknown"
	}
	return b
}

// buildInfoGauge is stockd_build_info{version,revision,goversion} 1: join
// it to any series to see which build produced it, and count the builds a
// rolling upgrade has running.
func buildInfoGauge() prometheus.Collector {
	b := Build()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "stockd_build_info",
		Help:        "Always 1; its labels name this node's build (version, revision, Go version).",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	g.Set(1)
	return g
}
