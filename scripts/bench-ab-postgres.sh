#!/bin/bash
# A/B of two ferry binaries on the PostgreSQL snapshot, with the noise of
# separate runs taken out: two clusters (as `cargo xtask bench postgres`
# configures them) are set up once, the `bench postgres` table `t` is
# loaded once, then each binary copies it into a fresh target database,
# alternating, three times each; timed from spawn until `t` is recorded
# copied with its key built (as the bench times it). Needs root (initdb
# runs as the `postgres` user) and PostgreSQL 15 under /usr/lib/postgresql.
#
#   scripts/bench-ab-postgres.sh OLD_FERRY NEW_FERRY [ROWS]
set -u
B=/usr/lib/postgresql/15/bin
OLD=${1:?usage: bench-ab-postgres.sh OLD_FERRY NEW_FERRY [ROWS]}
NEW=${2:?usage: bench-ab-postgres.sh OLD_FERRY NEW_FERRY [ROWS]}
ROWS=${3:-5000000}
W=${TMPDIR:-/tmp}/ferry-ab-pg
for n in src dst; do runuser -u postgres -- $B/pg_ctl -D $W/$n stop -m immediate >/dev/null 2>&1; done
rm -rf $W; mkdir -p $W; chown postgres $W
port=55432
for n in src dst; do
  runuser -u postgres -- $B/initdb -D $W/$n -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync >/dev/null
  cat >> $W/$n/postgresql.conf <<EOT
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$W'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
shared_buffers = 256MB
fsync = off
full_page_writes = off
autovacuum = off
max_wal_size = 8GB
checkpoint_timeout = 30min
EOT
  printf 'local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' > $W/$n/pg_hba.conf
  runuser -u postgres -- $B/pg_ctl -D $W/$n -l $W/$n.log -w start >/dev/null
  port=$((port+1))
done
S="psql -X -q -h 127.0.0.1 -p 55432 -U postgres"
D="psql -X -q -h 127.0.0.1 -p 55433 -U postgres"
$S -c "CREATE DATABASE src"
$S -d src -c "CREATE TABLE t (id bigint NOT NULL, a int, b text, c timestamptz, d numeric(12,2))"
$S -d src -c "INSERT INTO t SELECT g, ((g * 2654435761) % 1000000000)::int, left(md5(g::text) || md5((g + 1)::text), 40 + (g % 21)::int), CASE WHEN g % 20 = 0 THEN NULL ELSE timestamptz '2020-01-01 00:00:00+00' + ((g * 7919) % 180000000) * interval '1 second' END, ((g * 7) % 10000000) / 100.0 FROM generate_series(1::bigint, $ROWS) g"
$S -d src -c "ALTER TABLE t ADD PRIMARY KEY (id)" -c "VACUUM ANALYZE t" -c "CHECKPOINT"
for i in 1 2 3; do
  for v in old new; do
    BIN=$OLD; [ $v = new ] && BIN=$NEW
    db=d_${v}_$i; name=p_${v}_$i
    $D -c "CREATE DATABASE $db"
    cat > $W/$name.toml <<EOT
name = "$name"
[source]
url = "postgres://postgres@127.0.0.1:55432/src"
[target]
url = "postgres://postgres@127.0.0.1:55433/$db"
[tables]
include = ["t"]
EOT
    $S -c CHECKPOINT; $D -c CHECKPOINT; sync
    start=$(date +%s.%N)
    FERRY_LOG=warn $BIN run $W/$name.toml > $W/$name.log 2>&1 &
    P=$!
    while true; do
      r=$($D -d $db -tAc "SELECT EXISTS (SELECT 1 FROM public._ferry_checkpoint WHERE pipeline = '$name' AND scope = 'table:public.t' AND value LIKE 't:6:copied%') AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass('public.t') AND contype = 'p')" 2>/dev/null)
      [ "$r" = "t" ] && break
      sleep 0.02
    done
    end=$(date +%s.%N)
    CPU=$(awk '{print ($14+$15)/100}' /proc/$P/stat)
    kill -TERM $P; wait $P
    echo "$v run $i: $(echo "$end - $start" | bc) s, ferry cpu $CPU s"
    $BIN teardown $W/$name.toml >/dev/null 2>&1 || $S -d src -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active" >/dev/null
    $D -c "DROP DATABASE $db"
  done
done
for n in src dst; do runuser -u postgres -- $B/pg_ctl -D $W/$n stop -m fast >/dev/null; done
