//! The benchmark's data: the source table and its rows, the change
//! workload, and the fingerprint that guards every copy.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{Ctx, Res};

/// The one table of the benchmark.
pub const DDL: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER NOT NULL, b TEXT NOT NULL, c REAL, d DATETIME)";

const INSERT: &str =
    "INSERT INTO t(id, a, b, c, d) VALUES (?1, ?2, ?3, ?4, datetime(?5, 'unixepoch'))";
const UPDATE: &str = "UPDATE t SET a = ?1, b = ?2, c = ?3 WHERE id = ?4";
const DELETE: &str = "DELETE FROM t WHERE id = ?1";

/// SplitMix64: deterministic, fast, and no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One row's values besides the key: about 100 bytes stored (`b` 50–70
/// characters, mean 60).
struct RowValues {
    a: i64,
    b: String,
    c: Option<f64>,
    d: i64,
}

fn row_values(rng: &mut Rng) -> RowValues {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let len = 50 + rng.below(21) as usize;
    let b = (0..len)
        .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char)
        .collect();
    RowValues {
        a: rng.below(1_000_000_000) as i64,
        b,
        // One row in 20 has no `c`, so NULLs are part of the copy.
        c: (rng.below(20) != 0).then(|| rng.below(10_000_000) as f64 / 1000.0),
        // 2020-01-01 .. ~2025-09 as unix seconds.
        d: 1_577_836_800 + rng.below(180_000_000) as i64,
    }
}

/// Opens a database the way an application would: WAL, `synchronous=NORMAL`
/// (the usual WAL setting), waiting up to 30 s for another writer's lock.
pub fn open(path: &Path) -> Res<Connection> {
    let c = Connection::open(path).ctx(|| format!("opening {}", path.display()))?;
    c.busy_timeout(Duration::from_secs(30))
        .ctx(|| "busy_timeout".into())?;
    let mode: String = c
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .ctx(|| format!("switching {} to WAL", path.display()))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("{} stayed in journal mode {mode}", path.display()));
    }
    c.execute_batch("PRAGMA synchronous=NORMAL")
        .ctx(|| "synchronous=NORMAL".into())?;
    Ok(c)
}

/// Creates `path` with table `t` holding ids `1..=rows`, in one transaction,
/// then checkpoints the WAL into the main file so every reader starts from
/// the same place.
pub fn create_source(path: &Path, rows: u64, seed: u64) -> Res<()> {
    let mut c = open(path)?;
    c.execute_batch(DDL).ctx(|| "creating t".into())?;
    let mut rng = Rng::new(seed);
    let tx = c.transaction().ctx(|| "begin".into())?;
    {
        let mut st = tx.prepare(INSERT).ctx(|| "prepare insert".into())?;
        for id in 1..=rows as i64 {
            let v = row_values(&mut rng);
            st.execute(params![id, v.a, v.b, v.c, v.d])
                .ctx(|| format!("inserting row {id}"))?;
        }
    }
    tx.commit().ctx(|| "commit".into())?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .ctx(|| "checkpointing the source".into())?;
    Ok(())
}

/// What the correctness guard compares between source and target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fingerprint {
    pub count: i64,
    pub sum_a: i64,
    pub total_len_b: f64,
}

pub fn fingerprint(path: &Path) -> Res<Fingerprint> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .ctx(|| format!("opening {}", path.display()))?;
    c.busy_timeout(Duration::from_secs(30))
        .ctx(|| "busy_timeout".into())?;
    c.query_row(
        "SELECT count(*), COALESCE(sum(a), 0), total(length(b)) FROM t",
        [],
        |r| {
            Ok(Fingerprint {
                count: r.get(0)?,
                sum_a: r.get(1)?,
                total_len_b: r.get(2)?,
            })
        },
    )
    .ctx(|| format!("fingerprinting t in {}", path.display()))
}

/// Fails loudly when the copy differs: a benchmark of a wrong copy is worthless.
pub fn guard(what: &str, source: &Path, target: &Path) -> Res<Fingerprint> {
    let s = fingerprint(source)?;
    let t = fingerprint(target)?;
    if s != t {
        return Err(format!(
            "CORRECTNESS GUARD FAILED after {what}: source {} has {s:?} but target {} has {t:?} \
             (count(*), sum(a), total(length(b)) of t)",
            source.display(),
            target.display()
        ));
    }
    eprintln!(
        "   guard ok after {what}: {} rows, sum(a) {}, total(length(b)) {}",
        s.count, s.sum_a, s.total_len_b
    );
    Ok(s)
}

/// The highest `_ferry_changes.seq` ever handed out (AUTOINCREMENT keeps it
/// in `sqlite_sequence` even after ferry prunes applied changes); 0 before
/// any capture.
pub fn max_change_seq(c: &Connection) -> Res<i64> {
    let seq: Option<i64> = c
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = '_ferry_changes'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ctx(|| "reading the change sequence".into())?;
    Ok(seq.unwrap_or(0))
}

/// Counts of what a [`Writer`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    pub changes: u64,
    pub transactions: u64,
    pub updates: u64,
    pub inserts: u64,
    pub deletes: u64,
    pub elapsed: Duration,
}

impl Written {
    pub fn rate(&self) -> f64 {
        self.changes as f64 / self.elapsed.as_secs_f64()
    }
}

/// Makes row changes on the source in small transactions: 60 % single-row
/// UPDATE of a random live id, 20 % INSERT of a new id, 20 % DELETE of a
/// random live id; 1–5 changes per transaction, each committed.
pub struct Writer {
    conn: Connection,
    /// Ids present in the source table, so every UPDATE and DELETE hits
    /// exactly one row and changes are counted exactly.
    live: Vec<i64>,
    next_id: i64,
    rng: Rng,
}

impl Writer {
    /// `rows`: the source holds ids `1..=rows` (as [`create_source`] made it).
    pub fn new(path: &Path, rows: u64, seed: u64) -> Res<Writer> {
        Ok(Writer {
            conn: open(path)?,
            live: (1..=rows as i64).collect(),
            next_id: rows as i64 + 1,
            rng: Rng::new(seed),
        })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Writes exactly `changes` row changes and returns the counts.
    pub fn write(&mut self, changes: u64) -> Res<Written> {
        let mut w = Written::default();
        let start = Instant::now();
        while w.changes < changes {
            let k = (1 + self.rng.below(5)).min(changes - w.changes);
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .ctx(|| "begin immediate on the source".into())?;
            for _ in 0..k {
                let roll = self.rng.below(100);
                let n = if roll < 60 && !self.live.is_empty() {
                    let id = self.live[self.rng.below(self.live.len() as u64) as usize];
                    let v = row_values(&mut self.rng);
                    w.updates += 1;
                    tx.prepare_cached(UPDATE)
                        .and_then(|mut s| s.execute(params![v.a, v.b, v.c, id]))
                        .ctx(|| format!("updating id {id}"))?
                } else if roll < 80 || self.live.is_empty() {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.live.push(id);
                    let v = row_values(&mut self.rng);
                    w.inserts += 1;
                    tx.prepare_cached(INSERT)
                        .and_then(|mut s| s.execute(params![id, v.a, v.b, v.c, v.d]))
                        .ctx(|| format!("inserting id {id}"))?
                } else {
                    let at = self.rng.below(self.live.len() as u64) as usize;
                    let id = self.live.swap_remove(at);
                    w.deletes += 1;
                    tx.prepare_cached(DELETE)
                        .and_then(|mut s| s.execute([id]))
                        .ctx(|| format!("deleting id {id}"))?
                };
                if n != 1 {
                    return Err(format!("a single-row change touched {n} rows"));
                }
                w.changes += 1;
            }
            tx.commit().ctx(|| "commit on the source".into())?;
            w.transactions += 1;
        }
        w.elapsed = start.elapsed();
        Ok(w)
    }
}
