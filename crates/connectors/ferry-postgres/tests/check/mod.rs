//! Pre-flight checks and connection errors against real servers.

use ferry_core::{CheckStatus, ErrorClass, Source};
use ferry_postgres::PostgresSource;
use ferry_testkit::PostgresServer;

use crate::common::{server_with_db, source, source_config};

fn find<'a>(items: &'a [ferry_core::CheckItem], name: &str) -> &'a ferry_core::CheckItem {
    items
        .iter()
        .find(|i| i.name.contains(name))
        .unwrap_or_else(|| panic!("no check {name:?} in {items:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_ready_source() {
    let (pg, url) = server_with_db("src");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, x xml, p point, n int)",
    );
    let mut src = source(&url, "ok").await;
    let items = src.check().await;
    assert!(
        items.iter().all(|i| i.status == CheckStatus::Ok),
        "{items:#?}"
    );
    // Columns carried by their text form are named, all at once.
    let types = &find(&items, "column types").detail;
    assert!(
        types.contains("public.t.x (xml)") && types.contains("public.t.p (point)"),
        "{types}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_prepare_explain_a_wal_level_below_logical() {
    let pg = PostgresServer::builder().wal_level("replica").start();
    let url = pg.create_database("src");
    let mut src = source(&url, "wal").await;
    let items = src.check().await;
    let item = find(&items, "wal_level");
    assert_eq!(item.status, CheckStatus::Fail);
    assert!(
        item.fix
            .as_deref()
            .unwrap()
            .contains("ALTER SYSTEM SET wal_level = logical")
    );
    src.tables().await.unwrap();
    let err = src.prepare().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(
        err.fix().unwrap().contains("wal_level = logical"),
        "{}",
        err.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_missing_privileges_keys_and_slots() {
    let pg = PostgresServer::builder()
        .conf("max_replication_slots = 1")
        .start();
    let url = pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE TABLE nokey (a int); CREATE ROLE plain LOGIN; \
         SELECT pg_create_logical_replication_slot('someone_else', 'pgoutput');",
    );
    let mut src =
        PostgresSource::connect(source_config(&url.replace("postgres@", "plain@"), "priv"))
            .await
            .unwrap();
    let items = src.check().await;
    let repl = find(&items, "REPLICATION privilege");
    assert_eq!(repl.status, CheckStatus::Fail);
    assert!(
        repl.fix
            .as_deref()
            .unwrap()
            .contains("ALTER ROLE plain WITH REPLICATION")
    );
    assert_eq!(find(&items, "publication rights").status, CheckStatus::Fail);
    let slots = find(&items, "replication slots");
    assert_eq!(slots.status, CheckStatus::Fail, "{slots}");
    let table = find(&items, "table public.nokey");
    assert_eq!(table.status, CheckStatus::Fail);
    assert!(table.fix.as_deref().unwrap().contains("PRIMARY KEY"));
    // ... or replicating it without a key.
    assert!(
        table
            .fix
            .as_deref()
            .unwrap()
            .contains("REPLICA IDENTITY FULL"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unreachable_host_are_clear() {
    let pg = PostgresServer::builder().password("right").start();
    let url = pg.url().replace("right", "nope");
    let err = PostgresSource::connect(source_config(&url, "pw"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{}", err.report());
    assert!(
        err.report().contains("28P01") && err.fix().unwrap().contains("password"),
        "{}",
        err.report()
    );
    // The replication connection authenticates with SCRAM too.
    let mut src = PostgresSource::connect(source_config(&pg.url(), "pw"))
        .await
        .unwrap();
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    src.start_stream(None, &[]).await.unwrap();
    let port = ferry_testkit::free_port();
    let err = PostgresSource::connect(source_config(
        &format!("postgres://postgres@127.0.0.1:{port}/x"),
        "pw",
    ))
    .await
    .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(
        err.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.report()
    );
    assert!(err.fix().is_some());
    // A pipeline named after its file (`my-pipe.toml`) gets a valid slot.
    let src = PostgresSource::connect(source_config(&pg.url(), "My-Pipe"))
        .await
        .unwrap();
    assert_eq!(src.slot_name(), "ferry_my_pipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_password_and_a_raw_at_in_a_password_are_clear() {
    let pg = PostgresServer::builder().password("p@ss:w/rd@x").start();
    let port = pg.port();
    // The server asks for a password the URL does not have.
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let err = PostgresSource::connect(source_config(&url, "pw"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{}", err.report());
    assert!(
        err.message()
            .contains("asks user \"postgres\" for a password"),
        "{}",
        err.report()
    );
    let fix = err.fix().unwrap();
    assert!(
        fix.contains("postgres://postgres:${PGPASSWORD}@127.0.0.1"),
        "{}",
        err.report()
    );
    let err = ferry_postgres::PostgresSink::connect(ferry_postgres::PostgresSinkConfig {
        url: url.clone(),
        pipeline: "pw".into(),
    })
    .await
    .unwrap_err();
    assert!(
        err.fix().unwrap().contains("${PGPASSWORD}"),
        "{}",
        err.report()
    );
    // The password written raw, `@`, `:` and `/` and all: ferry reads it
    // (the last `@` before the host ends it), the replication connection
    // too, and a wrong one is never printed.
    let raw = format!("postgres://postgres:p@ss:w/rd@x@127.0.0.1:{port}/postgres");
    let mut src = PostgresSource::connect(source_config(&raw, "pw"))
        .await
        .unwrap();
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    src.start_stream(None, &[]).await.unwrap();
    let wrong = format!("postgres://postgres:p@ss:w/rd@y@127.0.0.1:{port}/postgres");
    let err = PostgresSource::connect(source_config(&wrong, "pw"))
        .await
        .unwrap_err();
    let report = err.report();
    assert!(report.contains("28P01"), "{report}");
    for piece in ["p@ss", "ss:w", "rd@y", "w/rd"] {
        assert!(!report.contains(piece), "{piece:?} printed: {report}");
    }
}

/// The check item "publication rights", which must have `status`.
async fn publication_rights(
    src: &mut PostgresSource,
    status: CheckStatus,
) -> ferry_core::CheckItem {
    let items = src.check().await;
    let rights = find(&items, "publication rights").clone();
    assert_eq!(rights.status, status, "{items:#?}");
    rights
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_does_not_own_the_tables_fails_the_check_then_runs_on_a_publication_made_for_it()
{
    let (pg, _) = server_with_db("src");
    pg.psql_in(
        "src",
        "CREATE ROLE app; CREATE ROLE rep LOGIN REPLICATION;
         GRANT CREATE ON DATABASE src TO rep;
         CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY);
         ALTER TABLE a OWNER TO app; ALTER TABLE b OWNER TO app;
         GRANT SELECT ON a, b TO rep;
         INSERT INTO a VALUES (1, 'x');",
    );
    let url = format!("postgres://rep@127.0.0.1:{}/src", pg.port());
    let mut src = crate::common::source(&url, "np").await;
    // `check` says what `run` will hit: the tables' owner is needed.
    let rights = publication_rights(&mut src, CheckStatus::Fail).await;
    assert!(
        rights
            .detail
            .contains("role rep does not own public.a (owner app), public.b (owner app)"),
        "{rights:#?}"
    );
    let fix = rights.fix.as_deref().unwrap();
    assert!(
        fix.contains(
            "CREATE PUBLICATION \"ferry_np\" FOR TABLE \"public\".\"a\", \"public\".\"b\""
        ) && fix.contains("OWNER TO rep"),
        "{rights:#?}"
    );
    // And `run` refuses the same way, before touching anything.
    src.tables().await.unwrap();
    let err = src.prepare().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(
        err.message().contains("does not own public.a")
            && err.fix().unwrap().contains("CREATE PUBLICATION"),
        "{}",
        err.report()
    );
    assert_eq!(
        pg.psql_in("src", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );

    // An administrator creates the publication the fix names: the check
    // passes and the run uses it as it is (rep cannot alter it).
    pg.psql_in("src", "CREATE PUBLICATION ferry_np FOR TABLE a, b");
    let rights = publication_rights(&mut src, CheckStatus::Ok).await;
    assert!(rights.detail.contains("used as it is"), "{rights:#?}");
    src.prepare().await.unwrap();
    src.start_stream(None, &[]).await.unwrap();
    pg.psql_in("src", "INSERT INTO a VALUES (2, 'y')");
    let t = crate::common::next_commit(&mut src).await;
    assert_eq!(t.changes.len(), 1, "{:?}", t.changes);

    // A publication that lists other tables, owned by someone else, is
    // named with the statement that fixes it.
    pg.psql_in("src", "ALTER PUBLICATION ferry_np SET TABLE a");
    let rights = publication_rights(&mut src, CheckStatus::Fail).await;
    assert!(
        rights
            .detail
            .contains("exists, owned by postgres, and lists public.a instead"),
        "{rights:#?}"
    );
    assert!(
        rights.fix.as_deref().unwrap().contains(
            "ALTER PUBLICATION \"ferry_np\" SET TABLE \"public\".\"a\", \"public\".\"b\""
        ),
        "{rights:#?}"
    );
}
