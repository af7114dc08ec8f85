//! PostgreSQL → PostgreSQL structure copy beyond columns and key, on the
//! real binary: the copy gets the source's NOT NULLs, defaults, CHECKs,
//! unique constraints and secondary indexes (built after the load) and
//! owned sequences, whose values follow the source at the end of the copy
//! and on `ferry sync-sequences`, so a switchover hands out no used id.

use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, ferry, log_tail, spawn_run, terminate, text};

const SOURCE: &str = "
    CREATE TABLE items (
        id serial PRIMARY KEY,
        sku text NOT NULL CONSTRAINT items_sku_key UNIQUE,
        qty int NOT NULL DEFAULT 1 CONSTRAINT qty_positive CHECK (qty >= 0),
        note text DEFAULT 'none',
        CONSTRAINT qty_small CHECK (qty < 1000)
    );
    CREATE INDEX items_note ON items (note);
    CREATE INDEX items_lower_sku ON items (lower(sku)) WHERE note IS NOT NULL;
    INSERT INTO items (sku, qty) SELECT 'sku-' || g, g FROM generate_series(1, 500) g;
    CREATE TABLE tickets (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        price numeric(10,2) NOT NULL,
        qty int NOT NULL,
        total numeric GENERATED ALWAYS AS (price * qty) STORED,
        CONSTRAINT total_cap CHECK (total < 100000)
    );
    CREATE INDEX tickets_total ON tickets (total);
    INSERT INTO tickets (price, qty) SELECT g, 2 FROM generate_series(1, 50) g;";

const TICKETS: &str = "SELECT id, price, qty, total FROM tickets ORDER BY id";
const TICKETS_SHAPE: &str = "SELECT attname || ' ' || attidentity::text || attgenerated::text FROM pg_attribute \
     WHERE attrelid = 'tickets'::regclass AND attnum > 0 ORDER BY attname";

/// Name-sorted lines of `sql` on `db`.
fn lines(pg: &PostgresServer, db: &str, sql: &str) -> String {
    pg.psql_in(db, sql)
}

const DEFAULTS: &str = "SELECT column_name || '=' || coalesce(column_default, '-') || \
     CASE WHEN is_nullable = 'NO' THEN ' not null' ELSE '' END \
     FROM information_schema.columns WHERE table_name = 'items' ORDER BY column_name";
const CONSTRAINTS: &str = "SELECT conname || ' ' || contype::text || ' ' || pg_get_constraintdef(oid) \
     FROM pg_constraint WHERE conrelid = 'items'::regclass AND contype <> 'p' ORDER BY conname";
const INDEXES: &str = "SELECT indexname || ' ' || regexp_replace(indexdef, '^.* USING ', '') \
     FROM pg_indexes WHERE tablename = 'items' AND indexname <> 'items_pkey' ORDER BY indexname";

#[test]
fn postgres_to_postgres_copies_defaults_checks_indexes_and_sequences() {
    let pg = PostgresServer::start();
    pg.create_database("src");
    pg.create_database("dst");
    pg.psql_in("src", SOURCE);
    let dir = Dir::new();
    let pipeline = dir.path("shape.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"shape\"\n[source]\nurl = \"{}\"\n[target]\nurl = \"{}\"\n\
             [apply]\nbatch_time = \"20ms\"\n",
            pg.url_for("src"),
            pg.url_for("dst")
        ),
    )
    .unwrap();
    let p = pipeline.to_str().unwrap();
    let log = dir.path("shape.log");
    let run = spawn_run(&pipeline, &log);
    // The copy ends with the indexes built and the sequence synchronised.
    eventually_blocking("the copy and its indexes", Duration::from_secs(60), || {
        let state = (
            pg.try_psql_in("dst", INDEXES),
            pg.try_psql_in("dst", "SELECT last_value FROM items_id_seq"),
            pg.try_psql_in("dst", TICKETS),
        );
        if state
            == (
                Ok(lines(&pg, "src", INDEXES)),
                Ok("500".into()),
                Ok(pg.psql_in("src", TICKETS)),
            )
        {
            Ok(())
        } else {
            Err(format!("{state:?}\n{}", log_tail(&log)))
        }
    });
    // Identity and generated columns are what they are on the source; the
    // target computes `total` itself.
    assert_eq!(
        lines(&pg, "dst", TICKETS_SHAPE),
        "id a\nprice \nqty \ntotal s"
    );
    assert_eq!(
        pg.psql_in(
            "dst",
            "SELECT indexdef LIKE '%(total)' FROM pg_indexes WHERE indexname = 'tickets_total'"
        ),
        "t"
    );
    assert_eq!(
        pg.psql_in(
            "dst",
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'total_cap'"
        ),
        "CHECK ((total < (100000)::numeric))"
    );
    assert_eq!(
        pg.psql_in("dst", "SELECT last_value FROM tickets_id_seq"),
        "50"
    );
    assert_eq!(lines(&pg, "dst", DEFAULTS), lines(&pg, "src", DEFAULTS));
    assert_eq!(
        lines(&pg, "dst", CONSTRAINTS),
        lines(&pg, "src", CONSTRAINTS)
    );
    // Changes still flow into the shaped table.
    pg.psql_in(
        "src",
        "INSERT INTO items (sku) VALUES ('new-1'), ('new-2'); UPDATE items SET note = 'x' WHERE id = 3;
         INSERT INTO tickets (price, qty) VALUES (7, 3); UPDATE tickets SET qty = 5 WHERE id = 1;",
    );
    eventually_blocking("the changes", Duration::from_secs(60), || {
        let q = "SELECT id, sku, qty, note FROM items ORDER BY id";
        (pg.try_psql_in("dst", q).ok()? == pg.psql_in("src", q)
            && pg.try_psql_in("dst", TICKETS).ok()? == pg.psql_in("src", TICKETS))
        .then_some(())
    });
    assert!(
        terminate(run).success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The stream does not move sequences; `ferry sync-sequences` does.
    assert_eq!(
        pg.psql_in("dst", "SELECT last_value FROM items_id_seq"),
        "500"
    );
    let out = ferry(&["sync-sequences", p]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("sequence public.items_id_seq: 502"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("sequence public.tickets_id_seq: 51"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pg.psql_in(
            "dst",
            "INSERT INTO tickets (price, qty) VALUES (1, 1) RETURNING id, total"
        ),
        "52|1.00"
    );
    // Switched over: the target hands out the next id, and enforces the
    // source's rules.
    assert_eq!(
        pg.psql_in(
            "dst",
            "INSERT INTO items (sku) VALUES ('after') RETURNING id, qty, note"
        ),
        "503|1|none"
    );
    let refused = pg
        .try_psql_in("dst", "INSERT INTO items (sku, qty) VALUES ('neg', -1)")
        .unwrap_err();
    assert!(refused.contains("qty_positive"), "{refused}");
    let refused = pg
        .try_psql_in("dst", "INSERT INTO items (sku) VALUES ('sku-1')")
        .unwrap_err();
    assert!(refused.contains("items_sku_key"), "{refused}");
}
