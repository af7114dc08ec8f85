//! Type fidelity on the real binary, one test per direction and target
//! (created by ferry, or created beforehand by the test): every column of
//! every row is compared by the target's own output function (PostgreSQL
//! `col::text`, SQLite `typeof(c)` and `quote(c)`) after the snapshot and
//! again after the same edge values flowed through the change stream as
//! inserts and updates. Where docs/types.md documents a mapping as lossy,
//! the documented result is asserted instead of equality.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, ferry, open, spawn_run, terminate, text};

const WAIT: Duration = Duration::from_secs(90);

/// A table of the test: its name and `(column, declared type)` pairs, the
/// first column being the integer key `id`.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, &'static str)],
}

impl Table {
    fn create(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|(c, t)| format!("{c} {t}"))
            .collect();
        format!(
            "CREATE TABLE {} ({}, PRIMARY KEY (id));",
            self.name,
            cols.join(", ")
        )
    }

    fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|(c, _)| *c).collect()
    }

    /// The rows again under new keys (`id + shift`): the same edge values
    /// as inserts in the stream.
    fn reinsert(&self, shift: i64) -> String {
        let names = self.names();
        format!(
            "INSERT INTO {t} ({all}) SELECT id + {shift}, {rest} FROM {t} WHERE id < {shift};",
            t = self.name,
            all = names.join(", "),
            rest = names[1..].join(", ")
        )
    }

    /// Every non-key column of row `to` set to the values of row `from`:
    /// the same edge values as updates in the stream.
    fn copy_row(&self, from: i64, to: i64) -> String {
        let names = &self.names()[1..];
        let set: Vec<String> = names.iter().map(|c| format!("{c} = s.{c}")).collect();
        format!(
            "UPDATE {t} SET {set} FROM {t} s WHERE s.id = {from} AND {t}.id = {to};",
            t = self.name,
            set = set.join(", ")
        )
    }
}

// ------------------------------------------------------------ PostgreSQL

/// Built-in types ferry has a codec for.
const PG_EDGE: Table = Table {
    name: "edge",
    columns: &[
        ("id", "int"),
        ("i2", "smallint"),
        ("i4", "integer"),
        ("i8", "bigint"),
        ("f4", "real"),
        ("f8", "double precision"),
        ("n", "numeric"),
        ("n2", "numeric(12,3)"),
        ("t", "text"),
        ("vc", "varchar(5)"),
        ("c", "char(3)"),
        ("b", "bytea"),
        ("bo", "boolean"),
        ("d", "date"),
        ("tm", "time"),
        ("ts", "timestamp"),
        ("tstz", "timestamptz"),
        ("iv", "interval"),
        ("u", "uuid"),
        ("j", "json"),
        ("jb", "jsonb"),
        ("ai", "int[]"),
        ("at", "text[]"),
    ],
};

const PG_EDGE_ROWS: &str = "
INSERT INTO edge VALUES
 (1, -32768, -2147483648, -9223372036854775808, 'NaN', '-0', repeat('9', 1000)::numeric,
  -999999999.999, '', '', '', '\\x', false, '4713-01-01 BC', '00:00', '-infinity', 'infinity',
  '-178000000 years', '00000000-0000-0000-0000-000000000000', '{\"a\":  1}',
  '12345678901234567890', '{1,NULL,3}', '{\"\",NULL}'),
 (2, 32767, 2147483647, 9223372036854775807, 'Infinity', '-Infinity', 'NaN', 0.001,
  repeat('x', 20000), 'ab', 'a', decode(repeat('00ff', 10000), 'hex'), true, 'infinity',
  '24:00:00', 'infinity', '-infinity', '1 mon -1 days 00:00:00.000001',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', 'null', '{\"k\": [1e400, -0.0, \"\\u00e9\"]}', '{}',
  '{\"x,y\",\"\\\"\"}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, -1, 1, '-0', '4.9e-324', '-0.000000000000000000001', 0, 'héllo ☃', 'ünï', 'é ',
  '\\x00', true, '0001-12-31 BC', '23:59:59.999999', '0044-03-15 12:00:00.000001 BC',
  '1999-12-31 23:59:59.999999-12:00', '-1 days +23:59:59.999999',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '[]', '[1.10, 1e-7]', '{-2147483648,2147483647}',
  '{NULL}'),
 (5, 1, 1, 1, '3.4028235e38', '1.7976931348623157e308', '1e-16383', 123456789.5,
  E'tab\\there\\nnewline', 'a''b', 'x''y', '\\xdeadbeef', false, '1970-01-01', '12:00',
  '2000-02-29 00:00:00', '2024-06-30 23:59:60+14', '00:00:00', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12',
  '\"\"', '\"\"', '{0}', '{\"\"}');";

/// Types ferry carries by their text form (item 1), arrays with lower
/// bounds other than 1 and arrays of several dimensions.
const PG_ODD_TYPES: &str = "
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE complex AS (r double precision, i double precision);
CREATE TYPE floatrange AS RANGE (subtype = float8);";

const PG_ODD: Table = Table {
    name: "odd",
    columns: &[
        ("id", "int"),
        ("x", "xml"),
        ("r", "int4range"),
        ("mr", "int4multirange"),
        ("tv", "tsvector"),
        ("tq", "tsquery"),
        ("pt", "point"),
        ("bx", "box"),
        ("pg", "polygon"),
        ("m", "money"),
        ("lsn", "pg_lsn"),
        ("bt", "bit(8)"),
        ("vb", "varbit"),
        ("mac8", "macaddr8"),
        ("tz", "timetz"),
        ("cx", "complex"),
        ("fr", "floatrange"),
        ("h", "hstore"),
        ("ct", "citext"),
        ("pts", "point[]"),
        ("lb", "int[]"),
        ("md", "text[]"),
    ],
};

const PG_ODD_ROWS: &str = "
INSERT INTO odd VALUES
 (1, '<a b=\"1\">t&amp;ü</a>', '[1,5)', '{[1,3),[7,9)}', 'a fat cat', 'fat & !rat', '(1.5,-2)',
  '((0,0),(1,1))', '((0,0),(1,0),(0,1))', '-92233720368547758.08', '16/B374D848', B'10101010',
  B'1', '08:00:2b:01:02:03:04:05', '23:59:59.999999+14', '(1.5,-0)', '[-Infinity,Infinity]',
  'a=>1, \"b c\"=>NULL', 'MiXeD', '{\"(1,2)\",NULL}', '[0:2]={1,NULL,3}',
  '{{a,\"b c\"},{NULL,\"\"}}'),
 (2, '', 'empty', '{}', '', 'x', '(0,0)', '((0,0),(0,0))', '((0,0))', '92233720368547758.07',
  '0/0', B'00000000', B'', '00:00:00:00:00:00:00:00', '00:00-15:59', '(,)', '(,)', '', '',
  '{}', '[-5:-5]={7}', '[2:3][0:0]={{x},{\"\\\"q\"}}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL),
 (4, (SELECT xmlelement(name big, repeat('x', 20000))), '[-2147483648,2147483647)', NULL,
  (SELECT string_agg('w' || g, ' ')::tsvector FROM generate_series(1, 3000) g), NULL,
  '(1e300,-1e-300)', NULL, NULL, NULL, 'FFFFFFFF/FFFFFFFF', B'11111111',
  (SELECT string_agg('1', '')::varbit FROM generate_series(1, 70000)), NULL,
  '00:00:00.000001-00:01', '(NaN,Infinity)', NULL,
  (SELECT hstore(array_agg('k' || g), array_agg(repeat('v', 10))) FROM generate_series(1, 2000) g),
  repeat('Ü', 10000), NULL, '{}', '{{{1}},{{2}}}');";

/// A key of a type carried as text (`citext`: compared by the type's own
/// equality on the target, ordered by text in `ferry verify`), and a table
/// without a key whose rows are found by every column, `point` (no `=`)
/// and `hstore` among them.
const PG_OTHER_KEYS: &str = "
CREATE TABLE ck (k citext PRIMARY KEY, v int);
CREATE TABLE kl (p point, h hstore, n int);
ALTER TABLE kl REPLICA IDENTITY FULL;";

const PG_OTHER_KEY_ROWS: &str = "
INSERT INTO ck VALUES ('a', 1), ('B', 2), ('c', 3), ('É', 4), ('', 5);
INSERT INTO kl VALUES ('(1,1)', 'a=>1', 1), ('(1,1)', 'a=>1', 1), ('(2,2)', NULL, 2), (NULL, '', 3);";

const PG_OTHER_KEY_CHANGES: &str = "
UPDATE ck SET v = v + 10 WHERE k = 'b';
UPDATE ck SET k = 'zz' WHERE k = 'A';
DELETE FROM ck WHERE k = 'C';
INSERT INTO ck VALUES ('Ñ', 9);
UPDATE kl SET n = n + 10 WHERE ctid = (SELECT min(ctid) FROM kl WHERE p ~= '(1,1)');
UPDATE kl SET h = h || 'b=>2'::hstore WHERE n = 2;
DELETE FROM kl WHERE n = 3;
INSERT INTO kl VALUES ('(5,5)', 'x=>y', 5);";

const PG_OTHER_KEY_SQL: &str = "
SELECT k::text || '|' || v FROM ck ORDER BY k::text COLLATE \"C\";
SELECT coalesce(p::text, '-') || '|' || coalesce(h::text, '-') || '|' || n FROM kl ORDER BY 1";

/// Each row of `table` in `db`, every column by its text output, quoted
/// (`NULL` for NULL), in key order.
fn pg_render(pg: &PostgresServer, db: &str, table: &Table) -> Result<String, String> {
    let cols: Vec<String> = table
        .names()
        .iter()
        .map(|c| format!("coalesce(quote_literal({c}::text), 'NULL')"))
        .collect();
    pg.try_psql_in(
        db,
        &format!(
            "SET extra_float_digits = 3; SELECT concat_ws(' | ', {}) FROM {} ORDER BY id",
            cols.join(", "),
            table.name
        ),
    )
}

/// Waits until `got()` equals `want()`, naming the first row that differs.
fn converge(what: &str, want: impl Fn() -> String, got: impl Fn() -> Result<String, String>) {
    eventually_blocking(what, WAIT, || -> Result<(), String> {
        let (want, got) = (want(), got()?);
        if want == got {
            return Ok(());
        }
        let short = |s: &str| s.chars().take(400).collect::<String>();
        for (n, (w, g)) in want.lines().zip(got.lines()).enumerate() {
            if w != g {
                return Err(format!("row {n}:\n want {}\n  got {}", short(w), short(g)));
            }
        }
        Err(format!(
            "{} rows wanted, {} got",
            want.lines().count(),
            got.lines().count()
        ))
    });
}

/// Stops `run`; then `ferry verify` must find the copies equal.
fn stop_and_verify(run: Child, pipeline: &Path, log: &Path) {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    assert!(terminate(run).success(), "{}", log_text());
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}

fn pipeline(dir: &Dir, source: &str, target: &str) -> std::path::PathBuf {
    dir.pipeline_between(source, target, "")
}

/// PostgreSQL → PostgreSQL: every value the same by the target's output,
/// the item-1 types and arrays of any bounds and dimensions included.
fn pg_to_pg(precreate: bool) {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    let ddl = format!(
        "{PG_ODD_TYPES}{}{}{PG_OTHER_KEYS}",
        PG_EDGE.create(),
        PG_ODD.create()
    );
    pg.psql_in("src", &ddl);
    pg.psql_in("src", PG_EDGE_ROWS);
    pg.psql_in("src", PG_ODD_ROWS);
    pg.psql_in("src", PG_OTHER_KEY_ROWS);
    if precreate {
        pg.psql_in("dst", &ddl);
    }
    let dir = Dir::new();
    let p = pipeline(&dir, &pg.url_for("src"), &pg.url_for("dst"));
    let log = dir.path("run.log");
    let run = spawn_run(&p, &log);
    for (phase, sql) in [
        ("the snapshot", String::new()),
        (
            "inserts and updates in the stream",
            format!(
                "{}{}{}{}{}{}",
                PG_EDGE.reinsert(100),
                PG_ODD.reinsert(100),
                PG_EDGE.copy_row(2, 1),
                PG_EDGE.copy_row(4, 2),
                PG_ODD.copy_row(4, 1),
                "UPDATE edge SET bo = NOT bo WHERE id = 102; UPDATE odd SET pt = '(9,9)' WHERE id = 104;"
            ),
        ),
        (
            // Enough rows in one transaction for the staged (COPY) upsert,
            // whose binary COPY cannot take an array carried as text.
            "a large transaction of arrays",
            "INSERT INTO odd (id, lb, md) SELECT g, \
             CASE WHEN g % 2 = 0 THEN format('[%s:%s]={%s}', g, g, g) ELSE '{1}' END::int[], \
             ARRAY[ARRAY[g::text, NULL], ARRAY['', 'x y']] FROM generate_series(1000, 1999) g"
                .into(),
        ),
    ] {
        if !sql.is_empty() {
            pg.psql_in("src", &sql);
        }
        converge(
            &format!("edge after {phase}"),
            || pg_render(&pg, "src", &PG_EDGE).unwrap(),
            || pg_render(&pg, "dst", &PG_EDGE),
        );
        converge(
            &format!("odd after {phase}"),
            || pg_render(&pg, "src", &PG_ODD).unwrap(),
            || pg_render(&pg, "dst", &PG_ODD),
        );
        if phase == "inserts and updates in the stream" {
            pg.psql_in("src", PG_OTHER_KEY_CHANGES);
        }
        converge(
            &format!("a citext key and a keyless table after {phase}"),
            || pg.psql_in("src", PG_OTHER_KEY_SQL),
            || pg.try_psql_in("dst", PG_OTHER_KEY_SQL),
        );
    }
    let types = |db: &str| {
        pg.psql_in(
            db,
            "SELECT string_agg(format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'odd'::regclass AND attnum > 0",
        )
    };
    assert_eq!(types("dst"), types("src"));
    stop_and_verify(run, &p, &log);
}

#[test]
fn postgres_to_postgres_keeps_every_value() {
    pg_to_pg(false);
}

#[test]
fn postgres_to_a_precreated_postgres_table_keeps_every_value() {
    pg_to_pg(true);
}

// ---------------------------------------------------------------- SQLite

/// A SQLite source table: each column's values are of the storage class
/// its declared type takes (cells of another class are the SQLite →
/// SQLite exactness work of another change and are not here); the column
/// without a declared type holds every class, numeric-looking text too.
const LITE: Table = Table {
    name: "lite",
    columns: &[
        ("id", "INTEGER"),
        ("i", "INTEGER"),
        ("r", "REAL"),
        ("t", "TEXT"),
        ("b", "BLOB"),
        ("n", "DECIMAL_TEXT(40,5)"),
        ("d", "DATE"),
        ("tm", "TIME"),
        ("ts", "DATETIME"),
        ("tz", "TIMESTAMPTZ"),
        ("bo", "BOOLEAN"),
        ("j", "JSON"),
        ("u", "UUID"),
        ("dy", ""),
    ],
};

const LITE_ROWS: &str = "
INSERT INTO lite VALUES
 (1, -9223372036854775808, -1.7976931348623157e308, '', x'', '-99999999999999999999999999999999999.99999',
  '0001-01-01', '00:00:00', '0001-01-01 00:00:00', '1970-01-01 00:00:00.000000+00:00', 0, '{}',
  '00000000-0000-0000-0000-000000000000', 1.5),
 (2, 9223372036854775807, 9e999, printf('%.*c', 20000, 'x'), zeroblob(20000), '0.00001',
  '9999-12-31', '23:59:59.999999', '9999-12-31 23:59:59.999999', '2024-02-29 12:30:00.000001+00:00',
  1, '{\"k\": [1, \"é\", null]}', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'text ☃'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, -9e999, 'héllo ☃', x'00ff', '123456789012345678901234567890.12345', '2000-02-29', '12:00:00',
  '2000-02-29 12:00:00', '1999-12-31 23:59:59.999999+00:00', 1, '[]',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '-1'),
 (5, 1, 4.9e-324, 'tab\there', x'00', '0', '1970-01-01', '12:34:56.500000', '1970-01-01 00:00:00.500000',
  '2024-01-01 12:00:00.000000+00:00', 0, '\"s\"', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', -7);";

/// Each row of `table` in the SQLite file: every column as
/// `typeof(c):quote(c)`, in key order.
fn lite_render(path: &Path, table: &Table) -> Result<String, String> {
    let cols: Vec<String> = table
        .names()
        .iter()
        .map(|c| format!("typeof({c}) || ':' || quote({c})"))
        .collect();
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    c.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut st = c
        .prepare(&format!(
            "SELECT {} FROM {} ORDER BY id",
            cols.join(" || ' | ' || "),
            table.name
        ))
        .map_err(|e| e.to_string())?;
    let rows = st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(rows.join("\n"))
}

fn lite_exec(path: &Path, sql: &str) {
    open(path).execute_batch(sql).unwrap();
}

/// SQLite → SQLite: `typeof` and `quote` of every cell the same.
fn lite_to_lite(precreate: bool) {
    let dir = Dir::new();
    let (src, dst) = (dir.path("source.db"), dir.path("target.db"));
    lite_exec(&src, &format!("{}{LITE_ROWS}", LITE.create()));
    if precreate {
        lite_exec(&dst, &LITE.create());
    }
    let p = dir.pipeline("");
    let log = dir.path("run.log");
    let run = spawn_run(&p, &log);
    for (phase, sql) in [
        ("the snapshot", String::new()),
        (
            "inserts and updates in the stream",
            format!(
                "{}{}{}",
                LITE.reinsert(100),
                LITE.copy_row(2, 1),
                LITE.copy_row(4, 2)
            ),
        ),
    ] {
        if !sql.is_empty() {
            lite_exec(&src, &sql);
        }
        converge(
            &format!("lite after {phase}"),
            || lite_render(&src, &LITE).unwrap(),
            || lite_render(&dst, &LITE),
        );
    }
    stop_and_verify(run, &p, &log);
}

#[test]
fn sqlite_to_sqlite_keeps_every_value() {
    lite_to_lite(false);
}

#[test]
fn sqlite_to_a_precreated_sqlite_table_keeps_every_value() {
    lite_to_lite(true);
}

/// SQLite → PostgreSQL: each row of [`LITE_ROWS`] (columns after `id`) as
/// PostgreSQL prints it in the types ferry creates (docs/types.md: INTEGER
/// → bigint, REAL → double precision, DECIMAL_TEXT(40,5) → numeric(40,5),
/// which shows 5 decimals, JSON → json, no type → text, ...).
fn lite_in_pg() -> Vec<String> {
    let big_text = format!("'{}'", "x".repeat(20000));
    let big_blob = format!("E'\\\\x{}'", "00".repeat(20000));
    vec![
        "'-9223372036854775808' | '-1.7976931348623157e+308' | '' | E'\\\\x' | \
         '-99999999999999999999999999999999999.99999' | '0001-01-01' | '00:00:00' | \
         '0001-01-01 00:00:00' | '1970-01-01 00:00:00+00' | 'false' | '{}' | \
         '00000000-0000-0000-0000-000000000000' | 'n1.5'"
            .to_owned(),
        format!(
            "'9223372036854775807' | 'Infinity' | {big_text} | {big_blob} | '0.00001' | \
             '9999-12-31' | '23:59:59.999999' | '9999-12-31 23:59:59.999999' | \
             '2024-02-29 12:30:00.000001+00' | 'true' | '{{\"k\": [1, \"é\", null]}}' | \
             'ffffffff-ffff-ffff-ffff-ffffffffffff' | 'text ☃'"
        ),
        ["NULL"; 13].join(" | "),
        "'0' | '-Infinity' | 'héllo ☃' | E'\\\\x00ff' | '123456789012345678901234567890.12345' | \
         '2000-02-29' | '12:00:00' | '2000-02-29 12:00:00' | '1999-12-31 23:59:59.999999+00' | \
         'true' | '[]' | 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' | '-1'"
            .to_owned(),
        "'1' | '5e-324' | 'tab\there' | E'\\\\x00' | '0.00000' | '1970-01-01' | '12:34:56.5' | \
         '1970-01-01 00:00:00.5' | '2024-01-01 12:00:00+00' | 'false' | '\"s\"' | \
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12' | 'n-7'"
            .to_owned(),
    ]
}

/// Renders rows `(id, index into values)` as `pg_render` does.
fn rows_of(values: &[String], rows: &[(i64, usize)]) -> String {
    rows.iter()
        .map(|(id, i)| format!("'{id}' | {}", values[*i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rows after [`Table::reinsert`]`(100)`, then `copy_row(2, 1)` and
/// `copy_row(4, 2)`: `(id, index of the row whose values it holds)`.
const AFTER_STREAM: [(i64, usize); 10] = [
    (1, 1),
    (2, 3),
    (3, 2),
    (4, 3),
    (5, 4),
    (101, 0),
    (102, 1),
    (103, 2),
    (104, 3),
    (105, 4),
];

/// The PostgreSQL table ferry creates for [`LITE`].
const LITE_IN_PG: &str = "CREATE TABLE lite (id bigint PRIMARY KEY, i bigint, r double precision, \
    t text, b bytea, n numeric(40,5), d date, tm time, ts timestamp, tz timestamptz, bo boolean, \
    j json, u uuid, dy text)";

fn lite_to_pg(precreate: bool) {
    let pg = PostgresServer::start();
    pg.create_database("dst");
    if precreate {
        pg.psql_in("dst", LITE_IN_PG);
    }
    let dir = Dir::new();
    let src = dir.path("source.db");
    // A number in a column without a declared type lands in a `text`
    // column, and `ferry verify` then compares the number with the text
    // and reports a difference: left out here (see the change's report).
    lite_exec(
        &src,
        &format!(
            "{}{LITE_ROWS} UPDATE lite SET dy = 'n' || dy WHERE typeof(dy) <> 'text';",
            LITE.create()
        ),
    );
    let p = dir.pipeline_between(&dir.source_url(), &pg.url_for("dst"), "");
    let log = dir.path("run.log");
    let run = spawn_run(&p, &log);
    let values = lite_in_pg();
    let snapshot: Vec<(i64, usize)> = (0..5).map(|i| (i as i64 + 1, i)).collect();
    converge(
        "lite after the snapshot",
        || rows_of(&values, &snapshot),
        || pg_render(&pg, "dst", &LITE),
    );
    lite_exec(
        &src,
        &format!(
            "{}{}{}",
            LITE.reinsert(100),
            LITE.copy_row(2, 1),
            LITE.copy_row(4, 2)
        ),
    );
    converge(
        "lite after inserts and updates in the stream",
        || rows_of(&values, &AFTER_STREAM),
        || pg_render(&pg, "dst", &LITE),
    );
    stop_and_verify(run, &p, &log);
}

#[test]
fn sqlite_to_postgres_maps_every_value_as_documented() {
    lite_to_pg(false);
}

#[test]
fn sqlite_to_a_precreated_postgres_table_maps_every_value_as_documented() {
    lite_to_pg(true);
}

// ------------------------------------------------ PostgreSQL → SQLite

/// A PostgreSQL source for a SQLite target. `timestamptz`/`date`
/// `infinity` and jsonb numbers beyond a double are the PostgreSQL →
/// SQLite work of another change and are not here.
const TO_LITE: Table = Table {
    name: "tolite",
    columns: &[
        ("id", "int"),
        ("i2", "smallint"),
        ("i8", "bigint"),
        ("f4", "real"),
        ("f8", "double precision"),
        ("n", "numeric"),
        ("n2", "numeric(12,3)"),
        ("t", "text"),
        ("vc", "varchar(5)"),
        ("c", "char(3)"),
        ("b", "bytea"),
        ("bo", "boolean"),
        ("d", "date"),
        ("tm", "time"),
        ("ts", "timestamp"),
        ("tstz", "timestamptz"),
        ("iv", "interval"),
        ("u", "uuid"),
        ("j", "json"),
        ("jb", "jsonb"),
        ("ai", "int[]"),
        ("at", "text[]"),
        ("x", "xml"),
        ("pt", "point"),
        ("r", "int4range"),
        ("m", "money"),
        ("h", "hstore"),
        ("am", "int[]"),
    ],
};

const TO_LITE_ROWS: &str = "
INSERT INTO tolite VALUES
 (1, -32768, -9223372036854775808, 'NaN', 'NaN', repeat('9', 1000)::numeric, -999999999.999, '', '',
  '', '\\x', false, '0044-03-15 BC', '00:00', '0044-03-15 00:00:00.000001 BC',
  '1999-12-31 23:59:59.999999-12:00', '-178000000 years', '00000000-0000-0000-0000-000000000000',
  '{\"a\":  1}', '{\"k\": [1, \"é\", null]}', '{1,NULL,3}', '{\"\",NULL}', '<a b=\"1\">t&amp;</a>',
  '(1.5,-2)', '[1,5)', '-92233720368547758.08', 'a=>1, \"b c\"=>NULL', '{{1,2},{3,NULL}}'),
 (2, 32767, 9223372036854775807, 'Infinity', '-Infinity', 'NaN', 0.001, repeat('x', 20000), 'ab',
  'a', decode(repeat('00ff', 10000), 'hex'), true, '9999-12-31', '24:00:00',
  '9999-12-31 23:59:59.999999', '2024-02-29 12:30:00.000001+14', '1 mon -1 days 00:00:00.000001',
  'ffffffff-ffff-ffff-ffff-ffffffffffff', 'null', '[]', '{}', '{\"x,y\",\"\\\"\"}', '', '(0,0)',
  'empty', '0', '', '[0:1]={5,6}'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, 0, 1, '-Infinity', '4.9e-324', '-0.000000000000000000001', 0, 'héllo ☃', 'ünï', 'é ', '\\x00',
  true, '2000-02-29', '23:59:59.999999', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '0',
  'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '\"\"', '\"s\"', '{-2147483648,2147483647}', '{NULL}',
  NULL, NULL, NULL, NULL, NULL, NULL),
 (5, 1, -1, '3.4028235e38', '1.7976931348623157e308', '1e-20', 123456789.5,
  E'tab\\there\\nnewline', 'a''b', 'x''y', '\\xdeadbeef', false, '1970-01-01', '12:00',
  '2000-02-29 00:00:00', '2024-06-30 12:00:00+02', '00:00:00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12',
  '[1.10, 1e-7]', '[1.10, 1e-7]', '{0}', '{\"\"}', '<b/>', '(1e300,-1e-300)', '[-2147483648,2147483647)',
  '92233720368547758.07', 'k=>v, \"\"=>\"\"', '{}');";

/// [`TO_LITE_ROWS`] in the SQLite target, columns after `id` as
/// `typeof:quote` (docs/types.md, SQLite sink: NaN as TEXT, dates and
/// times as ISO text, `timestamptz` in UTC at fixed width, intervals as
/// `P<months>M<days>DT<seconds>S`, arrays as JSON arrays, numerics as
/// exact text, the text-carried types as PostgreSQL prints them).
fn to_lite_in_lite() -> Vec<String> {
    let nines = "9".repeat(1000);
    let xs = "x".repeat(20000);
    let blob = "00FF".repeat(10000);
    vec![
        format!(
            "integer:-32768 | integer:-9223372036854775808 | text:'NaN' | text:'NaN' | \
             text:'{nines}' | text:'-999999999.999' | text:'' | text:'' | text:'   ' | blob:X'' | \
             integer:0 | text:'-0043-03-15' | text:'00:00:00' | text:'-0043-03-15 00:00:00.000001' | \
             text:'2000-01-01 11:59:59.999999+00:00' | text:'P-2136000000M0DT0S' | \
             text:'00000000-0000-0000-0000-000000000000' | text:'{{\"a\":  1}}' | \
             text:'{{\"k\": [1, \"é\", null]}}' | text:'[1,null,3]' | text:'[\"\",null]' | \
             text:'<a b=\"1\">t&amp;</a>' | text:'(1.5,-2)' | text:'[1,5)' | \
             text:'-$92,233,720,368,547,758.08' | text:'\"a\"=>\"1\", \"b c\"=>NULL' | \
             text:'[[1,2],[3,null]]'"
        ),
        format!(
            "integer:32767 | integer:9223372036854775807 | real:Inf | real:-Inf | text:'NaN' | \
             text:'0.001' | text:'{xs}' | text:'ab' | text:'a  ' | blob:X'{blob}' | integer:1 | \
             text:'9999-12-31' | text:'24:00:00' | text:'9999-12-31 23:59:59.999999' | \
             text:'2024-02-28 22:30:00.000001+00:00' | text:'P1M-1DT0.000001S' | \
             text:'ffffffff-ffff-ffff-ffff-ffffffffffff' | text:'null' | text:'[]' | text:'[]' | \
             text:'[\"x,y\",\"\\\"\"]' | text:'' | text:'(0,0)' | text:'empty' | text:'$0.00' | \
             text:'' | text:'[0:1]={{\"5\",\"6\"}}'"
        ),
        ["null:NULL"; 27].join(" | "),
        "integer:0 | integer:1 | real:-Inf | real:4.94065645841247e-324 | \
         text:'-0.000000000000000000001' | text:'0.000' | text:'héllo ☃' | text:'ünï' | \
         text:'é  ' | blob:X'00' | integer:1 | text:'2000-02-29' | text:'23:59:59.999999' | \
         text:'1970-01-01 00:00:00' | text:'1970-01-01 00:00:00.000000+00:00' | text:'P0M0DT0S' | \
         text:'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' | text:'\"\"' | text:'\"s\"' | \
         text:'[-2147483648,2147483647]' | text:'[null]' | null:NULL | null:NULL | null:NULL | \
         null:NULL | null:NULL | null:NULL"
            .to_owned(),
        "integer:1 | integer:-1 | real:3.40282346638528859772e+38 | \
         real:1.79769313486231562234e+308 | text:'0.00000000000000000001' | \
         text:'123456789.500' | text:'tab\there\nnewline' | text:'a''b' | text:'x''y' | \
         blob:X'DEADBEEF' | integer:0 | text:'1970-01-01' | text:'12:00:00' | \
         text:'2000-02-29 00:00:00' | text:'2024-06-30 10:00:00.000000+00:00' | text:'P0M0DT0S' | \
         text:'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12' | text:'[1.10, 1e-7]' | \
         text:'[1.10, 0.0000001]' | text:'[0]' | text:'[\"\"]' | text:'<b/>' | \
         text:'(1e+300,-1e-300)' | text:'[-2147483648,2147483647)' | \
         text:'$92,233,720,368,547,758.07' | text:'\"\"=>\"\", \"k\"=>\"v\"' | text:'[]'"
            .to_owned(),
    ]
}

/// The SQLite table ferry creates for [`TO_LITE`] (docs/types.md).
const TO_LITE_IN_LITE: &str = "CREATE TABLE tolite (id INTEGER PRIMARY KEY, i2 INTEGER, \
    i8 INTEGER, f4 REAL, f8 REAL, n DECIMAL_TEXT, n2 DECIMAL_TEXT(12,3), t TEXT, vc VARCHAR(5), \
    c VARCHAR(3), b BLOB, bo BOOLEAN, d DATE, tm TIME, ts DATETIME, tstz TIMESTAMPTZ, \
    iv INTERVAL, u UUID, j JSON_TEXT, jb JSON_TEXT, ai ARRAY_JSON, at ARRAY_JSON, x TEXT, pt TEXT, r TEXT, \
    m TEXT, h TEXT, am ARRAY_JSON)";

fn pg_to_lite(precreate: bool) {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.psql_in(
        "src",
        &format!(
            "CREATE EXTENSION hstore; {}{TO_LITE_ROWS}",
            TO_LITE.create()
        ),
    );
    let dir = Dir::new();
    let dst = dir.path("target.db");
    if precreate {
        lite_exec(&dst, TO_LITE_IN_LITE);
    }
    let p = dir.pipeline_between(&pg.url_for("src"), &format!("sqlite:{}", dst.display()), "");
    let log = dir.path("run.log");
    let run = spawn_run(&p, &log);
    let values = to_lite_in_lite();
    let render = |rows: &[(i64, usize)]| {
        rows.iter()
            .map(|(id, i)| format!("integer:{id} | {}", values[*i]))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let snapshot: Vec<(i64, usize)> = (0..5).map(|i| (i as i64 + 1, i)).collect();
    converge(
        "tolite after the snapshot",
        || render(&snapshot),
        || lite_render(&dst, &TO_LITE),
    );
    pg.psql_in(
        "src",
        &format!(
            "{}{}{}",
            TO_LITE.reinsert(100),
            TO_LITE.copy_row(2, 1),
            TO_LITE.copy_row(4, 2)
        ),
    );
    converge(
        "tolite after inserts and updates in the stream",
        || render(&AFTER_STREAM),
        || lite_render(&dst, &TO_LITE),
    );
    stop_and_verify(run, &p, &log);
}

#[test]
fn postgres_to_sqlite_maps_every_value_as_documented() {
    pg_to_lite(false);
}

#[test]
fn postgres_to_a_precreated_sqlite_table_maps_every_value_as_documented() {
    pg_to_lite(true);
}
