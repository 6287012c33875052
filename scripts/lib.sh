# shellcheck shell=bash
# scripts/lib.sh - shared by scripts/run.sh and scripts/run-cluster.sh.
# Sourced, not run.  The caller sets ROOT (the repository), CONFIG (the
# config file), LOG_TAG (prefix of its messages) and STOP_TIMEOUT, and
# calls lib_cleanup from its EXIT trap.
#
# Functions that start something remember it, so that lib_cleanup stops
# exactly that and nothing that was running before:
#   start_services  scripts/services.sh, recording what it starts
#   start_shards    the Redis shards of SHARD_PORTS that do not answer yet
#   start_daemon    a process in its own process group (setsid)
#   follow_log      a copy of a log file to the terminal, lines prefixed

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

daemon_pids=()    # started by start_daemon (process group leaders)
daemon_names=()   # their labels, same index
started_shards=() # ports of the shards we started
follower_pids=()  # started by follow_log (process group leaders)
services_file=""  # what scripts/services.sh recorded as started by it

log() { printf '%s: %s\n' "$LOG_TAG" "$*"; }
die() {
	printf '%s: ERROR: %s\n' "$LOG_TAG" "$*" >&2
	exit 1
}

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
# admin_token: STOCKD_ADMIN_TOKEN, else the config's, else dev-token.
admin_token() {
	local t=${STOCKD_ADMIN_TOKEN:-$(yaml_top admin_token)}
	echo "${t:-dev-token}"
}
# shard_ports: sets SHARD_PORTS to the local shard ports of the config.
shard_ports() {
	local a
	SHARD_PORTS=()
	while read -r a; do
		[ -n "$a" ] || continue
		case "${a%:*}" in
		127.0.0.1 | localhost | "") SHARD_PORTS+=("${a##*:}") ;;
		*) log "shard $a is not local, not starting it" ;;
		esac
	done < <(shard_addrs)
	[ "${#SHARD_PORTS[@]}" -gt 0 ] || SHARD_PORTS=(7001 7002 7003)
}

redis_answers() {
	[ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
}
# shellcheck disable=SC2016 # expanded by the inner bash
port_open() { # host:port
	timeout 1 bash -c 'exec 3<>"/dev/tcp/${0%:*}/${0##*:}"' "$1" 2>/dev/null
}

# start_services: scripts/services.sh, unless RUN_SKIP_SERVICES=1; it writes
# the services it starts itself to services_file (stopped by lib_cleanup).
start_services() {
	[ "${RUN_SKIP_SERVICES:-0}" != 1 ] || return 0
	services_file=$(mktemp "${TMPDIR:-/tmp}/stockd-run-services.XXXXXX") ||
		die "mktemp failed"
	SERVICES_STARTED_FILE=$services_file bash "$ROOT/scripts/services.sh" ||
		die "backing services are not available (see above)"
	if [ -s "$services_file" ]; then
		log "started $(awk '!seen[$0]++' "$services_file" | tr '\n' ' ')(stopped again on exit)"
	fi
}
stop_services() {
	local names=() i rev=()
	[ -n "$services_file" ] || return 0
	[ ! -r "$services_file" ] || mapfile -t names < <(grep -xE 'redis|mariadb|rabbitmq' "$services_file" | awk '!seen[$0]++')
	for ((i = ${#names[@]} - 1; i >= 0; i--)); do rev+=("${names[$i]}"); done
	if [ "${#rev[@]}" -gt 0 ]; then
		log "stopping the services started by this run: ${rev[*]}"
		bash "$ROOT/scripts/services.sh" stop "${rev[@]}"
	fi
	rm -f "$services_file"
	services_file=""
}

# start_shards: start the shards of SHARD_PORTS that do not answer yet and
# remember them in started_shards.
start_shards() {
	local p to_start=() running=()
	for p in "${SHARD_PORTS[@]}"; do
		if redis_answers "$p"; then running+=("$p"); else to_start+=("$p"); fi
	done
	if [ "${#to_start[@]}" -gt 0 ]; then
		started_shards=("${to_start[@]}") # set first: a partial start is cleaned up too
		bash "$ROOT/scripts/shards.sh" start "${to_start[@]}" || die "could not start the Redis shards"
	fi
	[ "${#running[@]}" -eq 0 ] || log "shards already running (left running on exit): ${running[*]}"
}
stop_shards() {
	[ "${#started_shards[@]}" -gt 0 ] || return 0
	bash "$ROOT/scripts/shards.sh" stop "${started_shards[@]}"
	started_shards=()
}

# start_daemon NAME CMD...: CMD in the background in its own process group
# (setsid), so that a Ctrl-C on the terminal reaches only the script, which
# then stops it with exactly one SIGTERM.  Sets daemon_pid.
start_daemon() {
	local name=$1
	shift
	if command -v setsid >/dev/null 2>&1; then
		setsid "$@" &
	else
		"$@" &
	fi
	daemon_pid=$!
	daemon_pids+=("$daemon_pid")
	daemon_names+=("$name")
}

# stop_daemons: SIGTERM every daemon still running (all at once), SIGKILL
# after STOP_TIMEOUT s, and reap them.
stop_daemons() {
	local i pid running=() deadline
	for i in "${!daemon_pids[@]}"; do
		pid=${daemon_pids[$i]}
		if kill -0 "$pid" 2>/dev/null; then
			log "stopping ${daemon_names[$i]} (pid $pid) ..."
			kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
			running+=("$i")
		else
			wait "$pid" 2>/dev/null # exited already (reported by the caller)
		fi
	done
	deadline=$((SECONDS + STOP_TIMEOUT))
	for i in "${running[@]}"; do
		pid=${daemon_pids[$i]}
		while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
			sleep 0.2
		done
	done
	for i in "${running[@]}"; do
		pid=${daemon_pids[$i]}
		if kill -0 "$pid" 2>/dev/null; then
			log "${daemon_names[$i]} did not stop within ${STOP_TIMEOUT}s, sending SIGKILL"
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
		fi
		wait "$pid" 2>/dev/null
		log "${daemon_names[$i]} stopped (exit status $?)"
	done
	daemon_pids=()
	daemon_names=()
}

# follow_log NAME FILE: show FILE's lines on stdout as "[NAME] line" until
# stop_followers.  Own session: a Ctrl-C on the terminal does not end it,
# so a daemon's shutdown lines show too; --pid: it ends with this script
# even if the script is SIGKILLed.
# shellcheck disable=SC2016 # expanded by the inner bash
follow_log() {
	local s=()
	! command -v setsid >/dev/null 2>&1 || s=(setsid)
	"${s[@]}" bash -c 'tail -n +1 --pid="$1" -F -- "$2" 2>/dev/null | sed -u "s/^/[$3] /"' \
		_ "$$" "$2" "$1" &
	follower_pids+=("$!")
}
stop_followers() {
	local pid
	[ "${#follower_pids[@]}" -gt 0 ] || return 0
	sleep 0.3 # let the last lines through
	for pid in "${follower_pids[@]}"; do
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${follower_pids[@]}"; do wait "$pid" 2>/dev/null; done
	follower_pids=()
}

# wait_ready NAME PID HOST:PORT TIMEOUT [LOGFILE]: until /readyz answers;
# dies if PID exits first (showing the end of LOGFILE) or on the timeout.
wait_ready() {
	local name=$1 pid=$2 addr=$3 deadline=$((SECONDS + $4)) logfile=${5:-} rc
	until curl -fsS -m 2 -o /dev/null "http://$addr/readyz" 2>/dev/null; do
		if ! kill -0 "$pid" 2>/dev/null; then
			wait "$pid"
			rc=$?
			show_log_tail "$logfile"
			die "$name exited with status $rc before becoming ready"
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			show_log_tail "$logfile"
			die "$name not ready within ${4}s (http://$addr/readyz)"
		fi
		sleep 0.3
	done
}
show_log_tail() {
	[ -n "${1:-}" ] && [ -s "$1" ] || return 0
	printf '%s: last lines of %s:\n' "$LOG_TAG" "$1" >&2
	tail -n 15 "$1" | sed 's/^/    /' >&2
}

DEMO_SKU=demo-1
DEMO_BODY='{"total":10000,"partitions":4,"chunk":100,"threshold":20}'

# create_demo_sku ADMIN_HOST:PORT TOKEN: PUT the demo SKU.  A failure is not
# fatal: e.g. the SKU may exist from a previous run.
create_demo_sku() {
	local out
	if out=$(curl -fsS -m 10 -X PUT -H "Authorization: Bearer $2" \
		-H 'Content-Type: application/json' -d "$DEMO_BODY" \
		"http://$1/admin/skus/$DEMO_SKU" 2>&1); then
		out=$(tr -s ' \t\n' ' ' <<<"$out")
		[ "${#out}" -le 160 ] || out="${out:0:160}..."
		log "created SKU $DEMO_SKU: $out"
	else
		log "WARNING: creating SKU $DEMO_SKU failed: $out"
	fi
}

# lib_cleanup: stop, in this order, the daemons, the log followers, the
# shards and the services this script started.  Call it from the EXIT trap.
lib_cleanup() {
	# Don't let a second Ctrl-C interrupt the (bounded) cleanup; the
	# commands run from here inherit the ignored signals.
	trap '' INT TERM HUP
	stop_daemons
	stop_followers
	stop_shards
	stop_services
}
