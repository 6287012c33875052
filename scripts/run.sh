#!/usr/bin/env bash
# scripts/run.sh [stockd args...] - run the stockd demo in the foreground.
#
# What `make run` runs after building.  Steps:
#   1. scripts/services.sh (Redis, MariaDB, RabbitMQ reachable), recording
#      the services it had to start
#   2. start the Redis shards that are not running yet (scripts/shards.sh)
#   3. start "$STOCKD_BIN -config $STOCKD_CONFIG [args...]" in the background
#   4. wait until http://<http_addr>/readyz answers
#   5. create the demo SKU through the admin API and print a banner
#   6. wait on the daemon
# Ctrl-C / SIGTERM / SIGHUP / exit: SIGTERM to the daemon (SIGKILL after
# $RUN_STOP_TIMEOUT s), then stop the shards and the backing services THIS
# script started (never one that was running before).  Shared code:
# scripts/lib.sh.
#
# Settings (environment first, like the daemon itself):
#   STOCKD_BIN [bin/stockd], STOCKD_CONFIG [configs/stockd.yaml]: used by
#       this script only and NOT passed on (the daemon rejects unknown
#       STOCKD_* variables).
#   STOCKD_HTTP_ADDR, STOCKD_ADMIN_ADDR, STOCKD_ADMIN_TOKEN, STOCKD_SHARDS:
#       daemon settings, passed on; when unset, http_addr, admin_addr,
#       admin_token and the shards' addrs are read from the config file
#       [defaults :8080, :8081, dev-token, 7001-7003].
#   STOCKD_DEMO [1]: demo mode, passed on: without STOCKD_RESERVATION_SECRET
#       the nodes share a generated secret (var/demo-reservation-secret).
#   RUN_READY_TIMEOUT [30]  RUN_STOP_TIMEOUT [20]
#   RUN_SKIP_SERVICES=1  skip step 1 (then no service is started or stopped)
# shellcheck disable=SC2317 # trap handlers are reached via trap
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
LOG_TAG=run
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

HOT_ADDR=$(local_addr "${STOCKD_HTTP_ADDR:-$(yaml_top http_addr)}")
ADMIN_ADDR=$(local_addr "${STOCKD_ADMIN_ADDR:-$(yaml_top admin_addr)}")
[ "$HOT_ADDR" != 127.0.0.1: ] || HOT_ADDR=127.0.0.1:8080
[ "$ADMIN_ADDR" != 127.0.0.1: ] || ADMIN_ADDR=127.0.0.1:8081
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
for a in "$HOT_ADDR" "$ADMIN_ADDR"; do
	port_open "$a" && die "$a is already in use (another stockd running?)"
done

# 1. services
start_services

# 2. shards: start only the ones that are not running, remember them
start_shards

# 3. daemon
log "starting $BIN -config $CONFIG${*:+ $*}"
start_daemon stockd "$BIN" -config "$CONFIG" "$@"

# 4. readiness
wait_ready stockd "$daemon_pid" "$HOT_ADDR" "$READY_TIMEOUT"
log "stockd is ready (pid $daemon_pid)"

# 5. demo SKU
create_demo_sku "$ADMIN_ADDR" "$ADMIN_TOKEN"

hot_port=${HOT_ADDR##*:}
admin_port=${ADMIN_ADDR##*:}
cat <<EOF

================================================================
 stockd is running (pid $daemon_pid). Try:

   curl -s -X POST localhost:$hot_port/v1/deduct -d '{"sku":"$DEMO_SKU","qty":1,"request_id":"try-1"}'
   curl -s -H 'Authorization: Bearer $ADMIN_TOKEN' localhost:$admin_port/admin/skus/$DEMO_SKU

 Press Ctrl-C to stop.
================================================================

EOF

# 6. wait for the daemon (a trapped signal interrupts wait and exits)
while :; do
	wait "$daemon_pid"
	rc=$?
	kill -0 "$daemon_pid" 2>/dev/null || break
done
log "stockd exited with status $rc"
exit "$rc"
