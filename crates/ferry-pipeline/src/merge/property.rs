//! The merger's property: for any consistent sequence of changes, applying
//! the merged steps the way a sink does (the contract of
//! `ferry_core::{Step, TableOps}`) leaves the same tables as applying every
//! change one by one.
//!
//! Sequences come from a simulated source over a small key space, so keys
//! collide often: inserts, updates, key changes, swaps and cycles of key
//! moves, deletes and truncates, on two tables at once, each with its own
//! replica identity (full before-images, or key-only ones and none for an
//! update that keeps its key), with or without a deferred unique key (keys
//! may repeat inside a transaction: full images only, as PostgreSQL
//! requires), and with or without unchanged columns sent as
//! [`Value::Unchanged`] (TOAST). Transactions are merged in groups of one
//! to three, and the target is compared with the source after each group.
//! A fixed set of seeds keeps every run the same; a failure names its seed.

use std::collections::BTreeMap;

use ferry_core::{Change, Step, TableName, TableRef, Value};

use super::{Merger, is_full, overlay};

const SEEDS: u64 = 4000;
const KEYS: i64 = 4;
const WIDTH: usize = 3;

/// SplitMix64: small, deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn value(&mut self) -> Value {
        // Few values, so identical rows are common.
        Value::Int(self.below(3) as i64)
    }
}

#[derive(Debug, Clone, Copy)]
struct Regime {
    /// `REPLICA IDENTITY FULL`: every before-image is whole.
    full_images: bool,
    /// `DEFERRABLE INITIALLY DEFERRED` key: keys may repeat until commit.
    deferred: bool,
    /// Columns an update leaves alone may come as `Unchanged`.
    partial: bool,
}

type Rows = Vec<Vec<Value>>;

/// One source table: its structure, rules and current rows.
struct Simulated {
    table: TableRef,
    regime: Regime,
    rows: Rows,
}

fn schema(name: &str) -> TableRef {
    super::tests::int_table(name, &["id", "a", "b"])
}

fn key(row: &[Value]) -> i64 {
    match row[0] {
        Value::Int(k) => k,
        ref v => panic!("key {v:?}"),
    }
}

/// Whether `row` has the values of every column `image` knows.
fn agrees(row: &[Value], image: &[Value]) -> bool {
    row.iter()
        .zip(image)
        .all(|(r, i)| matches!(i, Value::Unchanged) || r == i)
}

impl Simulated {
    fn new(rng: &mut Rng, name: &str) -> Self {
        let full_images = rng.chance(60);
        let regime = Regime {
            full_images,
            deferred: full_images && rng.chance(60),
            partial: rng.chance(50),
        };
        let mut rows = Vec::new();
        for k in 0..KEYS {
            if rng.chance(60) {
                rows.push(vec![Value::Int(k), rng.value(), rng.value()]);
            }
        }
        let table = schema(name);
        Simulated {
            table: std::sync::Arc::new(ferry_core::TableSchema {
                key_deferrable: regime.deferred,
                ..(*table).clone()
            }),
            regime,
            rows,
        }
    }

    fn free_key(&self, rng: &mut Rng) -> Option<i64> {
        let free: Vec<i64> = (0..KEYS)
            .filter(|k| !self.rows.iter().any(|r| key(r) == *k))
            .collect();
        (!free.is_empty()).then(|| free[rng.below(free.len())])
    }

    /// A key for a row being written: any key under a deferred key, else
    /// a free one.
    fn target_key(&self, rng: &mut Rng) -> Option<i64> {
        if self.regime.deferred {
            Some(rng.below(KEYS as usize) as i64)
        } else {
            self.free_key(rng)
        }
    }

    fn before(&self, row: &[Value]) -> Vec<Value> {
        if self.regime.full_images {
            row.to_vec()
        } else {
            let mut image = vec![Value::Unchanged; WIDTH];
            image[0] = row[0].clone();
            image
        }
    }

    /// Changes row `i` to `new` (maybe under another key) and records it.
    fn update(&mut self, rng: &mut Rng, i: usize, new: Vec<Value>, out: &mut Vec<Change>) {
        let old = std::mem::replace(&mut self.rows[i], new.clone());
        let mut after = new;
        if self.regime.partial {
            for c in 1..WIDTH {
                if after[c] == old[c] && rng.chance(50) {
                    after[c] = Value::Unchanged;
                }
            }
        }
        let before =
            (self.regime.full_images || key(&old) != key(&after)).then(|| self.before(&old));
        out.push(Change::Update {
            table: self.table.clone(),
            before,
            after,
        });
    }

    fn move_to(&mut self, rng: &mut Rng, i: usize, to: i64, out: &mut Vec<Change>) {
        let mut new = self.rows[i].clone();
        new[0] = Value::Int(to);
        if rng.chance(30) {
            new[1] = rng.value();
        }
        self.update(rng, i, new, out);
    }

    fn delete(&mut self, i: usize, out: &mut Vec<Change>) {
        let old = self.rows.remove(i);
        out.push(Change::Delete {
            table: self.table.clone(),
            before: self.before(&old),
        });
    }

    /// One statement's changes.
    fn statement(&mut self, rng: &mut Rng, out: &mut Vec<Change>) {
        let n = self.rows.len();
        match rng.below(100) {
            0..20 => {
                if let Some(k) = self.target_key(rng) {
                    let row = vec![Value::Int(k), rng.value(), rng.value()];
                    self.rows.push(row.clone());
                    out.push(Change::Insert {
                        table: self.table.clone(),
                        row,
                    });
                }
            }
            _ if n == 0 => {}
            20..45 => {
                let i = rng.below(n);
                let mut new = self.rows[i].clone();
                for v in &mut new[1..] {
                    if rng.chance(50) {
                        *v = rng.value();
                    }
                }
                self.update(rng, i, new, out);
            }
            45..60 => {
                let i = rng.below(n);
                if let Some(to) = self.target_key(rng).filter(|&k| k != key(&self.rows[i])) {
                    self.move_to(rng, i, to, out);
                }
            }
            60..75 => self.rotate(rng, out),
            75..95 => self.delete(rng.below(n), out),
            _ => {
                self.rows.clear();
                out.push(Change::Truncate {
                    tables: vec![self.table.clone()],
                });
            }
        }
    }

    /// Gives each of 2 or 3 rows the key of the next one: a swap or a
    /// cycle. Under a deferred key this is one `UPDATE`, its rows in any
    /// order; otherwise the first row waits under a free key.
    fn rotate(&mut self, rng: &mut Rng, out: &mut Vec<Change>) {
        let mut picked: Vec<usize> = Vec::new();
        for i in 0..self.rows.len() {
            if !picked
                .iter()
                .any(|&p| key(&self.rows[p]) == key(&self.rows[i]))
            {
                picked.push(i);
            }
        }
        let m = 2 + rng.below(2);
        if picked.len() < m {
            return;
        }
        while picked.len() > m {
            picked.remove(rng.below(picked.len()));
        }
        let keys: Vec<i64> = picked.iter().map(|&i| key(&self.rows[i])).collect();
        if self.regime.deferred {
            let mut order: Vec<usize> = (0..m).collect();
            for j in (1..m).rev() {
                order.swap(j, rng.below(j + 1));
            }
            for j in order {
                self.move_to(rng, picked[j], keys[(j + 1) % m], out);
            }
        } else if let Some(temp) = self.free_key(rng) {
            self.move_to(rng, picked[0], temp, out);
            for j in (1..m).rev() {
                self.move_to(rng, picked[j], keys[(j + 1) % m], out);
            }
            self.move_to(rng, picked[0], keys[1], out);
        }
    }

    /// At commit a deferred key must be unique again: extra rows under a
    /// key are deleted or moved to a free key.
    fn commit(&mut self, rng: &mut Rng, out: &mut Vec<Change>) {
        loop {
            let dup = (0..self.rows.len())
                .find(|&i| (0..i).any(|j| key(&self.rows[j]) == key(&self.rows[i])));
            let Some(i) = dup else { return };
            match self.free_key(rng) {
                Some(to) if rng.chance(50) => self.move_to(rng, i, to, out),
                _ => self.delete(i, out),
            }
        }
    }
}

/// Applies one change to rows held as a multiset, as the source did.
fn apply_change(tables: &mut BTreeMap<TableName, Rows>, change: &Change) {
    let find = |rows: &Rows, image: &[Value]| {
        rows.iter()
            .position(|r| agrees(r, image))
            .unwrap_or_else(|| panic!("no row matches {image:?} in {rows:?}"))
    };
    match change {
        Change::Insert { table, row } => tables.get_mut(&table.name).unwrap().push(row.clone()),
        Change::Update {
            table,
            before,
            after,
        } => {
            let rows = tables.get_mut(&table.name).unwrap();
            let i = match before {
                Some(b) => find(rows, b),
                None => find(
                    rows,
                    &[after[0].clone(), Value::Unchanged, Value::Unchanged],
                ),
            };
            overlay(&mut rows[i], after.clone());
        }
        Change::Delete { table, before } => {
            let rows = tables.get_mut(&table.name).unwrap();
            let i = find(rows, before);
            rows.remove(i);
        }
        Change::Truncate { tables: ts } => {
            for t in ts {
                tables.get_mut(&t.name).unwrap().clear();
            }
        }
        other => panic!("not generated: {other:?}"),
    }
}

type Target = BTreeMap<TableName, BTreeMap<Vec<Value>, Vec<Value>>>;

/// Applies merged steps as every sink does: per `Rows` step and table,
/// deletes, then upserts (a partial one updates a row that must exist),
/// then updates of the rows that exist; a key move updates the row under
/// the old key, refused when its new key is taken (a unique key).
fn apply_steps(target: &mut Target, steps: &[Step]) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Rows(ops) => {
                for o in ops {
                    let t = target.get_mut(&o.table.name).unwrap();
                    let mut keys: Vec<Vec<Value>> = o.deletes.clone();
                    keys.extend(
                        o.upserts
                            .iter()
                            .chain(&o.updates)
                            .map(|r| o.table.key_of(r)),
                    );
                    let n = keys.len();
                    keys.sort();
                    keys.dedup();
                    if keys.len() != n {
                        return Err(format!("a key appears twice in one step: {o:?}"));
                    }
                    for k in &o.deletes {
                        t.remove(k);
                    }
                    for row in &o.upserts {
                        let k = o.table.key_of(row);
                        if is_full(row) {
                            t.insert(k, row.clone());
                        } else if let Some(old) = t.get_mut(&k) {
                            overlay(old, row.clone());
                        } else {
                            return Err(format!("a partial upsert of an absent row: {row:?}"));
                        }
                    }
                    for row in &o.updates {
                        if let Some(old) = t.get_mut(&o.table.key_of(row)) {
                            overlay(old, row.clone());
                        }
                    }
                }
            }
            Step::Truncate(tables) => {
                for table in tables {
                    target.get_mut(&table.name).unwrap().clear();
                }
            }
            Step::MoveKey {
                table,
                old_key,
                row,
            } => {
                let t = target.get_mut(&table.name).unwrap();
                if let Some(mut moved) = t.remove(old_key) {
                    overlay(&mut moved, row.clone());
                    let k = table.key_of(&moved);
                    if t.contains_key(&k) {
                        return Err(format!("key move onto a taken key: {step:?}"));
                    }
                    t.insert(k, moved);
                }
            }
            other => return Err(format!("not expected here: {other:?}")),
        }
    }
    Ok(())
}

fn as_target(tables: &BTreeMap<TableName, Rows>) -> Result<Target, String> {
    let mut out = Target::new();
    for (name, rows) in tables {
        let mut by_key = BTreeMap::new();
        for r in rows {
            if by_key.insert(vec![r[0].clone()], r.clone()).is_some() {
                return Err(format!("the source holds key {:?} twice", r[0]));
            }
        }
        out.insert(name.clone(), by_key);
    }
    Ok(out)
}

fn show_row(row: &[Value]) -> String {
    let values: Vec<String> = row
        .iter()
        .map(|v| match v {
            Value::Unchanged => "_".to_owned(),
            v => v.to_string(),
        })
        .collect();
    format!("({})", values.join(","))
}

fn show_target(target: &Target) -> String {
    let tables: Vec<String> = target
        .iter()
        .map(|(name, rows)| {
            let rows: Vec<String> = rows.values().map(|r| show_row(r)).collect();
            format!("{name}: {}", rows.join(" "))
        })
        .collect();
    tables.join("; ")
}

fn show_change(c: &Change) -> String {
    match c {
        Change::Insert { table, row } => format!("{} insert {}", table.name, show_row(row)),
        Change::Update {
            table,
            before,
            after,
        } => format!(
            "{} update {} -> {}",
            table.name,
            before.as_deref().map_or("?".to_owned(), show_row),
            show_row(after)
        ),
        Change::Delete { table, before } => format!("{} delete {}", table.name, show_row(before)),
        Change::Truncate { tables } => format!("truncate {}", tables[0].name),
        other => format!("{other:?}"),
    }
}

fn show_step(s: &Step) -> String {
    match s {
        Step::Rows(ops) => ops
            .iter()
            .map(|o| {
                let list = |rows: &Rows| {
                    rows.iter()
                        .map(|r| show_row(r))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                format!(
                    "{} rows: delete {} upsert {} update {}",
                    o.table.name,
                    list(&o.deletes),
                    list(&o.upserts),
                    list(&o.updates)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Step::Truncate(tables) => format!("truncate {}", tables[0].name),
        Step::MoveKey {
            table,
            old_key,
            row,
        } => format!(
            "{} move {} to {}",
            table.name,
            show_row(old_key),
            show_row(row)
        ),
        other => format!("{other:?}"),
    }
}

/// What one seed did, to check that the seeds reach the cases that matter.
#[derive(Default, Debug)]
struct Seen {
    key_moves: usize,
    move_key_steps: usize,
    duplicate_keys: usize,
    /// Keys a part of a streamed transaction left open (two rows).
    held_at_part_end: usize,
}

/// The steps of one transaction streamed in `cuts.len() + 1` parts, as the
/// dispatcher merges a transaction too large for memory: each part's
/// [`Merger::finish_part`], then the tail's [`Merger::finish`]; also how
/// many keys stayed open at a part's end.
fn streamed(group: &[Change], cuts: &[usize]) -> (Vec<Vec<Step>>, usize) {
    let mut merger = Merger::new();
    let mut parts = Vec::new();
    let mut held = 0;
    let mut at = 0;
    for &cut in cuts {
        for c in &group[at..cut] {
            merger.push(c.clone());
        }
        at = cut;
        parts.push(merger.finish_part());
        held += merger.held_tables().len();
    }
    for c in &group[at..] {
        merger.push(c.clone());
    }
    parts.push(merger.finish());
    (parts, held)
}

fn run(seed: u64, seen: &mut Seen) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut sources = [Simulated::new(&mut rng, "t"), Simulated::new(&mut rng, "u")];
    let mut reference: BTreeMap<TableName, Rows> = sources
        .iter()
        .map(|s| (s.table.name.clone(), s.rows.clone()))
        .collect();
    let mut target = as_target(&reference)?;
    let transactions = 1 + rng.below(6);
    let mut group: Vec<Change> = Vec::new();
    let mut in_group = 0;
    let mut group_size = 1 + rng.below(3);
    for txn in 0..transactions {
        for _ in 0..1 + rng.below(8) {
            let s = rng.below(2);
            let before = group.len();
            sources[s].statement(&mut rng, &mut group);
            let dups = as_target(&BTreeMap::from([(
                sources[s].table.name.clone(),
                sources[s].rows.clone(),
            )]));
            seen.duplicate_keys += usize::from(dups.is_err() && group.len() > before);
        }
        for s in &mut sources {
            s.commit(&mut rng, &mut group);
        }
        in_group += 1;
        if in_group < group_size && txn + 1 < transactions {
            continue;
        }
        seen.key_moves += group
            .iter()
            .filter(
                |c| matches!(c, Change::Update { before: Some(b), after, .. } if b[0] != after[0]),
            )
            .count();
        for c in &group {
            apply_change(&mut reference, c);
        }
        // A single transaction is sometimes streamed in parts, cut anywhere.
        let cuts: Vec<usize> = if in_group == 1 && group.len() > 1 && rng.chance(50) {
            let mut cuts: Vec<usize> = (0..1 + rng.below(3))
                .map(|_| 1 + rng.below(group.len() - 1))
                .collect();
            cuts.sort();
            cuts.dedup();
            cuts
        } else {
            Vec::new()
        };
        let (parts, held) = streamed(&group, &cuts);
        seen.held_at_part_end += held;
        let steps: Vec<Step> = parts.concat();
        seen.move_key_steps += steps
            .iter()
            .filter(|s| matches!(s, Step::MoveKey { .. }))
            .count();
        let regimes: Vec<Regime> = sources.iter().map(|s| s.regime).collect();
        let context = || {
            let changes: Vec<String> = group.iter().map(show_change).collect();
            let steps: Vec<String> = steps.iter().map(show_step).collect();
            format!(
                "regimes {regimes:?}\nparts cut before changes {cuts:?}\nchanges:\n  {}\nsteps:\n  {}",
                changes.join("\n  "),
                steps.join("\n  ")
            )
        };
        for part in &parts {
            apply_steps(&mut target, part).map_err(|e| format!("{e}\n{}", context()))?;
        }
        let expected = as_target(&reference).map_err(|e| format!("{e}\n{}", context()))?;
        for s in &sources {
            let source = as_target(&BTreeMap::from([(s.table.name.clone(), s.rows.clone())]))?;
            if source[&s.table.name] != expected[&s.table.name] {
                return Err(format!(
                    "the simulation disagrees with its changes\n{}",
                    context()
                ));
            }
        }
        if target != expected {
            return Err(format!(
                "target {}\nexpected {}\n{}",
                show_target(&target),
                show_target(&expected),
                context()
            ));
        }
        group.clear();
        in_group = 0;
        group_size = 1 + rng.below(3);
    }
    Ok(())
}

#[test]
fn merged_steps_give_the_same_tables_as_every_change_one_by_one() {
    let mut seen = Seen::default();
    for seed in 0..SEEDS {
        if let Err(e) = run(seed, &mut seen) {
            panic!("seed {seed}: {e}");
        }
    }
    // The seeds must reach the cases that matter.
    assert!(seen.key_moves > 1000, "{seen:?}");
    assert!(seen.move_key_steps > 50, "{seen:?}");
    assert!(seen.duplicate_keys > 100, "{seen:?}");
    assert!(seen.held_at_part_end > 100, "{seen:?}");
}
