//! A run refused because one side is bad changes neither side: the target
//! gets no `_ferry_checkpoint` (nor any table), the source no publication
//! and no replication slot; ferry exits non-zero naming the fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_testkit::PostgresServer;

use crate::kit::{Dir, run_to_exit};

fn pipeline(d: &Dir, name: &str, source: &str, target: &str) -> PathBuf {
    let p = d.path(&format!("{name}.toml"));
    std::fs::write(
        &p,
        format!("name = \"{name}\"\n[source]\nurl = \"{source}\"\n[target]\nurl = \"{target}\"\n"),
    )
    .unwrap();
    p
}

/// Runs the pipeline, which must be refused; returns ferry's output.
fn refused(p: &Path) -> String {
    let (code, out) = run_to_exit(&["run", p.to_str().unwrap()], Duration::from_secs(60));
    assert_ne!(code, 0, "{out}");
    out
}

/// The tables of a SQLite file (none when it does not exist).
fn sqlite_tables(path: &Path) -> Vec<String> {
    if !path.exists() {
        return Vec::new();
    }
    let c = rusqlite::Connection::open(path).unwrap();
    let mut st = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The tables of database `db`, outside the system schemas.
fn pg_tables(pg: &PostgresServer, db: &str) -> String {
    pg.psql_in(
        db,
        "SELECT coalesce(string_agg(schemaname || '.' || tablename, ',' ORDER BY 1), '') \
         FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
}

/// Publications in `db` / replication slots of the server.
fn on_source(pg: &PostgresServer, db: &str) -> String {
    pg.psql_in(
        db,
        "SELECT (SELECT count(*) FROM pg_publication) || '/' || \
                (SELECT count(*) FROM pg_replication_slots)",
    )
}

/// A SQLite target and a PostgreSQL target `dst` for a source at `source`:
/// each run must be refused with `expect` in its output, and leave its
/// target as it was.
fn both_targets_refused(pg: &PostgresServer, d: &Dir, source: &str, expect: &[&str]) {
    let file = d.path("target.db");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("CREATE TABLE keep (x INTEGER)")
        .unwrap();
    pg.psql_in("dst", "CREATE TABLE keep (x int)");
    let to_file = pipeline(d, "to_file", source, &format!("sqlite:{}", file.display()));
    let to_pg = pipeline(d, "to_pg", source, &pg.url_for("dst"));
    for p in [to_file, to_pg] {
        let out = refused(&p);
        for e in expect {
            assert!(out.contains(e), "{} should say {e:?}:\n{out}", p.display());
        }
    }
    assert_eq!(sqlite_tables(&file), ["keep"]);
    assert_eq!(pg_tables(pg, "dst"), "public.keep");
}

#[test]
fn a_source_without_logical_decoding_is_refused_before_either_side_changes() {
    let pg = PostgresServer::builder().wal_level("replica").start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in("src", "CREATE TABLE items (id int PRIMARY KEY, v text)");
    let d = Dir::new();
    both_targets_refused(
        &pg,
        &d,
        &pg.url_for("src"),
        &["wal_level", "ALTER SYSTEM SET wal_level = logical"],
    );
    assert_eq!(on_source(&pg, "src"), "0/0");
}

#[test]
fn a_source_user_without_replication_is_refused_before_either_side_changes() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        "CREATE ROLE app LOGIN; GRANT CREATE ON DATABASE src TO app;
         CREATE TABLE items (id int PRIMARY KEY, v text); ALTER TABLE items OWNER TO app;",
    );
    let d = Dir::new();
    let source = pg.url_for("src").replace("postgres@", "app@");
    both_targets_refused(&pg, &d, &source, &["ALTER ROLE app WITH REPLICATION"]);
    assert_eq!(on_source(&pg, "src"), "0/0");
}

#[test]
fn a_sqlite_source_that_is_not_a_database_leaves_the_target_untouched() {
    let pg = PostgresServer::start();
    pg.create_database("dst");
    let d = Dir::new();
    let source = d.path("source.db");
    std::fs::write(&source, "this is a text file, not a database\n".repeat(200)).unwrap();
    both_targets_refused(
        &pg,
        &d,
        &format!("sqlite:{}", source.display()),
        &["source.db"],
    );
}

#[test]
fn a_target_ferry_may_not_write_leaves_no_publication_or_slot_on_the_source() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in("src", "CREATE TABLE items (id int PRIMARY KEY, v text)");
    // The target table exists, but ferry's target user may only read it.
    pg.psql_in(
        "dst",
        "CREATE ROLE loader LOGIN; GRANT CREATE ON SCHEMA public TO loader;
         CREATE TABLE items (id int PRIMARY KEY, v text); GRANT SELECT ON items TO loader;",
    );
    let d = Dir::new();
    let target = pg.url_for("dst").replace("postgres@", "loader@");
    let out = refused(&pipeline(&d, "bad_target", &pg.url_for("src"), &target));
    assert!(
        out.contains(
            "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON \"public\".\"items\" TO loader"
        ),
        "{out}"
    );
    assert_eq!(on_source(&pg, "src"), "0/0");
    assert_eq!(pg_tables(&pg, "dst"), "public.items");
}
