//! The [`Source`] contract as one test, run against every source.
//!
//! A connector's tests implement [`SourceDriver`] (how to open its source
//! and how an application writes to its database) and call
//! [`source_conformance`] on a database holding the suite's two empty
//! tables ([`SOURCE_CONFORMANCE_DDL`]) and nothing else:
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread")]
//! async fn sqlite_source_conforms() {
//!     let mut driver = SqliteDriver::new();   // creates the tables
//!     ferry_testkit::doubles::source_conformance(&mut driver).await;
//! }
//! ```

mod delivery;
mod snapshot;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::{
    Column, ColumnType, KeyRange, Result, SnapshotRequest, Source, TableName, TableRef,
    TableSchema, Value,
};

use delivery::{Delivery, Model, Op, State};
use snapshot::read_snapshot;

/// Creates the suite's tables; valid SQL for SQLite and PostgreSQL.
pub const SOURCE_CONFORMANCE_DDL: &str =
    "CREATE TABLE conf_a (id bigint PRIMARY KEY, name text, qty bigint);
     CREATE TABLE conf_b (id bigint PRIMARY KEY, name text, qty bigint);";

const A: &str = "conf_a";
const B: &str = "conf_b";

/// The suite's tables as a source describes them (for an in-memory
/// source): `id` (64-bit integer key), `name` (text), `qty` (64-bit
/// integer).
pub fn source_conformance_tables() -> Vec<TableRef> {
    let col = |name: &str, ty: ColumnType, source_type: &str| Column {
        name: name.into(),
        ty,
        nullable: name != "id",
        source_type: source_type.into(),
        user_type: None,
    };
    [A, B]
        .into_iter()
        .map(|t| {
            Arc::new(TableSchema {
                name: TableName::bare(t),
                columns: vec![
                    col("id", ColumnType::Int64, "bigint"),
                    col(
                        "name",
                        ColumnType::Text {
                            max_len: None,
                            fixed: false,
                        },
                        "text",
                    ),
                    col("qty", ColumnType::Int64, "bigint"),
                ],
                key: vec![0],
                version: 1,
                key_deferrable: false,
            })
        })
        .collect()
}

/// One row write of a transaction the suite commits through the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceWrite {
    /// Insert a row.
    Insert {
        /// `conf_a` or `conf_b`.
        table: &'static str,
        /// The key.
        id: i64,
        /// Names the transaction (`t<k>`).
        name: String,
        /// Any value.
        qty: i64,
    },
    /// Set `name` and `qty` of an existing row.
    Update {
        /// `conf_a` or `conf_b`.
        table: &'static str,
        /// The key.
        id: i64,
        /// Names the transaction (`t<k>`).
        name: String,
        /// Any value.
        qty: i64,
    },
    /// Delete an existing row.
    Delete {
        /// `conf_a` or `conf_b`.
        table: &'static str,
        /// The key.
        id: i64,
    },
}

impl SourceWrite {
    /// The table, the key, and for an insert or update the values written.
    pub fn parts(&self) -> (&'static str, i64, Option<(&str, i64)>) {
        match self {
            SourceWrite::Insert {
                table,
                id,
                name,
                qty,
            }
            | SourceWrite::Update {
                table,
                id,
                name,
                qty,
            } => (table, *id, Some((name.as_str(), *qty))),
            SourceWrite::Delete { table, id } => (table, *id, None),
        }
    }
}

/// `writes` as one SQL transaction (`BEGIN; ...; COMMIT;`), valid on SQLite
/// and PostgreSQL. Consecutive inserts into one table share a multi-row
/// `INSERT` of up to 500 rows.
pub fn transaction_sql(writes: &[SourceWrite]) -> String {
    let mut sql = vec!["BEGIN".to_owned()];
    let mut insert: Option<(&str, Vec<String>)> = None;
    let flush = |insert: &mut Option<(&str, Vec<String>)>, sql: &mut Vec<String>| {
        if let Some((table, rows)) = insert.take() {
            sql.push(format!(
                "INSERT INTO {table} (id, name, qty) VALUES {}",
                rows.join(", ")
            ));
        }
    };
    for w in writes {
        let (table, id, values) = w.parts();
        match (w, values) {
            (SourceWrite::Insert { .. }, Some((name, qty))) => {
                let same = insert
                    .as_ref()
                    .is_some_and(|(t, rows)| *t == table && rows.len() < 500);
                if !same {
                    flush(&mut insert, &mut sql);
                    insert = Some((table, Vec::new()));
                }
                let row = format!("({id}, '{name}', {qty})");
                insert.as_mut().expect("set above").1.push(row);
            }
            (_, Some((name, qty))) => {
                flush(&mut insert, &mut sql);
                sql.push(format!(
                    "UPDATE {table} SET name = '{name}', qty = {qty} WHERE id = {id}"
                ));
            }
            (_, None) => {
                flush(&mut insert, &mut sql);
                sql.push(format!("DELETE FROM {table} WHERE id = {id}"));
            }
        }
    }
    flush(&mut insert, &mut sql);
    sql.push("COMMIT".to_owned());
    sql.join(";\n") + ";"
}

/// How the suite reaches one source implementation.
#[async_trait]
pub trait SourceDriver: Send {
    /// A new source of the database under test, for the suite's pipeline
    /// (the same one every time). The suite drops a source to stop it and
    /// opens another to restart.
    async fn open(&mut self) -> Box<dyn Source>;

    /// Commits `writes` as one transaction, as an application would
    /// (for SQL databases: [`transaction_sql`]).
    async fn write(&mut self, writes: &[SourceWrite]);

    /// What capture objects of the pipeline exist on the source (triggers,
    /// change tables, slots, publications), by name; empty when none.
    async fn installed(&mut self) -> Vec<String>;

    /// Rows of one transaction this source hands over in `Partial`s
    /// (`None`: it never splits a transaction).
    fn large_transaction(&self) -> Option<usize>;

    /// Whether `prepare` installs capture objects on the source. A source
    /// that reads the server's own log (a MySQL binlog) installs nothing;
    /// the suite then checks that nothing appears.
    fn installs_capture(&self) -> bool {
        true
    }
}

/// Checks the [`Source`] contract on the sources `driver` opens; panics
/// naming the first broken rule. The database must hold the two empty
/// tables of [`SOURCE_CONFORMANCE_DDL`] and nothing of the pipeline.
///
/// What it checks, in five sessions (each a new source):
///
/// 1. `check` installs nothing; `tables` lists both tables keyed by `id`;
///    `prepare` installs capture and is idempotent; `tables` after
///    `prepare` lists the same tables. The snapshot is the state after a
///    prefix of the transactions (one written before `prepare` is in
///    it, one written right after `snapshot` returned is not); its chunks
///    hold each row once, inside the chunk's range, ranges of a table never
///    overlap and `table_done` ends each table. `start_stream(snapshot
///    position)` then delivers exactly the transactions the snapshot lacks:
///    once each, whole (a large one as `Partial`s of one position closed by
///    its `Commit`, at that position or just after it, nothing in
///    between), in commit order, with exactly
///    their changes; positions grow, a heartbeat's never reaches the next
///    transaction's, and an idle source sends heartbeats.
/// 2. After acks up to a mid-stream position P (never backwards, one
///    repeated), a stop and a transaction written while stopped, a new
///    source (`prepare` again: nothing more installed) streaming from P
///    delivers exactly the transactions after P.
/// 3. A snapshot with a skipped key range in the middle of the keys sends
///    no row of it, reports no range overlapping it, and sends every other
///    row (both sides of it).
/// 4. `start_stream(None)` after everything was acked delivers only what is
///    written after it.
/// 5. `teardown` removes everything `prepare` installed.
pub async fn source_conformance(driver: &mut dyn SourceDriver) {
    let mut model = Model::default();
    let before = driver.installed().await;
    if !before.is_empty() {
        fail(
            "setup",
            &format!("the source already has capture: {before:?}"),
        );
    }

    // Session 1: snapshot, hand-off, stream.
    let when = "session 1 (snapshot and stream)";
    let mut src = driver.open().await;
    let _ = src.check().await;
    let after_check = driver.installed().await;
    if !after_check.is_empty() {
        fail(when, &format!("check() installed {after_check:?}"));
    }
    let mut seed: Vec<Op> = (1..=6).map(|i| Op::Ins(A, i, i * 10)).collect();
    seed.extend((1..=3).map(|i| Op::Ins(B, i, i * 10)));
    let t1 = model.add(&seed);
    driver.write(&t1).await;
    let tables = suite_tables(ok(src.tables().await, when, "tables()"), when);
    ok(src.prepare().await, when, "prepare()");
    let installed = driver.installed().await;
    if installed.is_empty() && driver.installs_capture() {
        fail(when, "prepare() installed nothing the driver can see");
    }
    ok(src.prepare().await, when, "prepare() a second time");
    same_installed(driver, &installed, when, "a second prepare()").await;
    let again = suite_tables(
        ok(src.tables().await, when, "tables() after prepare()"),
        when,
    );
    if names(&again) != names(&tables) {
        fail(
            when,
            &format!(
                "tables() after prepare() lists {:?}, before it {:?}",
                names(&again),
                names(&tables)
            ),
        );
    }
    let t2 = model.add(&[Op::Upd(A, 1, 11), Op::Ins(B, 4, 40)]);
    driver.write(&t2).await;
    let requests: Vec<SnapshotRequest> = tables.iter().map(|t| request(t, Vec::new())).collect();
    let reader = ok(src.snapshot(requests).await, when, "snapshot()");
    let t3 = model.add(&[Op::Ins(A, 7, 70), Op::Upd(A, 2, 21), Op::Del(A, 3)]);
    driver.write(&t3).await;
    let (snapshot_at, rows) = read_snapshot(reader, &[], when).await;
    let Some(in_snapshot) = (1..=2).find(|k| model.state(*k) == rows) else {
        fail(
            when,
            &format!(
                "the snapshot is not the state after t1 (written before prepare) or t2 (before \
                 snapshot); a transaction written after snapshot() returned must not be in it.\n\
                 snapshot: {rows:?}\nafter t1: {:?}\nafter t2: {:?}\nafter t3: {:?}",
                model.state(1),
                model.state(2),
                model.state(3)
            ),
        )
    };
    ok(
        src.start_stream(Some(&snapshot_at), &[]).await,
        when,
        "start_stream(snapshot position)",
    );
    let mut seen = Delivery::default();
    seen.until(src.as_mut(), &model, 3, when).await;
    let t4 = model.add(&[
        Op::Upd(B, 1, 11),
        Op::Ins(A, 8, 80),
        Op::Del(B, 2),
        Op::Upd(A, 1, 12),
    ]);
    driver.write(&t4).await;
    if let Some(n) = driver.large_transaction() {
        let big: Vec<Op> = (0..n as i64).map(|i| Op::Ins(B, 100 + i, i)).collect();
        let t5 = model.add(&big);
        driver.write(&t5).await;
    }
    seen.until(src.as_mut(), &model, model.len(), when).await;
    if driver.large_transaction().is_some() && seen.units.iter().all(|u| u.partials == 0) {
        fail(
            when,
            "the large transaction arrived without Partials (the driver says this source splits it)",
        );
    }
    let mid = model.len() + 1;
    let t_mid = model.add(&[Op::Upd(A, 4, 41)]);
    driver.write(&t_mid).await;
    seen.until(src.as_mut(), &model, mid, when).await;
    let t_next = model.add(&[Op::Ins(B, 5, 50), Op::Upd(A, 5, 51)]);
    driver.write(&t_next).await;
    let t_last = model.add(&[Op::Del(A, 6)]);
    driver.write(&t_last).await;
    seen.until(src.as_mut(), &model, model.len(), when).await;
    seen.until_heartbeat(src.as_mut(), &model, when).await;
    model.check_units(&seen.units, in_snapshot + 1, model.len(), when);
    // Acks up to the unit holding the mid-stream transaction, in order.
    let resume_unit = seen
        .units
        .iter()
        .position(|u| model.newest_in(u) >= mid)
        .expect("delivered above");
    for u in &seen.units[..=resume_unit] {
        ok(src.ack(&u.position).await, when, "ack()");
    }
    let resume_at = seen.units[resume_unit].position.clone();
    ok(
        src.ack(&resume_at).await,
        when,
        "ack() of the same position again",
    );
    let resume_after = model.newest_in(&seen.units[resume_unit]);
    drop(src);

    // Session 2: resume from a mid-stream position.
    let when = "session 2 (resume after a stop)";
    let stopped = model.add(&[Op::Ins(A, 9, 90), Op::Upd(B, 3, 31)]);
    driver.write(&stopped).await;
    let mut src = driver.open().await;
    suite_tables(ok(src.tables().await, when, "tables()"), when);
    ok(src.prepare().await, when, "prepare() at a restart");
    same_installed(driver, &installed, when, "prepare() at a restart").await;
    ok(
        src.start_stream(Some(&resume_at), &[]).await,
        when,
        "start_stream(mid-stream position)",
    );
    let mut seen = Delivery::default();
    seen.until(src.as_mut(), &model, model.len(), when).await;
    let live = model.add(&[Op::Upd(A, 9, 91), Op::Del(B, 4)]);
    driver.write(&live).await;
    seen.until(src.as_mut(), &model, model.len(), when).await;
    seen.until_heartbeat(src.as_mut(), &model, when).await;
    model.check_units(&seen.units, resume_after + 1, model.len(), when);
    let last = seen.units.last().expect("delivered above").position.clone();
    ok(src.ack(&last).await, when, "ack()");
    drop(src);

    // Session 3: a snapshot that skips a copied range.
    let when = "session 3 (snapshot skipping a copied range)";
    let mut src = driver.open().await;
    let tables = suite_tables(ok(src.tables().await, when, "tables()"), when);
    ok(src.prepare().await, when, "prepare()");
    // In the middle of the keys: the gap before it has no lower bound and
    // the one after it no upper bound.
    let skip = KeyRange {
        lower: Some(vec![Value::Int(1)]),
        upper: Some(vec![Value::Int(3)]),
    };
    let a = tables
        .iter()
        .find(|t| t.name.name == A)
        .expect("checked by suite_tables");
    let reader = ok(
        src.snapshot(vec![request(a, vec![skip.clone()])]).await,
        when,
        "snapshot() with a skipped range",
    );
    let (_, rows) = read_snapshot(reader, &[(A, skip)], when).await;
    let want: State = model
        .state(model.len())
        .into_iter()
        .filter(|((t, id), _)| t == A && !(1 < *id && *id <= 3))
        .collect();
    if rows != want {
        fail(
            when,
            &format!("rows outside the skipped range (1 < id <= 3): got {rows:?}, want {want:?}"),
        );
    }
    drop(src);

    // Session 4: streaming from now.
    let when = "session 4 (start_stream(None))";
    let mut src = driver.open().await;
    suite_tables(ok(src.tables().await, when, "tables()"), when);
    ok(src.prepare().await, when, "prepare()");
    ok(
        src.start_stream(None, &[]).await,
        when,
        "start_stream(None)",
    );
    let now = model.add(&[Op::Ins(A, 10, 100)]);
    driver.write(&now).await;
    let mut seen = Delivery::default();
    seen.until(src.as_mut(), &model, model.len(), when).await;
    seen.until_heartbeat(src.as_mut(), &model, when).await;
    model.check_units(&seen.units, model.len(), model.len(), when);
    drop(src);

    // Session 5: teardown.
    let when = "session 5 (teardown)";
    let mut src = driver.open().await;
    // A dropped source's server sessions may take a moment to end.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = src.teardown().await {
        if Instant::now() > deadline {
            fail(when, &format!("teardown() failed: {}", e.report()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let left = driver.installed().await;
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            fail(when, &format!("teardown() left {left:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fail(when: &str, what: &str) -> ! {
    panic!("source conformance, {when}: {what}")
}

fn ok<T>(r: Result<T>, when: &str, what: &str) -> T {
    r.unwrap_or_else(|e| fail(when, &format!("{what} failed: {}", e.report())))
}

fn request(table: &TableRef, skip: Vec<KeyRange>) -> SnapshotRequest {
    SnapshotRequest {
        table: table.clone(),
        skip,
        encoding: None,
    }
}

fn names(tables: &[TableRef]) -> BTreeSet<String> {
    tables.iter().map(|t| t.name.name.clone()).collect()
}

/// The suite's two tables, checked to be keyed by `id`.
fn suite_tables(tables: Vec<TableRef>, when: &str) -> Vec<TableRef> {
    let listed = names(&tables);
    if listed != BTreeSet::from([A.to_owned(), B.to_owned()]) {
        fail(
            when,
            &format!("tables() lists {listed:?}, the database holds {A} and {B}"),
        );
    }
    for t in &tables {
        if t.key_names() != ["id"] {
            fail(
                when,
                &format!("{} is keyed by {:?}, not by id", t.name, t.key_names()),
            );
        }
    }
    tables
}

async fn same_installed(driver: &mut dyn SourceDriver, want: &[String], when: &str, after: &str) {
    let now = driver.installed().await;
    if now != want {
        fail(
            when,
            &format!("after {after}, the source has {now:?}; after the first prepare() {want:?}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::{MemoryDb, MemorySource};
    use ferry_core::Change;

    /// Drives a [`MemorySource`]: writes become [`MemoryDb`] commits.
    struct MemoryDriver {
        db: MemoryDb,
    }

    #[async_trait]
    impl SourceDriver for MemoryDriver {
        async fn open(&mut self) -> Box<dyn Source> {
            Box::new(
                MemorySource::new(self.db.clone(), source_conformance_tables())
                    .chunk_rows(2)
                    .partial_after(10)
                    .heartbeat_after(Duration::from_millis(20)),
            )
        }

        async fn write(&mut self, writes: &[SourceWrite]) {
            let tables = source_conformance_tables();
            let table = |name: &str| {
                tables
                    .iter()
                    .find(|t| t.name.name == name)
                    .expect("a suite table")
                    .clone()
            };
            let writes = writes.to_vec();
            self.db.commit_with(|view| {
                writes
                    .iter()
                    .map(|w| match w {
                        SourceWrite::Insert {
                            table: t,
                            id,
                            name,
                            qty,
                        } => Change::Insert {
                            table: table(t),
                            row: vec![Value::Int(*id), Value::Text(name.clone()), Value::Int(*qty)],
                        },
                        SourceWrite::Update {
                            table: t,
                            id,
                            name,
                            qty,
                        } => Change::Update {
                            table: table(t),
                            before: None,
                            after: vec![
                                Value::Int(*id),
                                Value::Text(name.clone()),
                                Value::Int(*qty),
                            ],
                        },
                        SourceWrite::Delete { table: t, id } => Change::Delete {
                            table: table(t),
                            before: view
                                .row(&TableName::bare(t), &[Value::Int(*id)])
                                .cloned()
                                .unwrap_or_else(|| vec![Value::Int(*id), Value::Null, Value::Null]),
                        },
                    })
                    .collect()
            });
        }

        async fn installed(&mut self) -> Vec<String> {
            if self.db.capture_installed() {
                vec!["memory capture".into()]
            } else {
                Vec::new()
            }
        }

        fn large_transaction(&self) -> Option<usize> {
            Some(25)
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_source_conforms() {
        let mut driver = MemoryDriver {
            db: MemoryDb::new(),
        };
        source_conformance(&mut driver).await;
        assert!(driver.db.prepares() >= 4);
    }

    #[test]
    fn transactions_become_sql() {
        let sql = transaction_sql(&[
            SourceWrite::Insert {
                table: A,
                id: 1,
                name: "t1".into(),
                qty: 10,
            },
            SourceWrite::Insert {
                table: A,
                id: 2,
                name: "t1".into(),
                qty: 20,
            },
            SourceWrite::Delete { table: B, id: 3 },
        ]);
        assert_eq!(
            sql,
            "BEGIN;\nINSERT INTO conf_a (id, name, qty) VALUES (1, 't1', 10), (2, 't1', 20);\n\
             DELETE FROM conf_b WHERE id = 3;\nCOMMIT;"
        );
    }
}
