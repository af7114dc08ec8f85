//! One error type, classified by what the caller should do about it.
//!
//! Connectors build [`Error`]s with a class, a message that names the
//! problem, and where they can, a `fix` that tells the operator what to do.
//! The pipeline never inspects messages: [`policy`] maps the class (with
//! whether the connection is lost, the attempt count and how long failures
//! have lasted) to an [`Action`].

use std::fmt;
use std::time::Duration;

/// What kind of failure this is, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Likely to succeed if tried again: lost connection, lock timeout,
    /// serialization failure, database restarting.
    Transient,
    /// This change or row is bad (constraint violation, value out of range):
    /// stop, or quarantine it by policy. Retrying will not help.
    Data,
    /// Configuration, privileges, unsupported input, corrupt state: halt and
    /// keep the checkpoint where it is.
    Fatal,
}

/// What the pipeline does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wait, then try the same work again at this level.
    Retry(Duration),
    /// Stop retrying here and hand the error to the level above: an apply
    /// worker ends the run, and the pipeline restarts from its checkpoint
    /// on new connections (its connection is gone, or its in-place retries
    /// are used up).
    Escalate,
    /// Stop the pipeline; the checkpoint stays at the last durable position.
    Halt,
}

/// Where failed work is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// An apply worker retrying one group on its own connection.
    InPlace,
    /// The whole pipeline, restarted from its checkpoint with every
    /// connection opened afresh (`ferry run`'s restart loop).
    Restart,
}

/// How long and how often transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Give up (halt) once failures have followed each other, with no
    /// progress in between, for this long (`apply.give_up_after`).
    pub give_up_after: Duration,
    /// Retries of one group on its own, still open, connection before
    /// escalating to a restart (`apply.max_retries`).
    pub in_place: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            give_up_after: Duration::from_secs(3600),
            in_place: 3,
        }
    }
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before attempt `attempts + 1`: 100 ms doubling, at most
/// [`MAX_BACKOFF`].
pub fn backoff(attempts: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempts.min(16));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

/// Maps a failure to an action; the only place that does. `attempts` is
/// how many times this work already failed at this `level` (0 on the first
/// failure), `failing_for` how long failures have followed each other.
///
/// * Data and fatal errors halt at once.
/// * A transient error halts once `failing_for` reached
///   `budget.give_up_after`: ferry keeps trying through an outage of up to
///   that long, and no longer.
/// * In place, a transient error on a connection known to be lost
///   escalates at once (retrying on a dead connection cannot succeed); on
///   a live one it is retried after [`backoff`] up to `budget.in_place`
///   times, then escalates.
/// * A restart waits [`backoff`], never past the moment ferry gives up.
pub fn policy(
    error: &Error,
    level: Level,
    attempts: u32,
    failing_for: Duration,
    budget: &RetryBudget,
) -> Action {
    if error.class() != ErrorClass::Transient || failing_for >= budget.give_up_after {
        return Action::Halt;
    }
    match level {
        Level::InPlace if error.connection_lost() || attempts >= budget.in_place => {
            Action::Escalate
        }
        Level::InPlace => Action::Retry(backoff(attempts)),
        Level::Restart => Action::Retry(backoff(attempts).min(budget.give_up_after - failing_for)),
    }
}

/// A ferry error: class, message, optional fix and context, and the
/// underlying cause.
pub struct Error {
    class: ErrorClass,
    message: String,
    fix: Option<String>,
    context: Vec<(&'static str, String)>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    connection_lost: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Error {
            class,
            message: message.into(),
            fix: None,
            context: Vec::new(),
            source: None,
            connection_lost: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Error::new(ErrorClass::Transient, message)
    }

    pub fn data(message: impl Into<String>) -> Self {
        Error::new(ErrorClass::Data, message)
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Error::new(ErrorClass::Fatal, message)
    }

    /// What the operator should do.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    /// Adds a labelled detail: `table`, `key`, `statement`, `position`...
    pub fn with(mut self, label: &'static str, value: impl Into<String>) -> Self {
        self.context.push((label, value.into()));
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Marks the connection the error came from as gone (closed, reset,
    /// terminated by the server): retrying on it cannot succeed.
    pub fn with_connection_lost(mut self) -> Self {
        self.connection_lost = true;
        self
    }

    /// Whether the connection the error came from is gone.
    pub fn connection_lost(&self) -> bool {
        self.connection_lost
    }

    pub fn class(&self) -> ErrorClass {
        self.class
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn fix(&self) -> Option<&str> {
        self.fix.as_deref()
    }

    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// Changes the class (e.g. a sink that knows a failure is transient).
    pub fn reclassify(mut self, class: ErrorClass) -> Self {
        self.class = class;
        self
    }

    /// Full report for the operator: message, details, cause chain, fix.
    pub fn report(&self) -> String {
        let mut out = self.message.clone();
        for (label, value) in &self.context {
            out.push_str(&format!("\n  {label}: {value}"));
        }
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(&format!("\n  caused by: {c}"));
            cause = c.source();
        }
        if let Some(fix) = &self.fix {
            out.push_str(&format!("\n  fix: {fix}"));
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for (label, value) in &self.context {
            write!(f, " [{label}: {value}]")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.class, self.report())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::position::PositionError> for Error {
    fn from(e: crate::position::PositionError) -> Self {
        Error::fatal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: RetryBudget = RetryBudget {
        give_up_after: Duration::from_secs(60),
        in_place: 3,
    };

    fn act(e: &Error, level: Level, attempts: u32, failing_secs: u64) -> Action {
        policy(
            e,
            level,
            attempts,
            Duration::from_secs(failing_secs),
            &BUDGET,
        )
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(8), Duration::from_millis(25_600));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn in_place_retries_on_a_live_connection_then_escalate() {
        let e = Error::transient("deadlock detected");
        assert_eq!(
            act(&e, Level::InPlace, 0, 0),
            Action::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            act(&e, Level::InPlace, 2, 1),
            Action::Retry(Duration::from_millis(400))
        );
        assert_eq!(act(&e, Level::InPlace, 3, 1), Action::Escalate);
    }

    #[test]
    fn a_lost_connection_escalates_at_once() {
        let e = Error::fatal("connection closed")
            .with_connection_lost()
            .reclassify(ErrorClass::Transient);
        assert!(e.connection_lost(), "reclassifying keeps it");
        assert_eq!(act(&e, Level::InPlace, 0, 0), Action::Escalate);
        assert_eq!(
            act(&e, Level::Restart, 0, 0),
            Action::Retry(Duration::from_millis(100))
        );
    }

    #[test]
    fn restarts_back_off_until_the_budget_is_spent() {
        let e = Error::transient("connection refused").with_connection_lost();
        // However many attempts, a restart is tried while time is left...
        assert_eq!(act(&e, Level::Restart, 40, 10), Action::Retry(MAX_BACKOFF));
        // ...never waiting past the moment ferry gives up...
        assert_eq!(
            act(&e, Level::Restart, 40, 50),
            Action::Retry(Duration::from_secs(10))
        );
        // ...and then it halts.
        assert_eq!(act(&e, Level::Restart, 1, 60), Action::Halt);
        assert_eq!(act(&e, Level::InPlace, 0, 61), Action::Halt);
    }

    #[test]
    fn data_and_fatal_errors_halt_at_once() {
        for e in [Error::data("bad row"), Error::fatal("no privilege")] {
            assert_eq!(act(&e, Level::InPlace, 0, 0), Action::Halt);
            assert_eq!(act(&e, Level::Restart, 0, 0), Action::Halt);
        }
    }

    #[test]
    fn report_names_context_and_fix() {
        let e = Error::data("insert failed")
            .with("table", "t")
            .with_fix("drop the constraint");
        let r = e.report();
        assert!(r.contains("table: t") && r.contains("fix: drop the constraint"));
    }
}
