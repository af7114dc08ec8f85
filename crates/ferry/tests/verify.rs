//! `ferry verify` on live systems: no false differences while a pipeline
//! replicates a write load, every injected difference found, a table
//! missing on the target reported (not an abort), a closed output pipe.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_testkit::eventually_blocking;
use rand::Rng;

use crate::kit::{Dir, FERRY, count, ferry, open, spawn_streaming, terminate, text};

const ROWS: i64 = 2_000;

/// Source `acct(id, n, note)` with ids 1..=ROWS.
fn source(d: &Dir) {
    d.source()
        .execute_batch(&format!(
            "CREATE TABLE acct (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, note TEXT);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS})
             INSERT INTO acct SELECT i, i, 'row ' || i FROM s;"
        ))
        .unwrap();
}

/// Writes to the source until stopped: updates of ids above 10, inserts
/// and deletes of ids above 100,000, a transaction each.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(d: &Dir) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), done.clone());
        let path = d.path("source.db");
        let handle = std::thread::spawn(move || {
            let c = open(&path);
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut rng = rand::rng();
            let mut next = 100_001i64;
            while !s.load(Ordering::Relaxed) {
                match rng.random_range(0..10) {
                    0..=5 => {
                        let id = rng.random_range(11..=ROWS);
                        c.execute("UPDATE acct SET n = n + 1 WHERE id = ?1", [id])
                    }
                    6..=7 => {
                        next += 1;
                        c.execute("INSERT INTO acct VALUES (?1, 0, 'new')", [next])
                    }
                    _ => c.execute("DELETE FROM acct WHERE id = ?1", [next]),
                }
                .unwrap();
                n.fetch_add(1, Ordering::Relaxed);
            }
        });
        Writer {
            stop,
            done,
            handle: Some(handle),
        }
    }

    /// Waits until the writer has made `more` more changes.
    fn wait_for(&self, more: u64) {
        let goal = self.done.load(Ordering::Relaxed) + more;
        eventually_blocking("the writer writes", Duration::from_secs(60), || {
            (self.done.load(Ordering::Relaxed) >= goal).then_some(())
        });
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.done.load(Ordering::Relaxed)
    }
}

pub(crate) fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify --format json: {e}\n{}", text(out)))
}

/// (kind, key id) of every difference in a JSON report.
pub(crate) fn differences(report: &serde_json::Value) -> BTreeSet<(String, i64)> {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["differences"].as_array().unwrap().iter())
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["key"]["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Runs `cmd` with `script` on its standard input; it must succeed.
fn run_script(cmd: &mut std::process::Command, script: &str) {
    let run = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        run.status.success(),
        "{}\n{script}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Replicates database `src` of `pg` to `dst` until `count_sql` on `dst`
/// reads `rows`, then stops the pipeline; returns the pipeline file.
fn copied_pg_to_pg(
    pg: &ferry_testkit::PostgresServer,
    d: &Dir,
    count_sql: &str,
    rows: i64,
) -> std::path::PathBuf {
    let p = d.pipeline_between(&pg.url_for("src"), &pg.url_for("dst"), "");
    let child = spawn_streaming(&p, &d.path("ferry.log"));
    eventually_blocking("snapshot copied", Duration::from_secs(120), || {
        (crate::kit::pg_number(pg, "dst", count_sql) == rows).then_some(())
    });
    assert!(terminate(child).success());
    p
}

#[test]
fn verify_while_changes_flow_reports_only_real_differences() {
    live_verify(None);
}

/// The same across engines, SQLite → PostgreSQL: compared by the
/// canonical digests while the load runs.
#[test]
fn sqlite_to_postgres_verify_while_changes_flow_reports_only_real_differences() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("dst");
    live_verify(Some(&pg));
}

/// A pipeline from the SQLite source of [`source`] to a SQLite target (or
/// to database `dst` of `pg`) under a concurrent write load: `ferry
/// verify` finds the copies equal, then exactly the differences made on
/// the target, by digests computed in each database.
fn live_verify(pg: Option<&ferry_testkit::PostgresServer>) {
    let d = Dir::new();
    source(&d);
    let p = match pg {
        Some(pg) => d.pipeline_between(&d.source_url(), &pg.url_for("dst"), ""),
        None => d.pipeline(""),
    };
    let ps = p.to_str().unwrap();
    let log = d.path("ferry.log");
    let child = spawn_streaming(&p, &log);
    let target_rows = || match pg {
        Some(pg) => crate::kit::pg_number(pg, "dst", "SELECT count(*) FROM acct"),
        None => count(&d.path("target.db"), "acct"),
    };
    eventually_blocking("snapshot copied", Duration::from_secs(60), || {
        (target_rows() == ROWS).then_some(())
    });
    let writer = Writer::start(&d);

    // Equal copies under load: rows read while their change was in
    // flight are re-checked, never reported.
    for _ in 0..3 {
        writer.wait_for(200);
        let out = ferry(&["verify", ps, "--format", "json"]);
        let report = json(&out);
        assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", text(&out));
        assert_eq!(report["equal"], true);
        assert_eq!(
            table_report(&report, "acct")["method"],
            "digests",
            "{report:#}"
        );
    }

    // Differences made on the target, in rows the writer does not touch:
    // each is found, nothing else is reported.
    let tamper = "UPDATE acct SET note = 'tampered' WHERE id = 7;
                  DELETE FROM acct WHERE id = 8;
                  INSERT INTO acct VALUES (99999999, 0, 'extra');";
    match pg {
        Some(pg) => {
            pg.psql_in("dst", tamper);
        }
        None => {
            let tgt = open(&d.path("target.db"));
            tgt.busy_timeout(Duration::from_secs(10)).unwrap();
            tgt.execute_batch(tamper).unwrap();
        }
    }
    writer.wait_for(200);
    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let want: BTreeSet<(String, i64)> = [
        ("different".to_owned(), 7),
        ("missing".to_owned(), 8),
        ("extra".to_owned(), 99_999_999),
    ]
    .into();
    assert_eq!(differences(&report), want, "{report:#}");
    let table = table_report(&report, "acct");
    let field = &table["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "different")
        .unwrap()["fields"][0];
    assert_eq!(field["column"], "note");
    assert_eq!(field["source"], "row 7");
    assert_eq!(field["target"], "tampered");
    assert!(table["settled_at"].is_string(), "{table:#}");

    assert!(writer.stop() > 600);
    assert!(terminate(child).success());
}

#[test]
fn verify_reports_a_missing_table_and_stops_quietly_on_a_closed_pipe() {
    let d = Dir::new();
    source(&d);
    d.source()
        .execute_batch("CREATE TABLE other (id INTEGER PRIMARY KEY); INSERT INTO other VALUES (1);")
        .unwrap();
    let p = d.pipeline("");
    let ps = p.to_str().unwrap();
    let log = d.path("ferry.log");
    let child = spawn_streaming(&p, &log);
    eventually_blocking("snapshot copied", Duration::from_secs(60), || {
        (count(&d.path("target.db"), "acct") == ROWS && count(&d.path("target.db"), "other") == 1)
            .then_some(())
    });
    assert!(terminate(child).success());

    // Paced: 2,000 rows at 1,000 rows/s take two seconds at least.
    let start = std::time::Instant::now();
    let out = ferry(&[
        "verify",
        ps,
        "--table",
        "acct",
        "--max-rows-per-sec",
        "1000",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        start.elapsed() >= Duration::from_millis(1_900),
        "{:?}",
        start.elapsed()
    );

    // Only one table, by name.
    let out = ferry(&["verify", ps, "--table", "other"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("acct"), "{}", text(&out));
    let out = ferry(&["verify", ps, "--table", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no selected source table is named nosuch"));

    // Without a runner, a difference is reported as read, and says why it
    // was not re-checked.
    let tgt = open(&d.path("target.db"));
    tgt.execute("UPDATE acct SET n = -1 WHERE id = 5", [])
        .unwrap();
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("differs at key (5)"), "{}", text(&out));
    assert!(text(&out).contains("no `ferry run` of this pipeline is running"));
    // Rows outside a key range or a condition are not compared; tables
    // compared at once are reported in the source's order.
    for args in [
        &["--after", "5"][..],
        &["--where", "id <> 5"],
        &["--where", "n > 5", "--table", "acct"],
    ] {
        let out = ferry(&[&["verify", ps][..], args].concat());
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    // The condition holds for every table compared: one it does not fit
    // stops verify, saying so.
    let out = ferry(&["verify", ps, "--where", "n > 5"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no such column: n") && text(&out).contains("--table"),
        "{}",
        text(&out)
    );
    let out = ferry(&["verify", ps, "--sample", "100"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("differs at key (5)"), "{}", text(&out));
    let out = ferry(&["verify", ps, "--until", "5", "--concurrency", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("differs at key (5)"), "{report}");
    assert!(
        report.find("acct").unwrap() < report.find("other").unwrap(),
        "{report}"
    );

    // A table missing on the target is a difference, not an abort.
    tgt.execute_batch("DROP TABLE other").unwrap();
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("other") && text(&out).contains("MISSING"),
        "{}",
        text(&out)
    );
    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    let other = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "other")
        .unwrap();
    assert_eq!(other["verdict"], "missing on target");

    // `ferry verify | head -0`: the reader is gone before the first line.
    let mut child = std::process::Command::new(FERRY)
        .args(["verify", ps])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

/// PostgreSQL → PostgreSQL: the target reaches the source's position
/// through commits and, when the stream is quiet, through heartbeats.
#[test]
fn postgres_verify_while_changes_flow_reports_only_real_differences() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        &format!(
            "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL, note text);
             INSERT INTO acct SELECT g, g, 'row ' || g FROM generate_series(1, {ROWS}) g;"
        ),
    );
    let d = Dir::new();
    let p = d.pipeline_between(&pg.url_for("src"), &pg.url_for("dst"), "");
    let ps = p.to_str().unwrap();
    let log = d.path("ferry.log");
    let child = spawn_streaming(&p, &log);
    eventually_blocking("snapshot copied", Duration::from_secs(60), || {
        (crate::kit::pg_number(&pg, "dst", "SELECT count(*) FROM acct") == ROWS).then_some(())
    });
    // A writer: batches of 50 one-row transactions until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, batches, url) = (stop.clone(), batches.clone(), pg.url_for("src"));
        std::thread::spawn(move || {
            let sql = format!(
                "DO $$ BEGIN FOR i IN 1..50 LOOP
                   UPDATE acct SET n = n + 1 WHERE id = 11 + floor(random() * {})::int;
                   COMMIT; END LOOP; END $$;",
                ROWS - 10
            );
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", &sql])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                batches.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let wait_batches = |more: u64| {
        let goal = batches.load(Ordering::Relaxed) + more;
        eventually_blocking("the writer writes", Duration::from_secs(60), || {
            (batches.load(Ordering::Relaxed) >= goal).then_some(())
        });
    };
    for _ in 0..2 {
        wait_batches(3);
        let out = ferry(&["verify", ps, "--format", "json"]);
        let report = json(&out);
        assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", text(&out));
    }
    pg.psql_in(
        "dst",
        "UPDATE acct SET note = 'tampered' WHERE id = 7; DELETE FROM acct WHERE id = 8;
         INSERT INTO acct VALUES (99999999, 0, 'extra');",
    );
    wait_batches(3);
    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let want: BTreeSet<(String, i64)> = [
        ("different".to_owned(), 7),
        ("missing".to_owned(), 8),
        ("extra".to_owned(), 99_999_999),
    ]
    .into();
    assert_eq!(differences(&report), want, "{report:#}");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Quiet source: the target reaches the source's position by a heartbeat.
    pg.psql_in("dst", "UPDATE acct SET note = 'row 7' WHERE id = 7");
    pg.psql_in("src", "UPDATE acct SET n = 0 WHERE id = 20");
    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let want: BTreeSet<(String, i64)> =
        [("missing".to_owned(), 8), ("extra".to_owned(), 99_999_999)].into();
    assert_eq!(differences(&report), want, "{report:#}");
    assert!(report["tables"][0]["settled_at"].is_string(), "{report:#}");
    assert!(terminate(child).success());
}

/// Changes made behind ferry's back on the target: in a keyed table (a
/// changed, a deleted and an extra row) and in a table without a key (a
/// lost duplicate, an extra row).
fn tamper_sqlite(target: &std::path::Path) {
    open(target)
        .execute_batch(
            "UPDATE acct SET note = 'it''s wrong', n = -7 WHERE id = 7;
             DELETE FROM acct WHERE id = 8;
             INSERT INTO acct VALUES (99999999, 0, 'extra');
             DELETE FROM log WHERE rowid = (SELECT max(rowid) FROM log WHERE v = 'twice');
             INSERT INTO log VALUES ('stray', x'00ff');",
        )
        .unwrap();
}

#[test]
fn repair_prints_sql_that_fixes_the_target_and_applies_it_with_the_pipeline_stopped() {
    let d = Dir::new();
    source(&d);
    d.source()
        .execute_batch(
            "CREATE TABLE log (v TEXT, b BLOB);
             INSERT INTO log VALUES ('twice', NULL), ('twice', NULL), ('once', x'01');",
        )
        .unwrap();
    let p = d.pipeline("");
    let ps = p.to_str().unwrap();
    let log = d.path("ferry.log");
    let tgt = d.path("target.db");
    let child = spawn_streaming(&p, &log);
    eventually_blocking("snapshot copied", Duration::from_secs(60), || {
        (count(&tgt, "acct") == ROWS && count(&tgt, "log") == 3).then_some(())
    });

    // While the pipeline runs, applying is refused: it could write an
    // older value over a newer one the pipeline applied.
    let out = ferry(&["verify", ps, "--repair", "apply"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("needs the pipeline stopped"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("ferry resync"), "{}", text(&out));
    assert!(terminate(child).success());

    // print: a SQL script (the report as comments) that the target's own
    // client runs; then the copies are equal.
    tamper_sqlite(&tgt);
    let out = ferry(&["verify", ps, "--repair", "print"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let script = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(script.lines().all(|l| !l.is_empty()), "{script}");
    assert!(
        script.contains("-- acct") && script.contains("BEGIN;"),
        "{script}"
    );
    run_script(std::process::Command::new("sqlite3").arg(&tgt), &script);
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(0), "{}\n{script}", text(&out));

    // apply: ferry writes the repair itself and checks again.
    tamper_sqlite(&tgt);
    let out = ferry(&["verify", ps, "--repair", "apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("repaired: 3 rows"), "{}", text(&out));
    assert!(text(&out).contains("repaired: 2 rows"), "{}", text(&out));
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn postgres_repair_print_runs_in_psql_and_apply_fixes_the_target() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE acct (id int PRIMARY KEY, n numeric(12,2), note text, at timestamptz,
                            tags text[], doc jsonb, total int GENERATED ALWAYS AS (id * 2) STORED);
         INSERT INTO acct (id, n, note, at, tags, doc)
           SELECT g, g / 3.0, 'row ' || g, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
                  ARRAY['a', NULL, 'it''s'], jsonb_build_object('k', g)
           FROM generate_series(1, 200) g;
         CREATE TABLE log (v text, n int);
         ALTER TABLE log REPLICA IDENTITY FULL;
         INSERT INTO log VALUES ('twice', 1), ('twice', 1), ('once', 2);",
    );
    let d = Dir::new();
    let p = copied_pg_to_pg(
        &pg,
        &d,
        "SELECT (SELECT count(*) FROM acct) + (SELECT count(*) FROM log)",
        203,
    );
    let ps = p.to_str().unwrap();
    let tamper = || {
        pg.psql_in(
            "dst",
            "UPDATE acct SET note = NULL, n = -1, tags = '{}', doc = '[]' WHERE id = 7;
             DELETE FROM acct WHERE id = 8;
             INSERT INTO acct (id, n, note) VALUES (99999, 0, 'extra');
             DELETE FROM log WHERE ctid = (SELECT max(ctid) FROM log WHERE v = 'twice');
             INSERT INTO log VALUES ('stray', 3);",
        );
    };
    tamper();
    let out = ferry(&["verify", ps, "--repair", "print"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let script = String::from_utf8(out.stdout.clone()).unwrap();
    run_script(
        std::process::Command::new("psql").args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &pg.url_for("dst"),
        ]),
        &script,
    );
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(0), "{}\n{script}", text(&out));

    tamper();
    let out = ferry(&["verify", ps, "--repair", "apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Every kind of small difference, each in its own row of a PostgreSQL
/// target: found, and nothing else reported.
#[test]
fn postgres_verify_finds_every_kind_of_difference_and_nothing_else() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE v (id int PRIMARY KEY, t text, f float8, r real, n numeric, ts timestamptz,
                         d date, b bytea, j jsonb, a int[], u uuid, bo boolean, i interval);
         INSERT INTO v SELECT g, 'text', 0.0, 1.5, 1.50, '2024-01-01 12:00:00+00', '2024-01-01',
                              '\\x00', '{\"k\": 1}', ARRAY[1, 2], '00000000-0000-0000-0000-000000000001',
                              true, '1 day'
                       FROM generate_series(1, 40) g;
         CREATE TABLE k (v text, n int);
         ALTER TABLE k REPLICA IDENTITY FULL;
         INSERT INTO k VALUES ('dup', 1), ('dup', 1), ('one', 2);",
    );
    let d = Dir::new();
    let p = copied_pg_to_pg(
        &pg,
        &d,
        "SELECT (SELECT count(*) FROM v) + (SELECT count(*) FROM k)",
        43,
    );
    let ps = p.to_str().unwrap();
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // One difference per row: (id, what).
    let injected = [
        (1, "t = 'text '"),
        (2, "t = ''"),
        (3, "t = NULL"),
        (4, "f = '-0'"),
        (5, "f = 'NaN'"),
        (6, "f = 'Infinity'"),
        (7, "f = 5e-324"),
        (8, "r = 1.5000001"),
        (9, "n = 1.51"),
        (10, "ts = '2024-01-01 12:00:00.000001+00'"),
        (11, "ts = '2024-01-01 12:00:00+01'"),
        (12, "d = '2024-01-01 BC'"),
        (13, "b = '\\x'"),
        (14, "j = '{\"k\": 1.0}'"),
        (15, "a = ARRAY[1, NULL]"),
        (16, "a = ARRAY[2, 1]"),
        (17, "u = '00000000-0000-0000-0000-000000000002'"),
        (18, "bo = NULL"),
        (19, "i = '24 hours'"),
    ];
    let sql: String = injected
        .iter()
        .map(|(id, set)| format!("UPDATE v SET {set} WHERE id = {id};\n"))
        .collect();
    pg.psql_in("dst", &sql);
    pg.psql_in(
        "dst",
        "DELETE FROM k WHERE ctid = (SELECT max(ctid) FROM k WHERE v = 'dup');
         INSERT INTO k VALUES ('one', 2);",
    );
    // Both methods find each difference: digests computed in each
    // database (the default here) and every row streamed.
    for (method, used) in [("auto", "digests"), ("rows", "rows")] {
        let out = ferry(&["verify", ps, "--format", "json", "--method", method]);
        let report = json(&out);
        assert_eq!(out.status.code(), Some(1), "{report:#}");
        let v = table_report(&report, "v");
        assert_eq!(v["method"], used, "{v:#}");
        check_injected(&report, v, &injected);
    }
}

/// The report of table `name` (`name` or `schema.name`) in a JSON report.
fn table_report<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["table"]
                .as_str()
                .is_some_and(|n| n == name || n.ends_with(&format!(".{name}")))
        })
        .unwrap_or_else(|| panic!("no table {name} in {report:#}"))
}

fn check_injected(report: &serde_json::Value, v: &serde_json::Value, injected: &[(i64, &str)]) {
    let found: BTreeSet<i64> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["kind"], "different", "{d:#}");
            assert_eq!(d["fields"].as_array().unwrap().len(), 1, "{d:#}");
            d["key"]["id"].as_i64().unwrap()
        })
        .collect();
    // `'24 hours'` is not `'1 day'` (months, days and microseconds are
    // kept apart), a timestamptz one hour off is another instant, and a
    // jsonb 1.0 keeps its text.
    let want: BTreeSet<i64> = injected.iter().map(|(id, _)| *id).collect();
    assert_eq!(found, want, "{v:#}");
    let k = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.k")
        .unwrap();
    assert_eq!(
        (k["missing"].as_i64(), k["extra"].as_i64()),
        (Some(1), Some(1)),
        "{k:#}"
    );
}

/// The structure compare: a column missing on the target, another type,
/// another primary key are differences; an extra target column is a note.
#[test]
fn postgres_verify_compares_structure() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE a (id int PRIMARY KEY, name varchar(20), note text);
         INSERT INTO a VALUES (1, 'x', 'y');
         CREATE TABLE b (id int PRIMARY KEY, code int NOT NULL);
         INSERT INTO b VALUES (1, 10);
         CREATE TABLE c (id int PRIMARY KEY, v text);
         INSERT INTO c VALUES (1, 'v');",
    );
    let d = Dir::new();
    let p = copied_pg_to_pg(&pg, &d, "SELECT count(*) FROM c", 1);
    let ps = p.to_str().unwrap();
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("structure:"), "{}", text(&out));

    pg.psql_in(
        "dst",
        "ALTER TABLE a DROP COLUMN note; ALTER TABLE a ALTER COLUMN name TYPE text;
         ALTER TABLE b DROP CONSTRAINT b_pkey; ALTER TABLE b ADD PRIMARY KEY (code);
         ALTER TABLE c ADD COLUMN local_only int;",
    );
    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let table = |name: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == name)
            .unwrap()
            .clone()
    };
    let structure = |name: &str| -> Vec<String> {
        table(name)["structure"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        structure("public.a"),
        [
            "column name: type character varying(20) on the source, text on the target",
            "column note is missing on the target"
        ]
    );
    assert_eq!(
        structure("public.b"),
        ["primary key (code) on the target, key (id) on the source"]
    );
    assert!(structure("public.c").is_empty());
    assert_eq!(table("public.c")["verdict"], "equal");
    let notes = table("public.c")["notes"].to_string();
    assert!(notes.contains("local_only"), "{notes}");
}

/// Digests computed in each database (PostgreSQL ↔ PostgreSQL): equal
/// tables read no row even when the two servers format values
/// differently (time zone, date style, float digits), and scattered
/// differences are found exactly as the row-by-row compare finds them,
/// by reading a few small key ranges.
#[test]
fn postgres_verify_by_digests_reads_only_the_ranges_that_differ() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql(
        "ALTER DATABASE dst SET TimeZone = 'Asia/Tokyo';
         ALTER DATABASE dst SET DateStyle = 'SQL, DMY';
         ALTER DATABASE dst SET extra_float_digits = 0;
         ALTER DATABASE dst SET IntervalStyle = 'iso_8601';",
    );
    pg.psql_in(
        "src",
        "CREATE TABLE big (id int PRIMARY KEY, t text, f float8, n numeric, ts timestamptz,
                           d date, i interval, j jsonb, a int[], r int4range, b bytea);
         INSERT INTO big SELECT g, 'row ' || g, g / 7.0, g / 3.0, '2024-01-01'::timestamptz + g * interval '1 min',
                                '2024-01-01'::date - g, g * interval '1 sec', jsonb_build_object('g', g),
                                ARRAY[g, NULL], int4range(g, g + 10), decode(md5(g::text), 'hex')
                         FROM generate_series(1, 50000) g;",
    );
    let d = Dir::new();
    let p = copied_pg_to_pg(&pg, &d, "SELECT count(*) FROM big", 50_000);
    let ps = p.to_str().unwrap();
    let table = |report: &serde_json::Value| report["tables"][0].clone();

    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let t = table(&report);
    assert_eq!(
        (&t["method"], &t["digest_ranges"], &t["ranges_read"]),
        (&"digests".into(), &3.into(), &0.into()),
        "{t:#}"
    );
    assert_eq!(t["source_rows"], 50_000, "{t:#}");

    pg.psql_in(
        "dst",
        "UPDATE big SET f = -0.0 WHERE id = 7;
         UPDATE big SET ts = ts + interval '1 microsecond' WHERE id = 12345;
         DELETE FROM big WHERE id = 25000;
         DELETE FROM big WHERE id = 49999;
         INSERT INTO big (id, t) VALUES (70000, 'extra');",
    );
    let want: BTreeSet<(String, i64)> = [
        ("different", 7),
        ("different", 12345),
        ("missing", 25000),
        ("missing", 49999),
        ("extra", 70000),
    ]
    .into_iter()
    .map(|(k, id)| (k.to_owned(), id))
    .collect();
    let out = ferry(&["verify", ps, "--format", "json"]);
    let by_digests = json(&out);
    assert_eq!(out.status.code(), Some(1), "{by_digests:#}");
    assert_eq!(differences(&by_digests), want, "{by_digests:#}");
    let t = table(&by_digests);
    assert_eq!(t["method"], "digests", "{t:#}");
    let read = t["ranges_read"].as_u64().unwrap();
    assert!((1..=5).contains(&read), "{t:#}");

    let out = ferry(&["verify", ps, "--format", "json", "--method", "rows"]);
    let by_rows = json(&out);
    assert_eq!(out.status.code(), Some(1), "{by_rows:#}");
    assert_eq!(table(&by_rows)["method"], "rows");
    assert_eq!(differences(&by_rows), want, "{by_rows:#}");
    assert_eq!(
        table(&by_rows)["differences"],
        table(&by_digests)["differences"],
        "both methods report the same rows and fields"
    );
    let text_out = text(&ferry(&["verify", ps]));
    assert!(
        text_out.contains("compared by digests computed in each database: 3 key ranges"),
        "{text_out}"
    );

    // Gentle compares: a key range (after 10000, up to 30000 inclusive)
    // and a condition both databases evaluate; by digests and by rows.
    let only = |ids: &[i64]| -> BTreeSet<(String, i64)> {
        want.iter()
            .filter(|(_, id)| ids.contains(id))
            .cloned()
            .collect()
    };
    for method in ["auto", "rows"] {
        let args = ["verify", ps, "--format", "json", "--method", method];
        let ranged = json(&ferry(
            &[&args[..], &["--after", "10000", "--until", "25000"]].concat(),
        ));
        assert_eq!(differences(&ranged), only(&[12345, 25000]), "{ranged:#}");
        assert_eq!(table(&ranged)["source_rows"], 15_000, "{ranged:#}");
        let odd = json(&ferry(&[&args[..], &["--where", "id % 2 = 1"]].concat()));
        assert_eq!(differences(&odd), only(&[7, 12345, 49999]), "{odd:#}");
        let both = ferry(&[&args[..], &["--where", "t <> 'row 7'", "--until", "12345"]].concat());
        assert_eq!(differences(&json(&both)), only(&[12345]));
    }
    // A sample compares some of the three key ranges of 20,000 rows: what
    // it reports is there, and all of them make the full compare.
    let all = json(&ferry(&[
        "verify", ps, "--format", "json", "--sample", "100",
    ]));
    assert_eq!(differences(&all), want, "{all:#}");
    let notes = table(&all)["notes"].to_string();
    assert!(notes.contains("sampled: 3 of 3 key ranges"), "{notes}");
    let mut fewer = false;
    for _ in 0..8 {
        let some = json(&ferry(&[
            "verify", ps, "--format", "json", "--sample", "50",
        ]));
        assert!(differences(&some).is_subset(&want), "{some:#}");
        let rows = table(&some)["source_rows"].as_u64().unwrap();
        assert!(rows <= 50_000 && rows % 10_000 == 0, "{some:#}");
        fewer |= rows < 50_000;
    }
    assert!(fewer, "eight samples of 50 % compared every range");

    // A key that is not one, a condition a database refuses: exit 2, named.
    let out = ferry(&["verify", ps, "--after", "seven"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("\"seven\" is not a value of key column id"),
        "{}",
        text(&out)
    );
    let out = ferry(&["verify", ps, "--where", "nosuch > 1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nosuch"), "{}", text(&out));
}

/// Copies a table `v` (ids 1 to 40, all alike) with the pipeline `p`
/// until `copied`, checks verify finds it equal, then runs on the target
/// (through `tamper`) one UPDATE per `injected` assignment (ids 1, 2, …),
/// a DELETE of id 20 and an INSERT of id 100 copied from id 21 (columns
/// `columns`), and checks that verify reports exactly those rows.
/// Copies, checks that `ferry verify` finds table `v` equal by `method`
/// (by digests: without reading a single range row by row, so equal rows
/// digest alike on both engines), then makes each `injected` change on
/// the target and checks that exactly those rows are reported.
fn injected_differences_are_found(
    p: &std::path::Path,
    log: &std::path::Path,
    copied: impl Fn() -> bool,
    method: &str,
    injected: &[&str],
    columns: &str,
    tamper: impl FnOnce(&str),
) {
    let ps = p.to_str().unwrap();
    let child = spawn_streaming(p, log);
    eventually_blocking("snapshot copied", Duration::from_secs(60), || {
        copied().then_some(())
    });
    assert!(terminate(child).success());
    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let v = table_report(&report, "v");
    assert_eq!(v["method"], method, "{v:#}");
    if method == "digests" {
        assert_eq!(
            v["ranges_read"], 0,
            "equal rows digested differently: {v:#}"
        );
    }
    let mut sql: String = (1..)
        .zip(injected)
        .map(|(id, set)| format!("UPDATE v SET {set} WHERE id = {id};\n"))
        .collect();
    sql.push_str(&format!(
        "DELETE FROM v WHERE id = 20; INSERT INTO v SELECT 100, {columns} FROM v WHERE id = 21;"
    ));
    tamper(&sql);
    let out = ferry(&["verify", ps, "--format", "json"]);
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let want: BTreeSet<(String, i64)> = (1..=injected.len() as i64)
        .map(|id| ("different".to_owned(), id))
        .chain([("missing".to_owned(), 20), ("extra".to_owned(), 100)])
        .collect();
    assert_eq!(differences(&report), want, "{report:#}");
}

/// Across engines (SQLite → PostgreSQL), every kind of difference made on
/// the target is found, and nothing else: values compare through the
/// type mapping, by value and kind.
#[test]
fn sqlite_to_postgres_verify_finds_every_kind_of_difference_and_nothing_else() {
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE v (id INTEGER PRIMARY KEY, t TEXT, f REAL, n DECIMAL_TEXT(10,2),
                             ts DATETIME, tz TIMESTAMPTZ, dt DATE, b BLOB, j JSON, bo BOOLEAN,
                             u UUID);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40)
             INSERT INTO v SELECT i, 'text', 0.0, '1.50', '2024-01-01 12:00:00',
                                  '2024-01-01 12:00:00+00:00', '2024-01-01', x'00', '{\"k\": 1}', 1,
                                  '00000000-0000-0000-0000-000000000001' FROM s;",
        )
        .unwrap();
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("dst");
    let p = d.pipeline_between(&d.source_url(), &pg.url_for("dst"), "");
    injected_differences_are_found(
        &p,
        &d.path("ferry.log"),
        || crate::kit::pg_number(&pg, "dst", "SELECT count(*) FROM v") == 40,
        "digests",
        &[
            "t = 'text '",
            "t = ''",
            "t = NULL",
            "f = '-0'",
            "f = 'NaN'",
            "f = 'Infinity'",
            "f = 5e-324",
            "n = 1.51",
            "ts = ts + interval '1 microsecond'",
            "tz = '2024-01-01 12:00:00+01'",
            "dt = '2024-01-01 BC'",
            "b = '\\x'",
            "j = '{\"k\": 1.0}'",
            "bo = false",
            "u = '00000000-0000-0000-0000-000000000002'",
        ],
        "t, f, n, ts, tz, dt, b, j, bo, u",
        |sql| {
            pg.psql_in("dst", sql);
        },
    );
}

/// Across engines (PostgreSQL → SQLite), every kind of difference made
/// on the target is found, and nothing else: by digests computed on each
/// side, or (with an array column, which has no canonical encoding) by
/// streaming every row.
fn postgres_to_sqlite_injection(with_array: bool) {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    let (array_col, array_value) = if with_array {
        (", a int[]", ", ARRAY[1, 2]")
    } else {
        ("", "")
    };
    pg.psql_in(
        "src",
        &format!(
            "CREATE TABLE v (id int PRIMARY KEY, t text, f float8, n numeric, ts timestamptz,
                             d date, b bytea, j jsonb, u uuid, bo boolean, i interval{array_col});
             INSERT INTO v SELECT g, 'text', 0.0, 1.50, '2024-01-01 12:00:00+00', '2024-01-01',
                                  '\\x00', '{{\"k\": 1}}', '00000000-0000-0000-0000-000000000001',
                                  true, '1 day'{array_value}
                           FROM generate_series(1, 40) g;"
        ),
    );
    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(
        &pg.url_for("src"),
        &format!("sqlite:{}", target.display()),
        "",
    );
    let mut injected = vec![
        "t = 'text '",
        "t = ''",
        "t = NULL",
        "f = 1e308",
        "f = 'NaN'",
        "f = 9e999",
        "n = '1.51'",
        "ts = '2024-01-01 12:00:00.000001+00:00'",
        "d = '-0043-01-01'",
        "b = x''",
        "j = '{\"k\": 1.0}'",
        "u = '00000000-0000-0000-0000-000000000002'",
        "bo = NULL",
        "i = 'P0M0DT86400S'",
    ];
    let mut columns = "t, f, n, ts, d, b, j, u, bo, i".to_owned();
    if with_array {
        injected.push("a = '[1,null]'");
        columns.push_str(", a");
    }
    injected_differences_are_found(
        &p,
        &d.path("ferry.log"),
        || count(&target, "v") == 40,
        if with_array { "rows" } else { "digests" },
        &injected,
        &columns,
        |sql| open(&target).execute_batch(sql).unwrap(),
    );
}

#[test]
fn postgres_to_sqlite_verify_finds_every_kind_of_difference_and_nothing_else() {
    postgres_to_sqlite_injection(true);
}

#[test]
fn postgres_to_sqlite_verify_by_digests_finds_every_kind_of_difference() {
    postgres_to_sqlite_injection(false);
}

/// Over a slow, distant link to the target (the test kit's proxy), digests
/// move a small fraction of the bytes streaming every row moves, and find
/// the same difference; a cut link is an error (exit 2) naming the
/// unreachable address, not a report of differences.
#[test]
fn over_a_distant_link_digests_move_a_fraction_of_the_bytes() {
    use ferry_testkit::{Link, LinkProxy};
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    let rows = 100_000;
    let fill = format!(
        "CREATE TABLE t (id int PRIMARY KEY, b text);
         INSERT INTO t SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, {rows}) g;"
    );
    pg.psql_in("src", &fill);
    pg.psql_in("dst", &fill);
    pg.psql_in("dst", "UPDATE t SET b = b || 'x' WHERE id = 12345");
    let link = LinkProxy::start(
        pg.port(),
        Link {
            bits_per_sec: Some(50_000_000),
            latency: Duration::from_millis(2),
        },
    )
    .unwrap();
    let far = pg
        .url_for("dst")
        .replace(&format!(":{}/", pg.port()), &format!(":{}/", link.port()));
    let d = Dir::new();
    let p = d.pipeline_between(&pg.url_for("src"), &far, "");
    let ps = p.to_str().unwrap();
    let mut carried = Vec::new();
    for method in ["rows", "auto"] {
        let before = link.bytes();
        let out = ferry(&["verify", ps, "--format", "json", "--method", method]);
        let report = json(&out);
        assert_eq!(out.status.code(), Some(1), "{report:#}");
        assert_eq!(
            differences(&report),
            BTreeSet::from([("different".to_owned(), 12345)]),
            "{report:#}"
        );
        let after = link.bytes();
        carried.push((after.0 - before.0) + (after.1 - before.1));
    }
    let (by_rows, by_digests) = (carried[0], carried[1]);
    assert!(
        by_digests * 10 < by_rows,
        "digests moved {by_digests} bytes over the link, rows {by_rows}"
    );
    link.cut();
    let out = ferry(&["verify", ps]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let at = format!("127.0.0.1:{}", link.port());
    // Whichever connection meets the cut first, the error names the
    // address it could not reach.
    assert!(text(&out).contains(&at), "{}", text(&out));
}

/// `--statement-timeout` bounds every statement verify runs on a
/// PostgreSQL database: with the target table locked by another session,
/// verify exits 2 at once with the reason and the fix instead of waiting.
#[test]
fn a_statement_timeout_stops_verify_instead_of_waiting_on_a_lock() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    let fill = "CREATE TABLE t (id int PRIMARY KEY, b text);
                INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g;";
    pg.psql_in("src", fill);
    pg.psql_in("dst", fill);
    let d = Dir::new();
    let p = d.pipeline_between(&pg.url_for("src"), &pg.url_for("dst"), "");
    let ps = p.to_str().unwrap();
    // Another session holds the target table.
    let mut holder = std::process::Command::new("psql")
        .args(["-X", "-q", &pg.url_for("dst"), "-c"])
        .arg("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually_blocking("the lock held", Duration::from_secs(30), || {
        let held = pg.psql_in(
            "dst",
            "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass \
             AND mode = 'AccessExclusiveLock' AND granted",
        );
        (held == "1").then_some(())
    });
    let started = std::time::Instant::now();
    let out = ferry(&["verify", ps, "--statement-timeout", "0.5"]);
    // The server session outlives its killed client: end it there.
    pg.psql_in(
        "dst",
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = 't'::regclass \
         AND mode = 'AccessExclusiveLock'",
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("statement timeout"), "{said}");
    assert!(said.contains("--statement-timeout 0.5"), "{said}");
    assert!(started.elapsed() < Duration::from_secs(20), "{said}");
    // Unlocked, the same compare finds the tables equal.
    let out = ferry(&["verify", ps, "--statement-timeout", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_key_no_index_orders_as_ferry_does_is_compared_by_rows_and_sampled_by_its_rows() {
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE words (w text COLLATE \"en-x-icu\" PRIMARY KEY, n int);
         INSERT INTO words SELECT 'w' || g, g FROM generate_series(1, 3000) g;",
    );
    let d = Dir::new();
    let p = copied_pg_to_pg(&pg, &d, "SELECT count(*) FROM words", 3_000);
    let ps = p.to_str().unwrap();
    pg.psql_in("dst", "UPDATE words SET n = -1 WHERE w = 'w1234'");
    // The key's index does not order it byte-wise: no digests, every row
    // streamed, and a sample cuts its ranges from the rows in ferry's
    // order.
    for args in [&[][..], &["--sample", "100"]] {
        let out = ferry(&[&["verify", ps, "--format", "json"][..], args].concat());
        let report = json(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {report:#}");
        let t = &report["tables"][0];
        assert_eq!(t["method"], "rows", "{t:#}");
        assert_eq!(t["source_rows"], 3_000, "{t:#}");
        let keys: Vec<&str> = t["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["key"]["w"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["w1234"], "{t:#}");
    }
}
