// Command stockd runs a stockd node, or checks a SKU's books.
//
//	stockd -config configs/stockd.yaml              run a node
//	stockd verify -config configs/stockd.yaml SKU   print the SKU's conservation report
//
// Every setting can also come from STOCKD_* environment variables (see
// configs/stockd.example.yaml). SIGINT or SIGTERM stops the node gracefully.
// verify exits 0 when the books balance, 1 when they do not, 2 on errors.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/stockd/stockd/daemon"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "verify" {
		os.Exit(verify(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("stockd", flag.ContinueOnError)
	configPath := fs.String("config", "", "path to the YAML configuration (optional; STOCKD_* variables override it)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := daemon.LoadConfig(*configPath, os.Environ())
	if err != nil {
		fmt.Fprintln(os.Stderr, "stockd:", err)
		return 2
	}
	logger := daemon.NewLogger(os.Stderr, cfg.LogLevel)
	d, err := daemon.New(cfg, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "stockd:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		logger.Error("stockd failed", "err", err)
		return 1
	}
	return 0
}

func verify(args []string) int {
	fs := flag.NewFlagSet("stockd verify", flag.ContinueOnError)
	configPath := fs.String("config", "", "path to the YAML configuration")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: stockd verify [-config file] SKU")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	cfg, err := daemon.LoadConfig(*configPath, os.Environ())
	if err != nil {
		fmt.Fprintln(os.Stderr, "stockd verify:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := daemon.Verify(ctx, cfg, fs.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "stockd verify:", err)
		return 2
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(rep)
	if !rep.OK {
		return 1
	}
	return 0
}
