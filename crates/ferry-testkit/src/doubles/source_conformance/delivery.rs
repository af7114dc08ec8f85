//! The suite's side of a source: the transactions it wrote (the model),
//! and what the source delivered, checked against them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferry_core::{Change, KeyRange, Position, Source, SourceEvent, Value};

use super::{SourceWrite, fail};

/// A row of a suite table: `(table, id)` → `(name, qty)`.
pub(super) type State = BTreeMap<(String, i64), (String, i64)>;

/// One row operation of a script transaction, before the suite names it.
pub(super) enum Op {
    Ins(&'static str, i64, i64),
    Upd(&'static str, i64, i64),
    Del(&'static str, i64),
}

/// What a row change says, reduced to what the suite compares.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    table: String,
    kind: char,
    id: i64,
    /// `(name, qty)` written by an insert or update.
    values: Option<(String, i64)>,
}

/// The transactions the suite committed, in commit order (`txns[k - 1]`
/// is transaction `k`). Every insert or update of transaction `k` writes
/// `name = "t<k>"`, and a row is deleted at most once, so each delivered
/// change names its transaction.
#[derive(Default)]
pub(super) struct Model {
    txns: Vec<Vec<SourceWrite>>,
    deleted_by: HashMap<(String, i64), usize>,
}

impl Model {
    /// Records the next transaction and returns its writes.
    pub fn add(&mut self, ops: &[Op]) -> Vec<SourceWrite> {
        let k = self.txns.len() + 1;
        let name = format!("t{k}");
        let writes: Vec<SourceWrite> = ops
            .iter()
            .map(|op| match *op {
                Op::Ins(table, id, qty) => SourceWrite::Insert {
                    table,
                    id,
                    name: name.clone(),
                    qty,
                },
                Op::Upd(table, id, qty) => SourceWrite::Update {
                    table,
                    id,
                    name: name.clone(),
                    qty,
                },
                Op::Del(table, id) => SourceWrite::Delete { table, id },
            })
            .collect();
        for w in &writes {
            if let SourceWrite::Delete { table, id } = w {
                let first = self.deleted_by.insert((table.to_string(), *id), k);
                assert!(first.is_none(), "the suite deletes {table} {id} twice");
            }
        }
        self.txns.push(writes.clone());
        writes
    }

    /// Number of transactions written so far.
    pub fn len(&self) -> usize {
        self.txns.len()
    }

    /// The rows after the first `k` transactions.
    pub fn state(&self, k: usize) -> State {
        let mut rows = State::new();
        for w in self.txns.iter().take(k).flatten() {
            match w.parts() {
                (table, id, Some((name, qty))) => {
                    rows.insert((table.to_owned(), id), (name.to_owned(), qty));
                }
                (table, id, None) => {
                    rows.remove(&(table.to_owned(), id));
                }
            }
        }
        rows
    }

    fn expected(&self, k: usize) -> Vec<Summary> {
        self.txns[k - 1]
            .iter()
            .map(|w| {
                let kind = match w {
                    SourceWrite::Insert { .. } => 'I',
                    SourceWrite::Update { .. } => 'U',
                    SourceWrite::Delete { .. } => 'D',
                };
                let (table, id, values) = w.parts();
                summary(table, kind, id, values.map(|(n, q)| (n.to_owned(), q)))
            })
            .collect()
    }

    /// The transaction a delivered change belongs to, and its summary.
    fn owner(&self, change: &Change) -> Result<Option<(usize, Summary)>, String> {
        let (table, kind, image) = match change {
            Change::Insert { table, row } => (table, 'I', row),
            Change::Update { table, after, .. } => (table, 'U', after),
            Change::Delete { table, before } => (table, 'D', before),
            // Structure reports are allowed; the suite's tables keep theirs.
            Change::Schema { .. } => return Ok(None),
            Change::Truncate { .. } => return Err("a truncate the suite never made".into()),
            Change::RecopyStart { .. } | Change::RecopyRows { .. } => {
                return Err("a re-copy the suite never asked for".into());
            }
        };
        let t = table.name.name.clone();
        let key = table.key_of(image);
        let id = match key.as_slice() {
            [Value::Int(id)] => *id,
            other => return Err(format!("{t}: key {other:?} is not one integer `id`")),
        };
        if kind == 'D' {
            let k = *self
                .deleted_by
                .get(&(t.clone(), id))
                .ok_or_else(|| format!("a delete of {t} {id}, which the suite never deleted"))?;
            return Ok(Some((k, summary(&t, kind, id, None))));
        }
        let col = |name: &str| {
            table
                .columns
                .iter()
                .position(|c| c.name == name)
                .and_then(|i| image.get(i))
        };
        let (Some(Value::Text(name)), Some(Value::Int(qty))) = (col("name"), col("qty")) else {
            return Err(format!(
                "{kind} of {t} {id} without `name` and `qty` in its row image: {image:?}"
            ));
        };
        let k = name
            .strip_prefix('t')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|k| (1..=self.txns.len()).contains(k))
            .ok_or_else(|| format!("{kind} of {t} {id} names no suite transaction: {name:?}"))?;
        Ok(Some((k, summary(&t, kind, id, Some((name.clone(), *qty))))))
    }

    /// Checks that `units` hold exactly transactions `first..=last`, each
    /// once, whole (inside one unit), in commit order, with exactly its
    /// changes in order.
    pub fn check_units(&self, units: &[Unit], first: usize, last: usize, when: &str) {
        // (transaction, unit index, change summaries), one per run of
        // consecutive changes of one transaction.
        let mut runs: Vec<(usize, usize, Vec<Summary>)> = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            for c in &unit.changes {
                let Some((k, s)) = self.owner(c).unwrap_or_else(|e| fail(when, &e)) else {
                    continue;
                };
                match runs.last_mut() {
                    Some((rk, ru, changes)) if *rk == k => {
                        if *ru != u {
                            fail(
                                when,
                                &format!("transaction t{k} was split over two deliveries"),
                            );
                        }
                        changes.push(s);
                    }
                    _ => runs.push((k, u, vec![s])),
                }
            }
        }
        let got: Vec<usize> = runs.iter().map(|r| r.0).collect();
        let want: Vec<usize> = (first..=last).collect();
        if got != want {
            fail(
                when,
                &format!(
                    "delivered transactions {} (in delivery order), expected {} once each, in \
                     commit order",
                    names(&got),
                    names(&want)
                ),
            );
        }
        for (k, _, changes) in runs {
            let expected = self.expected(k);
            if changes != expected {
                let i = (0..)
                    .find(|i| changes.get(*i) != expected.get(*i))
                    .expect("they differ");
                fail(
                    when,
                    &format!(
                        "t{k}: {} changes delivered, {} written; change {i} delivered as {:?}, \
                         written as {:?}",
                        changes.len(),
                        expected.len(),
                        changes.get(i),
                        expected.get(i)
                    ),
                );
            }
        }
    }

    /// The newest suite transaction in `unit`.
    pub fn newest_in(&self, unit: &Unit) -> usize {
        unit.changes
            .iter()
            .filter_map(|c| self.owner(c).ok().flatten().map(|(k, _)| k))
            .max()
            .unwrap_or(0)
    }
}

fn summary(table: &str, kind: char, id: i64, values: Option<(String, i64)>) -> Summary {
    Summary {
        table: table.to_owned(),
        kind,
        id,
        values,
    }
}

fn names(ks: &[usize]) -> String {
    let v: Vec<String> = ks.iter().map(|k| format!("t{k}")).collect();
    format!("[{}]", v.join(", "))
}

/// One delivered transaction (or group of whole transactions): its
/// `Partial`s and its `Commit`, joined.
#[derive(Debug)]
pub(super) struct Unit {
    pub position: Position,
    pub changes: Vec<Change>,
    pub partials: usize,
}

/// Reads a source's stream, checking the order of its events as they come.
#[derive(Default)]
pub(super) struct Delivery {
    pub units: Vec<Unit>,
    /// Position of the newest event.
    last: Option<Position>,
    /// A large transaction whose `Commit` has not come yet.
    open: Option<Unit>,
    /// Newest suite transaction delivered.
    pub newest: usize,
}

/// Longest wait for one expected event.
const EVENT_WAIT: Duration = Duration::from_secs(60);

impl Delivery {
    /// Reads events until transaction `k` has been delivered.
    pub async fn until(&mut self, src: &mut dyn Source, model: &Model, k: usize, when: &str) {
        while self.newest < k {
            self.next(src, model, when).await;
        }
    }

    /// Reads events until a heartbeat (an idle source says it delivered
    /// everything), checking whatever comes before it.
    pub async fn until_heartbeat(&mut self, src: &mut dyn Source, model: &Model, when: &str) {
        while !self.next(src, model, when).await {}
    }

    /// Reads one event; `true` for a heartbeat.
    async fn next(&mut self, src: &mut dyn Source, model: &Model, when: &str) -> bool {
        let event = match tokio::time::timeout(EVENT_WAIT, src.next()).await {
            Err(_) => fail(
                when,
                &format!(
                    "no event within {EVENT_WAIT:?} (waiting for transaction t{})",
                    self.newest + 1
                ),
            ),
            Ok(Err(e)) => fail(when, &format!("next() failed: {}", e.report())),
            Ok(Ok(e)) => e,
        };
        let after_last = |p: &Position, strict: bool, what: &str| {
            if let Some(last) = &self.last
                && (p < last || (strict && p == last))
            {
                fail(
                    when,
                    &format!("{what} at {p} after an event at {last}: positions must grow"),
                );
            }
        };
        match event {
            SourceEvent::Heartbeat { position, .. } => {
                if self.open.is_some() {
                    fail(when, "a heartbeat between the parts of a large transaction");
                }
                after_last(&position, false, "a heartbeat");
                self.last = Some(position);
                return true;
            }
            SourceEvent::Partial { position, changes } => match &mut self.open {
                Some(open) if open.position == position => {
                    open.changes.extend(changes);
                    open.partials += 1;
                }
                Some(open) => fail(
                    when,
                    &format!(
                        "a Partial at {position} inside the large transaction at {}",
                        open.position
                    ),
                ),
                None => {
                    after_last(&position, true, "a new transaction (Partial)");
                    self.open = Some(Unit {
                        position,
                        changes,
                        partials: 1,
                    });
                }
            },
            SourceEvent::Commit(t) => {
                let unit = match self.open.take() {
                    // A source may not know the closing position exactly
                    // while it hands the parts over (PostgreSQL: the commit
                    // record's end); the parts' position must order like it.
                    Some(mut open) => {
                        if t.position < open.position {
                            fail(
                                when,
                                &format!(
                                    "the Commit at {} closes Partials announced at the later {}",
                                    t.position, open.position
                                ),
                            );
                        }
                        open.changes.extend(t.changes);
                        open.position = t.position;
                        open
                    }
                    None => {
                        after_last(&t.position, true, "a transaction");
                        Unit {
                            position: t.position,
                            changes: t.changes,
                            partials: 0,
                        }
                    }
                };
                self.last = Some(unit.position.clone());
                self.newest = self.newest.max(model.newest_in(&unit));
                self.units.push(unit);
            }
        }
        false
    }
}

/// Whether two key ranges `(lower, upper]` share a key.
pub(super) fn overlaps(a: &KeyRange, b: &KeyRange) -> bool {
    let lower = match (&a.lower, &b.lower) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.as_ref().or(y.as_ref()),
    };
    let upper = match (&a.upper, &b.upper) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.as_ref().or(y.as_ref()),
    };
    match (lower, upper) {
        (Some(l), Some(u)) => l < u,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lower: Option<i64>, upper: Option<i64>) -> KeyRange {
        KeyRange {
            lower: lower.map(|v| vec![Value::Int(v)]),
            upper: upper.map(|v| vec![Value::Int(v)]),
        }
    }

    #[test]
    fn ranges_overlap_when_they_share_a_key() {
        assert!(overlaps(&r(None, Some(3)), &r(Some(2), None)));
        assert!(!overlaps(&r(None, Some(3)), &r(Some(3), None)));
        assert!(overlaps(&r(None, None), &r(Some(3), Some(4))));
        assert!(!overlaps(&r(Some(1), Some(2)), &r(Some(5), Some(9))));
        // The empty range a source reports when everything was skipped.
        let empty = KeyRange {
            lower: Some(Vec::new()),
            upper: Some(Vec::new()),
        };
        assert!(!overlaps(&empty, &r(None, Some(3))));
    }
}
