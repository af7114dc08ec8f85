//! The `ferry` binary: CLI, pipeline files, connector registry and
//! orchestration. The replication logic lives in the library crates.

mod config;
mod connectors;
mod report;
mod run;
mod verify;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    /// Compare source and target: row counts and checksums per table. Exit 0 when equal, 1 when not.
    Verify { pipeline: PathBuf },
    /// Remove what ferry installed on the source for this pipeline (capture triggers, change table, slots).
    Teardown { pipeline: PathBuf },
    /// Forget the pipeline's checkpoint on the target: the next run copies every table again.
    Reset { pipeline: PathBuf },
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
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

async fn dispatch(command: Command) -> Result<u8, Error> {
    match command {
        Command::Run {
            pipeline,
            metrics_addr,
        } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            let code = run::run(cfg, metrics_addr).await?;
            Ok(code as u8)
        }
        Command::Status { pipeline } => status(&PipelineConfig::load(&pipeline)?).await,
        Command::Check { pipeline } => check(&PipelineConfig::load(&pipeline)?).await,
        Command::Verify { pipeline } => verify(&PipelineConfig::load(&pipeline)?).await,
        Command::Teardown { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            connectors::open_source(&cfg).await?.teardown().await?;
            println!(
                "removed ferry's capture objects for pipeline {} from {}",
                cfg.name,
                cfg.source.display_url()
            );
            Ok(0)
        }
        Command::Reset { pipeline } => {
            let cfg = PipelineConfig::load(&pipeline)?;
            connectors::open_sink(&cfg).await?.clear().await?;
            println!(
                "forgot the checkpoint of pipeline {} on {}; the next run copies every table again",
                cfg.name,
                cfg.target.display_url()
            );
            Ok(0)
        }
    }
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
        println!(
            "  table {t}: {}",
            if p.complete {
                "copied"
            } else {
                "copy in progress"
            }
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

async fn check(cfg: &PipelineConfig) -> Result<u8, Error> {
    let mut items = Vec::new();
    match connectors::open_source(cfg).await {
        Ok(mut s) => items.extend(s.check().await),
        Err(e) => items.push(ferry_core::CheckItem::from_error("source: open", &e)),
    }
    match connectors::open_sink(cfg).await {
        Ok(s) => items.extend(s.check().await),
        Err(e) => items.push(ferry_core::CheckItem::from_error("target: open", &e)),
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

async fn verify(cfg: &PipelineConfig) -> Result<u8, Error> {
    let mut source = connectors::open_source(cfg).await?;
    let source_reader = connectors::open_source_reader(cfg).await?;
    let target_reader = connectors::open_sink_reader(cfg).await?;
    let transform = Arc::new(Transform::new(cfg.transform.clone()));
    let mut all_equal = true;
    for table in source.tables().await? {
        let target = transform.target_table(&table)?;
        let v = verify::verify_table(
            source_reader.as_ref(),
            target_reader.as_ref(),
            &table,
            &target,
            &transform,
        )
        .await?;
        let verdict = if v.equal() { "equal" } else { "DIFFERENT" };
        println!(
            "{:<24} {verdict:<9} source {} rows (checksum {:016x}), target {} rows (checksum {:016x})",
            target.name, v.source_rows, v.source_checksum, v.target_rows, v.target_checksum
        );
        if !v.equal() {
            all_equal = false;
            println!(
                "    {} missing, {} extra, {} different",
                v.missing, v.extra, v.different
            );
            for e in &v.examples {
                println!("    {e}");
            }
        }
    }
    println!(
        "{}",
        if all_equal {
            "verify: source and target are equal"
        } else {
            "verify: source and target DIFFER"
        }
    );
    Ok(if all_equal { 0 } else { 1 })
}
