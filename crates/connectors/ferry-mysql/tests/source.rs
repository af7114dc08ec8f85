//! The source against a real MariaDB: the conformance suite, types through
//! snapshot and binlog alike, and what a misconfigured server gets.

use async_trait::async_trait;
use ferry_core::Source;
use ferry_mysql::{MySqlSource, MySqlSourceConfig};
use ferry_testkit::MariaDbServer;
use ferry_testkit::doubles::{
    SOURCE_CONFORMANCE_DDL, SourceDriver, SourceWrite, source_conformance, transaction_sql,
};

fn config(url: &str, pipeline: &str) -> MySqlSourceConfig {
    MySqlSourceConfig {
        url: url.to_owned(),
        pipeline: pipeline.to_owned(),
        selection: ferry_core::Selection::default(),
        snapshot_workers: 2,
        snapshot_chunk_rows: Some(2),
    }
}

struct MariaDriver {
    db: MariaDbServer,
    url: String,
}

#[async_trait]
impl SourceDriver for MariaDriver {
    async fn open(&mut self) -> Box<dyn Source> {
        Box::new(
            MySqlSource::connect(config(&self.url, "conformance"))
                .await
                .unwrap(),
        )
    }

    async fn write(&mut self, writes: &[SourceWrite]) {
        self.db.sql_in("src", &transaction_sql(writes));
    }

    /// Binlog capture installs nothing on the source.
    async fn installed(&mut self) -> Vec<String> {
        let listed = self.db.sql_in(
            "src",
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = 'src' AND table_name LIKE '%ferry%'",
        );
        listed.lines().map(str::to_owned).collect()
    }

    fn large_transaction(&self) -> Option<usize> {
        Some(25_000)
    }

    fn installs_capture(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_source_passes_the_source_conformance_suite() {
    let db = MariaDbServer::start();
    let url = db.create_database("src");
    db.sql_in("src", SOURCE_CONFORMANCE_DDL);
    let mut driver = MariaDriver { db, url };
    source_conformance(&mut driver).await;
}
