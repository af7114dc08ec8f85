//! `ferry run` from a SQLite source whose writers remove rows through
//! REPLACE conflict resolution (which fires no delete trigger), foreign-key
//! actions and upserts, with and without `recursive_triggers`, across
//! transactions and inside one: the target must end equal to the source
//! (`ferry verify`), on a SQLite and on a PostgreSQL target. The changes
//! arrive in groups, so hot-row merge sees a row give up its unique value
//! and another take it in one group.

use std::path::Path;
use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};
use rusqlite::Connection;

use crate::kit::{Dir, ferry, open, spawn_run, terminate, text};

/// Every kind of key: rowid alias, text key, composite `WITHOUT ROWID`,
/// none; unique columns beside the key; foreign keys with every action.
const SCHEMA: &str = "
    CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
    CREATE TABLE tags(name TEXT PRIMARY KEY, slug TEXT NOT NULL COLLATE NOCASE UNIQUE, n INT);
    CREATE TABLE pairs(a INT NOT NULL, b TEXT NOT NULL, u TEXT UNIQUE, PRIMARY KEY(a, b)) WITHOUT ROWID;
    CREATE TABLE loose(x TEXT UNIQUE, y INT);
    CREATE TABLE parent(id INTEGER PRIMARY KEY, code TEXT UNIQUE);
    CREATE TABLE child(id INTEGER PRIMARY KEY,
        pid INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
        pid2 INT REFERENCES parent(id) ON DELETE SET NULL);
    CREATE TABLE node(id INTEGER PRIMARY KEY, name TEXT UNIQUE, slug TEXT UNIQUE,
        up INT REFERENCES node(id) ON DELETE SET NULL);
    INSERT INTO users VALUES (1, 'a@x', 'ann'), (2, 'b@x', 'bob'), (3, 'c@x', 'cy');
    INSERT INTO tags VALUES ('t1', 'One', 1), ('t2', 'two', 2), ('t3', 'three', 3);
    INSERT INTO pairs VALUES (1, 'a', 'u1'), (1, 'b', 'u2'), (2, 'a', 'u3');
    INSERT INTO loose VALUES ('p', 1), ('q', 2), ('r', 3), (NULL, 4), (NULL, 4);
    INSERT INTO parent VALUES (1, 'p1'), (2, 'p2'), (3, 'p3'), (4, 'p4');
    INSERT INTO child VALUES (1, 1, 2), (2, 2, 1), (3, 3, 3), (4, 4, 4), (5, 3, NULL), (6, NULL, 4);
    INSERT INTO node VALUES (1, 'root', 's1', NULL), (2, 'a', 's2', 1), (3, 'b', 's3', 1), (4, 'c', 's4', 2);";

/// (writer pragmas, statements): each entry is its own transaction or
/// several, written while ferry runs.
const WRITES: &[(&str, &str)] = &[
    // REPLACE through a unique column other than the key, and on the key.
    (
        "",
        "INSERT OR REPLACE INTO users VALUES (4, 'a@x', 'new');
         INSERT OR REPLACE INTO users(email, name) VALUES ('b@x', 'auto id');
         REPLACE INTO tags VALUES ('t2', 'THREE', 0);
         INSERT OR REPLACE INTO pairs VALUES (3, 'z', 'u2');
         INSERT OR REPLACE INTO loose VALUES ('q', 5);",
    ),
    // UPDATE OR REPLACE, an upsert that says OR REPLACE, and statements
    // that remove nothing.
    (
        "",
        "UPDATE OR REPLACE users SET email = 'c@x' WHERE id = 4;
         INSERT OR REPLACE INTO tags VALUES ('t9', 'ONE', 9) ON CONFLICT(name) DO UPDATE SET n = 7;
         INSERT INTO tags VALUES ('t2', 'x', 1) ON CONFLICT(name) DO UPDATE SET n = 8;
         INSERT INTO users VALUES (8, 'b@x', 'no') ON CONFLICT DO NOTHING;
         INSERT OR IGNORE INTO pairs VALUES (9, 'z', 'u1');
         UPDATE OR REPLACE loose SET x = 'p' WHERE x = 'r';
         UPDATE OR REPLACE pairs SET u = 'u1' WHERE a = 2;",
    ),
    // Foreign keys: plain actions, and actions of rows REPLACE removed.
    (
        "PRAGMA foreign_keys = ON;",
        "DELETE FROM parent WHERE id = 1;
         UPDATE parent SET id = 20 WHERE id = 2;
         INSERT OR REPLACE INTO parent VALUES (30, 'p3');
         REPLACE INTO parent VALUES (4, 'p2');
         INSERT OR REPLACE INTO node VALUES (9, 'root', 's2', NULL);",
    ),
    // A writer with recursive_triggers on: removals fire delete triggers.
    (
        "PRAGMA recursive_triggers = ON; PRAGMA foreign_keys = ON;",
        "INSERT OR REPLACE INTO users VALUES (5, 'new-a@x', 'on');
         INSERT OR REPLACE INTO users VALUES (6, 'new-a@x', 'on again');
         INSERT OR REPLACE INTO loose(rowid, x, y)
             VALUES ((SELECT min(rowid) FROM loose WHERE x IS NULL), NULL, 4);
         INSERT INTO parent VALUES (50, 'p50'); INSERT INTO child VALUES (50, 50, 50);
         UPDATE OR REPLACE parent SET code = 'p50' WHERE id = 4;",
    ),
    // All of it again inside one transaction, where a row moves its
    // unique value away and another takes it.
    (
        "PRAGMA foreign_keys = ON;",
        "BEGIN;
         UPDATE users SET email = 'tmp' WHERE id = 1;
         INSERT OR REPLACE INTO users VALUES (10, 'a@x', 'took it');
         INSERT INTO users VALUES (11, 'f@x', 'fresh');
         INSERT OR REPLACE INTO users VALUES (12, 'f@x', 'replaces fresh');
         UPDATE OR REPLACE users SET email = 'tmp' WHERE id = 10;
         INSERT INTO users VALUES (1, 'a@x', 'back') ON CONFLICT(id) DO UPDATE SET email = 'a@x';
         INSERT OR IGNORE INTO users VALUES (13, 'a@x', 'ignored');
         REPLACE INTO tags VALUES ('t3', 'one', 3);
         UPDATE OR REPLACE tags SET name = 't3' WHERE name = 't9';
         INSERT OR REPLACE INTO pairs VALUES (4, 'q', 'u1');
         INSERT OR REPLACE INTO loose(rowid, x, y)
             VALUES ((SELECT max(rowid) FROM loose WHERE x IS NULL), NULL, 7);
         INSERT OR REPLACE INTO loose VALUES ('p', 6);
         INSERT INTO parent VALUES (60, 'p60');
         INSERT INTO child VALUES (60, 60, 4), (61, 4, 60);
         REPLACE INTO parent VALUES (61, 'p60');
         UPDATE parent SET id = 62 WHERE id = 4;
         COMMIT;",
    ),
    // A row replaced through its key, then deleted or moved away, in one
    // transaction: merged in one group, the target must still drop it.
    (
        "",
        "BEGIN;
         REPLACE INTO users VALUES (4, 'c@x', 'replaced then deleted');
         DELETE FROM users WHERE id = 4;
         REPLACE INTO users VALUES (6, 'new-a@x', 'replaced then moved');
         UPDATE users SET id = 7 WHERE id = 6;
         INSERT OR REPLACE INTO tags VALUES ('t2', 'THREE', 5);
         UPDATE tags SET name = 't7' WHERE name = 't2';
         UPDATE OR REPLACE users SET id = 12 WHERE id = 10;
         DELETE FROM users WHERE id = 12;
         COMMIT;",
    ),
];

/// The `applied` seq of pipeline `test` in `value` (`ferry.pos.v1 sqlite <seq>`).
fn applied_seq(value: &str) -> Option<i64> {
    value
        .trim()
        .strip_prefix("ferry.pos.v1 sqlite ")?
        .parse()
        .ok()
}

fn source_seq(source: &Path) -> i64 {
    open(source)
        .query_row(
            "SELECT COALESCE(max(seq), 0) FROM _ferry_changes",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Writes `writes` while ferry runs, waits until the target applied them
/// all (`applied` reads the target's applied seq), stops ferry and verifies.
fn write_and_verify(
    d: &Dir,
    pipeline: &Path,
    applied: &dyn Fn() -> Option<i64>,
    writes: &[(&str, &str)],
) {
    let log = d.path("ferry.log");
    let child = spawn_run(pipeline, &log);
    let source = d.path("source.db");
    eventually_blocking("the snapshot", Duration::from_secs(60), || {
        applied().map(|_| ())
    });
    for (pragmas, sql) in writes {
        let w = open(&source);
        w.execute_batch(pragmas).unwrap();
        w.execute_batch(sql).unwrap();
    }
    let end = source_seq(&source);
    eventually_blocking("every change applied", Duration::from_secs(60), || {
        applied().filter(|&a| a >= end)
    });
    assert!(
        terminate(child).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}

/// Rows of `table` on the source.
fn source_rows(d: &Dir, table: &str) -> i64 {
    open(&d.path("source.db"))
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Something was removed by REPLACE in every table of `SCHEMA`.
fn assert_writes_removed_rows(d: &Dir) {
    for (table, rows) in [("users", 2), ("tags", 2), ("loose", 4), ("parent", 3)] {
        assert_eq!(source_rows(d, table), rows, "{table} on the source");
    }
}

/// The applied seq on a SQLite target.
fn sqlite_applied(target: std::path::PathBuf) -> impl Fn() -> Option<i64> {
    move || {
        let c = Connection::open_with_flags(&target, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
        let value: String = c
            .query_row(
                "SELECT value FROM _ferry_checkpoint WHERE pipeline = 'test' AND scope = 'applied'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        applied_seq(&value)
    }
}

/// The applied seq on a PostgreSQL target.
fn pg_applied(pg: &PostgresServer) -> impl Fn() -> Option<i64> + '_ {
    move || {
        let out = pg
            .try_psql_in(
                "dst",
                "SELECT value FROM _ferry_checkpoint WHERE pipeline = 'test' AND scope = 'applied'",
            )
            .ok()?;
        applied_seq(&out)
    }
}

/// A pipeline from `source.db` to database `dst` of `pg`, plus `extra` TOML.
fn pg_pipeline(d: &Dir, pg: &PostgresServer, extra: &str) -> std::path::PathBuf {
    pg.create_database("dst");
    let pipeline = d.path("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"test\"\n[source]\nurl = \"sqlite:{}\"\npoll_interval = \"5ms\"\n\
             [target]\nurl = \"{}\"\n{extra}",
            d.path("source.db").display(),
            pg.url_for("dst")
        ),
    )
    .unwrap();
    pipeline
}

const FAST_GROUPS: &str = "[apply]\nbatch_time = \"50ms\"\n";

/// `schema` on a SQLite source, replicated to a SQLite target while
/// `writes` run; the target must verify equal.
fn to_sqlite(schema: &str, extra: &str, writes: &[(&str, &str)]) -> Dir {
    let d = Dir::new();
    d.source().execute_batch(schema).unwrap();
    let pipeline = d.pipeline(extra);
    write_and_verify(&d, &pipeline, &sqlite_applied(d.path("target.db")), writes);
    d
}

/// The same to a PostgreSQL target.
fn to_postgres(schema: &str, extra: &str, writes: &[(&str, &str)]) -> Dir {
    let pg = PostgresServer::start();
    let d = Dir::new();
    d.source().execute_batch(schema).unwrap();
    let pipeline = pg_pipeline(&d, &pg, extra);
    write_and_verify(&d, &pipeline, &pg_applied(&pg), writes);
    d
}

#[test]
fn sqlite_to_sqlite_converges_after_replace_upserts_and_foreign_key_actions() {
    assert_writes_removed_rows(&to_sqlite(SCHEMA, FAST_GROUPS, WRITES));
}

#[test]
fn sqlite_to_postgres_converges_after_replace_upserts_and_foreign_key_actions() {
    assert_writes_removed_rows(&to_postgres(SCHEMA, FAST_GROUPS, WRITES));
}

/// A row filter decides on the removed row's own image: a row replaced by
/// one outside the filter leaves the target, a row outside the filter
/// replaced by one inside arrives.
const FILTERED: &str = "
    CREATE TABLE orders(id INTEGER PRIMARY KEY, region TEXT NOT NULL, code TEXT UNIQUE);
    INSERT INTO orders VALUES (1, 'eu', 'a'), (2, 'eu', 'b'), (3, 'us', 'c'), (6, 'eu', 'f');";
const FILTERED_WRITES: &[(&str, &str)] = &[(
    "",
    "REPLACE INTO orders VALUES (1, 'us', 'a');
     INSERT OR REPLACE INTO orders VALUES (4, 'us', 'b');
     INSERT OR REPLACE INTO orders VALUES (5, 'eu', 'c');
     BEGIN; REPLACE INTO orders VALUES (6, 'us', 'f'); UPDATE orders SET region = 'eu' WHERE id = 6; COMMIT;",
)];
const FILTER: &str =
    "[tables]\nfilter = { orders = \"region = 'eu'\" }\n[apply]\nbatch_time = \"50ms\"\n";

#[test]
fn sqlite_to_sqlite_row_filters_see_the_rows_replace_removed() {
    let d = to_sqlite(FILTERED, FILTER, FILTERED_WRITES);
    let target = crate::kit::dump(&d.path("target.db"), "orders").unwrap();
    assert_eq!(target.len(), 2, "rows 5 and 6: {target:?}");
}

#[test]
fn sqlite_to_postgres_row_filters_see_the_rows_replace_removed() {
    to_postgres(FILTERED, FILTER, FILTERED_WRITES);
}
