package main

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/stockd/stockd/bench/internal/report"
)

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "(" + name + ": " + err.Error() + ")"
	}
	return strings.TrimRight(string(out), " \n")
}

// collectMachine is what the report says about the machine, its services
// and the tree the binaries were built from.
func (b *bench) collectMachine(ctx context.Context) report.Machine {
	m := report.Machine{Date: time.Now().UTC()}
	for _, line := range strings.Split(cmdOut("lscpu"), "\n") {
		k, _, _ := strings.Cut(line, ":")
		switch strings.TrimSpace(k) {
		case "Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
			"Hypervisor vendor", "Virtualization type", "CPU max MHz", "L2 cache", "L3 cache":
			m.Lscpu = append(m.Lscpu, strings.Join(strings.Fields(line), " "))
		}
	}
	m.Nproc = cmdOut("nproc")
	m.Free = cmdOut("free", "-g")
	m.Kernel = cmdOut("uname", "-r")
	m.GoVer = runtime.Version()
	if v := cmdOut("go", "version"); !strings.HasPrefix(v, "(") {
		m.GoVer = v
	}
	m.RedisVer = cmdOut("redis-server", "--version")
	_ = b.root.QueryRowContext(ctx, "SELECT VERSION()").Scan(&m.MariadbVer)
	rows, err := b.root.QueryContext(ctx, "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('max_connections','innodb_flush_log_at_trx_commit','log_bin','sync_binlog','innodb_buffer_pool_size')")
	if err == nil {
		for rows.Next() {
			var k, v string
			if rows.Scan(&k, &v) == nil {
				m.MariadbVars = append(m.MariadbVars, k+"="+v)
			}
		}
		rows.Close()
	}
	m.RabbitVer = b.rabbitVer
	m.Loadavg = b.loadavg
	rev := cmdOut("git", "rev-parse", "--short", "HEAD")
	dirty := cmdOut("git", "status", "--porcelain", "--untracked-files=no")
	m.Tree = "commit " + rev
	if dirty != "" && !strings.HasPrefix(dirty, "(") {
		m.Tree += fmt.Sprintf(" plus uncommitted changes in %d tracked files (the bench builds the working tree)", len(strings.Split(dirty, "\n")))
	}
	return m
}
