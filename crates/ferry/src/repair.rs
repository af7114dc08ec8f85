//! `ferry verify --repair`: the row changes that make a target table match
//! its source, from the differences verify found, printed as SQL in the
//! target's dialect or applied through the sink's own writer.
//!
//! Applying needs the pipeline stopped (verify holds the pipeline's fence
//! on the target while it repairs): a running pipeline may apply a newer
//! change to the same row, and a repair written after it would put the
//! older value back. A running pipeline repairs online with `ferry resync`.

use ferry_core::{Error, KeylessOp, Sink, Step, TableOps, TableRef};

use crate::verify::{DiffKind, Sides, TableVerdict, read_one, same_row};

/// `--repair print` or `--repair apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Repair {
    /// Write SQL that makes the target match (the report becomes SQL comments).
    Print,
    /// Make the target match, then check again what differed.
    Apply,
}

/// The steps that make `table` on the target match the source, or why
/// there are none.
pub fn steps(table: &TableRef, v: &TableVerdict) -> Result<Vec<Step>, String> {
    if !v.on_target {
        return Err(format!(
            "table {} is missing on the target: run the pipeline, or `ferry resync {}` while it runs",
            table.name, table.name
        ));
    }
    if !v.all_kept() {
        return Err(format!(
            "too many rows differ to list them all: re-copy the table with `ferry resync {}`",
            table.name
        ));
    }
    if table.is_keyless() {
        let ops = v
            .differences
            .iter()
            .filter_map(|d| match d.kind {
                DiffKind::Missing => d.source.clone().map(KeylessOp::Insert),
                DiffKind::Extra => d.target.clone().map(KeylessOp::Delete),
                DiffKind::Different => None,
            })
            .collect();
        return Ok(vec![Step::Keyless {
            table: table.clone(),
            ops,
        }]);
    }
    let mut ops = TableOps::new(table.clone());
    for d in &v.differences {
        match (d.kind, &d.source) {
            (DiffKind::Extra, _) => ops.deletes.push(d.key.clone()),
            (_, Some(row)) => ops.upserts.push(row.clone()),
            (_, None) => return Err(format!("the source row with key {:?} was not read", d.key)),
        }
    }
    Ok(vec![Step::Rows(vec![ops])])
}

/// Applies `steps` to the target in one transaction.
pub async fn apply(sink: &dyn Sink, table: &TableRef, steps: &[Step]) -> Result<(), Error> {
    sink.ensure_tables(std::slice::from_ref(table)).await?;
    let mut w = sink.writer().await?;
    w.begin().await?;
    if let Err(e) = w.apply(steps).await {
        let _ = w.rollback().await;
        return Err(e);
    }
    w.commit(&[]).await
}

/// After a repair: reads again, on both sides, only the rows that
/// differed (a table without a key is compared again whole) and keeps
/// those still different.
pub async fn recheck(sides: &Sides<'_>, v: &mut TableVerdict) -> Result<(), Error> {
    if sides.target_table.is_keyless() {
        let pace = crate::verify::Pace::new(&|_| {}, None);
        let again = crate::verify::verify_table(sides, &pace).await?;
        v.differences = again.differences;
    } else {
        let mut still = Vec::new();
        for d in &v.differences {
            let s = read_one(sides.source, sides.source_table, Some(sides.transform), d).await?;
            let t = read_one(sides.target, sides.target_table, None, d).await?;
            if !same_row(&s, &t) {
                let mut d = d.clone();
                d.source = s;
                d.target = t;
                still.push(d);
            }
        }
        v.differences = still;
    }
    v.recount();
    Ok(())
}
