//! PostgreSQL → SQLite edge values on the real binary: values SQLite has no
//! native form for are stored in one that reads back as the same value,
//! in the snapshot and in the stream, and `ferry verify` finds the copy
//! equal.

use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, ferry, spawn_run, terminate, text};

/// Each cell as `typeof:value`, columns joined by `|`, rows by newlines.
fn typed_rows(path: &std::path::Path, select: &str) -> Option<String> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .ok()?;
    c.busy_timeout(Duration::from_secs(10)).ok()?;
    let mut st = c.prepare(select).ok()?;
    let n = st.column_count();
    let rows = st
        .query_map([], |r| {
            (0..n)
                .map(|i| {
                    r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                        rusqlite::types::Value::Null => "null".to_owned(),
                        rusqlite::types::Value::Integer(i) => format!("integer:{i}"),
                        rusqlite::types::Value::Real(f) => format!("real:{f:?}"),
                        rusqlite::types::Value::Text(t) => format!("text:{t}"),
                        rusqlite::types::Value::Blob(b) => format!("blob:{b:?}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("|"))
        })
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(rows.join("\n"))
}

const EDGE_SQL: &str = "SELECT id, tz, ts, d, jb, j, tza FROM e ORDER BY id";

#[test]
fn infinite_times_and_large_json_numbers_reach_sqlite_as_they_are_and_verify() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE TABLE e (id int PRIMARY KEY, tz timestamptz, ts timestamp, d date,
                         jb jsonb, j json, tza timestamptz[]);
         INSERT INTO e VALUES
           (1, 'infinity', '-infinity', 'infinity', '12345678901234567890', '1.0',
               '{infinity,-infinity,2020-01-01 00:00:00+00}'),
           (2, '-infinity', 'infinity', '-infinity', '1.0', '12345678901234567890', NULL),
           (3, '2024-02-29 12:00:00+00', '2024-02-29 12:00:00', '2024-02-29', '{\"a\": 1}', '-0',
               NULL);",
    );
    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(
        &pg.url_for("src"),
        &format!("sqlite:{}", target.display()),
        "",
    );
    let run = spawn_run(&p, &d.path("run.log"));
    let log = || std::fs::read_to_string(d.path("run.log")).unwrap_or_default();
    let snapshot = "integer:1|text:infinity|text:-infinity|text:infinity|\
         text:12345678901234567890|text:1.0|\
         text:[\"infinity\",\"-infinity\",\"2020-01-01 00:00:00.000000+00:00\"]\n\
         integer:2|text:-infinity|text:infinity|text:-infinity|text:1.0|\
         text:12345678901234567890|null\n\
         integer:3|text:2024-02-29 12:00:00.000000+00:00|text:2024-02-29 12:00:00|\
         text:2024-02-29|text:{\"a\": 1}|text:-0|null";
    eventually_blocking("the snapshot", Duration::from_secs(60), || {
        (typed_rows(&target, EDGE_SQL)? == snapshot).then_some(())
    });

    // The same values through the change stream: new rows, and a row
    // whose finite values become infinite and whose JSON becomes a number.
    pg.psql_in(
        "src",
        "INSERT INTO e SELECT id + 10, tz, ts, d, jb, j, tza FROM e WHERE id IN (1, 2);
         UPDATE e SET tz = '-infinity', ts = 'infinity', d = 'infinity',
                      jb = '-98765432109876543210.5', j = '1e400' WHERE id = 3;
         INSERT INTO e (id, tz) VALUES (4, '1999-12-31 23:00:00-02');",
    );
    let changed = snapshot.replace(
        "integer:3|text:2024-02-29 12:00:00.000000+00:00|text:2024-02-29 12:00:00|\
         text:2024-02-29|text:{\"a\": 1}|text:-0|null",
        "integer:3|text:-infinity|text:infinity|text:infinity|\
         text:-98765432109876543210.5|text:1e400|null",
    );
    let (one, two) = {
        let mut lines = snapshot.lines();
        (lines.next().unwrap(), lines.next().unwrap())
    };
    let expected = format!(
        "{changed}\ninteger:4|text:2000-01-01 01:00:00.000000+00:00|null|null|null|null|null\n{}\n{}",
        one.replacen("integer:1|", "integer:11|", 1),
        two.replacen("integer:2|", "integer:12|", 1)
    );
    eventually_blocking("the changes", Duration::from_secs(60), || {
        (typed_rows(&target, EDGE_SQL)? == expected).then_some(())
    });
    // Ordered by the infinite column, the target agrees with the source.
    let order = typed_rows(&target, "SELECT id FROM e ORDER BY tz, id").unwrap();
    let source_order = pg.psql_in("src", "SELECT id FROM e ORDER BY tz, id");
    assert_eq!(
        order.replace("integer:", ""),
        source_order,
        "text order of the target's timestamptz column"
    );
    assert!(terminate(run).success(), "{}", log());

    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
}
