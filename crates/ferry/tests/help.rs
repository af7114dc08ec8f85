//! Errors that help and names that work, on the real binary: a pipeline
//! file named `my-pipe.toml`, a server that wants a password the URL
//! lacks, and a password with raw `@`, `:` and `/` that is never printed.

use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, ferry, spawn_run, terminate, text};

#[test]
fn a_pipeline_named_my_pipe_runs_on_slot_ferry_my_pipe() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.psql_in(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');",
    );
    let d = Dir::new();
    // No `name`: the pipeline is named after its file.
    let p = d.path("my-pipe.toml");
    std::fs::write(
        &p,
        format!(
            "[source]\nurl = \"{}\"\n[target]\nurl = \"sqlite:{}\"\n[apply]\nbatch_time = \"20ms\"\n",
            pg.url_for("src"),
            d.path("target.db").display()
        ),
    )
    .unwrap();
    let run = spawn_run(&p, &d.path("run.log"));
    pg.psql_in("src", "INSERT INTO t VALUES (2, 'b')");
    eventually_blocking("the row", Duration::from_secs(60), || {
        (crate::kit::count(&d.path("target.db"), "t") == 2).then_some(())
    });
    assert_eq!(
        pg.psql_in(
            "src",
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots"
        ),
        "ferry_my_pipe"
    );
    assert_eq!(
        pg.psql_in("src", "SELECT string_agg(pubname, ',') FROM pg_publication"),
        "ferry_my_pipe"
    );
    assert!(terminate(run).success());
    let out = ferry(&["teardown", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        pg.psql_in("src", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
}

#[test]
fn a_missing_password_has_a_fix_and_a_raw_password_is_never_printed() {
    let secret = "p@ss:w/rd@x";
    let pg = PostgresServer::builder().password(secret).start();
    pg.create_database("src");
    let port = pg.port();
    let d = Dir::new();
    let p = d.path("pw.toml");
    let write = |password: &str| {
        std::fs::write(
            &p,
            format!(
                "[source]\nurl = \"postgres://postgres{password}@127.0.0.1:{port}/src\"\n\
                 [target]\nurl = \"sqlite:{}\"\n",
                d.path("target.db").display()
            ),
        )
        .unwrap();
    };
    write("");
    let out = ferry(&["check", p.to_str().unwrap()]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("asks user \"postgres\" for a password, and the URL has none"),
        "{t}"
    );
    assert!(t.contains("${PGPASSWORD}"), "{t}");
    assert!(!t.contains("invalid configuration"), "{t}");
    // Written raw, the password works; a wrong one is refused unprinted.
    write(&format!(":{secret}"));
    let out = ferry(&["check", p.to_str().unwrap()]);
    assert!(
        text(&out).contains("connected to postgres@127.0.0.1"),
        "{}",
        text(&out)
    );
    write(":p@ss:w/rd@y");
    let out = ferry(&["check", p.to_str().unwrap()]);
    let t = text(&out);
    assert!(t.contains("28P01") && !out.status.success(), "{t}");
    for piece in ["p@ss", "ss:w", "w/rd", "rd@"] {
        assert!(!t.contains(piece), "{piece:?} printed:\n{t}");
    }
}
