//! Change capture over pgoutput: decoding, schema changes, large
//! transactions, acks and heartbeats, resume, fencing, teardown.

use std::time::Duration;

use ferry_core::{Change, ErrorClass, Position, Source, SourceEvent, Value};
use ferry_testkit::eventually;

use crate::common::{next_commit, next_data, server_with_db, source};

/// A source that streams from "now" on table `t`.
async fn streaming(url: &str, pipeline: &str) -> ferry_postgres::PostgresSource {
    let mut src = source(url, pipeline).await;
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    src.start_stream(None, &[]).await.unwrap();
    src
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_decodes_row_changes_unchanged_toast_and_truncate() {
    let (pg, url) = server_with_db("src");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, small text, big text); \
         ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;",
    );
    let mut src = streaming(&url, "cdc").await;
    pg.psql_in(
        "src",
        "BEGIN; INSERT INTO t VALUES (1, 'a', repeat('x', 10000)), (2, 'b', 'short'); COMMIT;",
    );
    let t = next_commit(&mut src).await;
    assert_eq!(t.changes.len(), 2);
    let Change::Insert { row, table } = &t.changes[0] else {
        panic!()
    };
    assert_eq!(table.name.to_string(), "public.t");
    assert_eq!(row[0], Value::Int(1));
    assert!(matches!(&row[2], Value::Text(s) if s.len() == 10000));
    assert!(t.commit_time_micros.is_some());

    // Updating another column leaves the TOASTed one unsent.
    pg.psql_in("src", "UPDATE t SET small = 'A' WHERE id = 1");
    let t = next_commit(&mut src).await;
    let Change::Update { before, after, .. } = &t.changes[0] else {
        panic!()
    };
    assert!(before.is_none());
    assert_eq!(after[1], Value::Text("A".into()));
    assert!(matches!(after[2], Value::Unchanged));

    // A key change carries the old key; other old columns are Unchanged.
    pg.psql_in("src", "UPDATE t SET id = 20 WHERE id = 2");
    let t = next_commit(&mut src).await;
    let Change::Update {
        before: Some(b),
        after,
        ..
    } = &t.changes[0]
    else {
        panic!("{:?}", t.changes)
    };
    assert_eq!(b[0], Value::Int(2));
    assert!(matches!(b[1], Value::Unchanged));
    assert_eq!(after[0], Value::Int(20));
    assert_eq!(t.changes[0].old_key(), Some(vec![Value::Int(2)]));

    pg.psql_in("src", "DELETE FROM t WHERE id = 20");
    let t = next_commit(&mut src).await;
    let Change::Delete { before, .. } = &t.changes[0] else {
        panic!()
    };
    assert_eq!(before[0], Value::Int(20));
    assert!(matches!(before[2], Value::Unchanged));

    pg.psql_in("src", "TRUNCATE t");
    let t = next_commit(&mut src).await;
    assert!(matches!(&t.changes[0], Change::Truncate { tables } if tables.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_identity_table_is_keyed_by_its_unique_not_null_index() {
    let (pg, url) = server_with_db("src");
    pg.psql_in(
        "src",
        "CREATE TABLE f (a int, b int NOT NULL, c text); CREATE UNIQUE INDEX f_b ON f (b); \
         ALTER TABLE f REPLICA IDENTITY FULL; INSERT INTO f VALUES (1, 10, 'x');",
    );
    let mut src = streaming(&url, "full").await;
    pg.psql_in(
        "src",
        "BEGIN; UPDATE f SET b = 11, c = 'y' WHERE b = 10; DELETE FROM f WHERE b = 11; COMMIT;",
    );
    let t = next_commit(&mut src).await;
    let [
        Change::Update {
            before,
            after,
            table,
        },
        Change::Delete { before: gone, .. },
    ] = &t.changes[..]
    else {
        panic!("{:?}", t.changes)
    };
    assert_eq!(table.key_names(), vec!["b"]);
    // The old row, whole: the key change is visible from its key column.
    let before = before.as_ref().expect("FULL sends the old row");
    assert_eq!(table.key_of(before), vec![Value::Int(10)]);
    assert_eq!(table.key_of(after), vec![Value::Int(11)]);
    assert_eq!(table.key_of(gone), vec![Value::Int(11)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_reports_schema_changes_before_the_rows_that_use_them() {
    let (pg, url) = server_with_db("src");
    pg.psql_in("src", "CREATE TABLE t (id int PRIMARY KEY, a text)");
    let mut src = streaming(&url, "ddl").await;
    pg.psql_in("src", "INSERT INTO t VALUES (1, 'x')");
    let t = next_commit(&mut src).await;
    assert_eq!(
        t.changes.len(),
        1,
        "an unchanged structure yields no schema change"
    );
    pg.psql_in(
        "src",
        "CREATE TYPE lvl AS ENUM ('lo', 'hi'); \
         ALTER TABLE t ADD COLUMN b numeric(8,3), ADD COLUMN l lvl, DROP COLUMN a; \
         INSERT INTO t VALUES (2, 1.5, 'hi')",
    );
    let t = next_commit(&mut src).await;
    let Change::Schema { table, .. } = &t.changes[0] else {
        panic!("{:?}", t.changes)
    };
    assert_eq!(table.version, 2);
    assert_eq!(
        table
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["id", "b", "l"]
    );
    assert_eq!(table.columns[1].source_type, "numeric(8,3)");
    // The new enum column names its type, so a PostgreSQL target can create it.
    assert_eq!(
        table.columns[2].user_type.as_ref().map(|u| &u.def),
        Some(&ferry_core::UserTypeDef::Enum(vec![
            "lo".into(),
            "hi".into()
        ]))
    );
    let Change::Insert { row, table: t2 } = &t.changes[1] else {
        panic!()
    };
    assert_eq!(t2.version, 2);
    assert_eq!(row[1], Value::Decimal("1.500".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_hands_large_transactions_over_in_partials() {
    let (pg, url) = server_with_db("src");
    pg.psql_in("src", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let mut src = streaming(&url, "large").await;
    pg.psql_in(
        "src",
        "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 25000) g",
    );
    let mut total = 0;
    let mut partials = 0;
    loop {
        match next_data(&mut src).await {
            SourceEvent::Partial { changes, position } => {
                partials += 1;
                total += changes.len();
                assert!(changes.len() <= 10_000);
                assert!(matches!(position, Position::Postgres(_)));
            }
            SourceEvent::Commit(t) => {
                total += t.changes.len();
                break;
            }
            SourceEvent::Heartbeat { .. } => {}
        }
    }
    assert_eq!(partials, 2);
    assert_eq!(total, 25_000);
}

fn confirmed(pg: &ferry_testkit::PostgresServer, slot: &str) -> String {
    pg.psql_in(
        "src",
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_acks_confirm_the_slot_and_idle_heartbeats_keep_it_moving() {
    let (pg, url) = server_with_db("src");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int)",
    );
    let mut config = crate::common::source_config(&url, "acks");
    config.selection.exclude.push("other".into());
    let mut src = ferry_postgres::PostgresSource::connect(config)
        .await
        .unwrap();
    src.set_heartbeat_interval(Duration::from_millis(200));
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    src.start_stream(None, &[]).await.unwrap();
    pg.psql_in("src", "INSERT INTO t VALUES (1)");
    let t = next_commit(&mut src).await;
    let before = confirmed(&pg, "ferry_acks");
    src.ack(&t.position).await.unwrap();
    let Position::Postgres(p) = &t.position else {
        panic!()
    };
    let want = p.lsn.to_string();
    eventually(
        "slot confirmed at the acked commit",
        Duration::from_secs(10),
        || async {
            let c = confirmed(&pg, "ferry_acks");
            if c == want {
                Ok(())
            } else {
                Err(format!("confirmed {c}, was {before}, want {want}"))
            }
        },
    )
    .await;
    // Idle, and busy only with a table outside the pipeline: heartbeats
    // arrive past the last commit, and the slot moves once they are acked.
    pg.psql_in("src", "INSERT INTO other SELECT generate_series(1, 1000)");
    let mut heartbeat = None;
    while heartbeat.is_none() {
        if let SourceEvent::Heartbeat { position, .. } =
            tokio::time::timeout(Duration::from_secs(10), src.next())
                .await
                .unwrap()
                .unwrap()
            && position.as_postgres().unwrap().lsn > p.lsn
        {
            heartbeat = Some(position);
        }
    }
    let heartbeat = heartbeat.unwrap();
    assert!(heartbeat > t.position);
    // The slot never moves past what the target holds: a restart must be
    // able to tell a lost stretch of log from an idle one.
    for _ in 0..10 {
        let _ = tokio::time::timeout(Duration::from_millis(100), src.next()).await;
    }
    assert_eq!(confirmed(&pg, "ferry_acks"), want, "moved without an ack");
    // Acked (the pipeline records idle positions), it moves.
    src.ack(&heartbeat).await.unwrap();
    let want_past = p.lsn;
    let mut last = String::new();
    for _ in 0..100 {
        // Keep the stream read so keepalives are answered.
        let _ = tokio::time::timeout(Duration::from_millis(100), src.next()).await;
        last = confirmed(&pg, "ferry_acks");
        if last.parse::<ferry_core::Lsn>().unwrap() > want_past {
            break;
        }
    }
    assert!(
        last.parse::<ferry_core::Lsn>().unwrap() > want_past,
        "slot stuck at {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_resumes_after_a_position_without_duplicates_and_fences_a_second_runner() {
    let (pg, url) = server_with_db("src");
    pg.psql_in("src", "CREATE TABLE t (id int PRIMARY KEY)");
    let first;
    {
        let mut src = streaming(&url, "resume").await;
        pg.psql_in("src", "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);");
        first = next_commit(&mut src).await;
        let second = next_commit(&mut src).await;
        assert!(second.position > first.position);
        // A second runner of the same pipeline is refused while this one
        // runs: by the pipeline's lock, and by the slot being in use.
        let mut other = crate::common::source(&url, "resume").await;
        other.tables().await.unwrap();
        let err = other.prepare().await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Fatal);
        assert!(
            err.message().contains("another ferry runs pipeline"),
            "{}",
            err.report()
        );
        let err = other
            .start_stream(Some(&first.position), &[])
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Fatal);
        assert!(err.message().contains("in use"), "{}", err.report());
        assert!(
            err.fix().unwrap().contains("stop the other ferry"),
            "{}",
            err.report()
        );
        let items = other.check().await;
        let slot = items
            .iter()
            .find(|i| i.name == "source: ferry's slot")
            .unwrap();
        assert_eq!(slot.status, ferry_core::CheckStatus::Fail, "{slot}");
    }
    // Only the first was durable: resuming after it delivers the second
    // once (the old walsender may take a moment to release the slot).
    let mut src = None;
    for _ in 0..100 {
        let mut s = crate::common::source(&url, "resume").await;
        s.tables().await.unwrap();
        s.prepare().await.unwrap();
        if s.start_stream(Some(&first.position), &[]).await.is_ok() {
            src = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut src = src.expect("slot released");
    let t = next_commit(&mut src).await;
    assert!(matches!(&t.changes[0], Change::Insert { row, .. } if row[0] == Value::Int(2)));
    pg.psql_in("src", "INSERT INTO t VALUES (3)");
    let t = next_commit(&mut src).await;
    assert!(matches!(&t.changes[0], Change::Insert { row, .. } if row[0] == Value::Int(3)));
    // Teardown drops slot and publication once nothing streams.
    drop(src);
    let mut src = crate::common::source(&url, "resume").await;
    let mut result = src.teardown().await;
    for _ in 0..100 {
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = src.teardown().await;
    }
    result.unwrap();
    assert_eq!(
        pg.psql_in("src", "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_fatal_with_the_way_out() {
    let pg = ferry_testkit::PostgresServer::builder()
        .conf("max_slot_wal_keep_size = 1MB")
        .start();
    let url = pg.create_database("src");
    pg.psql_in("src", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let position = {
        let mut src = source(&url, "lost").await;
        src.tables().await.unwrap();
        src.prepare().await.unwrap();
        pg.psql_in("src", "INSERT INTO t VALUES (1, 'x')");
        Position::Postgres(ferry_core::PgPosition {
            commit_lsn: ferry_core::Lsn(1),
            lsn: ferry_core::Lsn(1),
        })
    };
    // Write past the slot's allowance while ferry is away.
    eventually("the slot to be invalidated", Duration::from_secs(60), || async {
        pg.psql_in(
            "src",
            "INSERT INTO t SELECT g, repeat('w', 200) FROM generate_series(2, 30000) g \
             ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v || 'x'; SELECT pg_switch_wal(); CHECKPOINT;",
        );
        let status = pg.psql_in("src", "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'ferry_lost'");
        if status == "lost" { Ok(()) } else { Err(status) }
    })
    .await;
    let mut src = source(&url, "lost").await;
    let items = src.check().await;
    let slot = items
        .iter()
        .find(|i| i.name == "source: ferry's slot")
        .unwrap();
    assert_eq!(slot.status, ferry_core::CheckStatus::Fail, "{slot}");
    src.tables().await.unwrap();
    // The lost slot can never stream again: prepare creates it anew, and
    // the gap between the checkpoint and the new slot is reported.
    src.prepare().await.unwrap();
    match src.continuity(&position).await.unwrap() {
        ferry_core::Continuity::Gap { reason, resume } => {
            assert!(reason.contains("invalidated"), "{reason}");
            assert!(resume > position);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_for_a_while_survives_wal_sender_timeout() {
    let pg = ferry_testkit::PostgresServer::builder()
        .conf("wal_sender_timeout = 1500")
        .start();
    let url = pg.create_database("src");
    pg.psql_in("src", "CREATE TABLE t (id int PRIMARY KEY)");
    let mut src = streaming(&url, "busy").await;
    pg.psql_in("src", "INSERT INTO t VALUES (1)");
    // The pipeline is busy elsewhere for more than twice the timeout: this
    // pause is what is under test.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    pg.psql_in("src", "INSERT INTO t VALUES (2)");
    assert_eq!(next_commit(&mut src).await.changes.len(), 1);
    assert_eq!(next_commit(&mut src).await.changes.len(), 1);
    assert!(
        !pg.log_tail(200).contains("replication timeout"),
        "{}",
        pg.log_tail(20)
    );
}

/// Starts `pg_recvlogical` on ferry's slot of `pipeline`, as a session an
/// earlier runner left behind, and waits until it holds the slot.
fn hold_slot(pg: &ferry_testkit::PostgresServer, url: &str, pipeline: &str) -> std::process::Child {
    let slot = format!("ferry_{pipeline}");
    let child = std::process::Command::new(pg.program("pg_recvlogical"))
        .args([
            "-d",
            url,
            "-S",
            &slot,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={slot}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pg_recvlogical");
    let active = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'");
    ferry_testkit::eventually_blocking("the slot is held", Duration::from_secs(30), || {
        (pg.psql_in("src", &active) == "t").then_some(())
    });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_still_held_by_an_earlier_runners_session_is_waited_for() {
    let (pg, url) = server_with_db("src");
    pg.psql_in("src", "CREATE TABLE t (id int PRIMARY KEY)");
    drop(streaming(&url, "held").await);
    let active = "SELECT active FROM pg_replication_slots WHERE slot_name = 'ferry_held'";
    eventually(
        "the first runner's session ends",
        Duration::from_secs(30),
        || async { (pg.psql_in("src", active) == "f").then_some(()) },
    )
    .await;

    // Released after a while (as the server ends a dead runner's session):
    // the runner holding the pipeline's lock waits for it.
    let mut holder = hold_slot(&pg, &url, "held");
    let mut src = source(&url, "held").await;
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500)); // the moment the old session ends
        holder.kill().unwrap();
        holder.wait().unwrap();
    });
    let started = std::time::Instant::now();
    src.start_stream(None, &[]).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    release.join().unwrap();
    pg.psql_in("src", "INSERT INTO t VALUES (1)");
    let t = next_commit(&mut src).await;
    assert!(matches!(&t.changes[0], Change::Insert { row, .. } if row[0] == Value::Int(1)));
    drop(src);
    eventually(
        "the runner's session ends",
        Duration::from_secs(30),
        || async { (pg.psql_in("src", active) == "f").then_some(()) },
    )
    .await;

    // Never released: after wal_sender_timeout (1 s here) and 5 s more,
    // the slot is reported in use.
    pg.psql_in(
        "src",
        "ALTER SYSTEM SET wal_sender_timeout = '1s'; SELECT pg_reload_conf()",
    );
    let mut holder = hold_slot(&pg, &url, "held");
    let mut src = source(&url, "held").await;
    src.tables().await.unwrap();
    src.prepare().await.unwrap();
    let started = std::time::Instant::now();
    let err = src.start_stream(None, &[]).await.unwrap_err();
    assert!(err.message().contains("in use"), "{}", err.report());
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}
