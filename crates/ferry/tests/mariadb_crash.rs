//! MariaDB → PostgreSQL under `kill -9`: during the copy and while a
//! concurrent writer commits money transfers (and a structure change lands
//! in the stream), ferry is killed again and again; at the end nothing is
//! lost or doubled, and once the target holds a whole copy no transfer is
//! ever seen half-applied on it (the balances always sum to the total).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_testkit::{MariaDbServer, PostgresServer, eventually_blocking};
use rand::Rng;

use crate::kit::{Dir, kill_after_copy_progress, log_count, spawn_run, spawn_streaming};
use crate::postgres::{pg_rows, stop_and_verify, write_pipeline};

const ACCOUNTS: i64 = 100;
const TOTAL: i64 = ACCOUNTS * 1_000;
const ITEMS: i64 = 60_000;

fn setup(db: &MariaDbServer) {
    db.sql_in(
        "src",
        &format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL) ENGINE=InnoDB;
             CREATE TABLE transfers (id bigint AUTO_INCREMENT PRIMARY KEY, from_id int NOT NULL,
                to_id int NOT NULL, amount int NOT NULL) ENGINE=InnoDB;
             CREATE TABLE items (id bigint PRIMARY KEY, name varchar(40) NOT NULL,
                price decimal(12,2)) ENGINE=InnoDB;
             CREATE TABLE tags (name varchar(40) PRIMARY KEY, n int NOT NULL) ENGINE=InnoDB;
             CREATE TABLE events (account int, amount int, note varchar(20)) ENGINE=InnoDB;
             INSERT INTO accounts SELECT seq, 1000 FROM seq_1_to_{ACCOUNTS};
             INSERT INTO items SELECT seq, concat('item-', seq), seq / 7 FROM seq_1_to_{ITEMS};
             INSERT INTO tags SELECT md5(seq), seq FROM seq_1_to_{ITEMS};
             INSERT INTO events SELECT seq % 50, seq % 7, IF(seq % 3 = 0, NULL, 'seed')
                FROM seq_1_to_2000;"
        ),
    );
}

/// Transfers of 3 rows each (plus 2 rows of the keyless `events`, and now
/// and then an update and a delete of one of them), in sessions of 25
/// transactions, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<(), String>>,
}

impl Writer {
    fn start(db: &Arc<MariaDbServer>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, db) = (stop.clone(), db.clone());
        let handle = std::thread::spawn(move || {
            let mut rng = rand::rng();
            while !stopped.load(Ordering::Relaxed) {
                let mut sql = String::new();
                for i in 0..25 {
                    let a = rng.random_range(1..=ACCOUNTS);
                    let b = rng.random_range(1..=ACCOUNTS);
                    let amount = rng.random_range(1..50);
                    sql.push_str(&format!(
                        "START TRANSACTION;
                         UPDATE accounts SET balance = balance - {amount} WHERE id = {a};
                         UPDATE accounts SET balance = balance + {amount} WHERE id = {b};
                         INSERT INTO transfers (from_id, to_id, amount) VALUES ({a}, {b}, {amount});
                         INSERT INTO events VALUES ({a}, {amount}, 'transfer'), ({a}, {amount}, 'transfer');"
                    ));
                    if i % 3 == 0 {
                        sql.push_str(&format!(
                            "UPDATE events SET amount = amount + 1 WHERE account = {} LIMIT 1;
                             DELETE FROM events WHERE account = {} LIMIT 1;",
                            b % 50,
                            a % 50
                        ));
                    }
                    sql.push_str("COMMIT; DO SLEEP(0.004);\n");
                }
                db.try_sql_in("src", &sql)?;
            }
            Ok(())
        });
        Writer { stop, handle }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap().expect("the writer's transfers");
    }
}

fn maria_rows(db: &MariaDbServer, sql: &str) -> Vec<String> {
    db.try_sql_in("src", sql)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// One query per table, spelled alike for both engines.
const COMPARE: [(&str, &str); 5] = [
    ("accounts", "SELECT count(*), sum(balance) FROM accounts"),
    (
        "transfers",
        "SELECT count(*), sum(id), sum(from_id * 7 + to_id * 3 + amount) FROM transfers",
    ),
    (
        "items",
        "SELECT count(*), sum(id), sum(price), sum(flag) FROM items",
    ),
    ("tags", "SELECT count(*), sum(n) FROM tags"),
    (
        "events",
        "SELECT account, amount, coalesce(note, '-'), count(*) FROM events \
         GROUP BY account, amount, note ORDER BY account, amount, coalesce(note, '-')",
    ),
];

/// The database a crash test replicates into.
enum Target {
    Postgres(PostgresServer),
    MariaDb(MariaDbServer),
}

impl Target {
    fn url(&self) -> String {
        match self {
            Target::Postgres(pg) => pg.url_for("dst"),
            Target::MariaDb(db) => db.url_for("dst"),
        }
    }

    /// Rows `sql` returns in database `dst`, columns joined by `|`; empty
    /// while it cannot be read.
    fn rows(&self, sql: &str) -> Vec<String> {
        match self {
            Target::Postgres(pg) => pg_rows(pg, "dst", sql),
            Target::MariaDb(db) => db
                .try_sql_in("dst", sql)
                .map(|s| s.lines().map(|r| r.replace('\t', "|")).collect())
                .unwrap_or_default(),
        }
    }

    fn number(&self, sql: &str) -> i64 {
        self.rows(sql)
            .first()
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1)
    }
}

/// `Err` names the tables the target does not hold as the source does.
fn caught_up(db: &MariaDbServer, target: &Target) -> Result<(), Vec<&'static str>> {
    let differ: Vec<&str> = COMPARE
        .iter()
        .filter(|(_, sql)| {
            let source: Vec<String> = maria_rows(db, sql)
                .iter()
                .map(|r| r.replace('\t', "|"))
                .collect();
            source != target.rows(sql)
        })
        .map(|(table, _)| *table)
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(differ)
    }
}

#[test]
fn mariadb_to_postgresql_survives_kill_9_in_the_copy_and_the_stream() {
    let pg = PostgresServer::start();
    pg.create_database("dst");
    kill_9_in_the_copy_and_the_stream(Target::Postgres(pg));
}

#[test]
fn mariadb_to_mariadb_survives_kill_9_in_the_copy_and_the_stream() {
    let db = MariaDbServer::start();
    db.create_database("dst");
    kill_9_in_the_copy_and_the_stream(Target::MariaDb(db));
}

fn kill_9_in_the_copy_and_the_stream(target: Target) {
    let db = Arc::new(MariaDbServer::start());
    let url = db.create_database("src");
    setup(&db);
    let d = Dir::new();
    let p = write_pipeline(&d, &url, &target.url());
    let log = d.path("run.log");
    let copied =
        || target.number("SELECT (SELECT count(*) FROM items) + (SELECT count(*) FROM tags)");
    let writer = Writer::start(&db);
    // Kills during the copy: each right after it made progress.
    let mut mid_copy = 0;
    for _ in 0..25 {
        mid_copy += usize::from(kill_after_copy_progress(&p, &log, 2 * ITEMS, &copied));
    }
    eprintln!("{mid_copy} of 25 kills left a partial copy");
    assert!(mid_copy >= 5, "only {mid_copy} kills landed in the copy");

    // Kills while streaming, each while the writer commits; a structure
    // change with a constant default lands among them.
    let newest = || maria_rows(&db, "SELECT coalesce(max(id), 0) FROM transfers");
    let balanced = || {
        let rows = target.rows("SELECT count(*), sum(balance) FROM accounts");
        if let Some(row) = rows.first() {
            assert_eq!(
                *row,
                format!("{ACCOUNTS}|{TOTAL}"),
                "a transfer half-applied on the target"
            );
        }
    };
    let mut rng = rand::rng();
    for k in 0..25 {
        if k == 10 {
            db.sql_in(
                "src",
                "ALTER TABLE items ADD COLUMN flag int NOT NULL DEFAULT 7",
            );
        }
        let mut child = spawn_streaming(&p, &log);
        let before = newest();
        balanced();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300))); // the random kill moment
        eventually_blocking(
            "the writer to commit while ferry streams",
            Duration::from_secs(30),
            || (newest() != before).then_some(()),
        );
        balanced();
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
    writer.stop();
    let child = spawn_run(&p, &log);
    eventually_blocking("the target catches up", Duration::from_secs(120), || {
        balanced();
        caught_up(&db, &target)
    });
    stop_and_verify(child, &log, &p);
    // The column was added while ferry was stopped: the table was altered
    // on the target and re-copied online from a binlog snapshot.
    assert!(
        log_count(&log, "online re-copy done") >= 1,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
