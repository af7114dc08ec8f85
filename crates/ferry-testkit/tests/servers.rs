//! Smoke tests of the real-server fixtures: each starts, answers, and is
//! gone (port closed, directory deleted) once dropped.

use std::path::PathBuf;
use std::time::Instant;

use ferry_testkit::{MariaDbServer, NatsServer, PostgresServer, port_is_open};

/// Asserts that nothing listens on `port` and `dir` is gone.
fn assert_gone(what: &str, port: u16, dir: PathBuf) {
    assert!(
        !port_is_open(port),
        "{what}: port {port} still open after drop"
    );
    assert!(
        !dir.exists(),
        "{what}: {} still exists after drop",
        dir.display()
    );
}

// A `#[tokio::test]`: the (synchronous) fixtures work inside a runtime.
#[tokio::test]
async fn postgres_starts_answers_and_is_gone_after_drop() {
    let t = Instant::now();
    let pg = PostgresServer::start();
    eprintln!("postgres started in {:?}", t.elapsed());
    let port = pg.port();
    assert!(port_is_open(port));
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    assert_eq!(pg.psql("select 1"), "1");
    assert_eq!(pg.psql("show wal_level"), "logical");
    assert_eq!(pg.psql("show fsync"), "off");
    assert_eq!(pg.psql("show listen_addresses"), "127.0.0.1");
    assert_eq!(pg.psql("select 1; select 2, 'x'"), "1\n2|x");
    // Replication connections over TCP are allowed (pg_hba).
    assert_eq!(
        pg.try_psql_url(
            &format!("{}?replication=database", pg.url()),
            "IDENTIFY_SYSTEM"
        )
        .map(|s| s.split('|').count()),
        Ok(4)
    );

    let url = pg.create_database("app db");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{port}/app%20db")
    );
    assert_eq!(
        pg.try_psql_url(&url, "select current_database()"),
        Ok("app db".into())
    );
    pg.psql_in(
        "app db",
        "create table t (id int primary key); insert into t values (7)",
    );
    assert_eq!(pg.psql_in("app db", "select id from t"), "7");

    let err = pg.try_psql("select * from missing").unwrap_err();
    assert!(err.contains("relation \"missing\" does not exist"), "{err}");

    let data_dir = pg.data_dir();
    let dir = data_dir.parent().unwrap().to_path_buf();
    drop(pg);
    assert_gone("postgres", port, dir);
}

#[test]
fn postgres_builder_options_password_and_wal_level() {
    let mut pg = PostgresServer::builder()
        .wal_level("replica")
        .password("s3cret/x")
        .durable(true)
        .conf("max_connections = 30")
        .start();
    let port = pg.port();
    assert_eq!(pg.psql("show wal_level"), "replica");
    assert_eq!(pg.psql("show fsync"), "on");
    assert_eq!(pg.psql("show max_connections"), "30");
    assert_eq!(
        pg.url(),
        format!("postgres://postgres:s3cret%2Fx@127.0.0.1:{port}/postgres")
    );
    // TCP with the right password works, with a wrong one it does not.
    assert_eq!(pg.try_psql_url(&pg.url(), "select 2"), Ok("2".into()));
    let wrong = format!("postgres://postgres:wrong@127.0.0.1:{port}/postgres");
    let err = pg.try_psql_url(&wrong, "select 1").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");

    // Stop and restart on the same port, data kept.
    pg.psql("create table kept (x int); insert into kept values (1)");
    pg.stop();
    assert!(!port_is_open(port));
    pg.restart();
    assert_eq!(pg.psql("select x from kept"), "1");
}

#[test]
fn mariadb_starts_answers_and_is_gone_after_drop() {
    let t = Instant::now();
    let db = MariaDbServer::start();
    eprintln!("mariadb started in {:?}", t.elapsed());
    let port = db.port();
    assert!(port_is_open(port));
    assert_eq!(db.url(), format!("mysql://root@127.0.0.1:{port}/"));
    assert_eq!(db.sql("select 1"), "1");
    assert_eq!(db.sql("select @@binlog_format"), "ROW");
    assert_eq!(
        db.sql("select @@log_bin, @@gtid_strict_mode, @@server_id"),
        "1\t1\t1"
    );
    assert_eq!(db.sql("select @@bind_address"), "127.0.0.1");

    let url = db.create_database("app");
    assert_eq!(url, format!("mysql://root@127.0.0.1:{port}/app"));
    db.sql_in(
        "app",
        "create table t (id int primary key); insert into t values (7)",
    );
    assert_eq!(db.sql("select id from app.t"), "7");
    let err = db.try_sql("select * from app.missing").unwrap_err();
    assert!(err.contains("doesn't exist"), "{err}");

    let dir = db.data_dir().parent().unwrap().to_path_buf();
    let t = Instant::now();
    drop(db);
    eprintln!("mariadb dropped in {:?}", t.elapsed());
    assert_gone("mariadb", port, dir);
}

#[test]
fn mariadb_builder_options_and_restart() {
    let mut db = MariaDbServer::builder()
        .binlog_format("STATEMENT")
        .server_id(7)
        .start();
    let port = db.port();
    assert_eq!(
        db.sql("select @@binlog_format, @@server_id"),
        "STATEMENT\t7"
    );
    db.sql("create database d; create table d.t (x int); insert into d.t values (1)");
    db.stop();
    assert!(!db.is_running());
    assert!(!port_is_open(port));
    db.restart();
    assert_eq!(db.sql("select x from d.t"), "1");
}

#[test]
fn nats_starts_with_jetstream_and_is_gone_after_drop() {
    let t = Instant::now();
    let nats = NatsServer::start();
    eprintln!("nats started in {:?}", t.elapsed());
    let port = nats.port();
    let monitor = nats.monitor_port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let info = nats.info();
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(info.contains(r#""jetstream":true"#), "{info}");
    assert!(info.contains(r#""host":"127.0.0.1""#), "{info}");

    let dir = nats.store_dir().parent().unwrap().to_path_buf();
    drop(nats);
    assert_gone("nats", port, dir);
    assert!(!port_is_open(monitor), "monitor port still open");
}

#[test]
fn nats_servers_in_parallel_do_not_collide_and_restart() {
    let handles: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(NatsServer::start))
        .collect();
    let mut servers: Vec<NatsServer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = servers
        .iter()
        .flat_map(|s| [s.port(), s.monitor_port()])
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 6);
    for s in &servers {
        assert!(s.info().contains(r#""jetstream":true"#));
    }
    let s = &mut servers[0];
    s.stop();
    assert!(!port_is_open(s.port()));
    s.restart();
    assert!(s.info().contains(r#""jetstream":true"#));

    let no_js = NatsServer::builder().jetstream(false).start();
    assert!(!no_js.info().contains(r#""jetstream":true"#));
}

#[test]
fn a_panicking_test_still_stops_its_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let nats = NatsServer::start();
        tx.send((nats.port(), nats.store_dir())).unwrap();
        panic!("test body fails while the server runs");
    });
    assert!(result.is_err());
    let (port, store) = rx.recv().unwrap();
    assert_gone("nats", port, store.parent().unwrap().to_path_buf());
}

#[test]
fn missing_server_binary_is_a_clear_error() {
    let err = PostgresServer::builder()
        .bin_dir("/nonexistent/postgresql/bin")
        .try_start()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/postgresql/bin"), "{msg}");
    assert!(msg.contains("scripts/install-test-deps.sh"), "{msg}");
}

#[test]
fn a_taken_port_fails_with_the_log_tail() {
    // Force the client port onto one that is taken (the extra `-p` wins):
    // the retry with a fresh port hits it too, and the error says why.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let err = NatsServer::builder()
        .arg("-p")
        .arg(&busy_port.to_string())
        .try_start()
        .unwrap_err();
    assert!(err.is_address_in_use(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("exited during start-up"), "{msg}");
    assert!(msg.contains("--- last lines of"), "{msg}");
    assert!(msg.contains("address already in use"), "{msg}");
}

#[test]
#[should_panic(expected = "invalid value for parameter \"shared_buffers\"")]
fn postgres_that_cannot_start_panics_with_its_log_tail() {
    PostgresServer::builder()
        .conf("shared_buffers = nonsense")
        .start();
}

#[test]
fn mariadb_that_cannot_start_reports_its_log_tail() {
    let err = MariaDbServer::builder()
        .binlog_format("BOGUS")
        .try_start()
        .expect_err("a bad binlog format must not start");
    assert!(err.to_string().contains("--- last lines of"), "{err}");
}
