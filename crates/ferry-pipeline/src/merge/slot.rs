//! What a batch did under one key of a keyed table.
//!
//! A key normally holds at most one row. Inside a transaction with a
//! deferred unique key (`DEFERRABLE INITIALLY DEFERRED`) it may hold two
//! for a while: `UPDATE t SET id = 3 - id` moves row 1 onto key 2 before
//! row 2 leaves it. So a key is not a row: a [`Slot`] keeps the target's
//! row under the key (`base`, whose values the batch may not know) apart
//! from the rows the batch put there (`arrived`, always full images), and
//! a change finds its row by its before-image among them.

use ferry_core::Value;

/// Sets the values of `update` that are not [`Value::Unchanged`] on `base`.
pub(crate) fn overlay(base: &mut [Value], update: Vec<Value>) {
    for (slot, v) in base.iter_mut().zip(update) {
        if !matches!(v, Value::Unchanged) {
            *slot = v;
        }
    }
}

pub(super) fn is_full(row: &[Value]) -> bool {
    !row.iter().any(|v| matches!(v, Value::Unchanged))
}

/// Whether `row` has the values of every column `image` knows.
fn agrees(row: &[Value], image: &[Value]) -> bool {
    row.iter()
        .zip(image)
        .all(|(r, i)| matches!(i, Value::Unchanged) || r == i)
}

/// What happened, in this batch, to the row the target holds under a key
/// (if it holds one).
#[derive(Debug, Default)]
pub(super) enum Base {
    /// Untouched: the target keeps whatever it has under the key.
    #[default]
    Kept,
    /// Still under the key, with these columns set (the others
    /// [`Value::Unchanged`]); a full image replaces the row.
    Updated(Vec<Value>),
    /// Deleted or moved to another key.
    Gone,
}

/// Which row under a key a change applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Found {
    /// A row the batch put under the key (an index into `arrived`).
    Arrived(usize),
    /// The target's own row.
    Base,
}

#[derive(Debug, Default)]
pub(super) struct Slot {
    pub base: Base,
    /// Full images of the rows the batch inserted under the key or moved
    /// to it, oldest first. More than one only while a deferred unique key
    /// holds duplicates; none of them is the target's row.
    pub arrived: Vec<Vec<Value>>,
}

/// The net effect of a slot, as a sink applies it.
#[derive(Debug, PartialEq)]
pub(super) enum Net {
    Nothing,
    Upsert(Vec<Value>),
    Update(Vec<Value>),
    Delete,
}

impl Slot {
    /// The row a change with this before-image applies to. `None` (no
    /// before-image: a source without old values, whose keys are unique
    /// at every moment) means the one row under the key.
    ///
    /// A row the batch put here whose known values equal the image comes
    /// first: when the target's row has equal values too, either choice
    /// leaves the same rows behind. Then the target's row, unless it is
    /// gone. A change matching nothing (not from a consistent source)
    /// falls back to the newest row the batch put here, else the target's.
    pub fn find(&self, before: Option<&[Value]>) -> Found {
        let matching = |r: &Vec<Value>| before.is_none_or(|b| agrees(r, b));
        if let Some(i) = self.arrived.iter().rposition(matching) {
            return Found::Arrived(i);
        }
        match (&self.base, self.arrived.len()) {
            (Base::Gone, n) if n > 0 => Found::Arrived(n - 1),
            _ => Found::Base,
        }
    }

    /// An update that keeps its row under this key.
    pub fn update(&mut self, before: Option<&[Value]>, after: Vec<Value>) {
        match self.find(before) {
            Found::Arrived(i) => overlay(&mut self.arrived[i], after),
            Found::Base => match &mut self.base {
                Base::Kept => self.base = Base::Updated(after),
                Base::Updated(row) => overlay(row, after),
                // No row to update (not from a consistent source): keep
                // the newest full image if there is one.
                Base::Gone => {
                    if is_full(&after) {
                        self.arrived.push(after);
                    }
                }
            },
        }
    }

    /// What the batch knows of the row `found`, as `before` describes it:
    /// a full image for a row the batch put here; for the target's row,
    /// the before-image with the columns the batch set on it (partial when
    /// the source sent only the key).
    pub fn known(&self, found: Found, before: &[Value]) -> Vec<Value> {
        match (found, &self.base) {
            (Found::Arrived(i), _) => self.arrived[i].clone(),
            (Found::Base, Base::Updated(set)) => {
                let mut row = before.to_vec();
                overlay(&mut row, set.clone());
                row
            }
            (Found::Base, _) => before.to_vec(),
        }
    }

    /// The row `found` leaves the key (deleted or moved away).
    pub fn remove(&mut self, found: Found) {
        match found {
            Found::Arrived(i) => {
                self.arrived.remove(i);
            }
            Found::Base => self.base = Base::Gone,
        }
    }

    /// Whether the key holds at most one row: the batch put no row under
    /// it, or the target's row is gone and one row took its place.
    pub fn settled(&self) -> bool {
        match self.arrived.len() {
            0 => true,
            1 => matches!(self.base, Base::Gone),
            _ => false,
        }
    }

    /// What the sink must do under this key. A key still holding several
    /// rows cannot be written to a target with a unique key; the newest
    /// wins. It does not happen at the end of a transaction (the source
    /// checked its key), and between the parts of a large one such keys
    /// stay open ([`super::Merger::finish_part`]).
    pub fn net(mut self) -> Net {
        match (self.arrived.pop(), self.base) {
            (Some(row), _) => Net::Upsert(row),
            (None, Base::Kept) => Net::Nothing,
            (None, Base::Updated(row)) if is_full(&row) => Net::Upsert(row),
            (None, Base::Updated(row)) => Net::Update(row),
            (None, Base::Gone) => Net::Delete,
        }
    }
}
