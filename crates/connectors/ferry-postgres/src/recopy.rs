//! Online re-copy chunks (see [`ferry_core::Source::recopy`]).
//!
//! A chunk is read in one short transaction on the source's SQL session:
//!
//! ```sql
//! BEGIN; SET LOCAL lock_timeout = ...; LOCK TABLE t IN SHARE MODE;
//! COPY (SELECT ... WHERE key > $after ORDER BY key LIMIT n) TO STDOUT;
//! SELECT pg_logical_emit_message(true, 'ferry_<pipeline>.chunk', '<id>');
//! COMMIT;
//! ```
//!
//! `SHARE` mode waits until every transaction writing the table has ended
//! (committed and visible) and keeps new writers out until the commit, so
//! the rows read are exactly the table's state at the message's commit:
//! every transaction committed before it is in them, none after. The
//! stream delivers the rows at that commit ([`crate::stream`]), and the
//! target replaces the chunk's key range with them in stream order.
//! Writers of the table wait for the read (milliseconds per chunk); a
//! writer holding the table longer than the lock timeout makes ferry give
//! way and try again a little later, so an application is never blocked
//! for long. Structure changes wait too, so the table's structure while
//! the rows are read is the one the stream has at the marker.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_core::{Error, KeyRange, Result, TableRef, Value};
use tokio_postgres::Client;

use crate::catalog::{self, PgTable};
use crate::error::pg_error;
use crate::pgoutput::{RelColumn, Relation};
use crate::reader::{copy_out_rows, read_columns, select_range};
use crate::stream::{PendingChunk, chunk_prefix};
use crate::types::{Kind, TypeCache};

/// Rows per chunk when the pipeline sets no `snapshot.chunk_rows`.
const DEFAULT_CHUNK_ROWS: usize = 10_000;
/// How long a chunk read waits for the table's writers.
const LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest pause before trying a chunk again after giving way to writers.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Job {
    table: TableRef,
    pg: PgTable,
    after: Option<Vec<Value>>,
}

/// The re-copies a source runs, one chunk at a time, oldest first.
pub(crate) struct Recopies {
    jobs: VecDeque<Job>,
    chunk_rows: usize,
    chunks: u64,
    /// Gave way to writers: no read before this.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Recopies {
    pub(crate) fn new(chunk_rows: Option<usize>) -> Self {
        Recopies {
            jobs: VecDeque::new(),
            chunk_rows: chunk_rows.unwrap_or(DEFAULT_CHUNK_ROWS).max(1),
            chunks: 0,
            retry_at: None,
            backoff: Duration::from_millis(100),
        }
    }

    /// Starts (or restarts) the re-copy of `table` after key `after`.
    /// `listed`: the table as `tables()` described it.
    pub(crate) fn start(
        &mut self,
        listed: Option<&(TableRef, PgTable)>,
        table: &TableRef,
        after: Option<Vec<Value>>,
    ) -> Result<()> {
        let (_, pg) = listed.ok_or_else(|| {
            Error::fatal(format!(
                "cannot re-copy table {}: the source did not list it",
                table.name
            ))
        })?;
        self.jobs.retain(|j| j.table.name != table.name);
        self.jobs.push_back(Job {
            table: table.clone(),
            pg: pg.clone(),
            after,
        });
        Ok(())
    }

    /// Reads the next chunk of the oldest re-copy, if one runs and the
    /// table's writers let it.
    pub(crate) async fn read_chunk(
        &mut self,
        client: &Client,
        types: &mut TypeCache,
        slot: &str,
    ) -> Result<Option<PendingChunk>> {
        if self.jobs.is_empty() || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(None);
        }
        let result = self.read_locked(client, types, slot).await;
        if result.is_err() || matches!(result, Ok(None)) {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result
    }

    async fn read_locked(
        &mut self,
        client: &Client,
        types: &mut TypeCache,
        slot: &str,
    ) -> Result<Option<PendingChunk>> {
        let job = self.jobs.front().expect("checked by read_chunk");
        let name = job.table.name.clone();
        let lock = format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; LOCK TABLE {} IN SHARE MODE",
            LOCK_TIMEOUT.as_millis(),
            job.pg.qualified()
        );
        if let Err(e) = client.batch_execute(&lock).await {
            let code = e.code().map(|c| c.code().to_owned());
            if code.as_deref() == Some("55P03") {
                // Writers hold the table: give way, try again later.
                tracing::debug!(table = %name, backoff = ?self.backoff,
                    "re-copy chunk waits for the table's writers");
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                return Ok(None);
            }
            let err = pg_error(e, &format!("locking {name} to read a re-copy chunk"));
            return Err(if code.as_deref() == Some("42501") {
                err.with_fix(format!(
                    "an online re-copy reads {name} under a SHARE lock, which needs ferry's user \
                     to own the table or hold UPDATE, DELETE or TRUNCATE on it: \
                     GRANT UPDATE ON {name} TO <ferry's user>"
                ))
            } else {
                err
            });
        }
        self.retry_at = None;
        self.backoff = Duration::from_millis(100);
        // The structure now, which no change can alter until the commit.
        let Some(pg) = catalog::describe(client, types, &job.pg.schema, &job.pg.name).await? else {
            tracing::warn!(table = %name, "table was dropped on the source: its re-copy ends");
            self.jobs.pop_front();
            return Ok(None);
        };
        let table = catalog::source_schema(&pg)?;
        let cols = read_columns(&pg, &table)?;
        let kinds: Vec<Kind> = cols.iter().map(|c| c.kind.clone()).collect();
        let after = job.after.clone();
        let sql = if table.is_keyless() {
            format!(
                "SELECT {} FROM {}",
                crate::reader::column_list(&cols),
                pg.qualified()
            )
        } else {
            let key_cols: Vec<_> = table.key.iter().map(|&k| cols[k].clone()).collect();
            let range = KeyRange {
                lower: after.clone(),
                upper: None,
            };
            format!(
                "{} LIMIT {}",
                select_range(&pg.qualified(), &cols, &key_cols, &range)?,
                self.chunk_rows
            )
        };
        let mut rows = Vec::new();
        copy_out_rows(client, &sql, &kinds, |r| {
            rows.push(r);
            Ok(())
        })
        .await?;
        self.chunks += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Unique across runs: a marker an earlier run wrote must never
        // match this chunk.
        let id = format!("{}-{nanos}-{}", std::process::id(), self.chunks);
        client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&chunk_prefix(slot), &id],
            )
            .await
            .map_err(|e| pg_error(e, "writing a re-copy chunk marker"))?;
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg_error(e, "committing a re-copy chunk read"))?;
        let last = table.is_keyless() || rows.len() < self.chunk_rows;
        let upper = if last {
            None
        } else {
            rows.last().map(|r| table.key_of(r))
        };
        match &upper {
            Some(k) => self.jobs[0].after = Some(k.clone()),
            None => {
                self.jobs.pop_front();
            }
        }
        tracing::debug!(table = %name, rows = rows.len(), last, "re-copy chunk read");
        Ok(Some(PendingChunk {
            id,
            relation: relation_of(&pg, &table),
            range: KeyRange {
                lower: if table.is_keyless() { None } else { after },
                upper,
            },
            rows,
        }))
    }
}

/// The table as a pgoutput relation message would describe it.
fn relation_of(pg: &PgTable, table: &TableRef) -> Relation {
    Relation {
        oid: pg.oid,
        namespace: pg.schema.clone(),
        name: pg.name.clone(),
        columns: pg
            .columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| RelColumn {
                key: table
                    .column_index(&c.name)
                    .is_some_and(|i| table.is_key_column(i)),
                name: c.name.clone(),
                type_oid: c.type_oid,
                typmod: c.typmod,
            })
            .collect(),
    }
}
