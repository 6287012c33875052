#!/usr/bin/env bash
# scripts/run-ha.sh [stockd args...] - the demo with one Sentinel-managed
# shard beside the standalone ones (what `make run-ha` runs after building).
#
#   1. start a Redis primary (:7101) and its replica (:7102), appendonly,
#      and three sentinels (:26401-26403, `redis-server sentinel.conf
#      --sentinel`) watching them as master set "stockd-ha"; everything
#      lives in var/ha/<port>/ and is started fresh
#   2. write var/ha/stockd.yaml: the config file (STOCKD_CONFIG, default
#      configs/stockd.yaml) with one more shard, s-ha, of kind sentinel
#      (durability HA_DURABILITY: aof by default, so the sale on s-ha goes
#      on by itself after the failover; replica waits for 1 replica in the
#      same pipeline: nothing acknowledged lost, but with the one replica
#      promoted s-ha answers 503 until the old primary is back as replica)
#   3. run scripts/run.sh with it (services, standalone shards, the node,
#      the demo SKU), in the foreground
# Ctrl-C stops run.sh (which stops what it started), then the primary,
# replica and sentinels this script started.
#
# Then kill the primary and watch the sale go on:
#   kill -9 "$(cat var/ha/7101/redis.pid)"
#   curl -s -H 'Authorization: Bearer dev-token' localhost:8081/admin/shards
# Sentinel promotes the replica within a few seconds; stockd follows it
# without an admin call (GET /admin/shards: master, failovers,
# last_failover; metric stockd_shard_failovers_total). Deductions homed on
# s-ha answer 503 meanwhile (retry with the same request_id). Restart the
# old primary (the banner shows the command) and Sentinel makes it the new
# replica (HA_DURABILITY=replica needs that before s-ha sells again).
#
# Settings: HA_PRIMARY_PORT [7101], HA_REPLICA_PORT [7102],
# HA_SENTINEL_PORTS ["26401 26402 26403"], HA_SET [stockd-ha],
# HA_DURABILITY [aof] (aof or replica),
# STOCKD_CONFIG [configs/stockd.yaml].
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
HA_DIR=$ROOT/var/ha
PRIMARY=${HA_PRIMARY_PORT:-7101}
REPLICA=${HA_REPLICA_PORT:-7102}
read -r -a SENTINELS <<<"${HA_SENTINEL_PORTS:-26401 26402 26403}"
SET=${HA_SET:-stockd-ha}
DURABILITY=${HA_DURABILITY:-aof}
case "$DURABILITY" in
aof) durability="durability: aof" ;;
replica) durability="durability: replica, replicas: 1, wait_timeout: 1s" ;;
*) echo "run-ha: HA_DURABILITY must be aof or replica" >&2; exit 2 ;;
esac
CONFIG=${STOCKD_CONFIG:-configs/stockd.yaml}

log() { echo "run-ha: $*" >&2; }
die() {
	log "$*"
	exit 1
}
answers() { [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

for bin in redis-server redis-cli; do
	command -v "$bin" >/dev/null 2>&1 || die "$bin not found (make setup installs it)"
done
[ -f "$CONFIG" ] || die "config $CONFIG not found"
for p in "$PRIMARY" "$REPLICA" "${SENTINELS[@]}"; do
	answers "$p" && die "port $p already answers (another run-ha running? stop it first)"
done

started=()
cleanup() {
	local rc=$? p pid
	trap '' INT TERM HUP
	for p in "${started[@]}"; do
		pid=$(cat "$HA_DIR/$p/redis.pid" 2>/dev/null) || continue
		[ -n "$pid" ] && kill "$pid" 2>/dev/null && log "stopped :$p (pid $pid)"
	done
	exit "$rc"
}
trap cleanup EXIT
# run.sh gets the same Ctrl-C (process group) and stops its own things;
# this script waits for it, then cleans up.
trap ':' INT TERM HUP

# start_redis PORT [args...]: a fresh instance in var/ha/PORT.
start_redis() {
	local port=$1
	shift
	rm -rf "${HA_DIR:?}/$port" && mkdir -p "$HA_DIR/$port" || die "cannot make $HA_DIR/$port"
	redis-server --port "$port" --bind 127.0.0.1 --protected-mode no --dir "$HA_DIR/$port" \
		--appendonly yes --appendfsync everysec --save "" --repl-diskless-sync-delay 0 \
		--daemonize yes --pidfile "$HA_DIR/$port/redis.pid" --logfile "$HA_DIR/$port/redis.log" "$@" ||
		die "redis-server :$port did not start (see $HA_DIR/$port/redis.log)"
	started+=("$port")
	for _ in $(seq 50); do answers "$port" && return 0; sleep 0.1; done
	die "redis :$port does not answer (see $HA_DIR/$port/redis.log)"
}

start_sentinel() {
	local port=$1
	rm -rf "${HA_DIR:?}/$port" && mkdir -p "$HA_DIR/$port" || die "cannot make $HA_DIR/$port"
	cat >"$HA_DIR/$port/sentinel.conf" <<CONF
port $port
bind 127.0.0.1
protected-mode no
dir $HA_DIR/$port
daemonize yes
pidfile $HA_DIR/$port/redis.pid
logfile $HA_DIR/$port/redis.log
sentinel monitor $SET 127.0.0.1 $PRIMARY 2
sentinel down-after-milliseconds $SET 2000
sentinel failover-timeout $SET 10000
sentinel parallel-syncs $SET 1
CONF
	redis-server "$HA_DIR/$port/sentinel.conf" --sentinel || die "sentinel :$port did not start"
	started+=("$port")
	for _ in $(seq 50); do answers "$port" && return 0; sleep 0.1; done
	die "sentinel :$port does not answer (see $HA_DIR/$port/redis.log)"
}

# 1. primary, replica, sentinels
start_redis "$PRIMARY"
start_redis "$REPLICA" --replicaof 127.0.0.1 "$PRIMARY"
for _ in $(seq 100); do
	redis-cli -p "$PRIMARY" info replication | grep -q 'state=online' && break
	sleep 0.1
done
sentinel_addrs=()
for p in "${SENTINELS[@]}"; do
	start_sentinel "$p"
	sentinel_addrs+=("\"127.0.0.1:$p\"")
done
log "master set $SET: primary :$PRIMARY, replica :$REPLICA, sentinels ${SENTINELS[*]}"

# 2. the config with the sentinel shard
mkdir -p "$HA_DIR"
ha_config=$HA_DIR/stockd.yaml
addrs=$(
	IFS=,
	echo "${sentinel_addrs[*]}"
)
awk -v entry="  - {id: s-ha, sentinel: {master_set: $SET, addrs: [$addrs]}, $durability}" \
	'{print} /^shards:/ {print entry}' "$CONFIG" >"$ha_config" || die "cannot write $ha_config"
grep -q 'id: s-ha' "$ha_config" || die "$CONFIG has no top-level shards: list to add s-ha to"
log "config $ha_config: $CONFIG plus shard s-ha (kind sentinel, $durability)"
cat <<EOF >&2

 Sentinel shard s-ha: kill its primary mid-sale and watch stockd follow:
   kill -9 "\$(cat $HA_DIR/$PRIMARY/redis.pid)"
   redis-cli -p ${SENTINELS[0]} sentinel get-master-addr-by-name $SET
   curl -s -H 'Authorization: Bearer <admin token>' localhost:8081/admin/shards
 Bring the old primary back (Sentinel makes it the new master's replica):
   redis-server --port $PRIMARY --dir $HA_DIR/$PRIMARY --appendonly yes --daemonize yes --pidfile $HA_DIR/$PRIMARY/redis.pid --logfile $HA_DIR/$PRIMARY/redis.log

EOF

# 3. the demo, in the foreground: started with & it would ignore Ctrl-C
# (a non-interactive shell's background jobs do, and cannot trap it).
STOCKD_CONFIG=$ha_config bash "$ROOT/scripts/run.sh" "$@"
exit $?
