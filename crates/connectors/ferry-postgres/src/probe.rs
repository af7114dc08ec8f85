//! Position probes for consistent readers (`ferry gateway`).
//!
//! A reader that must see every transaction committed before it arrived
//! asks the source for a position, then waits until its replica has
//! applied past it. On PostgreSQL one statement does both jobs:
//! `pg_logical_emit_message(true, …)` returns the LSN of a message it
//! writes into the WAL, and, being transactional, its commit flushes the
//! WAL, so the message comes back through the logical stream within a
//! millisecond even when the server is otherwise idle (a
//! non-transactional message waits for the WAL writer, up to
//! `wal_writer_delay`). The stream turns the message's empty transaction
//! into a heartbeat, which advances the replica's applied position past
//! the returned LSN.
//!
//! Positions are only comparable within one history of one cluster: the
//! [`epoch`](PgProbe::epoch) names that history (system identifier and
//! timeline), so that tokens from before a failover or a re-initialised
//! server are never compared with positions after it.

use ferry_core::{Error, Lsn, PgPosition, Position, Result};
use tokio_postgres::{Client, Statement};

use crate::connection::Endpoint;
use crate::error::pg_error;

/// Prefix of the probe's messages. Not one of the pipeline's own
/// prefixes, so the stream treats the message's transaction as empty.
const PROBE_PREFIX: &str = "ferry_gateway";

/// One SQL connection that asks the source for its current position.
pub struct PgProbe {
    client: Client,
    /// Prepared once: each lookup is then one round trip, not two.
    mark: Statement,
    epoch: String,
}

impl std::fmt::Debug for PgProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgProbe")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl PgProbe {
    /// Connects to the server of `url` and reads its epoch.
    pub async fn connect(url: &str) -> Result<PgProbe> {
        let endpoint = Endpoint::parse(url, "source")?;
        let client = endpoint.connect().await?;
        let row = client
            .query_one(
                "SELECT s.system_identifier::text, c.timeline_id::int8 \
                 FROM pg_control_system() s, pg_control_checkpoint() c",
                &[],
            )
            .await
            .map_err(|e| pg_error(e, "reading the server's system identifier and timeline"))?;
        let system: String = row.get(0);
        let timeline: i64 = row.get(1);
        let mark = client
            .prepare(&format!(
                "SELECT pg_logical_emit_message(true, '{PROBE_PREFIX}', '')::text"
            ))
            .await
            .map_err(|e| pg_error(e, "preparing the position lookup"))?;
        Ok(PgProbe {
            client,
            mark,
            epoch: format!("pg.{system}.{timeline}"),
        })
    }

    /// The history positions belong to: `pg.<system identifier>.<timeline>`.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Whether the connection is gone (the next call would fail).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Writes a marker into the WAL and returns its position: every
    /// transaction that committed before this call has a commit record
    /// starting before it, and the marker's own transaction comes back
    /// through the stream once flushed.
    pub async fn mark(&self) -> Result<Position> {
        let row = self
            .client
            .query_one(&self.mark, &[])
            .await
            .map_err(|e| pg_error(e, "asking the source for its current position"))?;
        let lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::fatal(format!("the server's WAL position: {e}")))?;
        Ok(Position::Postgres(PgPosition {
            commit_lsn: lsn,
            lsn,
        }))
    }

    /// The current WAL position without writing anything (`ferry position`:
    /// a writer's token after its commit).
    pub async fn current(&self) -> Result<Position> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| pg_error(e, "reading the current WAL position"))?;
        let lsn: Lsn = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| Error::fatal(format!("the server's WAL position: {e}")))?;
        Ok(Position::Postgres(PgPosition {
            commit_lsn: lsn,
            lsn,
        }))
    }
}
