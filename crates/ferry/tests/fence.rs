//! One runner per pipeline whatever the source (the target's fence), and
//! a target that is its own source refused, on real processes.

use std::path::Path;
use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{
    Dir, count, ferry, pg_number, run_to_exit, spawn_run, streams_started, terminate, text,
};

/// A SQLite source with a table without a key: a second runner would
/// insert every new row twice.
fn keyless_source(d: &Dir) {
    d.source()
        .execute_batch(
            "CREATE TABLE ledger (n INTEGER, note TEXT);
             INSERT INTO ledger VALUES (1, 'seed'), (1, 'seed');",
        )
        .unwrap();
}

/// Runs the pipeline, then a second runner of it: refused with exit 2
/// naming the pipeline and `target`, while the first keeps running and
/// applies every new row once; `ferry reset` is refused as well. Then a
/// runner killed with `kill -9` does not block the next one.
fn a_second_runner_is_refused(p: &Path, log: &Path, target: &str, rows: &dyn Fn() -> i64, d: &Dir) {
    let arg = p.to_str().unwrap();
    let first = spawn_run(p, log);
    eventually_blocking("the first runner streams", Duration::from_secs(60), || {
        (rows() == 2 && streams_started(log) == 1).then_some(())
    });

    let (code, out) = run_to_exit(&["run", arg], Duration::from_secs(30));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("another ferry runs pipeline \"test\"")
            && out.contains(target)
            && out.contains("fix: stop the other `ferry run`"),
        "{out}"
    );
    let (code, out) = run_to_exit(&["reset", arg], Duration::from_secs(30));
    assert_eq!(code, 2, "reset under a running pipeline: {out}");
    assert!(out.contains("another ferry runs pipeline"), "{out}");

    let mut first = first;
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first runner must keep running"
    );
    let src = d.source();
    for n in 2..=50 {
        src.execute("INSERT INTO ledger VALUES (?1, 'live')", [n])
            .unwrap();
    }
    eventually_blocking("every row arrives once", Duration::from_secs(60), || {
        let n = rows();
        (n == 51).then_some(()).ok_or(n)
    });
    assert!(
        terminate(first).success(),
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
    let v = ferry(&["verify", arg]);
    assert!(v.status.success(), "{}", text(&v));

    // kill -9: the lock goes with the process (or its sessions).
    let mut killed = spawn_run(p, log);
    eventually_blocking("the next runner streams", Duration::from_secs(60), || {
        (streams_started(log) == 2).then_some(())
    });
    killed.kill().unwrap();
    killed.wait().unwrap();
    let next = spawn_run(p, log);
    eventually_blocking(
        "a runner after a kill -9 streams",
        Duration::from_secs(60),
        || (streams_started(log) == 3).then_some(()),
    );
    src.execute("INSERT INTO ledger VALUES (51, 'after the kill')", [])
        .unwrap();
    eventually_blocking("the row arrives once", Duration::from_secs(60), || {
        let n = rows();
        (n == 52).then_some(()).ok_or(n)
    });
    assert!(terminate(next).success());
    let v = ferry(&["verify", arg]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn sqlite_to_sqlite_one_runner_per_pipeline() {
    let d = Dir::new();
    keyless_source(&d);
    let p = d.pipeline_between(
        &d.source_url(),
        &format!("sqlite:{}", d.path("target.db").display()),
        "",
    );
    let target = d.path("target.db");
    a_second_runner_is_refused(
        &p,
        &d.path("ferry.log"),
        &target.display().to_string(),
        &|| count(&target, "ledger"),
        &d,
    );
}

#[test]
fn sqlite_to_postgres_one_runner_per_pipeline() {
    let pg = PostgresServer::start();
    pg.create_database("dst");
    let d = Dir::new();
    keyless_source(&d);
    let p = d.pipeline_between(&d.source_url(), &pg.url_for("dst"), "");
    let rows = || pg_number(&pg, "dst", "SELECT count(*) FROM ledger");
    a_second_runner_is_refused(
        &p,
        &d.path("ferry.log"),
        &format!("127.0.0.1:{}/dst", pg.port()),
        &rows,
        &d,
    );
}

/// `ferry check` fails the identity item and `ferry run` refuses, before
/// installing anything on the source.
fn same_database_refused(p: &Path) {
    let arg = p.to_str().unwrap();
    let check = ferry(&["check", arg]);
    let t = text(&check);
    assert_eq!(check.status.code(), Some(1), "{t}");
    assert!(
        t.contains("[FAIL] source and target are different databases")
            && t.contains("are the same database"),
        "{t}"
    );
    let (code, out) = run_to_exit(&["run", arg], Duration::from_secs(30));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("are the same database") && out.contains("fix: point `target.url`"),
        "{out}"
    );
}

#[test]
fn postgres_same_database_by_another_host_name_is_refused() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');",
    );
    let d = Dir::new();
    let src = pg.url_for("src");
    let p = d.pipeline_between(&src, &src.replace("127.0.0.1", "localhost"), "");
    same_database_refused(&p);
    assert_eq!(
        pg.psql_in("src", "SELECT count(*) FROM pg_replication_slots"),
        "0",
        "nothing was installed on the source"
    );

    // Another database of the same server is a legitimate target.
    let p = d.pipeline_between(&src, &pg.url_for("dst"), "");
    let check = ferry(&["check", p.to_str().unwrap()]);
    assert!(
        text(&check).contains("[ok  ] source and target are different databases"),
        "{}",
        text(&check)
    );
    let log = d.path("ferry.log");
    let child = spawn_run(&p, &log);
    pg.psql_in("src", "INSERT INTO t VALUES (2, 'b')");
    eventually_blocking("rows arrive", Duration::from_secs(60), || {
        (pg.try_psql_in("dst", "SELECT count(*) FROM t").ok()? == "2").then_some(())
    });
    assert!(terminate(child).success());
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn sqlite_same_file_by_another_path_is_refused() {
    let d = Dir::new();
    keyless_source(&d);
    let source = d.source_url();
    let link = d.path("link.db");
    std::os::unix::fs::symlink(d.path("source.db"), &link).unwrap();
    for target in [
        format!(
            "sqlite:{}",
            d.dir.path().join(".").join("source.db").display()
        ),
        format!("sqlite:{}", link.display()),
    ] {
        same_database_refused(&d.pipeline_between(&source, &target, ""));
    }
    let captured: i64 = d
        .source()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = '_ferry_changes'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(captured, 0, "capture was not installed");
}
