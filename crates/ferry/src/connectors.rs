//! The connector registry: the only place that knows every connector.
//! An engine is its URL scheme in [`kind`] and one arm in [`source_of`]
//! and one in [`sink_of`].

use std::sync::Arc;

use ferry_core::{Result, Sink, Source, TableReader};

use crate::config::{Endpoint, PipelineConfig};

/// Connector families, by URL scheme.
enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

fn kind(url: &str) -> Kind {
    if url.starts_with("sqlite:") {
        Kind::Sqlite
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Kind::Postgres
    } else {
        Kind::MySql
    }
}

/// Source and target are databases of the same engine.
pub fn same_engine(cfg: &PipelineConfig) -> bool {
    std::mem::discriminant(&kind(&cfg.source.url)) == std::mem::discriminant(&kind(&cfg.target.url))
}

fn sqlite_source(cfg: &PipelineConfig) -> Result<ferry_sqlite::SqliteSource> {
    ferry_sqlite::SqliteSource::open(ferry_sqlite::SqliteSourceConfig {
        path: ferry_sqlite::path_from_url(&cfg.source.url)?,
        pipeline: cfg.name.clone(),
        selection: cfg.selection.clone(),
        poll_interval: cfg.source.poll_interval,
        max_chunk_rows: cfg.chunk_rows.unwrap_or(10_000),
        // SQLite → SQLite is exact: each value keeps its storage class and
        // each column its declared type (docs/types.md).
        keep_storage_classes: matches!(kind(&cfg.target.url), Kind::Sqlite),
    })
}

async fn postgres_source(cfg: &PipelineConfig) -> Result<ferry_postgres::PostgresSource> {
    let mut source =
        ferry_postgres::PostgresSource::connect(ferry_postgres::PostgresSourceConfig {
            url: cfg.source.url.clone(),
            pipeline: cfg.name.clone(),
            selection: cfg.selection.clone(),
            snapshot_workers: cfg.options.workers.clamp(1, 4),
            snapshot_chunk_rows: cfg.chunk_rows,
        })
        .await?;
    // Active-active: forward only this site's own writes (ADR 0014).
    source.skip_ferry_origins(cfg.active_active.is_some());
    Ok(source)
}

async fn mysql_source(cfg: &PipelineConfig) -> Result<ferry_mysql::MySqlSource> {
    ferry_mysql::MySqlSource::connect(ferry_mysql::MySqlSourceConfig {
        url: cfg.source.url.clone(),
        pipeline: cfg.name.clone(),
        selection: cfg.selection.clone(),
        snapshot_workers: cfg.options.workers.clamp(1, 4),
        snapshot_chunk_rows: cfg.chunk_rows,
    })
    .await
}

fn sqlite_sink(cfg: &PipelineConfig, target: &Endpoint) -> Result<ferry_sqlite::SqliteSink> {
    // SQLite → SQLite: the tables the sink creates get the source's indexes.
    let indexes_from = match kind(&cfg.source.url) {
        Kind::Sqlite => Some(ferry_sqlite::IndexSource {
            path: ferry_sqlite::path_from_url(&cfg.source.url)?,
            renamed: cfg
                .transform
                .tables
                .iter()
                .filter_map(|(source, rule)| {
                    let target = rule.rename.as_ref()?;
                    Some((
                        ferry_core::TableName::parse(target).name,
                        ferry_core::TableName::parse(source).name,
                    ))
                })
                .collect(),
        }),
        _ => None,
    };
    ferry_sqlite::SqliteSink::open(ferry_sqlite::SqliteSinkConfig {
        path: ferry_sqlite::path_from_url(&target.url)?,
        pipeline: cfg.name.clone(),
        indexes_from,
    })
}

async fn postgres_sink(cfg: &PipelineConfig) -> Result<ferry_postgres::PostgresSink> {
    let mut sink = ferry_postgres::PostgresSink::connect(ferry_postgres::PostgresSinkConfig {
        url: cfg.target.url.clone(),
        pipeline: cfg.name.clone(),
    })
    .await?;
    if let Some(active) = &cfg.active_active {
        sink.set_active_active(active.clone())?;
    }
    Ok(sink)
}

async fn mysql_sink(cfg: &PipelineConfig) -> Result<ferry_mysql::MySqlSink> {
    ferry_mysql::MySqlSink::connect(ferry_mysql::MySqlSinkConfig {
        url: cfg.target.url.clone(),
        pipeline: cfg.name.clone(),
        // MySQL → MySQL: tables get the source's column types as declared.
        same_engine: same_engine(cfg),
    })
    .await
}

/// A source connector: the change stream and the reads `ferry verify`
/// makes, one value.
pub trait SourceConnector: Source + TableReader {}
impl<T: Source + TableReader> SourceConnector for T {}

/// A target connector: the writes and the reads `ferry verify` makes.
pub trait SinkConnector: Sink + TableReader {}
impl<T: Sink + TableReader> SinkConnector for T {}

/// The registry: one arm per engine that can be a source.
async fn source_of(cfg: &PipelineConfig) -> Result<Box<dyn SourceConnector>> {
    match kind(&cfg.source.url) {
        Kind::Sqlite => Ok(Box::new(sqlite_source(cfg)?)),
        Kind::Postgres => Ok(Box::new(postgres_source(cfg).await?)),
        Kind::MySql => Ok(Box::new(mysql_source(cfg).await?)),
    }
}

/// The registry: one arm per engine that can be a target.
async fn sink_of(cfg: &PipelineConfig) -> Result<Box<dyn SinkConnector>> {
    match kind(&cfg.target.url) {
        Kind::Sqlite => Ok(Box::new(sqlite_sink(cfg, &cfg.target)?)),
        Kind::Postgres => Ok(Box::new(postgres_sink(cfg).await?)),
        Kind::MySql => Ok(Box::new(mysql_sink(cfg).await?)),
    }
}

pub async fn open_source(cfg: &PipelineConfig) -> Result<Box<dyn Source>> {
    Ok(source_of(cfg).await?)
}

pub async fn open_source_reader(cfg: &PipelineConfig) -> Result<Box<dyn TableReader>> {
    Ok(source_of(cfg).await?)
}

pub async fn open_sink(cfg: &PipelineConfig) -> Result<Arc<dyn Sink>> {
    let sink: Box<dyn Sink> = sink_of(cfg).await?;
    Ok(Arc::from(sink))
}

pub async fn open_sink_reader(cfg: &PipelineConfig) -> Result<Box<dyn TableReader>> {
    Ok(sink_of(cfg).await?)
}
