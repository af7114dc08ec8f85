//! What a pipeline has durably done, as stored in the target.
//!
//! The checkpoint lives in the target database, written by the sink in the
//! same transaction as the data it covers (see [`crate::sink::SinkWriter::commit`]).
//! It is a set of text records `(scope, value)`: sinks store them without
//! interpreting them, and only this module and the owning source decode them.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::position::Position;
use crate::value::Value;

/// Scope of the global applied position.
pub const APPLIED_SCOPE: &str = "applied";
const TABLE_SCOPE_PREFIX: &str = "table:";
/// `eventual` mode: the prefix each apply worker knew to be applied.
const WORKER_APPLIED_PREFIX: &str = "applied-by:";
/// `eventual` mode: the newest position applied to one source table.
const TABLE_APPLIED_PREFIX: &str = "table-applied:";
/// An online re-copy of one source table.
const RECOPY_PREFIX: &str = "recopy:";

/// A range of keys: `lower < key <= upper`, `None` meaning unbounded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyRange {
    pub lower: Option<Vec<Value>>,
    pub upper: Option<Vec<Value>>,
}

impl KeyRange {
    pub fn all() -> Self {
        KeyRange::default()
    }

    pub fn contains(&self, key: &[Value]) -> bool {
        self.lower.as_deref().is_none_or(|l| key > l)
            && self.upper.as_deref().is_none_or(|u| key <= u)
    }
}

/// The key ranges not covered by `skip`, in key order: what a snapshot
/// still has to copy. Overlapping or touching skip ranges merge first; the
/// gap between `(_, a]` and `(b, _]` is `(a, b]`.
pub fn gaps(skip: &[KeyRange]) -> Vec<KeyRange> {
    let mut ranges: Vec<&KeyRange> = skip.iter().collect();
    // `None` as a lower bound means -infinity and sorts first, as Option does.
    ranges.sort_by(|a, b| a.lower.cmp(&b.lower));
    let mut merged: Vec<KeyRange> = Vec::new();
    for r in ranges {
        if let Some(last) = merged.last_mut() {
            let touches = match (&last.upper, &r.lower) {
                (None, _) | (_, None) => true,
                (Some(hi), Some(lo)) => lo <= hi,
            };
            if touches {
                last.upper = match (&last.upper, &r.upper) {
                    (Some(a), Some(b)) => Some(a.max(b).clone()),
                    _ => None,
                };
                continue;
            }
        }
        merged.push(r.clone());
    }
    let mut out = Vec::new();
    let mut start: Option<Vec<Value>> = None;
    for r in merged {
        if let Some(lo) = r.lower {
            out.push(KeyRange {
                lower: start.clone(),
                upper: Some(lo),
            });
        }
        match r.upper {
            Some(hi) => start = Some(hi),
            None => return out,
        }
    }
    out.push(KeyRange {
        lower: start,
        upper: None,
    });
    out
}

/// Rows of `range` were copied from a snapshot taken at `snapshot`.
#[derive(Debug, Clone, PartialEq)]
pub struct CopiedRange {
    pub range: KeyRange,
    pub snapshot: Position,
}

/// Snapshot progress of one source table.
///
/// A table may be copied in several snapshots (a restart cannot reopen the
/// snapshot of the previous run), so each copied key range remembers the
/// snapshot it came from: a change at position `p` to key `k` is already on
/// the target iff some range holds `k` with `p <= snapshot`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableProgress {
    pub ranges: Vec<CopiedRange>,
    /// Every row of the table is copied.
    pub complete: bool,
}

impl TableProgress {
    /// Records a copied range, merged with the ranges of the same snapshot
    /// it touches on either side. Parallel pieces finish out of order; the
    /// record (rewritten with every chunk) then stays a few ranges long
    /// instead of one per chunk.
    pub fn add(&mut self, mut range: KeyRange, snapshot: &Position) {
        let touching = |r: &CopiedRange, a: &Option<Vec<Value>>, b: &Option<Vec<Value>>| {
            r.snapshot == *snapshot && a.is_some() && a == b
        };
        if let Some(i) = self
            .ranges
            .iter()
            .position(|r| touching(r, &r.range.upper, &range.lower))
        {
            range.lower = self.ranges.remove(i).range.lower;
        }
        if let Some(i) = self
            .ranges
            .iter()
            .position(|r| touching(r, &r.range.lower, &range.upper))
        {
            range.upper = self.ranges.remove(i).range.upper;
        }
        self.ranges.push(CopiedRange {
            range,
            snapshot: snapshot.clone(),
        });
    }

    /// Whether a change at `position` to the row with `key` is in a copied
    /// range. A keyless table's row (empty key) cannot be placed in a
    /// range: such a table is copied whole in one snapshot (a restart
    /// copies it again from the start), so any range of it decides.
    pub fn covers(&self, key: Option<&[Value]>, position: &Position) -> bool {
        if key.is_some_and(<[Value]>::is_empty) {
            return self.ranges.iter().any(|r| position <= &r.snapshot);
        }
        self.ranges.iter().any(|r| {
            position <= &r.snapshot
                && (r.range == KeyRange::all() || key.is_some_and(|k| r.range.contains(k)))
        })
    }

    /// The newest snapshot any range came from.
    pub fn newest_snapshot(&self) -> Option<&Position> {
        self.ranges
            .iter()
            .map(|r| &r.snapshot)
            .reduce(|a, b| if b > a { b } else { a })
    }
}

/// An online re-copy of one source table (see
/// [`Change::RecopyStart`](crate::Change::RecopyStart)): started, how far it
/// got, and where it ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecopyProgress {
    /// Why it started, for status and logs.
    pub reason: String,
    /// Every key up to and including this one is re-copied; `None`: no
    /// chunk yet (or, once `done`, the table had no key).
    pub after: Option<Vec<Value>>,
    /// The re-copy ended with the chunk at this position: from there on
    /// the target's table equals the source's.
    pub done: Option<Position>,
}

impl RecopyProgress {
    pub fn started(reason: impl Into<String>) -> Self {
        RecopyProgress {
            reason: reason.into(),
            ..Default::default()
        }
    }

    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }
}

/// A pipeline's durable state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// Every source transaction up to and including this position is applied.
    pub applied: Option<Position>,
    /// `eventual` mode: per source table, every change to it up to and
    /// including this position is applied (tables commit independently, so
    /// some are ahead of `applied`).
    pub table_applied: BTreeMap<String, Position>,
    /// Snapshot state per source table (display name).
    pub tables: BTreeMap<String, TableProgress>,
    /// Online re-copies per source table (display name), running or done.
    pub recopies: BTreeMap<String, RecopyProgress>,
}

/// One stored checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub scope: String,
    pub value: String,
}

impl CheckpointRecord {
    pub fn applied(position: &Position) -> Self {
        CheckpointRecord {
            scope: APPLIED_SCOPE.to_owned(),
            value: position.to_envelope(),
        }
    }

    /// `eventual` mode: the applied prefix as known to one worker. Each
    /// worker's own record only moves forward; the checkpoint's applied
    /// position is the newest of them.
    pub fn applied_by(worker: usize, position: &Position) -> Self {
        CheckpointRecord {
            scope: format!("{WORKER_APPLIED_PREFIX}{worker}"),
            value: position.to_envelope(),
        }
    }

    /// `eventual` mode: every change to `table` up to `position` is applied.
    pub fn table_applied(table: &str, position: &Position) -> Self {
        CheckpointRecord {
            scope: format!("{TABLE_APPLIED_PREFIX}{table}"),
            value: position.to_envelope(),
        }
    }

    /// An online re-copy's progress, as one value list: state, reason, the
    /// last key copied (or NULL), the position it ended at (or NULL).
    pub fn recopy(table: &str, progress: &RecopyProgress) -> Self {
        let state = if progress.is_done() {
            "copied"
        } else {
            "copying"
        };
        let items = [
            Value::Text(state.to_owned()),
            Value::Text(progress.reason.clone()),
            progress.after.clone().map_or(Value::Null, Value::Array),
            progress
                .done
                .as_ref()
                .map_or(Value::Null, |p| Value::Text(p.to_envelope())),
        ];
        CheckpointRecord {
            scope: format!("{RECOPY_PREFIX}{table}"),
            value: crate::codec::encode_values(&items),
        }
    }

    /// A table's progress, stored as one length-prefixed value list:
    /// state, then `(snapshot, lower, upper)` per range.
    pub fn table(table: &str, progress: &TableProgress) -> Self {
        let key = |k: &Option<Vec<Value>>| k.clone().map_or(Value::Null, Value::Array);
        let state = if progress.complete {
            "copied"
        } else {
            "copying"
        };
        let mut items = vec![Value::Text(state.to_owned())];
        for r in &progress.ranges {
            items.push(Value::Text(r.snapshot.to_envelope()));
            items.push(key(&r.range.lower));
            items.push(key(&r.range.upper));
        }
        CheckpointRecord {
            scope: format!("{TABLE_SCOPE_PREFIX}{table}"),
            value: crate::codec::encode_values(&items),
        }
    }
}

impl Checkpoint {
    /// Rebuilds a checkpoint from stored records; unknown or malformed records
    /// are an error, never silently ignored.
    pub fn from_records(records: &[CheckpointRecord]) -> Result<Checkpoint, Error> {
        let mut cp = Checkpoint::default();
        for r in records {
            let bad = |why: String| {
                Error::fatal(format!("checkpoint record {:?} is unreadable: {why}", r.scope))
                    .with_fix("the checkpoint table was edited or written by another version; reset the pipeline")
            };
            if r.scope == APPLIED_SCOPE || r.scope.starts_with(WORKER_APPLIED_PREFIX) {
                let p = Position::from_envelope(&r.value).map_err(|e| bad(e.to_string()))?;
                if cp.applied.as_ref().is_none_or(|a| p > *a) {
                    cp.applied = Some(p);
                }
            } else if let Some(table) = r.scope.strip_prefix(TABLE_APPLIED_PREFIX) {
                let p = Position::from_envelope(&r.value).map_err(|e| bad(e.to_string()))?;
                cp.table_applied.insert(table.to_owned(), p);
            } else if let Some(table) = r.scope.strip_prefix(RECOPY_PREFIX) {
                let items = crate::codec::decode_values(&r.value)
                    .ok_or_else(|| bad("not a value list".into()))?;
                let [Value::Text(state), Value::Text(reason), after, done] = items.as_slice()
                else {
                    return Err(bad("bad re-copy record".into()));
                };
                let after = match after {
                    Value::Null => None,
                    Value::Array(k) => Some(k.clone()),
                    _ => return Err(bad("bad key".into())),
                };
                let done = match (state.as_str(), done) {
                    ("copying", Value::Null) => None,
                    ("copied", Value::Text(p)) => {
                        Some(Position::from_envelope(p).map_err(|e| bad(e.to_string()))?)
                    }
                    _ => return Err(bad(format!("unknown state {state:?}"))),
                };
                cp.recopies.insert(
                    table.to_owned(),
                    RecopyProgress {
                        reason: reason.clone(),
                        after,
                        done,
                    },
                );
            } else if let Some(table) = r.scope.strip_prefix(TABLE_SCOPE_PREFIX) {
                let items = crate::codec::decode_values(&r.value)
                    .ok_or_else(|| bad("not a value list".into()))?;
                let complete = match items.first() {
                    Some(Value::Text(s)) if s == "copied" => true,
                    Some(Value::Text(s)) if s == "copying" => false,
                    other => return Err(bad(format!("unknown state {other:?}"))),
                };
                let mut progress = TableProgress {
                    ranges: Vec::new(),
                    complete,
                };
                for chunk in items[1..].chunks(3) {
                    let key = |v: &Value| match v {
                        Value::Null => Ok(None),
                        Value::Array(k) => Ok(Some(k.clone())),
                        _ => Err(bad("bad key".into())),
                    };
                    let [Value::Text(pos), lower, upper] = chunk else {
                        return Err(bad("bad range".into()));
                    };
                    progress.ranges.push(CopiedRange {
                        snapshot: Position::from_envelope(pos).map_err(|e| bad(e.to_string()))?,
                        range: KeyRange {
                            lower: key(lower)?,
                            upper: key(upper)?,
                        },
                    });
                }
                cp.tables.insert(table.to_owned(), progress);
            } else {
                return Err(bad("unknown scope".into()));
            }
        }
        Ok(cp)
    }

    pub fn to_records(&self) -> Vec<CheckpointRecord> {
        let mut out: Vec<CheckpointRecord> =
            self.applied.iter().map(CheckpointRecord::applied).collect();
        out.extend(
            self.tables
                .iter()
                .map(|(t, p)| CheckpointRecord::table(t, p)),
        );
        out.extend(
            self.table_applied
                .iter()
                .map(|(t, p)| CheckpointRecord::table_applied(t, p)),
        );
        out.extend(
            self.recopies
                .iter()
                .map(|(t, p)| CheckpointRecord::recopy(t, p)),
        );
        out
    }

    /// Whether `eventual` mode already applied changes to `table` at `position`.
    pub fn applied_to_table(&self, table: &str, position: &Position) -> bool {
        self.table_applied.get(table).is_some_and(|p| position <= p)
    }

    /// Whether a change to `table` (key `key`) at `position` is already on
    /// the target because a snapshot copy of the table included it.
    pub fn covered_by_snapshot(
        &self,
        table: &str,
        key: Option<&[Value]>,
        position: &Position,
    ) -> bool {
        self.tables
            .get(table)
            .is_some_and(|p| p.covers(key, position))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::position::SqlitePosition;

    fn pos(seq: i64) -> Position {
        Position::Sqlite(SqlitePosition { seq })
    }

    #[test]
    fn records_round_trip() {
        let mut cp = Checkpoint {
            applied: Some(pos(9)),
            ..Default::default()
        };
        let mut a = TableProgress::default();
        a.add(KeyRange::all(), &pos(3));
        a.complete = true;
        cp.tables.insert("a".into(), a);
        let mut b = TableProgress::default();
        b.add(
            KeyRange {
                lower: None,
                upper: Some(vec![Value::Int(7), Value::Text("x;\ty".into())]),
            },
            &pos(4),
        );
        b.add(
            KeyRange {
                lower: Some(vec![Value::Int(9)]),
                upper: None,
            },
            &pos(5),
        );
        cp.tables.insert("b".into(), b);
        cp.tables.insert("c".into(), TableProgress::default());
        cp.table_applied.insert("a".into(), pos(12));
        cp.recopies
            .insert("a".into(), RecopyProgress::started("a schema change"));
        cp.recopies.insert(
            "b".into(),
            RecopyProgress {
                reason: "gap".into(),
                after: Some(vec![Value::Int(7), Value::Text("x".into())]),
                done: None,
            },
        );
        cp.recopies.insert(
            "c".into(),
            RecopyProgress {
                reason: "ferry resync".into(),
                after: Some(vec![Value::Int(70)]),
                done: Some(pos(30)),
            },
        );
        assert_eq!(Checkpoint::from_records(&cp.to_records()).unwrap(), cp);
    }

    #[test]
    fn ranges_finished_out_of_order_merge_into_one() {
        let k = |n: i64| Some(vec![Value::Int(n)]);
        let r = |a: Option<Vec<Value>>, b: Option<Vec<Value>>| KeyRange { lower: a, upper: b };
        let mut p = TableProgress::default();
        // Four pieces of one snapshot, finished 3, 1, 4, 2.
        p.add(r(k(20), k(30)), &pos(1));
        p.add(r(None, k(10)), &pos(1));
        p.add(r(k(30), None), &pos(1));
        assert_eq!(p.ranges.len(), 2);
        p.add(r(k(10), k(20)), &pos(1));
        assert_eq!(p.ranges.len(), 1);
        assert_eq!(p.ranges[0].range, KeyRange::all());
        // Ranges of different snapshots stay apart (each remembers its own).
        let mut q = TableProgress::default();
        q.add(r(None, k(10)), &pos(1));
        q.add(r(k(10), None), &pos(2));
        assert_eq!(q.ranges.len(), 2);
        assert!(q.covers(Some(&[Value::Int(5)]), &pos(1)));
        assert!(!q.covers(Some(&[Value::Int(5)]), &pos(2)));
        assert!(q.covers(Some(&[Value::Int(50)]), &pos(2)));
    }

    #[test]
    fn applied_is_the_newest_of_the_global_and_worker_records() {
        let records = vec![
            CheckpointRecord::applied(&pos(5)),
            CheckpointRecord::applied_by(0, &pos(9)),
            CheckpointRecord::applied_by(1, &pos(7)),
            CheckpointRecord::table_applied("t", &pos(11)),
        ];
        let cp = Checkpoint::from_records(&records).unwrap();
        assert_eq!(cp.applied, Some(pos(9)));
        assert!(cp.applied_to_table("t", &pos(11)));
        assert!(!cp.applied_to_table("t", &pos(12)));
        assert!(!cp.applied_to_table("u", &pos(1)));
    }

    #[test]
    fn unknown_records_are_errors() {
        let r = CheckpointRecord {
            scope: "weird".into(),
            value: "1".into(),
        };
        assert!(Checkpoint::from_records(&[r]).is_err());
        let r = CheckpointRecord {
            scope: "table:t".into(),
            value: crate::codec::encode_values(&[
                Value::Text("copied".into()),
                Value::Text("ferry.pos.v7 x".into()),
                Value::Null,
                Value::Null,
            ]),
        };
        assert!(Checkpoint::from_records(&[r]).is_err());
    }

    /// An integer key bound (also used by `piece`'s tests).
    pub(crate) fn k(i: i64) -> Option<Vec<Value>> {
        Some(vec![Value::Int(i)])
    }

    pub(crate) fn r(lower: Option<Vec<Value>>, upper: Option<Vec<Value>>) -> KeyRange {
        KeyRange { lower, upper }
    }

    #[test]
    fn gaps_are_the_complement_of_the_skipped_ranges() {
        assert_eq!(gaps(&[]), vec![KeyRange::all()]);
        assert_eq!(gaps(&[KeyRange::all()]), vec![]);
        assert_eq!(gaps(&[r(None, k(10))]), vec![r(k(10), None)]);
        assert_eq!(gaps(&[r(k(10), None)]), vec![r(None, k(10))]);
        // Unsorted, touching and overlapping ranges.
        let skip = [
            r(k(50), k(60)),
            r(None, k(10)),
            r(k(10), k(20)),
            r(k(15), k(30)),
        ];
        assert_eq!(gaps(&skip), vec![r(k(30), k(50)), r(k(60), None)]);
        // A range inside an earlier one changes nothing.
        let skip = [r(k(0), k(100)), r(k(20), k(30))];
        assert_eq!(gaps(&skip), vec![r(None, k(0)), r(k(100), None)]);
        let skip = [
            r(k(20), k(30)),
            r(None, k(10)),
            r(k(10), k(15)),
            r(k(12), k(14)),
        ];
        assert_eq!(gaps(&skip), vec![r(k(15), k(20)), r(k(30), None)]);
    }

    #[test]
    fn adjacent_ranges_merge() {
        let mut p = TableProgress::default();
        p.add(
            KeyRange {
                lower: None,
                upper: Some(vec![Value::Int(10)]),
            },
            &pos(5),
        );
        p.add(
            KeyRange {
                lower: Some(vec![Value::Int(10)]),
                upper: Some(vec![Value::Int(20)]),
            },
            &pos(5),
        );
        assert_eq!(p.ranges.len(), 1);
        p.add(
            KeyRange {
                lower: Some(vec![Value::Int(20)]),
                upper: None,
            },
            &pos(6),
        );
        assert_eq!(p.ranges.len(), 2);
    }

    #[test]
    fn snapshot_coverage() {
        let mut cp = Checkpoint::default();
        let mut a = TableProgress::default();
        a.add(KeyRange::all(), &pos(5));
        cp.tables.insert("a".into(), a);
        assert!(cp.covered_by_snapshot("a", None, &pos(5)));
        assert!(!cp.covered_by_snapshot("a", None, &pos(6)));
        let mut b = TableProgress::default();
        b.add(
            KeyRange {
                lower: None,
                upper: Some(vec![Value::Int(10)]),
            },
            &pos(5),
        );
        cp.tables.insert("b".into(), b);
        assert!(cp.covered_by_snapshot("b", Some(&[Value::Int(10)]), &pos(4)));
        assert!(!cp.covered_by_snapshot("b", Some(&[Value::Int(11)]), &pos(4)));
        assert!(!cp.covered_by_snapshot("zz", Some(&[Value::Int(1)]), &pos(1)));
    }

    #[test]
    fn a_keyless_table_is_covered_by_the_snapshot_it_was_copied_in() {
        let mut p = TableProgress::default();
        p.add(
            KeyRange {
                lower: None,
                upper: Some(vec![Value::Int(9)]),
            },
            &pos(5),
        );
        // A change to a keyless table (empty key) at or before the
        // snapshot is in the copy, whatever range its row was read in.
        assert!(p.covers(Some(&[]), &pos(5)));
        assert!(!p.covers(Some(&[]), &pos(6)));
        // Keyed rows are still judged by their range.
        assert!(!p.covers(Some(&[Value::Int(10)]), &pos(5)));
    }
}
