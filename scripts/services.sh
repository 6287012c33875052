#!/usr/bin/env bash
# scripts/services.sh - make the backing services of stockd reachable.
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
# Overrides (all optional; deliberately not STOCKD_*: the daemon rejects
# unknown STOCKD_* variables):
#   SETUP_REDIS_HOST/SETUP_REDIS_PORT   default 127.0.0.1 / 6379
#   SETUP_MYSQL_HOST/SETUP_MYSQL_PORT   default 127.0.0.1 / 3306
#   SETUP_AMQP_HOST/SETUP_AMQP_PORT     default 127.0.0.1 / 5672
#   SETUP_TIMEOUT                       seconds to wait for a service we
#                                       started (default 60)
#   SETUP_NO_INSTALL=1                  never apt-get install anything
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

LOGDIR=${TMPDIR:-/tmp}
failed=0
mariadb_installed_now=0

say() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }

is_local() {
	case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

# Run a command as root: directly when we are root, via passwordless sudo
# otherwise.  Returns 126 when neither is possible.
as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		return 126
	fi
}

can_root() {
	[ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

# apt_install PKG...: install Debian packages if allowed and possible.
apt_install() {
	if [ "${SETUP_NO_INSTALL:-0}" = 1 ] || ! command -v apt-get >/dev/null 2>&1 || ! can_root; then
		return 1
	fi
	local log="$LOGDIR/stockd-apt.log"
	say "   installing $* with apt-get (log: $log) ..."
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >"$log" 2>&1; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update >>"$log" 2>&1 || true
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 || {
			err "   apt-get install $* failed, see $log"
			return 1
		}
	fi
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
		--save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
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
			say "redis: ok (installed, running on $REDIS_HOST:$REDIS_PORT)"
			return 0
		fi
	fi
	if ! redis_start >"$LOGDIR/stockd-redis-start.log" 2>&1; then
		err "redis: FAILED to start (see $LOGDIR/stockd-redis-start.log, /var/log/redis/ci.log)"
		[ "$(id -u)" = 0 ] || err "       (not root and no passwordless sudo: start it yourself)"
		return 1
	fi
	if wait_for 10 redis_ok; then
		say "redis: ok ($how on $REDIS_HOST:$REDIS_PORT)"
	else
		err "redis: FAILED - started but no PONG within 10s (see /var/log/redis/ci.log)"
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
			say "rabbitmq: ok (installed, running on $AMQP_HOST:$AMQP_PORT)"
			return 0
		fi
	fi
	# It may be booting already (node up, listener not yet): give it a
	# moment before starting a second node.
	if command -v rabbitmqctl >/dev/null 2>&1 &&
		as_root timeout 15 rabbitmqctl -q status >/dev/null 2>&1; then
		how="was booting"
	else
		if ! as_root rabbitmq-server -detached >"$LOGDIR/stockd-rabbitmq-start.log" 2>&1; then
			err "rabbitmq: FAILED to start (see $LOGDIR/stockd-rabbitmq-start.log, /var/log/rabbitmq/)"
			[ "$(id -u)" = 0 ] || err "          (not root and no passwordless sudo: start it yourself)"
			return 1
		fi
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

ensure_redis || failed=1
ensure_mariadb || failed=1
ensure_rabbitmq || failed=1
check_go

if [ "$failed" != 0 ]; then
	err "services: some services are not available (see above)"
	exit 1
fi
exit 0
