//go:build faults

package faults

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// Case 1: kill -9 one of three Redis shards while 10,000 deductions run
// (32 buyers, 8,000 units, so the sale sells out), restart it after a
// second, and sell whatever is left one unit at a time.
//
//   - aof (the default; test Redis runs appendonly yes, appendfsync
//     everysec): the kernel keeps what the process wrote, the shard comes
//     back whole. Nothing is lost, nothing fenced, the history is
//     linearizable.
//   - none (that shard runs with --appendonly no): it comes back empty.
//     Its partitions are fenced and their units held in doubt until the
//     reservation TTL (5 s) has passed, then they sell again. Half the
//     buyers never pay, so reservations expire and are sold again too.
//   - replica (AOF, plus a replica the shard WAITs for): as aof.
func TestShardKill(t *testing.T) {
	for _, mode := range []string{"aof", "none", "replica"} {
		t.Run(mode, func(t *testing.T) {
			rf := shardKill(mode, time.Second)
			rf.requests, rf.total, rf.faultAfter, rf.workers, rf.payDelay = 10000, 8000, 3000, 32, time.Second
			if mode == "none" {
				rf.reserveTTL, rf.payEvery = 5*time.Second, 2
			}
			runRedisFault(t, rf)
		})
	}
}

// Case 2: failover to a replica whose replication link was cut first
// (20,000 deductions for 16,000 units).
// s2 has a replica that replicates through a proxy. In the middle of the
// sale the link is blackholed, selling goes on for a second, the primary
// is killed (kill -9), the replica promoted (REPLICAOF NO ONE) and stockd
// pointed at it (PUT /admin/shards/s2).
//
//   - replica mode (replicas 1, wait_timeout 100ms): a deduction whose
//     WAIT does not reach the replica is answered 503, never ok; nothing
//     acknowledged is lost.
//   - aof mode: the deductions of that second exist only on the dead
//     primary. The loss must be detected (the partition's sequence went
//     back: fenced, units in doubt) and nothing oversold.
func TestFailoverToReplica(t *testing.T) {
	for _, mode := range []string{"replica", "aof"} {
		t.Run(mode, func(t *testing.T) {
			var replica *stocktest.Redis
			var link *toxProxy
			rf := redisFault{
				// Twice case 1's sale: the blackholed second sells thousands
				// of units, and in aof mode both of s2's partitions are then
				// fenced with their units in doubt; with 8,000 units the
				// rest could be gone before a request homed on s2 is seen to
				// sell again.
				requests: 20000, total: 16000, faultAfter: 3000, workers: 32, payDelay: time.Second,
				recoveryWhat: "PUT /admin/shards/s2 (promoted replica) -> first ok of a request homed on s2",
			}
			if mode == "replica" {
				// The default reservation TTL: the fault (with a new
				// replica to attach) outlasts a short one, and confirms
				// held up by it would find their reservations expired.
				rf.fields = map[string]string{"durability": "replica", "replicas": "1", "wait_timeout": "100ms"}
			} else {
				// A short TTL, so that the doubt resolves within the case.
				rf.reserveTTL = 5 * time.Second
				rf.fields = map[string]string{"durability": "aof"}
				rf.loss, rf.wantDoubt = true, true
			}
			rf.setup = func(e *env, victim *shardProc) {
				link = e.tox.proxy(t, "replication", victim.Redis.Addr)
				host, port, _ := net.SplitHostPort(link.Addr())
				replica = stocktest.StartRedis(t, "--replicaof", host, port)
				waitReplicated(t, victim.Redis, replica)
			}
			rf.fault = func(e *env, d *stockd, victim *shardProc) string {
				link.blackhole()
				time.Sleep(time.Second) // pacing: 1 s of selling the replica never hears (the case says so)
				primaryOff := redisInfo(t, victim.Redis, "replication")["master_repl_offset"]
				victim.Redis.Kill()
				replicaOff := redisInfo(t, replica, "replication")["slave_repl_offset"]
				if _, err := redisDo(t, replica, "REPLICAOF", "NO", "ONE"); err != nil {
					t.Fatalf("promote the replica: %v", err)
				}
				again := ""
				if mode == "replica" {
					// The new primary needs a replica of its own before
					// replica mode acknowledges anything again.
					fresh := stocktest.StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(replica.Port))
					waitReplicated(t, replica, fresh)
					again = ", a new replica attached to it"
				}
				if code, body := d.adminDo("PUT", "/admin/shards/"+victim.ID, fmt.Sprintf(`{"addr":%q}`, replica.Addr), nil); code != 200 {
					t.Fatalf("PUT /admin/shards/%s: %d %s", victim.ID, code, body)
				}
				return fmt.Sprintf("replication link blackholed, 1s of selling, kill -9 of the primary (offset %s; replica at %s), REPLICAOF NO ONE%s, PUT /admin/shards/%s",
					primaryOff, replicaOff, again, victim.ID)
			}
			runRedisFault(t, rf)
		})
	}
}
