//! Pre-flight checks (`ferry check`): each finding is one [`CheckItem`]
//! with what was found and, on a failure, the fix.

use ferry_core::{CheckItem, Selection, TableName};
use tokio_postgres::Client;

use crate::catalog;
use crate::connection::Endpoint;
use crate::error::pg_error;
use crate::publication::Publication;
use crate::types::TypeCache;

/// Checks of a target: reachable (the client exists), can create tables
/// and write the checkpoint table.
pub(crate) async fn sink_checks(client: &Client, endpoint: &Endpoint) -> Vec<CheckItem> {
    let mut items = vec![CheckItem::ok(
        "target: connect",
        format!("connected to {}", endpoint.describe()),
    )];
    match client
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
                    has_schema_privilege('public', 'CREATE'), \
                    CASE WHEN to_regclass('public._ferry_checkpoint') IS NULL \
                         THEN has_schema_privilege('public', 'CREATE') \
                         ELSE has_table_privilege('public._ferry_checkpoint', 'INSERT, UPDATE') END, \
                    to_regclass('public._ferry_checkpoint') IS NOT NULL",
            &[],
        )
        .await
    {
        Ok(row) => {
            let version: i32 = row.get(0);
            items.push(if version >= 100_000 {
                CheckItem::ok(
                    "target: version",
                    format!("PostgreSQL {}", version / 10_000),
                )
            } else {
                CheckItem::fail(
                    "target: version",
                    format!("PostgreSQL server_version_num {version}"),
                    "use PostgreSQL 10 or newer",
                )
            });
            let create: bool = row.get(1);
            items.push(if create {
                CheckItem::ok("target: create tables", "may create tables in schema public")
            } else {
                CheckItem::warn(
                    "target: create tables",
                    "may not create tables in schema public; missing target tables cannot be created",
                    format!(
                        "GRANT CREATE ON SCHEMA public TO {}; or create the target tables beforehand",
                        endpoint.user()
                    ),
                )
            });
            let write: bool = row.get(2);
            let exists: bool = row.get(3);
            items.push(match (write, exists) {
                (true, true) => {
                    CheckItem::ok("target: checkpoint", "may write public._ferry_checkpoint")
                }
                (true, false) => CheckItem::ok(
                    "target: checkpoint",
                    "public._ferry_checkpoint will be created by the first run",
                ),
                (false, true) => CheckItem::fail(
                    "target: checkpoint",
                    "may not write public._ferry_checkpoint",
                    format!(
                        "GRANT INSERT, UPDATE, SELECT, DELETE ON public._ferry_checkpoint TO {}",
                        endpoint.user()
                    ),
                ),
                (false, false) => CheckItem::fail(
                    "target: checkpoint",
                    "public._ferry_checkpoint does not exist and may not be created in schema public",
                    format!("GRANT CREATE ON SCHEMA public TO {}", endpoint.user()),
                ),
            });
        }
        Err(e) => items.push(CheckItem::from_error(
            "target: privileges",
            &pg_error(e, "checking privileges"),
        )),
    }
    items
}

/// Checks of a source: wal_level, free slots and senders, REPLICATION
/// privilege, publication rights, and a usable key on every selected table.
pub(crate) async fn source_checks(
    client: &Client,
    endpoint: &Endpoint,
    selection: &Selection,
    slot: &str,
) -> Vec<CheckItem> {
    let mut items = vec![CheckItem::ok(
        "source: connect",
        format!("connected to {}", endpoint.describe()),
    )];
    let settings = client
        .query_one(
            "SELECT current_setting('wal_level'), \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_replication)::int, \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    has_database_privilege(current_database(), 'CREATE'), \
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1), \
                    (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1), \
                    (SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1), \
                    current_setting('max_slot_wal_keep_size')",
            &[&slot],
        )
        .await;
    let row = match settings {
        Ok(r) => r,
        Err(e) => {
            items.push(CheckItem::from_error(
                "source: settings",
                &pg_error(e, "reading settings"),
            ));
            return items;
        }
    };
    let wal_level: String = row.get(0);
    items.push(if wal_level == "logical" {
        CheckItem::ok("source: wal_level", "logical")
    } else {
        CheckItem::fail(
            "source: wal_level",
            format!("wal_level is {wal_level}; logical decoding needs logical"),
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
        )
    });
    let (max_slots, used_slots): (i32, i32) = (row.get(1), row.get(2));
    let slot_exists: bool = row.get(8);
    items.push(if slot_exists || used_slots < max_slots {
        CheckItem::ok(
            "source: replication slots",
            format!("{used_slots} of {max_slots} in use{}", if slot_exists { " (ferry's exists)" } else { "" }),
        )
    } else {
        CheckItem::fail(
            "source: replication slots",
            format!("all {max_slots} replication slots are in use"),
            "drop unused slots (SELECT pg_drop_replication_slot(name)) or raise max_replication_slots and restart",
        )
    });
    let active: Option<i32> = row.get(9);
    let wal_status: Option<String> = row.get(10);
    let keep: String = row.get(11);
    items.push(match (slot_exists, active, wal_status.as_deref()) {
        (false, _, _) => CheckItem::ok(
            "source: ferry's slot",
            format!("{slot} will be created (WAL kept for it: max_slot_wal_keep_size = {keep})"),
        ),
        (true, Some(pid), _) => CheckItem::fail(
            "source: ferry's slot",
            format!("{slot} is in use by PID {pid}: another ferry runs this pipeline"),
            format!(
                "stop the other ferry of this pipeline; a stale session can be ended with \
                 SELECT pg_terminate_backend({pid})"
            ),
        ),
        (true, None, Some("lost")) => CheckItem::fail(
            "source: ferry's slot",
            format!("{slot} was invalidated: the WAL ferry needs is gone"),
            "re-snapshot: `ferry teardown` and `ferry reset`, then start the pipeline again",
        ),
        (true, None, status) => CheckItem::ok(
            "source: ferry's slot",
            format!(
                "{slot} exists, idle, WAL {} (max_slot_wal_keep_size = {keep})",
                status.unwrap_or("unknown")
            ),
        ),
    });
    let (max_senders, used_senders): (i32, i32) = (row.get(3), row.get(4));
    items.push(if used_senders < max_senders {
        CheckItem::ok(
            "source: wal senders",
            format!("{used_senders} of {max_senders} in use"),
        )
    } else {
        CheckItem::fail(
            "source: wal senders",
            format!("all {max_senders} WAL senders are in use"),
            "raise max_wal_senders and restart PostgreSQL, or stop another replication client",
        )
    });
    let replication: bool = row.get::<_, Option<bool>>(5).unwrap_or(false);
    items.push(if replication {
        CheckItem::ok(
            "source: REPLICATION privilege",
            format!("{} may replicate", endpoint.user()),
        )
    } else {
        CheckItem::fail(
            "source: REPLICATION privilege",
            format!("role {} lacks the REPLICATION attribute", endpoint.user()),
            format!("ALTER ROLE {} WITH REPLICATION", endpoint.user()),
        )
    });
    // What a run will do with the publication, and whether it may.
    let names = catalog::list_tables(client).await;
    if let Ok(names) = &names {
        let selected: Vec<TableName> = names
            .iter()
            .filter(|n| selection.selects(n))
            .cloned()
            .collect();
        items.push(match Publication::inspect(client, slot, &selected).await {
            Ok(p) => match p.check_detail() {
                Ok(detail) => CheckItem::ok("source: publication rights", detail),
                Err((why, fix)) => CheckItem::fail("source: publication rights", why, fix),
            },
            Err(e) => CheckItem::from_error("source: publication rights", &e),
        });
    }
    // Every selected table needs a key and supported types.
    match names {
        Ok(names) => {
            let mut types = TypeCache::default();
            let mut bad = 0;
            let mut count = 0;
            let mut keyless = Vec::new();
            let mut as_text = Vec::new();
            for name in names.iter().filter(|n| selection.selects(n)) {
                count += 1;
                let ns = name.namespace.as_deref().unwrap_or("public");
                let described = catalog::describe(client, &mut types, ns, &name.name).await;
                let described = described.map(|t| t.map(|t| catalog::source_schema(&t)));
                if let Ok(Some(Ok(t))) = &described {
                    as_text.extend(t.columns.iter().filter_map(|c| match &c.ty {
                        ferry_core::ColumnType::Other { type_name }
                            if !selection.unread(&t.name, &c.name) =>
                        {
                            Some(format!("{name}.{} ({type_name})", c.name))
                        }
                        _ => None,
                    }));
                }
                let problem = match described {
                    Ok(Some(Ok(t))) if t.is_keyless() => {
                        keyless.push(name.to_string());
                        None
                    }
                    Ok(Some(schema)) => schema.err(),
                    Ok(None) => None,
                    Err(e) => Some(e),
                };
                if let Some(e) = problem {
                    bad += 1;
                    items.push(CheckItem::from_error(format!("source: table {name}"), &e));
                }
            }
            if bad == 0 {
                let detail = if keyless.is_empty() {
                    format!("{count} selected tables, each with a key and supported types")
                } else {
                    format!(
                        "{count} selected tables with supported types; without a key (REPLICA \
                         IDENTITY FULL), copied whole and changed one row at a time: {}",
                        keyless.join(", ")
                    )
                };
                items.push(CheckItem::ok("source: tables", detail));
            }
            // Every type is carried; these by their text form.
            if !as_text.is_empty() {
                items.push(CheckItem::ok(
                    "source: column types",
                    format!(
                        "carried by their text form (the same type on a PostgreSQL target, \
                         text on other targets; docs/types.md): {}",
                        as_text.join(", ")
                    ),
                ));
            }
        }
        Err(e) => items.push(CheckItem::from_error("source: tables", &e)),
    }
    items
}
