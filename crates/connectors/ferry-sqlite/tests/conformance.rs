//! The test kit's conformance suites, run against the SQLite source and
//! sink (the `Sink` suite runs in `sink.rs`).

use async_trait::async_trait;
use ferry_core::Source;
use ferry_sqlite::SqliteSource;
use ferry_testkit::doubles::{
    SOURCE_CONFORMANCE_DDL, SourceDriver, SourceWrite, source_conformance, transaction_sql,
};

use crate::Db;

/// Rows per change event and snapshot chunk: small, so the suite's large
/// transaction arrives in `Partial`s.
const CHUNK_ROWS: usize = 10;

/// Writes through a second connection, as another process would.
struct SqliteDriver {
    db: Db,
}

#[async_trait]
impl SourceDriver for SqliteDriver {
    async fn open(&mut self) -> Box<dyn Source> {
        let mut cfg = self.db.config();
        cfg.pipeline = "conformance".into();
        cfg.max_chunk_rows = CHUNK_ROWS;
        Box::new(SqliteSource::open(cfg).unwrap())
    }

    async fn write(&mut self, writes: &[SourceWrite]) {
        self.db
            .conn()
            .execute_batch(&transaction_sql(writes))
            .unwrap();
    }

    /// ferry's triggers and tables, and the pipeline's consumer row.
    async fn installed(&mut self) -> Vec<String> {
        let c = self.db.conn();
        let mut names: Vec<String> = c
            .prepare(
                "SELECT type || ' ' || name FROM sqlite_schema \
                 WHERE name LIKE '\\_ferry%' ESCAPE '\\' ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        if names.iter().any(|n| n == "table _ferry_consumers") {
            let consumers: Vec<String> = c
                .prepare("SELECT 'consumer ' || pipeline FROM _ferry_consumers ORDER BY 1")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            names.extend(consumers);
        }
        names
    }

    fn large_transaction(&self) -> Option<usize> {
        Some(CHUNK_ROWS * 2 + 5)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_source_passes_the_source_conformance_suite() {
    let mut driver = SqliteDriver {
        db: Db::new(SOURCE_CONFORMANCE_DDL),
    };
    source_conformance(&mut driver).await;
}

/// Two pipelines' sinks on one target file.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_sink_passes_the_checkpoint_store_conformance_suite() {
    use ferry_sqlite::{SqliteSink, SqliteSinkConfig};
    let dir = tempfile::tempdir().unwrap();
    let sink = |pipeline: &str| {
        SqliteSink::open(SqliteSinkConfig {
            path: dir.path().join("target.db"),
            pipeline: pipeline.into(),
            indexes_from: None,
        })
        .unwrap()
    };
    let table = ferry_testkit::doubles::conformance_table(ferry_core::TableName::bare("conf"));
    ferry_testkit::doubles::checkpoint_store_conformance(&sink("p1"), &sink("p2"), table).await;
}
