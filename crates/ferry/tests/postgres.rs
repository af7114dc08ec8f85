//! The real binary against a real PostgreSQL (started by the test kit):
//! PostgreSQL → PostgreSQL (transaction-consistent and eventual) and
//! PostgreSQL → SQLite under `kill -9` during the snapshot and during
//! change capture, with a concurrent transactional writer still writing at
//! every streaming kill; SQLite → PostgreSQL end to end.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};
use rand::Rng;

use crate::kit::{
    Dir, count, dump, ferry, kill_after_copy_progress, spawn_run, spawn_streaming, terminate, text,
};

const ACCOUNTS: i64 = 200;
const TOTAL: i64 = ACCOUNTS * 1_000;

pub fn write_pipeline(d: &Dir, source: &str, target: &str) -> std::path::PathBuf {
    write_pipeline_with(d, source, target, "")
}

/// A pipeline file named `crash` with 20 ms batches, 1000-row chunks and
/// `apply` (more `[apply]` keys).
pub fn write_pipeline_with(d: &Dir, source: &str, target: &str, apply: &str) -> std::path::PathBuf {
    let p = d.path("pipeline.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"crash\"\n[source]\nurl = \"{source}\"\n[target]\nurl = \"{target}\"\n[apply]\nbatch_time = \"20ms\"\n{apply}[snapshot]\nchunk_rows = 1000\n"
        ),
    )
    .unwrap();
    p
}

/// The source database `src`: `accounts` (200 rows), `transfers`, `items`
/// (`items` rows), `tags` (a text key, `items` × 4/3 rows) and `events`
/// (no key, `items` × 2/5 rows). Returns the rows of `items` and `tags`.
pub fn setup_source(pg: &PostgresServer, items: i64) -> i64 {
    let tags = items * 4 / 3;
    let events = items * 2 / 5;
    pg.psql_in(
        "src",
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE transfers (id bigserial PRIMARY KEY, from_id int NOT NULL, to_id int NOT NULL, amount int NOT NULL);
             CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, price numeric(12,2), at timestamptz);
             INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g;
             INSERT INTO items SELECT g, 'item-' || g, g / 7.0, now() FROM generate_series(1, {items}) g;
             -- A text key: copied in pieces split at sampled keys.
             CREATE TABLE tags (name text PRIMARY KEY, n int NOT NULL);
             INSERT INTO tags SELECT md5(g::text), g FROM generate_series(1, {tags}) g;
             ANALYZE tags;
             -- No key (REPLICA IDENTITY FULL), identical rows: copied in
             -- heap block pieces, changed one row at a time.
             CREATE TABLE events (account int, amount int, note text);
             ALTER TABLE events REPLICA IDENTITY FULL;
             INSERT INTO events SELECT g % 500, g % 7, CASE WHEN g % 3 = 0 THEN NULL ELSE 'seed' END
               FROM generate_series(1, {events}) g;
             ANALYZE events;"
        ),
    );
    items + tags
}

/// Money transfers on the source (3 rows each, plus rows of the keyless
/// `events`), committed one by one a few milliseconds apart, in `psql`
/// sessions of 25, until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<u64, String>>,
}

/// Rows of the transaction `Writer::start(.., true)` commits now and then:
/// more changes than the PostgreSQL source holds before it hands a
/// transaction over in `Partial`s.
pub const LARGE_TXN_ROWS: i64 = 12_000;

impl Writer {
    /// With `large`, every fourth session starts with one transaction of
    /// [`LARGE_TXN_ROWS`] `events` rows.
    pub fn start(pg: &PostgresServer, large: bool) -> Writer {
        let url = pg.url_for("src");
        let session = |large: bool| {
            let bulk = if large {
                format!(
                    "INSERT INTO events SELECT g % 500, 1, 'bulk' FROM generate_series(1, {LARGE_TXN_ROWS}) g; COMMIT;"
                )
            } else {
                String::new()
            };
            format!(
                "DO $$ DECLARE a int; b int; amt int; BEGIN
                   {bulk}
                   FOR i IN 1..25 LOOP
                     a := 1 + floor(random() * {ACCOUNTS})::int; b := 1 + floor(random() * {ACCOUNTS})::int;
                     amt := 1 + floor(random() * 50)::int;
                     UPDATE accounts SET balance = balance - amt WHERE id = a;
                     UPDATE accounts SET balance = balance + amt WHERE id = b;
                     INSERT INTO transfers (from_id, to_id, amount) VALUES (a, b, amt);
                     INSERT INTO events VALUES (a, amt, 'transfer'), (a, amt, 'transfer');
                     IF i % 3 = 0 THEN
                       UPDATE events SET amount = amount + 1
                         WHERE ctid = (SELECT ctid FROM events WHERE account = b % 500 LIMIT 1);
                       DELETE FROM events WHERE ctid = (SELECT ctid FROM events WHERE account = a % 500 LIMIT 1);
                     END IF;
                     COMMIT;
                     PERFORM pg_sleep(0.004);
                   END LOOP; END $$;"
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut transfers = 0;
            for n in 0u64.. {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let out = std::process::Command::new("psql")
                    .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c"])
                    .arg(session(large && n % 4 == 0))
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                transfers += 25;
            }
            Ok(transfers)
        });
        Writer { stop, handle }
    }

    /// Stops after the session in progress; returns the transfers made.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap().expect("the writer's transfers")
    }
}

/// The newest transfer on the source: moves while the writer writes.
pub fn newest_transfer(pg: &PostgresServer) -> i64 {
    pg_rows(pg, "src", "SELECT coalesce(max(id), 0) FROM transfers")
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// How many times [`kill_repeatedly`] kills, and where.
struct Kills {
    /// From the start: every other one right after the copy made
    /// progress, the others at random moments.
    start_up: usize,
    /// At least this many of them must leave a partial copy.
    mid_copy: usize,
    /// Rows of the tables `copied()` counts once copied.
    copied_rows: i64,
    /// At random moments after ferry started streaming, each while the
    /// writer still writes.
    streaming: usize,
}

/// Kills `ferry run` (`kill -9`) as `kills` says; `copied()` counts rows
/// copied to the target, `written()` moves while the writer writes.
fn kill_repeatedly(
    pipeline: &Path,
    log: &Path,
    kills: &Kills,
    copied: &dyn Fn() -> i64,
    written: &dyn Fn() -> i64,
) {
    let mut rng = rand::rng();
    let mut mid_copy = 0;
    for i in 0..kills.start_up {
        // Kills right after copy progress come first, until enough have
        // landed mid-copy: a kill at a random moment may let a run finish
        // the copy, after which no kill can land in it.
        let partial = if i % 2 == 0 || mid_copy < kills.mid_copy {
            kill_after_copy_progress(pipeline, log, kills.copied_rows, copied)
        } else {
            let mut child = spawn_run(pipeline, log);
            std::thread::sleep(Duration::from_millis(rng.random_range(50..1200))); // the random kill moment
            child.kill().expect("kill -9");
            child.wait().expect("reap");
            (1..kills.copied_rows).contains(&copied())
        };
        mid_copy += usize::from(partial);
    }
    eprintln!(
        "kill_repeatedly: {mid_copy} of {} kills left a partial copy",
        kills.start_up
    );
    assert!(
        mid_copy >= kills.mid_copy,
        "only {mid_copy} kills landed in the middle of the snapshot"
    );
    for _ in 0..kills.streaming {
        let mut child = spawn_streaming(pipeline, log);
        let before = written();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300))); // the random kill moment
        // The writer still writes: something committed since ferry started
        // streaming (the kill lands among live changes, not after them).
        eventually_blocking(
            "the writer to commit while ferry streams",
            Duration::from_secs(30),
            || (written() > before).then_some(()),
        );
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
}

/// PostgreSQL → PostgreSQL (`src` → `dst`): kills as `kills` says while a
/// writer writes, then runs `ferry run` until the target caught up.
/// Returns that run and the writer's transfers.
fn kill_then_catch_up(
    pg: &PostgresServer,
    pipeline: &Path,
    log: &Path,
    kills: &Kills,
) -> (std::process::Child, u64) {
    let w = Writer::start(pg, false);
    kill_repeatedly(pipeline, log, kills, &|| copied_to_dst(pg), &|| {
        newest_transfer(pg)
    });
    let transfers = w.stop();
    let child = spawn_run(pipeline, log);
    eventually_blocking("the target catches up", Duration::from_secs(120), || {
        caught_up(pg)
    });
    (child, transfers)
}

/// SIGTERM must end `ferry run` with exit 0, and `ferry verify` must then
/// find source and target equal.
pub fn stop_and_verify(child: std::process::Child, log: &Path, pipeline: &Path) {
    assert!(
        terminate(child).success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}

pub fn pg_rows(pg: &PostgresServer, db: &str, sql: &str) -> Vec<String> {
    pg.try_psql_in(db, sql)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

const ACCOUNTS_SQL: &str = "SELECT id || '|' || balance FROM accounts ORDER BY id";
const TRANSFERS_SQL: &str =
    "SELECT id || '|' || from_id || '|' || to_id || '|' || amount FROM transfers ORDER BY id";
const ITEMS_SQL: &str = "SELECT count(*) || '|' || sum(id) FROM items";
const TAGS_SQL: &str = "SELECT count(*) || '|' || sum(n) FROM tags";
/// The keyless table as a multiset: each distinct row with its count.
const EVENTS_SQL: &str = "SELECT account || '|' || amount || '|' || coalesce(note, '-') || '|' || count(*) \
     FROM events GROUP BY account, amount, note ORDER BY account, amount, coalesce(note, '-')";

/// Whether database `dst` holds what `src` holds: every transfer and
/// balance, the copied tables, and the keyless `events` as a multiset;
/// `Err` names the tables that still differ.
pub fn caught_up(pg: &PostgresServer) -> Result<(), Vec<&'static str>> {
    let differ: Vec<&str> = [
        ("transfers", TRANSFERS_SQL),
        ("accounts", ACCOUNTS_SQL),
        ("items", ITEMS_SQL),
        ("tags", TAGS_SQL),
        ("events", EVENTS_SQL),
    ]
    .into_iter()
    .filter(|(_, sql)| pg_rows(pg, "src", sql) != pg_rows(pg, "dst", sql))
    .map(|(table, _)| table)
    .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(differ)
    }
}

/// Rows of `items` and `tags` on database `dst`.
fn copied_to_dst(pg: &PostgresServer) -> i64 {
    pg_rows(
        pg,
        "dst",
        "SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM tags)",
    )
    .first()
    .and_then(|n| n.parse().ok())
    .unwrap_or(0)
}

#[test]
fn postgres_to_postgres_kill_9_loses_and_doubles_nothing() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    let copied_rows = setup_source(&pg, 150_000);
    let d = Dir::new();
    let pipeline = write_pipeline(&d, &pg.url_for("src"), &pg.url_for("dst"));
    let log = d.path("ferry.log");

    // A reader of the target checks every state it sees.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stop, reads, bad) = (stop.clone(), reads.clone(), bad.clone());
        let url = pg.url_for("dst");
        let psql = "psql";
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(out) = std::process::Command::new(psql)
                    .args([
                        "-X",
                        "-A",
                        "-t",
                        "-d",
                        &url,
                        "-c",
                        "SELECT count(*) || ',' || coalesce(sum(balance), 0) FROM accounts",
                    ])
                    .output()
                else {
                    continue;
                };
                let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                let Some((n, sum)) = s.split_once(',') else {
                    continue;
                };
                if n == "0" {
                    continue;
                }
                reads.fetch_add(1, Ordering::Relaxed);
                if n != ACCOUNTS.to_string() || sum != TOTAL.to_string() {
                    bad.lock().unwrap().push(s);
                }
            }
        })
    };

    let kills = Kills {
        start_up: 50,
        mid_copy: 5,
        copied_rows,
        streaming: 50,
    };
    let (child, _) = kill_then_catch_up(&pg, &pipeline, &log, &kills);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    stop_and_verify(child, &log, &pipeline);
    // The kills above landed in a snapshot whose rows passed through as
    // binary COPY tuples (built-in types only, same server version).
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("rows pass through undecoded"),
        "PostgreSQL → PostgreSQL snapshot rows should pass through undecoded"
    );
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "readers saw states the source never had: {:?}",
        &bad[..bad.len().min(10)]
    );
    assert!(
        reads.load(Ordering::Relaxed) > 20,
        "the reader must actually have read the target"
    );
}

/// Eventual mode: four workers commit tables independently (a reader may
/// see part of a transfer, so only the end state is checked); the keyless
/// `events` catches a part applied twice. Smaller than the transactional
/// test above.
#[test]
fn postgres_to_postgres_eventual_kill_9_loses_and_doubles_nothing() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    let copied_rows = setup_source(&pg, 60_000);
    let d = Dir::new();
    let pipeline = write_pipeline_with(
        &d,
        &pg.url_for("src"),
        &pg.url_for("dst"),
        "workers = 4\nconsistency = \"eventual\"\n",
    );
    let log = d.path("ferry.log");
    let kills = Kills {
        start_up: 12,
        mid_copy: 2,
        copied_rows,
        streaming: 30,
    };
    let (child, transfers) = kill_then_catch_up(&pg, &pipeline, &log, &kills);
    stop_and_verify(child, &log, &pipeline);
    assert!(
        transfers > 100,
        "the writer made only {transfers} transfers"
    );
}

#[test]
fn postgres_to_sqlite_kill_9_loses_and_doubles_nothing() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    let copied_rows = setup_source(&pg, 150_000);
    let d = Dir::new();
    let target = d.path("target.db");
    let pipeline = write_pipeline(
        &d,
        &pg.url_for("src"),
        &format!("sqlite:{}", target.display()),
    );
    let log = d.path("ferry.log");

    let w = Writer::start(&pg, false);
    let kills = Kills {
        start_up: 50,
        mid_copy: 5,
        copied_rows,
        streaming: 50,
    };
    let copied = || count(&target, "items") + count(&target, "tags");
    kill_repeatedly(&pipeline, &log, &kills, &copied, &|| newest_transfer(&pg));
    w.stop();

    let child = spawn_run(&pipeline, &log);
    let sqlite_rows = |sql: &str| -> Option<Vec<String>> {
        let c = rusqlite::Connection::open_with_flags(
            &target,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        let mut st = c.prepare(sql).ok()?;
        st.query_map([], |r| r.get::<_, String>(0))
            .ok()?
            .collect::<Result<Vec<_>, _>>()
            .ok()
    };
    eventually_blocking("the target catches up", Duration::from_secs(120), || {
        let same = sqlite_rows(TRANSFERS_SQL)? == pg_rows(&pg, "src", TRANSFERS_SQL)
            && sqlite_rows(ACCOUNTS_SQL)? == pg_rows(&pg, "src", ACCOUNTS_SQL)
            && sqlite_rows(ITEMS_SQL)? == pg_rows(&pg, "src", ITEMS_SQL)
            && sqlite_rows(TAGS_SQL)? == pg_rows(&pg, "src", TAGS_SQL)
            && sqlite_rows(EVENTS_SQL)? == pg_rows(&pg, "src", EVENTS_SQL);
        same.then_some(())
    });
    stop_and_verify(child, &log, &pipeline);
}

#[test]
fn sqlite_to_postgres_end_to_end() {
    let pg = PostgresServer::start();
    pg.create_database("dst");
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, joined DATE, balance DECIMAL(12,2), active BOOLEAN, avatar BLOB);
             INSERT INTO users VALUES (1, 'ada', '2024-01-02', '12.50', 1, x'00ff'), (2, 'bob', NULL, NULL, 0, NULL);
             CREATE TABLE likes (user_id INTEGER, what TEXT);
             INSERT INTO likes VALUES (1, 'tea'), (1, 'tea'), (2, NULL);",
        )
        .unwrap();
    let pipeline = write_pipeline(
        &d,
        &format!("sqlite:{}", d.path("source.db").display()),
        &pg.url_for("dst"),
    );
    let child = spawn_run(&pipeline, &d.path("ferry.log"));
    eventually_blocking("snapshot arrives", Duration::from_secs(30), || {
        (pg_rows(&pg, "dst", "SELECT count(*) FROM users") == ["2"]).then_some(())
    });
    d.source().execute_batch("BEGIN; UPDATE users SET name = 'Ada' WHERE id = 1; DELETE FROM users WHERE id = 2; INSERT INTO users VALUES (3, 'cy', '2025-05-05', '0.10', 1, NULL); COMMIT;").unwrap();
    // A table without a key: one of two identical rows changes.
    d.source()
        .execute_batch(
            "UPDATE likes SET what = 'coffee' WHERE rowid = 2; DELETE FROM likes WHERE what IS NULL;",
        )
        .unwrap();
    eventually_blocking("changes arrive", Duration::from_secs(30), || {
        (pg_rows(
            &pg,
            "dst",
            "SELECT id || ':' || name FROM users ORDER BY id",
        ) == ["1:Ada", "3:cy"]
            && pg_rows(
                &pg,
                "dst",
                "SELECT user_id || ':' || what FROM likes ORDER BY 1",
            ) == ["1:coffee", "1:tea"])
        .then_some(())
    });
    assert!(terminate(child).success());
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
    assert!(dump(&d.path("source.db"), "users").is_some());
}

#[test]
fn a_keyless_table_killed_mid_copy_is_copied_once() {
    const ROWS: i64 = 300_000;
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        &format!(
            "CREATE TABLE events (account int, amount int, note text);
             ALTER TABLE events REPLICA IDENTITY FULL;
             INSERT INTO events SELECT g % 500, g % 7, CASE WHEN g % 3 = 0 THEN NULL ELSE 'seed' END
               FROM generate_series(1, {ROWS}) g;
             ANALYZE events;"
        ),
    );
    let d = Dir::new();
    let pipeline = write_pipeline(&d, &pg.url_for("src"), &pg.url_for("dst"));
    let log = d.path("ferry.log");
    let copied = || -> i64 {
        pg_rows(&pg, "dst", "SELECT count(*) FROM events")
            .first()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let killed_mid_copy = (0..6)
        .filter(|_| kill_after_copy_progress(&pipeline, &log, ROWS, &copied))
        .count();
    // A change after the kills arrives exactly once too.
    pg.psql_in(
        "src",
        "INSERT INTO events VALUES (1, 1, 'after'), (1, 1, 'after')",
    );
    let child = spawn_run(&pipeline, &log);
    eventually_blocking(
        "the target holds every row once",
        Duration::from_secs(120),
        || (pg_rows(&pg, "src", EVENTS_SQL) == pg_rows(&pg, "dst", EVENTS_SQL)).then_some(()),
    );
    stop_and_verify(child, &log, &pipeline);
    assert!(
        killed_mid_copy > 0,
        "at least one kill must land in the middle of the copy"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("copying it again from the start"),
        "an interrupted keyless copy starts over"
    );
}

#[test]
fn a_keyless_table_replicates_with_unchanged_toast_and_verify_finds_a_missing_duplicate() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE TABLE notes (n int, body text);
         ALTER TABLE notes REPLICA IDENTITY FULL;
         INSERT INTO notes VALUES (1, 'a'), (1, 'a'), (2, NULL);",
    );
    let d = Dir::new();
    let pipeline = write_pipeline(&d, &pg.url_for("src"), &pg.url_for("dst"));
    let check = ferry(&["check", pipeline.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("without a key") && text(&check).contains("public.notes"),
        "{}",
        text(&check)
    );
    let log = d.path("ferry.log");
    let child = spawn_run(&pipeline, &log);
    // A value stored out of line (TOAST): an update of another column
    // sends it as unchanged.
    pg.psql_in(
        "src",
        "INSERT INTO notes SELECT 3, string_agg(md5(g::text), '') FROM generate_series(1, 2000) g;
         UPDATE notes SET n = 4 WHERE n = 3;
         INSERT INTO notes VALUES (1, 'a');
         DELETE FROM notes WHERE ctid = (SELECT ctid FROM notes WHERE n = 2 LIMIT 1);",
    );
    let sql = "SELECT n || ':' || coalesce(md5(body), '-') || ':' || count(*) FROM notes \
               GROUP BY n, body ORDER BY n, md5(body)";
    eventually_blocking("changes arrive", Duration::from_secs(60), || {
        (pg_rows(&pg, "src", sql) == pg_rows(&pg, "dst", sql)).then_some(())
    });
    assert_eq!(
        pg_rows(&pg, "dst", "SELECT count(*) FROM notes WHERE n = 1"),
        ["3"]
    );
    stop_and_verify(child, &log, &pipeline);
    // One of three identical rows gone from the target: verify names it.
    pg.psql_in(
        "dst",
        "DELETE FROM notes WHERE ctid = (SELECT ctid FROM notes WHERE n = 1 LIMIT 1)",
    );
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(!v.status.success(), "{}", text(&v));
    assert!(
        text(&v).contains("missing on target: row (1, \"a\")"),
        "{}",
        text(&v)
    );
}
