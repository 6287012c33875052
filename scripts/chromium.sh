#!/usr/bin/env bash
# scripts/chromium.sh - make /usr/bin/chromium available for the status-page
# test (daemon/ui_test.go), which runs it headless.
#
# If /usr/bin/chromium (or CHROMIUM, if set) already runs, it does nothing
# else: idempotent and fast. Otherwise, when we are root (or have
# passwordless sudo) on a system with apt-get, it installs Debian's
# "chromium" package non-interactively. Otherwise it prints what to do and
# exits 1.
#
# Overrides (optional; deliberately not STOCKD_*: the daemon rejects
# unknown STOCKD_* variables):
#   CHROMIUM            path of the browser to check (default /usr/bin/chromium);
#                       the test reads the same variable
#   SETUP_NO_INSTALL=1  never apt-get install anything
set -uo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
BIN=${CHROMIUM:-/usr/bin/chromium}

say() { printf 'chromium: %s\n' "$*"; }
err() { printf 'chromium: %s\n' "$*" >&2; }

works() { [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; }

if works; then
	exit 0
fi

. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

if [ "$BIN" != /usr/bin/chromium ]; then
	err "$BIN (from CHROMIUM) is missing or does not run; fix the path or unset CHROMIUM"
	exit 1
fi
if [ "${SETUP_NO_INSTALL:-}" = 1 ] || ! command -v apt-get >/dev/null 2>&1 || ! can_root; then
	err "/usr/bin/chromium is missing; the status-page test (daemon/ui_test.go) needs it."
	err "Install it as root, e.g. on Debian/Ubuntu: apt-get install -y chromium"
	err "(or point CHROMIUM at another Chromium/Chrome binary)."
	exit 1
fi

say "installing Debian's chromium package (apt-get install -y chromium) ..."
export DEBIAN_FRONTEND=noninteractive
log=${TMPDIR:-/tmp}/stockd-chromium-apt.log
if ! apt_get_install "$log" chromium; then
	err "apt-get install chromium failed; last lines of $log:"
	tail -n 20 "$log" >&2
	exit 1
fi
if ! works; then
	err "chromium was installed but /usr/bin/chromium --version fails; see $log"
	exit 1
fi
say "installed: $("$BIN" --version 2>/dev/null)"
