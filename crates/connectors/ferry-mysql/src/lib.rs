//! MySQL/MariaDB connector for ferry.
//!
//! * [`MySqlSource`]: a consistent snapshot with the binlog position that
//!   belongs to it, then change capture from the row-based binlog.
//! * [`MySqlSink`]: structure copy, snapshot load, batched change apply,
//!   and the checkpoint in the same transaction.
//!
//! Tested against MariaDB 10.11 (the protocol MySQL and MariaDB share, and
//! MariaDB's own binlog events). No driver type appears in the public API:
//! configuration is plain data, errors are [`ferry_core::Error`]s.

mod catalog;
mod check;
mod connection;
mod digest;
mod error;
mod position;
mod reader;
mod recopy;
mod sink;
mod snapshot;
mod source;
mod sql;
mod stream;
mod types;

pub use connection::{Endpoint, quote_ident, quote_literal};
pub use reader::MySqlReader;
pub use sink::{MySqlSink, MySqlSinkConfig};
pub use source::{MySqlSource, MySqlSourceConfig};
