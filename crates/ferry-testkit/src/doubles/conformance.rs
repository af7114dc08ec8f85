//! The [`Sink`] contract as one test, run against every sink.
//!
//! Connector crates call [`sink_conformance`] from their own tests with a
//! fresh target and a table the suite may create and fill:
//!
//! ```text
//! #[tokio::test]
//! async fn sqlite_sink_conforms() {
//!     let sink = SqliteSink::open(dir.path().join("t.db")).unwrap();
//!     ferry_testkit::doubles::sink_conformance(&sink, conformance_table(TableName::bare("t"))).await;
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::{
    Checkpoint, CheckpointRecord, Column, ColumnType, KeyRange, Result, Sink, Step, TableName,
    TableOps, TableProgress, TableReader, TableRef, TableSchema, Value,
};

use super::seq_position;

/// A table the suite works well with: `id` (64-bit integer key), `name`
/// (text), `qty` (64-bit integer), `note` (text).
pub fn conformance_table(name: TableName) -> TableRef {
    let col = |n: &str, ty: ColumnType, source_type: &str| Column {
        name: n.into(),
        ty,
        nullable: n != "id",
        source_type: source_type.into(),
        user_type: None,
    };
    let text = || ColumnType::Text {
        max_len: None,
        fixed: false,
    };
    Arc::new(TableSchema {
        name,
        columns: vec![
            col("id", ColumnType::Int64, "bigint"),
            col("name", text(), "text"),
            col("qty", ColumnType::Int64, "bigint"),
            col("note", text(), "text"),
        ],
        key: vec![0],
        version: 1,
        key_deferrable: false,
    })
}

/// Checks the [`Sink`] contract on `sink`, reading the target back through
/// its [`TableReader`] implementation. See [`sink_conformance_with`].
pub async fn sink_conformance<S: Sink + TableReader>(sink: &S, table: TableRef) {
    sink_conformance_with(sink, sink, table).await;
}

/// Checks the [`Sink`] contract on `sink`, reading the target back through
/// `reader`; panics naming the first broken rule.
///
/// `table` must be a table the suite may create, empty and fill; its
/// columns must be of simple types (integers, floats, `Bool` outside the
/// key, unbounded or `varchar` text, bytes, dates and times, UUID, JSON,
/// `Dynamic`) — [`conformance_table`] is one. The suite clears the sink's
/// checkpoint. It holds two writers at once only when `info().max_writers`
/// allows it.
///
/// What it checks: `ensure_tables` is idempotent; `clear_table` empties;
/// nothing written in a transaction (rows or checkpoint records) is visible
/// before `commit` returns (a reader may also wait for it, as PostgreSQL's
/// do for a truncate, and then see the table empty: PostgreSQL's TRUNCATE
/// is not MVCC-safe), and both are after it; `rollback` leaves
/// nothing (and is a no-op outside a transaction); upserts replace rows,
/// partial updates change only the columns that are not `Unchanged`,
/// deletes of missing rows are not errors; steps apply in order (`Rows`,
/// `Truncate`, `Schema`, `MoveKey`); checkpoint records round-trip, upsert
/// by scope and are forgotten by `clear`; readers see rows in key order and
/// page with `after`; two writers' transactions commit independently.
pub async fn sink_conformance_with(sink: &dyn Sink, reader: &dyn TableReader, table: TableRef) {
    let t = Suite {
        reader,
        table: table.clone(),
    };
    assert!(
        (0..table.columns.len()).any(|i| !table.is_key_column(i)),
        "sink conformance: table {} needs a column outside its key",
        table.name
    );

    ok(sink.clear().await, "clear the checkpoint");
    assert_eq!(
        ok(sink.load().await, "load the checkpoint"),
        Checkpoint::default(),
        "sink conformance: the checkpoint must be empty after clear()"
    );
    ok(
        sink.ensure_tables(std::slice::from_ref(&table)).await,
        "ensure_tables",
    );
    ok(
        sink.ensure_tables(std::slice::from_ref(&table)).await,
        "ensure_tables again (it must be idempotent)",
    );

    let mut w = ok(sink.writer().await, "open a writer");
    ok(w.begin().await, "begin");
    ok(w.clear_table(&table).await, "clear_table");
    ok(w.commit(&[]).await, "commit a clear_table");
    t.expect(&BTreeMap::new(), "after clear_table").await;

    // Load, invisible until commit; data and checkpoint appear together.
    let mut expected: BTreeMap<Vec<Value>, Vec<Value>> =
        (1..=4).map(|n| (t.key(n), t.row(n, 0))).collect();
    let mut progress = TableProgress::default();
    progress.add(KeyRange::all(), &seq_position(1));
    progress.complete = true;
    ok(w.begin().await, "begin");
    ok(
        w.load(&table, &expected.values().cloned().collect::<Vec<_>>())
            .await,
        "load 4 rows",
    );
    t.expect(&BTreeMap::new(), "loaded rows before their commit")
        .await;
    assert_eq!(
        ok(sink.load().await, "load the checkpoint").applied,
        None,
        "sink conformance: nothing is committed yet"
    );
    let records = [
        CheckpointRecord::applied(&seq_position(1)),
        CheckpointRecord::table("conformance_source", &progress),
    ];
    ok(w.commit(&records).await, "commit a load with records");
    t.expect(&expected, "after committing a load").await;
    let cp = ok(sink.load().await, "load the checkpoint");
    assert_eq!(
        cp.applied,
        Some(seq_position(1)),
        "sink conformance: commit must store the applied record with the data"
    );
    assert_eq!(
        cp.tables.get("conformance_source"),
        Some(&progress),
        "sink conformance: commit must store table records with the data"
    );

    // Rollback leaves nothing; outside a transaction it is a no-op.
    ok(w.begin().await, "begin");
    ok(w.load(&table, &[t.row(5, 0)]).await, "load a row");
    let ops = t.ops(vec![t.key(1)], vec![t.row(2, 1)], vec![]);
    ok(w.apply(&[Step::Rows(vec![ops])]).await, "apply");
    ok(w.rollback().await, "rollback");
    ok(w.rollback().await, "rollback outside a transaction");
    t.expect(&expected, "after a rollback").await;
    assert_eq!(
        ok(sink.load().await, "load the checkpoint").applied,
        Some(seq_position(1)),
        "sink conformance: a rollback must not change the checkpoint"
    );

    // Upsert (replace and insert), partial update, delete, delete of a
    // missing row.
    let partial = t.partial(3, 2);
    let ops = t.ops(
        vec![t.key(4), t.key(99)],
        vec![t.row(2, 1), t.row(6, 0)],
        vec![partial.clone()],
    );
    ok(w.begin().await, "begin");
    ok(
        w.apply(&[Step::Rows(vec![ops])]).await,
        "apply row operations",
    );
    t.expect(&expected, "applied rows before their commit")
        .await;
    ok(
        w.commit(&[CheckpointRecord::applied(&seq_position(2))])
            .await,
        "commit row operations",
    );
    expected.remove(&t.key(4));
    expected.insert(t.key(2), t.row(2, 1));
    expected.insert(t.key(6), t.row(6, 0));
    let three = expected.get_mut(&t.key(3)).expect("row 3");
    super::overlay(three, &partial);
    t.expect(&expected, "after upsert, partial update and deletes")
        .await;
    assert_eq!(
        ok(sink.load().await, "load the checkpoint").applied,
        Some(seq_position(2)),
        "sink conformance: the applied record must be replaced by the newer one"
    );
    let page = ok(
        reader.read_rows(&table, Some(&t.key(1)), 2).await,
        "read_rows after a key",
    );
    let want: Vec<Vec<Value>> = expected.values().skip(1).take(2).cloned().collect();
    assert_eq!(
        page, want,
        "sink conformance: read_rows(after, limit) must page in key order"
    );

    // Steps apply in order; a Schema step of the same structure is a no-op.
    let step_rows =
        |del: Vec<Vec<Value>>, up: Vec<Vec<Value>>| Step::Rows(vec![t.ops(del, up, vec![])]);
    ok(w.begin().await, "begin");
    let steps = [
        step_rows(vec![t.key(6)], vec![]),
        step_rows(vec![], vec![t.row(6, 3)]),
        Step::Schema {
            table: table.clone(),
            alter: Default::default(),
        },
    ];
    ok(w.apply(&steps).await, "apply steps in order");
    ok(w.commit(&[]).await, "commit");
    expected.insert(t.key(6), t.row(6, 3));
    t.expect(&expected, "after delete-then-upsert steps").await;

    // MoveKey: the row moves, keeping the columns the image leaves Unchanged.
    let mut moved = t.partial(10, 4);
    let old = expected.remove(&t.key(1)).expect("row 1");
    ok(w.begin().await, "begin");
    let mv = Step::MoveKey {
        table: table.clone(),
        old_key: t.key(1),
        row: moved.clone(),
    };
    ok(w.apply(&[mv]).await, "apply MoveKey");
    ok(w.commit(&[]).await, "commit MoveKey");
    let mut full = old;
    super::overlay(&mut full, &moved);
    moved = full;
    expected.insert(t.key(10), moved);
    t.expect(&expected, "after MoveKey").await;

    // Truncate inside a transaction, between row steps.
    ok(w.begin().await, "begin");
    let steps = [
        step_rows(vec![], vec![t.row(20, 0)]),
        Step::Truncate(vec![table.clone()]),
        step_rows(vec![], vec![t.row(21, 0)]),
    ];
    ok(w.apply(&steps).await, "apply a Truncate step");
    // A database may make readers wait for an open truncate (PostgreSQL's
    // ACCESS EXCLUSIVE lock): read while committing; the reader sees the
    // table before or after the transaction. PostgreSQL's TRUNCATE is not
    // MVCC-safe: a reader whose statement began before the commit and
    // waited for it sees the table empty (as readers of a PostgreSQL
    // source see its own truncates); nothing else is allowed.
    let truncated: BTreeMap<_, _> = [(t.key(21), t.row(21, 0))].into();
    let (seen, committed) = tokio::join!(t.read(), w.commit(&[]));
    ok(committed, "commit a Truncate step");
    if seen != t.rows(&expected) && seen != t.rows(&truncated) && !seen.is_empty() {
        panic!(
            "sink conformance: a reader of {} during a truncate's commit saw {seen:?}: neither \
             the rows before the transaction nor after it",
            table.name
        );
    }
    let expected = truncated;
    t.expect(&expected, "after Truncate").await;

    // Checkpoint records round-trip and upsert by scope.
    ok(sink.clear().await, "clear the checkpoint");
    let mut cp = Checkpoint {
        applied: Some(seq_position(9)),
        ..Default::default()
    };
    let mut a = TableProgress::default();
    a.add(KeyRange::all(), &seq_position(5));
    a.complete = true;
    cp.tables.insert("a".into(), a);
    let mut b = TableProgress::default();
    b.add(
        KeyRange {
            lower: None,
            upper: Some(vec![Value::Int(7), Value::Text("x;\t'y".into())]),
        },
        &seq_position(6),
    );
    cp.tables.insert("ns.b".into(), b);
    ok(w.begin().await, "begin");
    ok(
        w.commit(&cp.to_records()).await,
        "commit checkpoint records",
    );
    assert_eq!(
        ok(sink.load().await, "load the checkpoint"),
        cp,
        "sink conformance: checkpoint records must round-trip"
    );
    ok(w.begin().await, "begin");
    ok(
        w.commit(&[CheckpointRecord::applied(&seq_position(10))])
            .await,
        "commit one record",
    );
    cp.applied = Some(seq_position(10));
    assert_eq!(
        ok(sink.load().await, "load the checkpoint"),
        cp,
        "sink conformance: a commit must upsert its records by scope and keep the others"
    );

    // Two writers: independent transactions, each atomic.
    if sink.info().max_writers >= 2 {
        let mut w2 = ok(sink.writer().await, "open a second writer");
        ok(w.begin().await, "begin (writer 1)");
        ok(w2.begin().await, "begin (writer 2)");
        let up = |n| [step_rows(vec![], vec![t.row(n, 0)])];
        ok(w.apply(&up(30)).await, "apply (writer 1)");
        ok(w2.apply(&up(31)).await, "apply (writer 2)");
        ok(w2.commit(&[]).await, "commit (writer 2)");
        let mut two = expected.clone();
        two.insert(t.key(31), t.row(31, 0));
        t.expect(&two, "writer 2 committed, writer 1 not yet").await;
        ok(w.commit(&[]).await, "commit (writer 1)");
        two.insert(t.key(30), t.row(30, 0));
        t.expect(&two, "both writers committed").await;
    }

    ok(sink.clear().await, "clear the checkpoint");
    assert_eq!(
        ok(sink.load().await, "load the checkpoint"),
        Checkpoint::default(),
        "sink conformance: clear() must forget every record"
    );
    ok(w.begin().await, "begin");
    ok(w.clear_table(&table).await, "clear_table");
    ok(w.commit(&[]).await, "commit");
    t.expect(&BTreeMap::new(), "after the final clear_table")
        .await;
}

fn ok<T>(r: Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("sink conformance: {what} failed: {}", e.report()))
}

struct Suite<'a> {
    reader: &'a dyn TableReader,
    table: TableRef,
}

impl Suite<'_> {
    fn key(&self, n: i64) -> Vec<Value> {
        self.table.key_of(&self.row(n, 0))
    }

    /// Row `n`, version `v` (non-key values change with the version).
    fn row(&self, n: i64, v: i64) -> Vec<Value> {
        (0..self.table.columns.len())
            .map(|i| {
                let x = if self.table.is_key_column(i) {
                    n
                } else {
                    n * 10 + v + i as i64
                };
                sample(&self.table.columns[i], x, self.table.is_key_column(i))
            })
            .collect()
    }

    /// Key of row `n`, its first non-key column at version `v`, the other
    /// non-key columns `Unchanged`.
    fn partial(&self, n: i64, v: i64) -> Vec<Value> {
        let full = self.row(n, v);
        let first = (0..full.len())
            .find(|i| !self.table.is_key_column(*i))
            .expect("a non-key column");
        full.into_iter()
            .enumerate()
            .map(|(i, x)| {
                if self.table.is_key_column(i) || i == first {
                    x
                } else {
                    Value::Unchanged
                }
            })
            .collect()
    }

    fn ops(
        &self,
        deletes: Vec<Vec<Value>>,
        upserts: Vec<Vec<Value>>,
        updates: Vec<Vec<Value>>,
    ) -> TableOps {
        TableOps {
            table: self.table.clone(),
            deletes,
            upserts,
            updates,
        }
    }

    fn rows(&self, rows: &BTreeMap<Vec<Value>, Vec<Value>>) -> Vec<Vec<Value>> {
        rows.values().cloned().collect()
    }

    /// Every row of the table, in key order.
    async fn read(&self) -> Vec<Vec<Value>> {
        ok(
            self.reader.read_rows(&self.table, None, 100_000).await,
            "read_rows",
        )
    }

    async fn expect(&self, rows: &BTreeMap<Vec<Value>, Vec<Value>>, when: &str) {
        let want = self.rows(rows);
        let got = self.read().await;
        assert_eq!(
            got, want,
            "sink conformance: table {} {when}: rows differ (got, want)",
            self.table.name
        );
        let n = ok(self.reader.count_rows(&self.table).await, "count_rows");
        assert_eq!(
            n,
            want.len() as u64,
            "sink conformance: count_rows of {} {when}",
            self.table.name
        );
    }
}

/// A value of column `c` derived from `x`, ordered like `x` for key columns.
fn sample(c: &Column, x: i64, key: bool) -> Value {
    let unsupported = || -> ! {
        panic!(
            "sink conformance: column {} of type {:?} is not supported{}; use conformance_table()",
            c.name,
            c.ty,
            if key { " in a key" } else { "" }
        )
    };
    match &c.ty {
        ColumnType::Bool if !key => Value::Bool(x % 2 == 0),
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 | ColumnType::Dynamic => {
            Value::Int(x)
        }
        ColumnType::Float32 | ColumnType::Float64 => Value::Float(x as f64 + 0.5),
        ColumnType::Text {
            max_len,
            fixed: false,
        } if max_len.is_none_or(|m| m >= 8) => Value::Text(format!("v{x:06}")),
        ColumnType::Bytes => Value::Bytes(x.to_be_bytes().to_vec()),
        ColumnType::Date => Value::Date(x as i32),
        ColumnType::Time => Value::Time(x * 1_000_000),
        ColumnType::Timestamp => Value::Timestamp(x * 1_000_000),
        ColumnType::TimestampTz => Value::TimestampTz(x * 1_000_000),
        ColumnType::Uuid => {
            let mut u = [0u8; 16];
            u[8..].copy_from_slice(&x.to_be_bytes());
            Value::Uuid(u)
        }
        ColumnType::Json if !key => Value::Json(x.to_string()),
        _ => unsupported(),
    }
}

/// Checks how `sink` applies changes to a table without a key
/// ([`Step::Keyless`](ferry_core::Step::Keyless)), reading it back with
/// [`TableReader::scan_rows`]; panics naming the first broken rule.
///
/// `table` must be keyless, its first column a nullable 64-bit integer and
/// its second nullable text; `row(n, note)` builds a full row from those
/// two (other columns as the caller likes, e.g. a type its database
/// compares specially). The suite creates the table and expects it empty.
///
/// What it checks: identical inserts are as many rows; an update or delete
/// changes exactly one row equal to its before-image, `NULL` matching
/// `NULL` and an `Unchanged` column matching anything; changes apply in
/// order; a keyless table gets no key on the target (rows stay duplicable).
pub async fn keyless_conformance<S: Sink + TableReader>(
    sink: &S,
    table: TableRef,
    row: impl Fn(i64, Option<&str>) -> Vec<Value>,
) {
    use ferry_core::KeylessOp;
    assert!(
        table.is_keyless(),
        "keyless_conformance needs a keyless table"
    );
    sink.ensure_tables(std::slice::from_ref(&table))
        .await
        .expect("ensure_tables of a keyless table");
    let width = row(0, None).len();
    let only_n = |n: i64| {
        let mut r = vec![Value::Unchanged; width];
        r[0] = Value::Int(n);
        r
    };
    let ops = vec![
        KeylessOp::Insert(row(1, Some("x"))),
        KeylessOp::Insert(row(1, Some("x"))),
        KeylessOp::Insert(row(2, None)),
        // One of the two identical rows changes.
        KeylessOp::Update {
            before: row(1, Some("x")),
            after: only_n(10),
        },
        // NULL matches NULL.
        KeylessOp::Delete(row(2, None)),
        KeylessOp::Insert(row(3, None)),
        // A column the source did not send matches any value.
        KeylessOp::Delete(only_n(3)),
        // In order: this insert follows the delete of the same image.
        KeylessOp::Insert(row(3, None)),
    ];
    let mut w = sink.writer().await.expect("writer");
    w.begin().await.expect("begin");
    w.apply(&[Step::Keyless {
        table: table.clone(),
        ops,
    }])
    .await
    .expect("apply keyless changes");
    w.commit(&[CheckpointRecord::applied(&seq_position(1))])
        .await
        .expect("commit");
    drop(w);
    let mut seen = Vec::new();
    sink.scan_rows(&table, &mut |rows| {
        seen.extend(rows);
        Ok(())
    })
    .await
    .expect("scan_rows");
    seen.sort();
    let mut ten = row(1, Some("x"));
    ten[0] = Value::Int(10);
    let mut want = vec![row(1, Some("x")), ten, row(3, None)];
    want.sort();
    assert_eq!(
        seen, want,
        "keyless changes applied one row at a time, in order"
    );
    sink.clear().await.expect("clear the checkpoint");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::{FaultySink, MemorySink, RecordingSink};

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_sink_conforms() {
        let sink = MemorySink::new();
        sink_conformance(&sink, conformance_table(TableName::bare("t"))).await;
        assert_eq!(sink.open_transactions(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn single_writer_memory_sink_conforms() {
        let sink = MemorySink::with_max_writers(1);
        sink_conformance(&sink, conformance_table(TableName::new(Some("ns"), "t"))).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wrappers_conform() {
        let sink = FaultySink::new(RecordingSink::new(MemorySink::new()));
        sink_conformance(&sink, conformance_table(TableName::bare("t"))).await;
        let calls = sink.inner().calls();
        assert!(calls.iter().all(|c| c.error.is_none()), "{calls:?}");
        let txns = sink.inner().transactions();
        assert!(txns.iter().any(|t| !t.committed), "a rollback was recorded");
    }
}
