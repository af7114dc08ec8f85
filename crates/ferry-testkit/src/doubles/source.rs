//! [`MemorySource`]: a [`Source`] over a [`MemoryDb`].

use std::collections::VecDeque;
use std::time::Duration;

use crate::doubles::{MEMORY_ROW_ENCODING, encode_rows};
use async_trait::async_trait;
use ferry_core::{
    Change, CheckItem, ChunkRows, Continuity, EncodedRows, Error, KeyRange, Position, Result,
    SnapshotChunk, SnapshotReader, SnapshotRequest, Source, SourceEvent, TableRef, Transaction,
    Value,
};

use super::db::{MemoryDb, Rows};
use super::seq_position;

/// A [`Source`] reading a [`MemoryDb`].
///
/// * `snapshot` copies the requested tables as they are when it is called
///   (its position is the database's newest transaction), in chunks of
///   [`chunk_rows`](Self::chunk_rows) rows in key order, leaving out the
///   requests' `skip` ranges and reporting ranges that never overlap them.
/// * `start_stream(from)` then `next` deliver every transaction after
///   `from` as a `Commit`, waiting for new commits when there are none and
///   sending a `Heartbeat` after [`heartbeat_after`](Self::heartbeat_after)
///   of idleness. Transactions of more than
///   [`partial_after`](Self::partial_after) changes arrive as `Partial`s
///   plus a final `Commit`; [`group_max`](Self::group_max) groups
///   consecutive transactions like the SQLite source, ending a group at
///   every snapshot boundary. With
///   [`empty_as_heartbeat`](Self::empty_as_heartbeat), a transaction
///   without changes arrives as a `Heartbeat` at its position, as the
///   PostgreSQL stream delivers a position marker's transaction.
/// * `ack` records the position in the database ([`MemoryDb::acks`]) and
///   panics if it goes backwards or past what was delivered (the task
///   running the source then fails, and the pipeline with it).
/// * `continuity(from)` reports a gap when the database forgot the log
///   after `from` ([`MemoryDb::forget_log_through`]).
/// * Online re-copies ([`Source::recopy`], or a
///   [`MemoryDb::request_recopy`] marker met in the stream) deliver one
///   chunk of [`chunk_rows`](Self::chunk_rows) rows whenever the stream has
///   caught up with the database, at the newest transaction's position.
pub struct MemorySource {
    db: MemoryDb,
    tables: Vec<TableRef>,
    chunk_rows: usize,
    partial_after: Option<usize>,
    heartbeat_after: Duration,
    group_max: usize,
    empty_as_heartbeat: bool,
    /// Sequence number of the last transaction delivered (or to deliver
    /// after); `None` until `start_stream`.
    cursor: Option<i64>,
    boundaries: Vec<i64>,
    pending: VecDeque<SourceEvent>,
    /// Offers [`MEMORY_ROW_ENCODING`](crate::doubles::MEMORY_ROW_ENCODING).
    encoded: bool,
    /// Online re-copies running: table and the last key copied.
    recopies: VecDeque<(TableRef, Option<Vec<Value>>)>,
}

impl MemorySource {
    /// A source of `tables` (their schemas) in `db`. Defaults: 100 rows per
    /// snapshot chunk, no partials, a heartbeat after 50 ms idle, one
    /// transaction per `Commit`.
    pub fn new(db: MemoryDb, tables: Vec<TableRef>) -> Self {
        MemorySource {
            db,
            tables,
            chunk_rows: 100,
            partial_after: None,
            heartbeat_after: Duration::from_millis(50),
            group_max: 1,
            empty_as_heartbeat: false,
            cursor: None,
            boundaries: Vec::new(),
            pending: VecDeque::new(),
            encoded: false,
            recopies: VecDeque::new(),
        }
    }

    /// Offers snapshot rows in
    /// [`MEMORY_ROW_ENCODING`](crate::doubles::MEMORY_ROW_ENCODING), and
    /// sends them so when a request asks for it.
    pub fn row_encoding(mut self) -> Self {
        self.encoded = true;
        self
    }

    /// Rows per snapshot chunk (at least 1).
    pub fn chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.max(1);
        self
    }

    /// Splits a transaction of more than `changes` changes into `Partial`
    /// events of `changes` changes and a final `Commit` with the rest.
    pub fn partial_after(mut self, changes: usize) -> Self {
        self.partial_after = Some(changes.max(1));
        self
    }

    /// Idle time after which `next` returns a `Heartbeat`.
    pub fn heartbeat_after(mut self, idle: Duration) -> Self {
        self.heartbeat_after = idle;
        self
    }

    /// Delivers a transaction without changes (`MemoryDb::commit(vec![])`)
    /// as a `Heartbeat` at its position, as PostgreSQL's stream delivers
    /// the empty transaction of a `pg_logical_emit_message` marker.
    pub fn empty_as_heartbeat(mut self) -> Self {
        self.empty_as_heartbeat = true;
        self
    }

    /// Delivers up to `transactions` consecutive committed transactions as
    /// one `Commit` (the SQLite source's groups), never across a boundary
    /// passed to `start_stream`.
    pub fn group_max(mut self, transactions: usize) -> Self {
        self.group_max = transactions.max(1);
        self
    }

    /// Queues the events of the next transaction (group) after the cursor,
    /// if there is one.
    fn fill(&mut self) -> Result<bool> {
        let cursor = self
            .cursor
            .ok_or_else(|| Error::fatal("MemorySource: next() called before start_stream()"))?;
        let mut st = self.db.lock();
        if let Some(class) = st.source_faults.pop_front() {
            return Err(Error::new(class, "MemorySource: injected read failure")
                .with_fix("this is a test double (MemoryDb::fail_next_read)"));
        }
        let mut group = Vec::new();
        let mut seq = cursor;
        let mut time = None;
        while let Some(tx) = st.log.get(seq as usize) {
            seq = tx.seq;
            time = Some(tx.commit_time_micros);
            group.extend(tx.changes.iter().cloned());
            if (seq - cursor) as usize >= self.group_max || self.boundaries.contains(&seq) {
                break;
            }
        }
        if seq == cursor {
            return Ok(false);
        }
        let position = seq_position(seq);
        st.deliveries.push(position.clone());
        drop(st);
        self.cursor = Some(seq);
        // A re-copy requested in the stream runs from here on.
        for c in &group {
            if let Change::RecopyStart { table, .. } = c
                && !self.recopies.iter().any(|(t, _)| t.name == table.name)
            {
                self.recopies.push_back((table.clone(), None));
            }
        }
        if let Some(n) = self.partial_after {
            while group.len() > n {
                let rest = group.split_off(n);
                self.pending.push_back(SourceEvent::Partial {
                    position: position.clone(),
                    changes: std::mem::replace(&mut group, rest),
                });
            }
        }
        if group.is_empty() && self.empty_as_heartbeat {
            self.pending.push_back(SourceEvent::Heartbeat {
                position,
                time_micros: time,
            });
            return Ok(true);
        }
        self.pending.push_back(SourceEvent::Commit(Transaction {
            position,
            commit_time_micros: time,
            changes: group,
        }));
        Ok(true)
    }

    /// The next chunk of the first running re-copy, read at the newest
    /// transaction's position, if the stream has delivered up to it.
    fn recopy_chunk(&mut self) -> Option<SourceEvent> {
        let (table, after) = self.recopies.front()?.clone();
        let st = self.db.lock();
        let head = st.log.len() as i64;
        if self.cursor != Some(head) {
            return None;
        }
        let rows = super::db::read_rows(
            st.tables.get(&table.name),
            after.as_deref(),
            self.chunk_rows,
        );
        drop(st);
        let upper = (rows.len() == self.chunk_rows)
            .then(|| table.key_of(rows.last().expect("a full chunk")));
        match &upper {
            Some(k) => self.recopies[0].1 = Some(k.clone()),
            None => {
                self.recopies.pop_front();
            }
        }
        Some(SourceEvent::Commit(Transaction {
            position: seq_position(head),
            commit_time_micros: Some(super::now_micros()),
            changes: vec![Change::RecopyRows {
                table,
                range: KeyRange {
                    lower: after,
                    upper,
                },
                rows,
            }],
        }))
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn check(&mut self) -> Vec<CheckItem> {
        vec![CheckItem::ok("source: memory", "in-memory test database")]
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        Ok(self.tables.clone())
    }

    async fn prepare(&mut self) -> Result<()> {
        let mut st = self.db.lock();
        st.prepares += 1;
        st.installed = true;
        Ok(())
    }

    async fn snapshot(
        &mut self,
        requests: Vec<SnapshotRequest>,
    ) -> Result<Box<dyn SnapshotReader>> {
        let mut st = self.db.lock();
        let position = seq_position(st.log.len() as i64);
        st.snapshots.push(position.clone());
        let mut chunks = VecDeque::new();
        for r in requests {
            let empty = Rows::new();
            let rows = st.tables.get(&r.table.name).unwrap_or(&empty);
            let mut table = table_chunks(&r.table, rows, &r.skip, self.chunk_rows);
            if r.encoding.is_some() {
                if !self.encoded || r.encoding.as_deref() != Some(MEMORY_ROW_ENCODING) {
                    return Err(Error::fatal(format!(
                        "MemorySource: asked for encoding {:?}, which it did not offer",
                        r.encoding
                    )));
                }
                for c in &mut table {
                    let rows = std::mem::replace(&mut c.rows, ChunkRows::Values(Vec::new()));
                    let rows = rows.into_values();
                    c.rows = ChunkRows::Encoded(EncodedRows {
                        encoding: MEMORY_ROW_ENCODING.into(),
                        data: encode_rows(&rows),
                        rows: rows.len(),
                    });
                }
            }
            chunks.extend(table);
        }
        Ok(Box::new(MemorySnapshot { position, chunks }))
    }

    fn row_encoding(&self, _table: &TableRef) -> Option<String> {
        self.encoded.then(|| MEMORY_ROW_ENCODING.to_string())
    }

    async fn start_stream(
        &mut self,
        from: Option<&Position>,
        boundaries: &[Position],
    ) -> Result<()> {
        if self.cursor.is_some() {
            return Err(Error::fatal("MemorySource: start_stream() called twice"));
        }
        let head = self.db.lock().log.len() as i64;
        let from = match from {
            None => head,
            Some(p) => p.as_sqlite()?.seq,
        };
        if from > head {
            return Err(Error::fatal(format!(
                "MemorySource: stream requested from seq {from}, but the database ends at seq {head}"
            ))
            .with_fix("the checkpoint belongs to another database; reset the pipeline"));
        }
        let forgotten = self.db.lock().forgotten_through;
        if from < forgotten {
            return Err(Error::fatal(format!(
                "MemorySource: stream requested from seq {from}, but the log through seq {forgotten} is gone"
            )));
        }
        self.boundaries = boundaries
            .iter()
            .map(|b| b.as_sqlite().map(|p| p.seq))
            .collect::<Result<_, _>>()?;
        self.cursor = Some(from);
        Ok(())
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        let shared = self.db.shared.clone();
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            if let Some(ev) = self.recopy_chunk() {
                return Ok(ev);
            }
            // Registered before looking, so a commit right after the look
            // still wakes us.
            let changed = shared.changed.notified();
            if self.fill()? {
                continue;
            }
            if tokio::time::timeout(self.heartbeat_after, changed)
                .await
                .is_err()
            {
                let seq = self.cursor.expect("cursor set by fill");
                return Ok(SourceEvent::Heartbeat {
                    position: seq_position(seq),
                    time_micros: Some(super::now_micros()),
                });
            }
        }
    }

    async fn ack(&mut self, position: &Position) -> Result<()> {
        let seq = position.as_sqlite()?.seq;
        let delivered = self.cursor.unwrap_or(0);
        assert!(
            seq <= delivered,
            "MemorySource: ack of seq {seq}, but only up to seq {delivered} was delivered"
        );
        let mut st = self.db.lock();
        if let Some(last) = st.acks.last() {
            assert!(
                position >= last,
                "MemorySource: ack went backwards: {position} after {last}"
            );
        }
        st.acks.push(position.clone());
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        self.db.lock().installed = false;
        Ok(())
    }

    async fn continuity(&mut self, from: &Position) -> Result<Continuity> {
        let from = from.as_sqlite()?.seq;
        let forgotten = self.db.lock().forgotten_through;
        Ok(if from < forgotten {
            Continuity::Gap {
                reason: format!("the log through seq {forgotten} was forgotten"),
                resume: seq_position(forgotten),
            }
        } else {
            Continuity::Exact
        })
    }

    async fn recopy(&mut self, table: &TableRef, after: Option<Vec<Value>>) -> Result<()> {
        self.recopies.retain(|(t, _)| t.name != table.name);
        self.recopies.push_back((table.clone(), after));
        Ok(())
    }

    async fn request_recopy(&mut self, table: &ferry_core::TableName) -> Result<()> {
        let t = self
            .tables
            .iter()
            .find(|t| t.name == *table)
            .ok_or_else(|| Error::fatal(format!("MemorySource: no table {table}")))?;
        self.db.request_recopy(t);
        Ok(())
    }
}

/// A snapshot: the chunks were cut when it was opened.
struct MemorySnapshot {
    position: Position,
    chunks: VecDeque<SnapshotChunk>,
}

#[async_trait]
impl SnapshotReader for MemorySnapshot {
    fn position(&self) -> &Position {
        &self.position
    }

    async fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>> {
        Ok(self.chunks.pop_front())
    }
}

/// Cuts the rows of `table` outside `skip` into chunks, each reporting the
/// range it completes; the last one is `table_done`.
fn table_chunks(
    table: &TableRef,
    rows: &Rows,
    skip: &[KeyRange],
    chunk_rows: usize,
) -> Vec<SnapshotChunk> {
    let mut out = Vec::new();
    for gap in ferry_core::gaps(skip) {
        let mut lower = gap.lower.clone();
        let in_gap: Vec<(&Vec<Value>, &Vec<Value>)> =
            rows.iter().filter(|(k, _)| gap.contains(k)).collect();
        let mut parts = in_gap.chunks(chunk_rows).peekable();
        if parts.peek().is_none() {
            out.push(chunk(table, Vec::new(), gap.clone()));
            continue;
        }
        while let Some(part) = parts.next() {
            let upper = if parts.peek().is_some() {
                Some(part.last().expect("chunks are not empty").0.clone())
            } else {
                gap.upper.clone()
            };
            let range = KeyRange {
                lower: lower.clone(),
                upper: upper.clone(),
            };
            lower = upper;
            out.push(chunk(
                table,
                part.iter().map(|(_, r)| (*r).clone()).collect(),
                range,
            ));
        }
    }
    match out.last_mut() {
        Some(last) => last.table_done = true,
        None => {
            // Everything was skipped: one empty chunk (an empty range)
            // tells the pipeline the table is done.
            let mut c = chunk(
                table,
                Vec::new(),
                KeyRange {
                    lower: Some(Vec::new()),
                    upper: Some(Vec::new()),
                },
            );
            c.table_done = true;
            out.push(c);
        }
    }
    out
}

fn chunk(table: &TableRef, rows: Vec<Vec<Value>>, range: KeyRange) -> SnapshotChunk {
    SnapshotChunk {
        table: table.clone(),
        rows: ChunkRows::Values(rows),
        range,
        table_done: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doubles::conformance_table;
    use ferry_core::{Change, TableName};

    fn k(i: i64) -> Option<Vec<Value>> {
        Some(vec![Value::Int(i)])
    }

    fn r(lower: Option<Vec<Value>>, upper: Option<Vec<Value>>) -> KeyRange {
        KeyRange { lower, upper }
    }

    fn table() -> TableRef {
        conformance_table(TableName::bare("t"))
    }

    fn ins(id: i64) -> Change {
        Change::Insert {
            table: table(),
            row: vec![
                Value::Int(id),
                Value::Text("n".into()),
                Value::Int(id),
                Value::Null,
            ],
        }
    }

    fn seq_of(ev: &SourceEvent) -> (&'static str, i64, usize) {
        match ev {
            SourceEvent::Commit(t) => (
                "commit",
                t.position.as_sqlite().unwrap().seq,
                t.changes.len(),
            ),
            SourceEvent::Partial { position, changes } => {
                ("partial", position.as_sqlite().unwrap().seq, changes.len())
            }
            SourceEvent::Heartbeat { position, .. } => {
                ("heartbeat", position.as_sqlite().unwrap().seq, 0)
            }
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn streams_partials_heartbeats_and_new_commits() {
        let db = MemoryDb::new();
        db.commit(vec![ins(1)]);
        db.commit((2..=26).map(ins).collect());
        db.commit(vec![ins(30), ins(31)]);
        let mut src = MemorySource::new(db.clone(), vec![table()])
            .partial_after(10)
            .heartbeat_after(Duration::from_millis(20));
        src.start_stream(Some(&seq_position(0)), &[]).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(seq_of(&src.next().await.unwrap()));
        }
        assert_eq!(
            got,
            [
                ("commit", 1, 1),
                ("partial", 2, 10),
                ("partial", 2, 10),
                ("commit", 2, 5),
                ("commit", 3, 2),
                ("heartbeat", 3, 0),
            ]
        );
        let writer = {
            let db = db.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                db.commit(vec![ins(40)])
            })
        };
        let mut ev = src.next().await.unwrap();
        while matches!(ev, SourceEvent::Heartbeat { .. }) {
            ev = src.next().await.unwrap();
        }
        assert_eq!(seq_of(&ev), ("commit", 4, 1));
        assert_eq!(writer.await.unwrap(), seq_position(4));
        assert_eq!(
            db.deliveries(),
            (1..=4).map(seq_position).collect::<Vec<_>>()
        );
        src.ack(&seq_position(2)).await.unwrap();
        src.ack(&seq_position(4)).await.unwrap();
        assert_eq!(db.acks(), [seq_position(2), seq_position(4)]);
        db.fail_next_read(ferry_core::ErrorClass::Transient);
        let err = src.next().await.unwrap_err();
        assert_eq!(err.class(), ferry_core::ErrorClass::Transient);
    }

    #[tokio::test]
    #[should_panic(expected = "ack went backwards")]
    async fn acks_going_backwards_panic() {
        let db = MemoryDb::new();
        db.commit(vec![ins(1)]);
        db.commit(vec![ins(2)]);
        let mut src = MemorySource::new(db, vec![table()]);
        src.start_stream(None, &[]).await.unwrap();
        src.ack(&seq_position(2)).await.unwrap();
        let _ = src.ack(&seq_position(1)).await;
    }

    #[tokio::test]
    async fn groups_end_at_boundaries() {
        let db = MemoryDb::new();
        for i in 1..=5 {
            db.commit(vec![ins(i)]);
        }
        let mut src = MemorySource::new(db.clone(), vec![table()]).group_max(3);
        src.start_stream(Some(&seq_position(0)), &[seq_position(2)])
            .await
            .unwrap();
        let a = seq_of(&src.next().await.unwrap());
        let b = seq_of(&src.next().await.unwrap());
        assert_eq!([a, b], [("commit", 2, 2), ("commit", 5, 3)]);
        let mut late = MemorySource::new(db, vec![table()]);
        let err = late
            .start_stream(Some(&seq_position(9)), &[])
            .await
            .unwrap_err();
        assert_eq!(err.class(), ferry_core::ErrorClass::Fatal);
    }

    #[tokio::test]
    async fn snapshots_skip_copied_ranges_and_report_the_rest() {
        let db = MemoryDb::new();
        db.commit((1..=25).map(ins).collect());
        let mut src = MemorySource::new(db.clone(), vec![table()]).chunk_rows(10);
        let skip = vec![r(None, k(5)), r(k(12), k(15))];
        let mut reader = src
            .snapshot(vec![SnapshotRequest {
                table: table(),
                skip,
                encoding: None,
            }])
            .await
            .unwrap();
        assert_eq!(reader.position(), &seq_position(1));
        db.commit(vec![ins(100)]);
        let mut chunks = Vec::new();
        while let Some(c) = reader.next_chunk().await.unwrap() {
            let keys: Vec<Value> = c.rows.values().iter().map(|r| r[0].clone()).collect();
            chunks.push((keys.len(), keys.first().cloned(), c.range, c.table_done));
        }
        assert_eq!(
            chunks,
            [
                (7, Some(Value::Int(6)), r(k(5), k(12)), false),
                (10, Some(Value::Int(16)), r(k(15), None), true),
            ],
            "the row committed after the snapshot opened is not in it"
        );
        assert_eq!(db.snapshots(), [seq_position(1)]);
    }
}
