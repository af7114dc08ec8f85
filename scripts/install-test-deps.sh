#!/usr/bin/env bash
# Install the real servers that ferry's integration tests start
# (PostgreSQL, MariaDB, NATS) plus sqlite3, but only the ones whose
# binaries are missing. Idempotent: running it again installs nothing.
#
# Usage: scripts/install-test-deps.sh        (as root; Debian/Ubuntu, apt)
#
# When not root and something is missing, it prints the apt command to run
# and exits 1. The servers are never started as services: the test kit
# (crates/ferry-testkit) starts its own instances on 127.0.0.1.
set -euo pipefail

missing=()

have_initdb() {
    local f
    for f in /usr/lib/postgresql/*/bin/initdb; do
        [[ -x "$f" ]] && return 0
    done
    return 1
}

have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]; }

have_initdb || missing+=(postgresql)
have psql || missing+=(postgresql-client)
have mariadbd || missing+=(mariadb-server)
have mariadb || missing+=(mariadb-client)
have nats-server || missing+=(nats-server)
have sqlite3 || missing+=(sqlite3)
# Build dependencies: rusqlite links the system SQLite library.
[[ -e /usr/include/sqlite3.h ]] || missing+=(libsqlite3-dev)
have cc || missing+=(build-essential)
have pkg-config || missing+=(pkg-config)

# postgresql pulls in postgresql-client; do not list it twice.
if [[ " ${missing[*]-} " == *" postgresql "* ]]; then
    filtered=()
    for p in "${missing[@]}"; do
        [[ "$p" == postgresql-client ]] || filtered+=("$p")
    done
    missing=("${filtered[@]}")
fi

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-test-deps: nothing to install (postgresql, mariadb, nats-server, sqlite3 present)"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-test-deps: missing: ${missing[*]}" >&2
    echo "run as root:" >&2
    echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "install-test-deps: installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Verify that what we wanted is there now.
fail=0
have_initdb || { echo "install-test-deps: initdb still missing" >&2; fail=1; }
have mariadbd || { echo "install-test-deps: mariadbd still missing" >&2; fail=1; }
have nats-server || { echo "install-test-deps: nats-server still missing" >&2; fail=1; }
have sqlite3 || { echo "install-test-deps: sqlite3 still missing" >&2; fail=1; }
[[ $fail -eq 0 ]] || exit 1
echo "install-test-deps: installed: ${missing[*]}"
