//! One runner per pipeline and target: a named user lock
//! (`GET_LOCK('ferry:<pipeline>:<database>')`) on a connection the sink
//! keeps open for its lifetime. A user lock belongs to its session, so a
//! killed runner's lock goes as soon as the server notices the session is
//! gone; a second runner waits [`PATIENCE`] for that before it is refused.
//!
//! The lock's session is not the writers' sessions, and a killed runner's
//! sessions end one by one: a writer's `COMMIT` already read by the server
//! still commits after the lock's session has gone. So each writer holds a
//! lock of its own (one of [`WRITER_SLOTS`]), and a runner that takes the
//! pipeline's lock then waits for every writer lock to be free — that is,
//! for the last statement of every earlier writer to have ended — before it
//! reads the checkpoint.

use std::time::Duration;

use ferry_core::Result;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::error::my_error;

/// How long a lock held by someone else is waited for.
const PATIENCE: Duration = Duration::from_secs(5);

/// MySQL refuses user-lock names longer than this.
const MAX_NAME: usize = 64;

/// Writer locks per pipeline: more than a sink ever has writers open.
pub(crate) const WRITER_SLOTS: usize = 16;

/// How long an earlier runner's writer may take to end its last statement.
const DRAIN: Duration = Duration::from_secs(60);

/// The lock a writer holds while its session may write.
fn slot_name(pipeline: &str, database: &str, slot: usize) -> String {
    lock_name(&format!("{pipeline}:w{slot}"), database)
}

/// Takes a free writer lock on `conn`'s session (kept until it ends).
pub(crate) async fn take_writer_slot(
    conn: &mut Conn,
    pipeline: &str,
    database: &str,
) -> Result<()> {
    for slot in 0..WRITER_SLOTS {
        let got: Option<Option<i64>> = conn
            .exec_first(
                "SELECT GET_LOCK(?, 0)",
                (slot_name(pipeline, database, slot),),
            )
            .await
            .map_err(|e| my_error(e, "taking a writer's lock on the target"))?;
        if got.flatten() == Some(1) {
            return Ok(());
        }
    }
    Err(ferry_core::Error::fatal(format!(
        "all {WRITER_SLOTS} writer locks of pipeline {pipeline:?} are held on the target"
    )))
}

/// Waits until no session holds a writer lock of the pipeline: every
/// statement an earlier runner's writers sent has ended.
pub(crate) async fn drain_writers(conn: &mut Conn, pipeline: &str, database: &str) -> Result<()> {
    for slot in 0..WRITER_SLOTS {
        let name = slot_name(pipeline, database, slot);
        let got: Option<Option<i64>> = conn
            .exec_first("SELECT GET_LOCK(?, ?)", (&name, DRAIN.as_secs()))
            .await
            .map_err(|e| my_error(e, "waiting for an earlier runner's writers to end"))?;
        if got.flatten() != Some(1) {
            return Err(ferry_core::Error::transient(format!(
                "a writer session of an earlier run of pipeline {pipeline:?} still holds lock \
                 {name:?} after {} s",
                DRAIN.as_secs()
            )));
        }
        conn.exec_drop("SELECT RELEASE_LOCK(?)", (&name,))
            .await
            .map_err(|e| my_error(e, "releasing a writer lock"))?;
    }
    Ok(())
}

/// How taking the lock ended.
pub(crate) enum Lock {
    Taken,
    /// Still held after [`PATIENCE`] by the session with this id.
    HeldBy(Option<u64>),
}

/// The lock's name: readable when it fits, else a stable hash of it.
pub(crate) fn lock_name(pipeline: &str, database: &str) -> String {
    let name = format!("ferry:{pipeline}:{database}");
    if name.chars().count() <= MAX_NAME {
        return name;
    }
    // FNV-1a: the same in every ferry build, so two versions collide too.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let prefix: String = pipeline.chars().take(MAX_NAME - 24).collect();
    format!("ferry:{prefix}:{hash:016x}")
}

/// Takes the lock `name` on `conn`'s session.
pub(crate) async fn lock(conn: &mut Conn, name: &str) -> Result<Lock> {
    let got: Option<Option<i64>> = conn
        .exec_first("SELECT GET_LOCK(?, ?)", (name, PATIENCE.as_secs()))
        .await
        .map_err(|e| my_error(e, "taking the pipeline's lock on the target"))?;
    if got.flatten() == Some(1) {
        return Ok(Lock::Taken);
    }
    let holder: Option<Option<u64>> = conn
        .exec_first("SELECT IS_USED_LOCK(?)", (name,))
        .await
        .map_err(|e| my_error(e, "looking for the holder of the pipeline's lock"))?;
    Ok(Lock::HeldBy(holder.flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_hashed_within_the_limit() {
        assert_eq!(lock_name("p", "shop"), "ferry:p:shop");
        let long = lock_name(&"x".repeat(100), "shop");
        assert!(long.len() <= MAX_NAME, "{long}");
        assert_ne!(long, lock_name(&"x".repeat(101), "shop"));
    }
}
