//! PostgreSQL connector for ferry.
//!
//! * [`PostgresSource`]: a consistent parallel snapshot inside a snapshot
//!   exported by the replication slot, then change capture with `pgoutput`
//!   over the streaming replication protocol.
//! * [`PostgresSink`]: structure copy, snapshot load through binary `COPY`,
//!   batched change apply, and the checkpoint in the same transaction.
//!
//! No driver type appears in the public API: configuration is plain data,
//! errors are [`ferry_core::Error`]s.

mod apply;
mod bad_value;
mod binary;
mod catalog;
mod check;
mod checkpoint;
mod connection;
mod copy;
mod ddl;
mod error;
mod fence;
mod names;
mod numeric;
mod origin;
mod pgoutput;
mod position;
mod probe;
mod publication;
mod reader;
mod recopy;
mod repair;
mod replication;
mod shape;
mod sink;
mod snapshot;
mod source;
mod stream;
mod structure;
mod target;
mod types;
mod writer;

pub use checkpoint::CHECKPOINT_TABLE;
pub use names::slot_name;
pub use origin::CONFLICTS_TABLE;
pub use probe::PgProbe;
pub use sink::{PostgresSink, PostgresSinkConfig};
pub use source::{PostgresSource, PostgresSourceConfig};
