// Package measure is how the bench measures: one load generator run
// (Load), the CPU of groups of processes and of the whole machine around it
// (from /proc, through procfs), Redis's pipelining depth (INFO stats), the
// gate that waits for a quiet machine, and the attribution of a CPU
// profile's samples to the parts of stockd.
package measure

import (
	"os/exec"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// ClockTicks is the kernel's clock ticks per second (getconf CLK_TCK), the
// unit of a process's utime and stime; 100 if it cannot be read.
func ClockTicks() float64 {
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}

// ProcTicks is utime+stime of a process (all its threads), in clock ticks.
func ProcTicks(pid int) (int64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return int64(st.UTime + st.STime), nil
}

// MachineCPU is the machine's CPU time (all CPUs) from /proc/stat, in
// seconds.
type MachineCPU struct {
	Busy  float64 // everything but idle and iowait
	Total float64
	IRQ   float64 // irq + softirq (loopback network work lands here too)
}

// Machine reads the machine's CPU time; zero if /proc/stat is unreadable.
// Guest time is already in user time, so it is not added again.
func Machine() MachineCPU {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return MachineCPU{}
	}
	st, err := fs.Stat()
	if err != nil {
		return MachineCPU{}
	}
	c := st.CPUTotal
	irq := c.IRQ + c.SoftIRQ
	busy := c.User + c.Nice + c.System + irq + c.Steal
	return MachineCPU{Busy: busy, Total: busy + c.Idle + c.Iowait, IRQ: irq}
}

// PidOf finds the pid of a running program by its exact name (comm), or 0.
func PidOf(comm string) int {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return 0
	}
	for _, p := range procs {
		if c, err := p.Comm(); err == nil && c == comm {
			return p.PID
		}
	}
	return 0
}

// LoadAvg is the 1, 5 and 15 minute load averages as /proc/loadavg shows
// them, or "?".
func LoadAvg() string {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return "?"
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return "?"
	}
	return strconv.FormatFloat(l.Load1, 'f', 2, 64) + " " + strconv.FormatFloat(l.Load5, 'f', 2, 64) + " " + strconv.FormatFloat(l.Load15, 'f', 2, 64)
}

// Group is a named set of processes whose CPU is added up.
type Group struct {
	Name string
	Pids []int
}

// Snapshot is every group's CPU ticks now (pids <= 0 and processes that
// are gone count nothing).
func Snapshot(groups []Group) map[string]int64 {
	m := map[string]int64{}
	for _, g := range groups {
		var sum int64
		for _, pid := range g.Pids {
			if pid <= 0 {
				continue
			}
			if t, err := ProcTicks(pid); err == nil {
				sum += t
			}
		}
		m[g.Name] = sum
	}
	return m
}

// Delta is the CPU seconds of every group between two snapshots.
func Delta(before, after map[string]int64, clk float64) map[string]float64 {
	m := map[string]float64{}
	for k, v := range after {
		m[k] = float64(v-before[k]) / clk
	}
	return m
}
