//! Start-up decisions on the checkpoint, before anything is copied or
//! streamed: tables that left the selection, and whether the source can
//! continue exactly where the target's checkpoint left off.
//!
//! The rules, in one place for every source kind:
//!
//! * A table that is no longer selected loses its copy state: its target
//!   table is no longer kept up to date, so when it is selected again it
//!   is copied again from the start, like a new table.
//! * The stream resumes from the checkpoint only if the source says it can
//!   deliver every transaction after it ([`Source::continuity`]). If it
//!   cannot (slot dropped or recreated, log purged, change rows pruned),
//!   ferry never streams across the gap: with `on_gap = "fail"` it stops
//!   naming the gap and the fix; with `on_gap = "resync"` it resumes where
//!   the source can and re-copies every copied table online, so the target
//!   converges; tables whose first copy was not finished are copied again
//!   from the start.
//! * A copied table whose target structure had to be altered at start (the
//!   source's columns changed while ferry was stopped) is re-copied online:
//!   an added column would otherwise stay NULL where the source has values.
//! * An online re-copy of a table that is not selected, or that is being
//!   copied from the start, is moot: it is recorded as ended.

use std::collections::BTreeSet;

use ferry_core::{
    Checkpoint, CheckpointRecord, Continuity, Error, Position, RecopyProgress, Result, Sink,
    Source, Step, TableProgress, TableRef,
};

use crate::options::{OnGap, Options};

pub(crate) struct StartUp {
    /// Display names of the selected source tables.
    pub selected: BTreeSet<String>,
    /// Records to commit before anything else happens.
    pub records: Vec<CheckpointRecord>,
}

impl StartUp {
    /// Applies the rules above to `cp` (in memory) and returns the records
    /// that make the same changes durable.
    pub(crate) async fn plan(
        cp: &mut Checkpoint,
        tables: &[TableRef],
        altered: &[String],
        source: &mut dyn Source,
        options: &Options,
    ) -> Result<StartUp> {
        let selected: BTreeSet<String> = tables.iter().map(|t| t.name.to_string()).collect();
        let mut records = Vec::new();

        for (name, p) in cp.tables.iter_mut() {
            if !selected.contains(name) && *p != TableProgress::default() {
                tracing::info!(table = %name,
                    "table is no longer selected: its target table is no longer kept up to date, \
                     and it is copied again from the start if it is selected again");
                *p = TableProgress::default();
                records.push(CheckpointRecord::table(name, p));
            }
        }

        let resume_from = cp.applied.clone().or_else(|| {
            cp.tables
                .values()
                .flat_map(|p| p.ranges.iter().map(|r| &r.snapshot))
                .cloned()
                .reduce(|a, b| if b < a { b } else { a })
        });
        if let Some(from) = &resume_from
            && let Continuity::Gap { reason, resume } = source.continuity(from).await?
        {
            records.extend(on_gap(cp, &selected, from, &reason, resume, options)?);
        }

        for name in altered {
            let copied = cp.tables.get(name).is_some_and(|p| p.complete);
            let running = cp.recopies.get(name).is_some_and(|r| !r.is_done());
            if copied && !running {
                let r = RecopyProgress::started(
                    "its columns changed while ferry was stopped (the target table was altered to match)",
                );
                records.push(CheckpointRecord::recopy(name, &r));
                cp.recopies.insert(name.clone(), r);
            }
        }

        // Re-copies that no longer make sense end here.
        let end = cp.applied.clone().or(resume_from);
        for (name, r) in cp.recopies.iter_mut().filter(|(_, r)| !r.is_done()) {
            let copied = cp.tables.get(name).is_some_and(|p| p.complete);
            if (!selected.contains(name) || !copied)
                && let Some(end) = &end
            {
                tracing::info!(table = %name, "online re-copy dropped: the table is not selected or is copied again from the start");
                r.done = Some(end.clone());
                records.push(CheckpointRecord::recopy(name, r));
            }
        }
        Ok(StartUp { selected, records })
    }
}

/// The checkpoint is at `from`, but the source can only continue after
/// `resume`.
fn on_gap(
    cp: &mut Checkpoint,
    selected: &BTreeSet<String>,
    from: &Position,
    reason: &str,
    resume: Position,
    options: &Options,
) -> Result<Vec<CheckpointRecord>> {
    let what = format!(
        "the source cannot continue from the target's checkpoint at {from}: {reason}; \
         the changes made after it cannot be replicated"
    );
    if options.on_gap == OnGap::Fail {
        return Err(Error::fatal(format!(
            "{what}, and streaming on would leave the target silently different from the source"
        ))
        .with("checkpoint", from.to_string())
        .with("source can resume after", resume.to_string())
        .with_fix(
            "set `on_gap = \"resync\"` in the pipeline's [source] section to continue and re-copy \
             every table online (the target converges while the stream flows), or run \
             `ferry reset` to copy everything again from the start",
        ));
    }
    if resume <= *from {
        return Err(Error::fatal(format!(
            "{what}; the source's positions start over below the checkpoint ({resume}), \
             so the two cannot be ordered"
        ))
        .with_fix("run `ferry reset` to copy everything again from the start"));
    }
    tracing::warn!(checkpoint = %from, %resume,
        "{what}: resuming after {resume} and re-copying every table online (on_gap = \"resync\")");
    let mut records = vec![CheckpointRecord::applied(&resume)];
    for name in selected {
        match cp.tables.get_mut(name) {
            Some(p) if p.complete => {
                let r = RecopyProgress::started(format!("the source lost changes: {reason}"));
                records.push(CheckpointRecord::recopy(name, &r));
                cp.recopies.insert(name.clone(), r);
            }
            Some(p) => {
                *p = TableProgress::default();
                records.push(CheckpointRecord::table(name, p));
            }
            None => {}
        }
    }
    cp.applied = Some(resume);
    Ok(records)
}

/// Applies `steps` and commits `records`, in one target transaction.
pub(crate) async fn commit_records(
    sink: &dyn Sink,
    steps: &[Step],
    records: &[CheckpointRecord],
) -> Result<()> {
    let mut w = sink.writer().await?;
    w.begin().await?;
    if !steps.is_empty() {
        w.apply(steps).await?;
    }
    w.commit(records).await
}
