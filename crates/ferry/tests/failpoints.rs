//! Crash tests that show where they kill: the real binary aborts at a
//! named failpoint of the product code (`FERRY_FAILPOINTS`, see
//! `ferry_core::failpoint`) while a writer keeps writing, is restarted on
//! the same stores (and aborts there again, at another hit), then runs
//! clean: nothing may be lost or doubled (`ferry verify`, per-table
//! contents, and a keyless ledger table whose doubled rows would show).
//!
//! Each test names the crash point of ARCHITECTURE.md ("Exactly once") it
//! exercises, for SQLite → SQLite and PostgreSQL → PostgreSQL.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_testkit::failpoint::{
    GROUP_COMMITTED, GROUP_EXECUTED, LARGE_TXN_PART_APPLIED, SNAPSHOT_CHUNK_COMMITTED,
    SNAPSHOT_CHUNK_LOADED,
};
use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::crash::{ledger, setup, writer};
use crate::kit::{
    Dir, count, crash_at, dump, ferry, log_count, log_tail, spawn_run, terminate, text,
};
use crate::postgres::{
    Writer, caught_up, newest_transfer, setup_source, stop_and_verify, write_pipeline,
};

/// Rows of the SQLite source's `items`: 20 snapshot chunks.
const ITEMS: i64 = 20_000;

/// Aborts `ferry run` at hit `nth` of `point` and checks that the run was
/// in the phase the point belongs to: copying (a snapshot started in this
/// run and did not finish) or streaming; `writing()` must move across a
/// streaming crash (the writer still writes).
fn crash_in_phase(pipeline: &Path, log: &Path, point: &str, nth: u64, writing: &dyn Fn() -> i64) {
    let lines = |what: &str| log_count(log, what);
    let (copies, copied, streams) = (
        lines("snapshot started"),
        lines("snapshot done"),
        lines("stream started"),
    );
    let written = writing();
    crash_at(pipeline, log, point, nth);
    if [SNAPSHOT_CHUNK_LOADED, SNAPSHOT_CHUNK_COMMITTED].contains(&point) {
        assert!(
            lines("snapshot started") > copies && lines("snapshot done") == copied,
            "the crash at {point} must land in the copy:\n{}",
            log_tail(log)
        );
    } else {
        assert!(
            lines("stream started") > streams,
            "the crash at {point} must land in the stream:\n{}",
            log_tail(log)
        );
        assert!(
            writing() > written,
            "the writer must be writing while ferry streams"
        );
    }
}

/// SQLite → SQLite: crashes at `point` on each of `hits`, then a clean run.
fn sqlite_crash(point: &str, hits: &[u64]) {
    let d = Dir::new();
    setup(&d);
    d.source()
        .execute_batch(&format!(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
             WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {ITEMS})
             INSERT INTO items SELECT n, 'item-' || n FROM s;"
        ))
        .unwrap();
    let pipeline = d.pipeline("[apply]\nbatch_time = \"20ms\"\n[snapshot]\nchunk_rows = 1000\n");
    let log = d.path("ferry.log");
    let (src, tgt) = (d.path("source.db"), d.path("target.db"));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = writer(
        &d,
        stop.clone(),
        done.clone(),
        point == LARGE_TXN_PART_APPLIED,
    );
    let written = || done.load(Ordering::Relaxed) as i64;
    for &nth in hits {
        crash_in_phase(&pipeline, &log, point, nth, &written);
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();

    let child = spawn_run(&pipeline, &log);
    eventually_blocking("the target catches up", Duration::from_secs(120), || {
        let same = count(&src, "transfers") == count(&tgt, "transfers")
            && count(&src, "ledger") == count(&tgt, "ledger")
            && count(&tgt, "items") == ITEMS
            && dump(&src, "accounts") == dump(&tgt, "accounts");
        same.then_some(())
    });
    assert!(terminate(child).success(), "clean stop must exit 0");
    assert_eq!(
        dump(&src, "transfers"),
        dump(&tgt, "transfers"),
        "transfers lost or doubled"
    );
    assert_eq!(ledger(&src), ledger(&tgt), "ledger rows lost or doubled");
    assert_eq!(
        dump(&src, "items"),
        dump(&tgt, "items"),
        "items lost or doubled"
    );
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}

/// PostgreSQL → PostgreSQL: crashes at `point` on each of `hits`, then a
/// clean run.
fn postgres_crash(point: &str, hits: &[u64]) {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    setup_source(&pg, 15_000);
    let d = Dir::new();
    let pipeline = write_pipeline(&d, &pg.url_for("src"), &pg.url_for("dst"));
    let log = d.path("ferry.log");
    let w = Writer::start(&pg, point == LARGE_TXN_PART_APPLIED);
    for &nth in hits {
        crash_in_phase(&pipeline, &log, point, nth, &|| newest_transfer(&pg));
    }
    w.stop();
    let child = spawn_run(&pipeline, &log);
    eventually_blocking("the target catches up", Duration::from_secs(120), || {
        caught_up(&pg)
    });
    stop_and_verify(child, &log, &pipeline);
}

/// During a chunk's load: the chunk rolls back, its range is copied again.
#[test]
fn sqlite_crash_during_a_chunk_load() {
    sqlite_crash(SNAPSHOT_CHUNK_LOADED, &[8, 4]);
}

/// Between chunks: the copy resumes after the last recorded range.
#[test]
fn sqlite_crash_between_chunks() {
    sqlite_crash(SNAPSHOT_CHUNK_COMMITTED, &[8, 4]);
}

/// Between a group's execute and its ordered commit: rolled back,
/// re-delivered from the checkpoint.
#[test]
fn sqlite_crash_between_execute_and_commit() {
    sqlite_crash(GROUP_EXECUTED, &[30, 5]);
}

/// Inside a large transaction, between its parts: rolled back whole.
#[test]
fn sqlite_crash_inside_a_large_transaction() {
    sqlite_crash(LARGE_TXN_PART_APPLIED, &[1, 1]);
}

/// After a commit, before its ack: the checkpoint decides, nothing is
/// applied twice.
#[test]
fn sqlite_crash_after_a_commit_before_its_ack() {
    sqlite_crash(GROUP_COMMITTED, &[30, 5]);
}

#[test]
fn postgres_crash_during_a_chunk_load() {
    postgres_crash(SNAPSHOT_CHUNK_LOADED, &[10, 5]);
}

#[test]
fn postgres_crash_between_chunks() {
    postgres_crash(SNAPSHOT_CHUNK_COMMITTED, &[10, 5]);
}

#[test]
fn postgres_crash_between_execute_and_commit() {
    postgres_crash(GROUP_EXECUTED, &[30, 5]);
}

#[test]
fn postgres_crash_inside_a_large_transaction() {
    postgres_crash(LARGE_TXN_PART_APPLIED, &[1, 1]);
}

#[test]
fn postgres_crash_after_a_commit_before_its_ack() {
    postgres_crash(GROUP_COMMITTED, &[30, 5]);
}

/// A misspelt failpoint must fail the crash test, not let it run uncrashed.
#[test]
fn a_misspelt_or_malformed_failpoint_is_refused() {
    use ferry_testkit::failpoint::FAILPOINTS_ENV;
    for (spec, says) in [
        ("group_comitted", "unknown failpoint(s) group_comitted"),
        ("group_committed=0", "not a hit number"),
    ] {
        let out = std::process::Command::new(crate::kit::FERRY)
            .args(["check", "no-such-pipeline.toml"])
            .env(FAILPOINTS_ENV, spec)
            .output()
            .expect("run ferry");
        let text = text(&out);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            text.contains(says) && text.contains("FERRY_FAILPOINTS"),
            "{text}"
        );
    }
}
