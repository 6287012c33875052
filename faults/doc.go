// Package faults is stockd's fault-injection suite. It holds tests only:
// they start the stockd binary and their own Redis processes, route the
// daemon's connections to Redis, MySQL and RabbitMQ through an in-process
// toxiproxy, break things (SIGKILL, SIGSTOP, latency, blackholes, resets,
// broker alarms), and end every case with the conservation check and a
// table of what the faults cost: units oversold, acknowledged deductions
// lost, detail rows doubled, units held in doubt, and recovery time.
// The deduction histories of the concurrency cases go through a
// linearizability checker (porcupine) against a model of a stock counter.
//
// The untagged tests are a fast subset that `make test` runs; the whole
// suite needs the build tag: `make test-faults`
// (go test -race -count=1 -tags faults -timeout 15m ./faults/).
// docs/RELIABILITY.md has the cases, the figures of a run and what each
// shard durability mode guarantees.
package faults
