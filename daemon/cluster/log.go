package cluster

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// memberlistLog is memberlist's *log.Logger, bridged to slog at each
// line's own level: memberlist writes "[DEBUG] memberlist: ...",
// "[INFO] ...", "[WARN] ..." and "[ERR] ..." lines through a standard
// logger, and slog.NewLogLogger would put them all at one level (a failed
// probe of a peer is a warning an operator needs to see, the push-pull
// chatter is not).
func memberlistLog(logger *slog.Logger) *log.Logger {
	return log.New(levelWriter{logger}, "", 0)
}

type levelWriter struct{ logger *slog.Logger }

// levels maps memberlist's line prefixes to slog levels.
var levels = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

func (w levelWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	// Unprefixed lines (none today) are debug, as the bridge had them.
	level := slog.LevelDebug
	for _, l := range levels {
		if rest, ok := bytes.CutPrefix(line, []byte(l.prefix)); ok {
			level, line = l.level, bytes.TrimSpace(rest)
			break
		}
	}
	line = bytes.TrimPrefix(line, []byte("memberlist: "))
	ctx := context.Background()
	if w.logger.Enabled(ctx, level) {
		w.logger.Log(ctx, level, "memberlist", "line", string(line))
	}
	return len(p), nil
}
