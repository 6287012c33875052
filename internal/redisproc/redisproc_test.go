package redisproc

import (
	"context"
	"testing"
	"time"
)

func TestStartKillRestartFreeze(t *testing.T) {
	ctx := context.Background()
	in, err := Start(ctx, Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Kill)
	if _, err := in.Do(ctx, "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	// A clean shutdown fsyncs the append-only file: the key survives.
	in.Shutdown(5 * time.Second)
	if !in.Exited() {
		t.Fatal("still running after Shutdown")
	}
	if err := in.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if v, err := in.Do(ctx, "GET", "k"); err != nil || v != "v" {
		t.Fatalf("after restart GET k = %q, %v; want v", v, err)
	}
	if n, err := in.Do(ctx, "INCR", "n"); err != nil || n != "1" {
		t.Fatalf("INCR = %q, %v", n, err)
	}
	if info, err := in.Info(ctx, "persistence"); err != nil || info["aof_enabled"] != "1" {
		t.Fatalf("aof_enabled = %q, %v", info["aof_enabled"], err)
	}

	in.Freeze()
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = in.Ping(short)
	cancel()
	if err == nil {
		t.Fatal("a frozen instance answered PING")
	}
	in.Thaw()
	if err := in.Ping(ctx); err != nil {
		t.Fatalf("thawed instance: %v", err)
	}

	in.Kill()
	if in.Ping(ctx) == nil {
		t.Fatal("a killed instance answered PING")
	}
}

func TestStartFailsWithLog(t *testing.T) {
	_, err := Start(context.Background(), Config{Dir: t.TempDir(), Args: []string{"--no-such-option", "x"}, StartTimeout: 3 * time.Second})
	if err == nil {
		t.Fatal("started with a bad option")
	}
}
