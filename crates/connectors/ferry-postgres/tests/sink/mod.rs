//! The sink: structure copy, binary COPY load, batched apply, checkpoint
//! in the same transaction, error classes.

mod precreated;

use ferry_core::{
    CheckpointRecord, CheckpointStore, ColumnType, ErrorClass, KeyRange, Lsn, PgPosition, Position,
    Sink, Step, TableOps, TableProgress, TableReader, Value,
};
use ferry_postgres::{PostgresSink, PostgresSinkConfig};
use ferry_testkit::PostgresServer;

use crate::common::{col, server_with_db, table, text};

fn config(url: &str) -> PostgresSinkConfig {
    PostgresSinkConfig {
        url: url.to_owned(),
        pipeline: "p1".into(),
    }
}

fn accounts() -> ferry_core::TableRef {
    table(
        Some("app"),
        "accounts",
        vec![
            col("id", ColumnType::Int64, false),
            col("name", text(), true),
            col(
                "balance",
                ColumnType::Decimal {
                    precision: Some(12),
                    scale: Some(2),
                },
                true,
            ),
            col("note", text(), true),
        ],
        vec![0],
    )
}

fn row(id: i64, name: &str, balance: &str, note: &str) -> Vec<Value> {
    vec![
        Value::Int(id),
        Value::Text(name.into()),
        Value::Decimal(balance.into()),
        Value::Text(note.into()),
    ]
}

fn pos(n: u64) -> Position {
    Position::Postgres(PgPosition {
        commit_lsn: Lsn(n),
        lsn: Lsn(n + 1),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_creates_tables_loads_with_copy_and_commits_checkpoint() {
    let (pg, url) = server_with_db("target");
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    let t = accounts();
    sink.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    // Idempotent on an existing, compatible table.
    sink.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_name = 'accounts'"
        ),
        "id:bigint,name:text,balance:numeric,note:text"
    );
    // Created without its key, which is built once the table is loaded.
    let pk = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'app.accounts'::regclass AND contype = 'p'";
    assert_eq!(pg.psql_in("target", pk), "0");
    let rows: Vec<Vec<Value>> = (1..=2500)
        .map(|i| row(i, &format!("n{i}"), &format!("{i}.50"), "x"))
        .collect();
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.load(&t, &rows).await.unwrap();
    let mut progress = TableProgress::default();
    progress.add(KeyRange::all(), &pos(10));
    progress.complete = true;
    w.commit(&[
        CheckpointRecord::applied(&pos(10)),
        CheckpointRecord::table("app.accounts", &progress),
    ])
    .await
    .unwrap();
    assert_eq!(
        pg.psql_in("target", "SELECT count(*), sum(balance) FROM app.accounts"),
        "2500|3127500.00"
    );
    assert_eq!(pg.psql_in("target", pk), "1");
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT obj_description('app.accounts'::regclass, 'pg_class') IS NULL"
        ),
        "t"
    );
    let cp = sink.load().await.unwrap();
    assert_eq!(cp.applied, Some(pos(10)));
    assert!(cp.tables["app.accounts"].complete);
    // Reading back in key order.
    assert_eq!(sink.count_rows(&t).await.unwrap(), 2500);
    let first = sink.read_rows(&t, None, 2).await.unwrap();
    assert_eq!(
        first,
        vec![row(1, "n1", "1.50", "x"), row(2, "n2", "2.50", "x")]
    );
    let next = sink
        .read_rows(&t, Some(&[Value::Int(2499)]), 10)
        .await
        .unwrap();
    assert_eq!(next, vec![row(2500, "n2500", "2500.50", "x")]);
    sink.clear().await.unwrap();
    assert_eq!(sink.load().await.unwrap().applied, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_applies_deletes_upserts_and_partial_updates_atomically() {
    let (pg, url) = server_with_db("target");
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    let t = accounts();
    sink.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.load(
        &t,
        &(1..=5)
            .map(|i| row(i, "a", "1.00", "keep"))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    // The snapshot of the table is complete: its key is built now.
    let mut done = TableProgress::default();
    done.add(KeyRange::all(), &pos(1));
    done.complete = true;
    w.commit(&[CheckpointRecord::table("app.accounts", &done)])
        .await
        .unwrap();

    let mut ops = TableOps::new(t.clone());
    ops.deletes.push(vec![
        Value::Int(1),
        Value::Unchanged,
        Value::Unchanged,
        Value::Unchanged,
    ]);
    ops.deletes.push(vec![
        Value::Int(99),
        Value::Unchanged,
        Value::Unchanged,
        Value::Unchanged,
    ]);
    ops.upserts.push(row(2, "b", "2.00", "new"));
    ops.upserts.push(row(6, "f", "6.00", "ins"));
    // Partial update: `note` was not sent (unchanged TOAST).
    ops.updates.push(vec![
        Value::Int(3),
        Value::Text("c".into()),
        Value::Decimal("3.33".into()),
        Value::Unchanged,
    ]);
    // An upsert carrying Unchanged is an update of the present columns.
    ops.upserts.push(vec![
        Value::Int(4),
        Value::Unchanged,
        Value::Decimal("4.44".into()),
        Value::Unchanged,
    ]);
    w.begin().await.unwrap();
    w.apply(&[
        Step::Rows(vec![ops]),
        Step::MoveKey {
            table: t.clone(),
            old_key: vec![Value::Int(5)],
            row: vec![
                Value::Int(50),
                Value::Text("moved".into()),
                Value::Unchanged,
                Value::Unchanged,
            ],
        },
    ])
    .await
    .unwrap();
    // Not visible before commit.
    assert_eq!(
        pg.psql_in("target", "SELECT count(*) FROM app.accounts WHERE id = 1"),
        "1"
    );
    w.commit(&[CheckpointRecord::applied(&pos(20))])
        .await
        .unwrap();
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT id, name, balance, note FROM app.accounts ORDER BY id"
        ),
        "2|b|2.00|new\n3|c|3.33|keep\n4|a|4.44|keep\n6|f|6.00|ins\n50|moved|1.00|keep"
    );
    assert_eq!(sink.load().await.unwrap().applied, Some(pos(20)));

    // Rollback leaves neither data nor checkpoint.
    let mut ops = TableOps::new(t.clone());
    ops.upserts.push(row(7, "g", "7.00", "x"));
    w.begin().await.unwrap();
    w.apply(&[Step::Rows(vec![ops]), Step::Truncate(vec![])])
        .await
        .unwrap();
    w.rollback().await.unwrap();
    assert_eq!(
        pg.psql_in("target", "SELECT count(*) FROM app.accounts WHERE id = 7"),
        "0"
    );
    w.begin().await.unwrap();
    w.apply(&[Step::Truncate(vec![t.clone()])]).await.unwrap();
    w.commit(&[CheckpointRecord::applied(&pos(30))])
        .await
        .unwrap();
    assert_eq!(
        pg.psql_in("target", "SELECT count(*) FROM app.accounts"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_applies_schema_changes_to_the_target() {
    let (pg, url) = server_with_db("target");
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    let t = accounts();
    sink.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    let mut cols = t.columns.clone();
    cols.remove(3); // note dropped
    cols.push(col("email", text(), true));
    // A new column of an enum type the target does not have yet.
    cols.push(ferry_core::Column {
        source_type: "app.tier".into(),
        user_type: Some(ferry_core::UserType {
            name: ferry_core::TableName::new(Some("app"), "tier"),
            def: ferry_core::UserTypeDef::Enum(vec!["free".into(), "pro".into()]),
        }),
        ..col("tier", text(), true)
    });
    let t2 = std::sync::Arc::new(ferry_core::TableSchema {
        columns: cols,
        version: 2,
        key_deferrable: false,
        ..(*t).clone()
    });
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    let mut ops = TableOps::new(t2.clone());
    ops.upserts.push(vec![
        Value::Int(1),
        Value::Text("a".into()),
        Value::Decimal("1".into()),
        Value::Text("a@x".into()),
        Value::Text("pro".into()),
    ]);
    w.apply(&[
        Step::Schema {
            table: t2.clone(),
            alter: Default::default(),
        },
        Step::Rows(vec![ops]),
    ])
    .await
    .unwrap();
    w.commit(&[]).await.unwrap();
    assert_eq!(
        pg.psql_in("target", "SELECT * FROM app.accounts"),
        "1|a|1.00|a@x|pro"
    );
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'app.accounts'::regclass AND attname = 'tier'"
        ),
        "app.tier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_rejects_incompatible_existing_tables_with_a_fix() {
    let (pg, url) = server_with_db("target");
    pg.psql_in(
        "target",
        "CREATE SCHEMA app; CREATE TABLE app.accounts (id bigint PRIMARY KEY, name text)",
    );
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    // Columns the source gained while ferry was stopped: reported, and
    // added by a writer's schema step (the pipeline re-copies the table).
    let altered = sink.ensure_tables(&[accounts()]).await.unwrap();
    assert_eq!(altered, vec![accounts().name.clone()]);
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    w.apply(&[Step::Schema {
        table: accounts(),
        alter: Default::default(),
    }])
    .await
    .unwrap();
    w.commit(&[]).await.unwrap();
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'app.accounts'::regclass AND attnum > 0"
        ),
        "id bigint, name text, balance numeric(12,2), note text"
    );
    assert!(sink.ensure_tables(&[accounts()]).await.unwrap().is_empty());
    pg.psql_in(
        "target",
        "ALTER TABLE app.accounts DROP CONSTRAINT accounts_pkey",
    );
    let err = sink.ensure_tables(&[accounts()]).await.unwrap_err();
    assert!(
        err.fix().unwrap().contains("ADD PRIMARY KEY"),
        "{}",
        err.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_classifies_errors() {
    let (pg, url) = server_with_db("target");
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    let t = table(
        None,
        "strict",
        vec![
            col("id", ColumnType::Int32, false),
            col("v", ColumnType::Int16, false),
        ],
        vec![0],
    );
    sink.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    let mut w = sink.writer().await.unwrap();
    // NOT NULL violation: a data error naming table, keys and statement.
    let mut ops = TableOps::new(t.clone());
    ops.upserts.push(vec![Value::Int(1), Value::Null]);
    w.begin().await.unwrap();
    let err = w.apply(&[Step::Rows(vec![ops])]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data, "{}", err.report());
    let report = err.report();
    assert!(
        report.contains("23502")
            && report.contains("public.strict")
            && report.contains("INSERT INTO"),
        "{report}"
    );
    w.rollback().await.unwrap();
    // Out of range for smallint: a data error before anything is sent.
    let mut ops = TableOps::new(t.clone());
    ops.upserts.push(vec![Value::Int(1), Value::Int(70_000)]);
    w.begin().await.unwrap();
    let err = w.apply(&[Step::Rows(vec![ops])]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Data, "{}", err.report());
    assert!(err.report().contains("out of range"), "{}", err.report());
    w.rollback().await.unwrap();
    // Missing privilege: fatal with a fix.
    pg.psql_in(
        "target",
        "CREATE ROLE weak LOGIN; GRANT SELECT ON public._ferry_checkpoint TO weak",
    );
    let weak_url = url.replace("postgres@", "weak@");
    let weak = PostgresSink::connect(config(&weak_url)).await.unwrap();
    let err = weak.ensure_tables(&[accounts()]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    // Found before anything is created, naming the grant.
    assert!(
        err.message()
            .contains("may not write the checkpoint table public._ferry_checkpoint")
            && err.fix().is_some_and(|f| f.contains("GRANT")),
        "{}",
        err.report()
    );
    pg.psql_in(
        "target",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public._ferry_checkpoint TO weak",
    );
    let err = weak.ensure_tables(&[accounts()]).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(
        err.report().contains("42501") && err.fix().is_some(),
        "{}",
        err.report()
    );
    // Allowed to create in schema `public` only, not in the database: the
    // table and its enum go into the existing schema, which ferry does not
    // try to create (`CREATE SCHEMA IF NOT EXISTS` needs the database's
    // CREATE privilege even when the schema exists).
    pg.psql_in(
        "target",
        "CREATE ROLE narrow LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO narrow; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON public._ferry_checkpoint TO narrow",
    );
    let narrow = PostgresSink::connect(config(&url.replace("postgres@", "narrow@")))
        .await
        .unwrap();
    let plain = table(
        Some("public"),
        "plain",
        vec![
            col("id", ColumnType::Int64, false),
            ferry_core::Column {
                source_type: "public.level".into(),
                user_type: Some(ferry_core::UserType {
                    name: ferry_core::TableName::new(Some("public"), "level"),
                    def: ferry_core::UserTypeDef::Enum(vec!["low".into(), "high".into()]),
                }),
                ..col("lvl", text(), true)
            },
        ],
        vec![0],
    );
    narrow.ensure_tables(&[plain]).await.unwrap();
    assert_eq!(
        pg.psql_in("target", "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.plain'::regclass AND attname = 'lvl'"),
        "level"
    );
    // Server gone: transient, naming host and port.
    let port = pg.port();
    drop(pg);
    let err = PostgresSink::connect(config(&url)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{}", err.report());
    assert!(
        err.message().contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_wrong_password_is_fatal_with_a_fix() {
    let pg = PostgresServer::builder().password("s3cret").start();
    let url = pg.url().replace("s3cret", "wrong");
    let err = PostgresSink::connect(config(&url)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{}", err.report());
    assert!(err.report().contains("28P01"), "{}", err.report());
    assert!(err.fix().unwrap().contains("password"), "{}", err.report());
    assert!(
        !err.report().contains("wrong"),
        "the password must not be printed: {}",
        err.report()
    );
    let ok = PostgresSink::connect(config(&pg.url())).await.unwrap();
    let items = ok.check().await;
    assert!(
        items
            .iter()
            .all(|i| i.status == ferry_core::CheckStatus::Ok),
        "{items:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_merges_large_upsert_batches_through_a_staging_table() {
    let (pg, url) = server_with_db("target");
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    let t = accounts();
    sink.ensure_tables(std::slice::from_ref(&t)).await.unwrap();
    let mut w = sink.writer().await.unwrap();
    let batch = |from: i64, to: i64, note: &str| {
        let mut ops = TableOps::new(t.clone());
        ops.upserts
            .extend((from..=to).map(|i| row(i, "n", &format!("{i}.00"), note)));
        Step::Rows(vec![ops])
    };
    // Rolled back: the staging table created in it is gone too.
    w.begin().await.unwrap();
    w.apply(&[batch(1, 600, "a")]).await.unwrap();
    w.rollback().await.unwrap();
    w.begin().await.unwrap();
    w.apply(&[batch(1, 1500, "a"), batch(1001, 2000, "b")])
        .await
        .unwrap();
    w.commit(&[CheckpointRecord::applied(&pos(5))])
        .await
        .unwrap();
    w.begin().await.unwrap();
    w.apply(&[batch(1, 700, "c")]).await.unwrap();
    w.commit(&[]).await.unwrap();
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT note, count(*) FROM app.accounts GROUP BY note ORDER BY note"
        ),
        "a|300\nb|1000\nc|700"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_applies_keyless_changes_one_row_at_a_time_in_order() {
    let (pg, url) = server_with_db("target");
    let sink = PostgresSink::connect(config(&url)).await.unwrap();
    let t = table(
        None,
        "log",
        vec![
            col("n", ColumnType::Int64, true),
            col("note", text(), true),
            // `json` has no equality operator: rows are matched on its text.
            ferry_core::Column {
                source_type: "json".into(),
                ..col("doc", ColumnType::Json, true)
            },
        ],
        vec![],
    );
    ferry_testkit::doubles::keyless_conformance(&sink, t, |n, note| {
        vec![
            Value::Int(n),
            note.map_or(Value::Null, |s| Value::Text(s.into())),
            Value::Json(r#"{"a": [1, 2]}"#.into()),
        ]
    })
    .await;
    // Created without a key, and none is added later.
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.log'::regclass"
        ),
        "0"
    );
    assert_eq!(
        pg.psql_in(
            "target",
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'log' AND column_name = 'doc'"
        ),
        "json"
    );
}

/// One runner per pipeline: the shared fence suite, the second runner
/// reaching the same database as `localhost` instead of `127.0.0.1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_passes_the_fence_conformance_suite() {
    let (_pg, url) = server_with_db("fenced");
    let opened = std::sync::atomic::AtomicUsize::new(0);
    ferry_testkit::doubles::fence_conformance(async |pipeline: &str| {
        let url = match opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 {
            0 => url.clone(),
            _ => url.replace("127.0.0.1", "localhost"),
        };
        let sink = PostgresSink::connect(PostgresSinkConfig {
            url,
            pipeline: pipeline.into(),
        })
        .await
        .unwrap();
        Box::new(sink) as Box<dyn Sink>
    })
    .await;
}

/// Tables in a schema the target lacks, with an enum and a domain over it.
fn typed_tables() -> Vec<ferry_core::TableRef> {
    let tier = ferry_core::UserType {
        name: ferry_core::TableName::new(Some("shop"), "tier"),
        def: ferry_core::UserTypeDef::Enum(vec!["free".into(), "pro".into()]),
    };
    let paid = ferry_core::UserType {
        name: ferry_core::TableName::new(Some("shop"), "paid_tier"),
        def: ferry_core::UserTypeDef::Domain {
            base: "shop.tier".into(),
            base_type: Some(Box::new(tier.clone())),
            not_null: false,
            checks: vec![(
                "not_free".into(),
                "CHECK ((VALUE <> 'free'::shop.tier))".into(),
            )],
        },
    };
    let typed = |name: &str, ut: &ferry_core::UserType| ferry_core::Column {
        source_type: ut.name.to_string(),
        user_type: Some(ut.clone()),
        ..col(name, text(), true)
    };
    (0..4)
        .map(|i| {
            table(
                Some("shop"),
                &format!("t{i}"),
                vec![
                    col("id", ColumnType::Int64, false),
                    typed("tier", &tier),
                    typed("paid", &paid),
                ],
                vec![0],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_starting_at_once_on_a_fresh_target_create_its_structure_once() {
    // Each round a fresh database: every pipeline finds nothing there and
    // creates the schema, the types and the tables at the same moment.
    let pg = PostgresServer::start();
    for round in 0..3 {
        let url = pg.create_database(&format!("fresh{round}"));
        let mut sinks = Vec::new();
        for p in 0..6 {
            let cfg = PostgresSinkConfig {
                url: url.clone(),
                pipeline: format!("p{p}"),
            };
            sinks.push(PostgresSink::connect(cfg).await.unwrap());
        }
        let tasks: Vec<_> = sinks
            .into_iter()
            .map(|s| tokio::spawn(async move { s.ensure_tables(&typed_tables()).await }))
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            r.unwrap_or_else(|e| panic!("round {round}: {}", e.report()));
        }
        assert_eq!(
            pg.psql_in(
                &format!("fresh{round}"),
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'shop'"
            ),
            "4"
        );
    }
}
