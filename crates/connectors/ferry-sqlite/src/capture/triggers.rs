//! Which triggers a captured table needs, installing them, and telling
//! whether the installed ones are current. The triggers' statements for
//! rows `REPLACE` removes come from `displaced.rs`.

use ferry_core::{TableRef, TableSchema};
use rusqlite::{Connection, OptionalExtension, params};

use super::{CREATE_CHANGES, CREATE_CONSUMERS, NOW_MICROS, displaced, table_exists};
use crate::connection::{ident, literal};

/// One trigger of a captured table.
pub(crate) struct Trigger {
    pub(crate) name: String,
    /// Everything after the trigger's name. SQLite keeps a trigger's text
    /// verbatim in `sqlite_schema.sql`, so comparing it tells whether an
    /// installed trigger still matches the table's columns and indexes.
    body: String,
    create: String,
}

impl Trigger {
    /// `_ferry_<table>_<suffix>`, `timing` (`AFTER INSERT`, …) on `table`.
    pub(super) fn new(
        table: &str,
        suffix: &str,
        timing: &str,
        when: Option<&str>,
        statements: &str,
    ) -> Self {
        let name = format!("_ferry_{table}_{suffix}");
        let when = when.map(|w| format!(" WHEN {w}")).unwrap_or_default();
        let body = format!(
            "{timing} ON {} FOR EACH ROW{when} BEGIN {statements} END",
            ident(table)
        );
        Trigger {
            create: format!("CREATE TRIGGER {} {body}", ident(&name)),
            name,
            body,
        }
    }
}

/// Each column of `prefix` (`NEW`, `OLD` or the quoted table) through
/// `quote()`, joined by `,`: the row image the change table stores.
pub(super) fn image(table: &TableSchema, prefix: &str) -> String {
    table
        .columns
        .iter()
        .map(|c| format!("quote({prefix}.{})", ident(&c.name)))
        .collect::<Vec<_>>()
        .join("||','||")
}

/// Every trigger of a captured table and its pending table (see
/// `displaced.rs`).
pub(crate) struct TableCapture {
    /// `_ai`, `_au`, `_ad`: append the row changes (and capture the rows
    /// `REPLACE` removed), encoding the current columns.
    pub(crate) row: [Trigger; 3],
    /// The NEW and OLD images the row triggers write: when an installed
    /// row trigger differs but contains these, only the capture logic
    /// changed, not the columns.
    images: [String; 2],
    /// `_bi`, `_bu` and the pending table; `None` for a table without a
    /// key whose rows cannot be told apart.
    pub(crate) displacement: Option<displaced::Displacement>,
}

/// The triggers `table` needs with its current columns and indexes.
pub(crate) fn plan(conn: &Connection, table: &TableSchema) -> rusqlite::Result<TableCapture> {
    let name = &table.name.name;
    let displacement = displaced::plan(conn, table)?;
    let prelude = |f: fn(&displaced::Displacement) -> &String| {
        displacement.as_ref().map(f).cloned().unwrap_or_default()
    };
    let (new, old) = (image(table, "NEW"), image(table, "OLD"));
    let make = |suffix: &str, event: &str, op: &str, old: &str, new: &str, before: String| {
        let insert = format!(
            "{before}{}INSERT INTO _ferry_changes(tbl, op, old_row, new_row, ts) VALUES ({}, '{op}', {old}, {new}, {NOW_MICROS});",
            if before.is_empty() { "" } else { " " },
            literal(name)
        );
        Trigger::new(name, suffix, &format!("AFTER {event}"), None, &insert)
    };
    Ok(TableCapture {
        row: [
            make(
                "ai",
                "INSERT",
                "I",
                "NULL",
                &new,
                prelude(|d| &d.after_insert),
            ),
            make(
                "au",
                "UPDATE",
                "U",
                &old,
                &new,
                prelude(|d| &d.after_update),
            ),
            make(
                "ad",
                "DELETE",
                "D",
                &old,
                "NULL",
                prelude(|d| &d.after_delete),
            ),
        ],
        images: [new, old],
        displacement,
    })
}

/// The installed trigger named `name`: its table and text.
fn installed(conn: &Connection, name: &str) -> rusqlite::Result<Option<(String, String)>> {
    conn.query_row(
        "SELECT tbl_name, sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?1",
        [name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// How `t` stands against what is installed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Installation {
    Current,
    /// Installed with other text (`sql`), or on another table.
    Outdated,
    Missing,
}

fn installation(
    conn: &Connection,
    table: &str,
    t: &Trigger,
) -> rusqlite::Result<(Installation, String)> {
    Ok(match installed(conn, &t.name)? {
        Some((tbl, sql)) if tbl == table && sql.contains(&t.body) => (Installation::Current, sql),
        Some((_, sql)) => (Installation::Outdated, sql),
        None => (Installation::Missing, String::new()),
    })
}

/// Creates `t` unless it is installed as it should be; returns what was
/// installed before.
fn ensure_trigger(
    conn: &Connection,
    table: &str,
    t: &Trigger,
) -> rusqlite::Result<(Installation, String)> {
    let (state, sql) = installation(conn, table, t)?;
    if state == Installation::Outdated {
        conn.execute_batch(&format!("DROP TRIGGER {}", ident(&t.name)))?;
    }
    if state != Installation::Current {
        conn.execute_batch(&t.create)?;
    }
    Ok((state, sql))
}

/// What [`install`] found.
#[derive(Debug, Default)]
pub(crate) struct Installed {
    /// Tables whose triggers existed with another column list and were
    /// recreated: their earlier change rows have a different shape, which
    /// decoding then reports (see [`decode_row`]).
    pub(crate) recreated: Vec<String>,
    /// Tables already captured whose triggers were updated for other unique
    /// indexes, or from a ferry that did not capture rows `REPLACE`
    /// removes, with the number of their changes not yet acknowledged by
    /// every consumer: those were captured without the new triggers.
    pub(crate) unique_changed: Vec<(String, i64)>,
}

impl Installed {
    /// Logs what the operator must know: changes that cannot be decoded,
    /// or that were captured without the triggers for removed rows.
    pub(crate) fn warn(&self, pipeline: &str) {
        for table in &self.recreated {
            tracing::warn!(
                pipeline, table = %table,
                "capture triggers of {table} encoded other columns and were recreated; \
                 changes captured before cannot be decoded (reset the pipeline if it reports drift)"
            );
        }
        for (table, unacknowledged) in self.unique_changed.iter().filter(|t| t.1 > 0) {
            tracing::warn!(
                pipeline, table = %table, changes = unacknowledged,
                "the unique indexes of {table} are not those its capture triggers covered (an index \
                 changed while ferry was stopped, or capture was installed by an older ferry); the \
                 triggers were updated, but {unacknowledged} changes captured before may miss rows \
                 an INSERT/UPDATE OR REPLACE removed: run `ferry verify` once the pipeline caught up, \
                 and `ferry reset` if it finds differences"
            );
        }
    }
}

/// Installs the change and consumer tables, the triggers of `tables`, and
/// registers `pipeline` as a consumer (its acked position starts at the
/// current end of the change table). Runs inside the caller's transaction.
pub(crate) fn install(
    conn: &Connection,
    tables: &[TableRef],
    pipeline: &str,
) -> rusqlite::Result<Installed> {
    let fresh = !super::table_exists(conn, "_ferry_changes")?;
    conn.execute_batch(CREATE_CHANGES)?;
    if fresh {
        // Seqs of a new change table start at the current time in
        // microseconds, so they keep growing across a teardown and a new
        // install: a checkpoint taken before can never look like a
        // position of the new table (see `Source::continuity`).
        conn.execute(
            "INSERT INTO sqlite_sequence(name, seq) VALUES ('_ferry_changes', ?1)",
            [super::now_micros()],
        )?;
    }
    conn.execute_batch(CREATE_CONSUMERS)?;
    let mut out = Installed::default();
    for table in tables {
        let name = &table.name.name;
        let plan = plan(conn, table)?;
        let (mut existed, mut columns_changed, mut changed) = (false, false, false);
        for t in &plan.row {
            let (state, sql) = ensure_trigger(conn, name, t)?;
            existed |= state != Installation::Missing;
            changed |= state != Installation::Current;
            // The same images in other capture logic: the columns are the same.
            columns_changed |= state == Installation::Outdated
                && !plan.images.iter().any(|i| sql.contains(i.as_str()));
        }
        changed |= sync_displacement(conn, table, &plan)?;
        if columns_changed {
            out.recreated.push(name.clone());
        } else if existed && changed {
            let pending = unacknowledged_changes(conn, name)?;
            out.unique_changed.push((name.clone(), pending));
        }
    }
    // A new consumer starts after everything allocated so far: what came
    // before was never captured for it.
    conn.execute(
        &format!(
            "INSERT INTO _ferry_consumers(pipeline, acked_seq) VALUES (?1, ({})) \
             ON CONFLICT(pipeline) DO NOTHING",
            super::END_SQL
        ),
        [pipeline],
    )?;
    Ok(out)
}

/// Installs `_bi`, `_bu` and the pending table as `plan` says, and removes
/// them when it has none. Returns whether anything changed.
fn sync_displacement(
    conn: &Connection,
    table: &TableSchema,
    plan: &TableCapture,
) -> rusqlite::Result<bool> {
    let name = &table.name.name;
    let wanted: &[Trigger] = plan.displacement.as_ref().map_or(&[], |d| &d.before);
    let mut changed = false;
    for suffix in displaced::SUFFIXES {
        let trigger = format!("_ferry_{name}_{suffix}");
        match wanted.iter().find(|t| t.name == trigger) {
            Some(t) => changed |= ensure_trigger(conn, name, t)?.0 != Installation::Current,
            None => {
                if installed(conn, &trigger)?.is_some() {
                    conn.execute_batch(&format!("DROP TRIGGER {}", ident(&trigger)))?;
                    changed = true;
                }
            }
        }
    }
    let pending = ident(&displaced::pending_table(name));
    match &plan.displacement {
        // Pending rows never matter between transactions: a new shape
        // simply starts empty.
        Some(d) if changed => conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {pending}; {}",
            d.create_pending
        ))?,
        Some(d) => conn.execute_batch(&d.create_pending)?,
        None => conn.execute_batch(&format!("DROP TABLE IF EXISTS {pending}"))?,
    }
    Ok(changed)
}

/// Changes of `table` after the oldest consumer's acknowledged position.
fn unacknowledged_changes(conn: &Connection, table: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT count(*) FROM _ferry_changes WHERE tbl = ?1 \
         AND seq > (SELECT COALESCE(min(acked_seq), 0) FROM _ferry_consumers)",
        [table],
        |r| r.get(0),
    )
}

/// How much of `table`'s capture is installed as its current structure
/// needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CaptureState {
    /// How many of the three AFTER triggers that append row changes are
    /// installed as the current columns and key need them.
    pub(crate) row_triggers: usize,
    /// Whether the BEFORE triggers that record the rows `REPLACE` may
    /// remove match the table's current unique indexes, and the pending
    /// table exists.
    pub(crate) displacement_current: bool,
}

impl CaptureState {
    pub(crate) fn complete(&self) -> bool {
        self.row_triggers == 3 && self.displacement_current
    }
}

pub(crate) fn capture_state(
    conn: &Connection,
    table: &TableSchema,
) -> rusqlite::Result<CaptureState> {
    let name = &table.name.name;
    let plan = plan(conn, table)?;
    let current = |t: &Trigger| -> rusqlite::Result<bool> {
        Ok(installation(conn, name, t)?.0 == Installation::Current)
    };
    let mut row_triggers = 0;
    for t in &plan.row {
        row_triggers += usize::from(current(t)?);
    }
    let wanted: &[Trigger] = plan.displacement.as_ref().map_or(&[], |d| &d.before);
    let mut displacement_current = true;
    for suffix in displaced::SUFFIXES {
        let trigger = format!("_ferry_{name}_{suffix}");
        displacement_current &= match wanted.iter().find(|t| t.name == trigger) {
            Some(t) => current(t)?,
            None => installed(conn, &trigger)?.is_none(),
        };
    }
    if plan.displacement.is_some() {
        displacement_current &= table_exists(conn, &displaced::pending_table(name))?;
    }
    Ok(CaptureState {
        row_triggers,
        displacement_current,
    })
}

/// What [`update_displacement`] did.
#[derive(Debug, PartialEq)]
pub(crate) enum DisplacementUpdate {
    /// The triggers were brought up to date; nothing can have been missed.
    Updated,
    /// `table` was written after `since` and the installed triggers do not
    /// cover every unique index it now has: a row `REPLACE` removed
    /// through a new index in between may not have been captured. Nothing
    /// was changed.
    Unsafe,
}

/// Brings `table`'s triggers for rows `REPLACE` removes up to date after
/// its unique indexes changed, when that provably lost nothing: either the
/// installed triggers already cover every current unique index (an index
/// was dropped), or no change of `table` was captured after `since`, a
/// position read before the index changed (so no write happened under the
/// new index yet). Runs inside the caller's write transaction, which keeps
/// other writers out while it checks and installs.
pub(crate) fn update_displacement(
    conn: &Connection,
    table: &TableSchema,
    since: i64,
) -> rusqlite::Result<DisplacementUpdate> {
    let name = &table.name.name;
    let plan = plan(conn, table)?;
    let covered = match &plan.displacement {
        None => true,
        Some(p) => {
            let installed_bi = installed(conn, &format!("_ferry_{name}_bi"))?;
            installed_bi
                .is_some_and(|(_, sql)| p.conditions.iter().all(|c| sql.contains(c.as_str())))
        }
    };
    if !covered {
        let written: i64 = conn.query_row(
            "SELECT count(*) FROM _ferry_changes WHERE tbl = ?1 AND seq > ?2",
            params![name, since],
            |r| r.get(0),
        )?;
        if written > 0 {
            return Ok(DisplacementUpdate::Unsafe);
        }
    }
    sync_displacement(conn, table, &plan)?;
    Ok(DisplacementUpdate::Updated)
}
