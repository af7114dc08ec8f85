//! `ferry verify` with MariaDB on either side: digests computed inside
//! MariaDB (each row's canonical encoding hashed with MD5) compared with
//! PostgreSQL's, SQLite's and another MariaDB's, so equal copies are shown
//! equal without their rows crossing, and injected differences are found
//! exactly.

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use ferry_testkit::{MariaDbServer, PostgresServer, eventually_blocking};

use crate::kit::{Dir, count, ferry, pg_number, spawn_run, terminate};
use crate::verify::{differences, json};

const ROWS: i64 = 30_000;

/// Every MySQL type a MariaDB digest encodes (no FLOAT/DOUBLE/BIT: those
/// tables are compared row by row).
const DDL: &str = "CREATE TABLE d (
    id int PRIMARY KEY,
    u64 bigint unsigned, u32 int unsigned, i8 tinyint, m mediumint, n decimal(30,10),
    c char(4), v varchar(20) CHARACTER SET latin1, tx text, b varbinary(8),
    dt date, tm time(6), dtm datetime(6), ts timestamp(6) NULL DEFAULT NULL, y year,
    j json, e enum('small','medium','large'), s set('a','b','c'), u uuid
) ENGINE=InnoDB";

const SEED: &str = "INSERT INTO d SELECT seq, 18446744073709551615 - seq, seq * 7, CAST(seq % 256 AS SIGNED) - 128,
    -3 * CAST(seq AS SIGNED), seq / 7, LEFT(MD5(seq), 4), CONCAT('caf\u{e9} \u{20ac}', seq),
    IF(seq % 10 = 0, NULL, CONCAT('text ', seq)), UNHEX(LPAD(HEX(seq), 8, '0')),
    '2000-01-01' + INTERVAL seq DAY, SEC_TO_TIME(seq * 1.5),
    '2000-01-01 00:00:00' + INTERVAL seq * 1000001 MICROSECOND,
    IF(seq % 7 = 0, NULL, FROM_UNIXTIME(1000000000 + seq) + INTERVAL seq MICROSECOND),
    1901 + seq % 255, CONCAT('{\"k\": ', seq, '}'), ELT(1 + seq % 3, 'small', 'medium', 'large'),
    ELT(1 + seq % 4, '', 'a', 'a,c', 'b,c'), UUID()
  FROM seq_1_to_30000";

fn source() -> (MariaDbServer, String) {
    let db = MariaDbServer::start();
    let url = db.create_database("shop");
    db.sql_in("shop", DDL);
    db.sql_in("shop", SEED);
    (db, url)
}

/// Runs `p` until `copied()` holds, then stops it.
fn copy(p: &std::path::Path, d: &Dir, copied: impl Fn() -> bool) {
    let run: Child = spawn_run(p, &d.path("run.log"));
    eventually_blocking("the copy", Duration::from_secs(120), || {
        copied().then_some(())
    });
    assert!(
        terminate(run).success(),
        "{}",
        std::fs::read_to_string(d.path("run.log")).unwrap_or_default()
    );
}

/// Verifies `p` as JSON: the exit code and the one table's report.
fn verify(p: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = ferry(&["verify", p.to_str().unwrap(), "--format", "json"]);
    (out.status.code(), json(&out))
}

fn expect(pairs: &[(&str, i64)]) -> BTreeSet<(String, i64)> {
    pairs.iter().map(|(k, id)| (k.to_string(), *id)).collect()
}

/// Equal copies are equal by digests alone: no range is read row by row.
fn assert_equal_by_digests(p: &std::path::Path, rows: i64) {
    let (code, report) = verify(p);
    let t = &report["tables"][0];
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        (&t["method"], &t["ranges_read"]),
        (&"digests".into(), &0.into()),
        "{t:#}"
    );
    assert_eq!(t["source_rows"], rows, "{t:#}");
    assert!(t["digest_ranges"].as_u64().unwrap() >= 2, "{t:#}");
}

#[test]
fn mariadb_and_postgresql_compare_by_digests_and_find_exactly_what_differs() {
    let (db, url) = source();
    let pg = PostgresServer::start();
    pg.create_database("dst");
    let d = Dir::new();
    let p = d.pipeline_between(&url, &pg.url_for("dst"), "");
    copy(&p, &d, || {
        pg_number(&pg, "dst", "SELECT count(*) FROM d") == ROWS
    });
    assert_equal_by_digests(&p, ROWS);

    pg.psql_in(
        "dst",
        "UPDATE d SET tx = tx || ' ' WHERE id = 7;
         UPDATE d SET tx = '' WHERE id = 10;
         UPDATE d SET ts = ts + interval '1 microsecond' WHERE id = 12345;
         UPDATE d SET n = n + 0.0000000001 WHERE id = 20000;
         UPDATE d SET v = 'cafe' WHERE id = 20001;
         DELETE FROM d WHERE id = 25000;
         INSERT INTO d (id) VALUES (70000);",
    );
    let (code, report) = verify(&p);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        differences(&report),
        expect(&[
            ("different", 7),
            ("different", 10),
            ("different", 12345),
            ("different", 20000),
            ("different", 20001),
            ("missing", 25000),
            ("extra", 70000),
        ]),
        "{report:#}"
    );
    let t = &report["tables"][0];
    assert_eq!(t["method"], "digests", "{t:#}");
    assert!(t["ranges_read"].as_u64().unwrap() >= 1, "{t:#}");
    drop(db);
}

#[test]
fn mariadb_digests_equal_sqlites_and_another_mariadbs() {
    let (db, url) = source();
    // Values PostgreSQL cannot hold: a negative and a long TIME, a latin1
    // text with cp1252's euro sign, empty text and bytes.
    db.sql_in(
        "shop",
        "INSERT INTO d (id, tm, v, tx, b, y) VALUES
            (40000, '-838:59:59.5', '\u{20ac}', '', X'', 2155),
            (40001, '100:00:00.000001', NULL, NULL, NULL, NULL)",
    );
    let rows = ROWS + 2;

    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(&url, &format!("sqlite:{}", target.display()), "");
    copy(&p, &d, || count(&target, "d") == rows);
    assert_equal_by_digests(&p, rows);

    let other = MariaDbServer::start();
    let copy_url = other.create_database("copy");
    let d2 = Dir::new();
    let p2 = d2.pipeline_between(&url, &copy_url, "");
    let copied = || {
        other
            .try_sql_in("copy", "SELECT count(*) FROM d")
            .is_ok_and(|n| n.trim() == rows.to_string())
    };
    copy(&p2, &d2, copied);
    assert_equal_by_digests(&p2, rows);

    other.sql_in(
        "copy",
        "UPDATE d SET tm = '-838:59:59.499999' WHERE id = 40000;
         UPDATE d SET y = 1902 WHERE id = 3;
         UPDATE d SET j = '{\"k\": 5 }' WHERE id = 5;
         DELETE FROM d WHERE id = 29999;",
    );
    let (code, report) = verify(&p2);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        differences(&report),
        expect(&[
            ("different", 3),
            ("different", 5),
            ("different", 40000),
            ("missing", 29999),
        ]),
        "{report:#}"
    );
    assert_eq!(report["tables"][0]["method"], "digests", "{report:#}");
}

#[test]
fn a_mariadb_target_digests_what_it_holds_as_the_sources_types() {
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE d (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER,
                             data BLOB, at TIMESTAMP, day DATE);
             WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 30000)
             INSERT INTO d SELECT n, 'name ' || n, CASE WHEN n % 9 = 0 THEN NULL ELSE n * 3 END,
                                  randomblob(4), '2024-01-02 03:04:05.' || printf('%06d', n),
                                  date('2000-01-01', '+' || n || ' days') FROM g;",
        )
        .unwrap();
    let db = MariaDbServer::start();
    let target = db.create_database("dst");
    let p = d.pipeline_between(&d.source_url(), &target, "");
    let copied = || {
        db.try_sql_in("dst", "SELECT count(*) FROM d")
            .is_ok_and(|n| n.trim() == "30000")
    };
    copy(&p, &d, copied);
    assert_equal_by_digests(&p, 30_000);

    db.sql_in(
        "dst",
        "UPDATE d SET name = 'Name 11' WHERE id = 11;
         UPDATE d SET qty = NULL WHERE id = 12;
         UPDATE d SET at = at + INTERVAL 1 MICROSECOND WHERE id = 29000;
         INSERT INTO d (id, name) VALUES (30001, 'extra');",
    );
    let (code, report) = verify(&p);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(
        differences(&report),
        expect(&[
            ("different", 11),
            ("different", 12),
            ("different", 29000),
            ("extra", 30001),
        ]),
        "{report:#}"
    );
    assert_eq!(report["tables"][0]["method"], "digests", "{report:#}");
}
