#!/usr/bin/env bash
# scripts/run.sh [stockd args...] - run the stockd demo in the foreground.
#
# What `make run` runs after building.  Steps:
#   1. scripts/services.sh (Redis, MariaDB, RabbitMQ reachable)
#   2. start the Redis shards that are not running yet (scripts/shards.sh)
#   3. start "$STOCKD_BIN -config $STOCKD_CONFIG [args...]" in the background
#   4. wait until http://<http_addr>/readyz answers
#   5. create the demo SKU through the admin API and print a banner
#   6. wait on the daemon
# Ctrl-C / SIGTERM / SIGHUP / exit: SIGTERM to the daemon (SIGKILL after
# $RUN_STOP_TIMEOUT s) and stop the shards THIS script started.
#
# Settings (environment first, like the daemon itself):
#   STOCKD_BIN [bin/stockd], STOCKD_CONFIG [configs/stockd.yaml]: used by
#       this script only and NOT passed on (the daemon rejects unknown
#       STOCKD_* variables).
#   STOCKD_HTTP_ADDR, STOCKD_ADMIN_ADDR, STOCKD_ADMIN_TOKEN, STOCKD_SHARDS:
#       daemon settings, passed on; when unset, http_addr, admin_addr,
#       admin_token and the shards' addrs are read from the config file
#       [defaults :8080, :8081, dev-token, 7001-7003].
#   RUN_READY_TIMEOUT [30]  RUN_STOP_TIMEOUT [20]
#   RUN_SKIP_SERVICES=1  skip step 1 (make run has just run `make setup`)
# shellcheck disable=SC2317 # trap handlers are reached via trap
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

BIN=${STOCKD_BIN:-bin/stockd}
CONFIG=${STOCKD_CONFIG:-configs/stockd.yaml}
export -n STOCKD_BIN STOCKD_CONFIG
READY_TIMEOUT=${RUN_READY_TIMEOUT:-30}
STOP_TIMEOUT=${RUN_STOP_TIMEOUT:-20}

# yaml_top KEY: value of a top-level "key: value" line of the config.
yaml_top() {
	[ -r "$CONFIG" ] || return 0
	sed -n -E "s/^$1:[[:space:]]*[\"']?([^\"'#[:space:]]*).*/\1/p" "$CONFIG" | head -n1
}
# shard_addrs: the addr of every entry of the top-level "shards:" list.
shard_addrs() {
	if [ -n "${STOCKD_SHARDS:-}" ]; then
		tr ',' '\n' <<<"$STOCKD_SHARDS" | sed -n -E 's/^[[:space:]]*[^=]+=[[:space:]]*([^[:space:]]+).*/\1/p'
	elif [ -r "$CONFIG" ]; then
		awk '/^shards:/ {f=1; next} /^[^[:space:]#-]/ {f=0} f' "$CONFIG" |
			grep -oE 'addr:[[:space:]]*["'"'"']?[^"'"'"',}[:space:]]+' | sed -E 's/^addr:[[:space:]]*["'"'"']?//'
	fi
}
# local_addr ADDR: host:port to reach a listen address from this machine.
local_addr() {
	local host=${1%:*} port=${1##*:}
	case "$host" in "" | 0.0.0.0 | "[::]" | "::" | localhost) host=127.0.0.1 ;; esac
	echo "$host:$port"
}

HOT_ADDR=$(local_addr "${STOCKD_HTTP_ADDR:-$(yaml_top http_addr)}")
ADMIN_ADDR=$(local_addr "${STOCKD_ADMIN_ADDR:-$(yaml_top admin_addr)}")
[ "$HOT_ADDR" != 127.0.0.1: ] || HOT_ADDR=127.0.0.1:8080
[ "$ADMIN_ADDR" != 127.0.0.1: ] || ADMIN_ADDR=127.0.0.1:8081
ADMIN_TOKEN=${STOCKD_ADMIN_TOKEN:-$(yaml_top admin_token)}
ADMIN_TOKEN=${ADMIN_TOKEN:-dev-token}
SHARD_PORTS=()
while read -r a; do
	[ -n "$a" ] || continue
	case "${a%:*}" in
	127.0.0.1 | localhost | "") SHARD_PORTS+=("${a##*:}") ;;
	*) printf 'run: shard %s is not local, not starting it\n' "$a" ;;
	esac
done < <(shard_addrs)
[ "${#SHARD_PORTS[@]}" -gt 0 ] || SHARD_PORTS=(7001 7002 7003)

DEMO_SKU=demo-1
DEMO_BODY='{"total":10000,"partitions":4,"chunk":100,"threshold":20}'

daemon_pid=""
started_shards=()

log() { printf 'run: %s\n' "$*"; }
die() {
	printf 'run: ERROR: %s\n' "$*" >&2
	exit 1
}

cleanup() {
	local rc=$?
	# Don't let a second Ctrl-C interrupt the (bounded) cleanup.
	trap '' INT TERM HUP
	if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
		log "stopping stockd (pid $daemon_pid) ..."
		# The daemon runs in its own process group (setsid): signal the group.
		kill -TERM -- "-$daemon_pid" 2>/dev/null || kill -TERM "$daemon_pid" 2>/dev/null
		local deadline=$((SECONDS + STOP_TIMEOUT))
		while kill -0 "$daemon_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
			sleep 0.2
		done
		if kill -0 "$daemon_pid" 2>/dev/null; then
			log "stockd did not stop within ${STOP_TIMEOUT}s, sending SIGKILL"
			kill -KILL -- "-$daemon_pid" 2>/dev/null || kill -KILL "$daemon_pid" 2>/dev/null
		fi
		wait "$daemon_pid" 2>/dev/null
		log "stockd stopped (exit status $?)"
	fi
	daemon_pid=""
	if [ "${#started_shards[@]}" -gt 0 ]; then
		bash "$ROOT/scripts/shards.sh" stop "${started_shards[@]}"
		started_shards=()
	fi
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

redis_answers() {
	[ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}
# shellcheck disable=SC2016 # expanded by the inner bash
port_open() { # host:port
	timeout 1 bash -c 'exec 3<>"/dev/tcp/${0%:*}/${0##*:}"' "$1" 2>/dev/null
}

# preflight: fail before starting anything
[ -x "$BIN" ] || die "$BIN not found or not executable (run 'make build' first)"
[ -f "$CONFIG" ] || die "config $CONFIG not found"
for a in "$HOT_ADDR" "$ADMIN_ADDR"; do
	port_open "$a" && die "$a is already in use (another stockd running?)"
done

# 1. services
if [ "${RUN_SKIP_SERVICES:-0}" != 1 ]; then
	bash "$ROOT/scripts/services.sh" || die "backing services are not available (see above)"
fi

# 2. shards: start only the ones that are not running, remember them
to_start=()
for p in "${SHARD_PORTS[@]}"; do
	redis_answers "$p" || to_start+=("$p")
done
if [ "${#to_start[@]}" -gt 0 ]; then
	started_shards=("${to_start[@]}") # set first: a partial start is cleaned up too
	bash "$ROOT/scripts/shards.sh" start "${to_start[@]}" || die "could not start the Redis shards"
fi
if [ "${#to_start[@]}" -lt "${#SHARD_PORTS[@]}" ]; then
	running=()
	for p in "${SHARD_PORTS[@]}"; do
		[[ " ${to_start[*]} " == *" $p "* ]] || running+=("$p")
	done
	log "shards already running (left running on exit): ${running[*]}"
fi

# 3. daemon
log "starting $BIN -config $CONFIG${*:+ $*}"
# setsid: own process group, so a Ctrl-C on the terminal reaches only this
# script, which then stops the daemon with exactly one SIGTERM.
if command -v setsid >/dev/null 2>&1; then
	setsid "$BIN" -config "$CONFIG" "$@" &
else
	"$BIN" -config "$CONFIG" "$@" &
fi
daemon_pid=$!

# 4. readiness
deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS -m 2 -o /dev/null "http://$HOT_ADDR/readyz" 2>/dev/null; do
	if ! kill -0 "$daemon_pid" 2>/dev/null; then
		wait "$daemon_pid"
		rc=$?
		daemon_pid=""
		die "stockd exited with status $rc before becoming ready"
	fi
	if [ "$SECONDS" -ge "$deadline" ]; then
		die "stockd not ready within ${READY_TIMEOUT}s (http://$HOT_ADDR/readyz)"
	fi
	sleep 0.3
done
log "stockd is ready (pid $daemon_pid)"

# 5. demo SKU (a failure is not fatal: e.g. the SKU may exist from a previous run)
if out=$(curl -fsS -m 10 -X PUT -H "Authorization: Bearer $ADMIN_TOKEN" \
	-H 'Content-Type: application/json' -d "$DEMO_BODY" \
	"http://$ADMIN_ADDR/admin/skus/$DEMO_SKU" 2>&1); then
	out=$(tr -s ' \t\n' ' ' <<<"$out")
	[ "${#out}" -le 160 ] || out="${out:0:160}..."
	log "created SKU $DEMO_SKU: $out"
else
	log "WARNING: creating SKU $DEMO_SKU failed: $out"
fi

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
daemon_pid=""
log "stockd exited with status $rc"
exit "$rc"
