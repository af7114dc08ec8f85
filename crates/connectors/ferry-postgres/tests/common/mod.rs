//! Helpers shared by the test modules.

#![allow(dead_code)]

use std::sync::Arc;

use ferry_core::{Column, ColumnType, TableName, TableRef, TableSchema};
use ferry_testkit::PostgresServer;

/// A fresh server with a database `db` in it; returns the server and the URL.
pub fn server_with_db(db: &str) -> (PostgresServer, String) {
    let pg = PostgresServer::start();
    let url = pg.create_database(db);
    (pg, url)
}

pub fn col(name: &str, ty: ColumnType, nullable: bool) -> Column {
    Column {
        name: name.into(),
        ty,
        nullable,
        source_type: String::new(),
        user_type: None,
    }
}

pub fn table(ns: Option<&str>, name: &str, columns: Vec<Column>, key: Vec<usize>) -> TableRef {
    Arc::new(TableSchema {
        name: TableName::new(ns, name),
        columns,
        key,
        version: 1,
        key_deferrable: false,
    })
}

pub fn text() -> ColumnType {
    ColumnType::Text {
        max_len: None,
        fixed: false,
    }
}

use std::time::Duration;

use ferry_core::{
    Selection, SnapshotChunk, SnapshotReader, SnapshotRequest, Source, SourceEvent, Transaction,
};
use ferry_postgres::{PostgresSource, PostgresSourceConfig};

pub fn source_config(url: &str, pipeline: &str) -> PostgresSourceConfig {
    PostgresSourceConfig {
        url: url.to_owned(),
        pipeline: pipeline.to_owned(),
        selection: Selection::default(),
        snapshot_workers: 2,
        snapshot_chunk_rows: None,
    }
}

pub async fn source(url: &str, pipeline: &str) -> PostgresSource {
    PostgresSource::connect(source_config(url, pipeline))
        .await
        .unwrap()
}

/// Requests for every table, nothing skipped.
pub fn requests(tables: &[TableRef]) -> Vec<SnapshotRequest> {
    tables
        .iter()
        .map(|t| SnapshotRequest {
            table: t.clone(),
            skip: Vec::new(),
            encoding: None,
        })
        .collect()
}

pub async fn drain(mut reader: Box<dyn SnapshotReader>) -> Vec<SnapshotChunk> {
    let mut out = Vec::new();
    while let Some(c) = tokio::time::timeout(Duration::from_secs(60), reader.next_chunk())
        .await
        .expect("snapshot stalled")
        .unwrap()
    {
        out.push(c);
    }
    out
}

/// The next event that is not a heartbeat.
pub async fn next_data(src: &mut PostgresSource) -> SourceEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), src.next())
            .await
            .expect("no event within 30 s")
            .unwrap();
        if !matches!(ev, SourceEvent::Heartbeat { .. }) {
            return ev;
        }
    }
}

pub async fn next_commit(src: &mut PostgresSource) -> Transaction {
    match next_data(src).await {
        SourceEvent::Commit(t) => t,
        other => panic!("expected a commit, got {other:?}"),
    }
}
