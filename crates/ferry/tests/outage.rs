//! Passing outages: ferry keeps trying through them (until
//! `apply.give_up_after`), catches up afterwards and loses or doubles
//! nothing; a connection known to be dead is not retried on.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{PostgresServer, eventually_blocking, free_port};

use crate::kit::{
    Dir, count, ferry, pg_number, run_to_exit, spawn_run, streams_started, terminate, text,
};

/// Longer than the old retry budget (8 restarts, about 25 s of back-off).
const OUTAGE: Duration = Duration::from_secs(40);

/// The restart attempts ferry logged so far.
fn restarts(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("restarting from the last checkpoint in")
        .count()
}

/// Keeps a server down until it has been down for [`OUTAGE`] and ferry
/// logged more restarts than the old budget allowed, checking that ferry
/// stays up meanwhile.
fn ride_out(child: &mut std::process::Child, log: &Path, down_since: Instant) {
    eventually_blocking(
        "ferry retries through an outage longer than the old budget",
        OUTAGE + Duration::from_secs(60),
        || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "ferry gave up during the outage ({status}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let n = restarts(log);
            (down_since.elapsed() >= OUTAGE && n > 8)
                .then_some(())
                .ok_or(n)
        },
    );
}

#[test]
fn a_target_outage_longer_than_the_old_budget_is_ridden_out() {
    let mut pg = PostgresServer::start();
    pg.create_database("dst");
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE ledger (n INTEGER, note TEXT);
             CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
             INSERT INTO ledger VALUES (0, 'seed');
             INSERT INTO accounts VALUES (1, 0);",
        )
        .unwrap();
    let p = d.pipeline_between(&d.source_url(), &pg.url_for("dst"), "");
    let log = d.path("ferry.log");
    let mut child = spawn_run(&p, &log);
    let src = d.source();
    let write = |n: i64| {
        src.execute_batch(&format!(
            "BEGIN; INSERT INTO ledger VALUES ({n}, 'live');
             UPDATE accounts SET balance = balance + {n} WHERE id = 1; COMMIT;"
        ))
        .unwrap();
    };
    eventually_blocking("ferry streams", Duration::from_secs(60), || {
        (streams_started(&log) == 1).then_some(())
    });
    for n in 1..=20 {
        write(n);
    }
    eventually_blocking("changes arrive", Duration::from_secs(60), || {
        (pg_number(&pg, "dst", "SELECT count(*) FROM ledger") == 21).then_some(())
    });

    pg.stop();
    let down_since = Instant::now();
    // Changes during the outage: the apply workers find their connections
    // dead and the pipeline restarts instead of retrying on them.
    for n in 21..=40 {
        write(n);
    }
    ride_out(&mut child, &log, down_since);
    pg.restart();
    for n in 41..=60 {
        write(n);
    }
    eventually_blocking("ferry catches up", Duration::from_secs(120), || {
        let got = pg_number(&pg, "dst", "SELECT count(*) FROM ledger");
        (got == 61).then_some(()).ok_or(got)
    });
    assert_eq!(
        pg_number(&pg, "dst", "SELECT count(DISTINCT n) FROM ledger"),
        61,
        "no row doubled"
    );
    let status = ferry(&["status", p.to_str().unwrap()]);
    assert!(text(&status).contains("restarts:"), "{}", text(&status));

    assert!(terminate(child).success());
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("on a lost connection") && !logged.contains("retrying group"),
        "a dead connection is not retried on:\n{logged}"
    );
    assert!(
        logged.contains("attempt 9, failing for") && logged.contains("giving up in"),
        "each attempt is logged with what is left:\n{logged}"
    );
}

#[test]
fn a_source_outage_longer_than_the_old_budget_is_ridden_out() {
    let mut pg = PostgresServer::start();
    pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE TABLE ledger (n int, note text);
         ALTER TABLE ledger REPLICA IDENTITY FULL;
         INSERT INTO ledger VALUES (0, 'seed');",
    );
    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(
        &pg.url_for("src"),
        &format!("sqlite:{}", target.display()),
        "",
    );
    let log = d.path("ferry.log");
    let mut child = spawn_run(&p, &log);
    eventually_blocking("ferry streams", Duration::from_secs(60), || {
        (streams_started(&log) == 1).then_some(())
    });
    pg.psql_in(
        "src",
        "INSERT INTO ledger SELECT g, 'before' FROM generate_series(1, 20) g",
    );
    eventually_blocking("changes arrive", Duration::from_secs(60), || {
        (count(&target, "ledger") == 21).then_some(())
    });

    // As a crash: a fast stop would wait for ferry to confirm the last
    // transaction it was sent, which it does at its next event.
    pg.crash();
    ride_out(&mut child, &log, Instant::now());
    pg.restart();
    pg.psql_in(
        "src",
        "INSERT INTO ledger SELECT g, 'after' FROM generate_series(21, 40) g",
    );
    eventually_blocking("ferry catches up", Duration::from_secs(120), || {
        let n = count(&target, "ledger");
        (n == 41).then_some(()).ok_or(n)
    });
    assert!(terminate(child).success());
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn give_up_after_is_honoured() {
    let d = Dir::new();
    d.source()
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY);")
        .unwrap();
    // Nothing listens there: every attempt is refused (transient).
    let target = format!("postgres://postgres@127.0.0.1:{}/dst", free_port());
    let p = d.pipeline_between(&d.source_url(), &target, "give_up_after = \"2s\"\n");
    let started = Instant::now();
    let (code, out) = run_to_exit(&["run", p.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("giving up: the pipeline kept failing for")
            && out.contains("apply.give_up_after = 2s")
            && out.contains("connection refused")
            && out.contains("fix:"),
        "{out}"
    );
    assert!(
        out.contains("restarting from the last checkpoint in"),
        "it retried before giving up: {out}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2), "{out}");
}

/// An operator stops the source PostgreSQL (`pg_ctl -m fast`) while ferry
/// streams from it: a fast stop waits for each logical walsender until its
/// client has confirmed everything sent, so ferry must confirm what its
/// target holds at once, not only after its next change arrives (which,
/// the server stopping, never does). Then ferry rides out the outage and
/// continues when the server is back.
#[test]
fn a_fast_stop_of_the_source_is_not_held_up_by_ferry() {
    let mut pg = PostgresServer::start();
    pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one');",
    );
    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(
        &pg.url_for("src"),
        &format!("sqlite:{}", target.display()),
        "",
    );
    let log = d.path("ferry.log");
    let mut child = spawn_run(&p, &log);
    eventually_blocking("ferry streams", Duration::from_secs(60), || {
        (streams_started(&log) == 1).then_some(())
    });
    pg.psql_in("src", "INSERT INTO t VALUES (2, 'two');");
    eventually_blocking("the change arrives", Duration::from_secs(60), || {
        (count(&target, "t") == 2).then_some(())
    });

    // The server's wal_sender_timeout is 60 s: a stop held up by ferry
    // takes that long.
    let asked = Instant::now();
    pg.stop();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "pg_ctl stop -m fast took {took:?} with ferry attached\n{}",
        crate::kit::log_tail(&log)
    );
    pg.restart();
    pg.psql_in("src", "INSERT INTO t VALUES (3, 'three');");
    eventually_blocking("ferry continues", Duration::from_secs(120), || {
        (count(&target, "t") == 3).then_some(())
    });
    assert!(child.try_wait().unwrap().is_none(), "ferry stopped");
    assert!(terminate(child).success());
}
