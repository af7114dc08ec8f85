//! Rows that `REPLACE` conflict resolution removes fire no delete trigger
//! (unless the writer turned `recursive_triggers` on). Each test writes
//! through another connection, streams the changes, applies them one by
//! one to a SQLite target, and requires target = source row for row, and
//! that statements which remove nothing (`OR IGNORE`, `DO NOTHING`,
//! `DO UPDATE`, failed inserts) produce no delete.

use ferry_core::{
    Change, KeylessOp, Sink, SinkWriter, Source, SourceEvent, Step, TableOps, TableReader,
    TableRef, Value,
};
use ferry_sqlite::{SqliteSink, SqliteSinkConfig, SqliteSource};
use rusqlite::Connection;

use crate::{Db, count, next_commit, seq};

/// A rowid-alias key, a text key with a NOCASE unique column, a composite
/// key `WITHOUT ROWID`, and a table without a key (its UNIQUE column is
/// nullable). Seeded after capture starts, so the seed replicates too.
const TABLES: &str = "
    CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);
    CREATE TABLE tags(name TEXT PRIMARY KEY, slug TEXT NOT NULL COLLATE NOCASE UNIQUE, n INT);
    CREATE TABLE pairs(a INT NOT NULL, b TEXT NOT NULL, u TEXT UNIQUE, PRIMARY KEY(a, b)) WITHOUT ROWID;
    CREATE TABLE loose(x TEXT UNIQUE, y INT);";

const SEED: &str = "
    INSERT INTO users VALUES (1, 'a@x', 'ann'), (2, 'b@x', 'bob'), (3, 'c@x', 'cy');
    INSERT INTO tags VALUES ('t1', 'One', 1), ('t2', 'two', 2), ('t3', 'three', 3);
    INSERT INTO pairs VALUES (1, 'a', 'u1'), (1, 'b', 'u2'), (2, 'a', 'u3');
    INSERT INTO loose VALUES ('p', 1), ('q', 2), ('r', 3), (NULL, 4), (NULL, 4);";

/// A source streaming into a SQLite target, change by change.
struct Replica {
    db: Db,
    src: SqliteSource,
    sink: SqliteSink,
    writer: Box<dyn SinkWriter>,
    tables: Vec<TableRef>,
    delivered: i64,
    /// Deletes delivered so far.
    deletes: usize,
}

impl Replica {
    async fn new(schema: &str) -> Replica {
        let db = Db::new(schema);
        let mut src = db.streaming(db.config()).await;
        let tables = src.tables().await.unwrap();
        let sink = SqliteSink::open(SqliteSinkConfig {
            path: db.dir.path().join("target.db"),
            pipeline: "test".into(),
            indexes_from: None,
        })
        .unwrap();
        sink.ensure_tables(&tables).await.unwrap();
        let writer = sink.writer().await.unwrap();
        Replica {
            db,
            src,
            sink,
            writer,
            tables,
            delivered: 0,
            deletes: 0,
        }
    }

    /// Runs `sql` on a writer connection with the given pragmas.
    fn write(&self, pragmas: &str, sql: &str) {
        let w = self.db.conn();
        w.execute_batch(pragmas).unwrap();
        w.execute_batch(sql).unwrap();
    }

    /// Runs `sql`, which must fail (the failure must leave nothing behind).
    fn write_failing(&self, sql: &str) {
        assert!(self.db.conn().execute_batch(sql).is_err(), "{sql}");
    }

    /// Applies every captured change, one target transaction per delivery.
    async fn catch_up(&mut self) {
        let end = count(
            &self.db.path,
            "SELECT COALESCE(max(seq), 0) FROM _ferry_changes",
        );
        while self.delivered < end {
            let t = next_commit(&mut self.src).await;
            self.delivered = seq(&t.position);
            self.deletes += t
                .changes
                .iter()
                .filter(|c| matches!(c, Change::Delete { .. }))
                .count();
            let steps: Vec<Step> = t.changes.into_iter().map(step).collect();
            self.writer.begin().await.unwrap();
            self.writer.apply(&steps).await.unwrap();
            self.writer.commit(&[]).await.unwrap();
            // Acks clear leftover pending rows, as in a running pipeline.
            self.src.ack(&t.position).await.unwrap();
        }
    }

    /// Catches up, then compares every table row for row.
    async fn assert_converged(&mut self) {
        self.catch_up().await;
        for t in &self.tables {
            let (source, target) = (rows(&self.src, t).await, rows(&self.sink, t).await);
            assert_eq!(source, target, "table {}", t.name.name);
        }
    }

    /// Deletes delivered so far (the change table itself is pruned).
    fn deletes_captured(&self) -> usize {
        self.deletes
    }
}

/// Each change on its own, in order: what the source captured must be
/// enough without any merging.
fn step(change: Change) -> Step {
    let table = change.table().unwrap().clone();
    if table.is_keyless() {
        let op = match change {
            Change::Insert { row, .. } => KeylessOp::Insert(row),
            Change::Update { before, after, .. } => KeylessOp::Update {
                before: before.unwrap(),
                after,
            },
            Change::Delete { before, .. } => KeylessOp::Delete(before),
            other => panic!("{other:?}"),
        };
        return Step::Keyless {
            table,
            ops: vec![op],
        };
    }
    let mut ops = TableOps::new(table.clone());
    match change {
        Change::Insert { row, .. } => ops.upserts.push(row),
        Change::Update { before, after, .. } => {
            let old = table.key_of(&before.unwrap());
            if old != table.key_of(&after) {
                ops.deletes.push(old);
            }
            ops.upserts.push(after);
        }
        Change::Delete { before, .. } => ops.deletes.push(table.key_of(&before)),
        other => panic!("{other:?}"),
    }
    Step::Rows(vec![ops])
}

/// All rows: in key order, or sorted as a multiset for a keyless table.
async fn rows(reader: &dyn TableReader, table: &TableRef) -> Vec<String> {
    let text = |r: &Vec<Value>| format!("{r:?}");
    if table.is_keyless() {
        let mut all = Vec::new();
        reader
            .scan_rows(table, &mut |batch| {
                all.extend(batch.iter().map(text));
                Ok(())
            })
            .await
            .unwrap();
        all.sort();
        return all;
    }
    let rows = reader.read_rows(table, None, 10_000).await.unwrap();
    rows.iter().map(text).collect()
}

async fn seeded() -> Replica {
    let mut r = Replica::new(TABLES).await;
    r.write("", SEED);
    r.assert_converged().await;
    r
}

#[tokio::test]
async fn insert_or_replace_through_a_unique_column_removes_the_other_row() {
    let mut r = seeded().await;
    r.write(
        "",
        "INSERT OR REPLACE INTO users VALUES (4, 'a@x', 'new');
         INSERT OR REPLACE INTO users(email, name) VALUES ('b@x', 'auto id');
         INSERT OR REPLACE INTO tags VALUES ('t9', 'ONE', 9);
         INSERT OR REPLACE INTO pairs VALUES (3, 'z', 'u2');
         INSERT OR REPLACE INTO loose VALUES ('q', 5);",
    );
    assert_eq!(count(&r.db.path, "SELECT count(*) FROM users"), 3);
    r.assert_converged().await;
    assert_eq!(r.deletes_captured(), 5);
}

#[tokio::test]
async fn replace_into_on_the_key_and_a_unique_column_at_once() {
    let mut r = seeded().await;
    // Each removes two rows: the one with its key and the one with its
    // unique value.
    r.write(
        "",
        "REPLACE INTO users VALUES (2, 'c@x', 'both');
         REPLACE INTO tags VALUES ('t2', 'THREE', 0);
         REPLACE INTO pairs VALUES (1, 'a', 'u3');",
    );
    assert_eq!(count(&r.db.path, "SELECT count(*) FROM users"), 2);
    r.assert_converged().await;
}

/// A row replaced through the key itself arrives deleted before its
/// successor. Hot-row merge drops an insert followed by a delete of the
/// same key in one group (the target never had that row); the delete
/// first tells it the target had the key.
#[tokio::test]
async fn a_replace_on_the_key_delivers_the_replaced_row_deleted_first() {
    let mut r = seeded().await;
    r.write(
        "",
        "BEGIN;
         REPLACE INTO users VALUES (1, 'a@x', 'again');
         UPDATE OR REPLACE users SET id = 3 WHERE id = 2;
         COMMIT;",
    );
    let t = next_commit(&mut r.src).await;
    let seen: Vec<String> = t
        .changes
        .iter()
        .map(|c| match c {
            Change::Insert { row, .. } => format!("I {row:?}"),
            Change::Update { before, after, .. } => {
                format!("U {:?} {after:?}", before.as_ref().unwrap())
            }
            Change::Delete { before, .. } => format!("D {before:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    let row = |id: i64, email: &str, name: &str| {
        format!(
            "{:?}",
            vec![
                Value::Int(id),
                Value::Text(email.into()),
                Value::Text(name.into())
            ]
        )
    };
    assert_eq!(
        seen,
        [
            format!("D {}", row(1, "a@x", "ann")),
            format!("I {}", row(1, "a@x", "again")),
            format!("D {}", row(3, "c@x", "cy")),
            format!("U {} {}", row(2, "b@x", "bob"), row(3, "b@x", "bob")),
        ]
    );
}

#[tokio::test]
async fn update_or_replace_removes_the_rows_it_collides_with() {
    let mut r = seeded().await;
    r.write(
        "",
        "UPDATE OR REPLACE users SET email = 'a@x' WHERE id = 2;
         UPDATE OR REPLACE tags SET slug = 'Two' WHERE name = 't3';
         UPDATE OR REPLACE pairs SET u = 'u1' WHERE a = 2;
         UPDATE OR REPLACE loose SET x = 'p' WHERE x = 'r';
         -- every row takes the same value: one is left
         UPDATE OR REPLACE users SET email = 'same';
         -- a key change onto an existing key
         UPDATE OR REPLACE tags SET name = 't1' WHERE name = 't3';",
    );
    assert_eq!(count(&r.db.path, "SELECT count(*) FROM users"), 1);
    r.assert_converged().await;
}

#[tokio::test]
async fn an_upsert_that_says_or_replace_replaces_on_its_other_constraints() {
    let mut r = seeded().await;
    // No conflict on `name`, so no DO UPDATE; the conflict on `slug` is
    // resolved by REPLACE.
    r.write(
        "",
        "INSERT OR REPLACE INTO tags VALUES ('t9', 'TWO', 0) ON CONFLICT(name) DO UPDATE SET n = 7;
         INSERT OR REPLACE INTO users VALUES (9, 'a@x', 'n') ON CONFLICT(id) DO UPDATE SET name = 'x';",
    );
    r.assert_converged().await;
    assert_eq!(r.deletes_captured(), 2);
}

#[tokio::test]
async fn statements_that_remove_nothing_capture_no_delete() {
    let mut r = seeded().await;
    r.write(
        "",
        "INSERT INTO users VALUES (7, 'a@x', 'up') ON CONFLICT(email) DO UPDATE SET name = excluded.name;
         INSERT INTO users VALUES (8, 'b@x', 'no') ON CONFLICT DO NOTHING;
         INSERT OR IGNORE INTO users VALUES (9, 'c@x', 'ignored');
         INSERT OR IGNORE INTO tags VALUES ('t8', 'one', 8);
         INSERT OR IGNORE INTO pairs VALUES (9, 'z', 'u1');
         INSERT OR IGNORE INTO loose VALUES ('p', 9);
         UPDATE OR IGNORE users SET email = 'a@x' WHERE id = 2;
         UPDATE OR IGNORE loose SET x = 'q' WHERE x = 'p';",
    );
    r.write_failing("INSERT INTO users VALUES (10, 'a@x', 'fails')");
    r.write_failing("UPDATE users SET email = 'b@x' WHERE id = 3");
    // OR FAIL keeps the rows before the failing one.
    r.write_failing("INSERT OR FAIL INTO tags VALUES ('t5', 'five', 5), ('t6', 'TWO', 6)");
    // A later write of each table confirms whatever its statements left pending.
    r.write(
        "",
        "INSERT INTO users VALUES (20, 'z@x', 'z');
         UPDATE users SET name = 'again' WHERE id = 2;
         INSERT INTO tags VALUES ('t20', 'twenty', 20);
         INSERT INTO pairs VALUES (20, 'z', 'u20');
         INSERT INTO loose VALUES ('z', 20);",
    );
    r.assert_converged().await;
    assert_eq!(r.deletes_captured(), 0);
}

/// An upsert workload leaves a pending row per statement that updated the
/// conflicting row instead; the next such statement settles it, so the
/// pending table stays small and lookups in it cheap.
#[tokio::test]
async fn upserts_leave_at_most_one_pending_row() {
    let mut r = seeded().await;
    let mut w = r.db.conn();
    let tx = w.transaction().unwrap();
    for i in 0..500 {
        tx.execute(
            "INSERT INTO users VALUES (?1, 'u' || ?1, 'n') ON CONFLICT(id) DO UPDATE SET name = 'again'",
            [i % 50],
        )
        .unwrap();
        tx.execute(
            "INSERT OR IGNORE INTO tags VALUES ('t1', ?1, 0)",
            [format!("s{i}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    for pending in ["_ferry_pending_users", "_ferry_pending_tags"] {
        let n = count(&r.db.path, &format!("SELECT count(*) FROM {pending}"));
        assert!(n <= 1, "{pending}: {n} rows");
    }
    r.assert_converged().await;
    assert_eq!(r.deletes_captured(), 0);
}

#[tokio::test]
async fn all_cases_in_one_transaction() {
    let mut r = seeded().await;
    r.write(
        "",
        "BEGIN;
         -- a row moves its unique value away and another takes it
         UPDATE users SET email = 'tmp' WHERE id = 1;
         INSERT OR REPLACE INTO users VALUES (5, 'a@x', 'took it');
         -- a row inserted in this transaction is replaced in it
         INSERT INTO users VALUES (6, 'f@x', 'fresh');
         INSERT OR REPLACE INTO users VALUES (7, 'f@x', 'replaces fresh');
         REPLACE INTO users VALUES (2, 'c@x', 'both');
         UPDATE OR REPLACE users SET email = 'tmp' WHERE id = 5;
         INSERT INTO users VALUES (1, 'a@x', 'back') ON CONFLICT(id) DO UPDATE SET email = 'a@x';
         INSERT OR IGNORE INTO users VALUES (8, 'a@x', 'ignored');
         INSERT OR REPLACE INTO tags VALUES ('t9', 'ONE', 9);
         UPDATE OR REPLACE tags SET slug = 'three' WHERE name = 't2';
         INSERT OR REPLACE INTO pairs VALUES (3, 'z', 'u2');
         UPDATE OR REPLACE pairs SET u = 'u2' WHERE a = 2;
         INSERT OR REPLACE INTO loose VALUES ('q', 5);
         UPDATE OR REPLACE loose SET x = 'q' WHERE x = 'p';
         COMMIT;",
    );
    r.assert_converged().await;
}

#[tokio::test]
async fn foreign_key_actions_and_a_replaced_parent() {
    let mut r = Replica::new(
        "CREATE TABLE parent(id INTEGER PRIMARY KEY, code TEXT UNIQUE);
         CREATE TABLE child(id INTEGER PRIMARY KEY,
             pid INT REFERENCES parent(id) ON DELETE CASCADE ON UPDATE CASCADE,
             pid2 INT REFERENCES parent(id) ON DELETE SET NULL);
         -- a tree in one table: deleting a node orphans its children
         CREATE TABLE node(id INTEGER PRIMARY KEY, name TEXT UNIQUE, slug TEXT UNIQUE,
             up INT REFERENCES node(id) ON DELETE SET NULL);",
    )
    .await;
    let fk = "PRAGMA foreign_keys = ON;";
    r.write(
        fk,
        "INSERT INTO parent VALUES (1, 'p1'), (2, 'p2'), (3, 'p3'), (4, 'p4');
         INSERT INTO child VALUES (1, 1, 2), (2, 2, 1), (3, 3, 3), (4, 4, 4), (5, 3, NULL), (6, NULL, 4);
         INSERT INTO node VALUES (1, 'root', 's1', NULL), (2, 'a', 's2', 1), (3, 'b', 's3', 1), (4, 'c', 's4', 2);",
    );
    r.assert_converged().await;
    r.write(
        fk,
        "DELETE FROM parent WHERE id = 1;
         UPDATE parent SET id = 20 WHERE id = 2;
         -- removes parent 3 (code p3): its children go with it
         INSERT OR REPLACE INTO parent VALUES (30, 'p3');
         -- removes parent 4 (key) and parent 20 (code)
         REPLACE INTO parent VALUES (4, 'p2');
         -- removes node 1 (name) and node 2 (slug); removing one orphans
         -- (updates) rows of the same table while the other is pending
         INSERT OR REPLACE INTO node VALUES (9, 'root', 's2', NULL);",
    );
    assert_eq!(count(&r.db.path, "SELECT count(*) FROM child"), 1);
    r.assert_converged().await;
    r.write(
        fk,
        "BEGIN;
         INSERT INTO parent VALUES (40, 'p40');
         INSERT INTO child VALUES (40, 40, 40);
         UPDATE OR REPLACE parent SET code = 'p40' WHERE id = 4;
         COMMIT;",
    );
    r.assert_converged().await;
}

#[tokio::test]
async fn writers_with_recursive_triggers_on_or_off_capture_each_removal_once() {
    let mut r = seeded().await;
    let on = "PRAGMA recursive_triggers = ON;";
    // Two identical rows: a removal captured twice would remove both.
    r.write(
        on,
        "INSERT OR REPLACE INTO users VALUES (4, 'a@x', 'on');
         INSERT OR REPLACE INTO loose(rowid, x, y)
             VALUES ((SELECT min(rowid) FROM loose WHERE x IS NULL), NULL, 4);
         UPDATE OR REPLACE loose SET x = 'p' WHERE x = 'q';",
    );
    r.write(
        "",
        "INSERT OR REPLACE INTO users VALUES (5, 'b@x', 'off');
         INSERT OR REPLACE INTO loose(rowid, x, y)
             VALUES ((SELECT max(rowid) FROM loose WHERE x IS NULL), NULL, 7);",
    );
    r.write(on, "INSERT OR REPLACE INTO loose VALUES ('r', 8);");
    assert_eq!(
        count(&r.db.path, "SELECT count(*) FROM loose WHERE x IS NULL"),
        2
    );
    r.assert_converged().await;
}

#[tokio::test]
async fn an_explicit_rowid_replaces_the_row_that_had_it() {
    let mut r = seeded().await;
    r.write(
        "",
        "INSERT OR REPLACE INTO tags(rowid, name, slug, n)
             VALUES ((SELECT rowid FROM tags WHERE name = 't1'), 'tx', 'sx', 0);
         UPDATE OR REPLACE tags SET rowid = (SELECT rowid FROM tags WHERE name = 't2') WHERE name = 't3';
         INSERT OR REPLACE INTO loose(rowid, x, y)
             VALUES ((SELECT rowid FROM loose WHERE x = 'p'), 'p2', 0);",
    );
    assert_eq!(count(&r.db.path, "SELECT count(*) FROM tags"), 2);
    r.assert_converged().await;
}

#[tokio::test]
async fn expression_and_partial_unique_indexes() {
    let mut r = Replica::new(
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, email TEXT, active INT NOT NULL);
         CREATE UNIQUE INDEX acct_email ON acct(lower(email), length(email) DESC) WHERE active;",
    )
    .await;
    r.write(
        "",
        "INSERT INTO acct VALUES (1, 'A@x', 1), (2, 'b@x', 1), (3, 'C@x', 0), (4, 'c@x', 0);",
    );
    r.write(
        "",
        "INSERT OR REPLACE INTO acct VALUES (5, 'a@X', 1);
         -- inactive rows are outside the index: nothing to remove
         INSERT OR REPLACE INTO acct VALUES (6, 'c@X', 0);
         -- activating row 3 collides with nothing active; then row 4 with row 3
         UPDATE OR REPLACE acct SET active = 1 WHERE id = 3;
         UPDATE OR REPLACE acct SET active = 1 WHERE id = 4;",
    );
    assert_eq!(count(&r.db.path, "SELECT count(*) FROM acct"), 4);
    r.assert_converged().await;
    assert_eq!(r.deletes_captured(), 2);
}

#[tokio::test]
async fn a_unique_index_created_while_streaming_is_followed() {
    let mut r = Replica::new("CREATE TABLE m(id INTEGER PRIMARY KEY, v TEXT);").await;
    r.write("", "INSERT INTO m VALUES (1, 'a'), (2, 'b');");
    r.assert_converged().await;
    r.write("", "CREATE UNIQUE INDEX m_v ON m(v);");
    // Nothing to deliver: the source polls until its next heartbeat, and
    // notices the new index on the way.
    let idle = tokio::time::timeout(crate::WAIT, r.src.next()).await;
    assert!(
        matches!(idle, Ok(Ok(SourceEvent::Heartbeat { .. }))),
        "{idle:?}"
    );
    assert_eq!(
        count(
            &r.db.path,
            "SELECT count(*) FROM sqlite_schema WHERE name = '_ferry_m_bi'"
        ),
        1
    );
    r.write("", "INSERT OR REPLACE INTO m VALUES (4, 'a');");
    r.assert_converged().await;
    assert_eq!(r.deletes_captured(), 1);
}

#[tokio::test]
async fn a_unique_index_written_through_before_ferry_follows_it_stops_the_stream() {
    let mut r = Replica::new("CREATE TABLE m(id INTEGER PRIMARY KEY, v TEXT);").await;
    r.write("", "INSERT INTO m VALUES (1, 'a'), (2, 'b');");
    r.assert_converged().await;
    r.write(
        "",
        "CREATE UNIQUE INDEX m_v ON m(v); INSERT OR REPLACE INTO m VALUES (4, 'a');",
    );
    // The first poll sees both; a stream that went on would deliver the
    // REPLACE's insert.
    let e = match tokio::time::timeout(crate::WAIT, r.src.next()).await {
        Ok(Err(e)) => e,
        other => panic!("expected the stream to stop, got {other:?}"),
    };
    assert!(e.message().contains("unique index of table m"), "{e}");
    assert!(e.fix().unwrap().contains("ferry reset"), "{e}");
}

#[tokio::test]
async fn prepare_adds_what_an_older_capture_lacked_and_says_so() {
    let mut r = seeded().await;
    // Capture of `users` as an older ferry installed it: three AFTER
    // triggers that only append row changes.
    let image =
        |p: &str| format!("quote({p}.\"id\")||','||quote({p}.\"email\")||','||quote({p}.\"name\")");
    let old = |suffix: &str, event: &str, op: &str, old: String, new: String| {
        format!(
            "DROP TRIGGER _ferry_users_{suffix}; CREATE TRIGGER \"_ferry_users_{suffix}\" AFTER {event} ON \"users\" \
             FOR EACH ROW BEGIN INSERT INTO _ferry_changes(tbl, op, old_row, new_row, ts) \
             VALUES ('users', '{op}', {old}, {new}, 0); END;"
        )
    };
    let w: Connection = r.db.conn();
    w.execute_batch(&format!(
        "DROP TRIGGER _ferry_users_bi; DROP TRIGGER _ferry_users_bu; DROP TABLE _ferry_pending_users; {} {} {}",
        old("ai", "INSERT", "I", "NULL".into(), image("NEW")),
        old("au", "UPDATE", "U", image("OLD"), image("NEW")),
        old("ad", "DELETE", "D", image("OLD"), "NULL".into()),
    ))
    .unwrap();
    // Captured the old way: the removed row is missed.
    r.write(
        "",
        "INSERT OR REPLACE INTO users VALUES (4, 'a@x', 'old way');",
    );
    let mut again = SqliteSource::open(r.db.config()).unwrap();
    again.tables().await.unwrap();
    again.prepare().await.unwrap();
    assert_eq!(
        count(
            &r.db.path,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_ferry\\_users\\_%' ESCAPE '\\' \
             OR name = '_ferry_pending_users'"
        ),
        6
    );
    // The change captured the old way still decodes (same columns); from
    // now on removals are captured.
    r.write(
        "",
        "INSERT OR REPLACE INTO users VALUES (5, 'b@x', 'new way');",
    );
    r.catch_up().await;
    let users = r.tables.iter().find(|t| t.name.name == "users").unwrap();
    let target = rows(&r.sink, users).await;
    assert!(
        target.iter().any(|row| row.contains("Int(1)")),
        "{target:?}"
    );
    assert!(
        !target.iter().any(|row| row.contains("Int(2)")),
        "{target:?}"
    );
}

#[tokio::test]
async fn teardown_removes_pending_tables_and_every_trigger() {
    let mut r = seeded().await;
    r.src.teardown().await.unwrap();
    assert_eq!(
        count(
            &r.db.path,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_ferry%' ESCAPE '\\'"
        ),
        0
    );
    // Writes work again without capture.
    r.write(
        "",
        "INSERT OR REPLACE INTO users VALUES (9, 'a@x', 'free');",
    );
}
