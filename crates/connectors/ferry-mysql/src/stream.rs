//! Change capture from the row-based binlog.
//!
//! The stream is a binlog dump (`COM_BINLOG_DUMP`) from a file and offset,
//! as a replica would request it. Row events (`binlog_row_image` FULL or
//! MINIMAL: a column an image lacks is [`Value::Unchanged`]) are grouped
//! into transactions by their boundaries (`BEGIN` … `XID` or `COMMIT`; a
//! DDL statement is a transaction of its own), each delivered whole at the
//! offset just past its last event. Transactions that touch none of the
//! pipeline's tables, and the server's heartbeats while it is idle, move
//! the position forward as heartbeats.
//!
//! A DDL statement makes the stream read the selected tables' structure
//! again and report each change as a [`Change::Schema`] in stream order. A
//! row event that does not fit the structure ferry holds for its table (the
//! binlog being read is older than a structure change ferry could not
//! follow) stops the stream with the reason and the fix: never decode rows
//! with the wrong columns.

use std::collections::HashMap;
use std::time::Duration;

use ferry_core::{
    Alteration, Change, Error, MySqlPosition, Position, Result, Selection, SourceEvent, TableRef,
    TableSchema, Transaction, Value,
};
use futures_util::StreamExt;
use mysql_async::binlog::events::{EventData, RowsEventData, TableMapEvent};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};

use crate::catalog::{MyTable, read_tables};
use crate::connection::Endpoint;
use crate::error::my_error;
use crate::recopy::{Chunk, Recopies};
use crate::types::{Origin, added_column_value, decode};

/// How often an idle server sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A transaction this large is handed on in parts.
const PART_CHANGES: usize = 20_000;

pub(crate) struct BinlogReader {
    events: BinlogStream,
    /// A second connection, to read structure after DDL.
    meta: Conn,
    database: String,
    selection: Selection,
    /// The selected tables by name, as the stream knows them now.
    tables: HashMap<String, MyTable>,
    /// The binlog file being read.
    file: String,
    /// The end of the last whole transaction delivered.
    position: MySqlPosition,
    /// Inside `BEGIN` … commit.
    in_transaction: bool,
    pending: Vec<Change>,
    /// Part of the open transaction was handed on already.
    sent_part: bool,
    /// Events decoded but not yet handed on.
    ready: std::collections::VecDeque<SourceEvent>,
    /// Online re-copies, and the chunk read waiting for its position.
    recopies: Recopies,
    chunk: Option<Chunk>,
}

impl BinlogReader {
    /// Starts reading the binlog right after `from`.
    pub(crate) async fn start(
        endpoint: &Endpoint,
        server_id: u32,
        from: MySqlPosition,
        tables: Vec<MyTable>,
        selection: Selection,
        chunk_rows: Option<usize>,
    ) -> Result<BinlogReader> {
        let mut conn = endpoint.connect().await?;
        let doing = "starting the binlog stream";
        conn.query_drop(format!(
            "SET @master_heartbeat_period = {}",
            HEARTBEAT.as_nanos()
        ))
        .await
        .map_err(|e| my_error(e, doing))?;
        let request = BinlogStreamRequest::new(server_id)
            .with_filename(from.file.as_bytes())
            .with_pos(from.offset);
        let events = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| my_error(e, doing))?;
        let meta = endpoint.connect().await?;
        Ok(BinlogReader {
            events,
            meta,
            database: endpoint.database().to_owned(),
            selection,
            tables: tables
                .into_iter()
                .map(|t| (t.table.name.name.clone(), t))
                .collect(),
            file: from.file.clone(),
            position: from,
            in_transaction: false,
            pending: Vec::new(),
            sent_part: false,
            ready: Default::default(),
            recopies: Recopies::new(endpoint.clone(), chunk_rows),
            chunk: None,
        })
    }

    /// Starts the online re-copy of `table` after key `after`.
    pub(crate) fn recopy(&mut self, table: &TableRef, after: Option<Vec<Value>>) -> Result<()> {
        let known = self.tables.get(&table.name.name).cloned().ok_or_else(|| {
            Error::fatal(format!(
                "table {} is not among the source's selected tables",
                table.name
            ))
        })?;
        self.recopies.start(known, after);
        Ok(())
    }

    /// Reads the next re-copy chunk when none waits, and hands the waiting
    /// one on once the stream stands at its position.
    async fn recopy_step(&mut self) -> Result<()> {
        if self.in_transaction {
            return Ok(());
        }
        if self.chunk.is_none() && !self.recopies.is_empty() {
            self.chunk = self.recopies.read().await?;
        }
        if self.chunk.as_ref().is_some_and(|c| c.at <= self.position) {
            self.hand_on_chunk();
        }
        Ok(())
    }

    /// Hands the waiting chunk on, as a transaction at its position (or at
    /// the stream's, when that is the same moment: nothing committed since).
    fn hand_on_chunk(&mut self) {
        let Some(chunk) = self.chunk.take() else {
            return;
        };
        if chunk.at > self.position {
            self.position = chunk.at;
        }
        self.ready.push_back(SourceEvent::Commit(Transaction {
            position: Position::MySql(self.position.clone()),
            commit_time_micros: None,
            changes: vec![Change::RecopyRows {
                table: chunk.table,
                range: chunk.range,
                rows: chunk.rows,
            }],
        }));
    }

    /// The next transaction, part of one, or heartbeat.
    pub(crate) async fn next(&mut self) -> Result<SourceEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            self.recopy_step().await?;
            if let Some(event) = self.ready.pop_front() {
                return Ok(event);
            }
            let event = match self.events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(stream_error(e, &self.position)),
                None => {
                    return Err(Error::transient(
                        "the source closed the binlog stream (server restarting?)",
                    )
                    .with_connection_lost());
                }
            };
            let header = event.header();
            let end = u64::from(header.log_pos());
            let time = i64::from(header.timestamp()) * 1_000_000;
            let data = event.read_data().map_err(|e| {
                Error::fatal(format!(
                    "a binlog event at {}:{end} cannot be decoded: {e}",
                    self.file
                ))
            })?;
            match data {
                Some(EventData::RotateEvent(rotate)) => {
                    self.rotate(rotate.name().into_owned(), rotate.position());
                }
                Some(EventData::HeartbeatEvent) if !self.in_transaction && end > 0 => {
                    let at = MySqlPosition {
                        file: self.file.clone(),
                        offset: end,
                    };
                    if at > self.position {
                        self.position = at;
                    }
                    self.heartbeat(None);
                }
                Some(EventData::QueryEvent(query)) => {
                    let sql = query.query().into_owned();
                    let schema = query.schema().into_owned();
                    self.query(&sql, &schema, end, time).await?;
                }
                Some(EventData::XidEvent(_)) => self.commit(end, time),
                Some(EventData::RowsEvent(rows)) => {
                    let Some(tme) = self.events.get_tme(rows.table_id()) else {
                        return Err(Error::fatal(format!(
                            "a row event at {}:{end} names a table the binlog never described",
                            self.file
                        )));
                    };
                    match self.rows(&rows, tme, end)? {
                        Rows::Changes(changes) => self.pending.extend(changes),
                        Rows::Unfollowable(table, width) => {
                            self.recopy_by_itself(&table, width, end)?
                        }
                    }
                    if self.pending.len() >= PART_CHANGES {
                        self.sent_part = true;
                        let position = Position::MySql(MySqlPosition {
                            file: self.file.clone(),
                            offset: end,
                        });
                        let changes = std::mem::take(&mut self.pending);
                        self.ready
                            .push_back(SourceEvent::Partial { position, changes });
                    }
                }
                _ => {}
            }
        }
    }

    fn rotate(&mut self, name: String, _position: u64) {
        // The rotate a dump starts with carries the file's name followed by
        // the event's checksum when checksums are on; binlog file names end
        // in digits, so whatever follows them is not part of the name.
        let name = trim_checksum(&name, &self.file);
        if name != self.file {
            tracing::debug!(from = %self.file, to = %name, "binlog rotated");
            self.file = name;
        }
    }

    /// A statement event: a transaction boundary or DDL.
    async fn query(&mut self, sql: &str, schema: &str, end: u64, time: i64) -> Result<()> {
        let statement = sql.trim_start();
        let first = first_words(statement, 2);
        match first.as_slice() {
            [w, ..] if w == "BEGIN" || (w == "START" && statement.len() > 5) => {
                self.in_transaction = true;
                return Ok(());
            }
            [w, ..] if w == "COMMIT" => {
                self.commit(end, time);
                return Ok(());
            }
            [w, ..] if w == "ROLLBACK" => {
                // A transaction of non-transactional writes that failed: its
                // rows are in the binlog and stay applied.
                self.commit(end, time);
                return Ok(());
            }
            [w, ..] if w.starts_with('#') || w == "XA" || w == "SAVEPOINT" => return Ok(()),
            _ => {}
        }
        // DDL: implicitly commits, and is a transaction of its own.
        if let Some(table) = truncated_table(statement, schema, &self.database) {
            if let Some(t) = self.tables.get(&table) {
                self.pending.push(Change::Truncate {
                    tables: vec![TableRef::clone(&t.table)],
                });
            }
        } else {
            self.structure_changed(statement).await?;
        }
        self.in_transaction = false;
        self.commit(end, time);
        Ok(())
    }

    /// Reads the selected tables again after DDL and reports those whose
    /// structure changed.
    async fn structure_changed(&mut self, statement: &str) -> Result<()> {
        let now = read_tables(&mut self.meta, &self.database, Some(&self.selection)).await?;
        let renamed = renamed_columns(statement);
        for fresh in now {
            let name = fresh.table.name.name.clone();
            let Some(known) = self.tables.get(&name) else {
                tracing::warn!(table = %name,
                    "a table the selection names appeared at the source; it is copied when the pipeline restarts");
                continue;
            };
            if same_structure(&known.table, &fresh.table) && known.ordinals == fresh.ordinals {
                continue;
            }
            let (filled, unfillable) = match added_values(known, &fresh, &renamed) {
                Ok(filled) => (filled, None),
                Err(why) => (Vec::new(), Some(why)),
            };
            let mut fresh = fresh;
            fresh.table = std::sync::Arc::new(TableSchema {
                version: known.table.version + 1,
                ..(*fresh.table).clone()
            });
            self.pending.push(Change::Schema {
                table: TableRef::clone(&fresh.table),
                alter: Alteration {
                    renamed: renamed.clone(),
                    filled,
                },
            });
            self.recopies.restructure(&fresh);
            let table = TableRef::clone(&fresh.table);
            self.tables.insert(name, fresh);
            if let Some(reason) = unfillable {
                // The old rows hold values the binlog does not carry: read
                // them again, from a moment after this change.
                tracing::warn!(table = %table.name, %reason, "re-copying the table online");
                self.recopy(&table, None)?;
                self.pending.push(Change::RecopyStart { table, reason });
            }
        }
        Ok(())
    }

    /// The end of a transaction at `end`.
    fn commit(&mut self, end: u64, time: i64) {
        self.in_transaction = false;
        let end = MySqlPosition {
            file: self.file.clone(),
            offset: end,
        };
        // A chunk read before this transaction committed goes first.
        if self.chunk.as_ref().is_some_and(|c| c.at < end) {
            self.hand_on_chunk();
        }
        self.position = end;
        if self.pending.is_empty() && !self.sent_part {
            self.heartbeat(Some(time));
            return;
        }
        self.sent_part = false;
        self.ready.push_back(SourceEvent::Commit(Transaction {
            position: Position::MySql(self.position.clone()),
            commit_time_micros: Some(time),
            changes: std::mem::take(&mut self.pending),
        }));
    }

    fn heartbeat(&mut self, time: Option<i64>) {
        self.ready.push_back(SourceEvent::Heartbeat {
            position: Position::MySql(self.position.clone()),
            time_micros: time,
        });
    }

    /// The changes of one row event of a selected table.
    fn rows(&self, rows: &RowsEventData<'_>, tme: &TableMapEvent<'_>, end: u64) -> Result<Rows> {
        if tme.database_name() != self.database.as_str() {
            return Ok(Rows::Changes(Vec::new()));
        }
        let Some(known) = self.tables.get(tme.table_name().as_ref()) else {
            return Ok(Rows::Changes(Vec::new()));
        };
        let table = &known.table;
        // A re-copy from the table's start replaces every row with rows read
        // after this event: the event need not even be decoded.
        let recopy = self.recopies.job(&table.name.name).filter(|j| !j.started);
        if recopy.is_some_and(|j| j.floor.is_none()) {
            return Ok(Rows::Changes(Vec::new()));
        }
        let width = tme.columns_count() as usize;
        if width != known.all_columns.len() {
            if recopy.is_some() {
                return Err(Error::fatal(format!(
                    "row events for table {} at {}:{end} have {width} columns, but the table has \
                     {} in the structure ferry holds, while its re-copy is under way",
                    table.name,
                    self.file,
                    known.all_columns.len()
                ))
                .with_fix(
                    "`ferry reset` the pipeline and run it again to copy the tables afresh",
                ));
            }
            return Ok(Rows::Unfollowable(TableRef::clone(table), width));
        }
        let mut changes = Vec::new();
        for pair in rows.rows(tme) {
            let (before, after) = pair.map_err(|e| {
                Error::fatal(format!(
                    "a row event of table {} at {}:{end} cannot be decoded: {e}",
                    table.name, self.file
                ))
            })?;
            let before = before.map(|r| self.image(known, r)).transpose()?;
            let after = after.map(|r| self.image(known, r)).transpose()?;
            let table = TableRef::clone(table);
            let change = match (before, after) {
                (None, Some(row)) => Change::Insert { table, row },
                (Some(before), Some(after)) => Change::Update {
                    table,
                    before: Some(before),
                    after,
                },
                (Some(before), None) => Change::Delete { table, before },
                (None, None) => continue,
            };
            // A re-copy continuing after a key replaces the rows above it.
            if let Some(floor) = recopy.and_then(|j| j.floor.as_deref()) {
                let above = |key: Option<Vec<Value>>| key.is_none_or(|k| k.as_slice() > floor);
                if above(change.key()) && above(change.old_key()) {
                    continue;
                }
            }
            changes.push(change);
        }
        Ok(Rows::Changes(changes))
    }

    /// A row event of `table` does not fit the structure the stream holds
    /// (the binlog being read is older than a structure change it could
    /// not follow): re-copy the table online from this transaction on.
    fn recopy_by_itself(&mut self, table: &TableRef, width: usize, end: u64) -> Result<()> {
        let reason = format!(
            "row events at {}:{end} have {width} columns, the table's structure {}: it changed \
             in a way the binlog alone cannot follow",
            self.file,
            table.columns.len()
        );
        tracing::warn!(table = %table.name, %reason, "re-copying the table online");
        self.recopy(table, None)?;
        self.pending.push(Change::RecopyStart {
            table: TableRef::clone(table),
            reason,
        });
        Ok(())
    }

    /// A row image as ferry values, aligned with the table's columns; a
    /// column the image lacks (MINIMAL row image) is `Unchanged`.
    fn image(&self, known: &MyTable, row: BinlogRow) -> Result<Vec<Value>> {
        let columns = row.columns();
        let mut full: Vec<Option<BinlogValue<'static>>> = vec![None; known.all_columns.len()];
        for (value, column) in row.unwrap().into_iter().zip(columns.iter()) {
            let name = column.name_str();
            let at = name
                .strip_prefix('@')
                .and_then(|n| n.parse::<usize>().ok())
                .or_else(|| known.all_columns.iter().position(|c| *c == name));
            if let Some(at) = at.filter(|&at| at < full.len()) {
                full[at] = Some(value);
            }
        }
        let table = &known.table;
        known
            .ordinals
            .iter()
            .zip(&known.decode)
            .enumerate()
            .map(|(i, (&ordinal, how))| {
                let Some(value) = full[ordinal].take() else {
                    return Ok(Value::Unchanged);
                };
                let value = match value {
                    BinlogValue::Value(v) => v,
                    other => mysql_async::Value::try_from(other).map_err(|e| {
                        Error::fatal(format!(
                            "table {}, column {}: {e}",
                            table.name, table.columns[i].name
                        ))
                    })?,
                };
                decode(value, how, Origin::Binlog).map_err(|why| {
                    Error::data(format!(
                        "table {}, column {}: {why}",
                        table.name, table.columns[i].name
                    ))
                })
            })
            .collect()
    }
}

/// What a row event holds for the pipeline.
enum Rows {
    Changes(Vec<Change>),
    /// Its columns (this many) are not those of the structure the stream
    /// holds for the table.
    Unfollowable(TableRef, usize),
}

/// An error of the binlog stream, with the fix for a purged position.
fn stream_error(e: mysql_async::Error, at: &MySqlPosition) -> Error {
    let purged = matches!(&e, mysql_async::Error::Server(s) if s.code == 1236);
    let err = my_error(
        e,
        &format!("reading the binlog after {}:{}", at.file, at.offset),
    );
    if purged {
        err.with_fix(
            "the binlog after ferry's position is no longer on the source (purged, or the \
             server's binlog was reset): keep binlogs longer (binlog_expire_logs_seconds), then \
             `ferry reset` the pipeline and run it again to copy the tables afresh",
        )
    } else {
        err
    }
}

/// `name` without the checksum bytes a dump's first rotate event appends.
fn trim_checksum(name: &str, current: &str) -> String {
    if name.starts_with(current) && name.len() > current.len() {
        return current.to_owned();
    }
    let end = name
        .rfind(|c: char| c.is_ascii_digit())
        .map_or(name.len(), |i| i + 1);
    name[..end].to_owned()
}

/// The first `n` words of a statement, upper-cased.
fn first_words(statement: &str, n: usize) -> Vec<String> {
    statement
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_uppercase)
        .collect()
}

/// The table a `TRUNCATE [TABLE] [db.]t` statement empties, when it is in
/// `database`.
fn truncated_table(statement: &str, schema: &str, database: &str) -> Option<String> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    if !words.first()?.eq_ignore_ascii_case("TRUNCATE") {
        return None;
    }
    let name = match words.get(1)? {
        w if w.eq_ignore_ascii_case("TABLE") => words.get(2)?,
        w => w,
    };
    let name = name.trim_end_matches(';');
    let parts: Vec<String> = name.split('.').map(unquote).collect();
    match parts.as_slice() {
        [db, t] if db == database => Some(t.clone()),
        [t] if schema == database => Some(t.clone()),
        _ => None,
    }
}

fn unquote(ident: &str) -> String {
    ident
        .strip_prefix('`')
        .and_then(|s| s.strip_suffix('`'))
        .map(|s| s.replace("``", "`"))
        .unwrap_or_else(|| ident.to_owned())
}

/// Columns an `ALTER TABLE` renames: `RENAME COLUMN a TO b` and
/// `CHANGE [COLUMN] a b <type>`.
fn renamed_columns(statement: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = statement
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let mut renamed = Vec::new();
    let upper = |i: usize| words.get(i).map(|w| w.to_ascii_uppercase());
    let mut i = 0;
    while i < words.len() {
        match upper(i).as_deref() {
            Some("RENAME") if upper(i + 1).as_deref() == Some("COLUMN") => {
                if let (Some(a), Some("TO"), Some(b)) =
                    (words.get(i + 2), upper(i + 3).as_deref(), words.get(i + 4))
                {
                    renamed.push((unquote(a), unquote(b)));
                    i += 4;
                }
            }
            Some("CHANGE") => {
                let at = if upper(i + 1).as_deref() == Some("COLUMN") {
                    i + 2
                } else {
                    i + 1
                };
                if let (Some(a), Some(b)) = (words.get(at), words.get(at + 1)) {
                    let (a, b) = (unquote(a), unquote(b));
                    if a != b {
                        renamed.push((a, b));
                    }
                    i = at + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    renamed
}

/// What the rows that existed before a structure change hold in each
/// column it added: constant defaults only. `Err` says why a column's
/// old rows hold values no single default describes (a default computed
/// per row): the table is then re-copied online.
fn added_values(
    known: &MyTable,
    fresh: &MyTable,
    renamed: &[(String, String)],
) -> std::result::Result<Vec<(String, Value)>, String> {
    let mut filled = Vec::new();
    for (i, column) in fresh.table.columns.iter().enumerate() {
        let existed = known.table.column_index(&column.name).is_some()
            || renamed.iter().any(|(_, new)| *new == column.name);
        if existed {
            continue;
        }
        let value = added_column_value(
            fresh.defaults[i].as_deref(),
            column.nullable,
            &fresh.decode[i],
        )
        .map_err(|why| format!("column {} was added and {why}", column.name))?;
        if !matches!(value, Value::Null) {
            filled.push((column.name.clone(), value));
        }
    }
    Ok(filled)
}

fn same_structure(a: &TableSchema, b: &TableSchema) -> bool {
    a.key == b.key
        && a.columns.len() == b.columns.len()
        && a.columns.iter().zip(&b.columns).all(|(x, y)| {
            x.name == y.name
                && x.ty == y.ty
                && x.nullable == y.nullable
                && x.source_type == y.source_type
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_are_read_from_alter_table() {
        assert_eq!(
            renamed_columns("ALTER TABLE t RENAME COLUMN `a` TO b, ADD c int"),
            vec![("a".to_owned(), "b".to_owned())]
        );
        assert_eq!(
            renamed_columns("alter table t change column x y bigint, change z z int"),
            vec![("x".to_owned(), "y".to_owned())]
        );
    }

    #[test]
    fn truncate_names_its_table() {
        assert_eq!(
            truncated_table("TRUNCATE TABLE `t`", "shop", "shop"),
            Some("t".into())
        );
        assert_eq!(
            truncated_table("truncate shop.t;", "other", "shop"),
            Some("t".into())
        );
        assert_eq!(truncated_table("TRUNCATE t", "other", "shop"), None);
    }

    #[test]
    fn a_dumps_first_rotate_loses_its_checksum() {
        assert_eq!(
            trim_checksum("binlog.000001\u{1}\u{2}\u{3}\u{4}", "binlog.000001"),
            "binlog.000001"
        );
        assert_eq!(
            trim_checksum("binlog.000002", "binlog.000001"),
            "binlog.000002"
        );
    }
}
