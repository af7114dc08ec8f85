//! The main job on the embedded default: snapshot, live changes, filters,
//! status, check, verify, teardown.

use std::time::Duration;

use ferry_testkit::eventually_blocking;

use crate::kit::{Dir, dump, ferry, spawn_run, terminate, text};

#[test]
fn sqlite_to_sqlite_snapshot_changes_and_verify() {
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email VARCHAR(80), score REAL, joined DATE, avatar BLOB, balance DECIMAL(12,2), active BOOLEAN);
             INSERT INTO users VALUES (1, 'ada', 'ada@example.com', 1.5, '2024-01-02', x'00ff', '12.50', 1);
             INSERT INTO users VALUES (2, 'bob', NULL, NULL, NULL, NULL, NULL, 0);
             CREATE TABLE notes (id INTEGER PRIMARY KEY, user_id INTEGER, body TEXT);
             INSERT INTO notes VALUES (1, 1, 'hello');",
        )
        .unwrap();
    let p = d.pipeline("");
    let log = d.path("ferry.log");
    let child = spawn_run(&p, &log);
    let (src, tgt) = (d.path("source.db"), d.path("target.db"));
    eventually_blocking("snapshot arrives", Duration::from_secs(30), || {
        (dump(&tgt, "users")?.len() == 2).then_some(())
    });
    d.source()
        .execute_batch(
            "BEGIN; INSERT INTO users VALUES (3, 'cy', 'c@x', 2.0, '2025-05-05', NULL, '0.10', 1);
             UPDATE users SET name = 'Ada' WHERE id = 1; DELETE FROM users WHERE id = 2;
             INSERT INTO notes VALUES (2, 3, 'it''s, a \"note\"'); COMMIT;",
        )
        .unwrap();
    // Typed columns are stored in the target's own form (DECIMAL as exact
    // text, for one), so the full comparison is `ferry verify` below.
    eventually_blocking("changes arrive", Duration::from_secs(30), || {
        let users = dump(&tgt, "users")?;
        let ids: Vec<&str> = users
            .iter()
            .map(|r| r.split('|').next().unwrap_or(""))
            .collect();
        (ids == ["Integer(1)", "Integer(3)"]
            && users[0].contains("\"Ada\"")
            && dump(&tgt, "notes")? == dump(&src, "notes")?)
        .then_some(())
    });
    // The running process publishes its status once a second.
    let st = eventually_blocking("live status", Duration::from_secs(10), || {
        let o = ferry(&["status", p.to_str().unwrap()]);
        let t = text(&o);
        (o.status.success() && t.contains("workers:")).then_some(t)
    });
    assert!(
        st.contains("applied up to") && st.contains("users: copied 2 rows"),
        "{st}"
    );
    assert!(terminate(child).success());
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
    assert!(text(&v).contains("source and target are equal"));

    // A difference on the target is found and named, with exit code 1.
    rusqlite::Connection::open(&tgt)
        .unwrap()
        .execute("UPDATE users SET name = 'eve' WHERE id = 3", [])
        .unwrap();
    let v = ferry(&["verify", p.to_str().unwrap()]);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        text(&v).contains("differs at key (3)") && text(&v).contains("name"),
        "{}",
        text(&v)
    );

    let c = ferry(&["check", p.to_str().unwrap()]);
    assert!(c.status.success(), "{}", text(&c));
    let t = ferry(&["teardown", p.to_str().unwrap()]);
    assert!(t.status.success(), "{}", text(&t));
    let triggers: i64 = rusqlite::Connection::open(&src)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 0, "teardown removes the capture triggers");
}

#[test]
fn filters_renames_and_operation_filters() {
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, region TEXT, secret TEXT, amount INTEGER);
             INSERT INTO orders VALUES (1, 'eu', 's1', 10), (2, 'us', 's2', 20);
             CREATE TABLE scratch (id INTEGER PRIMARY KEY);",
        )
        .unwrap();
    let p = d.pipeline(
        "[tables]\ninclude = [\"orders\"]\nexclude_columns = [\"orders.secret\"]\nrename = { orders = \"orders_eu\" }\nfilter = { orders = \"region = 'eu'\" }\n[operations]\ndelete = false\n",
    );
    let child = spawn_run(&p, &d.path("ferry.log"));
    let tgt = d.path("target.db");
    eventually_blocking("filtered snapshot", Duration::from_secs(30), || {
        (dump(&tgt, "orders_eu")?.len() == 1).then_some(())
    });
    d.source().execute_batch("INSERT INTO orders VALUES (3, 'eu', 's3', 30), (4, 'us', 's4', 40); DELETE FROM orders WHERE id = 1;").unwrap();
    eventually_blocking("filtered changes", Duration::from_secs(30), || {
        (dump(&tgt, "orders_eu")?
            == vec![
                "Integer(1)|Text(\"eu\")|Integer(10)".to_string(),
                "Integer(3)|Text(\"eu\")|Integer(30)".to_string(),
            ])
        .then_some(())
    });
    assert!(terminate(child).success());
    assert!(
        dump(&tgt, "scratch").is_none(),
        "excluded tables are not created"
    );
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    use std::io::{Read, Write};
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
        )
        .unwrap();
    let p = d.pipeline("");
    let port = ferry_testkit::free_port();
    let log = std::fs::File::create(d.path("ferry.log")).unwrap();
    let child = std::process::Command::new(crate::kit::FERRY)
        .args([
            "run",
            p.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(log)
        .spawn()
        .unwrap();
    let body = eventually_blocking(
        "metrics with the copied rows",
        Duration::from_secs(30),
        || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.contains("ferry_snapshot_rows_total{pipeline=\"test\"} 1")
                .then_some(out)
        },
    );
    for m in [
        "ferry_rows_per_second",
        "ferry_lag_seconds",
        "ferry_queue_events",
        "ferry_inserts_total",
        "ferry_ddl_total",
    ] {
        assert!(body.contains(m), "{m} missing from:\n{body}");
    }
    assert!(terminate(child).success());
}
