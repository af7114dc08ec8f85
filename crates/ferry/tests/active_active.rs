//! Active-active (ADR 0014) with the real binary on two and three real
//! PostgreSQL servers (`track_commit_timestamp = on`), one `ferry run` per
//! direction from one sites file: local writes on every site reach every
//! other site once and never come back (a change that looped would meet
//! its own row again and show up in the conflict log), overlapping writes
//! are conflicts resolved by the table's policy on every site alike, each
//! logged, and a `kill -9` of a direction in the middle of a write load,
//! or a crash of a site's server, neither duplicates nor loops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_testkit::{PostgresServer, eventually_blocking};

use crate::kit::{Dir, FERRY, log_count, log_tail, terminate};

const DB: &str = "shop";
const SEED: i64 = 100;
/// Keys every site writes while the pipelines are stopped (true conflicts).
const CONTESTED: i64 = 10;

struct Site {
    name: String,
    pg: PostgresServer,
}

impl Site {
    fn start(name: &str) -> Site {
        let pg = PostgresServer::builder()
            .conf("track_commit_timestamp = on")
            .start();
        pg.create_database(DB);
        // `items` and `counters` send whole old rows (exact conflict
        // checks), `hits` only its key (checks by commit time).
        pg.psql_in(
            DB,
            "CREATE TABLE items (id int PRIMARY KEY, site text NOT NULL, n int NOT NULL, note text);
             ALTER TABLE items REPLICA IDENTITY FULL;
             CREATE TABLE counters (id int PRIMARY KEY, site text NOT NULL, hits bigint NOT NULL);
             ALTER TABLE counters REPLICA IDENTITY FULL;
             CREATE TABLE hits (id int PRIMARY KEY, site text NOT NULL, hits bigint NOT NULL);",
        );
        Site {
            name: name.into(),
            pg,
        }
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql_in(DB, sql)
    }

    fn number(&self, sql: &str) -> i64 {
        self.pg
            .try_psql_in(DB, sql)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1)
    }

    /// Every row of `table`, in key order, as text.
    fn rows(&self, table: &str) -> String {
        self.pg
            .try_psql_in(
                DB,
                &format!("SELECT string_agg(t::text, ';' ORDER BY id) FROM {table} t"),
            )
            .unwrap_or_else(|e| format!("unreadable: {e}"))
    }

    /// Conflict log rows: (table, key, kind, policy, outcome, source site,
    /// source time, target site, target time) as text.
    fn conflicts(&self) -> Vec<Vec<String>> {
        let out = self
            .pg
            .try_psql_in(
                DB,
                "SELECT table_name, key, kind, policy, outcome, source_site, \
                        (extract(epoch FROM source_time) * 1000000)::bigint, \
                        coalesce(target_site, ''), \
                        coalesce((extract(epoch FROM target_time) * 1000000)::bigint, 0) \
                 FROM _ferry_conflicts ORDER BY id",
            )
            .unwrap_or_default();
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect()
    }
}

fn sites_file(d: &Dir, sites: &[Site], active: &str) -> PathBuf {
    let mut text = String::from("name = \"mesh\"\n");
    for s in sites {
        text.push_str(&format!(
            "[sites.{}]\nurl = \"{}\"\n",
            s.name,
            s.pg.url_for(DB)
        ));
    }
    text.push_str(
        "[tables]\ninclude = [\"public.items\", \"public.counters\", \"public.hits\"]\n\
         [apply]\nbatch_time = \"20ms\"\n[snapshot]\nchunk_rows = 40\n",
    );
    text.push_str(active);
    let p = d.path("mesh.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// One `ferry run FILE --from A --to B`, logging to its own file.
struct Direction {
    from: String,
    to: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Direction {
    fn spawn(&mut self, file: &Path) {
        let before = log_count(&self.log, "stream started");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(FERRY)
            .args(["run", file.to_str().unwrap()])
            .args(["--from", &self.from, "--to", &self.to])
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn ferry run");
        eventually_blocking(
            &format!("{} -> {} streams", self.from, self.to),
            Duration::from_secs(120),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "ferry {} -> {} exited ({status}):\n{}",
                        self.from,
                        self.to,
                        log_tail(&self.log)
                    );
                }
                if log_count(&self.log, "stream started") > before {
                    Ok(())
                } else {
                    Err(log_tail(&self.log))
                }
            },
        );
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Fails with the log when the process has stopped by itself.
    fn alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Err(format!(
                "ferry {} -> {} exited ({status}):\n{}",
                self.from,
                self.to,
                log_tail(&self.log)
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn directions(d: &Dir, sites: &[Site]) -> Vec<Direction> {
    let mut out = Vec::new();
    for a in sites {
        for b in sites {
            if a.name != b.name {
                out.push(Direction {
                    from: a.name.clone(),
                    to: b.name.clone(),
                    log: d.path(&format!("{}_{}.log", a.name, b.name)),
                    child: None,
                });
            }
        }
    }
    out
}

/// Waits until every site holds the same rows in every table.
fn converged(sites: &[Site], dirs: &mut [Direction], what: &str) {
    let all = |s: &Site| (s.rows("items"), s.rows("counters"), s.rows("hits"));
    eventually_blocking(what, Duration::from_secs(120), || {
        for d in dirs.iter_mut() {
            d.alive()?;
        }
        let first = all(&sites[0]);
        for s in &sites[1..] {
            let other = all(s);
            if other != first {
                return Err(format!(
                    "site {} differs from site {}:\n  {:.600}\n  {:.600}",
                    s.name, sites[0].name, first.0, other.0
                ));
            }
        }
        Ok(())
    });
}

/// Local writes on each site to keys only it writes, in small
/// transactions: inserts, updates of them, and deletes of some.
fn disjoint_writes(site: &Site, k: i64, round: i64) {
    let base = 10_000 * k + 1_000 * round;
    let mut sql = String::new();
    for i in 1..=30 {
        let id = base + i;
        sql.push_str(&format!(
            "INSERT INTO items VALUES ({id}, '{s}', 0, 'new');
             INSERT INTO counters VALUES ({id}, '{s}', 0);
             INSERT INTO hits VALUES ({id}, '{s}', 0);
             BEGIN; UPDATE items SET n = n + 1 WHERE id = {id}; UPDATE counters SET hits = hits + 1 WHERE id = {id}; COMMIT;
             UPDATE hits SET hits = hits + 1 WHERE id = {id};
             UPDATE items SET note = 'changed' WHERE id = {id};\n",
            s = site.name
        ));
        if i % 5 == 0 {
            sql.push_str(&format!(
                "DELETE FROM items WHERE id = {id}; DELETE FROM counters WHERE id = {id}; \
                 DELETE FROM hits WHERE id = {id};\n"
            ));
        }
    }
    site.sql(&sql);
}

/// Conflicts logged on any site for keys only one site wrote: a change
/// that came back to its origin, or was applied twice, shows up here.
fn conflicts_on_disjoint_keys(sites: &[Site]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sites {
        for c in s.conflicts() {
            let key: i64 = c[1].parse().unwrap_or(0);
            if key > CONTESTED {
                out.push(format!("on {}: {c:?}", s.name));
            }
        }
    }
    out
}

/// The commit time (µs) of each contested row on a site, by key.
fn versions(site: &Site, table: &str) -> BTreeMap<i64, i64> {
    site.sql(&format!(
        "SELECT id, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint \
         FROM {table} WHERE id <= {CONTESTED}"
    ))
    .lines()
    .filter_map(|l| {
        let (k, t) = l.split_once('|')?;
        Some((k.parse().ok()?, t.parse().ok()?))
    })
    .collect()
}

fn run_mesh(n: usize) {
    let d = Dir::new();
    let names = ["a", "b", "c"];
    let mut sites: Vec<Site> = names[..n].iter().map(|s| Site::start(s)).collect();
    // Site a holds the data at start; the others are empty.
    sites[0].sql(&format!(
        "INSERT INTO items SELECT g, 'a', 0, 'seed' FROM generate_series(1, {SEED}) g;
         INSERT INTO counters SELECT g, 'a', 0 FROM generate_series(1, {SEED}) g;
         INSERT INTO hits SELECT g, 'a', 0 FROM generate_series(1, {SEED}) g;"
    ));
    // `counters`: the site listed first wins whatever the times.
    let priority: Vec<String> = names[..n]
        .iter()
        .rev()
        .map(|s| format!("\"{s}\""))
        .collect();
    let file = sites_file(
        &d,
        &sites,
        &format!(
            "[active_active]\npolicy = \"last_writer_wins\"\npriority = [{}]\n\
             [active_active.tables]\n\"public.counters\" = \"site_priority\"\n",
            priority.join(", ")
        ),
    );
    let check = Command::new(FERRY)
        .args(["check", file.to_str().unwrap()])
        .env("FERRY_LOG", "warn")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success()
            && report.contains("full mesh")
            && report.contains("replication origins"),
        "ferry check:\n{report}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut dirs = directions(&d, &sites);
    for dir in dirs.iter_mut() {
        dir.spawn(&file);
    }
    converged(&sites, &mut dirs, "the seed reaches every site");
    assert_eq!(sites[n - 1].number("SELECT count(*) FROM items"), SEED);

    // Disjoint keys, written on every site at once; a direction killed
    // (-9) in the middle and started again.
    std::thread::scope(|scope| {
        for (k, s) in sites.iter().enumerate() {
            scope.spawn(move || disjoint_writes(s, k as i64 + 1, 0));
        }
        let victim = &mut dirs[0];
        eventually_blocking(
            "the victim applies some rows",
            Duration::from_secs(60),
            || {
                let to = sites.iter().find(|s| s.name == victim.to).unwrap();
                let n = to.number("SELECT count(*) FROM items WHERE id > 10000 AND id < 20000");
                if n > 0 { Ok(()) } else { Err(n) }
            },
        );
        victim.kill9();
    });
    dirs[0].spawn(&file);
    // A site's server crashes and comes back: the directions from and to
    // it restart by themselves and resume from their checkpoints.
    sites[n - 1].pg.crash();
    sites[n - 1].pg.restart();
    std::thread::scope(|scope| {
        for (k, s) in sites.iter().enumerate() {
            scope.spawn(move || disjoint_writes(s, k as i64 + 1, 1));
        }
    });
    converged(&sites, &mut dirs, "disjoint writes reach every site");
    for s in &sites {
        // 2 rounds × 30 rows per site, a fifth deleted, plus the seed.
        assert_eq!(
            s.number("SELECT count(*) FROM items"),
            SEED + (n as i64) * 2 * 24,
            "rows on site {}",
            s.name
        );
        for t in ["counters", "hits"] {
            assert_eq!(
                s.number(&format!(
                    "SELECT count(*) FROM {t} WHERE hits <> 1 AND id > 10000"
                )),
                0,
                "a {t} change applied twice on site {}",
                s.name
            );
        }
    }
    let looped = conflicts_on_disjoint_keys(&sites);
    assert!(
        looped.is_empty(),
        "changes came back or applied twice: {looped:#?}"
    );
    for s in &sites {
        // Each site's apply sessions advanced their origins.
        assert!(
            s.number("SELECT count(*) FROM pg_replication_origin_status WHERE external_id LIKE 'ferry\\_%' AND remote_lsn > '0/0'") >= 1,
            "origin progress on site {}",
            s.name
        );
    }

    // Overlapping writes while every direction is stopped: each site
    // changes the same keys, so every incoming change is a conflict.
    for dir in dirs.iter_mut() {
        dir.stop();
    }
    for s in &sites {
        let mut sql = String::new();
        for id in 1..=CONTESTED {
            sql.push_str(&format!(
                "UPDATE items SET site = '{s}', n = n + 1, note = 'contested' WHERE id = {id};
                 UPDATE counters SET site = '{s}', hits = hits + 1 WHERE id = {id};
                 UPDATE hits SET site = '{s}', hits = hits + 1 WHERE id = {id};\n",
                s = s.name
            ));
        }
        s.sql(&sql);
    }
    // Last writer wins on `items`: per key, the site with the latest
    // commit (equal times: the greater site name).
    let last_writers = |table: &str| {
        let mut winner: BTreeMap<i64, (i64, String)> = BTreeMap::new();
        for s in &sites {
            for (k, t) in versions(s, table) {
                let e = winner.entry(k).or_insert((t, s.name.clone()));
                if (t, s.name.clone()) > *e {
                    *e = (t, s.name.clone());
                }
            }
        }
        winner
    };
    let winner = last_writers("items");
    let winner_hits = last_writers("hits");
    let before: Vec<usize> = sites.iter().map(|s| s.conflicts().len()).collect();
    for dir in dirs.iter_mut() {
        dir.spawn(&file);
    }
    converged(&sites, &mut dirs, "contested rows converge");
    for s in &sites {
        for (k, (_, w)) in &winner {
            assert_eq!(
                s.sql(&format!("SELECT site FROM items WHERE id = {k}")),
                *w,
                "last writer of items {k} on site {}",
                s.name
            );
        }
        // Site priority on `counters`: the first listed site (the last
        // created) wins every key, though it wrote first.
        assert_eq!(
            s.number(&format!(
                "SELECT count(*) FROM counters WHERE id <= {CONTESTED} AND site = '{}'",
                names[n - 1]
            )),
            CONTESTED,
            "site priority on site {}",
            s.name
        );
    }
    // Every incoming contested change to a table with whole old rows is
    // in the site's log, with the outcome the policy gives; with key-only
    // images (`hits`), those the target's newer version wins.
    let mut key_only_logged = 0;
    for (i, s) in sites.iter().enumerate() {
        let new: Vec<Vec<String>> = s.conflicts().split_off(before[i]);
        let (key_only, new): (Vec<Vec<String>>, Vec<Vec<String>>) =
            new.into_iter().partition(|c| c[0] == "public.hits");
        let expected = 2 * CONTESTED as usize * (n - 1);
        assert_eq!(new.len(), expected, "conflicts on {}: {new:#?}", s.name);
        for c in &key_only {
            let incoming = (c[6].parse::<i64>().unwrap(), c[5].clone());
            let target = (c[8].parse::<i64>().unwrap(), c[7].clone());
            assert!(incoming < target && c[4] == "kept_target", "{c:?}");
        }
        key_only_logged += key_only.len();
        for c in &new {
            let (table, kind, policy, outcome) = (&c[0], &c[2], &c[3], &c[4]);
            assert_eq!(kind, "update_differs", "{c:?}");
            let incoming = (c[6].parse::<i64>().unwrap(), c[5].clone());
            let target = (c[8].parse::<i64>().unwrap(), c[7].clone());
            let wins = if table == "public.counters" {
                assert_eq!(policy, "site_priority", "{c:?}");
                let rank = |s: &str| names[..n].iter().rev().position(|p| *p == s);
                rank(&incoming.1) < rank(&target.1)
            } else {
                assert_eq!(policy, "last_writer_wins", "{c:?}");
                incoming > target
            };
            let want = if wins {
                "applied_incoming"
            } else {
                "kept_target"
            };
            assert_eq!(outcome, want, "{c:?}");
        }
    }
    // The site that wrote a key last meets every other site's change of it.
    assert!(
        key_only_logged >= CONTESTED as usize * (n - 1),
        "{key_only_logged} key-only conflicts logged"
    );
    for s in &sites {
        for (k, (_, w)) in &winner_hits {
            assert_eq!(
                s.sql(&format!("SELECT site FROM hits WHERE id = {k}")),
                *w,
                "last writer of hits {k} on site {}",
                s.name
            );
        }
    }
    assert!(conflicts_on_disjoint_keys(&sites).is_empty());
    // `ferry status` of a direction counts the conflicts on its target.
    let status = Command::new(FERRY)
        .args(["status", file.to_str().unwrap(), "--from", "a", "--to", "b"])
        .env("FERRY_LOG", "warn")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&status.stdout);
    let want = format!("conflicts logged on site b: {}", sites[1].conflicts().len());
    assert!(report.contains(&want), "want {want:?} in:\n{report}");
    for dir in dirs.iter_mut() {
        dir.stop();
    }
}

#[test]
fn two_sites_converge_without_loops() {
    run_mesh(2);
}

#[test]
fn three_sites_converge_without_loops() {
    run_mesh(3);
}

/// A site without commit timestamps, written by a role that may not use
/// replication origins: `ferry check` names both, with the fixes, and
/// `ferry run` refuses before it installs anything on the source.
#[test]
fn refuses_a_site_without_commit_times_or_origin_rights() {
    let d = Dir::new();
    let a = Site::start("a");
    let pg = PostgresServer::start();
    pg.create_database(DB);
    pg.psql_in(
        DB,
        "CREATE TABLE items (id int PRIMARY KEY, site text NOT NULL, n int NOT NULL, note text);
         CREATE TABLE counters (id int PRIMARY KEY, site text NOT NULL, hits bigint NOT NULL);
         CREATE TABLE hits (id int PRIMARY KEY, site text NOT NULL, hits bigint NOT NULL);
         CREATE ROLE app LOGIN;
         GRANT ALL ON ALL TABLES IN SCHEMA public TO app;
         GRANT CREATE ON SCHEMA public TO app;",
    );
    let b = Site {
        name: "b".into(),
        pg,
    };
    let sites = [a, b];
    let file = sites_file(&d, &sites, "");
    // The sites file names b with the superuser: point it at `app`.
    let text = std::fs::read_to_string(&file).unwrap();
    let last = text.rfind("postgres://postgres@").unwrap();
    let text = format!(
        "{}postgres://app@{}",
        &text[..last],
        &text[last + "postgres://postgres@".len()..]
    );
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();

    let out = Command::new(FERRY)
        .args(["check", f, "--from", "a", "--to", "b"])
        .env("FERRY_LOG", "warn")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("ALTER SYSTEM SET track_commit_timestamp = on")
            && report.contains("GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text)")
            && report.contains("TO app"),
        "{report}"
    );

    let (code, output) = crate::kit::run_to_exit(
        &["run", f, "--from", "a", "--to", "b"],
        Duration::from_secs(120),
    );
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("track_commit_timestamp") && output.contains("fix:"),
        "{output}"
    );
    assert_eq!(
        sites[0].number("SELECT count(*) FROM pg_replication_slots"),
        0,
        "a slot was created on the source of a refused run"
    );
}

/// Policy `stop`: the direction that meets a conflict halts (exit 2),
/// naming the table, the key, the kind and both rows, and applies
/// nothing of the transaction.
#[test]
fn the_stop_policy_halts_with_both_rows() {
    let d = Dir::new();
    let sites: Vec<Site> = ["a", "b"].iter().map(|s| Site::start(s)).collect();
    for s in &sites {
        s.sql("INSERT INTO items VALUES (1, 'seed', 0, 'seed')");
    }
    let file = sites_file(&d, &sites, "[active_active]\npolicy = \"stop\"\n");
    let mut dirs = directions(&d, &sites);
    for dir in dirs.iter_mut() {
        dir.spawn(&file);
    }
    for dir in dirs.iter_mut() {
        dir.stop();
    }
    sites[0].sql("UPDATE items SET site = 'a', note = 'from a' WHERE id = 1");
    sites[1].sql("UPDATE items SET site = 'b', note = 'from b' WHERE id = 1");
    let (code, output) = crate::kit::run_to_exit(
        &["run", file.to_str().unwrap(), "--from", "a", "--to", "b"],
        Duration::from_secs(120),
    );
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("conflict on public.items key (1): update_differs")
            && output.contains("from a")
            && output.contains("from b")
            && output.contains("fix:"),
        "{output}"
    );
    assert_eq!(
        sites[1].sql("SELECT note FROM items WHERE id = 1"),
        "from b"
    );
}
