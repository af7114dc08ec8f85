//! Active-active on a PostgreSQL target (ADR 0014): the replication
//! origin each apply session writes under, the settings and rights it
//! needs, and the conflict log table.
//!
//! Every writer of an active-active pipeline runs
//! `pg_replication_origin_session_setup('ferry_<source site>_<n>')`, so
//! each transaction it commits carries that origin (the target's own
//! sources skip it: [`crate::PostgresSource::skip_ferry_origins`]), and
//! `pg_replication_origin_xact_setup(lsn, time)` per source transaction,
//! so its commit timestamp is the source's commit time. With
//! `track_commit_timestamp = on`, `pg_xact_commit_timestamp_origin(xmin)`
//! of any row then tells when, and on which site, its version was written.

use std::time::{Duration, Instant};

use ferry_core::{CheckItem, Error, Result, conflict};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::error::pg_error;

/// The conflict log, one row per conflict met at apply.
pub const CONFLICTS_TABLE: &str = "_ferry_conflicts";

/// How long a writer waits for a killed runner's session to let go of its
/// origin before the pipeline restarts (and tries again).
const ORIGIN_BUSY_WAIT: Duration = Duration::from_secs(10);

const FUNCTIONS: &str = "pg_replication_origin_create(text), \
     pg_replication_origin_session_setup(text), \
     pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone), \
     pg_replication_origin_xact_reset()";

fn privilege_fix(user: &str) -> String {
    format!("GRANT EXECUTE ON FUNCTION {FUNCTIONS} TO {user}; (or run the pipeline as a superuser)")
}

const RIGHTS_SQL: &str = "SELECT bool_and(has_function_privilege(f, 'EXECUTE')) FROM unnest(ARRAY[\
     'pg_replication_origin_create(text)', \
     'pg_replication_origin_session_setup(text)', \
     'pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)', \
     'pg_replication_origin_xact_reset()']) AS f";

/// What an active-active target has: commit timestamps kept, and the
/// rights to use replication origins.
struct Facts {
    commit_timestamps: bool,
    origin_rights: bool,
}

async fn facts(client: &Client) -> Result<Facts> {
    let ts: String = client
        .query_one("SHOW track_commit_timestamp", &[])
        .await
        .map_err(|e| pg_error(e, "reading track_commit_timestamp"))?
        .get(0);
    let rights: Option<bool> = client
        .query_one(RIGHTS_SQL, &[])
        .await
        .map_err(|e| pg_error(e, "checking the rights on replication origins"))?
        .get(0);
    Ok(Facts {
        commit_timestamps: ts == "on",
        origin_rights: rights == Some(true),
    })
}

const TIMESTAMPS: &str = "active-active: track_commit_timestamp";
const TIMESTAMPS_FIX: &str =
    "ALTER SYSTEM SET track_commit_timestamp = on; then restart the server";
const ORIGINS: &str = "active-active: replication origins";

/// `track_commit_timestamp` is on, and the user may use replication
/// origins: what an active-active target needs, as check items.
pub(crate) async fn check(client: &Client, user: &str) -> Vec<CheckItem> {
    match facts(client).await {
        Ok(f) => vec![
            if f.commit_timestamps {
                CheckItem::ok(TIMESTAMPS, "on (conflicts compare commit times)")
            } else {
                CheckItem::fail(
                    TIMESTAMPS,
                    "off: conflicts cannot be detected by commit time",
                    TIMESTAMPS_FIX,
                )
            },
            if f.origin_rights {
                CheckItem::ok(
                    ORIGINS,
                    format!("role {user} may use them (apply tags each change with its site)"),
                )
            } else {
                CheckItem::fail(
                    ORIGINS,
                    format!("role {user} may not use replication origin functions"),
                    privilege_fix(user),
                )
            },
        ],
        Err(e) => vec![CheckItem::from_error("active-active", &e)],
    }
}

/// Refuses a target that cannot run active-active apply, with the fix; a
/// lost connection stays a transient error (the pipeline retries).
pub(crate) async fn require(client: &Client, user: &str) -> Result<()> {
    let f = facts(client).await?;
    if !f.commit_timestamps {
        return Err(Error::fatal(format!(
            "target: {TIMESTAMPS}: off: conflicts cannot be detected by commit time"
        ))
        .with_fix(TIMESTAMPS_FIX));
    }
    if !f.origin_rights {
        return Err(Error::fatal(format!(
            "target: {ORIGINS}: role {user} may not use replication origin functions"
        ))
        .with_fix(privilege_fix(user)));
    }
    Ok(())
}

/// Creates the conflict log if the target lacks it (under an advisory
/// lock: several pipelines write one target).
pub(crate) async fn ensure_conflicts_table(client: &Client) -> Result<()> {
    let sql = format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('ferry conflicts table')); \
         CREATE TABLE IF NOT EXISTS {CONFLICTS_TABLE} (\
           id bigserial PRIMARY KEY, \
           pipeline text NOT NULL, \
           table_name text NOT NULL, \
           key text NOT NULL, \
           kind text NOT NULL, \
           policy text NOT NULL, \
           outcome text NOT NULL, \
           source_site text NOT NULL, \
           source_time timestamptz, \
           target_site text, \
           target_time timestamptz, \
           source_row text, \
           target_row text, \
           logged_at timestamptz NOT NULL DEFAULT clock_timestamp()); \
         COMMIT"
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| pg_error(e, "creating the conflict log table"))?;
    Ok(())
}

/// Makes `client` apply under origin `ferry_<site>_<writer>`, creating the
/// origin if needed. A killed runner's session may still hold it for a
/// moment: waited for, then a transient error.
pub(crate) async fn setup_session(
    client: &Client,
    user: &str,
    site: &str,
    writer: usize,
) -> Result<()> {
    let name = conflict::origin_name(site, writer);
    let started = Instant::now();
    loop {
        let res = client
            .query(
                "SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL",
                &[&name],
            )
            .await
            .map(|_| ());
        let res = match res {
            Ok(()) => client
                .execute("SELECT pg_replication_origin_session_setup($1)", &[&name])
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(Error::fatal(format!(
                    "role {user} may not use replication origins on the target, which \
                     active-active apply tags its changes with ({e})"
                ))
                .with_fix(privilege_fix(user)));
            }
            Err(e)
                if e.code() == Some(&SqlState::OBJECT_IN_USE)
                    && started.elapsed() < ORIGIN_BUSY_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                return Err(Error::transient(format!(
                    "replication origin {name} is still used by another session on the target \
                     (a runner that was killed, not yet gone?): {e}"
                ))
                .with_fix(format!(
                    "stop the other runner of this pipeline, or end its session: \
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE ... \
                     (pg_replication_origin_status shows origin {name})"
                )));
            }
            Err(e) => {
                return Err(pg_error(
                    e,
                    "setting up the apply session's replication origin",
                ));
            }
        }
    }
}
