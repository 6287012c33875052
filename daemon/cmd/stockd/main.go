// Command stockd runs a stockd node, or checks a SKU's books or a
// configuration.
//
//	stockd [run] -config configs/stockd.yaml        run a node (the default)
//	stockd verify -config configs/stockd.yaml SKU   print the SKU's conservation report
//	stockd check-config -config configs/stockd.yaml list every problem, or print the effective config
//	stockd version                                  print the build's version, commit and Go version
//	stockd help                                     list the subcommands
//
// Every setting can also come from STOCKD_* environment variables (see
// configs/stockd.example.yaml). SIGINT or SIGTERM stops the node gracefully.
// Exit codes: 0 success; 1 failure (a node that failed, books that do not
// balance, a config that is invalid); 2 usage errors (an unknown
// subcommand, a bad flag, a stray argument) and, for verify, errors
// reaching the services.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/stockd/stockd/daemon"
)

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

// subcommands, in the order help lists them.
var subcommands = []struct{ name, args, summary string }{
	{"run", "[-config file]", "run a node (the default when no subcommand is given)"},
	{"verify", "[-config file] SKU", "check a SKU's books against MySQL and Redis; exit 1 if they do not balance"},
	{"check-config", "[-config file]", "list every problem of the configuration, or print the effective one (secrets redacted)"},
	{"version", "", "print the version, commit and Go version of this build"},
	{"help", "", "print this list"},
}

// dispatch maps a subcommand to its function (not in the table above:
// help reads the table).
func dispatch(name string) func(args []string, stdout, stderr io.Writer) int {
	switch name {
	case "run":
		return run
	case "verify":
		return verify
	case "check-config":
		return checkConfig
	case "version":
		return version
	case "help":
		return help
	}
	return nil
}

// cli dispatches to a subcommand and returns the exit code.
func cli(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return run(args, stdout, stderr)
	}
	switch args[0] {
	case "-h", "-help", "--help":
		return help(args[1:], stdout, stderr)
	case "-version", "--version":
		return version(args[1:], stdout, stderr)
	}
	if strings.HasPrefix(args[0], "-") {
		return run(args, stdout, stderr) // flags of the default subcommand
	}
	if f := dispatch(args[0]); f != nil {
		return f(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "stockd: unknown subcommand %q", args[0])
	if s := closest(args[0]); s != "" {
		fmt.Fprintf(stderr, "; did you mean %q?", s)
	}
	fmt.Fprintln(stderr, "\nRun 'stockd help' for the list.")
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: stockd [subcommand] [flags] [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "subcommands:")
	for _, c := range subcommands {
		fmt.Fprintf(w, "  %-13s %-20s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every setting can also come from STOCKD_* environment variables")
	fmt.Fprintln(w, "(configs/stockd.example.yaml). 'stockd SUBCOMMAND -h' shows its flags.")
	fmt.Fprintln(w, "Exit codes: 0 ok, 1 failure or invalid, 2 usage error.")
}

func help(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "stockd help: unexpected argument %q\n", args[0])
		return 2
	}
	usage(stdout)
	return 0
}

func version(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "stockd version: unexpected argument %q\n", args[0])
		return 2
	}
	b := daemon.Build()
	fmt.Fprintf(stdout, "stockd %s\ncommit %s\ngo %s\n", b.Version, b.Revision, b.GoVersion)
	return 0
}

// flags parses a subcommand's -config flag and checks the number of
// positional arguments. When ok is false the caller exits with code: 0
// after -h, 2 on a usage error.
func flags(name, argsHelp string, args []string, nargs int, stderr io.Writer) (configPath string, rest []string, code int, ok bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to the YAML configuration (optional; STOCKD_* variables override it)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s %s\n", name, argsHelp)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", nil, 0, false
		}
		return "", nil, 2, false
	}
	if fs.NArg() != nargs {
		if fs.NArg() > nargs {
			fmt.Fprintf(stderr, "%s: unexpected argument %q (flags go before arguments)\n", name, fs.Arg(nargs))
		}
		fs.Usage()
		return "", nil, 2, false
	}
	return *path, fs.Args(), 0, true
}

func run(args []string, stdout, stderr io.Writer) int {
	configPath, _, code, ok := flags("stockd", "[run] [-config file]", args, 0, stderr)
	if !ok {
		return code
	}
	cfg, err := daemon.LoadConfig(configPath, os.Environ())
	if err != nil {
		fmt.Fprintln(stderr, "stockd:", err)
		fmt.Fprintln(stderr, "('stockd check-config' lists every problem at once)")
		return 2
	}
	logger := daemon.NewFormatLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	// Libraries that write through the standard log package land in the
	// same format (log_format json: every line is JSON).
	slog.SetDefault(logger)
	d, err := daemon.New(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "stockd:", err)
		return 2
	}
	b := daemon.Build()
	logger.Info("starting stockd", "version", b.Version, "revision", b.Revision, "go", b.GoVersion)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		logger.Error("stockd failed", "err", err)
		return 1
	}
	return 0
}

func verify(args []string, stdout, stderr io.Writer) int {
	configPath, rest, code, ok := flags("stockd verify", "[-config file] SKU", args, 1, stderr)
	if !ok {
		return code
	}
	cfg, err := daemon.LoadConfig(configPath, os.Environ())
	if err != nil {
		fmt.Fprintln(stderr, "stockd verify:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := daemon.Verify(ctx, cfg, rest[0])
	if err != nil {
		fmt.Fprintln(stderr, "stockd verify:", err)
		return 2
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	enc.Encode(rep)
	if !rep.OK {
		return 1
	}
	return 0
}

// checkConfig validates the configuration as a node would read it (file,
// then STOCKD_* variables, over the defaults) and lists every problem, one
// a line; when it is valid it prints the effective configuration as YAML,
// secrets redacted. It connects to nothing.
func checkConfig(args []string, stdout, stderr io.Writer) int {
	configPath, _, code, ok := flags("stockd check-config", "[-config file]", args, 0, stderr)
	if !ok {
		return code
	}
	cfg, err := daemon.ReadConfig(configPath, os.Environ())
	if err == nil {
		err = cfg.Validate()
	}
	if problems := daemon.Problems(err); len(problems) > 0 {
		fmt.Fprintf(stderr, "stockd check-config: %d problem(s):\n", len(problems))
		for _, p := range problems {
			// A problem's own text may span lines (a YAML syntax error
			// lists each bad line).
			fmt.Fprintf(stderr, "  - %s\n", strings.ReplaceAll(p.Error(), "\n", "\n    "))
		}
		return 1
	}
	out, err := daemon.EffectiveYAML(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "stockd check-config:", err)
		return 1
	}
	fmt.Fprintln(stdout, "# stockd effective configuration: file, STOCKD_* environment and defaults; secrets redacted.")
	stdout.Write(out)
	return 0
}

// closest is the subcommand within two edits of s, for a hint.
func closest(s string) string {
	best, bestD := "", 3
	for _, c := range subcommands {
		if d := distance(s, c.name); d < bestD {
			best, bestD = c.name, d
		}
	}
	return best
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
