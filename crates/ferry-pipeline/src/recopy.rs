//! Online re-copies as the pipeline sees them, and the consistency signal.
//!
//! A re-copy of a table runs inside the change stream: the source delivers
//! [`Change::RecopyStart`] and then [`Change::RecopyRows`] chunks, each the
//! exact state of one key range at its position (see
//! [`ferry_core::Source::recopy`]). The pipeline applies a chunk in stream
//! order as [`ferry_core::Step::Replace`], so every range is exact from its
//! chunk on and the table equals the source's once the last chunk is
//! applied. This module keeps, per source table, how far each re-copy got
//! and the checkpoint record each chunk commits with (a restart continues
//! from there), and decides from when the whole target is consistent:
//!
//! * while a re-copy runs, never (its table mixes re-copied and stale
//!   ranges);
//! * otherwise from the newest of: every snapshot position the selected
//!   tables were copied at (a copy resumed after a crash holds ranges of
//!   two snapshots until the stream passes the newer), and every re-copy's
//!   last chunk.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::{Change, CheckpointRecord, Position, RecopyProgress};

use crate::stats::{Stats, TargetConsistency};

pub(crate) struct Recopies {
    /// Per source table (display name).
    tables: BTreeMap<String, RecopyProgress>,
    /// Newest snapshot position among the selected tables' copies.
    snapshots: Option<Position>,
    /// The applied position the target has reached.
    applied: Option<Position>,
    /// The target is consistent (and the log line said so).
    consistent: bool,
    stats: Arc<Stats>,
}

fn newest(a: Option<Position>, b: Option<&Position>) -> Option<Position> {
    match (a, b) {
        (Some(a), Some(b)) if *b > a => Some(b.clone()),
        (Some(a), _) => Some(a),
        (None, b) => b.cloned(),
    }
}

impl Recopies {
    pub(crate) fn new(
        tables: BTreeMap<String, RecopyProgress>,
        snapshots: Option<Position>,
        applied: Option<Position>,
        stats: Arc<Stats>,
    ) -> Self {
        for (t, p) in &tables {
            if !p.is_done() {
                stats.table(t, |s| s.recopy = Some(describe(p)));
            }
        }
        let mut r = Recopies {
            tables,
            snapshots,
            applied,
            consistent: false,
            stats,
        };
        r.update_consistency();
        r
    }

    /// Follows a re-copy change (of source table `change.table()`, which
    /// the target calls `target`) of a transaction at `position`; returns
    /// the record to commit with it.
    pub(crate) fn observe(
        &mut self,
        change: &Change,
        position: &Position,
        target: &str,
    ) -> Option<CheckpointRecord> {
        let name = match change {
            Change::RecopyStart { table, reason } => {
                let name = table.name.to_string();
                tracing::info!(table = %name, %position, %reason,
                    "re-copying the table online while the stream flows");
                let p = RecopyProgress::started(reason.clone());
                self.tables.insert(name.clone(), p);
                name
            }
            Change::RecopyRows { table, range, rows } => {
                let name = table.name.to_string();
                let p = self.tables.entry(name.clone()).or_default();
                match &range.upper {
                    Some(upper) if !table.is_keyless() => p.after = Some(upper.clone()),
                    _ => {
                        p.done = Some(position.clone());
                        tracing::info!(table = %name, %position,
                            "online re-copy done: the table equals the source's from here on");
                    }
                }
                let n = rows.len() as u64;
                Stats::add(&self.stats.recopy_rows, n);
                self.stats.table(target, |s| s.recopy_rows += n);
                name
            }
            _ => return None,
        };
        let progress = self.tables.get(&name)?;
        self.stats
            .table(target, |s| s.recopy = Some(describe(progress)));
        let record = CheckpointRecord::recopy(&name, progress);
        self.update_consistency();
        Some(record)
    }

    /// The target reached `applied`.
    pub(crate) fn applied(&mut self, applied: &Position) {
        self.applied = Some(applied.clone());
        if !self.consistent {
            self.update_consistency();
        }
    }

    fn update_consistency(&mut self) {
        let running: Vec<&String> = self
            .tables
            .iter()
            .filter(|(_, p)| !p.is_done())
            .map(|(t, _)| t)
            .collect();
        if !running.is_empty() {
            self.consistent = false;
            self.stats.set_consistency(TargetConsistency::Pending {
                at: None,
                why: format!(
                    "online re-copy of {} running",
                    running
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
            return;
        }
        let mut at = self.snapshots.clone();
        for p in self.tables.values() {
            at = newest(at, p.done.as_ref());
        }
        let reached = match (&at, &self.applied) {
            (None, _) => true,
            (Some(at), Some(applied)) => applied >= at,
            (Some(_), None) => false,
        };
        if !reached {
            self.consistent = false;
            self.stats.set_consistency(TargetConsistency::Pending {
                at: at.as_ref().map(Position::to_string),
                why: "tables hold rows of different source positions until the stream passes it"
                    .into(),
            });
            return;
        }
        let since = at.or_else(|| self.applied.clone());
        if !self.consistent {
            match &since {
                Some(p) => tracing::info!(position = %p, "target consistent at {p}"),
                None => tracing::info!("target consistent"),
            }
            self.consistent = true;
        }
        self.stats.set_consistency(TargetConsistency::Consistent {
            since: since.map_or_else(|| "the start".into(), |p| p.to_string()),
        });
    }
}

fn describe(p: &RecopyProgress) -> String {
    match (&p.done, &p.after) {
        (Some(at), _) => format!("re-copied online at {at} ({})", p.reason),
        (None, Some(k)) => format!(
            "re-copying online ({}), up to key {}",
            p.reason,
            ferry_core::display_key(k)
        ),
        (None, None) => format!("re-copying online ({})", p.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, KeyRange, SqlitePosition, TableName, TableSchema, Value};

    fn pos(seq: i64) -> Position {
        Position::Sqlite(SqlitePosition { seq })
    }

    fn table() -> ferry_core::TableRef {
        Arc::new(TableSchema {
            name: TableName::bare("t"),
            columns: vec![Column {
                name: "id".into(),
                ty: ColumnType::Int64,
                nullable: false,
                source_type: String::new(),
                user_type: None,
            }],
            key: vec![0],
            version: 1,
            key_deferrable: false,
        })
    }

    fn rows(upper: Option<i64>) -> Change {
        Change::RecopyRows {
            table: table(),
            range: KeyRange {
                lower: None,
                upper: upper.map(|u| vec![Value::Int(u)]),
            },
            rows: vec![vec![Value::Int(1)]],
        }
    }

    fn consistency(r: &Recopies) -> TargetConsistency {
        r.stats.consistency()
    }

    #[test]
    fn a_copy_from_two_snapshots_is_consistent_once_the_newer_is_applied() {
        let stats = Arc::new(Stats::new());
        let mut r = Recopies::new(BTreeMap::new(), Some(pos(20)), Some(pos(10)), stats);
        assert!(matches!(
            consistency(&r),
            TargetConsistency::Pending { at: Some(_), .. }
        ));
        r.applied(&pos(19));
        assert!(matches!(consistency(&r), TargetConsistency::Pending { .. }));
        r.applied(&pos(20));
        assert_eq!(
            consistency(&r),
            TargetConsistency::Consistent {
                since: pos(20).to_string()
            }
        );
    }

    #[test]
    fn a_running_recopy_keeps_the_target_inconsistent_until_its_last_chunk() {
        let stats = Arc::new(Stats::new());
        let mut r = Recopies::new(BTreeMap::new(), None, Some(pos(5)), stats);
        assert!(matches!(
            consistency(&r),
            TargetConsistency::Consistent { .. }
        ));
        let start = Change::RecopyStart {
            table: table(),
            reason: "test".into(),
        };
        let rec = r.observe(&start, &pos(6), "t").expect("a record");
        assert_eq!(rec.scope, "recopy:t");
        assert!(matches!(
            consistency(&r),
            TargetConsistency::Pending { at: None, .. }
        ));
        r.observe(&rows(Some(10)), &pos(7), "t");
        r.applied(&pos(7));
        assert!(matches!(consistency(&r), TargetConsistency::Pending { .. }));
        assert_eq!(r.tables["t"].after, Some(vec![Value::Int(10)]));
        // The last chunk ends it; consistent once applied reaches it.
        r.observe(&rows(None), &pos(9), "t");
        assert_eq!(r.tables["t"].done, Some(pos(9)));
        assert!(matches!(
            consistency(&r),
            TargetConsistency::Pending { at: Some(_), .. }
        ));
        r.applied(&pos(9));
        assert_eq!(
            consistency(&r),
            TargetConsistency::Consistent {
                since: pos(9).to_string()
            }
        );
    }
}
