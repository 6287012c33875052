package daemon

import (
	"runtime/debug"
	"testing"
)

// The version and revision come from the build stamp, else from what the
// toolchain recorded, else "dev" and "unknown".
func TestBuildInfoFallbacks(t *testing.T) {
	vcs := func(rev, modified, mainVersion string) *debug.BuildInfo {
		bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/stockd/stockd", Version: mainVersion}}
		if rev != "" {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: "vcs.revision", Value: rev},
				debug.BuildSetting{Key: "vcs.modified", Value: modified})
		}
		return bi
	}
	const rev = "0123456789abcdef0123456789abcdef01234567"
	cases := []struct {
		name               string
		version, revision  string
		bi                 *debug.BuildInfo
		wantVer, wantRevis string
	}{
		{"stamped", "v1.2.3-4-gabc", "abc", vcs(rev, "false", "(devel)"), "v1.2.3-4-gabc", "abc"},
		{"stamped version only", "v1.2.3", "", vcs(rev, "true", "(devel)"), "v1.2.3", rev + "-dirty"},
		{"vcs clean", "dev", "", vcs(rev, "false", "(devel)"), "0123456789ab", rev},
		{"vcs dirty", "", "", vcs(rev, "true", "(devel)"), "0123456789ab-dirty", rev + "-dirty"},
		{"go install module@version", "dev", "", vcs("", "", "v1.4.0"), "v1.4.0", "unknown"},
		{"nothing recorded", "dev", "", vcs("", "", "(devel)"), "dev", "unknown"},
		{"no build info", "dev", "", nil, "dev", "unknown"},
	}
	for _, c := range cases {
		b := resolveBuild(c.version, c.revision, "go1.26.8", c.bi)
		if b.Version != c.wantVer || b.Revision != c.wantRevis || b.GoVersion != "go1.26.8" {
			t.Errorf("%s: %+v; want version %s, revision %s", c.name, b, c.wantVer, c.wantRevis)
		}
	}
}
