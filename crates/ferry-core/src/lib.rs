//! Ferry's core: the data model every part shares, typed replication
//! positions, the `Source` / `Sink` / `CheckpointStore` contracts and the
//! error classes. No I/O and no database drivers live here.

pub mod batch;
pub mod canonical;
pub mod change;
pub mod check;
pub mod checkpoint;
pub mod codec;
pub mod conflict;
pub mod error;
pub mod failpoint;
pub mod piece;
pub mod position;
pub mod reader;
pub mod repair;
pub mod schema;
pub mod selection;
pub mod shape;
pub mod sink;
pub mod source;
pub mod time;
pub mod url;
pub mod value;

pub use batch::{KeylessOp, RowOp, Step, TableOps};
pub use change::{Change, SourceEvent, Transaction};
pub use check::{CheckItem, CheckStatus};
pub use checkpoint::{
    Checkpoint, CheckpointRecord, CopiedRange, KeyRange, RecopyProgress, TableProgress, gaps,
};
pub use conflict::{ActiveActive, ConflictPolicy};
pub use error::{
    Action, Error, ErrorClass, Level, MAX_BACKOFF, Result, RetryBudget, backoff, policy,
};
pub use position::{Lsn, MySqlPosition, PgPosition, Position, PositionError, SqlitePosition};
pub use reader::{DeclaredShape, RangeDigest, TableReader};
pub use repair::{RepairSql, render_repair};
pub use schema::{Alteration, Column, TableName, TableRef, TableSchema, UserType, UserTypeDef};
pub use selection::Selection;
pub use shape::{SequenceValue, ShapeItem, TableShape};
pub use sink::{CheckpointStore, Sink, SinkInfo, SinkWriter};
pub use source::{
    ChunkRows, Continuity, EncodedRows, SnapshotChunk, SnapshotReader, SnapshotRequest, Source,
};
pub use value::{ColumnType, Value, display_key, display_key_of};
