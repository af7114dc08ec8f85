//! Named failpoints: kill the process at an exact point of the code.
//!
//! A crash test of a real process (the `ferry` binary, a test helper
//! process) arms failpoints through the environment:
//!
//! ```text
//! FERRY_FAILPOINTS="after_data_commit,snapshot_chunk_written=3"
//! ```
//!
//! Each entry is a failpoint name, optionally `=N` ("on the Nth hit", 1 by
//! default). When armed code reaches [`failpoint`]`("name")` for the Nth time
//! the process aborts at once ([`std::process::abort`]): no destructor, no
//! flush, no unwinding — the same as `kill -9` at that line, only
//! deterministic. The test then restarts the process on the same stores and
//! asserts that nothing was lost and nothing doubled.
//!
//! The variable is read once per process. When it is unset a failpoint costs
//! one initialised-`OnceLock` check and a branch.
//!
//! A malformed `FERRY_FAILPOINTS` panics at the first failpoint reached:
//! a crash test with a typo must fail loudly, not pass without crashing.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms failpoints.
pub const FAILPOINTS_ENV: &str = "FERRY_FAILPOINTS";

/// One armed failpoint: abort on hit number `nth` of `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailpointSpec {
    /// The name passed to [`failpoint`].
    pub name: String,
    /// Which hit aborts (1 = the first).
    pub nth: u64,
}

impl FailpointSpec {
    /// Aborts on hit `nth` (1-based) of `name`.
    pub fn new(name: impl Into<String>, nth: u64) -> Self {
        FailpointSpec {
            name: name.into(),
            nth,
        }
    }
}

impl fmt::Display for FailpointSpec {
    /// The form [`parse_failpoints`] reads back (`name` or `name=N`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nth == 1 {
            f.write_str(&self.name)
        } else {
            write!(f, "{}={}", self.name, self.nth)
        }
    }
}

/// The value of [`FAILPOINTS_ENV`] that arms `points`, for a test to pass
/// to the process it starts (`Command::env(FAILPOINTS_ENV, env_value(..))`).
pub fn env_value(points: &[FailpointSpec]) -> String {
    points
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a failpoint list: comma-separated `name` or `name=N` entries
/// (N ≥ 1), surrounding blanks ignored, empty entries skipped. A name may
/// be listed once only.
pub fn parse_failpoints(spec: &str) -> Result<Vec<FailpointSpec>, String> {
    let mut out: Vec<FailpointSpec> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, nth) = match entry.split_once('=') {
            None => (entry, 1),
            Some((name, n)) => {
                let n = n.trim();
                let nth = n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    format!("failpoint {entry:?}: {n:?} is not a hit number (1, 2, ...)")
                })?;
                (name.trim(), nth)
            }
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !valid {
            return Err(format!(
                "failpoint {entry:?}: a name is made of letters, digits and _ - . :"
            ));
        }
        if out.iter().any(|p| p.name == name) {
            return Err(format!("failpoint {name:?} is listed twice"));
        }
        out.push(FailpointSpec::new(name, nth));
    }
    Ok(out)
}

struct Armed {
    points: Vec<(FailpointSpec, AtomicU64)>,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(FAILPOINTS_ENV).ok()?;
            let points = parse_failpoints(&spec)
                .unwrap_or_else(|e| panic!("{FAILPOINTS_ENV}={spec:?} is malformed: {e}"));
            Some(Armed {
                points: points.into_iter().map(|p| (p, AtomicU64::new(0))).collect(),
            })
        })
        .as_ref()
}

/// Whether any failpoint is armed in this process.
pub fn any_armed() -> bool {
    armed().is_some_and(|a| !a.points.is_empty())
}

/// Marks a failpoint. Aborts the process if `name` is armed in
/// [`FAILPOINTS_ENV`] and this is its Nth hit; otherwise does nothing.
///
/// Place it exactly where a crash is interesting: right after a target
/// commit and before the source ack, between two chunks of a snapshot, …
/// Names are `snake_case` nouns of the moment (`after_data_commit`).
pub fn failpoint(name: &str) {
    let Some(armed) = armed() else {
        return;
    };
    let Some((spec, hits)) = armed.points.iter().find(|(p, _)| p.name == name) else {
        return;
    };
    let hit = hits.fetch_add(1, Ordering::SeqCst) + 1;
    if hit == spec.nth {
        eprintln!("ferry failpoint {name:?}: hit {hit}, aborting the process");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_hit_numbers() {
        let points = parse_failpoints(" a ,b=3,, c.d = 2 ,").unwrap();
        assert_eq!(
            points,
            vec![
                FailpointSpec::new("a", 1),
                FailpointSpec::new("b", 3),
                FailpointSpec::new("c.d", 2),
            ]
        );
        assert_eq!(parse_failpoints("").unwrap(), vec![]);
        assert_eq!(env_value(&points), "a,b=3,c.d=2");
        assert_eq!(parse_failpoints(&env_value(&points)).unwrap(), points);
    }

    #[test]
    fn rejects_malformed_lists() {
        for bad in ["a=0", "a=x", "a=-1", "=3", "a b", "a,a=2", "a=1=2"] {
            assert!(parse_failpoints(bad).is_err(), "{bad:?} must be rejected");
        }
        let e = parse_failpoints("snap=zero").unwrap_err();
        assert!(e.contains("snap=zero"), "{e}");
    }

    /// Runs in a child process (see the next test); a no-op when the
    /// environment does not arm `testkit_child`.
    #[test]
    fn failpoint_child() {
        if std::env::var(FAILPOINTS_ENV).is_err() {
            return;
        }
        failpoint("testkit_child");
        println!("survived hit 1");
        failpoint("some_other_point");
        failpoint("testkit_child");
        println!("survived hit 2");
    }

    #[cfg(unix)]
    #[test]
    fn failpoint_aborts_the_process_on_the_nth_hit() {
        use std::os::unix::process::ExitStatusExt;
        let run = |spec: &str| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "failpoint::tests::failpoint_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(FAILPOINTS_ENV, spec)
                .output()
                .unwrap()
        };
        let out = run("testkit_child=2");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
        assert!(stdout.contains("survived hit 1"), "{stdout}");
        assert!(!stdout.contains("survived hit 2"), "{stdout}");

        let out = run("unrelated");
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("survived hit 2"));
    }
}
