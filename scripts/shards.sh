#!/usr/bin/env bash
# scripts/shards.sh start|stop|status [PORT...]
#
# Manages the extra Redis instances ("shards") used by the stockd demo.
# Default ports: 7001 7002 7003 (override with arguments or with
# SHARD_PORTS="7001 7002").  Each instance lives in
# <repo>/var/redis/<port>/ (data, AOF, redis.pid, redis.log), listens on
# 127.0.0.1 only, appendonly yes / appendfsync everysec / no RDB snapshots.
#
#   start   starts every port that does not answer yet; an answering
#           instance is left alone and reported.
#   stop    shuts down only instances whose pidfile is ours
#           (var/redis/<port>/redis.pid); anything else is left alone.
#   status  prints each port's state; exits 0 iff all ports answer.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VARDIR="$ROOT/var/redis"
HOST=127.0.0.1

usage() {
	echo "usage: $0 start|stop|status [PORT...]   (default ports: ${SHARD_PORTS:-7001 7002 7003})" >&2
	exit 2
}

for bin in redis-server redis-cli; do
	if ! command -v "$bin" >/dev/null 2>&1; then
		echo "shards: $bin not found; install it with: sudo apt-get install -y redis-server" >&2
		exit 1
	fi
done

[ $# -ge 1 ] || usage
cmd=$1
shift
if [ $# -gt 0 ]; then
	ports=("$@")
else
	read -r -a ports <<<"${SHARD_PORTS:-7001 7002 7003}"
fi
for p in "${ports[@]}"; do
	if ! [[ "$p" =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
		echo "shards: bad port '$p'" >&2
		exit 2
	fi
done

dir_of() { echo "$VARDIR/$1"; }
pidfile_of() { echo "$VARDIR/$1/redis.pid"; }
rel() { echo "${1#"$ROOT"/}"; }

answers() {
	[ "$(timeout 2 redis-cli -h "$HOST" -p "$1" ping 2>/dev/null)" = PONG ]
}

# pidfile the instance on PORT reports (empty if it does not answer).
remote_pidfile() {
	timeout 2 redis-cli -h "$HOST" -p "$1" --raw config get pidfile 2>/dev/null | sed -n 2p
}

is_ours() { [ "$(remote_pidfile "$1")" = "$(pidfile_of "$1")" ]; }

# pid from our pidfile if that process is alive and is a redis-server.
our_pid() {
	local f pid
	f=$(pidfile_of "$1")
	[ -r "$f" ] || return 1
	pid=$(tr -dc 0-9 <"$f")
	[ -n "$pid" ] && alive "$pid" || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis-server || return 1
	echo "$pid"
}

# A zombie counts as gone (exited, just not reaped yet by init).
alive() {
	kill -0 "$1" 2>/dev/null || return 1
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[ "${stat%% *}" != Z ]
}
# shellcheck disable=SC2317 # called indirectly via wait_until
gone() { ! alive "$1"; }
# shellcheck disable=SC2317
silent() { ! answers "$1"; }

wait_until() { # SECONDS CMD...
	local deadline=$((SECONDS + $1))
	shift
	while ! "$@"; do
		[ "$SECONDS" -ge "$deadline" ] && return 1
		sleep 0.2
	done
}

start_one() {
	local port=$1 dir pidfile pid
	dir=$(dir_of "$port")
	pidfile=$(pidfile_of "$port")
	if answers "$port"; then
		if is_ours "$port"; then
			echo "shard $port: ok (already running, pid $(our_pid "$port" || echo '?'), $(rel "$dir"))"
		else
			echo "shard $port: ok (already answering, NOT managed by this script; left alone)"
		fi
		return 0
	fi
	mkdir -p "$dir" || return 1
	if [ -e "$pidfile" ] && ! our_pid "$port" >/dev/null; then
		rm -f "$pidfile" # stale
	fi
	if ! redis-server \
		--port "$port" --bind "$HOST" \
		--daemonize yes \
		--dir "$dir" \
		--pidfile "$pidfile" \
		--logfile "$dir/redis.log" \
		--appendonly yes --appendfsync everysec \
		--save ""; then
		echo "shard $port: FAILED to start (see $(rel "$dir")/redis.log)" >&2
		return 1
	fi
	if wait_until 10 answers "$port"; then
		echo "shard $port: started (pid $(our_pid "$port" || echo '?'), $(rel "$dir"))"
	else
		echo "shard $port: FAILED - no PONG within 10s; last log lines:" >&2
		tail -n 5 "$dir/redis.log" >&2 2>/dev/null
		return 1
	fi
}

stop_one() {
	local port=$1 pid
	pid=$(our_pid "$port") || pid=""
	if answers "$port"; then
		if ! is_ours "$port"; then
			echo "shard $port: running but NOT managed by this script (pidfile $(remote_pidfile "$port")); left alone"
			return 0
		fi
		timeout 10 redis-cli -h "$HOST" -p "$port" shutdown nosave >/dev/null 2>&1 || true
	elif [ -n "$pid" ]; then
		# ours but not answering (hung/loading): terminate via pidfile
		kill -TERM "$pid" 2>/dev/null || true
	else
		echo "shard $port: not running"
		rm -f "$(pidfile_of "$port")"
		return 0
	fi
	if [ -n "$pid" ] && ! wait_until 10 gone "$pid"; then
		echo "shard $port: did not exit in 10s, sending SIGKILL to pid $pid" >&2
		kill -KILL "$pid" 2>/dev/null || true
		wait_until 5 gone "$pid" || true
	fi
	if ! wait_until 5 silent "$port"; then
		echo "shard $port: FAILED to stop" >&2
		return 1
	fi
	rm -f "$(pidfile_of "$port")"
	echo "shard $port: stopped${pid:+ (pid $pid)}"
}

status_one() {
	local port=$1 pid
	if answers "$port"; then
		if is_ours "$port"; then
			pid=$(our_pid "$port") || pid="?"
			echo "shard $port: running (pid $pid, $(rel "$(dir_of "$port")"))"
		else
			echo "shard $port: running (not managed by this script)"
		fi
		return 0
	fi
	if pid=$(our_pid "$port"); then
		echo "shard $port: NOT answering (pid $pid alive; see $(rel "$(dir_of "$port")")/redis.log)"
	else
		echo "shard $port: stopped"
	fi
	return 1
}

rc=0
case "$cmd" in
start) for p in "${ports[@]}"; do start_one "$p" || rc=1; done ;;
stop) for p in "${ports[@]}"; do stop_one "$p" || rc=1; done ;;
status) for p in "${ports[@]}"; do status_one "$p" || rc=3; done ;;
*) usage ;;
esac
exit "$rc"
