//! The source snapshot: exported snapshot, parallel chunks, exact hand-off
//! to the stream, restart with skipped ranges.

use std::collections::BTreeSet;

use ferry_core::{
    Change, ErrorClass, KeyRange, Position, SnapshotRequest, Source, TableReader, Value,
};

use crate::common::{drain, next_commit, requests, server_with_db, source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_consistent_parallel_and_hands_off_exactly_to_the_stream() {
    let (pg, url) = server_with_db("src");
    pg.psql_in(
        "src",
        "CREATE TABLE big (id bigint PRIMARY KEY, v text); \
         INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 60000) g; \
         ANALYZE big; \
         CREATE TABLE names (name text PRIMARY KEY, n int); \
         INSERT INTO names SELECT 'k' || g, g FROM generate_series(1, 25000) g; \
         CREATE TABLE pair (a int, b text, PRIMARY KEY (a, b)); \
         INSERT INTO pair VALUES (1, 'x'), (1, 'y'), (2, 'x'); \
         CREATE TABLE dense (id int PRIMARY KEY); \
         INSERT INTO dense SELECT g * 10 FROM generate_series(1, 10000) g; \
         ANALYZE dense; \
         INSERT INTO dense SELECT g FROM generate_series(1, 100000) g WHERE g % 10 <> 0;",
    );
    let mut src = source(&url, "snap").await;
    let tables = src.tables().await.unwrap();
    assert_eq!(tables.len(), 4);
    src.prepare().await.unwrap();
    // Written after the slot's consistent point: not in the snapshot, but
    // in the stream.
    pg.psql_in(
        "src",
        "INSERT INTO big VALUES (60001, 'late'); DELETE FROM names WHERE name = 'k1';",
    );
    let reader = src.snapshot(requests(&tables)).await.unwrap();
    let snapshot_pos = reader.position().clone();
    let chunks = drain(reader).await;
    let mut ids = BTreeSet::new();
    let mut names = 0;
    let (mut dense, mut dense_chunks) = (BTreeSet::new(), 0);
    let mut done = BTreeSet::new();
    for c in &chunks {
        assert!(
            !done.contains(&c.table.name.to_string()),
            "chunk after table_done"
        );
        if c.table_done {
            done.insert(c.table.name.to_string());
        }
        match c.table.name.name.as_str() {
            "big" => {
                assert!(c.rows.len() <= 50_000);
                for r in c.rows.values() {
                    let key = c.table.key_of(r);
                    assert!(c.range.contains(&key), "{key:?} outside {:?}", c.range);
                    let Value::Int(id) = r[0] else { panic!() };
                    assert!(ids.insert(id), "row {id} twice");
                }
            }
            "names" => names += c.rows.len(),
            // Planned from a stale estimate (10,000 rows, 100,000 there):
            // its one piece comes in several chunks, each claiming its rows.
            "dense" => {
                assert!(c.rows.len() <= 20_000);
                dense_chunks += 1;
                for r in c.rows.values() {
                    let key = c.table.key_of(r);
                    assert!(c.range.contains(&key), "{key:?} outside {:?}", c.range);
                    let Value::Int(id) = r[0] else { panic!() };
                    assert!(dense.insert(id), "row {id} twice");
                }
            }
            _ => {}
        }
    }
    assert_eq!(dense.len(), 100_000);
    assert!(dense_chunks >= 5, "{dense_chunks} chunks");

    // The pipeline's `snapshot.chunk_rows` sets the chunk size.
    let mut config = crate::common::source_config(&url, "snap_small");
    config.snapshot_chunk_rows = Some(7_000);
    let mut small = ferry_postgres::PostgresSource::connect(config)
        .await
        .unwrap();
    let dense_t: Vec<_> = tables
        .iter()
        .filter(|t| t.name.name == "dense")
        .cloned()
        .collect();
    small.tables().await.unwrap();
    let sizes: Vec<usize> = drain(small.snapshot(requests(&dense_t)).await.unwrap())
        .await
        .iter()
        .map(|c| c.rows.len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 100_000);
    assert!(sizes.iter().all(|&n| n <= 7_000), "{sizes:?}");
    assert!(sizes.contains(&7_000), "{sizes:?}");
    assert_eq!(done.len(), 4, "every table done");
    assert_eq!(ids.len(), 60_000);
    assert_eq!(*ids.last().unwrap(), 60_000);
    assert_eq!(names, 25_000);
    assert!(
        chunks.iter().filter(|c| c.table.name.name == "big").count() >= 3,
        "big copied in several chunks"
    );
    // The stream starts exactly after the snapshot.
    src.start_stream(Some(&snapshot_pos), &[]).await.unwrap();
    let t1 = next_commit(&mut src).await;
    assert!(matches!(&t1.changes[..], [Change::Insert { row, .. }] if row[0] == Value::Int(60001)));
    assert!(t1.position > snapshot_pos);
    let t2 = next_commit(&mut src).await;
    assert!(
        matches!(&t2.changes[..], [Change::Delete { before, .. }] if before[0] == Value::Text("k1".into()))
    );
    // Reading back through TableReader, in key order (text by bytes).
    let names_t = tables.iter().find(|t| t.name.name == "names").unwrap();
    let first = src.read_rows(names_t, None, 3).await.unwrap();
    assert_eq!(first[0][0], Value::Text("k10".into()));
    assert_eq!(src.count_rows(names_t).await.unwrap(), 24_999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_takes_a_new_snapshot_and_skips_copied_ranges() {
    let (pg, url) = server_with_db("src");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;",
    );
    let first_pos: Position;
    {
        let mut src = source(&url, "again").await;
        let tables = src.tables().await.unwrap();
        src.prepare().await.unwrap();
        let reader = src.snapshot(requests(&tables)).await.unwrap();
        first_pos = reader.position().clone();
        // Crash before the copy is used: the exported snapshot is gone.
    }
    pg.psql_in(
        "src",
        "UPDATE t SET v = -v WHERE id IN (10, 900); INSERT INTO t VALUES (1001, 1001);",
    );
    let mut src = source(&url, "again").await;
    let tables = src.tables().await.unwrap();
    src.prepare().await.unwrap();
    // Keys up to 500 were copied by the first run.
    let skip = vec![KeyRange {
        lower: None,
        upper: Some(vec![Value::Int(500)]),
    }];
    let reader = src
        .snapshot(vec![SnapshotRequest {
            table: tables[0].clone(),
            skip,
            encoding: None,
        }])
        .await
        .unwrap();
    let second_pos = reader.position().clone();
    assert!(second_pos > first_pos, "a new, later snapshot");
    let chunks = drain(reader).await;
    let rows: Vec<&Vec<Value>> = chunks.iter().flat_map(|c| c.rows.values()).collect();
    assert_eq!(rows.len(), 501, "501..=1001 copied, 1..=500 skipped");
    assert!(rows.iter().all(|r| r[0] > Value::Int(500)));
    assert!(
        rows.iter()
            .any(|r| r[0] == Value::Int(900) && r[1] == Value::Int(-900))
    );
    for c in &chunks {
        assert!(
            c.range
                .lower
                .as_ref()
                .is_some_and(|l| l >= &vec![Value::Int(500)]),
            "{:?}",
            c.range
        );
    }
    // The stream from the first snapshot delivers every change since; the
    // pipeline's checkpoint drops those already in the second copy.
    src.start_stream(Some(&first_pos), &[]).await.unwrap();
    let t = next_commit(&mut src).await;
    assert_eq!(t.changes.len(), 2);
    let t = next_commit(&mut src).await;
    assert_eq!(t.changes.len(), 1);
    assert!(t.position <= second_pos);
    // The temporary slot is gone with its session.
    assert_eq!(
        pg.psql_in(
            "src",
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots"
        ),
        "ferry_again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_without_a_key_are_fatal_with_a_fix_and_every_type_is_carried() {
    let (pg, url) = server_with_db("src");
    pg.psql_in("src", "CREATE TABLE nokey (a int, b text)");
    let mut src = source(&url, "nokey").await;
    let err = src.tables().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert!(err.message().contains("public.nokey"), "{}", err.report());
    assert!(
        err.fix().unwrap().contains("ADD PRIMARY KEY")
            && err.fix().unwrap().contains("REPLICA IDENTITY FULL"),
        "{}",
        err.report()
    );
    pg.psql_in(
        "src",
        "ALTER TABLE nokey ADD PRIMARY KEY (a); CREATE TABLE geo (id int PRIMARY KEY, p point)",
    );
    // No column type stops a table: one ferry has no codec for is carried
    // by its text form.
    let tables = src.tables().await.unwrap();
    let geo = tables.iter().find(|t| t.name.name == "geo").unwrap();
    assert_eq!(
        geo.columns[1].ty,
        ferry_core::ColumnType::Other {
            type_name: "point".into()
        }
    );
    // A replica identity index works instead of a primary key.
    pg.psql_in(
        "src",
        "DROP TABLE geo; CREATE TABLE ri (a int NOT NULL, b int); CREATE UNIQUE INDEX ri_a ON ri (a); \
         ALTER TABLE ri REPLICA IDENTITY USING INDEX ri_a;",
    );
    let tables = src.tables().await.unwrap();
    let ri = tables.iter().find(|t| t.name.name == "ri").unwrap();
    assert_eq!(ri.key_names(), vec!["a"]);
    // With REPLICA IDENTITY FULL and no primary key, a unique index on NOT
    // NULL columns is the key; one on a nullable column is not.
    pg.psql_in(
        "src",
        "CREATE TABLE full_u (a int, b int NOT NULL, c text); \
         CREATE UNIQUE INDEX full_u_a ON full_u (a); CREATE UNIQUE INDEX full_u_b ON full_u (b); \
         ALTER TABLE full_u REPLICA IDENTITY FULL;",
    );
    let tables = src.tables().await.unwrap();
    let full = tables.iter().find(|t| t.name.name == "full_u").unwrap();
    assert_eq!(full.key_names(), vec!["b"]);
    // Without such an index, FULL makes a keyless table: rows found by
    // all their columns.
    pg.psql_in(
        "src",
        "CREATE TABLE full_n (a int, c text); CREATE UNIQUE INDEX ON full_n (a); \
         ALTER TABLE full_n REPLICA IDENTITY FULL;",
    );
    let tables = src.tables().await.unwrap();
    let full = tables.iter().find(|t| t.name.name == "full_n").unwrap();
    assert!(full.is_keyless(), "{full:?}");
    // NOTHING is refused even so.
    pg.psql_in("src", "ALTER TABLE full_n REPLICA IDENTITY NOTHING");
    let err = src.tables().await.unwrap_err();
    assert!(
        err.message().contains("public.full_n") && err.message().contains("NOTHING"),
        "{}",
        err.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_piece_denser_than_planned_is_sent_in_several_chunks() {
    // Statistics say 13 rows per page (most rows deleted, then VACUUM
    // ANALYZE); new rows then fill the freed space: one planned piece holds
    // 100,000 rows, five chunks.
    let (_pg, _src, _tables, chunks) = snapshot_of(
        "CREATE TABLE log (a int, b text); ALTER TABLE log REPLICA IDENTITY FULL; \
         INSERT INTO log SELECT g, 'x' FROM generate_series(1, 100000) g; \
         DELETE FROM log WHERE a % 10 <> 0; VACUUM ANALYZE log; \
         INSERT INTO log SELECT g % 7, 'y' FROM generate_series(1, 90000) g;",
        "dense",
    )
    .await;
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    let rows: Vec<&Vec<Value>> = chunks.iter().flat_map(|c| c.rows.values()).collect();
    assert_eq!(rows.len(), 100_000);
    let ys = rows
        .iter()
        .filter(|r| r[1] == Value::Text("y".into()))
        .count();
    assert_eq!(ys, 90_000, "every row exactly once");
    // Only the last chunk of the piece claims its blocks; the others claim
    // nothing (an empty range).
    for c in chunks.iter().filter(|c| !c.table_done) {
        assert!(
            c.range.lower.is_some() && c.range.lower == c.range.upper,
            "{:?}",
            c.range
        );
    }
    let last = chunks.iter().find(|c| c.table_done).unwrap();
    assert_eq!(last.range, KeyRange::all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_table_is_copied_in_heap_block_pieces() {
    // Identical rows (g % 1000): each must arrive as often as it is there.
    let (_pg, _src, tables, chunks) = snapshot_of(
        "CREATE TABLE log (a int, b text); ALTER TABLE log REPLICA IDENTITY FULL; \
         INSERT INTO log SELECT g % 1000, 'row ' || (g % 1000) FROM generate_series(1, 100000) g; \
         ANALYZE log;",
        "keyless",
    )
    .await;
    assert!(tables[0].is_keyless());
    let rows: Vec<&Vec<Value>> = chunks.iter().flat_map(|c| c.rows.values()).collect();
    assert_eq!(rows.len(), 100_000);
    let mut counts = std::collections::HashMap::new();
    for r in &rows {
        *counts.entry(r[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 1000);
    assert!(counts.values().all(|&n| n == 100), "every row exactly once");
    // Pieces of the heap read in parallel, each claiming its blocks once.
    let claims: Vec<&ferry_core::KeyRange> = chunks
        .iter()
        .map(|c| &c.range)
        .filter(|r| r.lower != r.upper)
        .collect();
    assert!(claims.len() >= 3, "{} pieces", claims.len());
    assert_eq!(chunks.iter().filter(|c| c.table_done).count(), 1);
    let mut progress = ferry_core::TableProgress::default();
    for r in claims {
        progress.add(
            r.clone(),
            &ferry_core::Position::Sqlite(ferry_core::SqlitePosition { seq: 1 }),
        );
    }
    assert!(
        progress
            .ranges
            .iter()
            .any(|r| r.range == ferry_core::KeyRange::all()),
        "the pieces cover the whole heap: {:?}",
        progress.ranges
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_a_text_key_is_copied_in_parallel_key_ranges() {
    copied_in_sampled_pieces(
        "CREATE TABLE words (w text PRIMARY KEY, n int); \
         INSERT INTO words SELECT md5(g::text) || CASE g % 3 WHEN 0 THEN 'Ä' WHEN 1 THEN 'a' ELSE 'B' END, g \
         FROM generate_series(1, 100000) g; \
         ANALYZE words;",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_a_composite_key_is_copied_in_parallel_key_ranges() {
    copied_in_sampled_pieces(
        "CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b)); \
         INSERT INTO pairs SELECT (g * 7919) % 1000, md5(g::text), g FROM generate_series(1, 100000) g; \
         ANALYZE pairs;",
    )
    .await;
}

/// A source database holding the table `sql` creates, and the chunks of
/// its snapshot.
async fn snapshot_of(
    sql: &str,
    pipeline: &str,
) -> (
    ferry_testkit::PostgresServer,
    ferry_postgres::PostgresSource,
    Vec<ferry_core::TableRef>,
    Vec<ferry_core::SnapshotChunk>,
) {
    let (pg, url) = server_with_db("src");
    pg.psql_in("src", sql);
    let mut src = source(&url, pipeline).await;
    let tables = src.tables().await.unwrap();
    src.prepare().await.unwrap();
    let chunks = drain(src.snapshot(requests(&tables)).await.unwrap()).await;
    (pg, src, tables, chunks)
}

/// The keys of the chunks' rows, checking that each row comes once and
/// inside the range its chunk claims: a chunk whose rows were committed
/// without their keys being claimed would be copied again after a restart.
fn claimed_keys(chunks: &[ferry_core::SnapshotChunk]) -> BTreeSet<Vec<Value>> {
    let mut seen = BTreeSet::new();
    for c in chunks {
        for r in c.rows.values() {
            let key = c.table.key_of(r);
            assert!(c.range.contains(&key), "{key:?} outside {:?}", c.range);
            assert!(seen.insert(key), "a row came twice");
        }
    }
    seen
}

/// Creates one table of 100,000 rows with `sql`, copies it, and checks it
/// came in several pieces, each row once and inside the range its chunk
/// claims, and that a restart after the lower half copies exactly the
/// upper half.
async fn copied_in_sampled_pieces(sql: &str) {
    let (_pg, mut src, tables, chunks) = snapshot_of(sql, "pieces").await;
    let seen = claimed_keys(&chunks);
    assert_eq!(seen.len(), 100_000);
    // Several pieces (copied in parallel) whose claimed ranges follow one
    // another from the first key to the last.
    let mut claimed: Vec<&KeyRange> = chunks.iter().map(|c| &c.range).collect();
    // Several pieces cut at sampled keys: one stream would give full
    // chunks of 20,000 rows (all five of them here); pieces sized from a
    // sample hold other numbers of rows.
    assert!(claimed.len() >= 3, "{} chunks", claimed.len());
    assert!(
        chunks.iter().filter(|c| c.rows.len() != 20_000).count() >= 2,
        "the table was read as one stream, not in pieces: {:?}",
        chunks.iter().map(|c| c.rows.len()).collect::<Vec<_>>()
    );
    claimed.sort_by(|a, b| a.lower.cmp(&b.lower));
    assert_eq!(claimed[0].lower, None);
    assert_eq!(claimed[claimed.len() - 1].upper, None);
    for w in claimed.windows(2) {
        assert_eq!(w[0].upper, w[1].lower, "pieces must be consecutive");
    }

    // A restart that copied the lower half copies exactly the upper half.
    let middle = seen.iter().nth(49_999).unwrap().clone();
    let reader = src
        .snapshot(vec![SnapshotRequest {
            table: tables[0].clone(),
            skip: vec![KeyRange {
                lower: None,
                upper: Some(middle.clone()),
            }],
            encoding: None,
        }])
        .await
        .unwrap();
    let mut again = BTreeSet::new();
    for c in drain(reader).await {
        for r in c.rows.values() {
            let key = c.table.key_of(r);
            assert!(key > middle, "{key:?} was copied before");
            assert!(again.insert(key), "a row came twice");
        }
    }
    assert_eq!(again.len(), 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_key_in_a_linguistic_collation_is_read_in_few_pieces() {
    // The key's index orders by ICU rules, ferry by bytes: a key range
    // cannot be read through the index, so each piece is a full scan. The
    // table is cut into at most as many pieces as workers (2 here: too few
    // to cut, so one stream in ferry's order), not one per chunk.
    let (_pg, _src, _tables, chunks) = snapshot_of(
        "CREATE TABLE words (w text COLLATE \"en-x-icu\" PRIMARY KEY, n int); \
         INSERT INTO words SELECT md5(g::text) || CASE g % 3 WHEN 0 THEN 'Ä' WHEN 1 THEN 'a' ELSE 'B' END, g \
         FROM generate_series(1, 100000) g; \
         ANALYZE words;",
        "icu",
    )
    .await;
    assert_eq!(claimed_keys(&chunks).len(), 100_000);
    let sizes: Vec<usize> = chunks.iter().map(|c| c.rows.len()).collect();
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&n| n == 20_000),
        "read in sampled pieces (one full scan each): {sizes:?}"
    );
    for w in chunks.windows(2) {
        assert_eq!(
            w[0].range.upper, w[1].range.lower,
            "one stream in key order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_in_key_order_come_from_one_sorted_read_when_the_index_cannot_serve_it() {
    // `ferry verify` reads pages of rows after a key. With an ICU key each
    // page as its own query would be a full scan and a sort; the reader
    // keeps one sorted stream instead (one statement for the whole table).
    let pg = ferry_testkit::PostgresServer::builder()
        .conf("shared_preload_libraries = 'pg_stat_statements'")
        .start();
    let url = pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE EXTENSION pg_stat_statements; \
         CREATE TABLE words (w text COLLATE \"en-x-icu\" PRIMARY KEY, n int); \
         INSERT INTO words SELECT md5(g::text) || CASE g % 3 WHEN 0 THEN 'Ä' WHEN 1 THEN 'a' ELSE 'B' END, g \
         FROM generate_series(1, 20000) g; \
         CREATE TABLE ids (id int PRIMARY KEY); INSERT INTO ids SELECT generate_series(1, 20000);",
    );
    let mut src = source(&url, "reads").await;
    let tables = src.tables().await.unwrap();
    for name in ["words", "ids"] {
        let t = tables.iter().find(|t| t.name.name == name).unwrap();
        let mut after: Option<Vec<Value>> = None;
        let mut keys = Vec::new();
        loop {
            let rows = src.read_rows(t, after.as_deref(), 1000).await.unwrap();
            keys.extend(rows.iter().map(|r| t.key_of(r)));
            if rows.len() < 1000 {
                break;
            }
            after = Some(t.key_of(rows.last().unwrap()));
        }
        assert_eq!(keys.len(), 20_000, "{name}");
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "{name}: not in key order"
        );
    }
    let calls = |statement: &str, table: &str| {
        pg.psql_in(
            "src",
            &format!(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
                 WHERE query LIKE '{statement}%FROM \"public\".\"{table}\"%'"
            ),
        )
    };
    assert_eq!(
        calls("COPY (SELECT", "words"),
        "1",
        "one sorted read for the ICU key"
    );
    // A page is one statement (one round trip, not a COPY's two).
    assert_eq!(
        calls("SELECT", "ids"),
        "21",
        "a page per read where the index serves"
    );
}
