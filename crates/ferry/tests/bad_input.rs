//! Bad input gets a clear error naming the problem and the fix, a non-zero
//! exit, and loses nothing.

use crate::kit::{Dir, dump, ferry, spawn_run, terminate, text};

fn run(pipeline: &std::path::Path) -> (i32, String) {
    let o = ferry(&["run", pipeline.to_str().unwrap()]);
    (o.status.code().unwrap_or(-1), text(&o))
}

fn with_accounts(d: &Dir) {
    d.source().execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER); INSERT INTO accounts VALUES (1, 10);").unwrap();
}

#[test]
fn missing_config_file() {
    let o = ferry(&["run", "/nonexistent/pipeline.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("cannot read pipeline file /nonexistent/pipeline.toml") && t.contains("fix:"),
        "{t}"
    );
}

#[test]
fn unreadable_config_file() {
    let d = Dir::new();
    // A directory cannot be read as a file, even by root.
    let o = ferry(&["check", d.dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("cannot read pipeline file"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_toml_names_the_line() {
    let d = Dir::new();
    let p = d.path("p.toml");
    std::fs::write(&p, "[source]\nurl = \"sqlite:a.db\n[target]\n").unwrap();
    let o = ferry(&["run", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(
        t.contains("invalid pipeline file") && t.contains("line 2"),
        "{t}"
    );
}

#[test]
fn unknown_key_names_the_key_and_the_alternatives() {
    let d = Dir::new();
    let p = d.pipeline("[apply]\nbatch_size = 10\n");
    let (code, t) = run(&p);
    assert_eq!(code, 2);
    assert!(
        t.contains("unknown field `batch_size`")
            && t.contains("batch_rows")
            && t.contains("line 8"),
        "{t}"
    );
}

#[test]
fn bad_url_lists_the_accepted_forms() {
    let d = Dir::new();
    let p = d.path("p.toml");
    std::fs::write(
        &p,
        "[source]\nurl = \"sqlite3://x\"\n[target]\nurl = \"sqlite:b.db\"\n",
    )
    .unwrap();
    let (code, t) = run(&p);
    assert_eq!(code, 2);
    assert!(
        t.contains("not a database URL") && t.contains("sqlite:PATH"),
        "{t}"
    );
}

#[test]
fn missing_source_database_is_not_created() {
    let d = Dir::new();
    let p = d.pipeline("");
    let (code, t) = run(&p);
    assert_eq!(code, 2);
    assert!(t.contains("does not exist") && t.contains("fix:"), "{t}");
    assert!(
        !d.path("source.db").exists(),
        "ferry must not create a source database"
    );
}

#[test]
fn target_not_writable() {
    let d = Dir::new();
    with_accounts(&d);
    std::fs::write(d.path("file"), "not a directory").unwrap();
    let p = d.path("p.toml");
    std::fs::write(
        &p,
        format!(
            "[source]\nurl = \"sqlite:{}\"\n[target]\nurl = \"sqlite:{}/target.db\"\n",
            d.path("source.db").display(),
            d.path("file").display()
        ),
    )
    .unwrap();
    let (code, t) = run(&p);
    assert_eq!(code, 2);
    assert!(t.contains("target.db") && t.contains("fix:"), "{t}");
}

#[test]
fn source_locked_by_another_writer() {
    let d = Dir::new();
    with_accounts(&d);
    // Locked for longer than ferry keeps trying.
    let p = d.pipeline("[apply]\ngive_up_after = \"1s\"\n");
    let holder = d.source();
    holder
        .execute_batch("BEGIN EXCLUSIVE; INSERT INTO accounts VALUES (2, 20);")
        .unwrap();
    let (code, t) = run(&p);
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(code, 2);
    assert!(
        t.contains("giving up") && t.contains("locked") && t.contains("source.db"),
        "{t}"
    );
    // Nothing was lost: once the lock is gone the pipeline copies everything.
    assert_eq!(dump(&d.path("source.db"), "accounts").unwrap().len(), 1);
}

#[test]
fn table_key_not_ordered_by_bytes() {
    // (A table without any key is replicated: see the crash tests.)
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE logs (at TEXT COLLATE NOCASE PRIMARY KEY, line TEXT); \
             INSERT INTO logs VALUES ('now', 'x');",
        )
        .unwrap();
    let (code, t) = run(&d.pipeline(""));
    assert_eq!(code, 2);
    assert!(
        t.contains("logs") && t.contains("NOCASE") && t.contains("COLLATE BINARY"),
        "{t}"
    );
}

#[test]
fn unsupported_column_type() {
    // Toward PostgreSQL a declared type ferry cannot map stops the run;
    // SQLite → SQLite copies it as it is (see `sqlite_exact`).
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("dst");
    let d = Dir::new();
    d.source()
        .execute_batch("CREATE TABLE places (id INTEGER PRIMARY KEY, shape GEOMETRY);")
        .unwrap();
    let (code, t) = run(&d.pipeline_between(&d.source_url(), &pg.url_for("dst"), ""));
    assert_eq!(code, 2);
    assert!(
        t.contains("places") && t.contains("shape") && t.contains("GEOMETRY"),
        "{t}"
    );
}

/// Toward PostgreSQL a declared type ferry has no mapping for stops the
/// pipeline (SQLite → SQLite carries any declared type verbatim).
#[test]
fn check_names_every_unsupported_column_at_once_and_excluding_them_runs() {
    let d = Dir::new();
    d.source()
        .execute_batch(
            "CREATE TABLE places (id INTEGER PRIMARY KEY, shape GEOMETRY, name TEXT, spot POINT);
             INSERT INTO places VALUES (1, x'00ff', 'home', 'p(1 2)');",
        )
        .unwrap();
    let pg = ferry_testkit::PostgresServer::start();
    pg.create_database("dst");
    let p = d.pipeline_between(&d.source_url(), &pg.url_for("dst"), "");
    let c = ferry(&["check", p.to_str().unwrap()]);
    let t = text(&c);
    assert_eq!(c.status.code(), Some(1), "{t}");
    assert!(
        t.contains("places.shape (GEOMETRY)")
            && t.contains("places.spot (POINT)")
            && t.contains("exclude_columns = [\"places.shape\", \"places.spot\"]"),
        "{t}"
    );
    // Excluded, they are never a reason to stop: read as stored, dropped.
    let p = d.pipeline_between(
        &d.source_url(),
        &pg.url_for("dst"),
        "[tables]\nexclude_columns = [\"places.shape\", \"places.spot\"]\n",
    );
    let run = spawn_run(&p, &d.path("run.log"));
    let rows = ferry_testkit::eventually_blocking(
        "the copy without the excluded columns",
        std::time::Duration::from_secs(60),
        || {
            pg.try_psql_in("dst", "SELECT id || '|' || name FROM places")
                .ok()
                .filter(|r| !r.trim().is_empty())
        },
    );
    assert!(terminate(run).success());
    assert_eq!(rows.trim(), "1|home");
    let columns = pg.psql_in(
        "dst",
        "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) \
         FROM information_schema.columns WHERE table_name = 'places'",
    );
    assert_eq!(columns.trim(), "id,name");
}

#[test]
fn unknown_consistency_mode_names_the_choices() {
    let d = Dir::new();
    let (code, t) = run(&d.pipeline("[apply]\nconsistency = \"strict\"\n"));
    assert_eq!(code, 2);
    assert!(t.contains("transactional") && t.contains("eventual"), "{t}");
}

#[test]
fn a_failing_statement_names_table_key_statement_and_database_error() {
    let d = Dir::new();
    d.source()
        .execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER); INSERT INTO accounts VALUES (7, 500);")
        .unwrap();
    // The target already has the table, with a rule the source row breaks.
    rusqlite::Connection::open(d.path("target.db"))
        .unwrap()
        .execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER CHECK (balance < 100));")
        .unwrap();
    let (code, t) = run(&d.pipeline(""));
    assert_eq!(code, 2, "{t}");
    assert!(
        t.contains("accounts")
            && t.contains("(7)")
            && t.contains("INSERT")
            && t.contains("CHECK constraint failed"),
        "{t}"
    );
}
