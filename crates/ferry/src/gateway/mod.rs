//! `ferry gateway`: a read node that holds chosen tables in memory, fed by
//! the change stream, and serves them over HTTP/JSON with session
//! guarantees (docs/adr/0013-read-gateway.md).
//!
//! Construction → wiring → running:
//!
//! * [`run`] validates the file, connects the position [`Probe`] (which
//!   also names the source's epoch) and starts the HTTP server;
//! * [`supervise`] runs the ordinary [`Pipeline`] into a [`MemorySink`]
//!   (snapshot, then the change stream), restarting it from the in-memory
//!   checkpoint after a broken stream;
//! * [`Node`] is what the HTTP handlers share: the replica, the pipeline's
//!   stats (its "target consistent" signal), the shared [`Lookups`] and
//!   the stream's health. Strong reads are refused (503) while anything
//!   says the replica may be stale; eventual reads say how stale it is.

mod config;
mod http;
mod lookup;
mod replica;
mod sink;
mod token;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::{Error, ErrorClass, Result};
use ferry_pipeline::{Consistency, Outcome, Pipeline, Stats, TargetConsistency, Transform};
use tokio::sync::{Notify, watch};

use crate::config::{PipelineConfig, humantime};
use crate::connectors;
pub use config::GatewayOptions;
use lookup::{Lookup, Lookups, PgProbe, Probe, SqliteProbe};
use replica::Replica;
use sink::MemorySink;
use token::{Point, Token};

/// Whether the change stream is flowing, as the supervisor sees it.
#[derive(Debug, Clone)]
enum StreamState {
    Running,
    Broken { reason: String, since: Instant },
}

/// How fresh the replica is known to be, from lookups it has applied.
#[derive(Debug, Default)]
struct Freshness {
    /// Start of the newest lookup whose position the replica has applied:
    /// the replica holds every transaction committed before this instant.
    synced_at: Option<Instant>,
    /// Lookups not applied yet, oldest first.
    waiting: VecDeque<(Point, Instant)>,
}

/// Where strong reads spend their time, summed since the node started
/// (`/status` → `strong_wait`): waiting for a lookup that started after
/// the read arrived, then for the replica to apply its position; and how
/// often a waiting read had to ask for another lookup.
#[derive(Debug, Default)]
struct StrongWait {
    reads: AtomicU64,
    lookup_micros: AtomicU64,
    apply_micros: AtomicU64,
    nudges: AtomicU64,
}

impl StrongWait {
    fn record(&self, lookup: Duration, apply: Duration) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.lookup_micros
            .fetch_add(lookup.as_micros() as u64, Ordering::Relaxed);
        self.apply_micros
            .fetch_add(apply.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Strong reads waiting for the replica to apply a looked-up position, by
/// that position: the readers of one lookup share one entry, and each is
/// woken once, when the applied position covers it. Waking every waiting
/// reader on every commit (a `watch` each) made the work per commit grow
/// with the readers waiting, so a node that fell behind under load stayed
/// behind for seconds.
#[derive(Debug, Default)]
struct Waiters {
    by_point: Mutex<BTreeMap<Point, Arc<Notify>>>,
}

impl Waiters {
    /// The notification for `target`, shared by every reader waiting for it.
    fn register(&self, target: Point) -> Arc<Notify> {
        let mut map = self.by_point.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(target).or_default().clone()
    }

    /// A reader stops waiting (answered or refused): the entry goes with
    /// its last reader.
    fn leave(&self, target: Point, notify: Arc<Notify>) {
        let mut map = self.by_point.lock().unwrap_or_else(|e| e.into_inner());
        // Counted under the lock: the map's reference and this one. The
        // entry may be gone already (woken), or be a newer one for the
        // same position.
        if map.get(&target).is_some_and(|n| Arc::ptr_eq(n, &notify))
            && Arc::strong_count(&notify) == 2
        {
            map.remove(&target);
        }
    }

    /// Wakes the readers of every position `applied` covers.
    fn applied(&self, applied: Point) {
        let mut map = self.by_point.lock().unwrap_or_else(|e| e.into_inner());
        let covered: Vec<Point> = map
            .range(..=applied)
            .map(|(p, _)| *p)
            .filter(|p| applied.covers(p) == Some(true))
            .collect();
        for p in covered {
            if let Some(n) = map.remove(&p) {
                n.notify_waiters();
            }
        }
    }
}

/// What every request handler shares.
pub struct Node {
    replica: Arc<Replica>,
    stats: Arc<Stats>,
    lookups: Arc<Lookups>,
    epoch: String,
    options: GatewayOptions,
    stream: watch::Sender<StreamState>,
    freshness: Mutex<Freshness>,
    /// The replica reached a consistent position once: eventual reads are
    /// served from then on, whatever happens to the stream.
    loaded: AtomicBool,
    strong_wait: StrongWait,
    waiters: Waiters,
}

/// Why a read is not answered.
#[derive(Debug)]
pub struct Refusal {
    pub reason: String,
}

impl Node {
    /// The token of an applied position.
    fn token(&self, applied: Option<&ferry_core::Position>) -> Option<String> {
        let point = Point::of(applied?)?;
        Some(
            Token {
                epoch: self.epoch.clone(),
                point,
            }
            .to_string(),
        )
    }

    fn consistent(&self) -> std::result::Result<(), String> {
        match self.stats.consistency() {
            TargetConsistency::Consistent { .. } => {
                self.loaded.store(true, Ordering::Relaxed);
                Ok(())
            }
            TargetConsistency::Pending { why, .. } => {
                Err(format!("the replica is not consistent yet: {why}"))
            }
            TargetConsistency::Unknown => Err("the initial load is in progress".into()),
        }
    }

    /// Whether eventual reads may be served: the replica was loaded.
    fn eventual_refusal(&self) -> Option<Refusal> {
        if self.loaded.load(Ordering::Relaxed) || self.consistent().is_ok() {
            return None;
        }
        Some(Refusal {
            reason: "the initial load from the source's snapshot is in progress".into(),
        })
    }

    /// Why a strong read cannot be answered now, if it cannot.
    fn strong_refusal(&self) -> Option<Refusal> {
        let refuse = |reason: String| Some(Refusal { reason });
        if let StreamState::Broken { reason, since } = &*self.stream.borrow() {
            return refuse(format!(
                "the change stream is broken (for {}): {reason}",
                humantime(since.elapsed())
            ));
        }
        let phase = self.stats.phase();
        if phase != "streaming" {
            return refuse(format!("the node is not streaming changes yet ({phase})"));
        }
        if let Err(why) = self.consistent() {
            return refuse(why);
        }
        let fresh = self.freshness.lock().expect("freshness");
        if let Some((_, started)) = fresh.waiting.front()
            && started.elapsed() > self.options.max_lag
        {
            return refuse(format!(
                "the node is behind the source by more than max_lag ({}): a position looked up \
                 {} ago is not applied yet",
                humantime(self.options.max_lag),
                humantime(started.elapsed())
            ));
        }
        None
    }

    /// How long ago the replica was known to hold everything committed.
    fn staleness(&self) -> Option<Duration> {
        let fresh = self.freshness.lock().expect("freshness");
        fresh.synced_at.map(|t| t.elapsed())
    }

    /// Waits until the replica holds every transaction committed before
    /// this call; returns when the source's position was looked up.
    async fn wait_strong(&self, arrived: Instant) -> std::result::Result<Instant, Refusal> {
        if let Some(r) = self.strong_refusal() {
            return Err(r);
        }
        let deadline = tokio::time::Instant::from_std(arrived + self.options.max_lag);
        let lookup: Lookup = tokio::time::timeout_at(deadline, self.lookups.after_now())
            .await
            .map_err(|_| Refusal {
                reason: format!(
                    "the source's position was not known within max_lag ({})",
                    humantime(self.options.max_lag)
                ),
            })?;
        let target = lookup.outcome.map_err(|reason| Refusal { reason })?;
        let known = Instant::now();
        let notify = self.waiters.register(target);
        let answer = self
            .wait_applied(target, &notify, arrived, known, deadline)
            .await
            .map(|()| lookup.started);
        self.waiters.leave(target, notify);
        answer
    }

    /// Waits until the replica applied `target`: woken by
    /// [`Waiters::applied`], by a change of the stream's state, or to ask
    /// for another lookup.
    async fn wait_applied(
        &self,
        target: Point,
        notify: &Notify,
        arrived: Instant,
        known: Instant,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<(), Refusal> {
        let mut stream = self.stream.subscribe();
        loop {
            // Enabled before looking, so a wake-up between the look and
            // the wait is not lost.
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let reached = self
                .replica
                .applied()
                .position
                .as_ref()
                .and_then(Point::of)
                .and_then(|p| p.covers(&target))
                .unwrap_or(false);
            if let Some(r) = self.strong_refusal() {
                return Err(r);
            }
            if reached {
                self.strong_wait
                    .record(known.duration_since(arrived), known.elapsed());
                return Ok(());
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = stream.changed() => {}
                // The pipeline records a marker as soon as everything
                // before it is applied, busy or not; a marker can still be
                // lost with a stream that breaks and resumes after it. Ask
                // again then: the next marker covers this one.
                _ = tokio::time::sleep(NUDGE_AFTER) => {
                    self.strong_wait.nudges.fetch_add(1, Ordering::Relaxed);
                    self.lookups.nudge();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Refusal {
                        reason: format!(
                            "the node did not apply the source's position {target:?} within \
                             max_lag ({})",
                            humantime(self.options.max_lag)
                        ),
                    });
                }
            }
        }
    }

    /// Whether the replica is already past `token` (a client's own write
    /// or an earlier read): `None` when the token is of another epoch.
    fn past(&self, token: &Token) -> Option<bool> {
        if token.epoch != self.epoch {
            return None;
        }
        let applied = self.replica.applied().position?;
        Point::of(&applied)?.covers(&token.point)
    }
}

/// A waiting strong read asks for another lookup after this long without
/// reaching its position.
const NUDGE_AFTER: Duration = Duration::from_millis(20);

/// Lookups remembered while not applied yet.
const MAX_WAITING: usize = 1024;

/// Follows lookups and the applied position, keeping [`Freshness`].
async fn track_freshness(node: Arc<Node>) {
    let mut lookups = node.lookups.watch();
    let mut applied = node.replica.watch();
    loop {
        tokio::select! {
            r = lookups.changed() => {
                if r.is_err() { return; }
                let l = lookups.borrow_and_update().clone();
                if let Some(Lookup { outcome: Ok(p), started, .. }) = l {
                    let mut fresh = node.freshness.lock().expect("freshness");
                    // Bounded while the stream stands still: the oldest
                    // stays (it says how far behind the node is); a
                    // dropped newer one only makes the staleness reported
                    // larger than it is, never smaller.
                    if fresh.waiting.len() >= MAX_WAITING {
                        fresh.waiting.pop_back();
                    }
                    fresh.waiting.push_back((p, started));
                }
            }
            r = applied.changed() => if r.is_err() { return; },
        }
        let at = applied
            .borrow_and_update()
            .position
            .as_ref()
            .and_then(Point::of);
        if let Some(at) = at {
            node.waiters.applied(at);
        }
        let mut fresh = node.freshness.lock().expect("freshness");
        while let Some((p, started)) = fresh.waiting.front().copied() {
            if at.and_then(|a| a.covers(&p)) != Some(true) {
                break;
            }
            fresh.synced_at = Some(started);
            fresh.waiting.pop_front();
        }
    }
}

/// Runs the pipeline into the replica until the process stops, restarting
/// it after a broken stream. A fatal error before the first load ends the
/// gateway; after it, the node keeps serving eventual reads and refuses
/// strong ones, naming the error.
async fn supervise(
    cfg: PipelineConfig,
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let transform = Arc::new(Transform::new(cfg.transform.clone()));
    let mut options = cfg.options.clone();
    // Readers must see whole source transactions in source order.
    options.consistency = Consistency::Transactional;
    // Every heartbeat (a lookup's marker among them) reaches the replica.
    options.idle_checkpoint = Duration::ZERO;
    // In memory a commit costs microseconds: never hold a group back. A
    // group is dispatched as soon as the worker is free; while it is busy,
    // what arrives gathers in the next group (group commit, no timer).
    options.batch_time = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        node.stream.send_replace(StreamState::Running);
        let run = async {
            let pipeline = Pipeline {
                source: connectors::open_source(&cfg).await?,
                sink: Arc::new(MemorySink {
                    replica: node.replica.clone(),
                }),
                transform: transform.clone(),
                options: options.clone(),
                stats: node.stats.clone(),
                shutdown: shutdown.clone(),
            };
            pipeline.run().await
        };
        let e = match run.await {
            Ok(Outcome::Stopped) => return Ok(()),
            Err(e) => e,
        };
        let loaded = node.loaded.load(Ordering::Relaxed);
        node.stats.set_phase("broken");
        node.stream.send_replace(StreamState::Broken {
            reason: e.to_string(),
            since: Instant::now(),
        });
        if e.class() != ErrorClass::Transient {
            if !loaded {
                return Err(e);
            }
            tracing::error!(
                "the change stream stopped for good: {}; eventual reads go on from the replica as \
                 it is, strong reads are refused until the node is restarted",
                e.report()
            );
            return Ok(());
        }
        failures += 1;
        let wait =
            ferry_core::backoff(failures.saturating_sub(1).min(5)).min(Duration::from_secs(2));
        tracing::warn!(
            "change stream broken (strong reads refused until it resumes); reconnecting in {}: {}",
            humantime(wait),
            e.report()
        );
        let mut sd = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = sd.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// The probe for the source's engine.
async fn probe_of(cfg: &PipelineConfig) -> Result<Box<dyn Probe>> {
    let url = &cfg.source.url;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(PgProbe::connect(url).await?));
    }
    if url.starts_with("sqlite:") {
        return Ok(Box::new(SqliteProbe::open(url).await?));
    }
    Err(Error::fatal(format!(
        "the read gateway does not serve a {} source yet",
        cfg.source.display_url()
    ))
    .with_fix("use a postgres:// or sqlite: source (MySQL/MariaDB comes later)"))
}

/// `ferry gateway FILE`: serves until SIGINT/SIGTERM.
pub async fn run(path: &Path) -> Result<i32> {
    let (cfg, raw) = PipelineConfig::load_gateway(path)?;
    let options = GatewayOptions::from_table(path, raw)?;
    let source = cfg.clone();
    let (lookups, epoch) = Lookups::start(
        move || async move { probe_of(&source).await },
        options.min_interval,
        options.max_lag / 2,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| {
            Error::fatal(format!("cannot listen on {}: {e}", options.listen))
                .with_fix("choose a free address for `gateway.listen`")
        })?;
    let node = Arc::new(Node {
        replica: Replica::new(),
        stats: Arc::new(Stats::new()),
        lookups,
        epoch,
        options,
        stream: watch::channel(StreamState::Running).0,
        freshness: Mutex::default(),
        loaded: AtomicBool::new(false),
        strong_wait: StrongWait::default(),
        waiters: Waiters::default(),
    });
    tokio::spawn(track_freshness(node.clone()));
    let (tx, shutdown) = watch::channel(false);
    crate::run::install_signals(tx);
    tracing::info!(pipeline = %cfg.name, source = %cfg.source.display_url(),
        listen = %node.options.listen, epoch = %node.epoch, "gateway starting");
    http::serve(listener, node.clone(), shutdown.clone());
    supervise(cfg, node, shutdown.clone()).await?;
    let mut sd = shutdown;
    let _ = sd.wait_for(|s| *s).await;
    Ok(0)
}

/// `ferry position FILE`: the source's current position as a token, for a
/// writer to pass as `min_position` after its commit.
pub async fn position(path: &Path) -> Result<i32> {
    let (cfg, _) = PipelineConfig::load_gateway(path)?;
    if !(cfg.source.url.starts_with("postgres://") || cfg.source.url.starts_with("postgresql://")) {
        return Err(
            Error::fatal("`ferry position` reads PostgreSQL sources only")
                .with_fix("use a postgres:// source"),
        );
    }
    let probe = ferry_postgres::PgProbe::connect(&cfg.source.url).await?;
    let position = probe.current().await?;
    let point = Point::of(&position).ok_or_else(|| Error::fatal("no comparable position"))?;
    println!(
        "{}",
        Token {
            epoch: probe.epoch().to_owned(),
            point
        }
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::Lsn;
    use futures_util::FutureExt;

    #[test]
    fn a_waiting_read_is_woken_once_its_position_is_applied_and_not_before() {
        let w = Waiters::default();
        let (a, b) = (Point::Lsn(Lsn(100)), Point::Lsn(Lsn(200)));
        let na = w.register(a);
        let nb = w.register(b);
        assert!(
            Arc::ptr_eq(&na, &w.register(a)),
            "the readers of one lookup share one entry"
        );
        let mut wa = Box::pin(na.notified());
        wa.as_mut().enable();
        let mut wb = Box::pin(nb.notified());
        wb.as_mut().enable();
        w.applied(Point::Lsn(Lsn(150)));
        assert!(wa.as_mut().now_or_never().is_some());
        assert!(wb.as_mut().now_or_never().is_none());
        w.applied(Point::Lsn(Lsn(200)));
        assert!(wb.as_mut().now_or_never().is_some());
        assert!(w.by_point.lock().unwrap().is_empty());
    }

    #[test]
    fn the_last_reader_to_leave_takes_the_entry_and_only_its_own() {
        let w = Waiters::default();
        let p = Point::Lsn(Lsn(100));
        let (r1, r2) = (w.register(p), w.register(p));
        w.leave(p, r1);
        assert_eq!(w.by_point.lock().unwrap().len(), 1);
        w.leave(p, r2);
        assert!(w.by_point.lock().unwrap().is_empty());
        // Woken readers leave after a newer entry for the same position
        // appeared: it stays for its reader.
        let old = w.register(p);
        w.applied(p);
        let new = w.register(p);
        w.leave(p, old);
        assert!(Arc::ptr_eq(&w.register(p), &new));
    }
}
