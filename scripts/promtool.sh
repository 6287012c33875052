#!/usr/bin/env bash
# scripts/promtool.sh - make promtool available for the alert-rules test
# (daemon/contrib_test.go runs `promtool check rules contrib/prometheus/alerts.yml`).
#
# If promtool (or PROMTOOL, if set) already runs, it does nothing else:
# idempotent and fast. Otherwise, when we are root (or have passwordless
# sudo) on a system with apt-get, it installs Debian's "prometheus" package
# (which ships /usr/bin/promtool) non-interactively, without starting the
# Prometheus server it also ships. Otherwise it prints what to do and exits 1.
#
# Overrides (optional; deliberately not STOCKD_*: the daemon rejects
# unknown STOCKD_* variables):
#   PROMTOOL            path of promtool to check (default: promtool on PATH,
#                       else /usr/bin/promtool); the test reads the same variable
#   SETUP_NO_INSTALL=1  never apt-get install anything
set -uo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
BIN=${PROMTOOL:-$(command -v promtool 2>/dev/null || echo /usr/bin/promtool)}

say() { printf 'promtool: %s\n' "$*"; }
err() { printf 'promtool: %s\n' "$*" >&2; }

works() { [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; }

if works; then
	exit 0
fi

. "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

if [ -n "${PROMTOOL:-}" ]; then
	err "$BIN (from PROMTOOL) is missing or does not run; fix the path or unset PROMTOOL"
	exit 1
fi
if [ "${SETUP_NO_INSTALL:-}" = 1 ] || ! command -v apt-get >/dev/null 2>&1 || ! can_root; then
	err "promtool is missing; the alert-rules test (daemon/contrib_test.go) needs it."
	err "Install it as root, e.g. on Debian/Ubuntu: apt-get install -y prometheus"
	err "(or point PROMTOOL at a promtool binary from prometheus.io/download)."
	exit 1
fi

say "installing Debian's prometheus package for promtool (apt-get install -y prometheus) ..."
log=${TMPDIR:-/tmp}/stockd-promtool-apt.log
# policy-rc.d exit 101: the package's Prometheus server is not started (we
# only want promtool); removed again whatever happens.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
	if as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"; then
		own_policy=1
	fi
fi
cleanup() { [ "$own_policy" = 0 ] || as_root rm -f "$policy"; }
trap cleanup EXIT
if ! apt_get_install "$log" prometheus; then
	err "apt-get install prometheus failed; last lines of $log:"
	tail -n 20 "$log" >&2
	exit 1
fi
BIN=/usr/bin/promtool
if ! works; then
	err "prometheus was installed but $BIN --version fails; see $log"
	exit 1
fi
say "installed: $("$BIN" --version 2>&1 | head -n 1)"
