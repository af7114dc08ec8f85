//! Shared position lookups: how a node learns the source's current
//! position for strong reads without asking once per read.
//!
//! The rule (issue 15, item 3):
//!
//! * a lookup starts as soon as a read wants one and none is in flight;
//! * a read that arrives while one is in flight shares the *next* one (the
//!   one in flight may have read the position before the reader's write
//!   committed);
//! * lookups start at most once per `min_interval`, so the source sees a
//!   bounded load whatever the read rate.
//!
//! A reader notes how many lookups had started when it arrived and waits
//! for a result with a higher number: that lookup's query ran after the
//! reader arrived. Requests are a [`Notify`] permit, so any number of
//! readers waiting meanwhile collapse into one request.
//!
//! With no reads, a lookup still runs every `max_lag / 2`: the node then
//! always knows how fresh it is (`staleness` in eventual reads) and notices
//! when it falls behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ferry_core::{Error, Position, Result};
use tokio::sync::{Notify, watch};

use super::token::Point;

/// Asks the source where it is now.
#[async_trait]
pub trait Probe: Send {
    /// The source history positions belong to (see `token.rs`).
    fn epoch(&self) -> &str;
    /// A position that every transaction committed before the call
    /// precedes, and that the change stream will pass even if the source
    /// stays idle.
    async fn mark(&mut self) -> Result<Position>;
}

/// PostgreSQL: `pg_logical_emit_message` on one connection, opened again
/// after it breaks; a server of another history is refused.
pub struct PgProbe {
    url: String,
    epoch: String,
    conn: Option<ferry_postgres::PgProbe>,
}

impl PgProbe {
    pub async fn connect(url: &str) -> Result<PgProbe> {
        let conn = ferry_postgres::PgProbe::connect(url).await?;
        Ok(PgProbe {
            url: url.to_owned(),
            epoch: conn.epoch().to_owned(),
            conn: Some(conn),
        })
    }
}

#[async_trait]
impl Probe for PgProbe {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn mark(&mut self) -> Result<Position> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            self.conn = None;
            let conn = ferry_postgres::PgProbe::connect(&self.url).await?;
            if conn.epoch() != self.epoch {
                return Err(Error::fatal(format!(
                    "the source's history changed (epoch {} → {}): it failed over or was \
                     re-created, so this node's replica cannot be compared with it",
                    self.epoch,
                    conn.epoch()
                ))
                .with_fix("restart the gateway node: it loads the tables again"));
            }
            self.conn = Some(conn);
        }
        let conn = self.conn.as_ref().expect("connected above");
        let r = conn.mark().await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// SQLite: the change table's end, read on a connection of the probe's
/// own, off the async runtime. Nothing is written: an idle source's
/// heartbeats (every second) carry the position the stream reached.
pub struct SqliteProbe {
    probe: Arc<ferry_sqlite::SqliteProbe>,
    epoch: String,
}

impl SqliteProbe {
    pub async fn open(url: &str) -> Result<SqliteProbe> {
        let path = ferry_sqlite::path_from_url(url)?;
        let probe = tokio::task::spawn_blocking(move || ferry_sqlite::SqliteProbe::open(&path))
            .await
            .map_err(|e| Error::fatal(format!("the SQLite probe task failed: {e}")))??;
        Ok(SqliteProbe {
            epoch: probe.epoch().to_owned(),
            probe: Arc::new(probe),
        })
    }
}

#[async_trait]
impl Probe for SqliteProbe {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn mark(&mut self) -> Result<Position> {
        let probe = self.probe.clone();
        tokio::task::spawn_blocking(move || probe.end())
            .await
            .map_err(|e| Error::fatal(format!("the SQLite probe task failed: {e}")))?
    }
}

/// One finished lookup.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Lookups are numbered from 1 in the order they start.
    pub seq: u64,
    pub started: Instant,
    /// The source's position, or why it is not known.
    pub outcome: std::result::Result<Point, String>,
}

pub struct Lookups {
    started: AtomicU64,
    /// Time spent in the probe's queries, summed (`/status`).
    query_micros: AtomicU64,
    wanted: Notify,
    results: watch::Sender<Option<Lookup>>,
}

impl Lookups {
    /// Starts the lookup task on a thread of its own, with the probe that
    /// `connect` opens there; returns the source's epoch.
    ///
    /// Its own thread and runtime, so that the lookup cycle (wait out
    /// `min_interval`, send the query, read the answer, publish it) does
    /// not queue behind HTTP handlers at each step: every strong read
    /// waits for a whole cycle, so each wake-up saved there is saved on
    /// every strong read.
    pub async fn start<F, Fut>(
        connect: F,
        min_interval: Duration,
        idle_every: Duration,
    ) -> Result<(Arc<Lookups>, String)>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Box<dyn Probe>>>,
    {
        let lookups = Arc::new(Lookups {
            started: AtomicU64::new(0),
            query_micros: AtomicU64::new(0),
            wanted: Notify::new(),
            results: watch::channel(None).0,
        });
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let task = lookups.clone();
        std::thread::Builder::new()
            .name("ferry-lookups".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::fatal(format!(
                            "cannot start the position lookups' runtime: {e}"
                        ))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let probe = match connect().await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(probe.epoch().to_owned()));
                    run(task, probe, min_interval, idle_every).await;
                });
            })
            .map_err(|e| Error::fatal(format!("cannot start the position lookups' thread: {e}")))?;
        let epoch = ready
            .await
            .map_err(|_| Error::fatal("the position lookups' thread stopped while starting"))??;
        Ok((lookups, epoch))
    }

    /// How many lookups started so far.
    pub fn count(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Microseconds spent in the probe's queries so far.
    pub fn query_micros(&self) -> u64 {
        self.query_micros.load(Ordering::Relaxed)
    }

    /// Asks for a lookup soon (a waiting read that suspects a lost marker).
    pub fn nudge(&self) {
        self.wanted.notify_one();
    }

    /// The last lookup's result.
    pub fn latest(&self) -> Option<Lookup> {
        self.results.borrow().clone()
    }

    /// The results as they come.
    pub fn watch(&self) -> watch::Receiver<Option<Lookup>> {
        self.results.subscribe()
    }

    /// The source's position from a lookup that started after this call.
    pub async fn after_now(&self) -> Lookup {
        let seen = self.started.load(Ordering::SeqCst);
        let mut rx = self.results.subscribe();
        self.wanted.notify_one();
        match rx
            .wait_for(|r| r.as_ref().is_some_and(|r| r.seq > seen))
            .await
        {
            Ok(r) => r.clone().expect("checked by wait_for"),
            Err(_) => Lookup {
                seq: seen,
                started: Instant::now(),
                outcome: Err("the lookup task stopped".into()),
            },
        }
    }
}

/// Waits until `deadline`, to within tens of microseconds.
///
/// Tokio's timer counts whole milliseconds and fires late when the
/// runtime is busy: a `sleep` of the 0.6 ms left of a 1 ms `min_interval`
/// ended 2–3 ms later under the benchmark's load, which made a lookup
/// cycle three times `min_interval` and every strong read wait for it. The
/// part under two milliseconds is slept by the thread itself, which the
/// kernel wakes on time: the lookups' runtime runs nothing else but the
/// probe's idle connection (see [`Lookups::start`]).
async fn sleep_until_precisely(deadline: Instant) {
    let coarse = deadline.checked_sub(Duration::from_millis(2));
    if let Some(coarse) = coarse.filter(|c| *c > Instant::now()) {
        tokio::time::sleep_until(coarse.into()).await;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

/// Bounds one lookup: a source that does not answer is as good as down.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

async fn run(
    lookups: Arc<Lookups>,
    mut probe: Box<dyn Probe>,
    min_interval: Duration,
    idle_every: Duration,
) {
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = lookups.wanted.notified() => {}
            _ = tokio::time::sleep(idle_every) => {}
        }
        if let Some(last) = last {
            sleep_until_precisely(last + min_interval).await;
        }
        let started = Instant::now();
        last = Some(started);
        // Numbered before the query runs: a reader that saw the old count
        // arrived before this query started (see the module docs).
        let seq = lookups.started.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, probe.mark()).await;
        lookups
            .query_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let outcome = match answer {
            Ok(Ok(p)) => {
                Point::of(&p).ok_or_else(|| "this source has no comparable position".into())
            }
            Ok(Err(e)) => Err(format!("cannot ask the source for its position: {e}")),
            Err(_) => Err(format!(
                "the source did not answer a position lookup within {}",
                crate::config::humantime(LOOKUP_TIMEOUT)
            )),
        };
        // Said once per change, not once per lookup: a source that is down
        // is asked on every strong read.
        let was_ok = lookups
            .results
            .borrow()
            .as_ref()
            .is_none_or(|l| l.outcome.is_ok());
        match (&outcome, was_ok) {
            (Err(e), true) => tracing::warn!("{e}; strong reads are refused until it answers"),
            (Ok(_), false) => tracing::info!("the source answers position lookups again"),
            _ => {}
        }
        lookups.results.send_replace(Some(Lookup {
            seq,
            started,
            outcome,
        }));
    }
}
