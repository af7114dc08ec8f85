//! Tables, rows, changes and a handle on a running pipeline.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{
    Change, Checkpoint, Column, ColumnType, Error, Position, Result, Sink, TableName, TableRef,
    TableSchema, Value,
};
use ferry_pipeline::{Options, Outcome, Pipeline, Stats, Transform, TransformSpec};
use ferry_testkit::doubles::{MemoryDb, MemorySink, MemorySource};
use ferry_testkit::eventually;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest wait for any condition; the tests normally meet them in
/// milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// A table whose first column `id` is the (integer) key; the others are
/// `name:int` or `name:text`.
pub fn table(name: &str, columns: &[&str]) -> TableRef {
    let col = |spec: &str| {
        let (n, ty) = spec.split_once(':').unwrap_or((spec, "int"));
        let (ty, source_type) = match ty {
            "int" => (ColumnType::Int64, "integer"),
            "text" => (
                ColumnType::Text {
                    max_len: None,
                    fixed: false,
                },
                "text",
            ),
            other => panic!("unknown test column type {other}"),
        };
        Column {
            name: n.into(),
            ty,
            nullable: n != "id",
            source_type: source_type.into(),
            user_type: None,
        }
    };
    let mut cols = vec![col("id:int")];
    cols.extend(columns.iter().map(|c| col(c)));
    Arc::new(TableSchema {
        name: TableName::parse(name),
        columns: cols,
        key: vec![0],
        version: 1,
        key_deferrable: false,
    })
}

/// `accounts(id, owner, balance)`.
pub fn accounts() -> TableRef {
    table("accounts", &["owner:text", "balance:int"])
}

/// `name(id, label, qty)`.
pub fn items(name: &str) -> TableRef {
    table(name, &["label:text", "qty:int"])
}

pub fn int(i: i64) -> Value {
    Value::Int(i)
}

pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

pub fn as_int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

/// An `items`-shaped row.
pub fn item(id: i64, label: &str, qty: i64) -> Vec<Value> {
    vec![int(id), text(label), int(qty)]
}

pub fn ins(t: &TableRef, row: Vec<Value>) -> Change {
    Change::Insert {
        table: t.clone(),
        row,
    }
}

/// An update with a full after-image and no before-image.
pub fn upd(t: &TableRef, row: Vec<Value>) -> Change {
    Change::Update {
        table: t.clone(),
        before: None,
        after: row,
    }
}

/// An update that changes the key: `before` is the full old row.
pub fn mv(t: &TableRef, before: Vec<Value>, after: Vec<Value>) -> Change {
    Change::Update {
        table: t.clone(),
        before: Some(before),
        after,
    }
}

/// A delete with a key-only before-image.
pub fn del(t: &TableRef, id: i64) -> Change {
    let mut before = vec![Value::Unchanged; t.columns.len()];
    before[0] = int(id);
    Change::Delete {
        table: t.clone(),
        before,
    }
}

/// Options for fast tests: small batches, quick idle checkpoints.
pub fn options(workers: usize) -> Options {
    let mut o = Options::new("test");
    o.workers = workers;
    o.batch_rows = 64;
    o.batch_time = Duration::from_millis(5);
    o.max_retries = 3;
    o.idle_checkpoint = Duration::from_millis(20);
    o
}

/// A source with quick heartbeats.
pub fn source(db: &MemoryDb, tables: &[&TableRef]) -> MemorySource {
    MemorySource::new(db.clone(), tables.iter().map(|t| (*t).clone()).collect())
        .heartbeat_after(Duration::from_millis(10))
}

/// A pipeline running in its own task.
pub struct Running {
    stop: Arc<watch::Sender<bool>>,
    handle: Option<JoinHandle<Result<Outcome>>>,
    pub stats: Arc<Stats>,
}

pub fn start(
    source: MemorySource,
    sink: Arc<dyn Sink>,
    spec: TransformSpec,
    options: Options,
) -> Running {
    let (stop, shutdown) = watch::channel(false);
    let stats = Arc::new(Stats::new());
    let pipeline = Pipeline {
        source: Box::new(source),
        sink,
        transform: Arc::new(Transform::new(spec)),
        options,
        stats: stats.clone(),
        shutdown,
    };
    Running {
        stop: Arc::new(stop),
        handle: Some(tokio::spawn(pipeline.run())),
        stats,
    }
}

impl Running {
    /// A handle that asks the pipeline to stop (`send(true)`) from
    /// anywhere, e.g. a sink's commit hook.
    pub fn stop_handle(&self) -> Arc<watch::Sender<bool>> {
        self.stop.clone()
    }

    /// Asks the pipeline to stop, without waiting.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Asks the pipeline to stop and returns how it ended.
    pub async fn stop(self) -> Result<Outcome> {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Waits for the pipeline to end on its own.
    pub async fn join(mut self) -> Result<Outcome> {
        let handle = self.handle.take().expect("joined once");
        match tokio::time::timeout(WAIT, handle).await {
            Ok(joined) => joined.expect("the pipeline task must not panic"),
            Err(_) => panic!("the pipeline did not end within {WAIT:?}"),
        }
    }

    fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits until `sink` holds exactly the rows of `db` in `tables` and its
    /// checkpoint is at `db`'s newest position. Panics early, with the
    /// pipeline's result, if the pipeline ends meanwhile.
    pub async fn synced(&mut self, db: &MemoryDb, sink: &MemorySink, tables: &[&str]) {
        self.synced_as(
            db,
            sink,
            &tables.iter().map(|t| (*t, *t)).collect::<Vec<_>>(),
        )
        .await
    }

    /// Like [`synced`](Self::synced) with `(source, target)` table names.
    pub async fn synced_as(&mut self, db: &MemoryDb, sink: &MemorySink, tables: &[(&str, &str)]) {
        let ended = eventually("the target equals the source", WAIT, || {
            std::future::ready(if self.finished() {
                Ok(true)
            } else {
                in_sync(db, sink, tables).map(|()| false)
            })
        })
        .await;
        if ended {
            let handle = self.handle.take().expect("not joined");
            let result = handle.await.expect("the pipeline task must not panic");
            panic!("the pipeline ended before the target caught up: {result:?}");
        }
    }
}

/// Where a restart would resume: the applied position, or before any
/// stream commit, the oldest snapshot (once every table is copied).
pub fn durable_position(cp: &Checkpoint) -> Option<Position> {
    if cp.applied.is_some() {
        return cp.applied.clone();
    }
    if cp.tables.is_empty() || !cp.tables.values().all(|p| p.complete) {
        return None;
    }
    cp.tables
        .values()
        .filter_map(|p| p.newest_snapshot())
        .min_by(|a, b| a.partial_cmp(b).expect("one kind of position"))
        .cloned()
}

/// `Ok` when the tables are equal and the checkpoint covers the source's
/// newest position; otherwise what differs.
pub fn in_sync(db: &MemoryDb, sink: &MemorySink, tables: &[(&str, &str)]) -> Result<(), String> {
    let head = db.position();
    let differ: Vec<String> = tables
        .iter()
        .filter(|(s, t)| db.rows(s) != sink.rows(t))
        .map(|(s, t)| {
            format!(
                "{s} ({} rows) vs {t} ({} rows)",
                db.rows(s).len(),
                sink.rows(t).len()
            )
        })
        .collect();
    let durable = durable_position(&sink.checkpoint());
    if differ.is_empty() && durable.as_ref() == Some(&head) {
        Ok(())
    } else {
        Err(format!(
            "differing tables: {differ:?}; checkpoint at {durable:?}, source at {head}"
        ))
    }
}

/// Waits until the snapshot phase is over and the pipeline streams.
pub async fn streaming(run: &Running) {
    eventually("the pipeline streams", WAIT, || {
        let phase = run.stats.phase();
        std::future::ready(if phase == "streaming" {
            Ok(())
        } else {
            Err(phase)
        })
    })
    .await;
}

/// Waits until the pipeline received `position` from the source.
pub async fn received(run: &Running, position: &Position) {
    let want = position.to_string();
    eventually("the pipeline receives the position", WAIT, || {
        let got = run.stats.received().position;
        std::future::ready(if got == want { Ok(()) } else { Err(got) })
    })
    .await;
}

/// Every position strictly after the one before it.
pub fn assert_strictly_increasing(positions: &[Position], what: &str) {
    for w in positions.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: {} is followed by {} (positions: {positions:?})",
            w[0],
            w[1]
        );
    }
}

/// Unwraps the error of a run that must have failed.
pub fn failed(result: Result<Outcome>) -> Error {
    match result {
        Ok(o) => panic!("the pipeline must fail, but ended with {o:?}"),
        Err(e) => e,
    }
}

/// A small deterministic pseudo-random generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        lo + (r % (hi - lo + 1) as u64) as i64
    }
}
