#!/usr/bin/env bash
# scripts/services.sh [up]            make the backing services reachable
# scripts/services.sh stop NAME...    stop services (redis, mariadb, rabbitmq)
#
#   Redis     127.0.0.1:6379  (redis-cli ping)
#   MariaDB   127.0.0.1:3306  (root, empty password, over TCP)
#   RabbitMQ  127.0.0.1:5672  (AMQP handshake; guest/guest)
#
# For each service: use it if it answers; if it is installed but down, start
# it and wait (bounded) until it answers; if it is not installed and we are
# root with apt-get, install the Debian package and start it; otherwise print
# what is missing and exit non-zero.  Idempotent and fast when everything is
# already up.
#
# Recording: with SERVICES_STARTED_FILE set, "up" appends to that file the
# name (redis, mariadb or rabbitmq) of every service it started (or
# installed) itself, one per line, right after starting it; a service that
# already answered, or was already booting, is never written.  scripts/run.sh
# and scripts/run-cluster.sh use this to stop, on exit, exactly what they
# started, with "stop": redis-cli shutdown nosave; mysqladmin shutdown (over
# TCP; the pid file /run/mysqld/mysqld.pid if that fails and the port is
# 3306); rabbitmqctl stop.  "stop" stops what it is told to, so only ever
# pass it names that such a file recorded.  `make setup` records nothing.
#
# Overrides (all optional; deliberately not STOCKD_*: the daemon rejects
# unknown STOCKD_* variables):
#   SETUP_REDIS_HOST/SETUP_REDIS_PORT   default 127.0.0.1 / 6379
#   SETUP_MYSQL_HOST/SETUP_MYSQL_PORT   default 127.0.0.1 / 3306
#   SETUP_AMQP_HOST/SETUP_AMQP_PORT     default 127.0.0.1 / 5672
#   SETUP_TIMEOUT                       seconds to wait for a service we
#                                       started (default 60)
#   SETUP_NO_INSTALL=1                  never apt-get install anything
#   SERVICES_STARTED_FILE               see "Recording" above
set -uo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

REDIS_HOST=${SETUP_REDIS_HOST:-127.0.0.1}
REDIS_PORT=${SETUP_REDIS_PORT:-6379}
MYSQL_HOST=${SETUP_MYSQL_HOST:-127.0.0.1}
MYSQL_PORT=${SETUP_MYSQL_PORT:-3306}
AMQP_HOST=${SETUP_AMQP_HOST:-127.0.0.1}
AMQP_PORT=${SETUP_AMQP_PORT:-5672}
TIMEOUT=${SETUP_TIMEOUT:-60}
STARTED_FILE=${SERVICES_STARTED_FILE:-}

LOGDIR=${TMPDIR:-/tmp}
failed=0
mariadb_installed_now=0

say() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }

# started NAME: record that this script started service NAME.
started() {
	[ -z "$STARTED_FILE" ] || printf '%s\n' "$1" >>"$STARTED_FILE" ||
		err "services: WARNING - could not record $1 in $STARTED_FILE"
}

is_local() {
	case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

# as_root, can_root, apt_get_install
. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

# apt_install PKG...: install Debian packages if allowed and possible.
apt_install() {
	if [ "${SETUP_NO_INSTALL:-0}" = 1 ] || ! command -v apt-get >/dev/null 2>&1 || ! can_root; then
		return 1
	fi
	local log="$LOGDIR/stockd-apt.log"
	say "   installing $* with apt-get (log: $log) ..."
	apt_get_install "$log" "$@" || {
		err "   apt-get install $* failed, see $log"
		return 1
	}
}

# wait_for SECONDS CHECK...: poll CHECK every 0.5 s until it succeeds.
wait_for() {
	local secs=$1
	shift
	local deadline=$((SECONDS + secs))
	while ! "$@"; do
		[ "$SECONDS" -ge "$deadline" ] && return 1
		sleep 0.5
	done
}

# ---------------------------------------------------------------- Redis ----
redis_ok() {
	[ "$(timeout 3 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

redis_start() {
	as_root mkdir -p /var/lib/redis /var/log/redis || return 1
	as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
		--save "" --appendonly no --dir /var/lib/redis --logfile "$(redis_logfile)"
}

redis_logfile() {
	if [ "$REDIS_PORT" = 6379 ]; then
		echo /var/log/redis/ci.log
	else
		echo "/var/log/redis/ci-$REDIS_PORT.log"
	fi
}

ensure_redis() {
	local how="started"
	if command -v redis-cli >/dev/null 2>&1 && redis_ok; then
		say "redis: ok (already running on $REDIS_HOST:$REDIS_PORT)"
		return 0
	fi
	if ! is_local "$REDIS_HOST"; then
		err "redis: NOT reachable at $REDIS_HOST:$REDIS_PORT (remote host, not starting anything)"
		return 1
	fi
	if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
		if apt_install redis-server; then
			how="installed and started"
		else
			err "redis: MISSING - redis-server/redis-cli not installed."
			err "       install it with: sudo apt-get install -y redis-server"
			return 1
		fi
		# the package may have started it already
		if redis_ok; then
			started redis
			say "redis: ok (installed, running on $REDIS_HOST:$REDIS_PORT)"
			return 0
		fi
	fi
	if ! redis_start >"$LOGDIR/stockd-redis-start.log" 2>&1; then
		err "redis: FAILED to start (see $LOGDIR/stockd-redis-start.log, $(redis_logfile))"
		[ "$(id -u)" = 0 ] || err "       (not root and no passwordless sudo: start it yourself)"
		return 1
	fi
	started redis
	if wait_for 10 redis_ok; then
		say "redis: ok ($how on $REDIS_HOST:$REDIS_PORT)"
	else
		err "redis: FAILED - started but no PONG within 10s (see $(redis_logfile))"
		return 1
	fi
}

# -------------------------------------------------------------- MariaDB ----
MYSQL=""
find_mysql_client() {
	MYSQL=""
	if command -v mariadb >/dev/null 2>&1; then
		MYSQL=mariadb
	elif command -v mysql >/dev/null 2>&1; then
		MYSQL=mysql
	fi
	[ -n "$MYSQL" ]
}

MYSQL_ERR=""
mysql_ok() {
	MYSQL_ERR=$("$MYSQL" --connect-timeout=3 -h"$MYSQL_HOST" -P"$MYSQL_PORT" -uroot \
		--skip-password -N -B -e 'select 1' 2>&1 >/dev/null) && return 0
	return 1
}

# "Can't connect" means down; anything else (Access denied ...) means the
# server is up but refuses us.
mysql_up() {
	mysql_ok && return 0
	case "$MYSQL_ERR" in
	*"Can't connect"* | *"Lost connection"* | *"ERROR 2002"* | *"ERROR 2003"* | *"ERROR 2013"*) return 1 ;;
	*) return 0 ;;
	esac
}

mysql_start() {
	as_root mkdir -p /run/mysqld || return 1
	as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
	as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

# Only used right after we installed mariadb-server ourselves: let root log
# in over TCP from 127.0.0.1 with an empty password (dev/CI setup).
mysql_allow_root_tcp() {
	as_root "$MYSQL" -uroot -e "
		CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
		ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '';
		GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
		ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
		FLUSH PRIVILEGES;" >/dev/null 2>&1
}

mysql_auth_hint() {
	err "mariadb: FAILED - server answers on $MYSQL_HOST:$MYSQL_PORT but root with an empty password is refused:"
	err "         $MYSQL_ERR"
	err "         allow it (dev machines only) with:"
	err "         sudo mariadb -uroot -e \"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;\""
}

ensure_mariadb() {
	local how="started"
	if find_mysql_client && mysql_ok; then
		say "mariadb: ok (already running on $MYSQL_HOST:$MYSQL_PORT)"
		return 0
	fi
	if ! is_local "$MYSQL_HOST"; then
		err "mariadb: NOT reachable at $MYSQL_HOST:$MYSQL_PORT as root/empty password: ${MYSQL_ERR:-no client}"
		return 1
	fi
	if [ ! -x /usr/sbin/mariadbd ] || ! find_mysql_client; then
		if apt_install mariadb-server mariadb-client && find_mysql_client; then
			how="installed and started"
			mariadb_installed_now=1
			# the package may have started it already
			mysql_up && started mariadb
		else
			err "mariadb: MISSING - mariadb-server (/usr/sbin/mariadbd) or the mariadb client is not installed."
			err "         install it with: sudo apt-get install -y mariadb-server"
			return 1
		fi
	fi
	if ! mysql_up; then
		if ! mysql_start >"$LOGDIR/stockd-mariadb-start.log" 2>&1; then
			err "mariadb: FAILED to start (see $LOGDIR/stockd-mariadb-start.log)"
			[ "$(id -u)" = 0 ] || err "         (not root and no passwordless sudo: start it yourself)"
			return 1
		fi
		started mariadb
		if ! wait_for "$TIMEOUT" mysql_up; then
			err "mariadb: FAILED - started but not answering on $MYSQL_HOST:$MYSQL_PORT within ${TIMEOUT}s: $MYSQL_ERR"
			err "         check the server log (journal or /var/log/mysql/) and /etc/mysql/my.cnf"
			return 1
		fi
	else
		how="running"
	fi
	if ! mysql_ok && [ "$mariadb_installed_now" = 1 ]; then
		mysql_allow_root_tcp || true
	fi
	if mysql_ok; then
		say "mariadb: ok ($how on $MYSQL_HOST:$MYSQL_PORT)"
		return 0
	fi
	mysql_auth_hint
	return 1
}

# ------------------------------------------------------------- RabbitMQ ----
# Send the AMQP 0-9-1 protocol header and expect a method frame (type 1,
# Connection.Start) back: proves the broker is booted, not just the port.
# shellcheck disable=SC2016 # expanded by the inner bash
amqp_ok() {
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$0/$1" || exit 1
		printf "AMQP\x00\x00\x09\x01" >&3
		b=$(head -c1 <&3 | od -An -tx1 | tr -d " \n")
		[ "$b" = 01 ]' "$AMQP_HOST" "$AMQP_PORT" 2>/dev/null
}

ensure_rabbitmq() {
	local how="started"
	if amqp_ok; then
		say "rabbitmq: ok (already running on $AMQP_HOST:$AMQP_PORT)"
		return 0
	fi
	if ! is_local "$AMQP_HOST"; then
		err "rabbitmq: NOT reachable at $AMQP_HOST:$AMQP_PORT (remote host, not starting anything)"
		return 1
	fi
	if ! command -v rabbitmq-server >/dev/null 2>&1; then
		if apt_install rabbitmq-server; then
			how="installed and started"
		else
			err "rabbitmq: MISSING - rabbitmq-server is not installed."
			err "          install it with: sudo apt-get install -y rabbitmq-server"
			return 1
		fi
		if wait_for 5 amqp_ok; then
			started rabbitmq
			say "rabbitmq: ok (installed, running on $AMQP_HOST:$AMQP_PORT)"
			return 0
		fi
	fi
	# It may be booting already (node up, listener not yet): give it a
	# moment before starting a second node.
	if command -v rabbitmqctl >/dev/null 2>&1 &&
		as_root timeout 15 rabbitmqctl -q status >/dev/null 2>&1; then
		if [ "$how" = "installed and started" ]; then
			started rabbitmq # the package started it: ours all the same
		else
			how="was booting" # someone else started it: not ours to stop
		fi
	else
		if ! as_root rabbitmq-server -detached >"$LOGDIR/stockd-rabbitmq-start.log" 2>&1; then
			err "rabbitmq: FAILED to start (see $LOGDIR/stockd-rabbitmq-start.log, /var/log/rabbitmq/)"
			[ "$(id -u)" = 0 ] || err "          (not root and no passwordless sudo: start it yourself)"
			return 1
		fi
		started rabbitmq
	fi
	if command -v rabbitmqctl >/dev/null 2>&1; then
		# Waits until the node has finished booting (needs the node to be
		# reachable, so poll the port too).
		as_root timeout "$TIMEOUT" rabbitmqctl -q await_startup >/dev/null 2>&1 || true
	fi
	if wait_for "$TIMEOUT" amqp_ok; then
		say "rabbitmq: ok ($how on $AMQP_HOST:$AMQP_PORT)"
	else
		err "rabbitmq: FAILED - not answering AMQP on $AMQP_HOST:$AMQP_PORT within ${TIMEOUT}s"
		err "          check: rabbitmqctl status; logs in /var/log/rabbitmq/"
		return 1
	fi
}

# ------------------------------------------------------------------- go ----
check_go() {
	if command -v go >/dev/null 2>&1; then
		say "go: ok ($(go env GOVERSION 2>/dev/null || go version))"
	else
		err "go: WARNING - 'go' not found on PATH nor in /usr/local/go/bin; see https://go.dev/doc/install"
	fi
}

# ----------------------------------------------------------------- stop ----
# Only for services this script started (see "Recording" at the top).

stop_redis() {
	if ! redis_ok; then
		say "redis: not running on $REDIS_HOST:$REDIS_PORT"
		return 0
	fi
	timeout 10 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
	if wait_for 10 redis_not_ok; then
		say "redis: stopped ($REDIS_HOST:$REDIS_PORT)"
	else
		err "redis: FAILED to stop on $REDIS_HOST:$REDIS_PORT"
		return 1
	fi
}
# shellcheck disable=SC2317 # called via wait_for
redis_not_ok() { ! redis_ok; }

MYSQL_PIDFILE=/run/mysqld/mysqld.pid
stop_mariadb() {
	local admin="" pid=""
	if ! find_mysql_client || ! mysql_up; then
		say "mariadb: not running on $MYSQL_HOST:$MYSQL_PORT"
		return 0
	fi
	if command -v mariadb-admin >/dev/null 2>&1; then
		admin=mariadb-admin
	elif command -v mysqladmin >/dev/null 2>&1; then
		admin=mysqladmin
	fi
	if [ -z "$admin" ] || ! timeout 30 "$admin" --connect-timeout=3 -h"$MYSQL_HOST" \
		-P"$MYSQL_PORT" -uroot --skip-password shutdown >/dev/null 2>&1; then
		# e.g. root is refused over TCP.  The pid file is the server that
		# mysql_start started (default config): only trust it for 3306.
		if [ "$MYSQL_PORT" = 3306 ] && [ -r "$MYSQL_PIDFILE" ]; then
			pid=$(tr -dc 0-9 <"$MYSQL_PIDFILE")
		fi
		if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE 'mariadbd|mysqld'; then
			as_root kill -TERM "$pid" 2>/dev/null || true
		else
			err "mariadb: FAILED to stop on $MYSQL_HOST:$MYSQL_PORT (${admin:-mysqladmin} shutdown failed, no usable pid file)"
			return 1
		fi
	fi
	if wait_for "$TIMEOUT" mysql_down; then
		say "mariadb: stopped ($MYSQL_HOST:$MYSQL_PORT)"
	else
		err "mariadb: FAILED - still answering on $MYSQL_HOST:$MYSQL_PORT after ${TIMEOUT}s"
		return 1
	fi
}
# shellcheck disable=SC2317 # called via wait_for
mysql_down() { ! mysql_up; }

stop_rabbitmq() {
	if ! amqp_ok && ! { command -v rabbitmqctl >/dev/null 2>&1 &&
		as_root timeout 15 rabbitmqctl -q status >/dev/null 2>&1; }; then
		say "rabbitmq: not running on $AMQP_HOST:$AMQP_PORT"
		return 0
	fi
	if ! command -v rabbitmqctl >/dev/null 2>&1; then
		err "rabbitmq: FAILED to stop - rabbitmqctl not found"
		return 1
	fi
	as_root timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || true
	if wait_for "$TIMEOUT" amqp_not_ok; then
		say "rabbitmq: stopped ($AMQP_HOST:$AMQP_PORT)"
	else
		err "rabbitmq: FAILED - still answering on $AMQP_HOST:$AMQP_PORT after ${TIMEOUT}s"
		return 1
	fi
}
# shellcheck disable=SC2317 # called via wait_for
amqp_not_ok() { ! amqp_ok; }

usage() {
	err "usage: $0 [up] | stop redis|mariadb|rabbitmq..."
	exit 2
}

cmd=${1:-up}
[ $# -eq 0 ] || shift
case "$cmd" in
up)
	[ $# -eq 0 ] || usage
	ensure_redis || failed=1
	ensure_mariadb || failed=1
	ensure_rabbitmq || failed=1
	check_go
	if [ "$failed" != 0 ]; then
		err "services: some services are not available (see above)"
		exit 1
	fi
	;;
stop)
	for name in "$@"; do
		case "$name" in
		redis | mariadb | rabbitmq) ;;
		*) usage ;;
		esac
	done
	for name in "$@"; do
		case "$name" in
		redis) host=$REDIS_HOST ;;
		mariadb) host=$MYSQL_HOST ;;
		rabbitmq) host=$AMQP_HOST ;;
		esac
		if ! is_local "$host"; then
			err "$name: $host is a remote host, not stopping anything"
			continue
		fi
		case "$name" in
		redis) stop_redis || failed=1 ;;
		mariadb) stop_mariadb || failed=1 ;;
		rabbitmq) stop_rabbitmq || failed=1 ;;
		esac
	done
	if [ "$failed" != 0 ]; then
		err "services: some services did not stop (see above)"
		exit 1
	fi
	;;
-h | --help | help) usage ;;
*) usage ;;
esac
exit 0
