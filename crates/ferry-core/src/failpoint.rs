//! Named failpoints: kill the process at an exact point of the code.
//!
//! Product code marks the moments where a crash is interesting with
//! [`failpoint`]`(NAME)`; the names it uses are the constants below
//! ([`ALL`] lists them). A crash test of a real process (the `ferry`
//! binary) arms them through the environment:
//!
//! ```text
//! FERRY_FAILPOINTS="group_committed,snapshot_chunk_loaded=3"
//! ```
//!
//! Each entry is a failpoint name, optionally `=N` ("on the Nth hit", 1 by
//! default). When armed code reaches `failpoint("name")` for the Nth time
//! the process aborts at once ([`std::process::abort`]): no destructor, no
//! flush, no unwinding — the same as `kill -9` at that line, only
//! deterministic. The test then restarts the process on the same stores and
//! asserts that nothing was lost and nothing doubled.
//!
//! The variable is read once per process. When it is unset a failpoint costs
//! one initialised-`OnceLock` check and a branch.
//!
//! A malformed `FERRY_FAILPOINTS` panics at the first failpoint reached (a
//! crash test with a typo must fail loudly, not pass without crashing);
//! the `ferry` binary checks it at start-up with [`armed_in_env`] and
//! refuses unknown names.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms failpoints.
pub const FAILPOINTS_ENV: &str = "FERRY_FAILPOINTS";

/// Snapshot: a chunk's rows are loaded into its open target transaction,
/// which is not committed yet. A crash rolls the chunk back; the restart
/// copies its range again from a new snapshot.
pub const SNAPSHOT_CHUNK_LOADED: &str = "snapshot_chunk_loaded";
/// Snapshot, between chunks: a chunk and its progress record have
/// committed, the next chunk is not written yet. The restart resumes after
/// the last recorded range.
pub const SNAPSHOT_CHUNK_COMMITTED: &str = "snapshot_chunk_committed";
/// Stream: a group is executed in its open target transaction and (in
/// transaction-consistent mode) its commit turn has come, but it is not
/// committed. A crash rolls it back; the source re-delivers it from the
/// target's `applied` position.
pub const GROUP_EXECUTED: &str = "group_executed";
/// Stream: a group (or a large transaction) has committed with its
/// checkpoint record, and nobody has heard of it yet: no ack went to the
/// source. The checkpoint decides; the source re-sends nothing before it.
pub const GROUP_COMMITTED: &str = "group_committed";
/// Stream, inside a large transaction: a part (`Partial`) is applied into
/// the open target transaction and the next part is not. A crash rolls the
/// whole transaction back; it is read again after the restart.
pub const LARGE_TXN_PART_APPLIED: &str = "large_txn_part_applied";

/// Every failpoint product code calls, in the order a pipeline meets them.
pub const ALL: [&str; 5] = [
    SNAPSHOT_CHUNK_LOADED,
    SNAPSHOT_CHUNK_COMMITTED,
    GROUP_EXECUTED,
    LARGE_TXN_PART_APPLIED,
    GROUP_COMMITTED,
];

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

/// The failpoints [`FAILPOINTS_ENV`] arms in this process (empty when it
/// is unset), or why it is malformed, naming every entry that is not one
/// of `known`.
pub fn armed_in_env(known: &[&str]) -> Result<Vec<FailpointSpec>, String> {
    let Ok(spec) = std::env::var(FAILPOINTS_ENV) else {
        return Ok(Vec::new());
    };
    let points = parse_failpoints(&spec).map_err(|e| format!("{FAILPOINTS_ENV}: {e}"))?;
    let unknown: Vec<&str> = points
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| !known.contains(n))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "{FAILPOINTS_ENV} names unknown failpoint(s) {}; known: {}",
            unknown.join(", "),
            known.join(", ")
        ));
    }
    Ok(points)
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
/// Place it exactly where a crash is interesting (right after a target
/// commit and before the source ack, between two chunks of a snapshot, …)
/// and name it with a constant of this module. Names are `snake_case`
/// descriptions of the moment (`group_committed`).
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

    #[test]
    fn product_failpoint_names_are_valid_and_distinct() {
        let listed = ALL.join(",");
        let parsed = parse_failpoints(&listed).unwrap();
        assert_eq!(parsed.len(), ALL.len());
        assert!(
            ALL.iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
