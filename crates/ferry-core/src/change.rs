//! Changes and the source transactions that group them.

use crate::checkpoint::KeyRange;
use crate::position::Position;
use crate::schema::{Alteration, TableName, TableRef};
use crate::value::Value;

/// One row-level or structural change, as captured at the source.
///
/// Row images are full-width (aligned with `table.columns`); a column the
/// source did not send is [`Value::Unchanged`].
#[derive(Debug, Clone)]
pub enum Change {
    Insert {
        table: TableRef,
        row: Vec<Value>,
    },
    Update {
        table: TableRef,
        /// Before-image when the source has one. Required when the key
        /// changed; its key columns identify the row to change.
        before: Option<Vec<Value>>,
        after: Vec<Value>,
    },
    Delete {
        table: TableRef,
        /// Before-image; at least the key columns are set.
        before: Vec<Value>,
    },
    /// All rows of these tables removed.
    Truncate {
        tables: Vec<TableRef>,
    },
    /// The table's structure changed; changes after this one use `table`.
    /// Columns are matched by name, except those `alter` says were renamed.
    Schema {
        table: TableRef,
        alter: Alteration,
    },
    /// Online re-copy (see [`Source::recopy`](crate::Source::recopy)): from
    /// this transaction on, the source re-copies `table` while the stream
    /// flows, in [`Change::RecopyRows`] chunks. Writes nothing itself; the
    /// pipeline records it with this transaction, so a restart continues the
    /// re-copy however early it stops.
    RecopyStart {
        table: TableRef,
        reason: String,
    },
    /// Online re-copy: every row of `table` whose key is in `range`, exactly
    /// as the source holds them at this transaction's position (no
    /// transaction before it missing, none after it included). The target
    /// makes its rows in `range` exactly these. A range without an upper
    /// bound is the re-copy's last chunk. For a table without a key the
    /// range is the whole table.
    RecopyRows {
        table: TableRef,
        range: KeyRange,
        rows: Vec<Vec<Value>>,
    },
}

impl Change {
    /// The table a row change touches (`None` for truncate).
    pub fn table(&self) -> Option<&TableRef> {
        match self {
            Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. }
            | Change::Schema { table, .. }
            | Change::RecopyStart { table, .. }
            | Change::RecopyRows { table, .. } => Some(table),
            Change::Truncate { .. } => None,
        }
    }

    /// Names of every table this change touches.
    pub fn table_names(&self) -> Vec<&TableName> {
        match self {
            Change::Truncate { tables } => tables.iter().map(|t| &t.name).collect(),
            other => other.table().map(|t| vec![&t.name]).unwrap_or_default(),
        }
    }

    /// Key of the row this change leaves behind (the new key for updates).
    pub fn key(&self) -> Option<Vec<Value>> {
        match self {
            Change::Insert { table, row } => Some(table.key_of(row)),
            Change::Update { table, after, .. } => Some(table.key_of(after)),
            Change::Delete { table, before } => Some(table.key_of(before)),
            _ => None,
        }
    }

    /// Key the row had before this change, when it differs from [`Change::key`].
    pub fn old_key(&self) -> Option<Vec<Value>> {
        match self {
            Change::Update {
                table,
                before: Some(before),
                after,
            } => {
                let old = table.key_of(before);
                (old != table.key_of(after)).then_some(old)
            }
            _ => None,
        }
    }

    pub fn is_ddl(&self) -> bool {
        matches!(self, Change::Schema { .. })
    }

    /// A change of the online re-copy ([`Change::RecopyStart`],
    /// [`Change::RecopyRows`]) rather than of the source's data.
    pub fn is_recopy(&self) -> bool {
        matches!(self, Change::RecopyStart { .. } | Change::RecopyRows { .. })
    }

    pub fn approx_size(&self) -> usize {
        // A row image is its own allocation: header, values, allocator slack.
        let row = |r: &[Value]| 40 + r.iter().map(Value::approx_size).sum::<usize>();
        std::mem::size_of::<Change>()
            + match self {
                Change::Insert { row: r, .. } => row(r),
                Change::Update { before, after, .. } => {
                    row(after) + before.as_deref().map_or(0, row)
                }
                Change::Delete { before, .. } => row(before),
                Change::Truncate { tables } => 8 * tables.len(),
                Change::Schema { .. } | Change::RecopyStart { .. } => 256,
                Change::RecopyRows { rows, .. } => rows.iter().map(|r| row(r)).sum(),
            }
    }
}

/// A committed source transaction, or a group of consecutive whole source
/// transactions that the source cannot tell apart (see the SQLite source).
///
/// Applying it must be atomic on the target.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Position to resume *after*: once this transaction is durable on the
    /// target, the source never needs to send it again.
    pub position: Position,
    /// Commit time at the source, microseconds since the Unix epoch, if known.
    pub commit_time_micros: Option<i64>,
    pub changes: Vec<Change>,
}

impl Transaction {
    pub fn approx_size(&self) -> usize {
        64 + self.changes.iter().map(Change::approx_size).sum::<usize>()
    }
}

/// What a source hands to the pipeline.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// A whole committed transaction.
    Commit(Transaction),
    /// The leading part of a transaction too large to hold in memory; more
    /// `Partial` events and then one `Commit` (its tail) follow, with nothing
    /// of any other transaction in between. `position` orders like the
    /// position the closing `Commit` will carry against every other
    /// position (the SQLite group's last sequence number, equal to it;
    /// PostgreSQL's `(commit_lsn, commit_lsn + 1)`, the commit record's end
    /// not being known yet); the pipeline relies only on that ordering.
    Partial {
        position: Position,
        changes: Vec<Change>,
    },
    /// The source is idle or wrote only outside the pipeline's tables: every
    /// transaction up to `position` has been delivered. Lets the pipeline
    /// advance the checkpoint and bounds the wait of consistent readers.
    Heartbeat {
        position: Position,
        time_micros: Option<i64>,
    },
}
