//! MariaDB as a source, on the real binary: every MySQL type family through
//! the copy and the binlog into SQLite and PostgreSQL, structure changes
//! in the stream, `ferry verify`, and what a misconfigured source gets.

use std::time::Duration;

use ferry_testkit::{MariaDbServer, PostgresServer, eventually_blocking};

use crate::kit::{
    Dir, dump, ferry, pg_number, run_to_exit, spawn_run, spawn_streaming, terminate, text,
};

/// A table with a column of each MySQL type family ferry carries.
const TYPES_DDL: &str = "CREATE TABLE t (
    id int PRIMARY KEY,
    u64 bigint unsigned, u32 int unsigned, i8 tinyint, u8 tinyint unsigned, m mediumint,
    dec65 decimal(65,30), f float, d double,
    c char(4), v varchar(20) CHARACTER SET latin1, tx text, b varbinary(8), bl blob,
    dt date, tm time(6), dtm datetime(6), ts timestamp(6) NULL DEFAULT NULL, y year,
    j json, e enum('small','medium','large'), s set('a','b','c'), bt bit(10)
) ENGINE=InnoDB";

const ROW_1: &str = "(1, 18446744073709551615, 4294967295, -128, 255, -8388608,
    '12345678901234567890123456789012345.123456789012345678901234567890', 1.5, -0.1,
    'ab', 'caf\u{e9} \u{20ac}', 'text', X'00FF10', X'DEADBEEF',
    '2024-02-29', '-838:59:59.000000', '2024-02-29 23:59:59.123456',
    '2024-02-29 12:00:00.5', 2024, '{\"k\": [1, 2]}', 'large', 'a,c', b'1000000001')";

const ROW_2: &str = "(2, 0, 0, 127, 0, 8388607, '-0.000000000000000000000000000001', -3.25, 1e300,
    '', '', '', X'', X'', '1000-01-01', '838:59:59.999999', '1000-01-01 00:00:00',
    NULL, 1901, 'null', 'small', '', b'0')";

#[test]
fn mariadb_to_sqlite_copies_streams_and_verifies_every_type() {
    let db = MariaDbServer::start();
    let url = db.create_database("shop");
    db.sql_in("shop", TYPES_DDL);
    db.sql_in("shop", &format!("INSERT INTO t VALUES {ROW_1}, {ROW_2}"));
    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(&url, &format!("sqlite:{}", target.display()), "");
    let run = spawn_run(&p, &d.path("run.log"));
    let log = || std::fs::read_to_string(d.path("run.log")).unwrap_or_default();
    eventually_blocking("the copy", Duration::from_secs(60), || {
        (dump(&target, "t")?.len() == 2).then_some(())
    });
    let copied = dump(&target, "t").unwrap();
    for want in [
        "18446744073709551615",
        "4294967295",
        "12345678901234567890123456789012345.123456789012345678901234567890",
        "caf\u{e9} \u{20ac}",
        "-838:59:59",
        "2024-02-29 23:59:59.123456",
        "large",
        "a,c",
        "513",
    ] {
        assert!(copied[0].contains(want), "{want:?} not in {}", copied[0]);
    }

    // The same values through the binlog, an update that changes most of
    // them, a delete, and a column added in the middle of the stream.
    db.sql_in(
        "shop",
        "INSERT INTO t SELECT id + 10, u64, u32, i8, u8, m, dec65, f, d, c, v, tx, b, bl, dt,
            tm, dtm, ts, y, j, e, s, bt FROM t;
         UPDATE t SET u64 = 9223372036854775808, v = '\u{e0}\u{e9}', tm = '-00:00:00.5',
            e = 'medium', s = 'b', bt = b'11' WHERE id = 2;
         DELETE FROM t WHERE id = 1;
         ALTER TABLE t ADD COLUMN note varchar(10) DEFAULT 'x';
         INSERT INTO t (id, note) VALUES (3, 'after');
         UPDATE t SET note = 'changed' WHERE id = 12;",
    );
    eventually_blocking("the changes", Duration::from_secs(60), || {
        let rows = dump(&target, "t")?;
        (rows.len() == 4 && rows.iter().any(|r| r.contains("changed"))).then_some(())
    });
    assert!(terminate(run).success(), "{}", log());
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(
        v.status.success(),
        "verify: {}\nrun log: {}",
        text(&v),
        log()
    );
    let rows = dump(&target, "t").unwrap();
    assert!(
        rows.iter().any(|r| r.contains("9223372036854775808")),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.contains("medium")), "{rows:?}");
}

#[test]
fn mariadb_to_postgresql_copies_streams_and_verifies() {
    let db = MariaDbServer::start();
    let url = db.create_database("shop");
    db.sql_in("shop", TYPES_DDL);
    // PostgreSQL's time holds a time of day only (docs/types.md).
    let row = ROW_1.replace("'-838:59:59.000000'", "'12:30:00.25'");
    db.sql_in("shop", &format!("INSERT INTO t VALUES {row}"));
    let pg = PostgresServer::start();
    pg.create_database("dst");
    let d = Dir::new();
    let p = d.pipeline_between(&url, &pg.url_for("dst"), "");
    let run = spawn_run(&p, &d.path("run.log"));
    let log = || std::fs::read_to_string(d.path("run.log")).unwrap_or_default();
    eventually_blocking("the copy", Duration::from_secs(60), || {
        (pg_number(&pg, "dst", "SELECT count(*) FROM t") == 1).then_some(())
    });
    db.sql_in(
        "shop",
        "INSERT INTO t (id, u64, dec65, tm, dtm, ts, j) VALUES
            (5, 18446744073709551615, '-1.5', '00:00:01.5', '2000-01-01 00:00:00',
             '2000-01-01 00:00:00', '[]');
         UPDATE t SET tx = 'updated' WHERE id = 1;",
    );
    eventually_blocking("the changes", Duration::from_secs(60), || {
        (pg_number(
            &pg,
            "dst",
            "SELECT count(*) FROM t WHERE tx = 'updated' OR id = 5",
        ) == 2)
            .then_some(())
    });
    let row = pg.psql_in(
        "dst",
        "SELECT u64, dec65, v, y, e, s, bt, ts FROM t WHERE id = 1",
    );
    for want in [
        "18446744073709551615",
        "12345678901234567890123456789012345.123456789012345678901234567890",
        "caf\u{e9} \u{20ac}",
        "2024",
        "large",
        "a,c",
        "513",
        "2024-02-29 12:00:00.5",
    ] {
        assert!(row.contains(want), "{want:?} not in {row}");
    }
    assert!(terminate(run).success(), "{}", log());
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(
        v.status.success(),
        "verify: {}\nrun log: {}",
        text(&v),
        log()
    );
}

/// A source whose binlog is statement-based, or off, is refused before
/// anything is written, with the setting to change.
#[test]
fn a_source_without_a_row_based_binlog_is_refused_with_the_fix() {
    for (db, want) in [
        (
            MariaDbServer::builder().binlog_format("STATEMENT").start(),
            "binlog_format",
        ),
        (MariaDbServer::builder().log_bin(false).start(), "log_bin"),
    ] {
        let url = db.create_database("shop");
        db.sql_in("shop", "CREATE TABLE t (id int PRIMARY KEY)");
        let d = Dir::new();
        let target = d.path("target.db");
        let p = d.pipeline_between(&url, &format!("sqlite:{}", target.display()), "");
        let (code, out) = run_to_exit(&["run", p.to_str().unwrap()], Duration::from_secs(60));
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(want) && out.contains("fix:"), "{out}");
        assert!(!out.contains("panicked"), "{out}");
        assert!(
            dump(&target, "t").is_none(),
            "nothing is written to the target"
        );
        let (code, out) = run_to_exit(&["check", p.to_str().unwrap()], Duration::from_secs(60));
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(want), "{out}");
    }
}

/// Wrong password, unknown database, nothing listening: each names the
/// problem and the fix, and nothing panics.
#[test]
fn bad_source_urls_get_clear_errors() {
    let db = MariaDbServer::start();
    db.create_database("shop");
    db.sql(
        "CREATE USER app@'127.0.0.1' IDENTIFIED BY 'right';
         GRANT ALL ON *.* TO app@'127.0.0.1';",
    );
    let port = db.port();
    let closed = ferry_testkit::free_port();
    let cases = [
        (
            format!("mysql://app:wrong@127.0.0.1:{port}/shop"),
            "Access denied",
            "password",
        ),
        (
            format!("mysql://app:right@127.0.0.1:{port}/nope"),
            "nope",
            "create the database",
        ),
        (
            format!("mysql://app:right@127.0.0.1:{closed}/shop"),
            "connection refused",
            "listens on port",
        ),
    ];
    for (url, problem, fix) in cases {
        let d = Dir::new();
        let p = d.pipeline_between(&url, &format!("sqlite:{}", d.path("t.db").display()), "");
        let (code, out) = run_to_exit(&["check", p.to_str().unwrap()], Duration::from_secs(60));
        assert_ne!(code, 0, "{url}: {out}");
        assert!(out.contains(problem) && out.contains(fix), "{url}: {out}");
        assert!(
            !out.contains("panicked") && !out.contains("wrong@"),
            "{url}: {out}"
        );
    }
}

/// The binlog ferry needs is purged while ferry is stopped: refused with
/// the reason; with `on_gap = "resync"` the tables are re-copied online and
/// the target converges.
#[test]
fn a_purged_binlog_is_refused_then_resynced_online_with_on_gap() {
    let db = MariaDbServer::start();
    let url = db.create_database("shop");
    db.sql_in(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, status varchar(10));
         INSERT INTO orders SELECT seq, 'new' FROM seq_1_to_500;",
    );
    let d = Dir::new();
    let target = d.path("target.db");
    let sqlite = format!("sqlite:{}", target.display());
    let p = d.pipeline_between(&url, &sqlite, "");
    let run = spawn_streaming(&p, &d.path("run.log"));
    db.sql_in("shop", "UPDATE orders SET status = 'paid' WHERE id <= 10");
    eventually_blocking("the update", Duration::from_secs(60), || {
        dump(&target, "orders")?
            .iter()
            .any(|r| r.contains("paid"))
            .then_some(())
    });
    assert!(terminate(run).success());

    // Writes while ferry is stopped, then the binlog holding them goes.
    db.sql_in(
        "shop",
        "UPDATE orders SET status = 'lost' WHERE id BETWEEN 100 AND 120;
         DELETE FROM orders WHERE id > 490;
         FLUSH BINARY LOGS;",
    );
    let newest = db.sql("SHOW MASTER STATUS");
    let newest = newest.split('\t').next().unwrap().to_owned();
    // The server keeps a file a replica still reads: wait until it has
    // seen ferry's binlog connection go.
    eventually_blocking(
        "ferry's binlog reader to go",
        Duration::from_secs(30),
        || {
            let readers = db.sql(
                "SELECT count(*) FROM information_schema.processlist \
                 WHERE command LIKE 'Binlog Dump%'",
            );
            (readers == "0").then_some(())
        },
    );
    // ... and until crash recovery no longer needs the older file.
    eventually_blocking(
        "the older binlogs to be purged",
        Duration::from_secs(30),
        || {
            db.sql(&format!("PURGE BINARY LOGS TO '{newest}'"));
            (db.sql("SHOW BINARY LOGS").lines().count() == 1).then_some(())
        },
    );
    let (code, out) = run_to_exit(&["run", p.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("purged") && out.contains("on_gap"), "{out}");
    assert_eq!(
        ferry(&["verify", p.to_str().unwrap()]).status.code(),
        Some(1)
    );

    let text_now = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text_now.replace(
            "poll_interval = \"5ms\"",
            "poll_interval = \"5ms\"\non_gap = \"resync\"",
        ),
    )
    .unwrap();
    let run = spawn_streaming(&p, &d.path("run.log"));
    db.sql_in(
        "shop",
        "UPDATE orders SET status = 'after' WHERE id % 97 = 0",
    );
    eventually_blocking("the target converges", Duration::from_secs(60), || {
        let v = ferry(&["verify", p.to_str().unwrap()]);
        v.status.success().then_some(()).ok_or_else(|| text(&v))
    });
    assert!(terminate(run).success());
}

/// A user without REPLICATION SLAVE cannot read the binlog: refused before
/// anything is copied, with the GRANT to run.
#[test]
fn a_user_without_replication_privileges_is_refused_with_the_grant() {
    let db = MariaDbServer::start();
    db.create_database("shop");
    db.sql_in("shop", "CREATE TABLE t (id int PRIMARY KEY)");
    db.sql(
        "CREATE USER reader@'127.0.0.1' IDENTIFIED BY 'pw';
         GRANT SELECT ON shop.* TO reader@'127.0.0.1';",
    );
    let url = format!("mysql://reader:pw@127.0.0.1:{}/shop", db.port());
    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(&url, &format!("sqlite:{}", target.display()), "");
    let (code, out) = run_to_exit(&["run", p.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("REPLICATION SLAVE") && out.contains("GRANT"),
        "{out}"
    );
    assert!(
        dump(&target, "t").is_none(),
        "nothing is written to the target"
    );
}

/// A column added with a default computed per row gives each old row its
/// own value, which the binlog does not carry: the table is re-copied
/// online while changes flow, and the copy ends equal.
#[test]
fn a_column_added_with_a_per_row_default_is_re_copied_online() {
    let db = MariaDbServer::start();
    let url = db.create_database("shop");
    db.sql_in(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, status varchar(10));
         INSERT INTO orders SELECT seq, 'new' FROM seq_1_to_300;",
    );
    let d = Dir::new();
    let target = d.path("target.db");
    let log = d.path("run.log");
    let p = d.pipeline_between(&url, &format!("sqlite:{}", target.display()), "");
    let run = spawn_streaming(&p, &log);
    db.sql_in(
        "shop",
        "ALTER TABLE orders ADD COLUMN token char(36) DEFAULT (uuid());
         UPDATE orders SET status = 'paid' WHERE id % 10 = 0;
         INSERT INTO orders (id, status) VALUES (1000, 'late');",
    );
    eventually_blocking("the re-copy", Duration::from_secs(60), || {
        (crate::kit::log_count(&log, "online re-copy done") == 1).then_some(())
    });
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
    let rows = dump(&target, "orders").unwrap();
    assert_eq!(rows.len(), 301);
    assert!(
        rows.iter().all(|r| r.matches('-').count() >= 4),
        "every row has its token: {rows:?}"
    );
    assert!(terminate(run).success());
}

/// MariaDB → MariaDB: each column keeps its declared type verbatim and
/// every value (unsigned ranges, 65 digits, negative times, latin1, enum,
/// set, bit) comes through the copy and the binlog; `ferry verify` agrees.
#[test]
fn mariadb_to_mariadb_keeps_every_type_and_verifies() {
    let src = MariaDbServer::start();
    let url = src.create_database("shop");
    src.sql_in("shop", TYPES_DDL);
    src.sql_in("shop", &format!("INSERT INTO t VALUES {ROW_1}, {ROW_2}"));
    let dst = MariaDbServer::start();
    let target = dst.create_database("copy");
    let d = Dir::new();
    let p = d.pipeline_between(&url, &target, "");
    let run = spawn_streaming(&p, &d.path("run.log"));
    let log = || std::fs::read_to_string(d.path("run.log")).unwrap_or_default();
    src.sql_in(
        "shop",
        "INSERT INTO t SELECT id + 10, u64, u32, i8, u8, m, dec65, f, d, c, v, tx, b, bl, dt,
            tm, dtm, ts, y, j, e, s, bt FROM t;
         UPDATE t SET u64 = 9223372036854775808, v = '\u{e0}\u{e9}', tm = '-00:00:00.5',
            e = 'medium', s = 'b', bt = b'11' WHERE id = 2;
         DELETE FROM t WHERE id = 1;",
    );
    let all = "SELECT * FROM t ORDER BY id";
    eventually_blocking("the changes", Duration::from_secs(60), || {
        let (a, b) = (src.sql_in("shop", all), dst.try_sql_in("copy", all).ok()?);
        (a == b).then_some(())
    });
    let columns = "SELECT column_name, column_type FROM information_schema.columns \
                   WHERE table_name = 't' ORDER BY ordinal_position";
    assert_eq!(
        dst.sql_in("copy", columns),
        src.sql_in("shop", columns),
        "every column keeps its declared type"
    );
    assert!(terminate(run).success(), "{}", log());
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(
        v.status.success(),
        "verify: {}\nrun log: {}",
        text(&v),
        log()
    );
}

/// Generated columns (virtual and stored) are carried as the values the
/// source computed, through the copy and the binlog.
#[test]
fn generated_columns_arrive_as_their_values() {
    let db = MariaDbServer::start();
    let url = db.create_database("shop");
    db.sql_in(
        "shop",
        "CREATE TABLE g (id int PRIMARY KEY, price decimal(8,2),
            doubled decimal(9,2) AS (price * 2) VIRTUAL,
            label varchar(20) AS (concat('item-', id)) STORED);
         INSERT INTO g (id, price) VALUES (1, 1.50), (2, 3.25);",
    );
    let d = Dir::new();
    let target = d.path("target.db");
    let p = d.pipeline_between(&url, &format!("sqlite:{}", target.display()), "");
    let run = spawn_streaming(&p, &d.path("run.log"));
    db.sql_in(
        "shop",
        "INSERT INTO g (id, price) VALUES (3, 10.00); UPDATE g SET price = 0.5 WHERE id = 1;",
    );
    eventually_blocking("the changes", Duration::from_secs(60), || {
        let rows = dump(&target, "g")?;
        (rows.len() == 3 && rows[0].contains("\"0.50\"")).then_some(rows)
    });
    let rows = dump(&target, "g").unwrap();
    assert!(
        rows[0].contains("1.00") && rows[0].contains("item-1"),
        "{rows:?}"
    );
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(v.status.success(), "verify: {}", text(&v));
    assert!(terminate(run).success());
}
