//! Exact copies on the real binary, PostgreSQL → PostgreSQL and
//! PostgreSQL → SQLite at once (two pipelines from one source): key swaps
//! and cycles under a deferred key, `numeric` with a negative scale and
//! at PostgreSQL's size limits, in the snapshot and in the stream.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, ferry, spawn_run, terminate, text};

/// A source database `src`, a PostgreSQL target `dst` and a SQLite target,
/// with one pipeline to each.
struct Both {
    pg: PostgresServer,
    dir: Dir,
    to_pg: PathBuf,
    to_sqlite: PathBuf,
}

impl Both {
    fn new(setup: &str) -> Both {
        let pg = PostgresServer::start();
        pg.create_database("src");
        pg.create_database("dst");
        pg.psql_in("src", setup);
        let dir = Dir::new();
        let pipeline = |name: &str, target: &str| {
            let p = dir.path(&format!("{name}.toml"));
            std::fs::write(
                &p,
                format!(
                    "name = \"{name}\"\n[source]\nurl = \"{}\"\n[target]\nurl = \"{target}\"\n\
                     [apply]\nbatch_time = \"20ms\"\n",
                    pg.url_for("src")
                ),
            )
            .unwrap();
            p
        };
        let to_pg = pipeline("to_pg", &pg.url_for("dst"));
        let to_sqlite = pipeline(
            "to_sqlite",
            &format!("sqlite:{}", dir.path("target.db").display()),
        );
        Both {
            pg,
            dir,
            to_pg,
            to_sqlite,
        }
    }

    fn run(&self) -> (Child, Child) {
        (
            spawn_run(&self.to_pg, &self.dir.path("to_pg.log")),
            spawn_run(&self.to_sqlite, &self.dir.path("to_sqlite.log")),
        )
    }

    /// `sql` on the source, and `sql` on the PostgreSQL target.
    fn source_and_pg_target(&self, sql: &str) -> (String, Option<String>) {
        (
            self.pg.psql_in("src", sql),
            self.pg.try_psql_in("dst", sql).ok(),
        )
    }

    /// Rows of `select` on the SQLite target, columns joined by `|`.
    fn sqlite(&self, select: &str) -> Option<String> {
        sqlite_rows(&self.dir.path("target.db"), select)
    }

    /// Stops both runs, then `ferry verify` must find the copies equal.
    fn stop_and_verify(&self, runs: (Child, Child)) {
        assert!(terminate(runs.0).success(), "{}", self.log("to_pg"));
        assert!(terminate(runs.1).success(), "{}", self.log("to_sqlite"));
        for p in [&self.to_pg, &self.to_sqlite] {
            let v = ferry(&["verify", p.to_str().unwrap()]);
            assert!(v.status.success(), "verify {}: {}", p.display(), text(&v));
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path(&format!("{name}.log"))).unwrap_or_default()
    }
}

fn sqlite_rows(path: &Path, select: &str) -> Option<String> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()?;
    c.busy_timeout(Duration::from_secs(10)).ok()?;
    let mut st = c.prepare(select).ok()?;
    let n = st.column_count();
    let rows = st
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                        rusqlite::types::Value::Integer(i) => i.to_string(),
                        rusqlite::types::Value::Text(t) => t,
                        other => format!("{other:?}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("|"))
        })
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(rows.join("\n"))
}

const SWAP_SQL: &str = "SELECT id || '|' || v FROM swap ORDER BY id";
const CYCLE_SQL: &str = "SELECT id || '|' || v FROM cycle ORDER BY id";

#[test]
fn key_swaps_and_cycles_under_a_deferred_key_reach_both_targets() {
    let both = Both::new(
        "CREATE TABLE swap (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text);
         ALTER TABLE swap REPLICA IDENTITY FULL;
         INSERT INTO swap VALUES (1, 'was one'), (2, 'was two');
         CREATE TABLE cycle (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text);
         ALTER TABLE cycle REPLICA IDENTITY FULL;
         INSERT INTO cycle VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd');
         CREATE TABLE filler (id int PRIMARY KEY);",
    );
    let runs = both.run();
    eventually_blocking("the snapshot", Duration::from_secs(60), || {
        let pg = both.pg.try_psql_in("dst", SWAP_SQL).ok()?;
        let lite = both.sqlite("SELECT id, v FROM swap ORDER BY id")?;
        (pg == "1|was one\n2|was two" && lite == pg).then_some(())
    });
    // The case, then a cycle of three keys in one statement, then
    // a swap in a transaction that also moves a key through a free one.
    both.pg.psql_in(
        "src",
        "UPDATE swap SET id = 3 - id WHERE id IN (1, 2);
         UPDATE cycle SET id = id % 3 + 1 WHERE id <= 3;
         BEGIN;
         UPDATE cycle SET id = 9 WHERE id = 4;
         UPDATE swap SET id = 3 - id, v = v || '!';
         UPDATE cycle SET id = 4 WHERE id = 9;
         COMMIT;",
    );
    let (swap, cycle) = (
        both.source_and_pg_target(SWAP_SQL).0,
        both.source_and_pg_target(CYCLE_SQL).0,
    );
    assert_eq!(swap, "1|was one!\n2|was two!");
    assert_eq!(cycle, "1|c\n2|a\n3|b\n4|d");
    let on_both = |what: &str, swap: &str, cycle: &str| {
        eventually_blocking(what, Duration::from_secs(60), || {
            let pg = (
                both.pg.try_psql_in("dst", SWAP_SQL).ok()?,
                both.pg.try_psql_in("dst", CYCLE_SQL).ok()?,
            );
            let lite = (
                both.sqlite("SELECT id, v FROM swap ORDER BY id")?,
                both.sqlite("SELECT id, v FROM cycle ORDER BY id")?,
            );
            (pg == (swap.to_owned(), cycle.to_owned()) && lite == pg).then_some(())
        })
    };
    on_both("the swaps on both targets", &swap, &cycle);
    // A transaction too large for memory streams in parts of 10,000
    // changes: the swap's first row is the 10,000th change, so a part ends
    // with key 2 holding two rows, which neither target can hold.
    both.pg.psql_in(
        "src",
        "BEGIN;
         INSERT INTO filler SELECT g FROM generate_series(1, 9999) g;
         UPDATE swap SET id = 3 - id, v = v || '?';
         COMMIT;",
    );
    let swap = both.source_and_pg_target(SWAP_SQL).0;
    assert_eq!(swap, "1|was two!?\n2|was one!?");
    on_both("a swap across two parts of a transaction", &swap, &cycle);
    both.stop_and_verify(runs);
}

/// 131,072 digits before the point and 16,383 after: PostgreSQL's widest.
const WIDEST: &str = "('-' || repeat('9', 131072) || '.' || repeat('7', 16383))::numeric";
const NUMERIC_SQL: &str =
    "SELECT id || '|' || coalesce(r::text, '-') || '|' || big::text FROM n ORDER BY id";

#[test]
fn numerics_with_a_negative_scale_and_at_the_size_limits_copy_exactly() {
    let both = Both::new(&format!(
        "CREATE TABLE n (id int PRIMARY KEY, r numeric(7,-3), big numeric);
         INSERT INTO n VALUES (1, 1234567, {WIDEST}), (2, -9999999000, 1e-16383),
                              (3, NULL, repeat('1', 131072)::numeric);"
    ));
    let runs = both.run();
    let compare = |what: &str, rows: usize| {
        eventually_blocking(what, Duration::from_secs(90), || {
            let (src, dst) = both.source_and_pg_target(NUMERIC_SQL);
            let lite = both.sqlite("SELECT id, r, big FROM n ORDER BY id")?;
            let lite = lite.replace("|Null|", "|-|");
            (src.lines().count() == rows && dst.as_deref() == Some(src.as_str()) && lite == src)
                .then_some(())
        });
    };
    compare("the snapshot", 3);
    assert!(
        both.pg
            .psql_in("src", "SELECT r FROM n WHERE id = 1")
            .contains("1235000")
    );
    both.pg.psql_in(
        "src",
        &format!(
            "INSERT INTO n VALUES (4, 500, {WIDEST}), (5, 9999999499, ('0.' || repeat('0', 16382) || '1')::numeric);
             UPDATE n SET big = big + 1, r = -r WHERE id = 1;
             UPDATE n SET r = 1000 WHERE id = 3;"
        ),
    );
    compare("the changes", 5);
    both.stop_and_verify(runs);
}

/// Waits until `child` exits by itself; its exit code.
fn exit_code(child: &mut Child) -> i32 {
    let status = eventually_blocking("ferry exits by itself", Duration::from_secs(90), || {
        child.try_wait().ok().flatten()
    });
    status.code().unwrap_or(-1)
}

#[test]
fn a_value_the_target_refuses_stops_naming_table_key_and_column() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE s (id int PRIMARY KEY, v text);
         INSERT INTO s VALUES (4, 'ok'), (5, 'too long');
         CREATE TABLE m (id int PRIMARY KEY, v text, w int);
         INSERT INTO m VALUES (1, 'abc', 1);",
    );
    // The target's tables exist already, with narrower columns.
    pg.psql_in(
        "dst",
        "CREATE TABLE s (id int PRIMARY KEY, v varchar(3));
         CREATE TABLE m (id int PRIMARY KEY, v varchar(3), w int);",
    );
    let d = Dir::new();
    let p = d.path("p.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"narrow\"\n[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
             [apply]\nbatch_time = \"20ms\"\n",
            pg.url_for("src"),
            pg.url_for("dst")
        ),
    )
    .unwrap();
    let expect = |log: &str, parts: &[&str]| {
        for part in parts.iter().chain(&["fix:", "exclude_columns = [\""]) {
            assert!(log.contains(part), "{part:?} not in:\n{log}");
        }
    };
    // In the copy: the row's key and column, and the server's reason.
    let (code, out) =
        crate::kit::run_to_exit(&["run", p.to_str().unwrap()], Duration::from_secs(90));
    assert_eq!(code, 2, "{out}");
    expect(
        &out,
        &[
            "the target refused the value of column v of public.s at key (5)",
            "value too long for type character varying(3)",
        ],
    );
    // Corrected on the source, the copy goes through.
    pg.psql_in("src", "UPDATE s SET v = 'ok!' WHERE id = 5");
    let mut run = spawn_run(&p, &d.path("run.log"));
    eventually_blocking("the copy", Duration::from_secs(60), || {
        let rows = pg.try_psql_in("dst", "SELECT count(*) FROM s").ok()?;
        (rows == "2").then_some(())
    });
    // In a change: a multi-row statement fails; the row and column are
    // found again one value at a time.
    pg.psql_in(
        "src",
        "INSERT INTO m SELECT g, 'ok', g FROM generate_series(2, 40) g;
         UPDATE m SET v = 'much too long' WHERE id = 17;",
    );
    assert_eq!(exit_code(&mut run), 2);
    let log = std::fs::read_to_string(d.path("run.log")).unwrap();
    expect(
        &log,
        &[
            "the target refused the value of column v of public.m at key (17)",
            "value too long for type character varying(3)",
        ],
    );
    // The fix line offers to skip the row; with that filter in the
    // pipeline file the row's changes are left out (here all of them: the
    // failed group held its insert too) and everything else arrives.
    let skip = "filter = { \"public.m\" = \"NOT (id = 17)\" }";
    assert!(
        log.contains(&skip.replace('"', "\\\"")) || log.contains(skip),
        "{log}"
    );
    crate::kit::add_to_pipeline(&p, &format!("[tables]\n{skip}\n"));
    let run = spawn_run(&p, &d.path("run.log"));
    pg.psql_in("src", "UPDATE m SET w = w + 100 WHERE id IN (17, 18);");
    let skipped = || {
        pg.try_psql_in(
            "dst",
            "SELECT count(*), sum(w), count(*) FILTER (WHERE id = 17) FROM m",
        )
        .unwrap_or_else(|e| e)
    };
    let log = || std::fs::read_to_string(d.path("run.log")).unwrap_or_default();
    ferry_testkit::eventually_blocking(
        "every change but row 17's",
        Duration::from_secs(60),
        || -> Result<(), String> {
            match skipped() {
                rows if rows == "39|903|0" => Ok(()),
                rows => Err(format!("{rows}\n{}", log())),
            }
        },
    );
    assert!(terminate(run).success());
}
