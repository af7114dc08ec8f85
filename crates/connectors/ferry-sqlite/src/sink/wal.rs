//! WAL checkpoints of the target, off the writer's thread.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that takes the
//! WAL past 1000 frames: it syncs the WAL, copies the frames into the
//! database file and syncs that. In a snapshot load that cost the writer
//! (the snapshot's critical path) about a fifth of its time, most of it
//! waiting for the two `fsync`s.
//!
//! So the writer's connection replaces the automatic checkpoint with
//! [`on_wal_commit`], and a thread with a connection of its own runs
//! `PRAGMA wal_checkpoint(PASSIVE)` each time another [`STEP`] frames have
//! been committed. A passive checkpoint takes no write lock: the writer
//! keeps loading while the frames are copied.
//!
//! The WAL starts again from its first frame only when a write
//! transaction begins while every committed frame is already in the
//! database file. A writer that begins its next chunk right after each
//! commit never sees that while the background pass is behind, so once the
//! WAL holds [`LIMIT`] frames the writer checkpoints itself, right after a
//! commit, as soon as the background thread has copied everything but
//! that last commit: a short pass, after which the next transaction
//! restarts the WAL. Should that not happen (the background thread is slow,
//! or could not start), the hook checkpoints in the commit at
//! [`HARD_LIMIT`] frames, as SQLite's automatic checkpoint would. The WAL
//! stays below about `HARD_LIMIT` frames plus one transaction.
//!
//! Crash safety is SQLite's: a checkpoint copies only committed frames,
//! syncs the WAL before and the database file after (`synchronous=NORMAL`),
//! and a process killed in the middle of one leaves a WAL that the next
//! connection recovers. Which connection runs a checkpoint does not matter.

use std::cell::Cell;
use std::os::raw::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use crate::connection::open_target;

/// Frames committed between two background checkpoints (SQLite's default
/// automatic checkpoint: about 4 MiB with 4 KiB pages).
pub(crate) const STEP: i32 = 1000;
/// Frames from which the writer checkpoints the rest itself, so that the
/// WAL restarts (32 MiB with 4 KiB pages).
pub(crate) const LIMIT: i32 = 8 * STEP;
/// Frames at which a commit checkpoints whatever the background thread did.
pub(crate) const HARD_LIMIT: i32 = 2 * LIMIT;
/// Frames a commit writes besides its pages' new versions (the checkpoint
/// record's page, the table's interior pages, page 1); the writer's own
/// pass waits until the background thread is no more behind than the last
/// commit and these.
const SLACK: i32 = 64;

thread_local! {
    /// Frames in the WAL after the last commit on this thread, set by
    /// [`on_wal_commit`]; the writer reads it right after its `COMMIT`,
    /// which ran on the same thread.
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

/// The writer connection's WAL hook, called by SQLite after every commit
/// with the number of frames in the WAL (counted since its last restart).
/// It must not fail: an error here would fail a `COMMIT` that succeeded.
fn on_wal_commit(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    if frames >= HARD_LIMIT {
        // Busy while the background pass holds the checkpoint lock: the
        // next commit tries again.
        if let Err(e) = wal.checkpoint() {
            tracing::debug!(error = %e, frames, "sqlite target: WAL checkpoint on commit skipped");
        }
    }
    Ok(())
}

/// Installs [`on_wal_commit`] on the writer's connection, replacing SQLite's
/// automatic checkpoint.
pub(crate) fn install_hook(conn: &Connection) {
    conn.wal_hook(Some(on_wal_commit));
}

/// Runs `commit` (which commits on the current thread) and returns what it
/// returns, with the number of frames in the WAL after it (0 when nothing
/// was written to the WAL).
pub(crate) fn frames_after<R>(commit: impl FnOnce() -> R) -> (R, i32) {
    WAL_FRAMES.with(|f| f.set(0));
    let r = commit();
    (r, WAL_FRAMES.with(Cell::get))
}

/// The background checkpoint thread of one writer, and the writer's side
/// of the policy. Dropping it stops the thread after its current pass.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    /// WAL frames after the previous commit.
    last_frames: AtomicI32,
    /// WAL frames when the background thread was last asked for a pass.
    requested_at: AtomicI32,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Frames the last background pass found in the WAL, and how many of
    /// them were then in the database file.
    seen: AtomicI32,
    copied: AtomicI32,
}

#[derive(Default)]
struct State {
    wanted: bool,
    stop: bool,
}

impl Checkpointer {
    /// Starts the thread; it opens its own connection to `path` when first
    /// asked for a pass. Without the thread, the checkpoints at
    /// [`HARD_LIMIT`] still keep the WAL bounded.
    pub(crate) fn start(path: &Path) -> Checkpointer {
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let path = path.to_owned();
        let started = std::thread::Builder::new()
            .name("ferry-sqlite-ckpt".into())
            .spawn(move || run(&path, &thread_shared));
        if let Err(e) = started {
            tracing::warn!(error = %e, "sqlite target: no background WAL checkpoint thread");
        }
        Checkpointer {
            shared,
            last_frames: AtomicI32::new(0),
            requested_at: AtomicI32::new(0),
        }
    }

    /// Called on the writer's connection right after each commit, with the
    /// frames now in the WAL.
    pub(crate) fn committed(&self, conn: &Connection, frames: i32) {
        let prev = self.last_frames.swap(frames, Ordering::Relaxed);
        let restarted = frames < prev;
        if restarted {
            self.requested_at.store(0, Ordering::Relaxed);
        }
        let this_commit = if restarted { frames } else { frames - prev };
        if frames >= LIMIT {
            // What the background thread has not copied yet, as far as its
            // last pass tells (a pass from before a restart tells nothing).
            let seen = self.shared.seen.load(Ordering::Relaxed);
            let copied = self.shared.copied.load(Ordering::Relaxed);
            let behind = if seen <= frames {
                frames - copied
            } else {
                frames
            };
            if behind <= this_commit + SLACK {
                match passive_checkpoint(conn) {
                    // Everything copied: the next transaction restarts the WAL.
                    Ok((0, log, done)) if log == done => return,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "sqlite target: WAL checkpoint skipped"),
                }
            }
            // Keep the background thread copying until the writer's pass
            // is short.
            self.request(frames);
        } else if frames - self.requested_at.load(Ordering::Relaxed) >= STEP {
            self.request(frames);
        }
    }

    fn request(&self, frames: i32) {
        self.requested_at.store(frames, Ordering::Relaxed);
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.wanted = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.stop = true;
        self.shared.wake.notify_one();
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: (busy, frames in the WAL, frames in
/// the database file).
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i32, i32, i32)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

fn run(path: &Path, shared: &Shared) {
    // Opened at the first request: most writers never fill 1000 frames.
    let mut conn: Option<Connection> = None;
    loop {
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while !state.wanted && !state.stop {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.stop {
                return;
            }
            state.wanted = false;
        }
        let c = match &conn {
            Some(c) => c,
            None => match open_target(path) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(),
                        "sqlite target: background WAL checkpoints disabled");
                    return;
                }
            },
        };
        // A failure (the writer's own pass holds the lock, an I/O error)
        // only means this pass did nothing; the checkpoints in the commit
        // remain.
        match passive_checkpoint(c) {
            Ok((_, seen, copied)) => {
                shared.copied.store(copied, Ordering::Relaxed);
                shared.seen.store(seen, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "sqlite target: background WAL checkpoint failed")
            }
        }
    }
}
