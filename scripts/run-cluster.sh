#!/usr/bin/env bash
# scripts/run-cluster.sh [stockd args...] - run a 3-node stockd demo cluster
# in the foreground.
#
# What `make run-cluster` runs after building.  Steps:
#   1. scripts/services.sh (Redis, MariaDB, RabbitMQ reachable), recording
#      the services it had to start
#   2. start the Redis shards that are not running yet (scripts/shards.sh)
#   3. start three nodes, "$STOCKD_BIN -config $STOCKD_CONFIG [args...]"
#      each, with these overrides:
#        node-1  http :8080  admin :8081  gossip 127.0.0.1:7946
#        node-2  http :8090  admin :8091  gossip 127.0.0.1:7947  join :7946
#        node-3  http :8100  admin :8101  gossip 127.0.0.1:7948  join :7946
#      Each node logs to var/run-cluster/node-N.log; the terminal shows the
#      same lines prefixed with [node-N].
#   4. wait until every /readyz answers, then until node-1's /admin/cluster
#      lists 3 alive members
#   5. create the demo SKU through node-1 and print a banner
#   6. wait until a signal, or until a node exits
# Ctrl-C / SIGTERM / SIGHUP / exit / a node exiting: SIGTERM to every node
# (SIGKILL after $RUN_STOP_TIMEOUT s), then stop the shards and the backing
# services THIS script started.  The exit status is non-zero if a node
# exited by itself.  Shared code: scripts/lib.sh.
#
# Settings (environment):
#   STOCKD_BIN [bin/stockd], STOCKD_CONFIG [configs/stockd.yaml]: used by
#       this script only and NOT passed on (the daemon rejects unknown
#       STOCKD_* variables).
#   Other STOCKD_* variables are passed on to every node, except the ones
#       set per node above (NODE_NAME, HTTP_ADDR, ADMIN_ADDR, GOSSIP_ADDR,
#       JOIN), which this script sets.
#   STOCKD_DEMO [1]: demo mode, passed on: without STOCKD_RESERVATION_SECRET
#       the nodes share a generated secret (var/demo-reservation-secret).
#   RUN_READY_TIMEOUT [30]  RUN_STOP_TIMEOUT [20]
#   RUN_CLUSTER_TIMEOUT [30]  seconds for the 3 nodes to see each other
#   RUN_CLUSTER_QUIET=1       don't copy the node logs to the terminal
#   RUN_SKIP_SERVICES=1       skip step 1 (no service is started or stopped)
# shellcheck disable=SC2317 # trap handlers are reached via trap
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
LOG_TAG=run-cluster
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

BIN=${STOCKD_BIN:-bin/stockd}
CONFIG=${STOCKD_CONFIG:-configs/stockd.yaml}
export -n STOCKD_BIN STOCKD_CONFIG
# Demo mode: without STOCKD_RESERVATION_SECRET, a node generates a random
# secret into var/demo-reservation-secret, which a restarted node and the
# other demo nodes (same directory) share; and the demo's published tokens
# of configs/stockd.yaml (dev-token, dev-read-token) are accepted.
# STOCKD_DEMO=0 turns it off (then set STOCKD_ADMIN_TOKEN, and
# STOCKD_READ_TOKEN or STOCKD_READ_TOKEN= for none).
export STOCKD_DEMO=${STOCKD_DEMO:-1}
READY_TIMEOUT=${RUN_READY_TIMEOUT:-30}
STOP_TIMEOUT=${RUN_STOP_TIMEOUT:-20}
CLUSTER_TIMEOUT=${RUN_CLUSTER_TIMEOUT:-30}
LOG_DIR=var/run-cluster

# The nodes: name, hot port, admin port, gossip port; node-1 is the seed.
NODES=(node-1 node-2 node-3)
HOT_PORTS=(8080 8090 8100)
ADMIN_PORTS=(8081 8091 8101)
GOSSIP_PORTS=(7946 7947 7948)
SEED=127.0.0.1:${GOSSIP_PORTS[0]}
ADMIN1=127.0.0.1:${ADMIN_PORTS[0]}

ADMIN_TOKEN=$(admin_token)
shard_ports

cleanup() {
	local rc=$?
	lib_cleanup
	exit "$rc"
}
on_signal() {
	log "got SIG$1, shutting down"
	exit "$2"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

# preflight: fail before starting anything
[ -x "$BIN" ] || die "$BIN not found or not executable (run 'make build' first)"
[ -f "$CONFIG" ] || die "config $CONFIG not found"
for p in "${HOT_PORTS[@]}" "${ADMIN_PORTS[@]}" "${GOSSIP_PORTS[@]}"; do
	port_open "127.0.0.1:$p" && die "port $p is already in use (another stockd running? make run?)"
done
mkdir -p "$LOG_DIR" || die "cannot create $LOG_DIR"

# 1. services
start_services

# 2. shards: start only the ones that are not running, remember them
start_shards

# 3. nodes
for i in "${!NODES[@]}"; do
	name=${NODES[$i]}
	logfile=$LOG_DIR/$name.log
	join=""
	[ "$i" -eq 0 ] || join=$SEED
	: >"$logfile" || die "cannot write $logfile"
	log "starting $name: http :${HOT_PORTS[$i]}, admin :${ADMIN_PORTS[$i]}, gossip 127.0.0.1:${GOSSIP_PORTS[$i]}${join:+, join $join} (log: $logfile)"
	# The node writes to its file, never to a pipe: a reader that dies
	# (Ctrl-C, terminal gone) must not take the node down with SIGPIPE.
	env=(-u STOCKD_JOIN) # node-1: the seed joins no one
	[ -z "$join" ] || env=(STOCKD_JOIN="$join")
	env+=(STOCKD_NODE_NAME="$name" STOCKD_HTTP_ADDR=":${HOT_PORTS[$i]}"
		STOCKD_ADMIN_ADDR=":${ADMIN_PORTS[$i]}" STOCKD_GOSSIP_ADDR="127.0.0.1:${GOSSIP_PORTS[$i]}")
	start_daemon "$name" env "${env[@]}" "$BIN" -config "$CONFIG" "$@" >"$logfile" 2>&1
	[ "${RUN_CLUSTER_QUIET:-0}" = 1 ] || follow_log "$name" "$logfile"
done

# 4. readiness, then membership
for i in "${!NODES[@]}"; do
	wait_ready "${NODES[$i]}" "${daemon_pids[$i]}" "127.0.0.1:${HOT_PORTS[$i]}" \
		"$READY_TIMEOUT" "$LOG_DIR/${NODES[$i]}.log"
done
log "all nodes are ready; waiting for them to see each other"

# check_nodes: if a node has exited, report it (and the end of its log) and
# exit non-zero.
check_nodes() {
	local i name rc
	for i in "${!daemon_pids[@]}"; do
		kill -0 "${daemon_pids[$i]}" 2>/dev/null && continue
		name=${NODES[$i]}
		wait "${daemon_pids[$i]}"
		rc=$?
		log "$name exited by itself with status $rc"
		show_log_tail "$LOG_DIR/$name.log"
		[ "$rc" -ne 0 ] || rc=1
		exit "$rc"
	done
}

deadline=$((SECONDS + CLUSTER_TIMEOUT))
alive=0
view=""
while :; do
	check_nodes
	view=$(curl -fsS -m 2 -H "Authorization: Bearer $ADMIN_TOKEN" "http://$ADMIN1/admin/cluster" 2>&1)
	alive=$(grep -oE '"state"[[:space:]]*:[[:space:]]*"alive"' <<<"$view" | wc -l)
	[ "$alive" -lt "${#NODES[@]}" ] || break
	if [ "$SECONDS" -ge "$deadline" ]; then
		view=$(tr -s ' \t\n' ' ' <<<"$view")
		[ "${#view}" -le 400 ] || view="${view:0:400}..."
		die "node-1 sees $alive alive member(s), not ${#NODES[@]}, after ${CLUSTER_TIMEOUT}s; GET /admin/cluster answered: $view"
	fi
	sleep 0.5
done
log "cluster formed: node-1 sees $alive alive members"

# 5. demo SKU, through node-1
create_demo_sku "$ADMIN1" "$ADMIN_TOKEN"

{
	echo
	echo "================================================================"
	echo " stockd cluster is running: ${NODES[*]}"
	echo
	for i in "${!NODES[@]}"; do
		printf '   %s  hot http://localhost:%s  admin :%s  gossip 127.0.0.1:%s  (pid %s)\n' \
			"${NODES[$i]}" "${HOT_PORTS[$i]}" "${ADMIN_PORTS[$i]}" "${GOSSIP_PORTS[$i]}" "${daemon_pids[$i]}"
	done
	echo
	echo " Deduct through each node:"
	echo
	for i in "${!NODES[@]}"; do
		echo "   curl -s -X POST localhost:${HOT_PORTS[$i]}/v1/deduct -d '{\"sku\":\"$DEMO_SKU\",\"qty\":1,\"request_id\":\"try-$((i + 1))\"}'"
	done
	echo
	echo " Members and who owns what:"
	echo
	echo "   curl -s -H 'Authorization: Bearer $ADMIN_TOKEN' localhost:${ADMIN_PORTS[0]}/admin/cluster"
	echo
	echo " Logs: $LOG_DIR/node-{1,2,3}.log.  Press Ctrl-C to stop all three."
	echo "================================================================"
	echo
}

# 6. wait until a signal (a trapped signal interrupts wait and exits) or a
# node exits.
while :; do
	check_nodes
	wait -n "${daemon_pids[@]}" 2>/dev/null || sleep 0.2
done
