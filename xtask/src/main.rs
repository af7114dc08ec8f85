//! Repository tasks, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! `cargo xtask bench sqlite [--rows N] [--changes N] [--runs N] [--keep]`
//! measures ferry SQLite → SQLite against the physical limit and
//! `sqlite3 .dump`, on the same data in one run (see `docs/BENCHMARKS.md`).
//!
//! `cargo xtask bench postgres [--rows N] [--changes N] [--clients N]
//! [--live-secs N] [--keep]` measures ferry PostgreSQL → PostgreSQL against
//! the binary COPY pipe, `pg_dump | psql`, pgcopydb and native logical
//! replication, on two clusters it starts itself.
//!
//! `cargo xtask bench mariadb [--rows N] [--changes N] [--keep]` measures
//! ferry MariaDB → MariaDB and MariaDB → PostgreSQL against `mysqldump |
//! mariadb`, mydumper/myloader and MariaDB's own replicas.
//!
//! `cargo xtask bench gateway [--rows N] [--secs N] [--reads N] [--writes N]
//! [--keep]` measures read latency of two `ferry gateway` nodes under a
//! write load, beside direct primary reads and a waiting streaming replica.
//!
//! `cargo xtask bench active-active [--sites 2,3] [--secs N] [--writers N]
//! [--keep]` measures two and three PostgreSQL sites written at once,
//! replicated by ferry both ways and by pglogical, beside one-way ferry.
//!
//! `cargo xtask bench verify [--rows N] [--keep]` measures `ferry verify`
//! between two PostgreSQL databases holding the same table: row by row,
//! by in-database range digests (equal, and with 10 rows changed), beside
//! `pgcopydb compare data` and one in-database pass over the table; then
//! across engines, SQLite → PostgreSQL and MariaDB → PostgreSQL.

mod aa_bench;
mod data;
mod gateway_bench;
mod machine;
mod maria_bench;
mod pg_bench;
mod pg_client;
mod pg_report;
mod pg_server;
mod process;
mod report;
mod sqlite_bench;
mod verify_bench;

use std::process::ExitCode;

/// Errors are plain messages that already say what failed and where.
pub type Res<T> = Result<T, String>;

/// Adds what was being done to an error.
pub trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

const USAGE: &str = "\
usage: cargo xtask bench sqlite [--rows N] [--changes N] [--runs N] [--keep]
       cargo xtask bench postgres [--rows N] [--changes N] [--clients N] [--live-secs N] [--keep]
       cargo xtask bench mariadb [--rows N] [--changes N] [--keep]
       cargo xtask bench verify [--rows N] [--keep]
       cargo xtask bench gateway [--rows N] [--secs N] [--reads N] [--writes N] [--keep]
       cargo xtask bench active-active [--sites 2,3] [--secs N] [--writers N] [--keep]

bench mariadb (starts its own MariaDB and PostgreSQL servers; needs
apt-get install -y mariadb-server mariadb-client mydumper):
  --rows N       rows in the source table (default 5000000)
  --changes N    single-row transactions in the CDC backlog (default 100000)
  --keep         keep the work directory

bench sqlite:
  --rows N       rows in the source table (default 1000000; 250k, 1M, 1_000_000 also work)
  --changes N    row changes for each CDC phase (default 200000)
  --runs N       repeat each snapshot method N times and report the median (default 1)
  --keep         keep the work directory (databases, pipeline files, ferry logs)

bench postgres (starts its own source and target clusters; needs PostgreSQL,
pgbench and pgcopydb: apt-get install -y postgresql pgcopydb):
  --rows N       rows in the source table (default 5000000)
  --changes N    single-row UPDATE transactions in the CDC backlog (default 200000)
  --clients N    pgbench clients (default 4)
  --live-secs N  seconds of pgbench with ferry running, for rate and lag (default 15; 0 skips)
  --keep         keep the work directory (clusters, pipeline files, logs)

bench verify (starts its own source and target clusters, the same table in
each; needs PostgreSQL; pgcopydb 0.13 or later for `compare data`, else that
baseline is skipped; MariaDB for the MariaDB → PostgreSQL part, else skipped):
  --rows N       rows in the table on each side (default 1000000, at least 10)
  --keep         keep the work directory (clusters, pipeline file, verify output)

bench gateway (starts a primary, a streaming replica and two gateway nodes;
needs PostgreSQL):
  --rows N       rows in the table (default 100000)
  --secs N       seconds per phase (default 20)
  --reads N      point reads per second (default 4000; the waiting replica at most 1000)
  --writes N     single-row UPDATEs per second through every phase (default 500)
  --keep         keep the work directory (clusters, gateway files and logs)

Builds ferry (`cargo build --release -p ferry` into $CARGO_TARGET_DIR, default
~/.cache/ferry-target), then prints a markdown report on stdout; progress goes
to stderr.";

/// Options of `bench sqlite`, validated.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    pub rows: u64,
    pub changes: u64,
    pub runs: u32,
    pub keep: bool,
    /// The command as typed, for the report.
    pub command: String,
}

/// Parses `1000000`, `1_000_000`, `250k`, `1M`.
fn parse_count(flag: &str, s: &str) -> Res<u64> {
    let clean = s.replace('_', "");
    let (digits, mult) = match clean.chars().last() {
        Some('k' | 'K') => (&clean[..clean.len() - 1], 1_000),
        Some('m' | 'M') => (&clean[..clean.len() - 1], 1_000_000),
        _ => (clean.as_str(), 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{flag} {s:?} is not a count (write e.g. 1000000, 1M, 250k)"))
}

/// Calls `on_flag` with each flag (`--name` or `--name=value`) and a
/// function that takes its value (inline, else the next argument).
fn each_flag(
    args: &[String],
    mut on_flag: impl FnMut(&str, &mut dyn FnMut() -> Res<String>) -> Res<()>,
) -> Res<()> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Res<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        on_flag(flag, &mut value)?;
    }
    Ok(())
}

fn parse_bench_sqlite(args: &[String], command: String) -> Res<BenchOpts> {
    let mut opts = BenchOpts {
        rows: 1_000_000,
        changes: 200_000,
        runs: 1,
        keep: false,
        command,
    };
    each_flag(args, |flag, value| {
        match flag {
            "--rows" => opts.rows = parse_count(flag, &value()?)?,
            "--changes" => opts.changes = parse_count(flag, &value()?)?,
            "--runs" => {
                opts.runs = u32::try_from(parse_count(flag, &value()?)?)
                    .map_err(|_| "--runs is too large".to_owned())?
            }
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
        Ok(())
    })?;
    if opts.rows < 4 {
        return Err("--rows must be at least 4 (the RSS check copies rows/4)".into());
    }
    if opts.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(opts)
}

fn parse_bench_postgres(args: &[String], command: String) -> Res<pg_bench::PgOpts> {
    let mut opts = pg_bench::PgOpts {
        rows: 5_000_000,
        changes: 200_000,
        clients: 4,
        live_secs: 15,
        keep: false,
        command,
    };
    let small =
        |flag: &str, n: u64| u32::try_from(n).map_err(|_| format!("{flag} {n} is too large"));
    each_flag(args, |flag, value| {
        match flag {
            "--rows" => opts.rows = parse_count(flag, &value()?)?,
            "--changes" => opts.changes = parse_count(flag, &value()?)?,
            "--clients" => opts.clients = small(flag, parse_count(flag, &value()?)?)?,
            "--live-secs" => opts.live_secs = small(flag, parse_count(flag, &value()?)?)?,
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
        Ok(())
    })?;
    if opts.rows < 2 {
        return Err("--rows must be at least 2 (the RSS check copies rows/2)".into());
    }
    if opts.clients == 0 || opts.changes < u64::from(opts.clients) {
        return Err("--clients must be at least 1 and at most --changes".into());
    }
    Ok(opts)
}

fn parse_bench_verify(args: &[String], command: String) -> Res<verify_bench::VerifyOpts> {
    let mut opts = verify_bench::VerifyOpts {
        rows: 1_000_000,
        keep: false,
        command,
    };
    each_flag(args, |flag, value| {
        match flag {
            "--rows" => opts.rows = parse_count(flag, &value()?)?,
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
        Ok(())
    })?;
    if opts.rows < verify_bench::CHANGED {
        return Err(format!(
            "--rows must be at least {} (the bench changes that many rows)",
            verify_bench::CHANGED
        ));
    }
    Ok(opts)
}

fn parse_bench_mariadb(args: &[String], command: String) -> Res<maria_bench::MariaOpts> {
    let mut opts = maria_bench::MariaOpts {
        rows: 5_000_000,
        changes: 100_000,
        keep: false,
        command,
    };
    each_flag(args, |flag, value| {
        match flag {
            "--rows" => opts.rows = parse_count(flag, &value()?)?,
            "--changes" => opts.changes = parse_count(flag, &value()?)?,
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
        Ok(())
    })?;
    if opts.rows == 0 || opts.changes == 0 {
        return Err("--rows and --changes must be at least 1".to_owned());
    }
    Ok(opts)
}

fn parse_bench_aa(args: &[String], command: String) -> Res<aa_bench::AaOpts> {
    let mut opts = aa_bench::AaOpts {
        sites: vec![2, 3],
        secs: 20,
        writers: 4,
        keep: false,
        command,
    };
    each_flag(args, |flag, value| {
        match flag {
            "--sites" => {
                opts.sites = value()?
                    .split(',')
                    .map(|s| match s.trim().parse::<usize>() {
                        Ok(n) if (2..=5).contains(&n) => Ok(n),
                        _ => Err(format!("--sites takes numbers from 2 to 5, not {s:?}")),
                    })
                    .collect::<Res<Vec<usize>>>()?
            }
            "--secs" => opts.secs = parse_count(flag, &value()?)?,
            "--writers" => opts.writers = parse_count(flag, &value()?)? as usize,
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
        Ok(())
    })?;
    if opts.secs == 0 || opts.writers == 0 {
        return Err("--secs and --writers must be at least 1".into());
    }
    Ok(opts)
}

fn parse_bench_gateway(args: &[String], command: String) -> Res<gateway_bench::GwOpts> {
    let mut opts = gateway_bench::GwOpts {
        rows: 100_000,
        secs: 20,
        reads: 4_000,
        writes: 500,
        keep: false,
        command,
    };
    each_flag(args, |flag, value| {
        match flag {
            "--rows" => opts.rows = parse_count(flag, &value()?)?,
            "--secs" => opts.secs = parse_count(flag, &value()?)?,
            "--reads" => opts.reads = parse_count(flag, &value()?)?,
            "--writes" => opts.writes = parse_count(flag, &value()?)?,
            "--keep" => opts.keep = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
        Ok(())
    })?;
    if opts.rows == 0 || opts.secs == 0 || opts.reads == 0 || opts.writes == 0 {
        return Err("--rows, --secs, --reads and --writes must be at least 1".into());
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("cargo xtask {}", args.join(" "));
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "sqlite", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_sqlite(&rest, command).and_then(|o| sqlite_bench::run(&o))
        }
        ["bench", "postgres", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_postgres(&rest, command).and_then(|o| pg_bench::run(&o))
        }
        ["bench", "mariadb", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_mariadb(&rest, command).and_then(|o| maria_bench::run(&o))
        }
        ["bench", "verify", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_verify(&rest, command).and_then(|o| verify_bench::run(&o))
        }
        ["bench", "gateway", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_gateway(&rest, command).and_then(|o| gateway_bench::run(&o))
        }
        ["bench", "active-active", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_aa(&rest, command).and_then(|o| aa_bench::run(&o))
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Res<BenchOpts> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        parse_bench_sqlite(&args, String::new())
    }

    #[test]
    fn defaults_and_counts() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.rows, o.changes, o.runs, o.keep),
            (1_000_000, 200_000, 1, false)
        );
        let o = parse(&["--rows", "250k", "--changes=1_000", "--runs", "3", "--keep"]).unwrap();
        assert_eq!(
            (o.rows, o.changes, o.runs, o.keep),
            (250_000, 1_000, 3, true)
        );
        assert_eq!(parse(&["--rows", "2M"]).unwrap().rows, 2_000_000);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--rows"]).unwrap_err().contains("needs a value"));
        assert!(
            parse(&["--rows", "many"])
                .unwrap_err()
                .contains("not a count")
        );
        assert!(parse(&["--fast"]).unwrap_err().contains("unknown argument"));
        assert!(parse(&["--runs", "0"]).is_err());
    }

    #[test]
    fn postgres_options() {
        let parse = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_postgres(&args, String::new())
        };
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.rows, o.changes, o.clients, o.live_secs, o.keep),
            (5_000_000, 200_000, 4, 15, false)
        );
        let o = parse(&[
            "--rows",
            "2M",
            "--changes=50k",
            "--clients",
            "8",
            "--live-secs",
            "0",
        ])
        .unwrap();
        assert_eq!(
            (o.rows, o.changes, o.clients, o.live_secs),
            (2_000_000, 50_000, 8, 0)
        );
        assert!(parse(&["--clients", "0"]).is_err());
        assert!(parse(&["--rows", "1"]).is_err());
        assert!(parse(&["--rows", "2"]).is_ok());
        assert!(
            parse(&["--runs", "3"])
                .unwrap_err()
                .contains("unknown argument")
        );
    }

    #[test]
    fn verify_options() {
        let parse = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
            parse_bench_verify(&args, String::new())
        };
        let o = parse(&[]).unwrap();
        assert_eq!((o.rows, o.keep), (1_000_000, false));
        let o = parse(&["--rows=20k", "--keep"]).unwrap();
        assert_eq!((o.rows, o.keep), (20_000, true));
        assert!(parse(&["--rows", "9"]).is_err());
        assert!(parse(&["--rows", "10"]).is_ok());
        assert!(
            parse(&["--changes", "5"])
                .unwrap_err()
                .contains("unknown argument")
        );
    }
}
