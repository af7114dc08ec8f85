//! Operational events, one scenario each, on the real binary with real
//! databases: ferry either converges or stops with the reason and the fix,
//! and `ferry verify` agrees.
//!
//! * a lost stretch of the source's log (slot or capture dropped while
//!   ferry was stopped): refused, or re-copied online with `on_gap`;
//! * `ferry resync` of a table while changes flow;
//! * a table taken out of the selection, changed, and put back.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, ferry, spawn_run, terminate, text};

const WAIT: Duration = Duration::from_secs(120);

fn log_has(log: &Path, what: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
}

/// Starts `ferry run` and waits until it streams changes.
fn run_until_streaming(pipeline: &Path, log: &Path) -> Child {
    let before = std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("stream started")
        .count();
    let mut child = spawn_run(pipeline, log);
    eventually_blocking("ferry streams changes", WAIT, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "ferry run exited ({status}) before streaming:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let now = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("stream started")
            .count();
        if now > before { Ok(()) } else { Err(now) }
    });
    child
}

/// Waits until `ferry verify` says the copies are equal; on a timeout the
/// failure shows the end of the runner's log (`ferry.log` beside the
/// pipeline file).
fn verified_equal(pipeline: &Path) {
    let p = pipeline.to_str().unwrap();
    let log = pipeline.with_file_name("ferry.log");
    eventually_blocking("ferry verify finds source and target equal", WAIT, || {
        let out = ferry(&["verify", p]);
        if out.status.code() == Some(0) {
            Ok(())
        } else {
            let text_log = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text_log
                .lines()
                .filter(|l| !l.starts_with("ferry: "))
                .collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            Err(format!("{}\n--- runner log tail:\n{tail}", text(&out)))
        }
    });
}

fn pg_pipeline(d: &Dir, pg: &PostgresServer, extra_source: &str, tables: &str) -> PathBuf {
    let p = d.path("pipeline.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"ops\"\n[source]\nurl = \"{}\"\n{extra_source}\n[target]\nurl = \"{}\"\n\
             [tables]\n{tables}\n[apply]\nbatch_time = \"20ms\"\n[snapshot]\nchunk_rows = 500\n",
            pg.url_for("src"),
            pg.url_for("dst")
        ),
    )
    .unwrap();
    p
}

fn pg_with_tables() -> PostgresServer {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, total numeric(10,2));
         INSERT INTO orders SELECT g, 'new', g / 3.0 FROM generate_series(1, 3000) g;
         CREATE TABLE notes (id bigint PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 800) g;
         CREATE TABLE events (account int, amount int);
         ALTER TABLE events REPLICA IDENTITY FULL;
         INSERT INTO events SELECT g % 10, g FROM generate_series(1, 300) g;",
    );
    pg
}

/// A PostgreSQL → PostgreSQL pipeline over `pg_with_tables`, its files in
/// their own directory.
struct PgCase {
    pg: PostgresServer,
    d: Dir,
    log: PathBuf,
    pipeline: PathBuf,
}

impl PgCase {
    fn new() -> Self {
        let pg = pg_with_tables();
        let d = Dir::new();
        let log = d.path("ferry.log");
        let pipeline = pg_pipeline(&d, &pg, "", "");
        PgCase {
            pg,
            d,
            log,
            pipeline,
        }
    }
}

#[test]
fn postgres_a_dropped_slot_is_refused_then_resynced_online_with_on_gap() {
    let pg = pg_with_tables();
    let d = Dir::new();
    let log = d.path("ferry.log");
    let pipeline = pg_pipeline(&d, &pg, "", "");
    let p = pipeline.to_str().unwrap();
    let child = run_until_streaming(&pipeline, &log);
    pg.psql_in("src", "UPDATE orders SET status = 'paid' WHERE id <= 10");
    verified_equal(&pipeline);
    assert!(terminate(child).success());

    // The slot goes (`ferry teardown`, or a DBA), and writes happen.
    let out = ferry(&["teardown", p]);
    assert!(out.status.success(), "{}", text(&out));
    pg.psql_in(
        "src",
        "UPDATE orders SET status = 'lost' WHERE id BETWEEN 100 AND 120;
         DELETE FROM notes WHERE id > 700; INSERT INTO events VALUES (99, 99);",
    );

    // Refused: the changes in between can no longer be streamed.
    let out = ferry(&["run", p]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("cannot continue from the target's checkpoint") && msg.contains("on_gap"),
        "{msg}"
    );
    assert!(msg.contains("did not exist"), "names the cause: {msg}");
    assert_eq!(ferry(&["verify", p]).status.code(), Some(1));

    // With on_gap = "resync" the tables are re-copied online while new
    // changes flow, and the target converges.
    let pipeline = pg_pipeline(&d, &pg, "on_gap = \"resync\"", "");
    let child = run_until_streaming(&pipeline, &log);
    pg.psql_in(
        "src",
        "UPDATE orders SET status = 'after' WHERE id % 97 = 0; INSERT INTO notes VALUES (5000, 'x');",
    );
    verified_equal(&pipeline);
    eventually_blocking("the re-copies end", WAIT, || {
        let s = text(&ferry(&["status", p]));
        // The checkpoint's lines (`  table t: …`), not the live status's,
        // which says the same once the running pipeline publishes it.
        let done = s
            .lines()
            .filter(|l| l.starts_with("  table ") && l.contains("re-copied online"))
            .count();
        if done == 3 { Ok(()) } else { Err(s) }
    });
    assert!(log_has(&log, "target consistent"), "consistency is logged");
    assert!(terminate(child).success());
}

#[test]
fn postgres_resync_repairs_a_table_while_changes_flow() {
    let pg = pg_with_tables();
    let d = Dir::new();
    let log = d.path("ferry.log");
    let pipeline = pg_pipeline(&d, &pg, "", "");
    let p = pipeline.to_str().unwrap();
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    // Someone writes to the target behind ferry's back.
    pg.psql_in(
        "dst",
        "DELETE FROM orders WHERE id % 50 = 0; UPDATE orders SET status = 'bad' WHERE id = 7;
         INSERT INTO orders VALUES (99999, 'extra', 0); DELETE FROM events WHERE amount < 5;",
    );
    assert_eq!(ferry(&["verify", p]).status.code(), Some(1));

    let writer = {
        let url = pg.url_for("src");
        std::thread::spawn(move || {
            let sql = "DO $$ BEGIN FOR i IN 1..300 LOOP
                 UPDATE orders SET total = total + 1 WHERE id = 1 + (i * 7) % 3000;
                 INSERT INTO events VALUES (i % 10, i);
                 COMMIT; PERFORM pg_sleep(0.003); END LOOP; END $$;";
            std::process::Command::new("psql")
                .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", sql])
                .output()
                .unwrap()
        })
    };
    for t in ["orders", "events"] {
        let out = ferry(&["resync", p, t]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(writer.join().unwrap().status.success());
    verified_equal(&pipeline);
    assert!(log_has(&log, "online re-copy done"));
    let status = text(&ferry(&["status", p]));
    assert!(status.contains("re-copied online"), "{status}");
    // An unknown table is refused with the tables to choose from.
    let out = ferry(&["resync", p, "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("public.orders"), "{}", text(&out));
    assert!(terminate(child).success());
}

#[test]
fn postgres_a_table_out_of_the_selection_and_back_is_copied_again() {
    let PgCase {
        pg,
        d,
        log,
        pipeline,
    } = PgCase::new();
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    assert!(terminate(child).success());

    let without = pg_pipeline(&d, &pg, "", "exclude = [\"public.notes\"]");
    let child = run_until_streaming(&without, &log);
    pg.psql_in(
        "src",
        "UPDATE notes SET body = 'changed meanwhile' WHERE id < 50; DELETE FROM notes WHERE id > 790;",
    );
    pg.psql_in("src", "UPDATE orders SET status = 'x' WHERE id = 1");
    verified_equal(&without);
    assert!(terminate(child).success());
    let status = text(&ferry(&["status", without.to_str().unwrap()]));
    assert!(
        status.contains("table public.notes: not copied"),
        "{status}"
    );

    let pipeline = pg_pipeline(&d, &pg, "", "");
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    assert!(terminate(child).success());
}

fn sqlite_source(d: &Dir) {
    d.source()
        .execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER);
             WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 2000)
             INSERT INTO items SELECT i, 'item ' || i, i % 13 FROM g;
             CREATE TABLE ledger (account INTEGER, amount INTEGER);
             INSERT INTO ledger VALUES (1, 10), (1, 10), (2, 5);",
        )
        .unwrap();
}

#[test]
fn sqlite_a_removed_capture_is_refused_then_resynced_online_with_on_gap() {
    let d = Dir::new();
    sqlite_source(&d);
    let log = d.path("ferry.log");
    let pipeline = d.pipeline("[snapshot]\nchunk_rows = 300\n");
    let p = pipeline.to_str().unwrap();
    let child = run_until_streaming(&pipeline, &log);
    d.source()
        .execute("UPDATE items SET qty = 100 WHERE id < 5", [])
        .unwrap();
    verified_equal(&pipeline);
    assert!(terminate(child).success());

    assert!(ferry(&["teardown", p]).status.success());
    d.source()
        .execute_batch(
            "UPDATE items SET name = 'lost' WHERE id BETWEEN 10 AND 20;
             DELETE FROM items WHERE id > 1990; INSERT INTO ledger VALUES (3, 3);",
        )
        .unwrap();
    // The run reinstalls the capture, so what was written in between is
    // missing from the change log.
    for _ in 0..2 {
        let out = ferry(&["run", p]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let msg = text(&out);
        assert!(
            msg.contains("cannot continue from the target's checkpoint"),
            "{msg}"
        );
    }
    assert_eq!(ferry(&["verify", p]).status.code(), Some(1));

    let pipeline = d.pipeline("[snapshot]\nchunk_rows = 300\n").to_path_buf();
    std::fs::write(
        &pipeline,
        std::fs::read_to_string(&pipeline)
            .unwrap()
            .replace("poll_interval", "on_gap = \"resync\"\npoll_interval"),
    )
    .unwrap();
    let child = run_until_streaming(&pipeline, &log);
    d.source()
        .execute("INSERT INTO items VALUES (5000, 'new', 1)", [])
        .unwrap();
    verified_equal(&pipeline);
    assert!(terminate(child).success());
}

#[test]
fn sqlite_resync_repairs_a_table_while_changes_flow() {
    let d = Dir::new();
    sqlite_source(&d);
    let log = d.path("ferry.log");
    let pipeline = d.pipeline("[snapshot]\nchunk_rows = 250\n");
    let p = pipeline.to_str().unwrap();
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    let target = crate::kit::open(&d.path("target.db"));
    target
        .execute_batch(
            "DELETE FROM items WHERE id % 100 = 0; UPDATE items SET name = 'bad' WHERE id = 3;
             INSERT INTO items VALUES (77777, 'extra', 0); DELETE FROM ledger WHERE account = 1;",
        )
        .unwrap();
    drop(target);
    assert_eq!(ferry(&["verify", p]).status.code(), Some(1));
    let out = ferry(&["resync", p, "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    let src = d.source();
    for i in 0..200 {
        src.execute(
            "UPDATE items SET qty = qty + 1 WHERE id = ?1",
            [1 + (i * 11) % 2000],
        )
        .unwrap();
    }
    verified_equal(&pipeline);
    assert!(log_has(&log, "online re-copy done"));
    assert!(terminate(child).success());
}

/// Records the `recopy:` checkpoint records of the pipeline on a
/// PostgreSQL target: which tables were re-copied, and why.
fn recopies(pg: &PostgresServer) -> String {
    pg.psql_in(
        "dst",
        "SELECT coalesce(string_agg(scope, ',' ORDER BY scope), '') FROM _ferry_checkpoint \
         WHERE pipeline = 'ops' AND scope LIKE 'recopy:%'",
    )
}

#[test]
fn postgres_structure_changes_are_replayed_exactly_or_recopied() {
    let PgCase {
        pg,
        d: _dir,
        log,
        pipeline,
    } = PgCase::new();
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);

    // Exact replays: a constant default fills the old rows; a rename keeps
    // the values (a drop + add would make them NULL). A change to each
    // table makes pgoutput describe it again.
    pg.psql_in(
        "src",
        "ALTER TABLE orders ADD COLUMN state text NOT NULL DEFAULT 'active';
         UPDATE orders SET status = 'touched' WHERE id = 1;
         ALTER TABLE notes RENAME COLUMN body TO text_body;
         UPDATE notes SET text_body = 'renamed' WHERE id = 1;",
    );
    verified_equal(&pipeline);
    assert_eq!(recopies(&pg), "", "no re-copy was needed");
    assert_eq!(
        pg.psql_in("dst", "SELECT count(*) FROM orders WHERE state = 'active'"),
        "3000"
    );

    // A type change that rewrites the values, and a volatile default:
    // the table is re-copied online.
    pg.psql_in(
        "src",
        "ALTER TABLE orders ALTER COLUMN total TYPE text USING (total * 2)::text;
         UPDATE orders SET status = 'after type change' WHERE id = 2;
         ALTER TABLE notes ADD COLUMN at timestamptz DEFAULT clock_timestamp();
         UPDATE notes SET text_body = 'x' WHERE id = 2;",
    );
    verified_equal(&pipeline);
    assert_eq!(recopies(&pg), "recopy:public.notes,recopy:public.orders");
    assert!(terminate(child).success());
}

#[test]
fn postgres_a_column_added_while_ferry_is_stopped_is_copied_with_its_values() {
    let PgCase {
        pg,
        d: _dir,
        log,
        pipeline,
    } = PgCase::new();
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    assert!(terminate(child).success());
    pg.psql_in(
        "src",
        "UPDATE orders SET status = 'before' WHERE id < 10;
         ALTER TABLE orders ADD COLUMN region text NOT NULL DEFAULT 'eu';
         UPDATE orders SET region = 'us' WHERE id % 2 = 0;",
    );
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    assert!(terminate(child).success());
}

#[test]
fn sqlite_structure_changes_while_running_and_while_stopped_converge() {
    let d = Dir::new();
    sqlite_source(&d);
    let log = d.path("ferry.log");
    let pipeline = d.pipeline("[snapshot]\nchunk_rows = 300\n");
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    // While running: a column with a default (old rows hold it), and a
    // write in the same transaction as the ALTER.
    d.source()
        .execute_batch(
            "BEGIN; ALTER TABLE items ADD COLUMN color TEXT DEFAULT 'red';
             UPDATE items SET color = 'blue' WHERE id < 10; COMMIT;",
        )
        .unwrap();
    verified_equal(&pipeline);
    assert!(terminate(child).success());
    // While stopped (ferry's old fix — add the column on the target —
    // left NULL in every old row).
    d.source()
        .execute_batch(
            "ALTER TABLE items ADD COLUMN size INTEGER NOT NULL DEFAULT 7;
             UPDATE items SET size = 9 WHERE id BETWEEN 100 AND 120;",
        )
        .unwrap();
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    assert!(terminate(child).success());
}

#[test]
fn a_table_created_while_running_is_copied_online() {
    // PostgreSQL → PostgreSQL.
    let PgCase {
        pg,
        d: _dir,
        log,
        pipeline,
    } = PgCase::new();
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    pg.psql_in(
        "src",
        "CREATE TABLE late (id int PRIMARY KEY, v text);
         INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 1500) g;",
    );
    eventually_blocking("the new table is picked up", WAIT, || {
        if log_has(&log, "a new table matches the selection") {
            Ok(())
        } else {
            Err(())
        }
    });
    pg.psql_in("src", "UPDATE late SET v = 'changed' WHERE id % 10 = 0");
    verified_equal(&pipeline);
    assert!(terminate(child).success());
    // A restart does not copy it again.
    let child = run_until_streaming(&pipeline, &log);
    pg.psql_in("src", "DELETE FROM late WHERE id > 1400");
    verified_equal(&pipeline);
    assert!(terminate(child).success());

    // SQLite → SQLite.
    let d = Dir::new();
    sqlite_source(&d);
    let log = d.path("ferry.log");
    let pipeline = d.pipeline("[snapshot]\nchunk_rows = 300\n");
    let child = run_until_streaming(&pipeline, &log);
    verified_equal(&pipeline);
    d.source()
        .execute_batch(
            "CREATE TABLE late (id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 700)
             INSERT INTO late SELECT i, 'v' || i FROM g;",
        )
        .unwrap();
    d.source()
        .execute("UPDATE late SET v = 'changed' WHERE id < 5", [])
        .unwrap();
    verified_equal(&pipeline);
    assert!(terminate(child).success());
}

#[test]
fn postgres_after_a_copy_interrupted_by_kill_9_the_target_is_consistent_from_the_newer_snapshot() {
    let pg = pg_with_tables();
    pg.psql_in(
        "src",
        "CREATE TABLE big (id int PRIMARY KEY, v text);
         INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 60000) g;",
    );
    let d = Dir::new();
    let log = d.path("ferry.log");
    let pipeline = pg_pipeline(&d, &pg, "", "");
    let copied = || {
        pg.try_psql_in("dst", "SELECT count(*) FROM big")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    let mut partial = false;
    for _ in 0..10 {
        if crate::kit::kill_after_copy_progress(&pipeline, &log, 60_000, &copied) {
            partial = true;
            break;
        }
    }
    assert!(partial, "a kill must land in the middle of the copy");
    let child = run_until_streaming(&pipeline, &log);
    let text = std::fs::read_to_string(&log).unwrap();
    // The restart copied the rest in a newer snapshot: the target is
    // consistent only from there.
    let newest = text
        .lines()
        .rfind(|l| l.contains("snapshot started position="))
        .and_then(|l| l.split("position=").nth(1))
        .and_then(|s| s.split_whitespace().take(2).last())
        .map(str::to_owned)
        .expect("the restart took a snapshot");
    eventually_blocking("the consistency signal", WAIT, || {
        let s = crate::kit::text(&ferry(&["status", pipeline.to_str().unwrap()]));
        if s.contains(&format!("target:    consistent since lsn {newest}")) {
            Ok(())
        } else {
            Err(s)
        }
    });
    assert!(log_has(&log, &format!("target consistent at lsn {newest}")));
    verified_equal(&pipeline);
    assert!(terminate(child).success());
}
