//! SQLite and PostgreSQL → MariaDB on the real binary: the copy, live
//! changes, `ferry verify`, one runner per pipeline, `kill -9` during the
//! copy and during the stream, and bad target URLs.

use std::path::Path;
use std::time::Duration;

use ferry_testkit::{MariaDbServer, PostgresServer, eventually_blocking, free_port};

use crate::kit::{
    Dir, count, ferry, kill_after_copy_progress, run_to_exit, spawn_run, spawn_streaming,
    streams_started, terminate, text,
};

/// Lines `sql` returns in database `dst` (none while it cannot be read).
fn my_rows(db: &MariaDbServer, sql: &str) -> Vec<String> {
    db.try_sql_in("dst", sql)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A number `sql` returns in `dst`, or -1 while it cannot be read.
fn my_number(db: &MariaDbServer, sql: &str) -> i64 {
    my_rows(db, sql)
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

fn mariadb() -> MariaDbServer {
    let db = MariaDbServer::start();
    db.create_database("dst");
    db
}

/// SIGTERM ends the run with exit 0; `ferry verify` then finds the copy
/// equal.
fn stop_and_verify(child: std::process::Child, log: &Path, pipeline: &Path) {
    assert!(
        terminate(child).success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}

#[test]
fn sqlite_to_mariadb_copies_streams_verifies_and_admits_one_runner() {
    let db = mariadb();
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, joined DATE,
                                 balance DECIMAL(12,2), active BOOLEAN, avatar BLOB, seen DATETIME,
                                 score REAL);
             INSERT INTO users VALUES
               (1, 'ada', '2024-01-02', '12.50', 1, x'00ff', '2024-01-02 03:04:05.123456', 0.1),
               (2, 'bob', NULL, NULL, 0, NULL, NULL, NULL),
               (3, 'it''s \\ ünï 🦀', '1000-01-01', '-9999999999.99', 1, x'', '9999-12-31 23:59:59', -1e300);
             CREATE TABLE likes (user_id INTEGER, what TEXT);
             INSERT INTO likes VALUES (1, 'tea'), (1, 'tea'), (2, NULL);",
        )
        .unwrap();
    let p = d.pipeline_between(&d.source_url(), &db.url_for("dst"), "");
    let arg = p.to_str().unwrap();
    let log = d.path("run.log");
    let child = spawn_run(&p, &log);
    eventually_blocking("the snapshot", Duration::from_secs(60), || {
        (my_number(&db, "SELECT count(*) FROM users") == 3
            && my_number(&db, "SELECT count(*) FROM likes") == 3
            && streams_started(&log) == 1)
            .then_some(())
    });

    // A second runner of the pipeline is refused, and so is a reset.
    let (code, out) = run_to_exit(&["run", arg], Duration::from_secs(30));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("another ferry runs pipeline \"test\"")
            && out.contains("/dst")
            && out.contains("fix: stop the other `ferry run`"),
        "{out}"
    );
    let (code, out) = run_to_exit(&["reset", arg], Duration::from_secs(30));
    assert_eq!(code, 2, "reset under a running pipeline: {out}");

    d.source()
        .execute_batch(
            "BEGIN;
             UPDATE users SET name = 'Ada', balance = balance + 1 WHERE id = 1;
             DELETE FROM users WHERE id = 2;
             INSERT INTO users VALUES (4, 'cy', '2025-05-05', '0.10', 1, NULL, NULL, 2.5);
             COMMIT;
             UPDATE likes SET what = 'coffee' WHERE rowid = 2;
             DELETE FROM likes WHERE what IS NULL;",
        )
        .unwrap();
    eventually_blocking("the changes", Duration::from_secs(60), || {
        // (Row 3's text is checked by verify: the client's output escapes it.)
        (my_rows(&db, "SELECT CONCAT(id, ':', name, ':', COALESCE(balance, '-')) FROM users WHERE id <> 3 ORDER BY id")
            == ["1:Ada:13.50", "4:cy:0.10"]
            && my_rows(&db, "SELECT CONCAT(user_id, ':', what) FROM likes ORDER BY 1")
                == ["1:coffee", "1:tea"])
            .then_some(())
    });
    stop_and_verify(child, &log, &p);
}

/// A PostgreSQL table with one column of each common type, and rows at
/// their edges.
const PG_TYPES: &str = "
    CREATE TABLE t (
        id int8 PRIMARY KEY, i2 int2, i4 int4, amount numeric(12,2), ratio numeric,
        f8 float8, f4 float4, label text, code varchar(8), bytes bytea, day date,
        at_time time, at timestamp, at_tz timestamptz, uid uuid, doc jsonb, flag bool);
    INSERT INTO t VALUES
      (1, -32768, 2147483647, -1234567890.12, 3.141592653589793238462643383279,
       1.7976931348623157e308, 1.5, 'it''s \\ ünïcödé 🦀', 'abc  ', '\\x00ff27', '0001-01-01',
       '23:59:59.999999', '1970-01-01 00:00:00', '2024-02-29 12:34:56.789012+02',
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, 2.5, \"x\"], \"n\": null}', true),
      (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
      (3, 0, 0, 0, -0.000000000000000000000000000001, 5e-324, -3.4e38, '', '', '', '9999-12-31',
       '00:00:00', '9999-12-31 23:59:59.999999', '1970-01-01 00:00:00+00',
       '00000000-0000-0000-0000-000000000000', '[]', false);
    CREATE TABLE zero (id int PRIMARY KEY, f8 float8);
    INSERT INTO zero VALUES (1, '-0');";

#[test]
fn postgres_to_mariadb_keeps_every_type_through_copy_and_stream() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.psql_in("src", PG_TYPES);
    let db = mariadb();
    let d = Dir::new();
    let p = d.pipeline_between(&pg.url_for("src"), &db.url_for("dst"), "");
    let log = d.path("run.log");
    let child = spawn_run(&p, &log);
    eventually_blocking("the snapshot", Duration::from_secs(60), || {
        (my_number(&db, "SELECT count(*) FROM t") == 3 && streams_started(&log) == 1)
            .then_some(())
            .ok_or_else(|| crate::kit::log_tail(&log))
    });
    pg.psql_in(
        "src",
        "INSERT INTO t SELECT id + 10, i2, i4, amount, ratio, f8, f4, label, code, bytes, day,
                              at_time, at, at_tz, uid, doc, flag FROM t;
         UPDATE t SET label = 'changed', doc = '{\"b\": true}', at_tz = '2000-01-01 00:00:00-05',
                      ratio = 12345678901234567890.5, f8 = 0.1 + 0.2 WHERE id = 1;
         UPDATE t SET code = NULL, bytes = '\\xdeadbeef' WHERE id = 13;
         DELETE FROM t WHERE id = 2;",
    );
    eventually_blocking("the changes", Duration::from_secs(60), || {
        (my_rows(&db, "SELECT id FROM t ORDER BY id") == ["1", "3", "11", "12", "13"]
            && my_rows(&db, "SELECT label FROM t WHERE id = 1") == ["changed"]
            && my_rows(&db, "SELECT HEX(bytes) FROM t WHERE id = 13") == ["DEADBEEF"])
        .then_some(())
    });
    // Stored as MariaDB users would read them.
    assert_eq!(
        db.sql_in(
            "dst",
            "SELECT at_tz, uid, code, flag, doc, ratio FROM t WHERE id = 1"
        ),
        "2000-01-01 05:00:00.000000\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\tabc  \t1\t{\"b\": true}\t\
         12345678901234567890.500000000000000000000000000000"
    );
    assert!(terminate(child).success(), "{}", crate::kit::log_tail(&log));
    let v = ferry(&["verify", p.to_str().unwrap(), "--table", "public.t"]);
    assert!(v.status.success(), "verify: {}", text(&v));

    // MariaDB has no negative zero: -0 is stored as 0, which verify shows.
    assert_eq!(my_rows(&db, "SELECT f8 FROM zero"), ["0"]);
    let v = ferry(&["verify", p.to_str().unwrap(), "--table", "public.zero"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(text(&v).contains("f8"), "{}", text(&v));
}

/// The SQLite source of the crash test: `items` (a key) and `events` (no
/// key, identical rows), `rows` rows each.
fn crash_source(d: &Dir, rows: i64) {
    d.source()
        .execute_batch(&format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL);
             CREATE TABLE events (account INTEGER, amount INTEGER, note TEXT);
             WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {rows})
             INSERT INTO items SELECT n, 'item-' || n, n % 100 FROM g;
             INSERT INTO events SELECT id % 50, qty % 7, CASE WHEN id % 3 = 0 THEN NULL ELSE 'seed' END
               FROM items;"
        ))
        .unwrap();
}

/// What both sides must agree on: the items' count and sums, and the
/// keyless events as a multiset.
const CRASH_SQL: [&str; 2] = [
    "SELECT count(*) || '|' || coalesce(sum(id), 0) || '|' || coalesce(sum(qty), 0) FROM items",
    "SELECT account || '|' || amount || '|' || coalesce(note, '-') || '|' || count(*) FROM events \
     GROUP BY account, amount, note ORDER BY account, amount, coalesce(note, '-')",
];

fn sqlite_rows(d: &Dir, sql: &str) -> Vec<String> {
    let c = d.source();
    let mut st = c.prepare(sql).unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The MariaDB spelling of [`CRASH_SQL`].
fn my_crash_rows(db: &MariaDbServer, sql: &str) -> Vec<String> {
    let sql = sql
        .replace(
            "count(*) || '|' || coalesce(sum(id), 0) || '|' || coalesce(sum(qty), 0)",
            "CONCAT_WS('|', count(*), coalesce(sum(id), 0), coalesce(sum(qty), 0))",
        )
        .replace(
            "account || '|' || amount || '|' || coalesce(note, '-') || '|' || count(*)",
            "CONCAT_WS('|', account, amount, coalesce(note, '-'), count(*))",
        );
    my_rows(db, &sql)
}

/// Source changes of round `r`: new items and events, updates, deletes.
fn change_round(d: &Dir, r: i64) {
    let base = 1_000_000 + r * 1000;
    d.source()
        .execute_batch(&format!(
            "BEGIN;
             WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 200)
             INSERT INTO items SELECT {base} + n, 'new-' || n, n FROM g;
             UPDATE items SET qty = qty + 1 WHERE id % 97 = {r};
             DELETE FROM items WHERE id % 89 = {r} AND id < 1000000;
             INSERT INTO events VALUES ({r}, 1, 'round'), ({r}, 1, 'round');
             DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE account = {r} AND note = 'seed' LIMIT 2);
             UPDATE events SET note = 'moved' WHERE rowid = (SELECT rowid FROM events WHERE note IS NULL LIMIT 1);
             COMMIT;"
        ))
        .unwrap();
}

#[test]
fn kill_9_during_the_copy_and_the_stream_loses_and_doubles_nothing() {
    const ROWS: i64 = 60_000;
    let db = mariadb();
    let d = Dir::new();
    crash_source(&d, ROWS);
    let p = d.pipeline_between(
        &d.source_url(),
        &db.url_for("dst"),
        "[snapshot]\nchunk_rows = 1000\n",
    );
    let log = d.path("run.log");
    let copied = || my_number(&db, "SELECT count(*) FROM items").max(0);
    let mid_copy = (0..6)
        .filter(|_| kill_after_copy_progress(&p, &log, ROWS, &copied))
        .count();
    assert!(mid_copy > 0, "no kill landed in the middle of the copy");

    // Kills among live changes: each after the target applied some of
    // the round's changes.
    for r in 0..8 {
        let mut child = spawn_streaming(&p, &log);
        let before = my_crash_rows(&db, CRASH_SQL[0]);
        change_round(&d, r);
        eventually_blocking("some changes applied", Duration::from_secs(60), || {
            (my_crash_rows(&db, CRASH_SQL[0]) != before).then_some(())
        });
        if r % 2 == 1 {
            // Another round right before the kill: it lands mid-batch.
            change_round(&d, r + 100);
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    let child = spawn_run(&p, &log);
    eventually_blocking("the target catches up", Duration::from_secs(120), || {
        let differ: Vec<String> = CRASH_SQL
            .iter()
            .filter(|sql| sqlite_rows(&d, sql) != my_crash_rows(&db, sql))
            .map(|sql| {
                format!(
                    "source {:?}, target {:?}",
                    sqlite_rows(&d, sql).first(),
                    my_crash_rows(&db, sql).first()
                )
            })
            .collect();
        differ
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("{differ:?}\n{}", crate::kit::log_tail(&log)))
    });
    assert_eq!(
        count(&d.path("source.db"), "items"),
        my_number(&db, "SELECT count(*) FROM items")
    );
    stop_and_verify(child, &log, &p);
}

#[test]
fn bad_target_urls_fail_plainly_with_a_fix() {
    let db = mariadb();
    db.sql("CREATE USER 'app'@'%' IDENTIFIED BY 'right'; GRANT ALL ON dst.* TO 'app'@'%'");
    let d = Dir::new();
    d.source()
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
        .unwrap();
    let port = db.port();
    let cases = [
        (
            format!("mysql://app:wrong@127.0.0.1:{port}/dst"),
            vec!["Access denied", "fix: check the user and password"],
        ),
        (
            format!("mysql://root@127.0.0.1:{port}/nowhere"),
            vec!["Unknown database", "fix: create the database"],
        ),
        (
            format!("mysql://root@127.0.0.1:{port}/"),
            vec!["names no database", "fix: put the database in the URL"],
        ),
        (
            format!("mysql://root@127.0.0.1:{}/dst", free_port()),
            vec!["connection refused", "fix: check that MySQL/MariaDB runs"],
        ),
    ];
    for (url, expect) in cases {
        let p = d.pipeline_between(&d.source_url(), &url, "give_up_after = \"2s\"\n");
        let (code, out) = run_to_exit(&["run", p.to_str().unwrap()], Duration::from_secs(60));
        assert_eq!(code, 2, "{url}: {out}");
        assert!(!out.contains("panicked"), "{url}: {out}");
        for e in expect {
            assert!(out.contains(e), "{url}: {e:?} missing from:\n{out}");
        }
        assert!(
            !out.contains("wrong"),
            "the password is never printed: {out}"
        );
    }
}
