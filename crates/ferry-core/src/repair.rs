//! Repair scripts (`ferry verify --repair print`): the order of statements
//! is the same for every target; each sink says how one statement reads in
//! its dialect ([`RepairSql`]).

use std::fmt::Write;

use crate::batch::{KeylessOp, Step};
use crate::error::{Error, Result};
use crate::schema::TableRef;
use crate::value::Value;

/// One target's SQL for the statements of a repair script, with literals.
pub trait RepairSql {
    /// Deletes the row with key `key`.
    fn delete_by_key(&self, table: &TableRef, key: &[Value]) -> Result<String>;
    /// Inserts `row` as it is (identity and generated columns as the
    /// dialect allows).
    fn insert(&self, table: &TableRef, row: &[Value]) -> Result<String>;
    /// Deletes one row equal to `row` from a table without a key.
    fn delete_one(&self, table: &TableRef, row: &[Value]) -> Result<String>;
}

/// The script for `steps`, one transaction: a row to write is deleted by
/// its key and inserted again (no upsert, so a pre-created table with a
/// deferrable key takes it too); a table without a key gets its inserts
/// and one-row deletes in order.
pub fn render_repair(steps: &[Step], sql: &dyn RepairSql) -> Result<String> {
    let mut out = String::from("BEGIN;\n");
    for step in steps {
        match step {
            Step::Rows(ops) => {
                for t in ops {
                    for key in &t.deletes {
                        writeln!(out, "{}", sql.delete_by_key(&t.table, key)?).ok();
                    }
                    for row in t.upserts.iter().chain(&t.updates) {
                        writeln!(
                            out,
                            "{}",
                            sql.delete_by_key(&t.table, &t.table.key_of(row))?
                        )
                        .ok();
                        writeln!(out, "{}", sql.insert(&t.table, row)?).ok();
                    }
                }
            }
            Step::Keyless { table, ops } => {
                for op in ops {
                    let statement = match op {
                        KeylessOp::Insert(row) => sql.insert(table, row)?,
                        KeylessOp::Delete(row) => sql.delete_one(table, row)?,
                        KeylessOp::Update { .. } => {
                            return Err(Error::fatal("a keyless update cannot be printed"));
                        }
                    };
                    writeln!(out, "{statement}").ok();
                }
            }
            _ => return Err(Error::fatal("only row changes can be printed as SQL")),
        }
    }
    out.push_str("COMMIT;\n");
    Ok(out)
}
