//! The MySQL/MariaDB source: consistent snapshot, then the binlog.

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Continuity, Error, Position, Result, Selection, SnapshotReader, SnapshotRequest,
    Source, SourceEvent, TableReader, TableRef, Value,
};

use crate::catalog::{MyTable, read_tables};
use crate::connection::{Endpoint, identity};
use crate::reader::MySqlReader;
use crate::stream::BinlogReader;
use crate::{check, position, snapshot};

/// Configuration of a [`MySqlSource`].
#[derive(Clone)]
pub struct MySqlSourceConfig {
    /// `mysql://user:password@host:port/database`: the tables of that
    /// database are the source's.
    pub url: String,
    pub pipeline: String,
    pub selection: Selection,
    /// Connections copying the snapshot in parallel (at least 1).
    pub snapshot_workers: usize,
    /// Rows per snapshot chunk; `None`: 20,000.
    pub snapshot_chunk_rows: Option<usize>,
}

impl std::fmt::Debug for MySqlSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlSourceConfig")
            .field("pipeline", &self.pipeline)
            .field("selection", &self.selection)
            .finish_non_exhaustive()
    }
}

pub struct MySqlSource {
    cfg: MySqlSourceConfig,
    endpoint: Endpoint,
    conn: mysql_async::Conn,
    tables: Vec<MyTable>,
    stream: Option<BinlogReader>,
    reader: MySqlReader,
}

impl MySqlSource {
    pub async fn connect(cfg: MySqlSourceConfig) -> Result<MySqlSource> {
        let endpoint = Endpoint::parse(&cfg.url, "source")?;
        let conn = endpoint.connect().await?;
        let reader = MySqlReader::new(endpoint.clone());
        Ok(MySqlSource {
            cfg,
            endpoint,
            conn,
            tables: Vec::new(),
            stream: None,
            reader,
        })
    }

    /// The replica id ferry's binlog connection registers with: one per
    /// pipeline, in a range replicas rarely use.
    pub fn server_id(&self) -> u32 {
        let hash = self.cfg.pipeline.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        0x4000_0000 | (hash & 0x0fff_ffff)
    }

    async fn known_tables(&mut self) -> Result<Vec<MyTable>> {
        if self.tables.is_empty() {
            self.tables = read_tables(
                &mut self.conn,
                self.endpoint.database(),
                Some(&self.cfg.selection),
            )
            .await?;
        }
        Ok(self.tables.clone())
    }
}

#[async_trait]
impl Source for MySqlSource {
    async fn check(&mut self) -> Vec<CheckItem> {
        let mut items = vec![CheckItem::ok(
            "source: connection",
            format!("connected to {}", self.endpoint.describe()),
        )];
        match check::settings(&mut self.conn).await {
            Ok(s) => items.extend(check::items(&s, self.server_id())),
            Err(e) => items.push(CheckItem::from_error("source: binlog settings", &e)),
        }
        match read_tables(
            &mut self.conn,
            self.endpoint.database(),
            Some(&self.cfg.selection),
        )
        .await
        {
            Ok(tables) => {
                let keyless: Vec<String> = tables
                    .iter()
                    .filter(|t| t.table.is_keyless())
                    .map(|t| t.table.name.to_string())
                    .collect();
                items.push(CheckItem::ok(
                    "source: tables",
                    format!("{} selected", tables.len()),
                ));
                if !keyless.is_empty() {
                    items.push(CheckItem::warn(
                        "source: keys",
                        format!(
                            "without a primary key or NOT NULL unique key: {}; their changes \
                             apply row by row, matched by whole rows",
                            keyless.join(", ")
                        ),
                        "add a primary key where you can",
                    ));
                }
            }
            Err(e) => items.push(CheckItem::from_error("source: tables", &e)),
        }
        items
    }

    async fn tables(&mut self) -> Result<Vec<TableRef>> {
        self.tables.clear();
        Ok(self
            .known_tables()
            .await?
            .into_iter()
            .map(|t| t.table)
            .collect())
    }

    async fn preflight(&mut self) -> Result<()> {
        let settings = check::settings(&mut self.conn).await?;
        check::require(&settings, self.server_id())
    }

    async fn prepare(&mut self) -> Result<()> {
        // The binlog needs nothing installed.
        Ok(())
    }

    async fn snapshot(
        &mut self,
        requests: Vec<SnapshotRequest>,
    ) -> Result<Box<dyn SnapshotReader>> {
        let tables = self.known_tables().await?;
        let mut paired = Vec::new();
        for request in requests {
            let local = tables
                .iter()
                .find(|t| t.table.name == request.table.name)
                .cloned()
                .ok_or_else(|| {
                    Error::fatal(format!(
                        "table {} is not among the source's selected tables",
                        request.table.name
                    ))
                })?;
            paired.push((request, local));
        }
        snapshot::open(
            &self.endpoint,
            paired,
            self.cfg.snapshot_workers,
            self.cfg.snapshot_chunk_rows.unwrap_or(20_000),
        )
        .await
    }

    async fn continuity(&mut self, from: &Position) -> Result<Continuity> {
        let from = from.as_mysql().map_err(|e| Error::fatal(e.to_string()))?;
        position::continuity(&mut self.conn, &from).await
    }

    async fn start_stream(
        &mut self,
        from: Option<&Position>,
        _boundaries: &[Position],
    ) -> Result<()> {
        let from = match from {
            Some(p) => p.as_mysql().map_err(|e| Error::fatal(e.to_string()))?,
            None => position::current(&mut self.conn).await?.ok_or_else(|| {
                Error::fatal("the source has binary logging off: there is no change stream")
                    .with_fix("start the server with log_bin and binlog_format=ROW")
            })?,
        };
        let tables = self.known_tables().await?;
        self.stream = Some(
            BinlogReader::start(
                &self.endpoint,
                self.server_id(),
                from,
                tables,
                self.cfg.selection.clone(),
                self.cfg.snapshot_chunk_rows,
            )
            .await?,
        );
        Ok(())
    }

    async fn next(&mut self) -> Result<SourceEvent> {
        match self.stream.as_mut() {
            Some(stream) => stream.next().await,
            None => Err(Error::fatal("next() before start_stream()")),
        }
    }

    async fn recopy(&mut self, table: &TableRef, after: Option<Vec<Value>>) -> Result<()> {
        match self.stream.as_mut() {
            Some(stream) => stream.recopy(table, after),
            None => Err(Error::fatal("recopy() before start_stream()")),
        }
    }

    async fn ack(&mut self, _position: &Position) -> Result<()> {
        // The server keeps binlogs by its own retention; nothing to release.
        Ok(())
    }

    async fn identity(&mut self) -> Result<Option<String>> {
        identity(&mut self.conn, self.endpoint.database())
            .await
            .map(Some)
    }

    async fn current_position(&mut self) -> Result<Option<Position>> {
        Ok(position::current(&mut self.conn)
            .await?
            .map(Position::MySql))
    }

    async fn teardown(&mut self) -> Result<()> {
        self.stream = None;
        Ok(())
    }
}

/// `ferry verify` reads the source through the same reader as a target.
#[async_trait]
impl TableReader for MySqlSource {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        self.reader.count_rows(table).await
    }

    async fn estimate_rows(&self, table: &TableRef) -> Result<u64> {
        self.reader.estimate_rows(table).await
    }

    async fn has_table(&self, table: &TableRef) -> Result<bool> {
        self.reader.has_table(table).await
    }

    async fn declared_shape(&self, table: &TableRef) -> Result<Option<ferry_core::DeclaredShape>> {
        self.reader.declared_shape(table).await
    }

    fn restrict(&mut self, condition: &str) -> Result<()> {
        self.reader.restrict(condition)
    }

    fn row_digests(&self) -> Vec<&'static str> {
        self.reader.row_digests()
    }

    async fn digest_range(
        &self,
        table: &TableRef,
        range: &ferry_core::KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<ferry_core::RangeDigest>> {
        self.reader.digest_range(table, range, limit, digest).await
    }

    async fn key_after(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        self.reader.key_after(table, after, rows).await
    }

    async fn scan_rows(
        &self,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        self.reader.scan_rows(table, on_rows).await
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        self.reader.read_rows(table, after, limit).await
    }
}
