//! Fencing a pipeline with session advisory locks: one on the source
//! (`PostgresSource`, key `ferry_<pipeline>`), one on the target
//! (`PostgresSink::fence`, key `ferry_target_<pipeline>`).
//!
//! A session lock lives as long as its connection, so a runner that is
//! killed loses it as soon as the server notices the session is gone. That
//! can take a moment after `kill -9` (the server ends the backend when it
//! reads the closed socket), so a refused lock is tried again for up to
//! [`PATIENCE`] before it counts as held by a live runner.

use std::time::Duration;

use ferry_core::Result;
use tokio_postgres::Client;

use crate::error::pg_error;

/// How long a lock held by someone else is waited for.
const PATIENCE: Duration = Duration::from_secs(5);
const PAUSE: Duration = Duration::from_millis(100);

/// The lock every writer of a pipeline holds shared while its session may
/// write: the fence's session is not the writers', and a killed runner's
/// sessions end one by one — a writer's `COMMIT` the server already read
/// still commits after the fence's session has gone. A runner that takes
/// the fence therefore waits to take this one exclusively (every earlier
/// writer's last statement has ended) before it reads the checkpoint.
fn writers_key(pipeline: &str) -> String {
    format!("ferry_writers_{pipeline}")
}

/// How long an earlier runner's writer may take to end its last statement.
const DRAIN: Duration = Duration::from_secs(60);

/// Holds the pipeline's writer lock, shared, on a writer's session.
pub(crate) async fn hold_writer_lock(client: &Client, pipeline: &str) -> Result<()> {
    client
        .query_one(
            "SELECT pg_advisory_lock_shared(hashtext($1)::int8)",
            &[&writers_key(pipeline)],
        )
        .await
        .map_err(|e| pg_error(e, "taking a writer's lock on the target"))?;
    Ok(())
}

/// Waits until no session holds the pipeline's writer lock.
pub(crate) async fn drain_writers(client: &Client, pipeline: &str) -> Result<()> {
    let key = writers_key(pipeline);
    let deadline = tokio::time::Instant::now() + DRAIN;
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1)::int8)", &[&key])
            .await
            .map_err(|e| pg_error(e, "waiting for an earlier runner's writers to end"))?
            .get(0);
        if got {
            client
                .query_one("SELECT pg_advisory_unlock(hashtext($1)::int8)", &[&key])
                .await
                .map_err(|e| pg_error(e, "releasing the writers' lock"))?;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ferry_core::Error::transient(format!(
                "a writer session of an earlier run of pipeline {pipeline:?} is still open \
                 after {} s",
                DRAIN.as_secs()
            )));
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// How taking a lock ended.
pub(crate) enum Lock {
    Taken,
    /// Still held after [`PATIENCE`], by the session with this PID (if the
    /// server shows it).
    HeldBy(Option<i32>),
}

impl Lock {
    /// The holder's PID for a message, `?` when unknown.
    pub fn holder(pid: Option<i32>) -> String {
        pid.map_or("?".into(), |p| p.to_string())
    }
}

/// Takes the session advisory lock named `key` on `client`'s session,
/// waiting up to [`PATIENCE`] for another holder to go. `what` names the
/// lock in log lines and errors.
pub(crate) async fn lock(client: &Client, key: &str, what: &str) -> Result<Lock> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut waited = false;
    loop {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1)::int8)", &[&key])
            .await
            .map_err(|e| pg_error(e, &format!("taking {what}")))?
            .get(0);
        if got {
            return Ok(Lock::Taken);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Lock::HeldBy(holder(client, key).await));
        }
        if !waited {
            waited = true;
            tracing::info!(lock = %key, "waiting for another session to release {what}");
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// The PID of the session holding advisory lock `key` in this database.
async fn holder(client: &Client, key: &str) -> Option<i32> {
    client
        .query_one(
            "SELECT (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND objsubid = 1 AND objid = (hashtext($1)::int8 & 4294967295)::oid LIMIT 1)",
            &[&key],
        )
        .await
        .ok()
        .and_then(|r| r.get(0))
}
