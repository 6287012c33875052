// Package redisproc starts and controls redis-server processes on free
// loopback ports. It is the one launcher the tests (internal/stocktest), the
// fault suite and the bench share, so that "start Redis and wait until it
// answers PING" is written once.
//
// An Instance owns one process at a time: Kill crashes it (SIGKILL, no final
// fsync), Restart brings it back on the same port and directory (it reloads
// its append-only file), Freeze and Thaw stop and continue it (SIGSTOP and
// SIGCONT: connections stay open, nothing is answered).
package redisproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/rueidis"
)

// Config says how to start an instance.
type Config struct {
	// Dir is the instance's working directory (append-only file, log). It
	// is created if missing. Required.
	Dir string
	// Conf is a config file that comes first on the command line (a
	// sentinel's, which Sentinel rewrites); empty for none.
	Conf string
	// Args are more redis-server arguments, after the defaults (so they
	// win): the defaults are loopback only, no protected mode, no RDB
	// snapshots, an append-only file with fsync every second, Dir.
	Args []string
	// Bare leaves out the defaults except port, bind, protected mode and
	// dir: for a sentinel, whose Args carry "--sentinel".
	Bare bool
	// Port is the port to use; 0 picks a free one (and tries another one
	// when a race takes it before the server binds).
	Port int
	// Env is the process environment; nil inherits ours.
	Env []string
	// StartTimeout bounds the wait for the first PONG (default 10s).
	StartTimeout time.Duration
}

// LogName is the name of the instance's log file in its Dir.
const LogName = "redis.log"

// Instance is a redis-server process we started.
type Instance struct {
	Addr string
	Port int
	Dir  string

	cfg Config

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current process has exited
}

// ErrNotInstalled says redis-server is not on PATH.
var ErrNotInstalled = errors.New("redis-server not installed (scripts/services.sh installs it)")

// Start starts an instance and waits until it answers PING.
func Start(ctx context.Context, cfg Config) (*Instance, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, ErrNotInstalled
	}
	if cfg.Dir == "" {
		return nil, errors.New("redisproc: Config.Dir is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := cfg.Port
		if port == 0 {
			p, err := FreePort()
			if err != nil {
				return nil, err
			}
			port = p
		}
		in := &Instance{Addr: "127.0.0.1:" + strconv.Itoa(port), Port: port, Dir: cfg.Dir, cfg: cfg}
		if lastErr = in.start(ctx); lastErr == nil {
			return in, nil
		}
		if cfg.Port != 0 || ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// args is the command line of the instance.
func (in *Instance) args() []string {
	var a []string
	if in.cfg.Conf != "" {
		a = append(a, in.cfg.Conf)
	}
	a = append(a, "--port", strconv.Itoa(in.Port), "--bind", "127.0.0.1", "--protected-mode", "no", "--dir", in.Dir)
	if !in.cfg.Bare {
		a = append(a, "--save", "", "--appendonly", "yes", "--appendfsync", "everysec")
	}
	return append(a, in.cfg.Args...)
}

func (in *Instance) start(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(in.Dir, LogName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("redis-server", in.args()...)
	cmd.Env = in.cfg.Env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group (a Ctrl-C in a terminal reaches only the parent,
	// which stops its children in order), and SIGKILL if the parent dies
	// without cleaning up: no orphan stays on a test port.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	in.mu.Lock()
	in.cmd, in.done = cmd, done
	in.mu.Unlock()
	if err := in.waitPing(ctx, done); err != nil {
		in.Kill()
		return fmt.Errorf("redis-server on %s: %w: %s", in.Addr, err, in.LogTail(5))
	}
	return nil
}

// waitPing polls until the server answers PING, it exits, or the start
// timeout passes.
func (in *Instance) waitPing(ctx context.Context, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, in.cfg.StartTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if in.Ping(ctx) == nil {
			return nil
		}
		select {
		case <-done:
			return errors.New("exited before answering PING")
		case <-ctx.Done():
			return errors.New("did not answer PING in time")
		case <-tick.C:
		}
	}
}

// Ping sends one PING on a fresh connection.
func (in *Instance) Ping(ctx context.Context) error {
	c, err := net.DialTimeout("tcp", in.Addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	c.Close()
	cl, err := in.NewClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return cl.Do(ctx, cl.B().Ping().Build()).Error()
}

// NewClient returns a rueidis client to this instance alone (no cache, no
// cluster discovery); the caller closes it.
func (in *Instance) NewClient() (rueidis.Client, error) {
	return rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{in.Addr}, DisableCache: true, ForceSingleClient: true})
}

// Do runs one command on a fresh connection and returns the reply as a
// string (integers in decimal; nil as ""). Meant for setup and checks, not
// for load.
func (in *Instance) Do(ctx context.Context, args ...string) (string, error) {
	cl, err := in.NewClient()
	if err != nil {
		return "", err
	}
	defer cl.Close()
	m, err := cl.Do(ctx, cl.B().Arbitrary(args...).Build()).ToMessage()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return "", nil
		}
		return "", err
	}
	if n, err := m.AsInt64(); err == nil {
		return strconv.FormatInt(n, 10), nil
	}
	return m.ToString()
}

// Info returns the fields of one INFO section.
func (in *Instance) Info(ctx context.Context, section string) (map[string]string, error) {
	s, err := in.Do(ctx, "INFO", section)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out, nil
}

// Pid is the current process's id, 0 if none was started.
func (in *Instance) Pid() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cmd == nil || in.cmd.Process == nil {
		return 0
	}
	return in.cmd.Process.Pid
}

// Exited reports whether the current process has exited.
func (in *Instance) Exited() bool {
	in.mu.Lock()
	done := in.done
	in.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// signal sends sig to the current process, if it runs.
func (in *Instance) signal(sig syscall.Signal) {
	in.mu.Lock()
	cmd := in.cmd
	in.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// Kill sends SIGKILL (a crash: no final fsync) and waits until the process
// has exited and its port is closed.
func (in *Instance) Kill() {
	in.Thaw() // a frozen process dies on SIGKILL too, but its port must close
	in.signal(syscall.SIGKILL)
	in.wait(5 * time.Second)
}

// Shutdown asks the server to exit (SIGTERM: Redis fsyncs its append-only
// file first) and waits up to grace, then kills it.
func (in *Instance) Shutdown(grace time.Duration) {
	in.Thaw()
	in.signal(syscall.SIGTERM)
	if !in.wait(grace) {
		in.Kill()
	}
}

// wait waits up to d for the process to exit and its port to close.
func (in *Instance) wait(d time.Duration) bool {
	in.mu.Lock()
	done := in.done
	in.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
	case <-time.After(d):
		return false
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", in.Addr, 50*time.Millisecond)
		if err != nil {
			return true
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// Restart starts the instance again on the same port and directory, after
// Kill or Shutdown (it reloads its append-only file).
func (in *Instance) Restart(ctx context.Context) error {
	if !in.Exited() {
		in.Kill()
	}
	return in.start(ctx)
}

// Freeze stops the process (SIGSTOP): it keeps its connections but answers
// nothing, like a hung or partitioned instance.
func (in *Instance) Freeze() { in.signal(syscall.SIGSTOP) }

// Thaw continues a frozen process (SIGCONT).
func (in *Instance) Thaw() { in.signal(syscall.SIGCONT) }

// LogTail returns the last n lines of the instance's log.
func (in *Instance) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(in.Dir, LogName))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// FreePort returns a TCP port free on 127.0.0.1 right now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
