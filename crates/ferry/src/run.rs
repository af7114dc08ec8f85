//! `ferry run`: runs a pipeline until stopped, restarting it after
//! transient errors, with progress, a status file and metrics.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::{Action, Error, ErrorClass, Level, RetryBudget, policy};
use ferry_pipeline::{Outcome, Pipeline, Stats, Transform};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

use crate::config::{PipelineConfig, humantime};
use crate::connectors;
use crate::report::{RateTracker, StatusReport, prometheus};

/// Sets the shutdown flag on the first SIGINT/SIGTERM; a second one exits at once.
pub(crate) fn install_signals(tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot install signal handlers; stop ferry with kill -9 only");
            return;
        };
        for n in 0.. {
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            if n == 0 {
                eprintln!(
                    "ferry: stopping — draining apply workers to a consistent position (signal again to exit at once)"
                );
                let _ = tx.send(true);
            } else {
                eprintln!(
                    "ferry: exiting without draining; the next run resumes from the last checkpoint"
                );
                std::process::exit(130);
            }
        }
    });
}

/// Publishes status every second: status file, metrics snapshot, progress.
fn spawn_reporter(
    cfg: &PipelineConfig,
    stats: Arc<Stats>,
    latest: Arc<Mutex<Option<StatusReport>>>,
) {
    let path = cfg.status_path();
    let name = cfg.name.clone();
    let tty = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let mut rates = RateTracker::default();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>20} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> ");
        let mut bars: std::collections::BTreeMap<String, ProgressBar> = Default::default();
        let mut tick = 0u64;
        loop {
            tick += 1;
            let report = rates.report(&name, &stats);
            if let Ok(json) = serde_json::to_string_pretty(&report) {
                let tmp = path.with_extension("status.tmp");
                if std::fs::write(&tmp, json).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
            if report.phase == "snapshot" || bars.values().any(|b| !b.is_finished()) {
                for (t, s) in &report.tables {
                    let bar = bars.entry(t.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new(s.snapshot_total.unwrap_or(0)));
                        b.set_style(style.clone());
                        b.set_prefix(t.clone());
                        b
                    });
                    if let Some(total) = s.snapshot_total {
                        bar.set_length(total.max(s.snapshot_rows));
                    }
                    bar.set_position(s.snapshot_rows);
                    if s.snapshot_done && !bar.is_finished() {
                        bar.finish();
                    }
                }
            }
            if !tty && tick.is_multiple_of(5) {
                eprintln!(
                    "ferry: {} | {:.0} rows/s | applied {} | lag {:.2}s | queue {} | snapshot rows {} | changes {}",
                    report.phase,
                    report.rows_per_sec,
                    report.applied_position,
                    report.lag_secs,
                    report.queue_events,
                    report.snapshot_rows,
                    report.rows_applied
                );
            }
            *latest.lock().expect("status") = Some(report);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn serve_metrics(
    addr: SocketAddr,
    latest: Arc<Mutex<Option<StatusReport>>>,
) -> Result<(), Error> {
    use axum::{Router, routing::get};
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::fatal(format!("cannot listen on --metrics-addr {addr}: {e}"))
            .with_fix("choose a free address, e.g. 127.0.0.1:9187")
    })?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let latest = latest.clone();
            async move {
                latest
                    .lock()
                    .expect("status")
                    .as_ref()
                    .map(prometheus)
                    .unwrap_or_default()
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok(())
}

/// Fills in snapshot totals for progress bars, off the start-up path.
fn spawn_totals(cfg: &PipelineConfig, stats: Arc<Stats>, transform: Arc<Transform>) {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let (Ok(mut source), Ok(reader)) = (
            connectors::open_source(&cfg).await,
            connectors::open_source_reader(&cfg).await,
        ) else {
            return;
        };
        let Ok(tables) = source.tables().await else {
            return;
        };
        for t in tables {
            if let (Ok(n), Ok(target)) =
                (reader.estimate_rows(&t).await, transform.target_table(&t))
            {
                stats.table(&target.name.to_string(), |s| s.snapshot_total = Some(n));
            }
        }
    });
}

/// Runs the pipeline; returns the process exit code.
pub async fn run(cfg: PipelineConfig, metrics_addr: Option<SocketAddr>) -> Result<i32, Error> {
    let (tx, shutdown) = watch::channel(false);
    install_signals(tx);
    let stats = Arc::new(Stats::new());
    let latest = Arc::new(Mutex::new(None));
    if let Some(addr) = metrics_addr {
        serve_metrics(addr, latest.clone()).await?;
    }
    spawn_reporter(&cfg, stats.clone(), latest);
    let transform = Arc::new(Transform::new(cfg.transform.clone()));
    spawn_totals(&cfg, stats.clone(), transform.clone());
    tracing::info!(pipeline = %cfg.name, source = %cfg.source.display_url(), target = %cfg.target.display_url(), "starting");

    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }

    let budget = cfg.options.retry_budget();
    let mut failing: Option<Failing> = None;
    loop {
        let started = Instant::now();
        let progress_before = progress(&stats);
        let result = async {
            let pipeline = Pipeline {
                source: connectors::open_source(&cfg).await?,
                sink: connectors::open_sink(&cfg).await?,
                transform: transform.clone(),
                options: cfg.options.clone(),
                stats: stats.clone(),
                shutdown: shutdown.clone(),
            };
            pipeline.run().await
        }
        .await;
        let e = match result {
            Ok(Outcome::Stopped) => {
                let applied = stats.applied().position;
                eprintln!(
                    "ferry: stopped cleanly at {}",
                    if applied.is_empty() {
                        "the start".into()
                    } else {
                        applied
                    }
                );
                let _ = std::fs::remove_file(cfg.status_path());
                return Ok(0);
            }
            Err(e) if e.class() == ErrorClass::Transient && !*shutdown.borrow() => e,
            Err(e) => return Err(e),
        };
        // A run that made progress, or stayed up a while, ends a series of
        // failures: the next one starts the clock afresh.
        let healthy = progress(&stats) > progress_before || started.elapsed() >= HEALTHY_RUN;
        let f = match &mut failing {
            Some(f) if !healthy => f,
            _ => failing.insert(Failing {
                // A failed start counts from its start; a healthy run's
                // failure from now.
                since: if healthy { Instant::now() } else { started },
                attempts: 0,
            }),
        };
        let failing_for = f.since.elapsed();
        let wait = match policy(&e, Level::Restart, f.attempts, failing_for, &budget) {
            Action::Retry(wait) => wait,
            Action::Escalate | Action::Halt => {
                return Err(give_up(e, failing_for, f.attempts + 1, &budget));
            }
        };
        f.attempts += 1;
        Stats::add(&stats.restarts, 1);
        stats.set_last_error(e.to_string());
        let left = budget.give_up_after.saturating_sub(failing_for);
        stats.set_phase(&format!(
            "restarting in {} (attempt {}, giving up in {})",
            humantime(wait),
            f.attempts,
            humantime(left)
        ));
        eprintln!(
            "ferry: transient error (attempt {}, failing for {}); restarting from the last \
             checkpoint in {}, giving up in {}: {}",
            f.attempts,
            humantime(failing_for),
            humantime(wait),
            humantime(left),
            e.report()
        );
        let mut sd = shutdown.clone();
        tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = sd.wait_for(|s| *s) => return Ok(0) }
    }
}

/// A run that lasted this long counts as healthy even without a commit
/// (an idle source).
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// A series of failed runs with no progress in between.
struct Failing {
    /// When the first run of the series started.
    since: Instant,
    /// Restarts so far.
    attempts: u32,
}

/// What the target took so far: commits and copied rows.
fn progress(stats: &Stats) -> u64 {
    Stats::get(&stats.commits) + Stats::get(&stats.snapshot_rows)
}

/// The error ferry stops with once transient failures outlast
/// `apply.give_up_after`.
fn give_up(last: Error, failing_for: Duration, attempts: u32, budget: &RetryBudget) -> Error {
    Error::fatal(format!(
        "giving up: the pipeline kept failing for {} ({attempts} attempts), as long as \
         apply.give_up_after = {} allows",
        humantime(failing_for),
        humantime(budget.give_up_after)
    ))
    .with_fix(format!(
        "{}; then start ferry again (it resumes from the checkpoint). To keep trying longer \
         through outages, raise apply.give_up_after",
        last.fix().unwrap_or("fix the cause named above")
    ))
    .with_source(last)
}
