//! PostgreSQL → PostgreSQL into target tables the operator created
//! beforehand, on the real binary: a `DEFERRABLE` primary key (which `ON
//! CONFLICT` refuses as arbiter) and an identity column `GENERATED
//! ALWAYS` (which refuses a plain insert of a value) take the copy and
//! every kind of change.

use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, ferry, spawn_run, terminate, text};

const TABLES: &str = "CREATE TABLE swap (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text);
     CREATE TABLE ids (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);";
const ROWS: &str =
    "SELECT 'swap', id, v FROM swap UNION ALL SELECT 'ids', id, v FROM ids ORDER BY 1, 2";

#[test]
fn precreated_targets_with_a_deferrable_key_or_an_identity_take_the_copy_and_the_stream() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in(
        "src",
        &format!(
            // A deferrable key cannot be the source's replica identity.
            "{TABLES} ALTER TABLE swap REPLICA IDENTITY FULL;
             INSERT INTO swap VALUES (1, 'one'), (2, 'two');
             INSERT INTO ids (v) VALUES ('a'), ('b');"
        ),
    );
    pg.psql_in("dst", TABLES);
    let dir = Dir::new();
    let pipeline = dir.path("pre.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"pre\"\n[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
             [apply]\nbatch_time = \"20ms\"\n",
            pg.url_for("src"),
            pg.url_for("dst")
        ),
    )
    .unwrap();
    let log = dir.path("pre.log");
    let run = spawn_run(&pipeline, &log);
    let same = |what: &str| {
        eventually_blocking(what, Duration::from_secs(60), || {
            let src = pg.psql_in("src", ROWS);
            (pg.try_psql_in("dst", ROWS).ok()? == src).then_some(())
        })
    };
    same("the copy");
    pg.psql_in(
        "src",
        "INSERT INTO swap VALUES (3, 'three');
         UPDATE swap SET v = 'uno' WHERE id = 1;
         DELETE FROM swap WHERE id = 2;
         UPDATE swap SET id = 4 WHERE id = 3;
         UPDATE swap SET id = 5 - id WHERE id IN (1, 4);
         INSERT INTO ids (v) VALUES ('c'), ('d');
         UPDATE ids SET v = 'B' WHERE id = 2;
         DELETE FROM ids WHERE id = 1;",
    );
    same("the changes");
    assert_eq!(
        pg.psql_in("dst", ROWS),
        "ids|2|B\nids|3|c\nids|4|d\nswap|1|three\nswap|4|uno"
    );
    assert!(
        terminate(run).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let v = ferry(&["verify", pipeline.to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
}
