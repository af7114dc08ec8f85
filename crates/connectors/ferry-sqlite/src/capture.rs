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

use rusqlite::types::Value as Stored;
use rusqlite::{Connection, OptionalExtension, params};

use crate::connection::ident;

mod displaced;
mod triggers;

pub(crate) use triggers::{DisplacementUpdate, capture_state, install, update_displacement};

const CREATE_CHANGES: &str = "CREATE TABLE IF NOT EXISTS _ferry_changes(\
     seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, op TEXT NOT NULL, \
     old_row TEXT, new_row TEXT, ts INTEGER)";
const CREATE_CONSUMERS: &str = "CREATE TABLE IF NOT EXISTS _ferry_consumers(\
     pipeline TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL)";
/// Wall-clock time of the writing statement in microseconds since the Unix
/// epoch: the closest SQLite gets to a commit time inside a trigger.
const NOW_MICROS: &str = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";

/// The position `pipeline` acknowledged (`None`: not a consumer).
pub(crate) fn acked(conn: &Connection, pipeline: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT acked_seq FROM _ferry_consumers WHERE pipeline = ?1",
        [pipeline],
        |r| r.get(0),
    )
    .optional()
}

/// A marker row for `pipeline` about `table` (`op`: [`RECOPY_OP`] or
/// [`STRUCTURE_OP`]): it has a seq like any change, so the stream meets it
/// exactly where it was written. `new_row` names the pipeline.
pub(crate) fn mark(
    conn: &Connection,
    table: &str,
    op: &str,
    pipeline: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO _ferry_changes(tbl, op, old_row, new_row, ts) \
             VALUES (?1, ?3, NULL, ?2, {NOW_MICROS})"
        ),
        params![table, pipeline, op],
    )?;
    Ok(())
}

/// `ferry resync`: re-copy the table from here on.
pub(crate) const RECOPY_OP: &str = "R";
/// The table's columns changed here: the target is altered and the table
/// re-copied (written by the source that met the change).
pub(crate) const STRUCTURE_OP: &str = "S";

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as i64)
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

/// The change table's current end: the highest seq ever handed out (a
/// new table's first seq comes after its seed, and pruning empties it).
pub(crate) const END_SQL: &str = "SELECT max(\
     COALESCE((SELECT max(seq) FROM _ferry_changes), 0), \
     COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'), 0))";

/// The extent of the change table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extent {
    /// Lowest seq still present (`None`: the table is empty).
    pub(crate) min: Option<i64>,
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
