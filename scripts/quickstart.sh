#!/usr/bin/env bash
# Builds ferry and runs its main job on the embedded default: a sample
# SQLite "shop" database is replicated to a second SQLite file, live changes
# are made while ferry runs and shown arriving, then `ferry verify` compares
# the two. Needs no server. Leaves its files in $FERRY_DEMO_DIR (default: a
# new temporary directory) so you can look at them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sqlite3 >/dev/null || need+=(sqlite3)
[[ -e /usr/include/sqlite3.h ]] || need+=(libsqlite3-dev)
command -v cc >/dev/null || need+=(build-essential)
if [[ ${#need[@]} -gt 0 ]]; then
    if [[ "$(id -u)" -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    else
        echo "quickstart: please install: ${need[*]} (apt-get install ${need[*]})" >&2
        exit 1
    fi
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry-target}"
echo "== building ferry (release)"
cargo build --release -q -p ferry
ferry="$CARGO_TARGET_DIR/release/ferry"

demo="${FERRY_DEMO_DIR:-$(mktemp -d /tmp/ferry-quickstart.XXXXXX)}"
mkdir -p "$demo"
rm -f "$demo"/shop.db* "$demo"/replica.db*
echo "== creating a sample source database: $demo/shop.db"
sqlite3 "$demo/shop.db" <<'SQL'
PRAGMA journal_mode = WAL;
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT, joined DATE);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, total DECIMAL(10,2), placed DATETIME);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO customers SELECT i, 'customer ' || i, CASE i % 3 WHEN 0 THEN 'FR' WHEN 1 THEN 'DE' ELSE 'US' END, date('2024-01-01', '+' || (i % 365) || ' days') FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
INSERT INTO orders SELECT i, 1 + i % 1000, printf('%.2f', (i % 997) * 1.25), datetime('2024-06-01', '+' || i || ' minutes') FROM n;
SQL

cat > "$demo/pipeline.toml" <<TOML
# Replicate the shop database to a replica, continuously.
name = "quickstart"

[source]
url = "sqlite:$demo/shop.db"

[target]
url = "sqlite:$demo/replica.db"

[apply]
batch_rows = 1000
batch_time = "500ms"
TOML
echo "== pipeline file: $demo/pipeline.toml"
cat "$demo/pipeline.toml"

echo "== ferry check"
"$ferry" check "$demo/pipeline.toml"

echo "== ferry run (in the background)"
"$ferry" run "$demo/pipeline.toml" 2>"$demo/ferry.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT

wait_for() { # wait_for DESCRIPTION SQL EXPECTED
    for _ in $(seq 1 300); do
        got=$(sqlite3 "$demo/replica.db" "$2" 2>/dev/null || true)
        if [[ "$got" == "$3" ]]; then echo "   $1: $got"; return 0; fi
        sleep 0.1
    done
    echo "quickstart: timed out waiting for: $1 (last: ${got:-nothing}); log:" >&2
    cat "$demo/ferry.log" >&2
    exit 1
}
wait_for "snapshot copied (customers, orders)" "SELECT (SELECT count(*) FROM customers) || ',' || (SELECT count(*) FROM orders)" "1000,5000"

echo "== making live changes on the source"
sqlite3 "$demo/shop.db" <<'SQL'
BEGIN;
INSERT INTO customers VALUES (1001, 'new customer', 'NL', '2025-11-25');
INSERT INTO orders VALUES (5001, 1001, '99.90', '2025-11-25 10:00:00');
UPDATE customers SET name = 'renamed customer' WHERE id = 1;
DELETE FROM orders WHERE id = 2;
COMMIT;
SQL
wait_for "new order arrived" "SELECT customer_id || ' paid ' || printf('%.2f', total) FROM orders WHERE id = 5001" "1001 paid 99.90"
wait_for "update arrived" "SELECT name FROM customers WHERE id = 1" "renamed customer"
wait_for "delete arrived" "SELECT count(*) FROM orders WHERE id = 2" "0"

sleep 1.5  # let the running pipeline publish a status that includes the changes
echo "== ferry status"
"$ferry" status "$demo/pipeline.toml" || true

echo "== stopping ferry (SIGTERM drains the apply workers)"
kill -TERM $pid
wait $pid
trap - EXIT

echo "== ferry verify"
"$ferry" verify "$demo/pipeline.toml"
echo "== done: files in $demo"
