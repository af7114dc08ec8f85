//! Online re-copy chunks (see [`ferry_core::Source::recopy`]).
//!
//! A chunk is read on a connection of its own inside `START TRANSACTION
//! WITH CONSISTENT SNAPSHOT`, whose `Binlog_snapshot_position` is the
//! binlog position the rows belong to: every transaction that ends at or
//! before it is in them, none after. The stream hands the chunk on exactly
//! there — after the transaction that ends at that position, before the
//! first that ends past it — so the target replaces the chunk's key range
//! with rows of the right moment. Nothing is written to the source and no
//! lock is taken.
//!
//! Until a re-copy from the table's start has handed on its first chunk,
//! the stream drops the table's row events: each range is replaced later
//! by a chunk read after them, and events older than a structure change
//! the stream could not follow need not be decoded at all.

use std::collections::VecDeque;

use ferry_core::{Error, KeyRange, MySqlPosition, Result, TableRef, Value};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::catalog::MyTable;
use crate::connection::{Endpoint, quote_ident};
use crate::error::my_error;
use crate::reader::decode_row;
use crate::sql::{column_list, key_compare, order_by_key};

/// Rows per chunk when the pipeline sets no chunk size.
const DEFAULT_CHUNK_ROWS: usize = 10_000;

pub(crate) struct Job {
    pub table: MyTable,
    /// The next chunk starts after this key (`None`: the table's start).
    after: Option<Vec<Value>>,
    /// The key the re-copy started after; rows above it are re-copied.
    pub floor: Option<Vec<Value>>,
    /// The first chunk was handed on.
    pub started: bool,
}

/// A chunk read, waiting for the stream to reach its position.
pub(crate) struct Chunk {
    pub at: MySqlPosition,
    pub table: TableRef,
    pub range: KeyRange,
    pub rows: Vec<Vec<Value>>,
}

pub(crate) struct Recopies {
    endpoint: Endpoint,
    conn: Option<Conn>,
    jobs: VecDeque<Job>,
    chunk_rows: usize,
}

impl Recopies {
    pub(crate) fn new(endpoint: Endpoint, chunk_rows: Option<usize>) -> Recopies {
        Recopies {
            endpoint,
            conn: None,
            jobs: VecDeque::new(),
            chunk_rows: chunk_rows.unwrap_or(DEFAULT_CHUNK_ROWS).max(1),
        }
    }

    /// Starts (or restarts) the re-copy of `table` after key `after`.
    pub(crate) fn start(&mut self, table: MyTable, after: Option<Vec<Value>>) {
        self.jobs.retain(|j| j.table.table.name != table.table.name);
        self.jobs.push_back(Job {
            table,
            floor: after.clone(),
            after,
            started: false,
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The running re-copy of `table`, if any.
    pub(crate) fn job(&self, table: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.table.table.name.name == table)
    }

    /// A table's structure changed in the stream: its re-copy reads the
    /// new columns from here on.
    pub(crate) fn restructure(&mut self, table: &MyTable) {
        for job in self.jobs.iter_mut() {
            if job.table.table.name == table.table.name {
                job.table = table.clone();
            }
        }
    }

    /// Reads the next chunk of the oldest re-copy at a position of its own.
    pub(crate) async fn read(&mut self) -> Result<Option<Chunk>> {
        let Some(job) = self.jobs.front() else {
            return Ok(None);
        };
        if self.conn.is_none() {
            self.conn = Some(self.endpoint.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let schema = &job.table.table;
        let doing = format!("re-copying table {}", schema.name);
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(|e| my_error(e, &doing))?;
        let at = snapshot_position(conn).await?;
        let mut params = Vec::new();
        let (filter, order, limit) = if schema.is_keyless() {
            (String::new(), String::new(), String::new())
        } else {
            let filter = job
                .after
                .as_ref()
                .map(|after| format!("WHERE {}", key_compare(schema, after, true, &mut params)))
                .unwrap_or_default();
            (
                filter,
                order_by_key(schema),
                format!("LIMIT {}", self.chunk_rows),
            )
        };
        let sql = format!(
            "SELECT {} FROM {} {filter} {order} {limit}",
            column_list(schema),
            quote_ident(&schema.name.name)
        );
        let rows: Vec<mysql_async::Row> = conn
            .exec(sql.as_str(), params)
            .await
            .map_err(|e| my_error(e, &doing).with("statement", sql.clone()))?;
        conn.query_drop("COMMIT")
            .await
            .map_err(|e| my_error(e, &doing))?;
        let rows = rows
            .into_iter()
            .map(|r| decode_row(schema, &job.table.decode, r))
            .collect::<Result<Vec<_>>>()?;
        let last = schema.is_keyless() || rows.len() < self.chunk_rows;
        let upper = match rows.last() {
            Some(row) if !last => Some(schema.key_of(row)),
            _ => None,
        };
        let range = KeyRange {
            lower: job.after.clone(),
            upper: upper.clone(),
        };
        let table = TableRef::clone(schema);
        let job = self.jobs.front_mut().expect("looked at above");
        job.started = true;
        if last {
            self.jobs.pop_front();
        } else {
            job.after = upper;
        }
        Ok(Some(Chunk {
            at,
            table,
            range,
            rows,
        }))
    }
}

/// The binlog position the open consistent snapshot belongs to.
pub(crate) async fn snapshot_position(conn: &mut Conn) -> Result<MySqlPosition> {
    let rows: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(|e| my_error(e, "reading the snapshot's binlog position"))?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    match (get("Binlog_snapshot_file"), get("Binlog_snapshot_position")) {
        (Some(file), Some(offset)) => Ok(MySqlPosition {
            file,
            offset: offset
                .parse()
                .map_err(|_| Error::fatal(format!("the server's snapshot position {offset:?}")))?,
        }),
        _ => Err(Error::fatal(
            "the source reports no binlog position for a consistent snapshot: binary logging \
             is off, or the server is not MariaDB (MySQL lacks Binlog_snapshot_position)",
        )
        .with_fix("start the server with log_bin and binlog_format=ROW")),
    }
}
