//! The suite's reading of a snapshot: every chunk checked as it comes.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ferry_core::{ChunkRows, KeyRange, Position, SnapshotReader, Value};

use super::delivery::{State, overlaps};
use super::{A, B, fail, ok};

/// Reads a whole snapshot, checking its chunks, and returns its position
/// and rows.
pub(super) async fn read_snapshot(
    mut reader: Box<dyn SnapshotReader>,
    skip: &[(&str, KeyRange)],
    when: &str,
) -> (Position, State) {
    let position = reader.position().clone();
    let mut rows = State::new();
    let mut done = BTreeSet::new();
    let mut ranges: HashMap<String, Vec<KeyRange>> = HashMap::new();
    loop {
        let chunk = match tokio::time::timeout(Duration::from_secs(60), reader.next_chunk()).await {
            Err(_) => fail(when, "no snapshot chunk within 60 s"),
            Ok(r) => ok(r, when, "next_chunk()"),
        };
        let Some(chunk) = chunk else { break };
        let t = chunk.table.name.name.clone();
        if done.contains(&t) {
            fail(when, &format!("a chunk of {t} after its table_done chunk"));
        }
        let ChunkRows::Values(values) = &chunk.rows else {
            fail(
                when,
                "encoded rows, though no request asked for an encoding",
            );
        };
        let col = |name: &str| chunk.table.columns.iter().position(|c| c.name == name);
        let (Some(n), Some(q)) = (col("name"), col("qty")) else {
            fail(when, &format!("{t} lacks the name or qty column"));
        };
        for row in values {
            let key = chunk.table.key_of(row);
            if !chunk.range.contains(&key) {
                fail(
                    when,
                    &format!(
                        "{t} row {row:?} is outside its chunk's range {:?}",
                        chunk.range
                    ),
                );
            }
            let (Value::Int(id), Value::Text(name), Value::Int(qty)) = (&row[0], &row[n], &row[q])
            else {
                fail(when, &format!("{t} row {row:?} is not (int, text, int)"));
            };
            if rows
                .insert((t.clone(), *id), (name.clone(), *qty))
                .is_some()
            {
                fail(when, &format!("{t} row {id} sent twice"));
            }
        }
        let seen = ranges.entry(t.clone()).or_default();
        let skipped = skip.iter().filter(|(s, _)| *s == t).map(|(_, r)| r);
        if let Some(other) = seen
            .iter()
            .chain(skipped)
            .find(|r| overlaps(r, &chunk.range))
        {
            fail(
                when,
                &format!(
                    "{t}: chunk range {:?} overlaps {other:?} (an earlier chunk's or a skipped one)",
                    chunk.range
                ),
            );
        }
        seen.push(chunk.range.clone());
        if chunk.table_done {
            done.insert(t);
        }
    }
    let asked: BTreeSet<String> = if skip.is_empty() {
        BTreeSet::from([A.to_owned(), B.to_owned()])
    } else {
        skip.iter().map(|(t, _)| t.to_string()).collect()
    };
    if done != asked {
        fail(
            when,
            &format!("table_done came for {done:?}, the snapshot asked for {asked:?}"),
        );
    }
    (position, rows)
}
