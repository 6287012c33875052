package daemon

import (
	"io"
	"log/slog"
)

// NewLogger returns a text logger at level (debug, info, warn, error).
func NewLogger(w io.Writer, level string) *slog.Logger {
	return NewFormatLogger(w, level, "text")
}

// NewFormatLogger returns a logger at level writing format: text (slog's
// key=value lines) or json (one JSON object a line, with time, level and
// msg; what log shippers parse).
func NewFormatLogger(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	switch level {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
