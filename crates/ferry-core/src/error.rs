//! One error type, classified by what the caller should do about it.
//!
//! Connectors build [`Error`]s with a class, a message that names the
//! problem, and where they can, a `fix` that tells the operator what to do.
//! The pipeline never inspects messages: [`policy`] maps the class (and the
//! attempt count) to an [`Action`].

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
    /// Wait, then try the same work again.
    Retry(Duration),
    /// Stop the pipeline; the checkpoint stays at the last durable position.
    Halt,
}

/// Maps an error class and the number of attempts already made to an action.
/// Transient errors back off exponentially (100 ms doubling to 10 s) and give
/// up after `max_attempts`; data and fatal errors halt at once.
pub fn policy(class: ErrorClass, attempts: u32, max_attempts: u32) -> Action {
    match class {
        ErrorClass::Transient if attempts < max_attempts => {
            let ms = 100u64.saturating_mul(1 << attempts.min(7)).min(10_000);
            Action::Retry(Duration::from_millis(ms))
        }
        _ => Action::Halt,
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

    #[test]
    fn transient_errors_back_off_then_halt() {
        assert_eq!(
            policy(ErrorClass::Transient, 0, 5),
            Action::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            policy(ErrorClass::Transient, 3, 5),
            Action::Retry(Duration::from_millis(800))
        );
        assert_eq!(policy(ErrorClass::Transient, 5, 5), Action::Halt);
        assert_eq!(policy(ErrorClass::Data, 0, 5), Action::Halt);
        assert_eq!(policy(ErrorClass::Fatal, 0, 5), Action::Halt);
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
