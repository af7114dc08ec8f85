#!/usr/bin/env bash
# Fails when ferry-core or ferry-pipeline depends (even indirectly) on a
# database driver, or a connector depends on another connector or on the
# pipeline: the dependency direction of ARCHITECTURE.md.
set -euo pipefail
cd "$(dirname "$0")/.."

drivers='^(rusqlite|libsqlite3-sys|tokio-postgres|postgres-protocol|postgres-types|pgwire-replication|mysql_async|mysql_common|async-nats|redis|object_store|ferry-sqlite|ferry-postgres|ferry-mysql) '
fail=0
for crate in ferry-core ferry-pipeline; do
    found=$(cargo tree -q -p "$crate" -e normal --prefix none | grep -E "$drivers" | sort -u || true)
    if [[ -n "$found" ]]; then
        echo "check-deps: $crate must not depend on a database driver, but depends on:" >&2
        echo "$found" >&2
        fail=1
    fi
done
for dir in crates/connectors/*/; do
    crate=$(basename "$dir")
    found=$(cargo tree -q -p "$crate" -e normal --prefix none | grep -E '^(ferry-pipeline|ferry-sqlite|ferry-postgres|ferry-mysql) ' | grep -v "^$crate " | sort -u || true)
    if [[ -n "$found" ]]; then
        echo "check-deps: connector $crate must depend only on ferry-core, but depends on:" >&2
        echo "$found" >&2
        fail=1
    fi
done
[[ $fail -eq 0 ]] && echo "check-deps: ok (core and pipeline are driver-free; connectors independent)"
exit $fail
