//! Change rows of the capture table turned into ferry [`Change`]s.

use std::path::Path;

use ferry_core::{Change, Error, Result, TableRef, TableSchema, Value};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use crate::capture::{self, ChangeRow, DisplacementUpdate};
use crate::connection::db_error;
use crate::reader::Side;

/// A captured table's columns no longer match what was copied. Raised when
/// the schema version moves and the columns differ, and when a change row
/// has another number of values than the table has columns.
pub(crate) fn drift_error(table: &str) -> Error {
    Error::fatal(format!(
        "table {table} changed structure (added/dropped columns); ferry does not capture \
         SQLite DDL yet: changes written since no longer match the copied structure"
    ))
    .with("table", table)
    .with_fix(format!(
        "stop writes to {table}, run `ferry reset <pipeline.toml>` and run again to re-copy"
    ))
}

/// Whether the row images of `row` have as many values as `table` has
/// columns (captured before a structure change, they do not).
pub(crate) fn fits(table: &TableRef, row: &ChangeRow) -> bool {
    [&row.old, &row.new].iter().all(|image| {
        image.as_deref().is_none_or(|text| {
            capture::decode_row(text).is_ok_and(|v| v.len() == table.columns.len())
        })
    })
}

/// A captured table's unique indexes changed while the stream runs: its
/// triggers for rows `REPLACE` removes are brought up to date when that
/// provably lost nothing (see [`capture::update_displacement`]; `since` is
/// the last change seq known to be captured before the change), else this
/// fails, since a row removed through the new index may have been missed.
pub(crate) fn follow_unique_indexes(
    c: &mut Connection,
    path: &Path,
    table: &TableSchema,
    since: i64,
) -> Result<()> {
    let name = &table.name.name;
    let err = |e| db_error(path, &format!("updating the capture triggers of {name}"), e);
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    match capture::update_displacement(&tx, table, since).map_err(err)? {
        DisplacementUpdate::Updated => {
            tx.commit().map_err(err)?;
            tracing::info!(table = %name, "unique indexes of {name} changed; its capture triggers follow them");
            Ok(())
        }
        DisplacementUpdate::Unsafe => Err(Error::fatal(format!(
            "a unique index of table {name} was created or changed, and {name} was written \
             before ferry could extend its capture triggers to it: a row an INSERT/UPDATE OR \
             REPLACE removed through that index may not have been captured"
        ))
        .with("table", name.as_str())
        .with_fix(format!(
            "run `ferry reset <pipeline.toml>` and run again to re-copy {name}; create unique \
             indexes on captured tables while nothing writes to them, and ferry follows by itself"
        ))),
    }
}

/// Turns one change row into a [`Change`] of `table`; `side` is the
/// source's, with the pipeline's row filters.
pub(crate) fn decode_change(table: &TableRef, row: &ChangeRow, side: &Side) -> Result<Change> {
    let image = |text: &Option<String>, which: &str| -> Result<Vec<Value>> {
        let text = text.as_deref().ok_or_else(|| {
            Error::fatal(format!(
                "change {} of {} has no {which} image",
                row.seq, row.table
            ))
        })?;
        let stored = capture::decode_row(text).map_err(|why| {
            Error::fatal(format!(
                "change {} of {} is unreadable: {why}",
                row.seq, row.table
            ))
            .with_fix("the change table was edited by hand; reset the pipeline to re-copy")
        })?;
        if stored.len() != table.columns.len() {
            return Err(drift_error(&table.name.name).with(
                "change",
                format!(
                    "seq {} has {} values, the table has {} columns",
                    row.seq,
                    stored.len(),
                    table.columns.len()
                ),
            ));
        }
        crate::reader::decode_row(table, |i| Ok(ValueRef::from(&stored[i])), side)
            .map_err(|e| e.with("position", format!("seq {}", row.seq)))
    };
    let table_ref = TableRef::clone(table);
    Ok(match row.op.as_str() {
        "I" => Change::Insert {
            table: table_ref,
            row: image(&row.new, "new")?,
        },
        "U" => Change::Update {
            table: table_ref,
            before: Some(image(&row.old, "old")?),
            after: image(&row.new, "new")?,
        },
        "D" => Change::Delete {
            table: table_ref,
            before: image(&row.old, "old")?,
        },
        other => {
            return Err(Error::fatal(format!(
                "change {} of {} has unknown operation {other:?}",
                row.seq, row.table
            )));
        }
    })
}
