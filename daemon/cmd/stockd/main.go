// Command stockd runs a stockd node.
//
//	stockd -config configs/stockd.yaml
//
// Every setting can also come from STOCKD_* environment variables (see
// configs/stockd.example.yaml). SIGINT or SIGTERM stops the node gracefully.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/stockd/stockd/daemon"
)

func main() {
	os.Exit(run())
}

func run() int {
	configPath := flag.String("config", "", "path to the YAML configuration (optional; STOCKD_* variables override it)")
	flag.Parse()

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
