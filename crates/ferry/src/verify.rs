//! `ferry verify`: per table, row counts and a checksum of every row,
//! compared between source and target in key order, with every differing
//! key kept (up to [`KEEP`]); a table without a key is compared as a
//! multiset of rows (see [`verify_keyless`]). Rows are read in chunks, so
//! memory stays bounded by the differences, not the tables.
//!
//! While a pipeline replicates, a row can differ only because the target
//! has not applied its latest change yet. Those rows are re-checked
//! ([`settle`]): read again on the source, then on the target once the
//! target's checkpoint has reached the source's position after that read.
//! Only rows still different then are reported, with that position.
//!
//! Between two databases that digest rows alike ([`TableReader::row_digests`]:
//! PostgreSQL's own digest between two PostgreSQL databases; the canonical
//! digest of [`ferry_core::canonical`] between any two, SQLite included) a
//! table whose rows travel unchanged is compared by digests of key ranges
//! computed in each database ([`verify_by_digests`]); only ranges whose
//! digests differ are split further, and only the smallest of those are
//! read and compared row by row. Everything else streams both sides.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::time::{Duration, Instant};

use ferry_core::canonical::is_canonical;
use ferry_core::{
    Checkpoint, CheckpointStore, DeclaredShape, Error, KeyRange, Position, RangeDigest, Source,
    TableReader, TableRef, Value, display_key,
};
use ferry_pipeline::Transform;

use crate::repair::Repair;

const CHUNK: usize = 5_000;
/// Rows per key range digested in each database.
const DIGEST_RANGE: u64 = 20_000;
/// A range whose digests differ is read row by row once its source side
/// has at most this many rows; a larger one is split in eight first.
const FETCH_AT_MOST: u64 = 400;
/// Differing ranges narrowed down at once (each holds at most two pages of
/// [`FETCH_AT_MOST`] rows in memory): enough that scattered differences
/// over a distant link pay a few round trips in all, not a few each.
const NARROW_AT_ONCE: usize = 16;
/// Differences shown per table in the text report.
const SHOW: usize = 10;
/// Differences kept per table (for re-checks and the JSON report); the
/// counts go on beyond it.
const KEEP: usize = 100_000;
/// Re-check rounds at most: a difference still there after a round whose
/// reads saw the same values as the round before is final.
const ROUNDS: usize = 5;
/// A checkpoint that has not moved for this long belongs to a pipeline
/// that is not running (a running one records a heartbeat at least every
/// 10 s): waiting longer for it to reach the source's position is useless.
const STALLED: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffKind {
    /// On the source, not on the target.
    Missing,
    /// On the target, not on the source.
    Extra,
    /// On both, with other values.
    Different,
}

impl DiffKind {
    fn as_str(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Different => "different",
        }
    }
}

/// One differing row.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub kind: DiffKind,
    /// The key (a table without a key: the whole row).
    pub key: Vec<Value>,
    /// The greatest key before `key` that the compare met, on either side:
    /// reading after it finds the row again.
    pub(crate) after: Option<Vec<Value>>,
    /// The row's values on each side, when it is there.
    pub source: Option<Vec<Value>>,
    pub target: Option<Vec<Value>>,
}

#[derive(Debug, Default)]
pub struct TableVerdict {
    /// `false`: the table does not exist on the target.
    pub on_target: bool,
    pub source_rows: u64,
    pub target_rows: u64,
    pub source_checksum: u64,
    pub target_checksum: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// The first [`KEEP`] differences.
    pub differences: Vec<Difference>,
    /// Rows that differed during the compare, were re-checked once the
    /// target had applied `settled_at`, and agreed then.
    pub settled: u64,
    /// The source position the last re-check waited for the target to reach.
    pub settled_at: Option<Position>,
    /// Why differences could not be re-checked, when they could not.
    pub unsettled: Option<String>,
    /// `--repair apply`: rows written or deleted on the target (the
    /// differences then are those still there after it).
    pub repaired: Option<u64>,
    /// `--repair`: why this table was not repaired.
    pub not_repaired: Option<String>,
    /// Differences of structure: a column missing on the target, another
    /// type (same engine on both sides), another primary key.
    pub structure: Vec<String>,
    /// What the structure compare noticed that is not a difference (extra
    /// target columns, which ferry leaves alone; no primary key).
    pub notes: Vec<String>,
    /// Compared by in-database digests: how many key ranges, and how many
    /// of them were read row by row. `None`: every row was streamed.
    pub digests: Option<DigestStats>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DigestStats {
    pub ranges: u64,
    pub fetched: u64,
}

impl TableVerdict {
    pub fn equal(&self) -> bool {
        self.on_target
            && self.structure.is_empty()
            && self.missing == 0
            && self.extra == 0
            && self.different == 0
    }

    fn record(&mut self, d: Difference) {
        match d.kind {
            DiffKind::Missing => self.missing += 1,
            DiffKind::Extra => self.extra += 1,
            DiffKind::Different => self.different += 1,
        }
        if self.differences.len() < KEEP {
            self.differences.push(d);
        }
    }

    /// Takes in the differences found by a compare of one key range.
    fn absorb(&mut self, part: TableVerdict) {
        self.missing += part.missing;
        self.extra += part.extra;
        self.different += part.different;
        let room = KEEP - self.differences.len().min(KEEP);
        self.differences
            .extend(part.differences.into_iter().take(room));
    }

    pub fn all_kept(&self) -> bool {
        self.differences.len() as u64 == self.missing + self.extra + self.different
    }

    /// The counts of the differences kept (all of them, after a re-check).
    pub(crate) fn recount(&mut self) {
        self.missing = 0;
        self.extra = 0;
        self.different = 0;
        for d in &self.differences {
            match d.kind {
                DiffKind::Missing => self.missing += 1,
                DiffKind::Extra => self.extra += 1,
                DiffKind::Different => self.different += 1,
            }
        }
    }
}

struct Cursor<'a> {
    reader: &'a dyn TableReader,
    table: &'a TableRef,
    buf: std::vec::IntoIter<Vec<Value>>,
    last: Option<Vec<Value>>,
    /// Rows end after this key.
    upto: Option<Vec<Value>>,
    chunk: usize,
    done: bool,
}

impl<'a> Cursor<'a> {
    fn new(
        reader: &'a dyn TableReader,
        table: &'a TableRef,
        after: Option<Vec<Value>>,
        chunk: usize,
    ) -> Self {
        Cursor {
            reader,
            table,
            buf: Vec::new().into_iter(),
            last: after,
            upto: None,
            chunk,
            done: false,
        }
    }

    /// A cursor over the rows of `range` only, read `page` rows at a time.
    fn range(
        reader: &'a dyn TableReader,
        table: &'a TableRef,
        range: &KeyRange,
        page: usize,
    ) -> Self {
        let mut c = Cursor::new(reader, table, range.lower.clone(), page);
        c.upto = range.upper.clone();
        c
    }

    async fn next_raw(&mut self) -> Result<Option<Vec<Value>>, Error> {
        loop {
            if let Some(row) = self.buf.next() {
                let key = self.table.key_of(&row);
                if self.upto.as_ref().is_some_and(|u| key > *u) {
                    self.done = true;
                    self.buf = Vec::new().into_iter();
                    return Ok(None);
                }
                self.last = Some(key);
                return Ok(Some(row));
            }
            if self.done {
                return Ok(None);
            }
            let rows = self
                .reader
                .read_rows(self.table, self.last.as_deref(), self.chunk)
                .await?;
            self.done = rows.len() < self.chunk;
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

/// The same row on both sides, or absent on both.
pub(crate) fn same_row(a: &Option<Vec<Value>>, b: &Option<Vec<Value>>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => identical_rows(x, y),
        (x, y) => x.is_none() && y.is_none(),
    }
}

/// The next source row that passes the pipeline's transform (filter,
/// projection), in target shape.
async fn next_source(
    s: &mut Cursor<'_>,
    transform: &Transform,
    source_table: &TableRef,
) -> Result<Option<Vec<Value>>, Error> {
    while let Some(row) = s.next_raw().await? {
        if let Some(r) = transform.rows(source_table, vec![row])?.pop() {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// The two sides of one table, and how source rows become target rows.
pub struct Sides<'a> {
    pub source: &'a dyn TableReader,
    pub target: &'a dyn TableReader,
    pub source_table: &'a TableRef,
    pub target_table: &'a TableRef,
    pub transform: &'a Transform,
    /// Source and target are databases of one engine: types compare by name.
    pub same_engine: bool,
    /// Stream every row even where both databases can digest them.
    pub rows_only: bool,
    /// The keys compared (`--after`, `--until`); a table without a key is
    /// compared whole.
    pub range: KeyRange,
    /// Compare only this percentage of the key ranges, chosen at random
    /// (`--sample`).
    pub sample: Option<f64>,
}

/// Compares the source table (in target shape) with the target's
/// declaration. Types are compared only between two databases of the same
/// engine, by their text; across engines `docs/types.md` gives the
/// mapping. Returns whether rows can be compared (every column is there).
fn compare_structure(
    table: &TableRef,
    shape: &DeclaredShape,
    same_engine: bool,
    v: &mut TableVerdict,
) -> bool {
    let norm = |t: &str| {
        t.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase()
    };
    let mut comparable = true;
    for c in &table.columns {
        match shape.columns.iter().find(|(n, _)| *n == c.name) {
            None => {
                comparable = false;
                v.structure
                    .push(format!("column {} is missing on the target", c.name));
            }
            Some((_, ty)) if same_engine && norm(ty) != norm(&c.source_type) => {
                v.structure.push(format!(
                    "column {}: type {} on the source, {} on the target",
                    c.name, c.source_type, ty
                ));
            }
            Some(_) => {}
        }
    }
    let extra: Vec<&str> = shape
        .columns
        .iter()
        .filter(|(n, _)| table.column_index(n).is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !extra.is_empty() {
        v.notes.push(format!(
            "the target has columns the source does not send, left alone: {}",
            extra.join(", ")
        ));
    }
    let key: Vec<&str> = table.key_names();
    if !key.is_empty() {
        if shape.key.is_empty() {
            v.notes.push(format!(
                "the target has no primary key (the source's key is ({}))",
                key.join(", ")
            ));
        } else if shape.key.iter().map(String::as_str).ne(key.iter().copied()) {
            v.structure.push(format!(
                "primary key ({}) on the target, key ({}) on the source",
                shape.key.join(", "),
                key.join(", ")
            ));
        }
    }
    if !comparable {
        v.notes
            .push("rows not compared: add the missing columns, or re-copy the table".into());
    }
    comparable
}

/// The read budget of one `ferry verify` (`--max-rows-per-sec`), shared
/// by every table compared at once.
pub struct Throttle {
    limit: u64,
    start: Instant,
    rows: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn new(limit: u64) -> Self {
        Throttle {
            limit: limit.max(1),
            start: Instant::now(),
            rows: Default::default(),
        }
    }

    /// Counts `rows` more read and, when reading faster than allowed,
    /// waits until the pace is kept.
    async fn take(&self, rows: u64) {
        use std::sync::atomic::Ordering;
        let total = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let due = Duration::from_secs_f64(total as f64 / self.limit as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// How fast a compare of one table may read, and where it reports how far
/// it got.
pub struct Pace<'a> {
    pub progress: &'a dyn Fn(u64),
    /// The budget shared with the other tables (`--max-rows-per-sec`).
    pub throttle: Option<&'a Throttle>,
    /// Rows of this table already counted against the budget.
    pub counted: std::sync::atomic::AtomicU64,
}

impl<'a> Pace<'a> {
    pub fn new(progress: &'a dyn Fn(u64), throttle: Option<&'a Throttle>) -> Self {
        Pace {
            progress,
            throttle,
            counted: Default::default(),
        }
    }

    /// Every [`PACE_EVERY`] rows: reports progress and, when reading
    /// faster than allowed, waits until the pace is kept.
    async fn tick(&self, rows: u64) {
        if rows.is_multiple_of(PACE_EVERY) {
            self.at(rows).await;
        }
    }

    /// Reports `rows` (read of this table so far) and, when reading faster
    /// than allowed, waits until the pace is kept.
    async fn at(&self, rows: u64) {
        (self.progress)(rows);
        if let Some(throttle) = self.throttle {
            let before = self
                .counted
                .fetch_max(rows, std::sync::atomic::Ordering::Relaxed);
            if rows > before {
                throttle.take(rows - before).await;
            }
        }
    }
}

/// Rows between two progress reports and pace checks.
const PACE_EVERY: u64 = 500;

/// Compares one source table with its target table.
pub async fn verify_table(sides: &Sides<'_>, pace: &Pace<'_>) -> Result<TableVerdict, Error> {
    let mut v = TableVerdict {
        on_target: sides.target.has_table(sides.target_table).await?,
        ..Default::default()
    };
    if !v.on_target {
        return Ok(v);
    }
    if let Some(shape) = sides.target.declared_shape(sides.target_table).await? {
        let comparable = compare_structure(sides.target_table, &shape, sides.same_engine, &mut v);
        if !comparable {
            return Ok(v);
        }
    }
    if sides.target_table.is_keyless() {
        if sides.range != KeyRange::all() || sides.sample.is_some() {
            v.notes
                .push("compared whole: a table without a key has no key ranges".into());
        }
        verify_keyless(sides, &mut v).await?;
        return Ok(v);
    }
    let ranges = match sides.sample {
        Some(percent) => sample_ranges(sides, percent, &mut v).await?,
        None => vec![sides.range.clone()],
    };
    let by_digests = digestible(sides, &v)?;
    for range in &ranges {
        if by_digests && verify_by_digests(sides, &mut v, pace, range).await? {
            continue;
        }
        compare_rows(sides, &mut v, range, pace, CHUNK).await?;
    }
    (pace.progress)(v.source_rows);
    Ok(v)
}

/// The key ranges `--sample` compares: the table (within `sides.range`)
/// cut every [`DIGEST_RANGE`] source rows where its key index says (keys
/// only are read: [`TableReader::key_after`]), each range kept at random
/// with a chance of `percent` in 100. The verdict notes how many.
async fn sample_ranges(
    sides: &Sides<'_>,
    percent: f64,
    v: &mut TableVerdict,
) -> Result<Vec<KeyRange>, Error> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let kept = |i: u64| {
        let mut h = DefaultHasher::new();
        (seed, i).hash(&mut h);
        (h.finish() % 1_000_000) as f64 <= percent * 10_000.0
    };
    let (mut out, mut total) = (Vec::new(), 0u64);
    let mut lower = sides.range.lower.clone();
    loop {
        let upper = sides
            .source
            .key_after(sides.source_table, lower.as_deref(), DIGEST_RANGE)
            .await?
            .filter(|k| sides.range.upper.as_ref().is_none_or(|u| k < u));
        let last = upper.is_none();
        let range = KeyRange {
            lower: lower.clone(),
            upper: upper.clone().or_else(|| sides.range.upper.clone()),
        };
        if kept(total) {
            out.push(range);
        }
        total += 1;
        if last {
            break;
        }
        lower = upper;
    }
    v.notes.push(format!(
        "sampled: {} of {total} key ranges of up to {DIGEST_RANGE} rows compared ({percent}% \
         asked); rows outside them were not compared",
        out.len()
    ));
    Ok(out)
}

/// The row digest both databases compute, the source's preference first
/// ([`TableReader::row_digests`]).
fn shared_digest(sides: &Sides<'_>) -> Option<&'static str> {
    let target = sides.target.row_digests();
    sides
        .source
        .row_digests()
        .into_iter()
        .find(|d| target.contains(d))
}

/// Both databases digest rows the same way, and the source's rows reach
/// the target unchanged: an engine's own digest needs columns of the same
/// declared types on both sides; the canonical digest
/// ([`ferry_core::canonical`]) compares values, whatever the engines.
fn digestible(sides: &Sides<'_>, v: &TableVerdict) -> Result<bool, Error> {
    let Some(digest) = shared_digest(sides) else {
        return Ok(false);
    };
    Ok(!sides.rows_only
        && (sides.same_engine || is_canonical(digest))
        && v.structure.is_empty()
        && sides.transform.keeps_rows(sides.source_table)?)
}

/// An order-dependent fold of range digests: equal sequences of ranges
/// give equal checksums.
fn fold(acc: u64, d: &RangeDigest) -> u64 {
    let mut h = DefaultHasher::new();
    (acc, d.rows, &d.sum).hash(&mut h);
    h.finish()
}

/// One key range and its digests on both sides.
struct Piece {
    range: KeyRange,
    source: RangeDigest,
    target: RangeDigest,
}

impl Piece {
    fn differs(&self) -> bool {
        self.source.rows != self.target.rows || self.source.sum != self.target.sum
    }
}

/// Cuts `range` into pieces of `step` source rows and digests each piece
/// on both sides. The cuts come one after another from the source's key
/// index ([`TableReader::key_after`], keys only); each piece is digested
/// on both sides as soon as it is cut, all pieces in flight together
/// (each database digests on a connection of its own, pipelined), so a
/// distant database pays about one round trip, not one per piece, and the
/// two databases digest at the same time. The last piece reaches the
/// range's upper end, so target rows past the source's last key are in
/// it. `None` when either database cannot digest this table. With `pace`
/// (and the rows counted before), reports the rows digested.
async fn digest_pieces(
    sides: &Sides<'_>,
    range: &KeyRange,
    step: u64,
    pace: Option<(&Pace<'_>, u64)>,
) -> Result<Option<Vec<Piece>>, Error> {
    use futures_util::StreamExt;
    let Some(digest) = shared_digest(sides) else {
        return Ok(None);
    };
    let cut_after = |lower: Option<Vec<Value>>| async move {
        let cut = sides
            .source
            .key_after(sides.source_table, lower.as_deref(), step)
            .await?;
        // A cut at or past the range's end ends it there.
        Ok::<_, Error>(cut.filter(|k| range.upper.as_ref().is_none_or(|u| k < u)))
    };
    let digest_both = |piece: KeyRange| async move {
        let (source, target) = tokio::join!(
            sides
                .source
                .digest_range(sides.source_table, &piece, None, digest),
            sides
                .target
                .digest_range(sides.target_table, &piece, None, digest)
        );
        (piece, source, target)
    };
    let mut pieces = Vec::new();
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    let (mut source_rows, mut target_rows) = (0, 0);
    let mut next_cut = Some(Box::pin(cut_after(range.lower.clone())));
    let mut lower = range.lower.clone();
    loop {
        tokio::select! {
            done = in_flight.next(), if !in_flight.is_empty() => {
                let done: Option<(KeyRange, DigestResult, DigestResult)> = done;
                let Some((piece, source, target)) = done else { continue };
                let (Some(source), Some(target)) = (source?, target?) else {
                    return Ok(None);
                };
                source_rows += source.rows;
                target_rows += target.rows;
                if let Some((pace, before)) = pace {
                    pace.at(before + source_rows.max(target_rows)).await;
                }
                pieces.push(Piece {
                    range: piece,
                    source,
                    target,
                });
            }
            cut = async { next_cut.as_mut().expect("guarded").await }, if next_cut.is_some() => {
                let cut = cut?;
                let piece = KeyRange {
                    lower: lower.clone(),
                    upper: cut.clone().or_else(|| range.upper.clone()),
                };
                next_cut = cut.is_some().then(|| Box::pin(cut_after(cut.clone())));
                lower = cut;
                in_flight.push_back(digest_both(piece));
            }
            else => return Ok(Some(pieces)),
        }
    }
}

/// One side's digest of a piece.
type DigestResult = Result<Option<RangeDigest>, Error>;

/// Compares a table by digests of key ranges of [`DIGEST_RANGE`] source
/// rows; a range whose digests differ is narrowed down
/// ([`narrow_down`]). `false` when either database cannot digest this
/// table (then nothing was counted).
async fn verify_by_digests(
    sides: &Sides<'_>,
    v: &mut TableVerdict,
    pace: &Pace<'_>,
    range: &KeyRange,
) -> Result<bool, Error> {
    // A source that cannot digest this table says so before any range is
    // cut: cutting reads rows where no index orders the key as ferry does.
    let Some(digest) = shared_digest(sides) else {
        return Ok(false);
    };
    let probe = sides
        .source
        .digest_range(sides.source_table, range, Some(0), digest)
        .await?;
    if probe.is_none() {
        return Ok(false);
    }
    let base = v.source_rows.max(v.target_rows);
    let Some(pieces) = digest_pieces(sides, range, DIGEST_RANGE, Some((pace, base))).await? else {
        return Ok(false);
    };
    let mut stats = v.digests.unwrap_or_default();
    for p in &pieces {
        stats.ranges += 1;
        v.source_rows += p.source.rows;
        v.target_rows += p.target.rows;
        v.source_checksum = fold(v.source_checksum, &p.source);
        v.target_checksum = fold(v.target_checksum, &p.target);
    }
    // Differing ranges are narrowed down a few at a time (a distant
    // database then pays a round trip per step for several at once), and
    // their differences recorded in key order.
    use futures_util::StreamExt;
    let mut narrowed = futures_util::stream::iter(pieces.into_iter().filter(Piece::differs))
        .map(|p| narrow_down(sides, p.range, p.source.rows))
        .buffered(NARROW_AT_ONCE);
    while let Some(done) = narrowed.next().await {
        let (part, fetched) = done?;
        v.absorb(part);
        stats.fetched += fetched;
    }
    v.digests = Some(stats);
    Ok(true)
}

/// Splits a range whose digests differ into eight by its source rows, and
/// those whose digests differ again, until a range has at most
/// [`FETCH_AT_MOST`] source rows; those are compared row by row. Returns
/// their differences and how many ranges were read row by row.
async fn narrow_down(
    sides: &Sides<'_>,
    range: KeyRange,
    source_rows: u64,
) -> Result<(TableVerdict, u64), Error> {
    let mut v = TableVerdict::default();
    let quiet = Pace::new(&|_| {}, None);
    let mut fetched = 0;
    // Ranges still to look at, the next one last.
    let mut todo = vec![(range, source_rows)];
    while let Some((range, rows)) = todo.pop() {
        if rows <= FETCH_AT_MOST {
            let mut part = TableVerdict::default();
            // One page holds the source's rows of the range and tells
            // where it ends (the target's extra rows take more pages).
            let page = (rows as usize + 1).min(CHUNK);
            compare_rows(sides, &mut part, &range, &quiet, page).await?;
            v.absorb(part);
            fetched += 1;
            continue;
        }
        let step = (rows / 8).max(FETCH_AT_MOST);
        let pieces = digest_pieces(sides, &range, step, None)
            .await?
            .ok_or_else(|| {
                Error::fatal("a database stopped digesting a table part way through the compare")
                    .with_fix("compare row by row with `ferry verify --method rows`")
            })?;
        todo.extend(
            pieces
                .into_iter()
                .filter(Piece::differs)
                .map(|p| (p.range, p.source.rows))
                .rev(),
        );
    }
    Ok((v, fetched))
}

/// Streams both sides of `range` in key order and records every
/// difference in `v`.
async fn compare_rows(
    sides: &Sides<'_>,
    v: &mut TableVerdict,
    range: &KeyRange,
    pace: &Pace<'_>,
    page: usize,
) -> Result<(), Error> {
    let table = sides.target_table;
    let mut s = Cursor::range(sides.source, sides.source_table, range, page);
    let mut t = Cursor::range(sides.target, table, range, page);
    let mut a = next_source(&mut s, sides.transform, sides.source_table).await?;
    let mut b = t.next_raw().await?;
    let mut last: Option<Vec<Value>> = range.lower.clone();
    loop {
        let ord = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => table.key_of(x).cmp(&table.key_of(y)),
        };
        let key;
        match ord {
            std::cmp::Ordering::Less => {
                let row = a.take().expect("row");
                v.source_rows += 1;
                v.source_checksum ^= row_hash(&row);
                key = table.key_of(&row);
                v.record(Difference {
                    kind: DiffKind::Missing,
                    key: key.clone(),
                    after: last.clone(),
                    source: Some(row),
                    target: None,
                });
                a = next_source(&mut s, sides.transform, sides.source_table).await?;
            }
            std::cmp::Ordering::Greater => {
                let row = b.take().expect("row");
                v.target_rows += 1;
                v.target_checksum ^= row_hash(&row);
                key = table.key_of(&row);
                v.record(Difference {
                    kind: DiffKind::Extra,
                    key: key.clone(),
                    after: last.clone(),
                    source: None,
                    target: Some(row),
                });
                b = t.next_raw().await?;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (a.take().expect("row"), b.take().expect("row"));
                v.source_rows += 1;
                v.target_rows += 1;
                v.source_checksum ^= row_hash(&x);
                v.target_checksum ^= row_hash(&y);
                key = table.key_of(&x);
                if !identical_rows(&x, &y) {
                    v.record(Difference {
                        kind: DiffKind::Different,
                        key: key.clone(),
                        after: last.clone(),
                        source: Some(x),
                        target: Some(y),
                    });
                }
                a = next_source(&mut s, sides.transform, sides.source_table).await?;
                b = t.next_raw().await?;
            }
        }
        last = Some(key);
        pace.tick(v.source_rows.max(v.target_rows)).await;
    }
    Ok(())
}

/// A table without a key has no order to walk both sides in, and may hold
/// identical rows: its rows are compared as multisets. Each side is
/// scanned once, counting rows by their hash (memory: a few bytes per
/// distinct row, not the rows); only when the counts differ are the sides
/// scanned again to find the differing rows. Checksums add (an XOR would
/// cancel identical rows out).
async fn verify_keyless(sides: &Sides<'_>, v: &mut TableVerdict) -> Result<(), Error> {
    let (source_table, transform) = (sides.source_table, sides.transform);
    let mut counts: HashMap<u64, i64> = HashMap::new();
    sides
        .source
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
    sides
        .target
        .scan_rows(sides.target_table, &mut |rows| {
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
    if counts.is_empty() {
        return Ok(());
    }
    // The rows whose count is off, as many times as it is off.
    let mut left = counts;
    let mut found = Vec::new();
    sides
        .source
        .scan_rows(source_table, &mut |rows| {
            for row in transform.rows(source_table, rows)? {
                if let Some(n) = left.get_mut(&row_hash(&row)).filter(|n| **n > 0) {
                    *n -= 1;
                    found.push((DiffKind::Missing, row));
                }
            }
            Ok(())
        })
        .await?;
    sides
        .target
        .scan_rows(sides.target_table, &mut |rows| {
            for row in rows {
                if let Some(n) = left.get_mut(&row_hash(&row)).filter(|n| **n < 0) {
                    *n += 1;
                    found.push((DiffKind::Extra, row));
                }
            }
            Ok(())
        })
        .await?;
    for (kind, row) in found {
        v.record(Difference {
            kind,
            key: row.clone(),
            after: None,
            source: (kind == DiffKind::Missing).then(|| row.clone()),
            target: (kind == DiffKind::Extra).then_some(row),
        });
    }
    Ok(())
}

/// The row with `d.key`, read after the key before it, in target shape;
/// `None` when it is not there (on the source: or the pipeline's filter
/// drops it). The key's values are the same in source and target shape.
pub(crate) async fn read_one(
    reader: &dyn TableReader,
    table: &TableRef,
    transform: Option<&Transform>,
    d: &Difference,
) -> Result<Option<Vec<Value>>, Error> {
    let mut c = Cursor::new(reader, table, d.after.clone(), 16);
    while let Some(row) = c.next_raw().await? {
        match table.key_of(&row).cmp(&d.key) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Greater => return Ok(None),
            std::cmp::Ordering::Equal => {}
        }
        return Ok(match transform {
            Some(t) => t.rows(table, vec![row])?.pop(),
            None => Some(row),
        });
    }
    Ok(None)
}

/// The position a table's rows on the target are applied up to.
fn applied_for(cp: &Checkpoint, table: &str) -> Option<Position> {
    let mut p = cp.applied.clone();
    if let Some(t) = cp.table_applied.get(table)
        && p.as_ref().is_none_or(|a| t > a)
    {
        p = Some(t.clone());
    }
    p
}

/// Waits until the target's checkpoint for `table` reaches `goal`.
/// `Err(reason)` when it does not: the pipeline is not running, or
/// `deadline` passed.
async fn wait_applied(
    store: &dyn CheckpointStore,
    table: &str,
    goal: &Position,
    deadline: Instant,
) -> Result<Result<(), String>, Error> {
    let mut seen = applied_for(&store.load().await?, table);
    let mut moved = Instant::now();
    loop {
        if seen.as_ref().is_some_and(|p| p >= goal) {
            return Ok(Ok(()));
        }
        let behind = |why: &str| {
            format!(
                "the target has applied up to {}, the source is at {goal}: {why}",
                seen.as_ref()
                    .map_or_else(|| "nothing".to_owned(), |p| p.to_string())
            )
        };
        if moved.elapsed() >= STALLED {
            return Ok(Err(behind("the pipeline is not running, or stalled")));
        }
        if Instant::now() >= deadline {
            return Ok(Err(behind("it did not catch up within --settle")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = applied_for(&store.load().await?, table);
        if now != seen {
            seen = now;
            moved = Instant::now();
        }
    }
}

/// Re-checks the differences of a keyed table that a pipeline is
/// replicating: each round reads the differing rows on the source, takes
/// the source's position, waits until the target has applied it, reads the
/// rows on the target. Rows equal then were only in flight. Rounds repeat
/// while rows keep changing; a difference two rounds in a row saw with the
/// same values is final.
pub async fn settle(
    sides: &Sides<'_>,
    source: &mut dyn Source,
    store: &dyn CheckpointStore,
    v: &mut TableVerdict,
    runner: &mut Runner<'_>,
    deadline: Instant,
) -> Result<(), Error> {
    if v.differences.is_empty() {
        return Ok(());
    }
    if !runner.active().await? {
        v.unsettled = Some(
            "no `ferry run` of this pipeline is running: rows it has not replicated yet \
             show as differences"
                .into(),
        );
        return Ok(());
    }
    if sides.target_table.is_keyless() {
        v.unsettled = Some("a table without a key cannot be re-checked row by row".into());
        return Ok(());
    }
    if !v.all_kept() {
        v.unsettled = Some(format!("more than {KEEP} rows differ; not re-checked"));
        return Ok(());
    }
    let name = sides.source_table.name.to_string();
    let before = v.differences.len() as u64;
    for _ in 0..ROUNDS {
        let mut now = Vec::with_capacity(v.differences.len());
        for d in &v.differences {
            let row = read_one(sides.source, sides.source_table, Some(sides.transform), d).await?;
            now.push(row);
        }
        let Some(goal) = source.current_position().await? else {
            v.unsettled = Some("the source cannot tell its current position".into());
            return Ok(());
        };
        if let Err(why) = wait_applied(store, &name, &goal, deadline).await? {
            v.unsettled = Some(why);
            return Ok(());
        }
        let mut still = Vec::new();
        let mut same = true;
        for (d, s) in v.differences.iter().zip(now) {
            let t = read_one(sides.target, sides.target_table, None, d).await?;
            if same_row(&s, &t) {
                continue;
            }
            let kind = match (&s, &t) {
                (Some(_), None) => DiffKind::Missing,
                (None, Some(_)) => DiffKind::Extra,
                _ => DiffKind::Different,
            };
            same &= d.source == s && d.target == t;
            still.push(Difference {
                kind,
                key: d.key.clone(),
                after: d.after.clone(),
                source: s,
                target: t,
            });
        }
        same &= still.len() == v.differences.len();
        v.settled_at = Some(goal);
        v.differences = still;
        if v.differences.is_empty() || same {
            break;
        }
    }
    v.recount();
    v.settled = before - v.differences.len() as u64;
    Ok(())
}

/// Whether a `ferry run` of the pipeline is running, asked once: its lock
/// on the target is held.
pub struct Runner<'a> {
    cfg: &'a crate::config::PipelineConfig,
    active: Option<bool>,
}

impl Runner<'_> {
    async fn active(&mut self) -> Result<bool, Error> {
        if let Some(a) = self.active {
            return Ok(a);
        }
        let probe = crate::connectors::open_sink(self.cfg).await?;
        // Taken: nobody runs the pipeline (dropping the probe gives it back).
        let a = probe.fence().await.is_err();
        self.active = Some(a);
        Ok(a)
    }
}

/// One line of text for a difference.
fn describe(table: &TableRef, d: &Difference) -> String {
    let what = if table.is_keyless() { "row" } else { "key" };
    match d.kind {
        DiffKind::Missing => format!("missing on target: {what} {}", display_key(&d.key)),
        DiffKind::Extra => format!("extra on target: {what} {}", display_key(&d.key)),
        DiffKind::Different => {
            let cols: Vec<String> = fields(table, d)
                .map(|(c, p, q)| format!("{c}: source {p} target {q}"))
                .collect();
            format!(
                "differs at key {}: {}",
                display_key(&d.key),
                cols.join("; ")
            )
        }
    }
}

/// The columns in which a differing row's two sides disagree.
fn fields<'a>(
    table: &'a TableRef,
    d: &'a Difference,
) -> impl Iterator<Item = (&'a str, &'a Value, &'a Value)> + 'a {
    let (s, t) = match (&d.source, &d.target) {
        (Some(s), Some(t)) => (s.as_slice(), t.as_slice()),
        _ => (&[][..], &[][..]),
    };
    table
        .columns
        .iter()
        .zip(s.iter().zip(t))
        .filter(|(_, (p, q))| !identical(p, q))
        .map(|(c, (p, q))| (c.name.as_str(), p, q))
}

/// Output format of `ferry verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(x) if x.is_finite() => (*x).into(),
        Value::Text(s) | Value::Json(s) => s.clone().into(),
        other => other.to_string().into(),
    }
}

fn json_key(table: &TableRef, d: &Difference) -> serde_json::Value {
    if table.is_keyless() {
        return d.key.iter().map(json_value).collect();
    }
    let names = table.key.iter().map(|&i| table.columns[i].name.clone());
    serde_json::Value::Object(names.zip(d.key.iter().map(json_value)).collect())
}

fn json_table(table: &TableRef, v: &TableVerdict) -> serde_json::Value {
    let differences: Vec<serde_json::Value> = v
        .differences
        .iter()
        .map(|d| {
            let mut o = serde_json::json!({ "kind": d.kind.as_str(), "key": json_key(table, d) });
            if d.kind == DiffKind::Different {
                o["fields"] = fields(table, d)
                    .map(|(c, p, q)| {
                        serde_json::json!({ "column": c, "source": json_value(p), "target": json_value(q) })
                    })
                    .collect();
            }
            o
        })
        .collect();
    serde_json::json!({
        "table": table.name.to_string(),
        "verdict": verdict(v),
        "source_rows": v.source_rows,
        "target_rows": v.target_rows,
        "missing": v.missing,
        "extra": v.extra,
        "different": v.different,
        "settled": v.settled,
        "settled_at": v.settled_at.as_ref().map(|p| p.to_string()),
        "structure": v.structure,
        "notes": v.notes,
        "method": if v.digests.is_some() { "digests" } else { "rows" },
        "digest_ranges": v.digests.map(|d| d.ranges),
        "ranges_read": v.digests.map(|d| d.fetched),
        "unsettled": v.unsettled,
        "repaired": v.repaired,
        "not_repaired": v.not_repaired,
        "differences": differences,
        "all_differences_listed": v.all_kept(),
    })
}

fn verdict(v: &TableVerdict) -> &'static str {
    if !v.on_target {
        "missing on target"
    } else if v.equal() {
        "equal"
    } else {
        "different"
    }
}

/// Writes the report; a reader that went away (`ferry verify | head`)
/// ends verify quietly.
struct Out {
    format: Format,
    json: Vec<serde_json::Value>,
    /// `--repair print`: the report goes out as SQL comments between the
    /// repair statements.
    sql: bool,
}

/// Exit code when the output pipe was closed: that of a program stopped by
/// SIGPIPE.
const CLOSED: u8 = 141;

impl Out {
    fn line(&self, s: &str) -> std::io::Result<()> {
        let mut o = std::io::stdout().lock();
        if self.sql {
            writeln!(o, "-- {s}")?;
        } else {
            writeln!(o, "{s}")?;
        }
        o.flush()
    }

    /// Text as it is (SQL statements).
    fn raw(&self, s: &str) -> std::io::Result<()> {
        let mut o = std::io::stdout().lock();
        o.write_all(s.as_bytes())?;
        o.flush()
    }

    fn table(&mut self, table: &TableRef, v: &TableVerdict) -> std::io::Result<()> {
        if self.format == Format::Json {
            self.json.push(json_table(table, v));
            return Ok(());
        }
        let name = &table.name;
        if !v.on_target {
            return self.line(&format!(
                "{name:<24} MISSING   on the target; the source has it (run the pipeline, or check `include`)"
            ));
        }
        let verdict = if v.equal() { "equal" } else { "DIFFERENT" };
        self.line(&format!(
            "{name:<24} {verdict:<9} source {} rows (checksum {:016x}), target {} rows (checksum {:016x})",
            v.source_rows, v.source_checksum, v.target_rows, v.target_checksum
        ))?;
        for s in &v.structure {
            self.line(&format!("    structure: {s}"))?;
        }
        for n in &v.notes {
            self.line(&format!("    note: {n}"))?;
        }
        if let Some(d) = v.digests {
            self.line(&format!(
                "    compared by digests computed in each database: {} key ranges, {} read row by row",
                d.ranges, d.fetched
            ))?;
        }
        if let Some(at) = &v.settled_at {
            self.line(&format!(
                "    {} rows changed while verify compared; re-checked once the target had applied {at}",
                v.settled + v.differences.len() as u64
            ))?;
        }
        if let Some(n) = v.repaired {
            self.line(&format!(
                "    repaired: {n} rows written or deleted on the target, then checked again"
            ))?;
        }
        if let Some(why) = &v.not_repaired {
            self.line(&format!("    not repaired: {why}"))?;
        }
        if v.equal() {
            return Ok(());
        }
        self.line(&format!(
            "    {} missing, {} extra, {} different{}",
            v.missing,
            v.extra,
            v.different,
            if v.repaired.is_some() {
                " after the repair"
            } else {
                ""
            }
        ))?;
        if let Some(why) = &v.unsettled {
            self.line(&format!("    not re-checked: {why}"))?;
        }
        for d in v.differences.iter().take(SHOW) {
            self.line(&format!("    {}", describe(table, d)))?;
        }
        Ok(())
    }

    fn end(&mut self, all_equal: bool) -> std::io::Result<()> {
        match self.format {
            Format::Text => self.line(if all_equal {
                "verify: source and target are equal"
            } else {
                "verify: source and target DIFFER"
            }),
            Format::Json => {
                let report = serde_json::json!({ "equal": all_equal, "tables": self.json });
                self.line(&report.to_string())
            }
        }
    }
}

/// What `ferry verify` was asked.
pub struct Options {
    pub format: Format,
    /// Only these tables (source or target names); all when empty.
    pub tables: Vec<String>,
    /// Longest wait for the target to catch up with a re-check.
    pub settle: Duration,
    pub repair: Option<crate::repair::Repair>,
    /// Rows per second read from each side at most.
    pub max_rows_per_sec: Option<u64>,
    pub method: Method,
    /// PostgreSQL's `statement_timeout` on every connection verify opens.
    pub statement_timeout: Option<Duration>,
    /// Tables compared at once.
    pub concurrency: usize,
    /// Only keys greater than this one (`--after`, as text).
    pub after: Option<String>,
    /// Only keys up to this one, inclusive (`--until`, as text).
    pub until: Option<String>,
    /// Only rows for which this SQL condition holds, on both sides
    /// (`--where`).
    pub condition: Option<String>,
    /// Compare only this percentage of each table's key ranges (`--sample`).
    pub sample: Option<f64>,
}

/// A key given on the command line, as values of `table`'s key columns:
/// one value per key column, separated by commas; a value in single
/// quotes is text as written (`''` for a quote in it).
pub(crate) fn parse_key(table: &TableRef, text: &str) -> Result<Vec<Value>, Error> {
    let bad = |why: String| {
        Error::fatal(format!("key {text:?} for table {}: {why}", table.name)).with_fix(format!(
            "give one value per key column ({}), separated by commas; quote text with \
             single quotes when it holds a comma",
            table.key_names().join(", ")
        ))
    };
    if table.is_keyless() {
        return Err(bad("the table has no key".into()));
    }
    let mut parts: Vec<(String, bool)> = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let (mut part, mut quoted) = (String::new(), false);
        if chars.peek() == Some(&'\'') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        part.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad("a quote is not closed".into())),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().filter(|c| **c != ',') {
                part.push(*c);
                chars.next();
            }
            part = part.trim().to_owned();
        }
        parts.push((part, quoted));
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(c) => return Err(bad(format!("unexpected {c:?} after a quoted value"))),
        }
    }
    if parts.len() != table.key.len() {
        return Err(bad(format!(
            "{} values for a key of {} columns",
            parts.len(),
            table.key.len()
        )));
    }
    table
        .key
        .iter()
        .zip(parts)
        .map(|(&k, (part, quoted))| {
            let col = &table.columns[k];
            key_value(&col.ty, &part, quoted).ok_or_else(|| {
                bad(format!(
                    "{part:?} is not a value of key column {} ({})",
                    col.name, col.source_type
                ))
            })
        })
        .collect()
}

/// `text` as a value of a key column of type `ty`.
fn key_value(ty: &ferry_core::ColumnType, text: &str, quoted: bool) -> Option<Value> {
    use ferry_core::ColumnType as T;
    use ferry_core::time;
    Some(match ty {
        T::Int16 | T::Int32 | T::Int64 => Value::Int(text.parse().ok()?),
        T::Text { .. } | T::Other { .. } => Value::Text(text.to_owned()),
        T::Dynamic => match text.parse() {
            Ok(i) if !quoted => Value::Int(i),
            _ => Value::Text(text.to_owned()),
        },
        T::Uuid => Value::Uuid(time::parse_uuid(text)?),
        T::Date => Value::Date(time::parse_date(text)?),
        T::Timestamp => Value::Timestamp(time::parse_timestamp(text)?),
        T::Decimal { .. } => {
            text.parse::<f64>().ok()?;
            Value::Decimal(ferry_core::value::normalize_decimal(text).into_owned())
        }
        T::Bool => Value::Bool(text.parse().ok()?),
        _ => return None,
    })
}

/// `e` with the way past it when it is a statement `--statement-timeout`
/// cancelled.
pub fn explain_timeout(e: Error, opts: &Options) -> Error {
    match opts.statement_timeout {
        Some(t) if e.to_string().contains("statement timeout") => e.with_fix(format!(
            "a statement took longer than --statement-timeout {}; raise it, compare fewer \
             tables at a time (--table), or run when the database is less busy (a lock held \
             on the table counts toward the time too)",
            t.as_secs_f64()
        )),
        _ => e,
    }
}

/// `e` with the way past it when `--where` may be why a database refused a
/// read.
fn explain_condition(e: Error, opts: &Options) -> Error {
    match &opts.condition {
        Some(c) if e.fix().is_none() => e.with_fix(format!(
            "check the --where condition `{c}`: both databases evaluate it on every table \
             compared, so it must fit each of them (limit the tables with --table)"
        )),
        _ => e,
    }
}

/// `cfg` with `statement_timeout` set on the connections of its
/// PostgreSQL endpoints (through the URL's `options`, which the server
/// applies at connection start).
fn with_statement_timeout(
    cfg: &crate::config::PipelineConfig,
    timeout: Option<Duration>,
) -> Result<crate::config::PipelineConfig, Error> {
    let mut cfg = cfg.clone();
    let Some(timeout) = timeout else {
        return Ok(cfg);
    };
    let ms = timeout.as_millis().max(1);
    for (side, url) in [
        ("source", &mut cfg.source.url),
        ("target", &mut cfg.target.url),
    ] {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            continue;
        }
        if url.contains("options=") {
            return Err(Error::fatal(format!(
                "`--statement-timeout` sets the {side} URL's `options`, which it sets already"
            ))
            .with_fix(format!(
                "add `-c statement_timeout={ms}` to the `options` of the {side} URL instead"
            )));
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        url.push_str(&format!("{sep}options=-c%20statement_timeout%3D{ms}"));
    }
    Ok(cfg)
}

/// How tables with a key are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// In-database digests of key ranges where both databases can, else rows.
    Auto,
    /// Every row streamed from both sides.
    Rows,
}

/// `ferry verify`: exit 0 when equal, 1 when not (2, an error, comes from
/// the caller).
pub async fn run(cfg: &crate::config::PipelineConfig, opts: &Options) -> Result<u8, Error> {
    use crate::connectors;
    let cfg = &with_statement_timeout(cfg, opts.statement_timeout)?;
    // Opened together: a distant database's connection round trips overlap.
    let (source, source_reader, target_reader, store) = tokio::join!(
        connectors::open_source(cfg),
        connectors::open_source_reader(cfg),
        connectors::open_sink_reader(cfg),
        connectors::open_sink(cfg)
    );
    let (mut source, mut source_reader, mut target_reader, store) =
        (source?, source_reader?, target_reader?, store?);
    if let Some(condition) = &opts.condition {
        source_reader.restrict(condition)?;
        target_reader.restrict(condition)?;
    }
    let transform = Transform::new(cfg.transform.clone());
    let mut runner = Runner { cfg, active: None };
    if opts.repair == Some(Repair::Print) && opts.format == Format::Json {
        return Err(Error::fatal("`--repair print` writes SQL, not JSON")
            .with_fix("leave out `--format json`, or repair with `--repair apply`"));
    }
    if opts.repair == Some(Repair::Apply) {
        // Held until verify ends: no `ferry run` starts while it repairs.
        store.fence().await.map_err(|e| {
            Error::fatal(format!(
                "`--repair apply` needs the pipeline stopped, and it runs: {}",
                e.message()
            ))
            .with_fix(
                "stop `ferry run` of this pipeline first; while it runs, repair a table online \
                 with `ferry resync TABLE`",
            )
        })?;
        runner.active = Some(false);
    }
    let mut out = Out {
        format: opts.format,
        json: Vec::new(),
        sql: opts.repair == Some(Repair::Print),
    };
    let tables = source.tables().await?;
    let digests_wanted = opts.method != Method::Rows;
    let wanted = |s: &TableRef, t: &TableRef| {
        opts.tables.is_empty()
            || opts.tables.iter().any(|w| {
                [s, t]
                    .iter()
                    .any(|x| *w == x.name.to_string() || *w == x.name.name)
            })
    };
    let unknown: Vec<&String> = opts
        .tables
        .iter()
        .filter(|w| {
            !tables
                .iter()
                .any(|s| *w == &s.name.to_string() || **w == s.name.name)
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Error::fatal(format!(
            "no selected source table is named {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_fix("name tables as `ferry status` lists them (schema.table or table)"));
    }
    let throttle = opts.max_rows_per_sec.filter(|l| *l > 0).map(Throttle::new);
    let bars = indicatif::MultiProgress::new();
    let same_engine = connectors::same_engine(cfg);
    let sides_of = |table: &TableRef| -> Result<(TableRef, KeyRange), Error> {
        let target = transform.target_table(table)?;
        let range = KeyRange {
            lower: opts
                .after
                .as_deref()
                .map(|k| parse_key(table, k))
                .transpose()?,
            upper: opts
                .until
                .as_deref()
                .map(|k| parse_key(table, k))
                .transpose()?,
        };
        Ok((target, range))
    };
    // Tables are compared `--concurrency` at a time; each is then settled,
    // repaired and reported in the source's order.
    let compares = tables
        .iter()
        .map(|table| Ok((table, sides_of(table)?)))
        .filter(|t: &Result<_, Error>| t.as_ref().map_or(true, |(s, (t, _))| wanted(s, t)))
        .map(|t| {
            let (source_reader, target_reader) = (source_reader.as_ref(), target_reader.as_ref());
            let (transform, throttle, bars) = (&transform, throttle.as_ref(), &bars);
            async move {
                let (table, (target, range)) = t?;
                let sides = Sides {
                    source: source_reader,
                    target: target_reader,
                    source_table: table,
                    target_table: &target,
                    transform,
                    same_engine,
                    rows_only: opts.method == Method::Rows,
                    range: range.clone(),
                    sample: opts.sample,
                };
                // An estimate only for a bar someone sees (it may cost a
                // count where a database keeps no statistics).
                let estimate = match show_progress() {
                    true => source_reader.estimate_rows(table).await.ok(),
                    false => None,
                };
                let bar = bars.add(progress_bar(&target, estimate));
                let progress = |n| bar.set_position(n);
                let pace = Pace::new(&progress, throttle);
                // Each side's digest connection opens while the table's
                // structure is read (a distant database's set-up round
                // trips overlap); opened once, a failure shows at the
                // first digest.
                let prepare = async {
                    if digests_wanted {
                        let _ = tokio::join!(
                            source_reader.prepare_digests(),
                            target_reader.prepare_digests()
                        );
                    }
                };
                let ((), v) = tokio::join!(prepare, verify_table(&sides, &pace));
                let v = v.map_err(|e| explain_condition(e, opts));
                bar.finish_and_clear();
                Ok::<_, Error>((table, target, range, v?))
            }
        });
    use futures_util::StreamExt;
    let mut compares = futures_util::stream::iter(compares).buffered(opts.concurrency.max(1));
    let mut all_equal = true;
    while let Some(compared) = compares.next().await {
        let (table, target, range, mut v) = compared?;
        let sides = Sides {
            source: source_reader.as_ref(),
            target: target_reader.as_ref(),
            source_table: table,
            target_table: &target,
            transform: &transform,
            same_engine,
            rows_only: opts.method == Method::Rows,
            range,
            sample: opts.sample,
        };
        settle(
            &sides,
            source.as_mut(),
            store.as_ref(),
            &mut v,
            &mut runner,
            Instant::now() + opts.settle,
        )
        .await?;
        let mut script = None;
        if let Some(mode) = opts.repair.filter(|_| !v.equal()) {
            match crate::repair::steps(&target, &v) {
                Err(why) => v.not_repaired = Some(why),
                Ok(steps) if mode == Repair::Print => match store.render_sql(&steps).await {
                    Ok(sql) => script = Some(sql),
                    Err(e) => v.not_repaired = Some(e.to_string()),
                },
                Ok(steps) => {
                    crate::repair::apply(store.as_ref(), &target, &steps).await?;
                    v.repaired = Some(steps.iter().map(|s| s.row_count() as u64).sum());
                    crate::repair::recheck(&sides, &mut v).await?;
                }
            }
        }
        all_equal &= v.equal();
        if out.table(&target, &v).is_err() {
            return Ok(CLOSED);
        }
        if let Some(sql) = script
            && out.raw(&sql).is_err()
        {
            return Ok(CLOSED);
        }
    }
    if out.end(all_equal).is_err() {
        return Ok(CLOSED);
    }
    Ok(if all_equal { 0 } else { 1 })
}

/// Whether progress bars are shown: stderr is a terminal.
fn show_progress() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Rows compared, rows/s and time left, on a terminal's stderr.
fn progress_bar(table: &TableRef, estimate: Option<u64>) -> indicatif::ProgressBar {
    if !show_progress() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(estimate.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:24} {wide_bar} {pos}/{len} rows {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(table.name.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, TableName, TableSchema};

    fn table() -> TableRef {
        let col = |name: &str, ty: ColumnType| Column {
            name: name.into(),
            ty,
            nullable: true,
            source_type: String::new(),
            user_type: None,
        };
        std::sync::Arc::new(TableSchema {
            name: TableName::bare("t"),
            columns: vec![
                col("id", ColumnType::Int64),
                col(
                    "v",
                    ColumnType::Text {
                        max_len: None,
                        fixed: false,
                    },
                ),
            ],
            key: vec![0],
            version: 1,
            key_deferrable: false,
        })
    }

    #[test]
    fn a_key_on_the_command_line_is_read_by_its_columns_types() {
        let mut t = TableSchema::clone(&table());
        t.key = vec![1, 0];
        let t: TableRef = std::sync::Arc::new(t);
        let text = |s: &str| Value::Text(s.into());
        assert_eq!(
            parse_key(&t, "eu, 42").unwrap(),
            vec![text("eu"), Value::Int(42)]
        );
        assert_eq!(
            parse_key(&t, "'a, b' ,7").unwrap(),
            vec![text("a, b"), Value::Int(7)]
        );
        assert_eq!(
            parse_key(&t, "'it''s',-1").unwrap(),
            vec![text("it's"), Value::Int(-1)]
        );
        for (bad, why) in [
            ("eu", "1 values for a key of 2 columns"),
            ("eu,x", "\"x\" is not a value of key column id"),
            ("'eu,1", "a quote is not closed"),
            ("'eu' x,1", "unexpected 'x' after a quoted value"),
        ] {
            let e = parse_key(&t, bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert!(e.fix().unwrap().contains("(v, id)"), "{bad}: {e:?}");
        }
    }

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

    #[test]
    fn a_difference_is_described_by_its_key_and_fields() {
        let t = table();
        let d = Difference {
            kind: DiffKind::Different,
            key: vec![Value::Int(3)],
            after: Some(vec![Value::Int(2)]),
            source: Some(vec![Value::Int(3), Value::Text("a".into())]),
            target: Some(vec![Value::Int(3), Value::Null]),
        };
        assert_eq!(
            describe(&t, &d),
            "differs at key (3): v: source \"a\" target NULL"
        );
        let j = json_table(
            &t,
            &TableVerdict {
                on_target: true,
                different: 1,
                differences: vec![d],
                ..Default::default()
            },
        );
        assert_eq!(j["verdict"], "different");
        assert_eq!(j["differences"][0]["key"]["id"], 3);
        assert_eq!(j["differences"][0]["fields"][0]["column"], "v");
        assert_eq!(
            j["differences"][0]["fields"][0]["target"],
            serde_json::Value::Null
        );
        assert_eq!(j["all_differences_listed"], true);
    }
}
