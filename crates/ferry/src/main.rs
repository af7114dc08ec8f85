//! The `ferry` binary: CLI, pipeline files, connector registry and
//! orchestration. The replication logic lives in the library crates.

mod config;
mod connectors;
mod gateway;
mod repair;
mod report;
mod run;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferry_core::{CheckStatus, Error};
use ferry_pipeline::Transform;

use crate::config::PipelineConfig;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Moves data between databases and keeps the copies verifiably consistent."
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info", env = "FERRY_LOG")]
    log: String,
    /// Active-active sites file: the site this direction reads (README, "Active-active").
    #[arg(long, global = true, value_name = "SITE")]
    from: Option<String>,
    /// Active-active sites file: the site this direction writes.
    #[arg(long, global = true, value_name = "SITE")]
    to: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy the selected tables, then apply changes continuously until stopped (SIGINT/SIGTERM).
    Run {
        pipeline: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
    },
    /// Show position, lag, rates per table and what each apply worker is doing.
    Status { pipeline: PathBuf },
    /// Check connectivity, privileges, keys and log settings without changing anything.
    Check { pipeline: PathBuf },
    /// Compare source and target, row by row, and list what differs. Rows that changed while
    /// verify read them are re-checked once the running pipeline has applied them.
    /// Exit 0 when equal, 1 when not, 2 on an error.
    Verify {
        pipeline: PathBuf,
        /// `text` (a line per table, the first differences) or `json` (every differing key
        /// and field).
        #[arg(long, value_enum, default_value = "text")]
        format: verify::Format,
        /// Only this table (repeatable): `schema.table` or `table`, as the source names it.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Longest wait, in seconds, for the target to apply the rows being re-checked.
        #[arg(long, value_name = "SECS", default_value_t = 120)]
        settle: u64,
        /// `print`: write SQL in the target's dialect that makes it match (the report becomes
        /// SQL comments). `apply`: make the target match, then check again what differed;
        /// needs the pipeline stopped.
        #[arg(long, value_enum)]
        repair: Option<repair::Repair>,
        /// Read at most this many rows per second from each side, to spare a busy database
        /// (tables with a key).
        #[arg(long, value_name = "ROWS")]
        max_rows_per_sec: Option<u64>,
        /// `auto`: where both databases can digest rows (rows unchanged by the pipeline; across
        /// engines, no array column), compare digests of key ranges computed in each database
        /// and read only the ranges that differ; else stream every row. `rows`: always stream
        /// every row.
        #[arg(long, value_enum, default_value = "auto")]
        method: verify::Method,
        /// Cancel any one statement verify runs on a PostgreSQL database after this many
        /// seconds (decimals allowed), so a compare never holds a busy server for long; it then
        /// exits 2, naming the statement.
        #[arg(long, value_name = "SECS")]
        statement_timeout: Option<f64>,
        /// Tables compared at once (each one's reads as gentle as ever: the
        /// --max-rows-per-sec budget is shared).
        #[arg(long, value_name = "N", default_value_t = 1)]
        concurrency: usize,
        /// Only rows whose key is greater than this one: one value per key column,
        /// comma-separated (`1000`, `'eu',42`); tables without a key are compared whole.
        #[arg(long, value_name = "KEY")]
        after: Option<String>,
        /// Only rows whose key is at most this one (same form as --after).
        #[arg(long, value_name = "KEY")]
        until: Option<String>,
        /// Only rows for which this SQL condition holds, read so by both databases (write it
        /// so that both engines understand it: `region = 'eu' AND id > 1000`).
        #[arg(long = "where", value_name = "SQL")]
        condition: Option<String>,
        /// Compare only about this percentage of each table's key ranges (of 20,000 rows),
        /// chosen at random each run; the cuts come from the key's index, so the rest is
        /// not read.
        #[arg(long, value_name = "PERCENT", value_parser = percent)]
        sample: Option<f64>,
    },
    /// Serve the file's tables over HTTP/JSON from memory, fed by the change stream: strong
    /// reads (never older than the reader's own writes) and eventual reads (README, "Read
    /// gateway"). Runs until stopped (SIGINT/SIGTERM).
    Gateway { gateway: PathBuf },
    /// Print the source's current position as a token for `min_position=` (run it after a
    /// write commits).
    Position { gateway: PathBuf },
    /// Remove what ferry installed on the source for this pipeline (capture triggers, change table, slots).
    Teardown { pipeline: PathBuf },
    /// Forget the pipeline's checkpoint on the target: the next run copies every table again.
    Reset { pipeline: PathBuf },
    /// Set the target's sequences (PostgreSQL → PostgreSQL: those owned by the copied tables'
    /// columns) to the source's current values, so that a switchover to the target does not hand
    /// out used ids. Run it right before switching over; the copy does it once when it ends.
    SyncSequences { pipeline: PathBuf },
    /// Re-copy tables online: the running pipeline (or its next run) copies them again while
    /// changes keep flowing, and the target converges.
    Resync {
        pipeline: PathBuf,
        /// Source tables to re-copy (`name` or `schema.name`).
        tables: Vec<String>,
        /// Re-copy every selected table.
        #[arg(long, conflicts_with = "tables")]
        all: bool,
    },
}

fn init_logging(level: &str) -> Result<(), Error> {
    let level: tracing::Level = level.parse().map_err(|_| {
        Error::fatal(format!("--log {level:?} is not a log level"))
            .with_fix("use error, warn, info, debug or trace")
    })?;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    Ok(())
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("ferry: error: {}", e.report());
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A crash test with a misspelt failpoint must fail, not run uncrashed.
    if let Err(e) = ferry_core::failpoint::armed_in_env(&ferry_core::failpoint::ALL) {
        return fail(&Error::fatal(e).with_fix("fix or unset FERRY_FAILPOINTS"));
    }
    if let Err(e) = init_logging(&cli.log) {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return fail(&Error::fatal(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    let direction = config::Direction::new(cli.from, cli.to);
    match runtime.block_on(dispatch(cli.command, direction)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

async fn dispatch(command: Command, dir: config::Direction) -> Result<u8, Error> {
    match command {
        Command::Run {
            pipeline,
            metrics_addr,
        } => {
            let cfg = PipelineConfig::load_for(&pipeline, &dir)?;
            let code = run::run(cfg, metrics_addr).await?;
            Ok(code as u8)
        }
        Command::Gateway { gateway } => Ok(gateway::run(&gateway).await? as u8),
        Command::Position { gateway } => Ok(gateway::position(&gateway).await? as u8),
        Command::Status { pipeline } => status(&PipelineConfig::load_for(&pipeline, &dir)?).await,
        Command::Check { pipeline } => match PipelineConfig::sites_of(&pipeline)? {
            // A sites file without a direction: the topology, and every
            // direction checked.
            Some(sites) if dir.from.is_none() && dir.to.is_none() => {
                let mut code = 0;
                let all = config::directions(&sites);
                println!(
                    "sites: {}; {} directions (full mesh: each site forwards only its own writes)",
                    sites.join(", "),
                    all.len()
                );
                for (from, to) in all {
                    let d = config::Direction::new(Some(from.clone()), Some(to.clone()));
                    let cfg = PipelineConfig::load_for(&pipeline, &d)?;
                    println!("\n== {from} -> {to} (pipeline {}) ==", cfg.name);
                    code = code.max(check(&cfg).await?);
                }
                Ok(code)
            }
            _ => check(&PipelineConfig::load_for(&pipeline, &dir)?).await,
        },
        Command::Verify {
            pipeline,
            format,
            tables,
            settle,
            repair,
            max_rows_per_sec,
            method,
            statement_timeout,
            concurrency,
            after,
            until,
            condition,
            sample,
        } => {
            let opts = verify::Options {
                format,
                tables,
                settle: std::time::Duration::from_secs(settle),
                repair,
                max_rows_per_sec,
                method,
                statement_timeout: statement_timeout
                    .map(|s| std::time::Duration::from_secs_f64(s.max(0.001))),
                concurrency,
                after,
                until,
                condition,
                sample,
            };
            verify::run(&PipelineConfig::load_for(&pipeline, &dir)?, &opts)
                .await
                .map_err(|e| verify::explain_timeout(e, &opts))
        }
        Command::Teardown { pipeline } => {
            // A gateway node's slot outlives the node, too.
            let cfg = PipelineConfig::load_for(&pipeline, &dir).or_else(|e| {
                PipelineConfig::load_gateway(&pipeline)
                    .map(|(cfg, _)| cfg)
                    .map_err(|_| e)
            })?;
            connectors::open_source(&cfg).await?.teardown().await?;
            println!(
                "removed ferry's capture objects for pipeline {} from {}",
                cfg.name,
                cfg.source.display_url()
            );
            Ok(0)
        }
        Command::Resync {
            pipeline,
            tables,
            all,
        } => resync(&PipelineConfig::load_for(&pipeline, &dir)?, &tables, all).await,
        Command::SyncSequences { pipeline } => {
            sync_sequences(&PipelineConfig::load_for(&pipeline, &dir)?).await
        }
        Command::Reset { pipeline } => {
            let cfg = PipelineConfig::load_for(&pipeline, &dir)?;
            let sink = connectors::open_sink(&cfg).await?;
            // Not under a running pipeline: it would go on from where it is.
            sink.fence().await?;
            sink.clear().await?;
            println!(
                "forgot the checkpoint of pipeline {} on {}; the next run copies every table again",
                cfg.name,
                cfg.target.display_url()
            );
            Ok(0)
        }
    }
}

/// `ferry sync-sequences`: changes only sequence values, so it may run
/// beside the running pipeline.
async fn sync_sequences(cfg: &PipelineConfig) -> Result<u8, Error> {
    let mut source = connectors::open_source(cfg).await?;
    let sink = connectors::open_sink(cfg).await?;
    let transform = Transform::new(cfg.transform.clone());
    let tables = source.tables().await?;
    let targets = tables
        .iter()
        .map(|t| transform.target_table(t))
        .collect::<Result<Vec<_>, Error>>()?;
    let sequences =
        ferry_pipeline::share_shapes(source.as_mut(), sink.as_ref(), &tables, &targets).await?;
    let values = ferry_pipeline::sync_sequences(source.as_mut(), sink.as_ref(), &sequences).await?;
    if values.is_empty() {
        println!(
            "no sequence to synchronise: the source's tables own none, or source and target are \
             not both PostgreSQL"
        );
    }
    for v in &values {
        println!(
            "sequence {}: {}{}",
            v.name,
            v.last_value,
            if v.is_called { "" } else { " (not used yet)" }
        );
    }
    Ok(0)
}

async fn status(cfg: &PipelineConfig) -> Result<u8, Error> {
    let sink = connectors::open_sink(cfg).await?;
    let cp = sink.load().await?;
    println!(
        "pipeline {} ({} -> {})",
        cfg.name,
        cfg.source.display_url(),
        cfg.target.display_url()
    );
    match &cp.applied {
        Some(p) => println!("  checkpoint: applied up to {p}"),
        None => println!("  checkpoint: no change applied yet"),
    }
    for (t, p) in &cp.tables {
        let recopy = match cp.recopies.get(t) {
            Some(r) if !r.is_done() => format!(
                "; re-copying online ({}){}",
                r.reason,
                r.after
                    .as_deref()
                    .map(|k| format!(", up to key {}", ferry_core::display_key(k)))
                    .unwrap_or_default()
            ),
            Some(r) => format!(
                "; re-copied online at {}",
                r.done.as_ref().map(|p| p.to_string()).unwrap_or_default()
            ),
            None => String::new(),
        };
        let state = match (p.complete, p.ranges.is_empty()) {
            (true, _) => "copied",
            (false, false) => "copy in progress",
            (false, true) => "not copied (copied when next selected and run)",
        };
        println!("  table {t}: {state}{recopy}");
    }
    if let Some(active) = &cfg.active_active {
        println!(
            "  active-active: site {} -> site {}; conflicts logged on site {}: {}",
            active.source_site,
            active.target_site,
            active.target_site,
            conflicts_logged(cfg).await
        );
    }
    match std::fs::read_to_string(cfg.status_path())
        .ok()
        .and_then(|s| serde_json::from_str::<report::StatusReport>(&s).ok())
    {
        Some(r) => {
            let age = (ferry_pipeline::stats::now_micros() - r.updated_micros) as f64 / 1e6;
            let live = age < 5.0;
            print!("{}", report::render(&r, live));
            println!("  (published {age:.1} s ago; a running pipeline publishes every second)");
        }
        None => println!("  not running (no live status published)"),
    }
    Ok(0)
}

/// Writes a re-copy request per table into the source's change log, where
/// the pipeline meets it in stream order.
async fn resync(cfg: &PipelineConfig, names: &[String], all: bool) -> Result<u8, Error> {
    if names.is_empty() && !all {
        return Err(Error::fatal("ferry resync needs the tables to re-copy")
            .with_fix("name them (`ferry resync P.toml orders public.users`) or pass --all"));
    }
    let mut source = connectors::open_source(cfg).await?;
    let selected = source.tables().await?;
    let mut chosen = Vec::new();
    if all {
        chosen.extend(selected.iter().map(|t| t.name.clone()));
    }
    for n in names {
        let found = selected
            .iter()
            .find(|t| t.name.to_string() == *n || t.name.name == *n)
            .ok_or_else(|| {
                Error::fatal(format!(
                    "table {n:?} is not one of pipeline {}'s tables",
                    cfg.name
                ))
                .with_fix(format!(
                    "use one of: {}",
                    selected
                        .iter()
                        .map(|t| t.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        chosen.push(found.name.clone());
    }
    for name in &chosen {
        source.request_recopy(name).await?;
        println!(
            "requested an online re-copy of {name}: the running pipeline starts it where it meets \
             the request in the change stream (or its next run does)"
        );
    }
    Ok(0)
}

async fn check(cfg: &PipelineConfig) -> Result<u8, Error> {
    let mut items = Vec::new();
    let mut source = match connectors::open_source(cfg).await {
        Ok(mut s) => {
            items.extend(s.check().await);
            Some(s)
        }
        Err(e) => {
            items.push(ferry_core::CheckItem::from_error("source: open", &e));
            None
        }
    };
    let sink = match connectors::open_sink(cfg).await {
        Ok(s) => {
            items.extend(s.check().await);
            Some(s)
        }
        Err(e) => {
            items.push(ferry_core::CheckItem::from_error("target: open", &e));
            None
        }
    };
    if let (Some(source), Some(sink)) = (source.as_mut(), sink.as_ref()) {
        items.push(different_databases(cfg, source.as_mut(), sink.as_ref()).await);
    }
    for i in &items {
        println!("{i}");
    }
    let failed = items
        .iter()
        .filter(|i| i.status == CheckStatus::Fail)
        .count();
    println!("{} checks, {} failed", items.len(), failed);
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Rows of the target's conflict log (every direction into that site), or
/// why they cannot be counted.
async fn conflicts_logged(cfg: &PipelineConfig) -> String {
    let table = std::sync::Arc::new(ferry_core::TableSchema {
        name: ferry_core::TableName::new(Some("public"), ferry_postgres::CONFLICTS_TABLE),
        columns: Vec::new(),
        key: Vec::new(),
        version: 0,
        key_deferrable: false,
    });
    let counted = async {
        let reader = connectors::open_sink_reader(cfg).await?;
        if !reader.has_table(&table).await? {
            return Ok::<_, Error>(0);
        }
        reader.count_rows(&table).await
    };
    match counted.await {
        Ok(n) => n.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// The check item saying whether source and target are two databases.
async fn different_databases(
    cfg: &PipelineConfig,
    source: &mut dyn ferry_core::Source,
    sink: &dyn ferry_core::Sink,
) -> ferry_core::CheckItem {
    const NAME: &str = "source and target are different databases";
    let ids = async { Ok::<_, Error>((source.identity().await?, sink.identity().await?)) };
    match ids.await.and_then(|(s, t)| {
        ferry_pipeline::different_databases(&cfg.name, s.as_deref(), t.as_deref()).map(|()| (s, t))
    }) {
        Ok((Some(_), Some(_))) => ferry_core::CheckItem::ok(NAME, "their identities differ"),
        Ok(_) => ferry_core::CheckItem::warn(
            NAME,
            "not compared: a connector cannot tell which database it reaches",
            "make sure `source.url` and `target.url` name two different databases",
        ),
        Err(e) => ferry_core::CheckItem::from_error(NAME, &e),
    }
}

/// A percentage above 0, up to 100.
fn percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("{s:?} is not a percentage above 0, up to 100")),
    }
}
