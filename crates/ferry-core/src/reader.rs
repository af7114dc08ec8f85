//! Reading table contents back, for `ferry verify`.

use async_trait::async_trait;

use crate::checkpoint::KeyRange;
use crate::error::Result;
use crate::schema::TableRef;
use crate::value::Value;

/// A table as its database declares it: each column's name and type text
/// (PostgreSQL: `format_type`; SQLite: the declared type), and the key's
/// columns. `ferry verify` compares it with the source's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeclaredShape {
    pub columns: Vec<(String, String)>,
    pub key: Vec<String>,
}

/// The rows of one key range, digested inside the database that holds
/// them: how many there are and an order-independent hash of them, so two
/// databases compare a range without sending its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeDigest {
    pub rows: u64,
    /// The sum of the rows' 64-bit hashes, as decimal text (it outgrows
    /// 64 bits).
    pub sum: String,
    /// The greatest key among the rows (`None` when there are none).
    pub last: Option<Vec<Value>>,
}

/// The key of row `n` (counted from 1) of `rows`, when there are that many:
/// [`TableReader::key_after`] from rows read.
pub fn key_of_nth(table: &TableRef, rows: &[Vec<Value>], n: u64) -> Option<Vec<Value>> {
    match rows.last() {
        Some(row) if rows.len() as u64 >= n => Some(table.key_of(row)),
        _ => None,
    }
}

/// Reads rows of a table in key order. Implemented by sources (reading the
/// source tables) and sinks (reading the target tables).
///
/// Order contract: rows come in ascending key order as [`Value`]'s `Ord`
/// defines it (text by bytes: `COLLATE "C"` / `BINARY`), so two readers of
/// equal tables return equal sequences.
#[async_trait]
pub trait TableReader: Send + Sync {
    async fn count_rows(&self, table: &TableRef) -> Result<u64>;

    /// How `table` is declared here; `None` when it does not exist or the
    /// connector cannot tell.
    async fn declared_shape(&self, table: &TableRef) -> Result<Option<DeclaredShape>> {
        let _ = table;
        Ok(None)
    }

    /// Whether `table` exists here. `ferry verify` reports a table missing
    /// on one side as a difference instead of failing on it.
    async fn has_table(&self, table: &TableRef) -> Result<bool> {
        let _ = table;
        Ok(true)
    }

    /// About how many rows `table` has, for progress bars: a database's
    /// statistics where counting would read the whole table. Defaults to
    /// [`count_rows`](Self::count_rows).
    async fn estimate_rows(&self, table: &TableRef) -> Result<u64> {
        self.count_rows(table).await
    }

    /// Every row of a table without a key (which has no key order), in no
    /// particular order, handed to `on_rows` a batch at a time.
    async fn scan_rows(
        &self,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        let _ = on_rows;
        Err(crate::Error::fatal(format!(
            "this database cannot read table {} without a key",
            table.name
        )))
    }

    /// Limits every later read, digest and scan of this reader to the rows
    /// for which `condition` holds: an SQL boolean expression over the
    /// table's columns in this database's dialect (`ferry verify --where`).
    fn restrict(&mut self, condition: &str) -> Result<()> {
        let _ = condition;
        Err(
            crate::Error::fatal("this database cannot limit a compare to the rows of a condition")
                .with_fix("leave out --where"),
        )
    }

    /// Opens what digests need ahead of the first one (a connection of
    /// their own), so that a distant database's set-up overlaps other
    /// work. Nothing by default.
    async fn prepare_digests(&self) -> Result<()> {
        Ok(())
    }

    /// The row digests [`digest_range`](Self::digest_range) can compute,
    /// preferred first: two readers giving the same name give equal
    /// digests for equal rows. An engine's own digest (equal only between
    /// tables of the same declared types of that engine) comes before
    /// [`CANONICAL_DIGEST`](crate::canonical::CANONICAL_DIGEST), which
    /// every engine computes alike. Empty: this reader cannot digest rows
    /// where they are.
    fn row_digests(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// The `digest` (one of [`row_digests`](Self::row_digests)) of the
    /// rows of `table` in `range`, the first `limit` of them in key order
    /// when a limit is given (then `last` is where the next range starts).
    /// `None` when this table cannot be digested so here (for instance a
    /// key no index orders as ferry does, which would make every range a
    /// full scan, or a column the digest cannot encode).
    async fn digest_range(
        &self,
        table: &TableRef,
        range: &KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<RangeDigest>> {
        let _ = (table, range, limit, digest);
        Ok(None)
    }

    /// The key of the row `rows` rows past `after` in key order (the first
    /// row's when `rows` is 1), `None` when fewer rows follow `after`:
    /// where `ferry verify --sample` cuts a table into key ranges. The
    /// default reads those rows; a database that can skip through its
    /// key's index reads only keys.
    async fn key_after(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        let got = self.read_rows(table, after, rows.max(1) as usize).await?;
        Ok(key_of_nth(table, &got, rows))
    }

    /// Up to `limit` full rows with key greater than `after` (all keys when `None`).
    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>>;
}
