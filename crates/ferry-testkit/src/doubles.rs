//! In-memory, recording and fault-injecting doubles of the `ferry-core`
//! ports, and the conformance suite every [`Sink`](ferry_core::Sink) runs.
//!
//! * [`MemoryDb`]: a shared in-memory source database. Tests commit
//!   transactions to it ([`MemoryDb::commit`]); each gets the next
//!   [`SqlitePosition`].
//! * [`MemorySource`]: a [`Source`](ferry_core::Source) reading a
//!   `MemoryDb`: consistent chunked snapshots honouring skip ranges, a
//!   stream of the transactions after a position (optionally split into
//!   `Partial`s or grouped like the SQLite source), heartbeats when idle,
//!   acks checked to never go backwards.
//! * [`MemorySink`]: a [`Sink`](ferry_core::Sink) +
//!   [`CheckpointStore`](ferry_core::CheckpointStore) +
//!   [`TableReader`](ferry_core::TableReader) with real transactions:
//!   staged writes, row locks (a writer touching a row another open
//!   transaction wrote waits, as in PostgreSQL), atomic commit of data and
//!   checkpoint records, and an observer called at every commit.
//! * [`RecordingSink`]: records every call with a summary of its arguments.
//! * [`FaultySink`]: fails or holds the Nth call of an operation, or fails a
//!   commit after it committed (an ambiguous commit).
//! * [`sink_conformance`]: the `Sink` contract as one test, run against
//!   every sink (the in-memory one included); [`keyless_conformance`]: the
//!   same for tables without a key, run against every database sink.
//! * [`fence_conformance`]: one runner per pipeline ([`Sink::fence`]).
//! * [`checkpoint_store_conformance`]: the `CheckpointStore` contract
//!   (records committed with the data, rollbacks, upserts by scope, `clear`,
//!   one pipeline's records independent of another's), run by every sink.
//! * [`source_conformance`]: the `Source` contract as one test, run
//!   against every source through a [`SourceDriver`] (how to open it and
//!   write to its database).
//!
//! [`Sink::fence`]: ferry_core::Sink::fence
//!
//! The doubles panic on misuse by *test code* (committing an update of a
//! missing row to a `MemoryDb`, an ack going backwards) and return
//! classified errors for what the code under test could cause.

mod checkpoint_conformance;
mod conformance;
mod db;
mod faulty;
mod fence;
mod recording;
mod sink;
mod source;
mod source_conformance;

pub use checkpoint_conformance::checkpoint_store_conformance;
pub use conformance::{
    conformance_table, keyless_conformance, sink_conformance, sink_conformance_with,
};
pub use db::{DbView, LoggedTransaction, MemoryDb};
pub use faulty::{FaultySink, SinkOp};
pub use fence::fence_conformance;
pub use recording::{OpsSummary, Recorded, RecordedTxn, RecordingSink, SinkCall, StepSummary};
pub use sink::{CommitView, MemorySink};
pub use source::MemorySource;
pub use source_conformance::{
    SOURCE_CONFORMANCE_DDL, SourceDriver, SourceWrite, source_conformance,
    source_conformance_tables, transaction_sql,
};

/// The row encoding [`MemorySource::row_encoding`] and
/// [`MemorySink::accept_encoded_rows`] share: each row as one array item of
/// `ferry_core::codec`.
pub const MEMORY_ROW_ENCODING: &str = "memory-rows(codec)";

/// Rows in [`MEMORY_ROW_ENCODING`].
pub fn encode_rows(rows: &[Vec<ferry_core::Value>]) -> Vec<u8> {
    let items: Vec<ferry_core::Value> = rows
        .iter()
        .map(|r| ferry_core::Value::Array(r.clone()))
        .collect();
    ferry_core::codec::encode_values(&items).into_bytes()
}

/// Rows back from [`MEMORY_ROW_ENCODING`].
pub fn decode_rows(data: &[u8]) -> ferry_core::Result<Vec<Vec<ferry_core::Value>>> {
    let bad = || ferry_core::Error::fatal("malformed memory-encoded rows");
    let text = std::str::from_utf8(data).map_err(|_| bad())?;
    ferry_core::codec::decode_values(text)
        .ok_or_else(bad)?
        .into_iter()
        .map(|v| match v {
            ferry_core::Value::Array(row) => Ok(row),
            _ => Err(bad()),
        })
        .collect()
}

use ferry_core::{Position, SqlitePosition};

/// The position of sequence number `seq` of a [`MemoryDb`].
pub fn seq_position(seq: i64) -> Position {
    Position::Sqlite(SqlitePosition { seq })
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Writes the non-[`Unchanged`](ferry_core::Value::Unchanged) values of
/// `update` over `base`.
fn overlay(base: &mut [ferry_core::Value], update: &[ferry_core::Value]) {
    for (slot, v) in base.iter_mut().zip(update) {
        if !matches!(v, ferry_core::Value::Unchanged) {
            *slot = v.clone();
        }
    }
}

fn has_unchanged(row: &[ferry_core::Value]) -> bool {
    row.iter()
        .any(|v| matches!(v, ferry_core::Value::Unchanged))
}
