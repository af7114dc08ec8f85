//! `ferry verify` (first version): per table, row counts and a checksum of
//! every row, compared between source and target in key order, with the
//! first differing keys listed; a table without a key is compared as a
//! multiset of rows (see [`verify_keyless`]). Rows are read in chunks, so memory stays
//! bounded; chunked in-database checksums with bisection come later.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use ferry_core::{Error, TableReader, TableRef, Value, display_key, display_key_of};
use ferry_pipeline::Transform;

const CHUNK: usize = 5_000;
const SHOW: usize = 10;

#[derive(Debug, Default)]
pub struct TableVerdict {
    pub source_rows: u64,
    pub target_rows: u64,
    pub source_checksum: u64,
    pub target_checksum: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub examples: Vec<String>,
}

impl TableVerdict {
    pub fn equal(&self) -> bool {
        self.missing == 0
            && self.extra == 0
            && self.different == 0
            && self.source_rows == self.target_rows
    }
}

struct Cursor<'a> {
    reader: &'a dyn TableReader,
    table: &'a TableRef,
    buf: std::vec::IntoIter<Vec<Value>>,
    last: Option<Vec<Value>>,
    done: bool,
}

impl<'a> Cursor<'a> {
    fn new(reader: &'a dyn TableReader, table: &'a TableRef) -> Self {
        Cursor {
            reader,
            table,
            buf: Vec::new().into_iter(),
            last: None,
            done: false,
        }
    }

    async fn next_raw(&mut self) -> Result<Option<Vec<Value>>, Error> {
        loop {
            if let Some(row) = self.buf.next() {
                self.last = Some(self.table.key_of(&row));
                return Ok(Some(row));
            }
            if self.done {
                return Ok(None);
            }
            let rows = self
                .reader
                .read_rows(self.table, self.last.as_deref(), CHUNK)
                .await?;
            self.done = rows.len() < CHUNK;
            self.buf = rows.into_iter();
        }
    }
}

/// A row's hash for checksums and multiset counts: like [`identical`], it
/// tells the kinds of values apart (`Int(3)` from `Float(3.0)`).
fn row_hash(row: &[Value]) -> u64 {
    fn add(v: &Value, h: &mut DefaultHasher) {
        std::mem::discriminant(v).hash(h);
        match v {
            Value::Array(items) => items.iter().for_each(|i| add(i, h)),
            v => v.hash(h),
        }
    }
    let mut h = DefaultHasher::new();
    row.iter().for_each(|v| add(v, &mut h));
    h.finish()
}

/// Equal values of the same kind. `Value`'s own equality takes `Int(3)`
/// and `Float(3.0)` as equal (they are the same key); a copy is not the
/// same if an INTEGER became a REAL, so verify compares kinds too. The
/// SQLite → SQLite case: each value keeps its storage class, and text
/// `'-1'` is not integer `-1`.
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
        }
        _ => std::mem::discriminant(a) == std::mem::discriminant(b) && a == b,
    }
}

fn identical_rows(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| identical(p, q))
}

/// Compares one source table with its target table.
pub async fn verify_table(
    source: &dyn TableReader,
    target: &dyn TableReader,
    source_table: &TableRef,
    target_table: &TableRef,
    transform: &Transform,
) -> Result<TableVerdict, Error> {
    if target_table.is_keyless() {
        return verify_keyless(source, target, source_table, target_table, transform).await;
    }
    let mut v = TableVerdict::default();
    let mut s = Cursor::new(source, source_table);
    let mut t = Cursor::new(target, target_table);
    // Source rows pass through the pipeline's transform (filter, projection).
    let next_source = async |s: &mut Cursor<'_>| -> Result<Option<Vec<Value>>, Error> {
        while let Some(row) = s.next_raw().await? {
            if let Some(r) = transform.rows(source_table, vec![row])?.pop() {
                return Ok(Some(r));
            }
        }
        Ok(None)
    };
    let mut a = next_source(&mut s).await?;
    let mut b = t.next_raw().await?;
    loop {
        let ord = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => target_table.key_of(x).cmp(&target_table.key_of(y)),
        };
        match ord {
            std::cmp::Ordering::Less => {
                let row = a.take().expect("row");
                v.source_rows += 1;
                v.source_checksum ^= row_hash(&row);
                v.missing += 1;
                if v.examples.len() < SHOW {
                    v.examples.push(format!(
                        "missing on target: key {}",
                        display_key_of(target_table, &row)
                    ));
                }
                a = next_source(&mut s).await?;
            }
            std::cmp::Ordering::Greater => {
                let row = b.take().expect("row");
                v.target_rows += 1;
                v.target_checksum ^= row_hash(&row);
                v.extra += 1;
                if v.examples.len() < SHOW {
                    v.examples.push(format!(
                        "extra on target: key {}",
                        display_key_of(target_table, &row)
                    ));
                }
                b = t.next_raw().await?;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (a.take().expect("row"), b.take().expect("row"));
                v.source_rows += 1;
                v.target_rows += 1;
                v.source_checksum ^= row_hash(&x);
                v.target_checksum ^= row_hash(&y);
                if !identical_rows(&x, &y) {
                    v.different += 1;
                    if v.examples.len() < SHOW {
                        let cols: Vec<String> = target_table
                            .columns
                            .iter()
                            .zip(x.iter().zip(&y))
                            .filter(|(_, (p, q))| !identical(p, q))
                            .map(|(c, (p, q))| format!("{}: source {p} target {q}", c.name))
                            .collect();
                        v.examples.push(format!(
                            "differs at key {}: {}",
                            display_key_of(target_table, &x),
                            cols.join("; ")
                        ));
                    }
                }
                a = next_source(&mut s).await?;
                b = t.next_raw().await?;
            }
        }
    }
    Ok(v)
}

/// A table without a key has no order to walk both sides in, and may hold
/// identical rows: its rows are compared as multisets. Each side is
/// scanned once, counting rows by their hash (memory: a few bytes per
/// distinct row, not the rows); only when the counts differ are the sides
/// scanned again for examples of the differing rows. Checksums add (an
/// XOR would cancel identical rows out).
async fn verify_keyless(
    source: &dyn TableReader,
    target: &dyn TableReader,
    source_table: &TableRef,
    target_table: &TableRef,
    transform: &Transform,
) -> Result<TableVerdict, Error> {
    let mut v = TableVerdict::default();
    let mut counts: HashMap<u64, i64> = HashMap::new();
    source
        .scan_rows(source_table, &mut |rows| {
            for row in transform.rows(source_table, rows)? {
                let h = row_hash(&row);
                v.source_rows += 1;
                v.source_checksum = v.source_checksum.wrapping_add(h);
                *counts.entry(h).or_default() += 1;
            }
            Ok(())
        })
        .await?;
    target
        .scan_rows(target_table, &mut |rows| {
            for row in rows {
                let h = row_hash(&row);
                v.target_rows += 1;
                v.target_checksum = v.target_checksum.wrapping_add(h);
                *counts.entry(h).or_default() -= 1;
            }
            Ok(())
        })
        .await?;
    counts.retain(|_, n| *n != 0);
    for n in counts.values() {
        if *n > 0 {
            v.missing += *n as u64;
        } else {
            v.extra += n.unsigned_abs();
        }
    }
    if counts.is_empty() {
        return Ok(v);
    }
    // Examples: rows whose count is off, as many times as it is off.
    let mut examples = Vec::new();
    let mut left = counts.clone();
    source
        .scan_rows(source_table, &mut |rows| {
            for row in transform.rows(source_table, rows)? {
                if let Some(n) = left.get_mut(&row_hash(&row)).filter(|n| **n > 0) {
                    *n -= 1;
                    if examples.len() < SHOW {
                        examples.push(format!("missing on target: row {}", display_key(&row)));
                    }
                }
            }
            Ok(())
        })
        .await?;
    target
        .scan_rows(target_table, &mut |rows| {
            for row in rows {
                if let Some(n) = left.get_mut(&row_hash(&row)).filter(|n| **n < 0) {
                    *n += 1;
                    if examples.len() < SHOW {
                        examples.push(format!("extra on target: row {}", display_key(&row)));
                    }
                }
            }
            Ok(())
        })
        .await?;
    v.examples = examples;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_another_kind_are_not_identical_even_when_equal() {
        let (int, float) = (Value::Int(3), Value::Float(3.0));
        assert_eq!(int, float);
        assert!(!identical(&int, &float));
        assert_ne!(
            row_hash(std::slice::from_ref(&int)),
            row_hash(std::slice::from_ref(&float))
        );
        assert!(!identical(&Value::Int(-1), &Value::Text("-1".into())));
        assert!(!identical(
            &Value::Array(vec![int.clone()]),
            &Value::Array(vec![float])
        ));
        assert!(identical_rows(
            &[int.clone(), Value::Null],
            &[int.clone(), Value::Null]
        ));
        assert_eq!(
            row_hash(std::slice::from_ref(&int)),
            row_hash(&[Value::Int(3)])
        );
    }
}
