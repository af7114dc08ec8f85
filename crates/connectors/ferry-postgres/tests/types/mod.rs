//! Every supported type round-trips PostgreSQL → ferry Value → PostgreSQL,
//! through the snapshot (binary COPY both ways) and through change
//! capture (binary pgoutput, applied as upserts).

use ferry_core::{ChunkRows, ColumnType, Sink, Source, Step, TableOps};
use ferry_postgres::{PostgresSink, PostgresSinkConfig};

use crate::common::{drain, next_commit, requests, source};

const SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
    CREATE TABLE every (
        id int PRIMARY KEY, i2 smallint, i8 bigint, n numeric(12,2), nu numeric,
        f4 real, f8 double precision, t text, vc varchar(10), c char(3), b bytea,
        bo boolean, d date, tm time, ts timestamp, tstz timestamptz, iv interval,
        u uuid, j json, jb jsonb, ai int[], at text[], e mood, ip inet, cd cidr,
        dm posint, ae mood[]
    );";

const ROWS: &str = "
    INSERT INTO every VALUES
    (1, -32768, 9223372036854775807, 1234567890.12, 3.14159265358979323846264338327950288,
     1.5, 0.1, 'héllo ☃', 'varchar', 'ab', '\\x00ff10', true, '2024-02-29', '23:59:59.999999',
     '1999-12-31 23:59:59.5', '2024-03-01 12:00:00.123456+02', '1 year 2 mons -3 days 04:05:06.000007',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"b\": 1,  \"a\": [1, 2]}', '{\"b\": 1, \"a\": [1, 2]}',
     '{1,NULL,3}', '{\"x y\",\"\",NULL}', 'happy', '192.168.1.5/24', '10.0.0.0/8', 42, '{sad,happy}'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, 0, -1, 'NaN', '-0.000123', 'Infinity', 'NaN', '', '', '', '\\x', false, 'infinity', '00:00',
     '-infinity', 'infinity', '0', '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}',
     'sad', '::1', '2001:db8::/32', 1, '{}'),
    (4, 1, 1, '-0.01', '1e-20', '-Infinity', '-1.7976931348623157e308', 'x', 'y', 'z', '\\xdeadbeef',
     NULL, '0001-01-01', '12:00', '1970-01-01', '1970-01-01 00:00:00+00', '-178000000 years',
     NULL, 'null', '\"s\"', '{-2147483648}', '{NULL}', NULL, '::ffff:1.2.3.4', '0.0.0.0/0', 2147483647, NULL);";

/// A sink on `url` that has created (or checked) `tables`.
async fn sink_with(url: &str, pipeline: &str, tables: &[ferry_core::TableRef]) -> PostgresSink {
    let sink = PostgresSink::connect(PostgresSinkConfig {
        url: url.to_owned(),
        pipeline: pipeline.into(),
    })
    .await
    .unwrap();
    sink.ensure_tables(tables).await.unwrap();
    sink
}

fn render(pg: &ferry_testkit::PostgresServer, db: &str) -> String {
    pg.psql_in(
        db,
        "SET extra_float_digits = 3; SELECT e::text FROM every e ORDER BY id",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_type_round_trips_through_snapshot_and_stream() {
    let pg = ferry_testkit::PostgresServer::start();
    let src_url = pg.create_database("src");
    let dst_url = pg.create_database("dst");
    pg.psql_in("src", SCHEMA);
    pg.psql_in("src", ROWS);
    let mut src = source(&src_url, "types").await;
    let tables = src.tables().await.unwrap();
    let every = tables[0].clone();
    let ty = |name: &str| every.columns[every.column_index(name).unwrap()].ty.clone();
    assert_eq!(
        ty("n"),
        ColumnType::Decimal {
            precision: Some(12),
            scale: Some(2)
        }
    );
    assert_eq!(
        ty("c"),
        ColumnType::Text {
            max_len: Some(3),
            fixed: true
        }
    );
    assert_eq!(
        ty("e"),
        ColumnType::Text {
            max_len: None,
            fixed: false
        }
    );
    assert_eq!(ty("dm"), ColumnType::Int32);
    assert_eq!(
        ty("ae"),
        ColumnType::Array(Box::new(ColumnType::Text {
            max_len: None,
            fixed: false
        }))
    );
    src.prepare().await.unwrap();
    let reader = src.snapshot(requests(&tables)).await.unwrap();
    let pos = reader.position().clone();
    let chunks = drain(reader).await;

    // Snapshot → sink (structure copy + binary COPY).
    let sink = sink_with(&dst_url, "types", &tables).await;
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    for c in &chunks {
        w.load(&c.table, c.rows.values()).await.unwrap();
    }
    w.commit(&[]).await.unwrap();
    let expected = render(&pg, "src");
    assert_eq!(render(&pg, "dst"), expected);

    // The same rows through change capture, applied as upserts.
    pg.psql_in("src", "DELETE FROM every");
    pg.psql_in("dst", "DELETE FROM every");
    src.start_stream(Some(&pos), &[]).await.unwrap();
    let _deletes = next_commit(&mut src).await;
    pg.psql_in("src", ROWS);
    let t = next_commit(&mut src).await;
    let mut ops = TableOps::new(every.clone());
    for c in &t.changes {
        let ferry_core::Change::Insert { row, .. } = c else {
            panic!("{c:?}")
        };
        ops.upserts.push(row.clone());
    }
    w.begin().await.unwrap();
    w.apply(&[Step::Rows(vec![ops])]).await.unwrap();
    w.commit(&[]).await.unwrap();
    assert_eq!(render(&pg, "dst"), expected);
    // Enums and domains keep their types (created on the target), as do
    // addresses and json/jsonb.
    assert_eq!(
        pg.psql_in("dst", "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'every'::regclass AND attname IN ('e', 'ip', 'dm', 'ae', 'j', 'jb') ORDER BY attnum"),
        "json\njsonb\nmood\ninet\nposint\nmood[]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enums_and_domains_are_created_on_the_target() {
    let pg = ferry_testkit::PostgresServer::start();
    let src_url = pg.create_database("src");
    let dst_url = pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE SCHEMA app;
         CREATE TYPE app.status AS ENUM ('new', 'paid', 'shipped');
         CREATE DOMAIN app.code AS varchar(8) NOT NULL CONSTRAINT upper CHECK (VALUE ~ '^[A-Z]+$');
         CREATE DOMAIN app.open_status AS app.status CHECK (VALUE <> 'shipped');
         CREATE TABLE app.orders (id int PRIMARY KEY, s app.status, c app.code,
                                  o app.open_status, h app.status[]);
         INSERT INTO app.orders VALUES (1, 'new', 'AB', 'paid', '{new,shipped}'),
                                       (2, 'shipped', 'XYZ', NULL, NULL);",
    );
    // The target already has the enum, with one label only.
    pg.psql_in(
        "dst",
        "CREATE SCHEMA app; CREATE TYPE app.status AS ENUM ('paid')",
    );
    let mut src = source(&src_url, "named").await;
    let tables = src.tables().await.unwrap();
    let orders = tables[0].clone();
    let col = |n: &str| orders.columns[orders.column_index(n).unwrap()].clone();
    assert!(matches!(
        col("s").user_type.unwrap().def,
        ferry_core::UserTypeDef::Enum(labels) if labels == ["new", "paid", "shipped"]
    ));
    assert_eq!(
        col("h").user_type,
        col("s").user_type,
        "an array names its element"
    );
    let sink = sink_with(&dst_url, "named", &tables).await;
    assert_eq!(
        pg.psql_in(
            "dst",
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = 'app.orders'::regclass AND attnum > 0 ORDER BY attnum"
        ),
        "integer\napp.status\napp.code\napp.open_status\napp.status[]"
    );
    // Missing labels were added in the source's order.
    assert_eq!(
        pg.psql_in("dst", "SELECT enum_range(NULL::app.status)::text"),
        "{new,paid,shipped}"
    );
    // The domains kept their constraints.
    assert_eq!(
        pg.psql_in(
            "dst",
            "SELECT t.typname, t.typnotnull, pg_get_constraintdef(c.oid) FROM pg_constraint c \
             JOIN pg_type t ON t.oid = c.contypid \
             WHERE c.contype = 'c' AND t.typnamespace = 'app'::regnamespace ORDER BY 1"
        ),
        "code|t|CHECK (((VALUE)::text ~ '^[A-Z]+$'::text))\n\
         open_status|f|CHECK ((VALUE <> 'shipped'::app.status))"
    );

    src.prepare().await.unwrap();
    let chunks = drain(src.snapshot(requests(&tables)).await.unwrap()).await;
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    for c in &chunks {
        w.load(&c.table, c.rows.values()).await.unwrap();
    }
    w.commit(&[]).await.unwrap();
    let all = "SELECT o::text FROM app.orders o ORDER BY id";
    assert_eq!(pg.psql_in("dst", all), pg.psql_in("src", all));

    // A label added to the source's enum later is not on the target: the
    // row stops the pipeline with a data error that says how to add it.
    let mut ops = TableOps::new(orders.clone());
    ops.upserts.push(vec![
        ferry_core::Value::Int(3),
        ferry_core::Value::Text("returned".into()),
        ferry_core::Value::Text("Q".into()),
        ferry_core::Value::Null,
        ferry_core::Value::Null,
    ]);
    w.begin().await.unwrap();
    let err = w.apply(&[Step::Rows(vec![ops])]).await.unwrap_err();
    w.rollback().await.unwrap();
    assert_eq!(
        err.class(),
        ferry_core::ErrorClass::Data,
        "{}",
        err.report()
    );
    assert!(
        err.fix()
            .is_some_and(|f| f.contains("ALTER TYPE app.status ADD VALUE 'returned'")),
        "{}",
        err.report()
    );

    // A target type of the same name but another kind is a clear error.
    let other_url = pg.create_database("other");
    pg.psql_in(
        "other",
        "CREATE SCHEMA app; CREATE TABLE app.status (x int)",
    );
    let other = PostgresSink::connect(PostgresSinkConfig {
        url: other_url,
        pipeline: "named".into(),
    })
    .await
    .unwrap();
    let err = other.ensure_tables(&tables).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("app.status") && text.contains("not an enum"),
        "{text}"
    );
    assert!(
        err.fix().is_some_and(|f| f.contains("drop or rename")),
        "{err:?}"
    );
}

/// The built-in types of `every`, in a table of their own.
const PLAIN: &str = "
    CREATE TABLE plain AS SELECT id, i2, i8, n, nu, f4, f8, t, vc, c, b, bo, d, tm, ts, tstz, iv,
        u, j, jb, ai, at, ip, cd FROM every;
    ALTER TABLE plain ADD PRIMARY KEY (id);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_types_pass_through_undecoded_from_postgres_to_postgres() {
    let pg = ferry_testkit::PostgresServer::start();
    let src_url = pg.create_database("src");
    let dst_url = pg.create_database("dst");
    pg.psql_in("src", SCHEMA);
    pg.psql_in("src", ROWS);
    pg.psql_in("src", PLAIN);
    // Enough rows for several chunks (40,000 encoded rows each).
    pg.psql_in(
        "src",
        "INSERT INTO plain (id, t, n, ai) SELECT g, 'row ' || g, g / 100.0, ARRAY[g] \
         FROM generate_series(10, 150009) g; ANALYZE plain",
    );
    let mut src = source(&src_url, "passthrough").await;
    let tables = src.tables().await.unwrap();
    let by_name = |n: &str| tables.iter().find(|t| t.name.name == n).unwrap().clone();
    let (every, plain) = (by_name("every"), by_name("plain"));
    let encoding = src
        .row_encoding(&plain)
        .expect("built-in types pass through");
    assert!(
        encoding.starts_with("postgresql-15-binary-copy("),
        "{encoding}"
    );
    assert_eq!(
        src.row_encoding(&every),
        None,
        "enums and domains are decoded"
    );

    let sink = sink_with(&dst_url, "passthrough", &tables).await;
    assert_eq!(
        sink.row_encoding(&plain).await.unwrap(),
        Some(encoding.clone())
    );
    // `every` has enums and domains on the target too: decoded there.
    assert_eq!(sink.row_encoding(&every).await.unwrap(), None);

    src.prepare().await.unwrap();
    let mut reqs = requests(std::slice::from_ref(&plain));
    reqs[0].encoding = Some(encoding.clone());
    let chunks = drain(src.snapshot(reqs).await.unwrap()).await;
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let mut w = sink.writer().await.unwrap();
    let mut rows = 0;
    for c in chunks {
        rows += c.rows.len();
        let ChunkRows::Encoded(e) = c.rows else {
            panic!("asked for encoded rows, got values")
        };
        assert_eq!(e.encoding, encoding);
        w.begin().await.unwrap();
        w.load_encoded(&c.table, e).await.unwrap();
        w.commit(&[]).await.unwrap();
    }
    assert_eq!(rows, 150_004);
    let all = "SET extra_float_digits = 3; SELECT p::text FROM plain p ORDER BY id";
    assert_eq!(pg.psql_in("dst", all), pg.psql_in("src", all));

    // Rows in an encoding the target table does not have are refused.
    let mut reqs = requests(std::slice::from_ref(&plain));
    reqs[0].encoding = Some(encoding.clone());
    let chunk = drain(src.snapshot(reqs).await.unwrap()).await.remove(0);
    let ChunkRows::Encoded(mut e) = chunk.rows else {
        panic!("values")
    };
    e.encoding = e.encoding.replace("postgresql-15", "postgresql-99");
    w.begin().await.unwrap();
    let err = w.load_encoded(&chunk.table, e).await.unwrap_err();
    assert!(err.to_string().contains("column types"), "{err}");
    w.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_column_of_another_type_makes_the_rows_decoded() {
    let pg = ferry_testkit::PostgresServer::start();
    let src_url = pg.create_database("src");
    let dst_url = pg.create_database("dst");
    pg.psql_in("src", "CREATE TABLE t (id int PRIMARY KEY, v int)");
    pg.psql_in("dst", "CREATE TABLE t (id int PRIMARY KEY, v bigint)");
    let mut src = source(&src_url, "widened").await;
    let tables = src.tables().await.unwrap();
    let sink = sink_with(&dst_url, "widened", &tables).await;
    let from_source = src.row_encoding(&tables[0]);
    assert!(from_source.is_some());
    let at_target = sink.row_encoding(&tables[0]).await.unwrap();
    assert!(at_target.is_some());
    assert_ne!(at_target, from_source, "int into bigint must be decoded");
}

const OTHER_SCHEMA: &str = "
    CREATE EXTENSION hstore;
    CREATE EXTENSION citext;
    CREATE TYPE complex AS (r double precision, i double precision);
    CREATE TYPE floatrange AS RANGE (subtype = float8);
    CREATE TABLE odd (
        id int PRIMARY KEY, x xml, r int4range, mr int4multirange, tr tstzrange,
        tv tsvector, tq tsquery, pt point, bx box, pg polygon, ci circle, ln line,
        ls lseg, pa path, m money, lsn pg_lsn, b bit(8), vb varbit, mac macaddr,
        mac8 macaddr8, tz timetz, cx complex, fr floatrange, fmr floatmultirange,
        h hstore, ct citext, pts point[], cxs complex[]
    );";

const OTHER_ROWS: &str = "
    INSERT INTO odd VALUES
    (1, '<a b=\"1\">t&amp;ü</a>', '[1,5)', '{[1,3),[7,9)}', '[2024-01-01 00:00+02,infinity)',
     'a fat cat sat', 'fat & !rat', '(1.5,-2)', '((0,0),(1,1))', '((0,0),(1,0),(0,1))',
     '<(1,1),2>', '{1,-1,0}', '[(0,0),(1,1)]', '[(0,0),(1,1),(2,0)]',
     '-92233720368547758.08', '16/B374D848', B'10101010', B'1', '08:00:2b:01:02:03',
     '08:00:2b:01:02:03:04:05', '23:59:59.999999+14', '(1.5,-0)', '[1.5,2.5]', '{[1,2],[3,4)}',
     'a=>1, \"b c\"=>NULL', 'MiXeD Case', '{\"(1,2)\",NULL}', '{\"(1,2)\",\"(,)\"}'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (3, '', 'empty', '{}', '(,)', '', 'x', '(0,0)', '((0,0),(0,0))', '((0,0))', '<(0,0),0>',
     '{0,1,0}', '[(0,0),(0,0)]', '((0,0))', '92233720368547758.07', '0/0', B'00000000', B'',
     '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', '00:00-15:59', '(,)', '(,)', '{}', '', '',
     '{}', '{}'),
    (4, (SELECT xmlelement(name big, repeat('x', 20000))), '[-2147483648,2147483647)', NULL,
     '[-infinity,infinity]', (SELECT string_agg('w' || g, ' ')::tsvector FROM generate_series(1, 3000) g),
     NULL, '(1e300,-1e-300)', NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'FFFFFFFF/FFFFFFFF',
     B'11111111', (SELECT string_agg('1', '')::varbit FROM generate_series(1, 70000)), NULL, NULL,
     '00:00:00.000001-00:01', '(NaN,Infinity)', '[-Infinity,Infinity]', NULL,
     (SELECT hstore(array_agg('k' || g), array_agg(repeat('v', 10))) FROM generate_series(1, 2000) g),
     repeat('Ü', 10000), NULL, NULL);";

fn render_odd(pg: &ferry_testkit::PostgresServer, db: &str) -> String {
    pg.psql_in(
        db,
        "SET extra_float_digits = 3; SELECT o::text FROM odd o ORDER BY id",
    )
}

/// Types ferry has no codec for (built-in, composite, range, extension)
/// travel PostgreSQL → PostgreSQL by their text form: the target gets the
/// same column types and the same values, by the server's own output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_without_a_codec_travel_as_text_through_snapshot_and_stream() {
    let pg = ferry_testkit::PostgresServer::start();
    let src_url = pg.create_database("src");
    let dst_url = pg.create_database("dst");
    pg.psql_in("src", OTHER_SCHEMA);
    pg.psql_in("src", OTHER_ROWS);
    let mut src = source(&src_url, "odd").await;
    let tables = src.tables().await.unwrap();
    let odd = tables[0].clone();
    let ty = |name: &str| odd.columns[odd.column_index(name).unwrap()].ty.clone();
    for (c, name) in [
        ("x", "xml"),
        ("b", "bit(8)"),
        ("h", "hstore"),
        ("cx", "complex"),
        ("pts", "point[]"),
    ] {
        assert_eq!(
            ty(c),
            ColumnType::Other {
                type_name: name.into()
            }
        );
    }
    src.prepare().await.unwrap();
    let reader = src.snapshot(requests(&tables)).await.unwrap();
    let pos = reader.position().clone();
    let chunks = drain(reader).await;

    // Structure copy creates the types and extensions, then the snapshot
    // loads through a staging table.
    let sink = sink_with(&dst_url, "odd", &tables).await;
    let mut w = sink.writer().await.unwrap();
    w.begin().await.unwrap();
    for c in &chunks {
        w.load(&c.table, c.rows.values()).await.unwrap();
    }
    w.commit(&[]).await.unwrap();
    let column_types = "SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
                        FROM pg_attribute WHERE attrelid = 'odd'::regclass AND attnum > 0";
    assert_eq!(
        pg.psql_in("dst", column_types),
        pg.psql_in("src", column_types)
    );
    let expected = render_odd(&pg, "src");
    same_rows(&render_odd(&pg, "dst"), &expected);

    // The same rows through change capture (binary pgoutput), applied as
    // upserts; then many rows at once (staged upsert), updates and
    // deletes.
    pg.psql_in("src", "DELETE FROM odd");
    pg.psql_in("dst", "DELETE FROM odd");
    src.start_stream(Some(&pos), &[]).await.unwrap();
    let _deletes = next_commit(&mut src).await;
    let mut apply = async |sql: &str| {
        pg.psql_in("src", sql);
        let t = next_commit(&mut src).await;
        let mut ops = TableOps::new(odd.clone());
        for c in &t.changes {
            match c {
                ferry_core::Change::Insert { row, .. } => ops.upserts.push(row.clone()),
                ferry_core::Change::Update { after, .. } => ops.upserts.push(after.clone()),
                ferry_core::Change::Delete { before, .. } => ops.deletes.push(before.clone()),
                other => panic!("{other:?}"),
            }
        }
        w.begin().await.unwrap();
        w.apply(&[Step::Rows(vec![ops])]).await.unwrap();
        w.commit(&[]).await.unwrap();
    };
    apply(OTHER_ROWS).await;
    same_rows(&render_odd(&pg, "dst"), &expected);
    apply(
        "INSERT INTO odd SELECT g, x, r, mr, tr, tv, tq, pt, bx, pg, ci, ln, ls, pa, m, lsn, b, \
         vb, mac, mac8, tz, cx, fr, fmr, h, ct, pts, cxs FROM odd, generate_series(10, 700) g \
         WHERE id = 1",
    )
    .await;
    apply("UPDATE odd SET h = h || 'z=>9'::hstore, pt = point(7, 8), x = '<b/>' WHERE id % 2 = 0")
        .await;
    apply("DELETE FROM odd WHERE id BETWEEN 600 AND 650").await;
    same_rows(&render_odd(&pg, "dst"), &render_odd(&pg, "src"));
}

/// Asserts two renderings are equal, naming the first row that differs
/// (abbreviated: rows may be large).
fn same_rows(got: &str, want: &str) {
    let short = |s: &str| s.chars().take(300).collect::<String>();
    for (n, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert!(
            g == w,
            "row {n} differs:\n got {}\nwant {}",
            short(g),
            short(w)
        );
    }
    assert_eq!(got.lines().count(), want.lines().count(), "row counts");
}

/// A column nothing reads (excluded, no filter on it) is not read: the
/// snapshot selects NULL in its place and the stream does not convert it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_column_is_never_read() {
    let pg = ferry_testkit::PostgresServer::start();
    let src_url = pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, x xml, big text, p point);
         INSERT INTO t VALUES (1, '<a/>', repeat('b', 10000), '(1,2)');",
    );
    let mut config = crate::common::source_config(&src_url, "unread");
    config.selection.unread_columns = vec!["t.x".into(), "t.big".into()];
    let mut src = ferry_postgres::PostgresSource::connect(config)
        .await
        .unwrap();
    let tables = src.tables().await.unwrap();
    src.prepare().await.unwrap();
    let reader = src.snapshot(requests(&tables)).await.unwrap();
    let pos = reader.position().clone();
    let chunks = drain(reader).await;
    let rows: Vec<_> = chunks
        .iter()
        .flat_map(|c| c.rows.values().to_vec())
        .collect();
    use ferry_core::Value;
    assert_eq!(
        rows,
        vec![vec![
            Value::Int(1),
            Value::Null,
            Value::Null,
            Value::Text("(1,2)".into())
        ]]
    );
    src.start_stream(Some(&pos), &[]).await.unwrap();
    pg.psql_in("src", "INSERT INTO t VALUES (2, '<b/>', 'c', '(3,4)')");
    let t = next_commit(&mut src).await;
    let ferry_core::Change::Insert { row, .. } = &t.changes[0] else {
        panic!("{:?}", t.changes)
    };
    assert_eq!(row[1], Value::Null);
    assert_eq!(row[3], Value::Text("(3,4)".into()));
}

/// `hashtextextended` on the server and ferry's `hash64` agree for every
/// length around the 12-byte blocks, multi-byte text and seeds: the
/// canonical digest computed in SQL equals the one computed in Rust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_hashes_text_as_ferry_does() {
    use ferry_core::canonical::hash64;
    let pg = ferry_testkit::PostgresServer::start();
    let rows = pg.psql_in(
        "postgres",
        "SELECT s, hashtextextended(s, 0), hashtextextended(s, 42), \
                hashtextextended(s, -8070450532247928832) \
         FROM (SELECT left(repeat('ab☃é\t;', 10), n) AS s FROM generate_series(0, 45) n) t",
    );
    let mut seen = 0;
    for line in rows.lines() {
        let f: Vec<&str> = line.split('|').collect();
        let (s, hashes) = (f[0], &f[1..]);
        for (seed, want) in [0u64, 42, 0x9000_0000_0000_0000].iter().zip(hashes) {
            assert_eq!(
                hash64(s.as_bytes(), *seed) as i64,
                want.parse::<i64>().unwrap(),
                "text {s:?}, seed {seed}"
            );
        }
        seen += 1;
    }
    assert_eq!(seen, 46);
}

/// Every type with a canonical encoding digests in SQL exactly as ferry
/// digests the values it reads: a SQLite (or any other) reader, which
/// hashes the values it reads, gets the same digest for the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_digests_in_sql_as_ferry_digests_its_values() {
    use ferry_core::canonical::{CANONICAL_DIGEST, HashSum, row_hash};
    use ferry_core::{KeyRange, TableReader};
    let pg = ferry_testkit::PostgresServer::start();
    let src_url = pg.create_database("src");
    pg.psql_in("src", SCHEMA);
    pg.psql_in("src", ROWS);
    // Every column but the arrays (which have no canonical encoding), and
    // more edge values.
    pg.psql_in(
        "src",
        "CREATE TABLE scalars AS SELECT id, i2, i8, n, nu, f4, f8, t, vc, c, b, bo, d, tm, ts, \
             tstz, iv, u, j, jb, e, ip, cd, dm FROM every;
         ALTER TABLE scalars ADD PRIMARY KEY (id);
         INSERT INTO scalars (id, f8, d, ts, tstz, iv, tm, c, t, nu) VALUES
          (5, '-0', '-infinity', 'infinity', '-infinity', '-1 mons 2 days -00:00:00.000003',
           '24:00:00', 'a', E'N;S1:x', 'Infinity'),
          (6, 'Infinity', '0044-03-15 BC', '0044-03-15 12:00:00.000001 BC',
           '1999-12-31 23:59:59.999999-12:00', '-178000000 years', '00:00:00.000001', '', 'ünï', -0.5);",
    );
    let mut src = source(&src_url, "canonical").await;
    let tables = src.tables().await.unwrap();
    let scalars = tables
        .iter()
        .find(|t| t.name.name == "scalars")
        .unwrap()
        .clone();
    assert!(src.row_digests().contains(&CANONICAL_DIGEST));
    let in_sql = src
        .digest_range(&scalars, &KeyRange::all(), None, CANONICAL_DIGEST)
        .await
        .unwrap()
        .expect("every column of scalars has a canonical encoding");
    let rows = src.read_rows(&scalars, None, 100).await.unwrap();
    let (mut sum, mut buf) = (HashSum::default(), Vec::new());
    for row in &rows {
        let h = row_hash(row, &mut buf).unwrap();
        sum.add(h);
        // Row by row, so a failure names the row and its encoding.
        let one = KeyRange {
            lower: Some(vec![ferry_core::Value::Int(row_id(row) - 1)]),
            upper: Some(vec![row[0].clone()]),
        };
        let d = src
            .digest_range(&scalars, &one, None, CANONICAL_DIGEST)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            d.sum,
            h.to_string(),
            "row {}: ferry encodes it as {}",
            row_id(row),
            String::from_utf8_lossy(&buf)
        );
    }
    assert_eq!((in_sql.rows, in_sql.sum), (6, sum.to_string()));
    // A first range of three rows ends at key 3, as read.
    let first = src
        .digest_range(&scalars, &KeyRange::all(), Some(3), CANONICAL_DIGEST)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.last, Some(vec![ferry_core::Value::Int(3)]));
    // A table with an array column has none.
    let every = tables.iter().find(|t| t.name.name == "every").unwrap();
    let none = src
        .digest_range(every, &KeyRange::all(), None, CANONICAL_DIGEST)
        .await
        .unwrap();
    assert!(none.is_none());
}

fn row_id(row: &[ferry_core::Value]) -> i64 {
    match row[0] {
        ferry_core::Value::Int(i) => i,
        ref v => panic!("key {v:?}"),
    }
}
