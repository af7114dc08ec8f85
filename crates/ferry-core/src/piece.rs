//! Snapshot pieces: how the key ranges a snapshot still has to copy
//! ([`crate::gaps`]) are cut into pieces that copy in parallel.
//!
//! What is here is arithmetic in ferry's key order (`Value`'s: text by
//! bytes), the same for every keyed source. A source supplies what only its
//! database knows (a row estimate, an integer key's smallest and largest
//! values, a sample of keys, whether an index reads keys in ferry's order)
//! and reads each piece with its own statements. Every cut gives consecutive
//! ranges that together cover exactly the range cut, so each piece claims
//! its own keys and no other (ADR 0007).

use crate::checkpoint::KeyRange;
use crate::value::Value;

/// Fewer pieces than this are not worth sampling for: such a table is read
/// as one range, in key order.
const MIN_SAMPLED_PIECES: usize = 3;
/// A sample this many times larger than the pieces asked of it places their
/// split points evenly enough; a smaller one cuts nothing.
const MIN_KEYS_PER_PIECE: f64 = 2.0;

/// The most pieces to cut a table into. When no index reads the key in
/// ferry's order (a text key in a linguistic collation, a key compared as
/// text), every piece is a full scan and a sort: as many pieces as workers
/// keep them all busy, more would only scan the table again.
pub fn max_pieces(indexed_order: bool, workers: usize) -> usize {
    if indexed_order { usize::MAX } else { workers }
}

/// Key values per piece of a table keyed by one integer column, from the
/// smallest and largest key (`None` for an empty table), the estimated rows
/// (at most 0 when unknown: the keys are then taken as dense) and the rows
/// a piece should hold. At least 1.
pub fn int_key_width(min: Option<i64>, max: Option<i64>, est_rows: f64, piece_rows: usize) -> i128 {
    let span = (max.unwrap_or(0) as i128 - min.unwrap_or(0) as i128 + 1).max(1);
    let rows = if est_rows > 0.0 {
        est_rows as i128
    } else {
        span
    };
    (span * piece_rows as i128 / rows.max(1)).max(1)
}

/// `gap` of a table keyed by one integer column, cut every `width` key
/// values; `inside` holds the smallest and largest key inside `gap`, `None`
/// when it holds none (then `gap` is one piece). The last piece keeps
/// `gap`'s upper bound, so keys inserted beyond `inside` are covered too.
pub fn int_key_pieces(gap: &KeyRange, inside: Option<(i64, i64)>, width: i128) -> Vec<KeyRange> {
    let Some((min, max)) = inside else {
        return vec![gap.clone()];
    };
    let mut pieces = Vec::new();
    let mut lower = gap.lower.clone();
    let mut edge = min as i128 - 1 + width;
    while edge < max as i128 {
        let upper = Some(vec![Value::Int(edge as i64)]);
        pieces.push(KeyRange {
            lower,
            upper: upper.clone(),
        });
        lower = upper;
        edge += width;
    }
    pieces.push(KeyRange {
        lower,
        upper: gap.upper.clone(),
    });
    pieces
}

/// How many pieces to cut a table of `est_rows` estimated rows into when
/// its split points come from a sample of keys: one per `piece_rows` rows,
/// at most `max_pieces`; `None` when that is too few to sample for.
pub fn sampled_pieces(est_rows: f64, piece_rows: usize, max_pieces: usize) -> Option<usize> {
    let pieces = (est_rows / piece_rows as f64)
        .floor()
        .min(max_pieces as f64);
    (pieces >= MIN_SAMPLED_PIECES as f64).then_some(pieces as usize)
}

/// Split points for `pieces` pieces: `keys` (a sample of the table's keys,
/// in any order, repeats allowed) sorted in ferry's key order and taken at
/// even intervals. Empty (read the table as one range) when the sample is
/// too small to place them.
pub fn sample_splits(mut keys: Vec<Vec<Value>>, pieces: usize) -> Vec<Vec<Value>> {
    keys.sort();
    keys.dedup();
    let per = keys.len() as f64 / pieces as f64;
    if per < MIN_KEYS_PER_PIECE {
        return Vec::new();
    }
    let mut splits: Vec<Vec<Value>> = (1..pieces)
        .filter_map(|i| keys.get((i as f64 * per) as usize).cloned())
        .collect();
    splits.dedup();
    splits
}

/// `gap` cut at the split points strictly inside it: consecutive ranges
/// that together cover exactly `gap`.
pub fn split_gap(gap: &KeyRange, splits: &[Vec<Value>]) -> Vec<KeyRange> {
    let mut out = Vec::new();
    let mut lower = gap.lower.clone();
    for point in splits {
        let point = point.clone();
        let above_lower = lower.as_ref().is_none_or(|l| &point > l);
        let below_upper = gap.upper.as_ref().is_none_or(|u| &point < u);
        if above_lower && below_upper {
            out.push(KeyRange {
                lower: lower.replace(point.clone()),
                upper: Some(point),
            });
        }
    }
    out.push(KeyRange {
        lower,
        upper: gap.upper.clone(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tests::{k as i, r};

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn k(s: &str) -> Option<Vec<Value>> {
        Some(vec![t(s)])
    }

    #[test]
    fn a_gap_is_cut_only_at_split_points_inside_it() {
        let splits = [vec![t("b")], vec![t("d")], vec![t("f")], vec![t("h")]];
        let got = split_gap(&KeyRange::all(), &splits);
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].lower, None);
        assert_eq!(got[0].upper, k("b"));
        assert_eq!(got[4].lower, k("h"));
        assert_eq!(got[4].upper, None);
        // A gap left after a restart: (c, f]; "d" is inside, "f" is its end.
        let gap = r(k("c"), k("f"));
        let got = split_gap(&gap, &splits);
        assert_eq!(got, vec![r(k("c"), k("d")), r(k("d"), k("f"))]);
        // Consecutive: each range starts where the previous one ended.
        for w in got.windows(2) {
            assert_eq!(w[0].upper, w[1].lower);
        }
    }

    #[test]
    fn integer_keys_are_cut_every_width_values_and_the_last_piece_stays_open() {
        // 1..=100 at 25 rows a piece, keys dense.
        let width = int_key_width(Some(1), Some(100), 100.0, 25);
        assert_eq!(width, 25);
        let got = int_key_pieces(&KeyRange::all(), Some((1, 100)), width);
        assert_eq!(
            got,
            vec![
                r(None, i(25)),
                r(i(25), i(50)),
                r(i(50), i(75)),
                r(i(75), None)
            ]
        );
        // A gap keeps its own bounds; one holding no key is one piece.
        let gap = r(i(40), i(60));
        let got = int_key_pieces(&gap, Some((41, 60)), 10);
        assert_eq!(got, vec![r(i(40), i(50)), r(i(50), i(60))]);
        assert_eq!(int_key_pieces(&gap, None, 10), vec![gap]);
        // Sparse keys make wide pieces; no estimate takes keys as dense.
        assert_eq!(int_key_width(Some(0), Some(999), 10.0, 5), 500);
        assert_eq!(int_key_width(Some(0), Some(999), -1.0, 5), 5);
        assert_eq!(int_key_width(None, None, 0.0, 5), 5);
    }

    #[test]
    fn a_sample_places_split_points_at_even_intervals() {
        assert_eq!(sampled_pieces(100.0, 50, usize::MAX), None);
        assert_eq!(sampled_pieces(-1.0, 50, usize::MAX), None);
        assert_eq!(sampled_pieces(1000.0, 50, usize::MAX), Some(20));
        assert_eq!(sampled_pieces(1000.0, 50, 4), Some(4));
        assert_eq!(max_pieces(false, 4), 4);
        // Sorted and deduplicated first: 8 distinct keys, 4 pieces.
        let keys: Vec<Vec<Value>> = ["h", "a", "c", "b", "e", "d", "g", "f", "a"]
            .iter()
            .map(|s| vec![t(s)])
            .collect();
        assert_eq!(
            sample_splits(keys.clone(), 4),
            vec![vec![t("c")], vec![t("e")], vec![t("g")]]
        );
        // Fewer than two keys a piece: no split points.
        assert_eq!(sample_splits(keys, 5), Vec::<Vec<Value>>::new());
    }
}
