//go:build faults

package faults

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// Case 4: write-back faults. The daemon reaches MySQL and RabbitMQ through
// toxiproxy (the shared services stay up for everyone else). Eight buyers
// sell steadily; in the middle the fault hits; when it is over the buyers
// stop, and the recovery time runs until every acknowledged deduction has
// landed in MySQL and verify passes. Lost 0, doubled 0, and the history is
// linearizable (MySQL's books included).
func TestWriteBackFaults(t *testing.T) {
	for _, wf := range []struct {
		name string
		// selling: deductions must keep succeeding during the fault.
		selling bool
		fault   func(t *testing.T, e *env, d *stockd) string
	}{
		{"rabbitmq-connection-reset", true, func(t *testing.T, e *env, d *stockd) string {
			for i := 0; i < 3; i++ {
				e.amqp.resetPeer()
				time.Sleep(300 * time.Millisecond)
				e.amqp.clear()
				time.Sleep(time.Second)
			}
			return "3 times: every AMQP connection reset (reset_peer) for 300 ms, then 1 s of peace"
		}},
		{"rabbitmq-unreachable", true, func(t *testing.T, e *env, d *stockd) string {
			e.amqp.blackhole()
			time.Sleep(15 * time.Second)
			e.amqp.clear()
			return "broker blackholed (timeout toxic, both ways) for 15 s"
		}},
		{"rabbitmq-memory-alarm", true, func(t *testing.T, e *env, d *stockd) string {
			restore := memoryAlarm(t)
			time.Sleep(10 * time.Second)
			restore()
			return "vm_memory_high_watermark 0.0001 (publishers blocked) for 10 s, then restored"
		}},
		{"rabbitmq-killed", true, func(t *testing.T, e *env, d *stockd) string {
			down := killService(t, "rabbitmq")
			return fmt.Sprintf("kill -9 of the RabbitMQ broker (beam.smp), restarted by scripts/services.sh: answering again after %s", down.Round(time.Millisecond))
		}},
		{"mariadb-killed", true, func(t *testing.T, e *env, d *stockd) string {
			// Applying is slowed so that the kill lands mid-batch.
			e.mysql.slow(20)
			defer e.mysql.clear()
			time.Sleep(time.Second)
			down := killService(t, "mariadb")
			return fmt.Sprintf("MySQL slowed by 20 ms, kill -9 of mariadbd mid-batch, restarted by scripts/services.sh (InnoDB crash recovery): answering again after %s", down.Round(time.Millisecond))
		}},
		{"mariadb-unreachable", true, func(t *testing.T, e *env, d *stockd) string {
			e.mysql.blackhole()
			time.Sleep(15 * time.Second)
			e.mysql.clear()
			return "MySQL blackholed (timeout toxic, both ways) mid-batch for 15 s"
		}},
		{"applier-killed", false, func(t *testing.T, e *env, d *stockd) string {
			// Applying is slowed (20 ms per MySQL round trip) so that
			// kills land while batches are being applied, before their ack.
			e.mysql.slow(20)
			for i := 0; i < 3; i++ {
				time.Sleep(1500 * time.Millisecond)
				d.kill9()
				d.restart()
			}
			e.mysql.clear()
			return "MySQL slowed by 20 ms; 3 times: kill -9 of stockd while batches were applied, restart"
		}},
	} {
		t.Run(wf.name, func(t *testing.T) {
			const sku = "wb"
			e := newEnv(t, envOpts{shards: 3, proxyMySQL: true, proxyAMQP: true})
			d := e.startStockd(nodeOpts{})
			const total = 1000000
			d.putSKU(sku, total, 6, 2000, 400)

			h := newHistory()
			b := newBuyers(t, stocktest.NewBuyerWith(stocktest.BuyerOptions{Timeout: 5 * time.Second}), sku, h, d.hot)
			w := watchDoubt(e, sku)
			stop := make(chan struct{})
			done := b.closedLoop(8, &ids{prefix: "buyer-", n: -1}, 1, stop, false)
			time.Sleep(2 * time.Second)

			// Write-back lag: units acknowledged but not yet in MySQL.
			lagStop := make(chan struct{})
			var lagMax int64
			var lagWG sync.WaitGroup
			lagWG.Add(1)
			go func() {
				defer lagWG.Done()
				for {
					_, _, _, acked := h.count()
					var landed int64
					if e.db.QueryRow(`SELECT reserved + confirmed FROM skus WHERE sku = ?`, sku).Scan(&landed) == nil {
						lagMax = max(lagMax, acked-landed)
					}
					select {
					case <-lagStop:
						return
					case <-time.After(250 * time.Millisecond):
					}
				}
			}()
			okBefore, _, _, _ := h.count()
			start := time.Now()
			what := wf.fault(t, e, d)
			faultEnd := time.Now()
			okDuring, _, _, _ := h.count()
			close(stop)
			done()
			close(lagStop)
			lagWG.Wait()
			// Recovery: until everything acknowledged has landed.
			_, recovered := stocktest.WaitFor(90*time.Second, func() bool {
				v, err := d.verify(sku)
				return err == nil && v.OK && v.InFlightDetails == 0
			})
			recovery := time.Since(faultEnd)
			if !recovered {
				t.Errorf("write-back did not catch up within 90s of the fault's end")
			}
			b.checkAnswers()
			asked, _ := b.reask(nil)

			r := settle(t, e, d, sku, h, w, settleOpts{total: total, linearizable: true, drainWithin: 90 * time.Second})
			r.Recovery = recovery
			r.RecoveryWhat = "fault over -> every acknowledged deduction in MySQL, verify ok"
			r.Extra["fault"] = fmt.Sprintf("%s (%s)", what, faultEnd.Sub(start).Round(time.Millisecond))
			r.Extra["sold during the fault"] = fmt.Sprintf("%d deductions", okDuring-okBefore)
			r.Extra["write-back lag"] = fmt.Sprintf("up to %d acknowledged units not yet in MySQL", lagMax)
			r.Extra["re-asked acknowledged ids"] = fmt.Sprint(asked)
			if wf.selling && okDuring-okBefore < 100 {
				t.Errorf("only %d deductions during the fault: selling stalled", okDuring-okBefore)
			}
			r.Log(t)
		})
	}
}

// killService sends SIGKILL to a shared service's server process
// (mariadb: mariadbd; rabbitmq: the broker's beam.smp) and starts it again
// with scripts/services.sh, the same script make test runs; a cleanup runs
// that script again, so the service is back whatever the test does. It
// returns how long the service was down.
func killService(t *testing.T, name string) time.Duration {
	t.Helper()
	t.Cleanup(func() {
		if out, err := exec.Command("bash", "../scripts/services.sh").CombinedOutput(); err != nil {
			t.Errorf("bring the services back after killing %s: %v\n%s", name, err, out)
		}
	})
	pattern := map[string]string{"mariadb": "^/usr/sbin/(mariadbd|mysqld)", "rabbitmq": "beam.smp.*rabbit"}[name]
	out, err := exec.Command("pgrep", "-f", pattern).Output()
	if err != nil {
		t.Fatalf("no %s process (pgrep -f %q): %v", name, pattern, err)
	}
	start := time.Now()
	for _, f := range strings.Fields(string(out)) {
		if err := exec.Command("kill", "-9", f).Run(); err != nil {
			t.Fatalf("kill -9 %s (%s): %v", f, name, err)
		}
	}
	// Wait until it is really gone before starting it again.
	if _, ok := stocktest.WaitFor(15*time.Second, func() bool { return exec.Command("pgrep", "-f", pattern).Run() != nil }); !ok {
		t.Fatalf("%s still running 15 s after kill -9", name)
	}
	if out, err := exec.Command("bash", "../scripts/services.sh").CombinedOutput(); err != nil {
		t.Fatalf("restart %s: %v\n%s", name, err, out)
	}
	return time.Since(start)
}

// memoryAlarm sets RabbitMQ's memory high watermark so low that the broker
// raises its memory alarm and blocks every publisher. The shared broker
// gets its watermark back when restore is called, in t.Cleanup whatever
// happens, and, should this test process die first, from a detached
// watchdog two minutes later.
func memoryAlarm(t *testing.T) (restore func()) {
	t.Helper()
	orig := "0.4"
	if out, err := exec.Command("rabbitmqctl", "eval", "vm_memory_monitor:get_vm_memory_high_watermark().").Output(); err == nil {
		if v := strings.TrimSpace(string(out)); v != "" && !strings.HasPrefix(v, "0.0") && !strings.HasPrefix(v, "{") {
			orig = v
		}
	}
	watchdog := exec.Command("sh", "-c", "sleep 120; rabbitmqctl set_vm_memory_high_watermark "+orig+" >/dev/null 2>&1")
	watchdog.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := watchdog.Start(); err != nil {
		t.Fatalf("memory alarm watchdog: %v", err)
	}
	go watchdog.Wait()
	var once sync.Once
	restore = func() {
		once.Do(func() {
			if out, err := exec.Command("rabbitmqctl", "set_vm_memory_high_watermark", orig).CombinedOutput(); err != nil {
				t.Errorf("RESTORE BY HAND: rabbitmqctl set_vm_memory_high_watermark %s: %v: %s", orig, err, out)
				return
			}
			// The watchdog (sh and its sleep, a process group of their
			// own) is no longer needed.
			syscall.Kill(-watchdog.Process.Pid, syscall.SIGKILL)
		})
	}
	t.Cleanup(restore)
	if out, err := exec.Command("rabbitmqctl", "set_vm_memory_high_watermark", "0.0001").CombinedOutput(); err != nil {
		t.Fatalf("rabbitmqctl set_vm_memory_high_watermark: %v: %s", err, out)
	}
	// The alarm is raised at the broker's next memory check.
	if _, ok := stocktest.WaitFor(10*time.Second, func() bool {
		out, _ := exec.Command("rabbitmqctl", "eval", "rabbit_alarm:get_alarms().").Output()
		return strings.Contains(string(out), "memory")
	}); !ok {
		t.Errorf("the memory alarm was not raised")
	}
	fmt.Fprintln(os.Stderr, "faults: RabbitMQ memory alarm raised on purpose (publishers blocked); it is lifted at the end of the case")
	return restore
}
