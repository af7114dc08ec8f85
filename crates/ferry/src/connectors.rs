//! The connector registry: the only place that knows every connector.
//! One match arm per connector family.

use std::sync::Arc;

use ferry_core::{Error, Result, Sink, Source, TableReader};

use crate::config::{Endpoint, PipelineConfig};

fn not_built(url: &str, what: &str) -> Error {
    Error::fatal(format!(
        "{} as a {what} is not built yet in this version of ferry",
        crate::config::redact(url)
    ))
    .with_fix(
        "use a sqlite: URL (the embedded default); see README.md for what each connector supports",
    )
}

fn sqlite_source(cfg: &PipelineConfig) -> Result<ferry_sqlite::SqliteSource> {
    ferry_sqlite::SqliteSource::open(ferry_sqlite::SqliteSourceConfig {
        path: ferry_sqlite::path_from_url(&cfg.source.url)?,
        pipeline: cfg.name.clone(),
        selection: cfg.selection.clone(),
        poll_interval: cfg.source.poll_interval,
        max_chunk_rows: cfg.chunk_rows,
    })
}

fn sqlite_sink(cfg: &PipelineConfig, target: &Endpoint) -> Result<ferry_sqlite::SqliteSink> {
    ferry_sqlite::SqliteSink::open(ferry_sqlite::SqliteSinkConfig {
        path: ferry_sqlite::path_from_url(&target.url)?,
        pipeline: cfg.name.clone(),
    })
}

pub fn open_source(cfg: &PipelineConfig) -> Result<Box<dyn Source>> {
    let url = &cfg.source.url;
    if url.starts_with("sqlite:") {
        Ok(Box::new(sqlite_source(cfg)?))
    } else {
        Err(not_built(url, "source"))
    }
}

pub fn open_source_reader(cfg: &PipelineConfig) -> Result<Box<dyn TableReader>> {
    let url = &cfg.source.url;
    if url.starts_with("sqlite:") {
        Ok(Box::new(sqlite_source(cfg)?))
    } else {
        Err(not_built(url, "source"))
    }
}

pub fn open_sink(cfg: &PipelineConfig) -> Result<Arc<dyn Sink>> {
    let url = &cfg.target.url;
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite_sink(cfg, &cfg.target)?))
    } else {
        Err(not_built(url, "target"))
    }
}

pub fn open_sink_reader(cfg: &PipelineConfig) -> Result<Box<dyn TableReader>> {
    let url = &cfg.target.url;
    if url.starts_with("sqlite:") {
        Ok(Box::new(sqlite_sink(cfg, &cfg.target)?))
    } else {
        Err(not_built(url, "target"))
    }
}
