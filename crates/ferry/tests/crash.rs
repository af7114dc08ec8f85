//! Exactly-once under `kill -9`: the real binary is killed at many random
//! moments while a writer runs concurrent money transfers; at the end the
//! target equals the source exactly, and no read of the target during the
//! run saw a total other than the invariant one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_testkit::eventually_blocking;
use rand::Rng;

use crate::kit::{
    Dir, count, dump, ferry, kill_after_copy_progress, open, spawn_run, spawn_streaming, terminate,
    text,
};

const ACCOUNTS: i64 = 200;
const START_BALANCE: i64 = 1_000;
const TOTAL: i64 = ACCOUNTS * START_BALANCE;

pub fn setup(d: &Dir) {
    let c = d.source();
    c.execute_batch(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE transfers (id INTEGER PRIMARY KEY, from_id INTEGER NOT NULL, to_id INTEGER NOT NULL, amount INTEGER NOT NULL);
         -- No key: identical rows, changed one row at a time.
         CREATE TABLE ledger (account INTEGER, amount INTEGER, note TEXT);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for id in 1..=ACCOUNTS {
        tx.execute("INSERT INTO accounts VALUES (?1, ?2)", [id, START_BALANCE])
            .unwrap();
    }
    tx.commit().unwrap();
}

/// Multi-row transactions that keep the sum of balances constant, until
/// `stop`; with `large`, every 500th also inserts 1500 `ledger` rows.
pub fn writer(
    d: &Dir,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    large: bool,
) -> std::thread::JoinHandle<()> {
    let path = d.path("source.db");
    std::thread::spawn(move || {
        let mut c = open(&path);
        let mut rng = rand::rng();
        let mut next_id = 1_000_000i64;
        while !stop.load(Ordering::Relaxed) {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            let legs = rng.random_range(1..=3);
            for _ in 0..legs {
                let a = rng.random_range(1..=ACCOUNTS);
                let b = rng.random_range(1..=ACCOUNTS);
                let amount = rng.random_range(1..=50);
                tx.execute(
                    "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
                    [amount, a],
                )
                .unwrap();
                tx.execute(
                    "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
                    [amount, b],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO transfers (from_id, to_id, amount) VALUES (?1, ?2, ?3)",
                    [a, b, amount],
                )
                .unwrap();
                tx.execute(
                    "INSERT INTO ledger VALUES (?1, ?2, 'leg'), (?1, ?2, 'leg')",
                    [a, amount],
                )
                .unwrap();
            }
            if rng.random_ratio(1, 4) {
                let a = rng.random_range(1..=ACCOUNTS);
                tx.execute(
                    "UPDATE ledger SET note = 'seen' WHERE rowid = \
                     (SELECT rowid FROM ledger WHERE account = ?1 AND note = 'leg' LIMIT 1)",
                    [a],
                )
                .unwrap();
                tx.execute(
                    "DELETE FROM ledger WHERE rowid = (SELECT rowid FROM ledger WHERE account = ?1 LIMIT 1)",
                    [rng.random_range(1..=ACCOUNTS)],
                )
                .unwrap();
            }
            // A transaction larger than the pipeline's 1000-row chunks: the
            // source hands it over in Partials.
            if large && done.load(Ordering::Relaxed) % 500 == 250 {
                tx.execute(
                    "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1500) \
                     INSERT INTO ledger SELECT n % 200, 1, 'bulk' FROM s",
                    [],
                )
                .unwrap();
            }
            // Now and then move a whole account to a new key (delete + insert
            // in one transaction; also exercises key changes).
            if rng.random_ratio(1, 20) {
                let a = rng.random_range(1..=ACCOUNTS);
                next_id += 1;
                tx.execute("UPDATE accounts SET id = ?1 WHERE id = ?2", [next_id, a])
                    .unwrap();
                tx.execute("UPDATE accounts SET id = ?1 WHERE id = ?2", [a, next_id])
                    .unwrap();
            }
            tx.commit().unwrap();
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Reads the target continuously; counts reads and invariant violations.
fn reader(
    d: &Dir,
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    bad: Arc<std::sync::Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    let path = d.path("target.db");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if !path.exists() {
                std::thread::yield_now();
                continue;
            }
            let Ok(c) = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            ) else {
                continue;
            };
            let _ = c.busy_timeout(Duration::from_secs(5));
            for _ in 0..50 {
                let r: Result<(i64, i64), _> = c.query_row(
                    "SELECT count(*), COALESCE(sum(balance), 0) FROM accounts",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                );
                match r {
                    Ok((0, _)) => {}
                    Ok((n, sum)) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                        if sum != TOTAL || n != ACCOUNTS {
                            bad.lock()
                                .unwrap()
                                .push(format!("read {n} accounts with total {sum}"));
                        }
                    }
                    Err(_) => break, // table not created yet, or db being created
                }
            }
        }
    })
}

/// The keyless `ledger` as a multiset: its rows, sorted.
pub fn ledger(path: &std::path::Path) -> Option<Vec<String>> {
    let mut rows = dump(path, "ledger")?;
    rows.sort();
    Some(rows)
}

#[test]
fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    kill_9_run("transactional", 50, true);
}

/// Eventual mode lets tables commit independently, so readers may see a
/// transfer half applied: only the end state is checked, not the reads.
#[test]
fn kill_9_in_eventual_mode_loses_and_doubles_nothing() {
    kill_9_run("eventual", 25, false);
}

fn kill_9_run(consistency: &str, kills: usize, check_reads: bool) {
    let d = Dir::new();
    setup(&d);
    let pipeline = d.pipeline(&format!(
        "[apply]\nbatch_time = \"20ms\"\nconsistency = \"{consistency}\"\n"
    ));
    let log = d.path("ferry.log");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = writer(&d, stop.clone(), done.clone(), false);
    let r = reader(&d, stop.clone(), reads.clone(), bad.clone());

    let mut rng = rand::rng();
    for i in 0..kills {
        // The first kills land during start-up and the snapshot, the others
        // while streaming, each while the writer still writes.
        let (mut child, written) = if i < 5 {
            (spawn_run(&pipeline, &log), None)
        } else {
            let child = spawn_streaming(&pipeline, &log);
            (child, Some(done.load(Ordering::Relaxed)))
        };
        let ms = if i < 5 {
            rng.random_range(0..60)
        } else {
            rng.random_range(0..250)
        };
        std::thread::sleep(Duration::from_millis(ms)); // the random kill moment itself, not a wait for a condition
        if let Some(before) = written {
            // The writer still writes: the kill lands among live changes.
            eventually_blocking(
                "the writer to commit while ferry streams",
                Duration::from_secs(30),
                || (done.load(Ordering::Relaxed) > before).then_some(()),
            );
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();

    // Final run: catch up, then stop cleanly.
    let child = spawn_run(&pipeline, &log);
    let src = d.path("source.db");
    let tgt = d.path("target.db");
    eventually_blocking(
        "target catches up with the source",
        Duration::from_secs(60),
        || {
            let (a, b) = (dump(&src, "transfers")?, dump(&tgt, "transfers")?);
            (a == b
                && dump(&src, "accounts") == dump(&tgt, "accounts")
                && ledger(&src) == ledger(&tgt))
            .then_some(())
        },
    );
    let status = terminate(child);
    r.join().unwrap();
    assert!(
        status.success(),
        "clean stop must exit 0: {status:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    assert_eq!(
        dump(&src, "accounts"),
        dump(&tgt, "accounts"),
        "accounts differ"
    );
    assert_eq!(
        dump(&src, "transfers"),
        dump(&tgt, "transfers"),
        "transfers lost or doubled"
    );
    assert_eq!(ledger(&src), ledger(&tgt), "ledger rows lost or doubled");
    assert!(ledger(&src).is_some_and(|l| l.len() > 100));
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
    let bad = bad.lock().unwrap();
    if check_reads {
        assert!(
            bad.is_empty(),
            "readers saw states the source never had: {:?}",
            &bad[..bad.len().min(10)]
        );
    }
    assert!(
        reads.load(Ordering::Relaxed) > 100,
        "the reader must actually have read the target"
    );
    assert!(
        done.load(Ordering::Relaxed) > 200,
        "the writer must have made transfers during the kills"
    );
}

#[test]
fn kill_9_during_the_snapshot_resumes_without_duplicates() {
    let d = Dir::new();
    {
        let c = d.source();
        c.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL);",
        )
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare("INSERT INTO items VALUES (?1, ?2, ?3)").unwrap();
            for i in 0..400_000i64 {
                st.execute(rusqlite::params![i, format!("item-{i}"), i as f64 / 7.0])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let pipeline = d.pipeline("[snapshot]\nchunk_rows = 1000\n");
    let log = d.path("ferry.log");
    let tgt = d.path("target.db");
    let mut rng = rand::rng();
    let copied = || count(&tgt, "items");
    let mut killed_mid_copy = 0;
    for i in 0..15 {
        let partial = if i % 3 == 0 {
            // Any moment, start-up included.
            let mut child = spawn_run(&pipeline, &log);
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300))); // random kill moment
            child.kill().unwrap();
            child.wait().unwrap();
            (1..400_000).contains(&copied())
        } else {
            kill_after_copy_progress(&pipeline, &log, 400_000, &copied)
        };
        killed_mid_copy += usize::from(partial);
    }
    // A write after the kills must still arrive exactly once.
    d.source()
        .execute("UPDATE items SET name = 'changed' WHERE id = 7", [])
        .unwrap();
    let child = spawn_run(&pipeline, &log);
    let src = d.path("source.db");
    eventually_blocking(
        "snapshot completes and the change arrives",
        Duration::from_secs(120),
        || (dump(&src, "items")? == dump(&tgt, "items")?).then_some(()),
    );
    assert!(terminate(child).success());
    assert!(
        killed_mid_copy > 0,
        "at least one kill must land in the middle of the copy"
    );
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}

#[test]
fn a_keyless_table_killed_mid_copy_is_copied_once() {
    const ROWS: i64 = 300_000;
    let d = Dir::new();
    {
        let c = d.source();
        c.execute_batch("CREATE TABLE notes (n INTEGER, body TEXT);")
            .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        {
            // Identical rows: `n` repeats every 1000 rows.
            let mut st = tx.prepare("INSERT INTO notes VALUES (?1, ?2)").unwrap();
            for i in 0..ROWS {
                st.execute(rusqlite::params![i % 1000, format!("note {}", i % 1000)])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let pipeline = d.pipeline("[snapshot]\nchunk_rows = 1000\n");
    let log = d.path("ferry.log");
    let tgt = d.path("target.db");
    let copied = || count(&tgt, "notes");
    let killed_mid_copy = (0..6)
        .filter(|_| kill_after_copy_progress(&pipeline, &log, ROWS, &copied))
        .count();
    d.source()
        .execute_batch("INSERT INTO notes VALUES (1, 'note 1'); DELETE FROM notes WHERE rowid = 5;")
        .unwrap();
    let child = spawn_run(&pipeline, &log);
    let src = d.path("source.db");
    let sorted = |p: &std::path::Path| {
        let mut rows = dump(p, "notes")?;
        rows.sort();
        Some(rows)
    };
    eventually_blocking(
        "the copy completes and the changes arrive once",
        Duration::from_secs(120),
        || (sorted(&src)? == sorted(&tgt)?).then_some(()),
    );
    assert!(terminate(child).success());
    assert!(
        killed_mid_copy > 0,
        "at least one kill must land in the middle of the copy"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("copying it again from the start"));
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}
