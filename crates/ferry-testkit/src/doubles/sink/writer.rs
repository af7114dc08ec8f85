//! The [`MemorySink`](super::MemorySink)'s writers: staged writes, row
//! locks, atomic commit.

use std::sync::Arc;

use async_trait::async_trait;
use ferry_core::{
    CheckpointRecord, EncodedRows, Error, KeyRange, Result, SinkWriter, Step, TableName, TableRef,
    Value, display_key,
};

use super::{CommitView, SinkShared, SinkState, Txn, applied_of, missing_table, no_txn};
use crate::doubles::{has_unchanged, overlay};

/// Whether another open transaction holds `key` of `table` (or, for `None`,
/// any row of it or the whole table).
fn conflicts(st: &SinkState, me: u64, table: &TableName, key: Option<&[Value]>) -> bool {
    st.open.iter().any(|(id, txn)| {
        *id != me
            && txn.tables.get(table).is_some_and(|ov| {
                ov.truncated
                    || match key {
                        Some(k) => ov.rows.contains_key(k),
                        None => !ov.rows.is_empty(),
                    }
            })
    })
}

impl SinkState {
    fn txn(&mut self, me: u64, what: &str) -> Result<&mut Txn> {
        self.open.get_mut(&me).ok_or_else(|| no_txn(what))
    }

    fn schema(&self, table: &TableName) -> Result<TableRef> {
        self.tables
            .get(table)
            .map(|t| t.schema.clone())
            .ok_or_else(|| missing_table(table))
    }

    /// The row as transaction `me` sees it.
    fn current(&self, me: u64, table: &TableName, key: &[Value]) -> Option<Vec<Value>> {
        if let Some(ov) = self.open.get(&me).and_then(|t| t.tables.get(table)) {
            if let Some(staged) = ov.rows.get(key) {
                return staged.clone();
            }
            if ov.truncated {
                return None;
            }
        }
        self.tables.get(table)?.rows.get(key).cloned()
    }

    /// Keys of `table` in `range` as transaction `me` sees them.
    fn keys_in(&self, me: u64, table: &TableName, range: &KeyRange) -> Vec<Vec<Value>> {
        let ov = self.open.get(&me).and_then(|t| t.tables.get(table));
        let mut keys: std::collections::BTreeSet<Vec<Value>> = match ov {
            Some(ov) if ov.truncated => Default::default(),
            _ => self
                .tables
                .get(table)
                .map(|t| {
                    t.rows
                        .keys()
                        .filter(|k| range.contains(k))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        };
        if let Some(ov) = ov {
            for (k, row) in ov.rows.iter().filter(|(k, _)| range.contains(k)) {
                match row {
                    Some(_) => keys.insert(k.clone()),
                    None => keys.remove(k),
                };
            }
        }
        keys.into_iter().collect()
    }

    fn stage(&mut self, me: u64, table: &TableName, key: Vec<Value>, row: Option<Vec<Value>>) {
        if let Some(t) = self.open.get_mut(&me) {
            t.tables
                .entry(table.clone())
                .or_default()
                .rows
                .insert(key, row);
        }
    }
}

pub(super) struct MemWriter {
    shared: Arc<SinkShared>,
    id: u64,
}

/// One row operation of an `apply`, staged under its lock.
enum RowWrite<'a> {
    Upsert(&'a [Value]),
    Update(&'a [Value]),
    Delete(&'a [Value]),
    Move {
        old_key: &'a [Value],
        row: &'a [Value],
    },
    Load(&'a [Value]),
}

impl MemWriter {
    pub(super) fn new(shared: Arc<SinkShared>, id: u64) -> Self {
        MemWriter { shared, id }
    }

    /// Runs `f` once no other open transaction holds any of `keys` of
    /// `table` (no keys: any row of it, for a table-wide write), waiting as
    /// a database would block.
    async fn locked<T>(
        &self,
        table: &TableName,
        keys: &[&[Value]],
        f: impl FnOnce(&mut SinkState, u64) -> Result<T>,
    ) -> Result<T> {
        loop {
            let ended = self.shared.txn_ended.notified();
            {
                let mut st = self.shared.lock();
                st.txn(self.id, "a write")?;
                let busy = if keys.is_empty() {
                    conflicts(&st, self.id, table, None)
                } else {
                    keys.iter().any(|k| conflicts(&st, self.id, table, Some(k)))
                };
                if !busy {
                    return f(&mut st, self.id);
                }
                st.lock_waits += 1;
            }
            ended.await;
        }
    }

    fn check_width(schema: &TableRef, row: &[Value]) -> Result<()> {
        if row.len() != schema.columns.len() {
            return Err(Error::fatal(format!(
                "MemorySink: a row of {} has {} values for {} columns",
                schema.name,
                row.len(),
                schema.columns.len()
            )));
        }
        Ok(())
    }

    async fn write(&self, table: &TableRef, w: RowWrite<'_>) -> Result<()> {
        let name = &table.name;
        let data_err = |msg: String, key: &[Value]| {
            Error::data(msg)
                .with("table", name.to_string())
                .with("key", display_key(key))
        };
        match w {
            RowWrite::Delete(key) => {
                self.locked(name, &[key], |st, me| {
                    st.schema(name)?;
                    st.stage(me, name, key.to_vec(), None);
                    Ok(())
                })
                .await
            }
            RowWrite::Upsert(row) | RowWrite::Update(row) | RowWrite::Load(row) => {
                let schema = self.shared.lock().schema(name)?;
                Self::check_width(&schema, row)?;
                let key = schema.key_of(row);
                let is_update = matches!(w, RowWrite::Update(_));
                let is_load = matches!(w, RowWrite::Load(_));
                self.locked(name, &[&key], |st, me| {
                    let current = st.current(me, name, &key);
                    let new = match (current, is_update, is_load) {
                        (Some(_), _, true) => {
                            return Err(data_err(
                                format!("MemorySink: duplicate key: load of an existing row of {name}"),
                                &key,
                            ));
                        }
                        (Some(mut cur), _, false) => {
                            overlay(&mut cur, row);
                            Some(cur)
                        }
                        (None, true, _) => None,
                        (None, false, _) if has_unchanged(row) => {
                            return Err(data_err(
                                format!(
                                    "MemorySink: {} of a missing row of {name} with unchanged values",
                                    if is_load { "load" } else { "upsert" }
                                ),
                                &key,
                            ));
                        }
                        (None, false, _) => Some(row.to_vec()),
                    };
                    if let Some(new) = new {
                        st.stage(me, name, key.clone(), Some(new));
                    }
                    if is_load {
                        st.txn(me, "load")?.loaded += 1;
                    }
                    Ok(())
                })
                .await
            }
            RowWrite::Move { old_key, row } => {
                let schema = self.shared.lock().schema(name)?;
                Self::check_width(&schema, row)?;
                let new_key = schema.key_of(row);
                self.locked(name, &[old_key, &new_key], |st, me| {
                    let base = st
                        .current(me, name, old_key)
                        // Re-applied after an ambiguous commit: the row
                        // already moved.
                        .or_else(|| st.current(me, name, &new_key));
                    let new = match base {
                        Some(mut b) => {
                            overlay(&mut b, row);
                            Some(b)
                        }
                        None if !has_unchanged(row) => Some(row.to_vec()),
                        None => None,
                    };
                    if let Some(new) = new {
                        st.stage(me, name, old_key.to_vec(), None);
                        st.stage(me, name, new_key.clone(), Some(new));
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// An online re-copy chunk: the rows of `range` become `rows`.
    async fn replace(
        &self,
        table: &TableRef,
        range: &KeyRange,
        rows: &[Vec<Value>],
        keep_others: bool,
    ) -> Result<()> {
        let name = &table.name;
        self.locked(name, &[], |st, me| {
            let schema = st.schema(name)?;
            if !keep_others {
                for k in st.keys_in(me, name, range) {
                    st.stage(me, name, k, None);
                }
            }
            for row in rows {
                Self::check_width(&schema, row)?;
                let key = schema.key_of(row);
                if !range.contains(&key) {
                    return Err(Error::fatal(format!(
                        "MemorySink: a re-copy row of {name} (key {}) is outside its range",
                        display_key(&key)
                    )));
                }
                st.stage(me, name, key, Some(row.clone()));
            }
            Ok(())
        })
        .await
    }

    async fn truncate(&self, table: &TableName) -> Result<()> {
        self.locked(table, &[], |st, me| {
            st.schema(table)?;
            let t = st.txn(me, "truncate")?;
            let ov = t.tables.entry(table.clone()).or_default();
            ov.truncated = true;
            ov.rows.clear();
            Ok(())
        })
        .await
    }

    fn end(&self, st: &mut SinkState) -> Option<Txn> {
        let txn = st.open.remove(&self.id);
        self.shared.txn_ended.notify_waiters();
        txn
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        // A connection dropped mid-transaction rolls it back.
        self.end(&mut st);
        st.live_writers -= 1;
    }
}

#[async_trait]
impl SinkWriter for MemWriter {
    async fn begin(&mut self) -> Result<()> {
        let mut st = self.shared.lock();
        if st.open.contains_key(&self.id) {
            return Err(Error::fatal("MemorySink: begin inside an open transaction"));
        }
        st.open.insert(self.id, Txn::default());
        Ok(())
    }

    async fn apply(&mut self, steps: &[Step]) -> Result<()> {
        self.shared.lock().txn(self.id, "apply")?;
        for step in steps {
            match step {
                Step::Rows(ops) => {
                    for t in ops {
                        for key in &t.deletes {
                            self.write(&t.table, RowWrite::Delete(key)).await?;
                        }
                        for row in &t.upserts {
                            self.write(&t.table, RowWrite::Upsert(row)).await?;
                        }
                        for row in &t.updates {
                            self.write(&t.table, RowWrite::Update(row)).await?;
                        }
                    }
                }
                Step::Truncate(tables) => {
                    for t in tables {
                        self.truncate(&t.name).await?;
                    }
                }
                Step::Schema { table, .. } => {
                    // A table new to the pipeline is created.
                    let mut st = self.shared.lock();
                    if st.schema(&table.name).is_err() {
                        st.tables.insert(
                            table.name.clone(),
                            super::MemTable {
                                schema: table.clone(),
                                rows: Default::default(),
                            },
                        );
                    }
                }
                Step::MoveKey {
                    table,
                    old_key,
                    row,
                } => {
                    self.write(table, RowWrite::Move { old_key, row }).await?;
                }
                Step::Replace {
                    table,
                    range,
                    rows,
                    keep_others,
                } => self.replace(table, range, rows, *keep_others).await?,
                Step::Stamp { .. } => {}
                // Rows are held by key here; keyless tables, and conflict
                // checks, are tested against real databases.
                Step::Keyless { table, .. } | Step::Checked { table, .. } => {
                    return Err(Error::fatal(format!(
                        "MemorySink: table {} has no key, which this double does not model",
                        table.name
                    )));
                }
            }
        }
        Ok(())
    }

    async fn load(&mut self, table: &TableRef, rows: &[Vec<Value>]) -> Result<()> {
        self.shared.lock().txn(self.id, "load")?;
        for row in rows {
            self.write(table, RowWrite::Load(row)).await?;
        }
        Ok(())
    }

    async fn load_encoded(&mut self, table: &TableRef, rows: EncodedRows) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !self.shared.encoded.load(Ordering::SeqCst)
            || rows.encoding != crate::doubles::MEMORY_ROW_ENCODING
        {
            return Err(Error::fatal(format!(
                "MemorySink: cannot load rows encoded as {}",
                rows.encoding
            )));
        }
        let decoded = crate::doubles::decode_rows(&rows.data)?;
        if decoded.len() != rows.rows {
            return Err(Error::fatal("MemorySink: encoded row count is wrong"));
        }
        self.load(table, &decoded).await?;
        self.shared.encoded_loads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn clear_table(&mut self, table: &TableRef) -> Result<()> {
        self.shared.lock().txn(self.id, "clear_table")?;
        self.truncate(&table.name).await
    }

    async fn commit(&mut self, records: &[CheckpointRecord]) -> Result<()> {
        let mut st = self.shared.lock();
        let txn = st.open.get(&self.id).ok_or_else(|| no_txn("commit"))?;
        if let Some(missing) = txn.tables.keys().find(|t| !st.tables.contains_key(*t)) {
            return Err(missing_table(missing));
        }
        let txn = self.end(&mut st).expect("checked above");
        for (name, ov) in txn.tables {
            let table = st.tables.get_mut(&name).expect("checked above");
            if ov.truncated {
                table.rows.clear();
            }
            for (key, row) in ov.rows {
                match row {
                    Some(r) => table.rows.insert(key, r),
                    None => table.rows.remove(&key),
                };
            }
        }
        for r in records {
            st.checkpoint.insert(r.scope.clone(), r.value.clone());
        }
        st.commits += 1;
        st.rows_loaded += txn.loaded;
        if let Some(p) = applied_of(records) {
            st.applied.push(p);
        }
        let view = CommitView {
            number: st.commits,
            records,
            tables: &st.tables,
        };
        for f in self
            .shared
            .observers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            f(&view);
        }
        Ok(())
    }

    async fn rollback(&mut self) -> Result<()> {
        let mut st = self.shared.lock();
        self.end(&mut st);
        Ok(())
    }
}
