//! Wait on a condition instead of sleeping.
//!
//! Tests never sleep for a fixed time: they poll a condition with a short,
//! growing backoff (5 ms doubling up to 100 ms) until it holds or a deadline
//! passes. On timeout the test panics with a message that names what was
//! awaited and the last state that was observed.
//!
//! The closure returns either an [`Option<T>`] (`None` = not yet) or a
//! [`Result<T, E>`] (`Err(e)` = not yet, and `e` is reported as the last
//! observed state on timeout), see [`Attempt`].

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

/// First pause between two attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// The result of one attempt of an [`eventually`] condition.
///
/// Implemented for `Option<T>` (`None` means "not yet") and for
/// `Result<T, E>` with `E: Debug` (`Err(e)` means "not yet"; `e` is the
/// observed state shown if the wait times out).
pub trait Attempt {
    /// The value produced once the condition holds.
    type Output;
    /// `Ok(value)` when the condition holds, otherwise `Err(description of
    /// the observed state)`.
    fn into_attempt(self) -> Result<Self::Output, String>;
}

impl<T> Attempt for Option<T> {
    type Output = T;
    fn into_attempt(self) -> Result<T, String> {
        self.ok_or_else(|| "None".to_string())
    }
}

impl<T, E: Debug> Attempt for Result<T, E> {
    type Output = T;
    fn into_attempt(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

fn timeout_panic(what: &str, timeout: Duration, attempts: u32, last: &str) -> ! {
    panic!(
        "eventually: timed out after {timeout:?} waiting for {what}; \
         last observed: {last} ({attempts} attempts)"
    )
}

/// Polls `f` until it yields a value, and returns that value.
///
/// `f` is called at once, then again after 5 ms, 10 ms, 20 ms, … (capped at
/// 100 ms) until it returns `Some(_)`/`Ok(_)`. If `timeout` passes first,
/// panics with a message naming `what` and the last observed state (the
/// `Err` value's `Debug`, or `None`). The condition is always tried at least
/// once, and once more at the deadline.
///
/// Time is measured with [`tokio::time::Instant`], so under a paused tokio
/// clock the timeout is in virtual time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use ferry_testkit::eventually;
///
/// let n = AtomicU32::new(0);
/// let v = eventually("counter reaches 3", Duration::from_secs(5), || async {
///     let v = n.fetch_add(1, Ordering::SeqCst) + 1;
///     if v >= 3 { Ok(v) } else { Err(format!("counter = {v}")) }
/// })
/// .await;
/// assert_eq!(v, 3);
/// # }
/// ```
pub async fn eventually<F, Fut, R>(what: &str, timeout: Duration, mut f: F) -> R::Output
where
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
    R: Attempt,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match f().await.into_attempt() {
            Ok(v) => return v,
            Err(state) => state,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            timeout_panic(what, timeout, attempts, &last);
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = next_backoff(backoff);
    }
}

/// Blocking variant of [`eventually`] for tests that are not async (or for
/// use inside `spawn_blocking`). Sleeps the current thread between attempts,
/// so do not call it on an async runtime thread.
///
/// ```
/// use std::time::Duration;
/// use ferry_testkit::eventually_blocking;
///
/// let started = std::time::Instant::now();
/// let waited = eventually_blocking("20 ms elapsed", Duration::from_secs(5), || {
///     let e = started.elapsed();
///     if e >= Duration::from_millis(20) { Ok(e) } else { Err(e) }
/// });
/// assert!(waited >= Duration::from_millis(20));
/// ```
pub fn eventually_blocking<F, R>(what: &str, timeout: Duration, mut f: F) -> R::Output
where
    F: FnMut() -> R,
    R: Attempt,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match f().into_attempt() {
            Ok(v) => return v,
            Err(state) => state,
        };
        let now = std::time::Instant::now();
        if now >= deadline {
            timeout_panic(what, timeout, attempts, &last);
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = next_backoff(backoff);
    }
}
