# scripts/lib/apt.sh - sourced by the scripts that install Debian packages
# (services.sh, chromium.sh, promtool.sh): running as root, and one
# non-interactive install that updates a stale package index once.

# as_root runs its arguments as root: directly, or through passwordless sudo
# (126 when neither is possible).
as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		return 126
	fi
}

# can_root tells whether as_root can work.
can_root() {
	[ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

# apt_get_install LOG PACKAGE... installs the packages without questions or
# recommended packages, apt-get's output in LOG. A stale package index is
# the usual reason for a failed install: it updates the index once and
# tries again.
apt_get_install() {
	local log=$1
	shift
	_apt_get_install_once() {
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
	}
	_apt_get_install_once "$@" >"$log" 2>&1 && return 0
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1
	_apt_get_install_once "$@" >>"$log" 2>&1
}
