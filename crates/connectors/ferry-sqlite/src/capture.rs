//! Trigger capture: the change table, the triggers that fill it, the
//! consumer table that drives pruning, and decoding of the row images the
//! triggers write.
//!
//! Every captured table gets `AFTER INSERT/UPDATE/DELETE ... FOR EACH ROW`
//! triggers that append one row to `_ferry_changes`. Triggers run inside the
//! writer's transaction, so a change row exists exactly when its source
//! change committed, whatever process made it. `seq` is `AUTOINCREMENT`:
//! SQLite has one writer at a time, so seqs are handed out in commit order
//! and every committed state of the table is a prefix that ends on a
//! transaction boundary (the reader relies on this; see `source.rs`).
//!
//! Rows that `REPLACE` conflict resolution removes fire no delete trigger;
//! tables where that can remove a row other than the new row's own get
//! more triggers and a pending table (see `capture/displaced.rs`).
//!
//! Row images are each column's `quote()` joined by `,`: `quote()` is
//! SQLite's own literal syntax and round-trips integers, reals (switching to
//! `%.20e` when 15 digits would lose bits), text, blobs and NULL. It does
//! not keep the sign of `-0.0`.

use ferry_core::{TableRef, TableSchema};
use rusqlite::types::Value as Stored;
use rusqlite::{Connection, OptionalExtension, params};

use crate::connection::{ident, literal};

mod displaced;

const CREATE_CHANGES: &str = "CREATE TABLE IF NOT EXISTS _ferry_changes(\
     seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, op TEXT NOT NULL, \
     old_row TEXT, new_row TEXT, ts INTEGER)";
const CREATE_CONSUMERS: &str = "CREATE TABLE IF NOT EXISTS _ferry_consumers(\
     pipeline TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL)";
/// Wall-clock time of the writing statement in microseconds since the Unix
/// epoch: the closest SQLite gets to a commit time inside a trigger.
const NOW_MICROS: &str = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";

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
    fn new(table: &str, suffix: &str, timing: &str, when: Option<&str>, statements: &str) -> Self {
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
fn image(table: &TableSchema, prefix: &str) -> String {
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

/// Installs the change and consumer tables, the triggers of `tables`, and
/// registers `pipeline` as a consumer (its acked position starts at the
/// current end of the change table). Runs inside the caller's transaction.
pub(crate) fn install(
    conn: &Connection,
    tables: &[TableRef],
    pipeline: &str,
) -> rusqlite::Result<Installed> {
    conn.execute_batch(CREATE_CHANGES)?;
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
    conn.execute(
        "INSERT INTO _ferry_consumers(pipeline, acked_seq) \
         VALUES (?1, (SELECT COALESCE(max(seq), 0) FROM _ferry_changes)) \
         ON CONFLICT(pipeline) DO NOTHING",
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

/// What [`uninstall`] did.
pub(crate) struct Uninstalled {
    /// Other pipelines still consuming; when any remain, the triggers and
    /// tables stay (they may capture the same tables).
    pub(crate) remaining: Vec<String>,
    pub(crate) dropped_triggers: usize,
}

/// Unregisters `pipeline`; when no consumer remains, drops every ferry
/// trigger, both ferry tables and the pending tables. All triggers go together with the change
/// table: a trigger left behind would make every write to its table fail
/// with "no such table: _ferry_changes".
pub(crate) fn uninstall(conn: &Connection, pipeline: &str) -> rusqlite::Result<Uninstalled> {
    if !table_exists(conn, "_ferry_consumers")? {
        conn.execute_batch(CREATE_CONSUMERS)?;
    }
    conn.execute(
        "DELETE FROM _ferry_consumers WHERE pipeline = ?1",
        [pipeline],
    )?;
    let remaining = conn
        .prepare("SELECT pipeline FROM _ferry_consumers ORDER BY pipeline")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    if !remaining.is_empty() {
        return Ok(Uninstalled {
            remaining,
            dropped_triggers: 0,
        });
    }
    let names = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' \
             AND name LIKE '\\_ferry\\_%' ESCAPE '\\' \
             AND (sql LIKE '%_ferry_changes%' OR sql LIKE '%_ferry_pending%')",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    for name in &names {
        conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", ident(name)))?;
    }
    for pending in pending_tables(conn)? {
        conn.execute_batch(&format!("DROP TABLE {}", ident(&pending)))?;
    }
    conn.execute_batch(
        "DROP TABLE IF EXISTS _ferry_changes; DROP TABLE IF EXISTS _ferry_consumers;",
    )?;
    Ok(Uninstalled {
        remaining,
        dropped_triggers: names.len(),
    })
}

pub(crate) fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
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

/// Empties every pending table (see `displaced.rs`). Only in a write
/// transaction of ferry's own: no other writer's statement is then half
/// done, so every pending row is a leftover.
pub(crate) fn clear_pending(conn: &Connection) -> rusqlite::Result<()> {
    for name in pending_tables(conn)? {
        conn.execute_batch(&format!("DELETE FROM {}", ident(&name)))?;
    }
    Ok(())
}

fn pending_tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' \
         AND name LIKE '\\_ferry\\_pending\\_%' ESCAPE '\\'",
    )?
    .query_map([], |r| r.get(0))?
    .collect()
}

/// The extent of the change table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extent {
    /// Lowest seq still present (`None`: the table is empty).
    pub(crate) min: Option<i64>,
    /// Highest seq present, or 0.
    pub(crate) max: i64,
    /// Highest seq ever handed out (`sqlite_sequence`), which survives pruning.
    pub(crate) allocated: i64,
}

pub(crate) fn extent(conn: &Connection) -> rusqlite::Result<Extent> {
    let (min, max) = conn.query_row(
        "SELECT min(seq), COALESCE(max(seq), 0) FROM _ferry_changes",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let allocated: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Extent {
        min,
        max,
        allocated: allocated.unwrap_or(0).max(max),
    })
}

/// Records `pipeline`'s acknowledged position (never moving it back) and,
/// when `prune`, deletes the change rows every consumer has acknowledged.
/// Returns the number of rows pruned.
pub(crate) fn record_ack(
    conn: &Connection,
    pipeline: &str,
    seq: i64,
    prune: bool,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO _ferry_consumers(pipeline, acked_seq) VALUES (?1, ?2) \
         ON CONFLICT(pipeline) DO UPDATE SET acked_seq = max(acked_seq, excluded.acked_seq)",
        params![pipeline, seq],
    )?;
    if !prune {
        return Ok(0);
    }
    clear_pending(conn)?;
    conn.execute(
        "DELETE FROM _ferry_changes WHERE seq <= (SELECT min(acked_seq) FROM _ferry_consumers)",
        [],
    )
}

/// One row of the change table.
#[derive(Debug)]
pub(crate) struct ChangeRow {
    pub(crate) seq: i64,
    pub(crate) table: String,
    pub(crate) op: String,
    pub(crate) old: Option<String>,
    pub(crate) new: Option<String>,
    pub(crate) ts: Option<i64>,
}

/// Change rows with `after < seq <= upto`, in seq order, at most `limit`.
pub(crate) fn read_changes(
    conn: &Connection,
    after: i64,
    upto: i64,
    limit: usize,
) -> rusqlite::Result<Vec<ChangeRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, tbl, op, old_row, new_row, ts FROM _ferry_changes \
         WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, upto, limit as i64], |r| {
        Ok(ChangeRow {
            seq: r.get(0)?,
            table: r.get(1)?,
            op: r.get(2)?,
            old: r.get(3)?,
            new: r.get(4)?,
            ts: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Splits a row image written by the triggers back into stored values.
pub(crate) fn decode_row(text: &str) -> Result<Vec<Stored>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let (value, next) = token(text, i)?;
        out.push(value);
        match b.get(next) {
            None => return Ok(out),
            Some(b',') => i = next + 1,
            Some(_) => return Err(format!("unexpected character at offset {next}")),
        }
    }
}

/// One `quote()` literal starting at byte `i`; returns it and the offset after it.
fn token(text: &str, i: usize) -> Result<(Stored, usize), String> {
    let b = text.as_bytes();
    let bad = |what: &str| format!("{what} at offset {i}");
    match b.get(i) {
        Some(b'\'') => {
            let mut s = String::new();
            let mut j = i + 1;
            loop {
                let end = text[j..]
                    .find('\'')
                    .map(|k| j + k)
                    .ok_or_else(|| bad("unterminated text literal"))?;
                s.push_str(&text[j..end]);
                if b.get(end + 1) == Some(&b'\'') {
                    s.push('\'');
                    j = end + 2;
                } else {
                    return Ok((Stored::Text(s), end + 1));
                }
            }
        }
        Some(b'X' | b'x') if b.get(i + 1) == Some(&b'\'') => {
            let end = text[i + 2..]
                .find('\'')
                .map(|k| i + 2 + k)
                .ok_or_else(|| bad("unterminated blob literal"))?;
            let hex = &text[i + 2..end];
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|k| {
                    hex.get(k..k + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| bad("malformed blob literal"))?;
            Ok((Stored::Blob(bytes), end + 1))
        }
        Some(_) => {
            let end = text[i..].find(',').map_or(text.len(), |k| i + k);
            let word = &text[i..end];
            let value = match word {
                "NULL" => Stored::Null,
                "Inf" => Stored::Real(f64::INFINITY),
                "-Inf" => Stored::Real(f64::NEG_INFINITY),
                _ if word.bytes().all(|c| c.is_ascii_digit() || c == b'-') => {
                    Stored::Integer(word.parse().map_err(|_| bad("malformed integer"))?)
                }
                _ => Stored::Real(word.parse().map_err(|_| bad("malformed number"))?),
            };
            Ok((value, end))
        }
        None => Err(bad("missing value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values go through SQLite's own `quote()`, exactly as the triggers
    /// write them, and must come back identical.
    #[test]
    fn quote_images_round_trip() {
        let conn = Connection::open_in_memory().unwrap();
        let values = [
            Stored::Integer(-5),
            Stored::Integer(i64::MIN),
            Stored::Integer(i64::MAX),
            Stored::Real(0.1),
            Stored::Real(1.0 / 3.0),
            Stored::Real(1e300),
            Stored::Real(-2.5e-300),
            Stored::Real(f64::MIN_POSITIVE),
            Stored::Real(1.0),
            Stored::Real(f64::INFINITY),
            Stored::Real(f64::NEG_INFINITY),
            Stored::Text("it's, a\nnew 'line'".into()),
            Stored::Text(String::new()),
            Stored::Text("NULL".into()),
            Stored::Text("é,'".into()),
            Stored::Blob(vec![0, 0xff, b',', b'\'']),
            Stored::Blob(vec![]),
            Stored::Null,
        ];
        let placeholders = vec!["quote(?)"; values.len()].join("||','||");
        let image: String = conn
            .query_row(
                &format!("SELECT {placeholders}"),
                rusqlite::params_from_iter(values.iter()),
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(decode_row(&image).unwrap(), values, "{image}");
    }

    #[test]
    fn malformed_images_are_errors() {
        assert!(decode_row("'abc").is_err());
        assert!(decode_row("X'0'").is_err());
        assert!(decode_row("1x").is_err());
        assert!(decode_row("1,").is_err());
        assert_eq!(
            decode_row("1,NULL").unwrap(),
            [Stored::Integer(1), Stored::Null]
        );
    }
}
