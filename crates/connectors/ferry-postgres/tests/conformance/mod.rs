//! The test kit's conformance suites, run against the PostgreSQL source
//! and sink on a real server.

use std::time::Duration;

use async_trait::async_trait;
use ferry_core::Source;
use ferry_postgres::PostgresSource;
use ferry_testkit::PostgresServer;
use ferry_testkit::doubles::{
    SOURCE_CONFORMANCE_DDL, SourceDriver, SourceWrite, source_conformance, transaction_sql,
};

use crate::common::{server_with_db, source_config};

/// Writes with `psql`, as an application would.
struct PgDriver {
    pg: PostgresServer,
    url: String,
}

#[async_trait]
impl SourceDriver for PgDriver {
    async fn open(&mut self) -> Box<dyn Source> {
        let mut cfg = source_config(&self.url, "conformance");
        // Several chunks per table, even for the suite's few rows.
        cfg.snapshot_chunk_rows = Some(2);
        let mut src = PostgresSource::connect(cfg).await.unwrap();
        src.set_heartbeat_interval(Duration::from_millis(200));
        Box::new(src)
    }

    async fn write(&mut self, writes: &[SourceWrite]) {
        self.pg.psql_in("src", &transaction_sql(writes));
    }

    /// ferry's replication slots and publications.
    async fn installed(&mut self) -> Vec<String> {
        let listed = self.pg.psql_in(
            "src",
            "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE slot_name LIKE 'ferry%' \
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication ORDER BY 1",
        );
        listed.lines().map(str::to_owned).collect()
    }

    /// More changes than the source holds before handing a `Partial` over.
    fn large_transaction(&self) -> Option<usize> {
        Some(12_000)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_source_passes_the_source_conformance_suite() {
    let (pg, url) = server_with_db("src");
    pg.psql_in("src", SOURCE_CONFORMANCE_DDL);
    let mut driver = PgDriver { pg, url };
    source_conformance(&mut driver).await;
}

fn sink_config(url: &str, pipeline: &str) -> ferry_postgres::PostgresSinkConfig {
    ferry_postgres::PostgresSinkConfig {
        url: url.to_owned(),
        pipeline: pipeline.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_passes_the_sink_conformance_suite() {
    let (_pg, url) = server_with_db("target");
    let sink = ferry_postgres::PostgresSink::connect(sink_config(&url, "conformance"))
        .await
        .unwrap();
    let table =
        ferry_testkit::doubles::conformance_table(ferry_core::TableName::new(Some("app"), "conf"));
    ferry_testkit::doubles::sink_conformance(&sink, table).await;
}

/// Two pipelines' sinks on one target database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_passes_the_checkpoint_store_conformance_suite() {
    let (_pg, url) = server_with_db("target");
    let sink = ferry_postgres::PostgresSink::connect(sink_config(&url, "p1"))
        .await
        .unwrap();
    let other = ferry_postgres::PostgresSink::connect(sink_config(&url, "p2"))
        .await
        .unwrap();
    let table = ferry_testkit::doubles::conformance_table(ferry_core::TableName::bare("conf"));
    ferry_testkit::doubles::checkpoint_store_conformance(&sink, &other, table).await;
}
