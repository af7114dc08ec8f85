//! Active-active (ADR 0014): the names of the replication origins ferry's
//! apply sessions use, the conflict policies, and the one rule that says
//! which version of a row wins.
//!
//! Each direction between two sites is one pipeline. Its sink marks every
//! transaction it applies with the origin `ferry_<source site>_<writer>`;
//! every source skips transactions marked with a `ferry_` origin, so a
//! site forwards only the changes written on it (any topology, full mesh
//! included), and a change never returns to where it came from.
//!
//! A conflict is a change that does not find on the target the row the
//! source had before it: an insert of a key the target holds, an update or
//! delete whose before-image differs from the target's row (or finds none).
//! [`resolve`] decides, from the table's [`ConflictPolicy`] and the two
//! versions' commit times and sites, whether the incoming change applies.
//! Every site decides the same way on the same two versions, so the sites
//! converge (for the policies that can: not [`ConflictPolicy::KeepTarget`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::schema::TableName;

/// Prefix of every replication origin ferry's apply sessions use.
pub const ORIGIN_PREFIX: &str = "ferry_";

/// The replication origin of apply writer `writer` of the pipeline whose
/// source is `site`: `ferry_<site>_<writer>`. (PostgreSQL 15 lets one
/// session at a time use an origin, so each writer has its own.)
pub fn origin_name(site: &str, writer: usize) -> String {
    format!("{ORIGIN_PREFIX}{site}_{writer}")
}

/// The site an origin named by [`origin_name`] stands for.
pub fn site_of_origin(origin: &str) -> Option<&str> {
    let rest = origin.strip_prefix(ORIGIN_PREFIX)?;
    let (site, writer) = rest.rsplit_once('_')?;
    (!site.is_empty() && !writer.is_empty() && writer.bytes().all(|b| b.is_ascii_digit()))
        .then_some(site)
}

/// Whether changes marked with this origin were applied by ferry (and are
/// therefore not forwarded by a source that skips ferry's origins).
pub fn is_ferry_origin(origin: &str) -> bool {
    site_of_origin(origin).is_some()
}

/// A site name: lower-case letters, digits and `_`, starting with a
/// letter, at most 40 bytes (it becomes part of origin and pipeline
/// names).
pub fn valid_site_name(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= 40
        && site.starts_with(|c: char| c.is_ascii_lowercase())
        && site
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What to do when a change conflicts with the target's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The version with the later source commit time wins; equal times go
    /// to the greater site name. The default.
    LastWriterWins,
    /// The version from the site earlier in the priority list wins; two
    /// versions from one site (or sites not listed) by last writer wins.
    SitePriority,
    /// The target's row stays. Sites do not converge on a true conflict:
    /// each keeps its own row (for one-way flows into a site, or tables
    /// only one site writes).
    KeepTarget,
    /// Halt the pipeline, naming table, key and both versions.
    Stop,
}

impl ConflictPolicy {
    pub const NAMES: &'static str =
        "\"last_writer_wins\", \"site_priority\", \"keep_target\" or \"stop\"";

    pub fn parse(s: &str) -> Option<ConflictPolicy> {
        Some(match s {
            "last_writer_wins" => ConflictPolicy::LastWriterWins,
            "site_priority" => ConflictPolicy::SitePriority,
            "keep_target" => ConflictPolicy::KeepTarget,
            "stop" => ConflictPolicy::Stop,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ConflictPolicy::LastWriterWins => "last_writer_wins",
            ConflictPolicy::SitePriority => "site_priority",
            ConflictPolicy::KeepTarget => "keep_target",
            ConflictPolicy::Stop => "stop",
        }
    }
}

/// One direction of an active-active setup, as its sink and source need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveActive {
    /// The site the pipeline reads (names the origin its sink applies with).
    pub source_site: String,
    /// The site the pipeline writes (the site of the target's own writes).
    pub target_site: String,
    /// Policy of tables not in `policies`.
    pub default_policy: ConflictPolicy,
    /// Per target table (`schema.table`, or `table` for the default schema).
    pub policies: BTreeMap<String, ConflictPolicy>,
    /// Sites, highest priority first ([`ConflictPolicy::SitePriority`]).
    pub priority: Vec<String>,
}

impl ActiveActive {
    /// The policy of target table `table`.
    pub fn policy_for(&self, table: &TableName) -> ConflictPolicy {
        let full = table.to_string();
        self.policies
            .get(&full)
            .or_else(|| self.policies.get(&table.name))
            .copied()
            .unwrap_or(self.default_policy)
    }
}

/// Which kind of conflict a change met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// An insert of a key the target holds.
    InsertExists,
    /// An update whose before-image is not the target's row.
    UpdateDiffers,
    /// An update of a row the target does not hold (deleted there).
    UpdateMissing,
    /// A delete whose before-image is not the target's row.
    DeleteDiffers,
    /// A delete of a row the target does not hold (deleted there too).
    DeleteMissing,
}

impl ConflictKind {
    pub fn name(self) -> &'static str {
        match self {
            ConflictKind::InsertExists => "insert_exists",
            ConflictKind::UpdateDiffers => "update_differs",
            ConflictKind::UpdateMissing => "update_missing",
            ConflictKind::DeleteDiffers => "delete_differs",
            ConflictKind::DeleteMissing => "delete_missing",
        }
    }
}

/// One version of a row: when and where its last write committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Commit time, microseconds since the Unix epoch; `None` when the
    /// database does not know it (written before commit times were kept).
    pub time_micros: Option<i64>,
    pub site: String,
}

/// What a conflict comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The incoming change is applied (the target's row is overwritten,
    /// inserted or deleted).
    ApplyIncoming,
    /// The target's row stays as it is; the change is dropped.
    KeepTarget,
    /// The pipeline halts ([`ConflictPolicy::Stop`]).
    Halt,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::ApplyIncoming => "applied_incoming",
            Outcome::KeepTarget => "kept_target",
            Outcome::Halt => "halted",
        }
    }
}

/// The rule. Deletes win over concurrent updates whatever the policy
/// (but `keep_target` and `stop`): without tombstones, a site that
/// deleted a row cannot tell an update of it from an old one, so the only
/// choice every site can make alike is "the row is gone".
pub fn resolve(
    policy: ConflictPolicy,
    kind: ConflictKind,
    incoming: &Version,
    target: Option<&Version>,
    priority: &[String],
) -> Outcome {
    match (policy, kind) {
        (ConflictPolicy::Stop, _) => Outcome::Halt,
        (_, ConflictKind::DeleteMissing | ConflictKind::UpdateMissing) => Outcome::KeepTarget,
        (ConflictPolicy::KeepTarget, _) => Outcome::KeepTarget,
        (_, ConflictKind::DeleteDiffers) => Outcome::ApplyIncoming,
        (ConflictPolicy::SitePriority, _) => {
            let rank = |site: &str| priority.iter().position(|p| p == site);
            let t = target.map(|t| rank(&t.site));
            match (rank(&incoming.site), t.flatten()) {
                (Some(i), Some(t)) if i != t => {
                    if i < t {
                        Outcome::ApplyIncoming
                    } else {
                        Outcome::KeepTarget
                    }
                }
                (Some(_), None) if target.is_some() => Outcome::ApplyIncoming,
                (None, Some(_)) => Outcome::KeepTarget,
                _ => last_writer(incoming, target),
            }
        }
        (ConflictPolicy::LastWriterWins, _) => last_writer(incoming, target),
    }
}

fn last_writer(incoming: &Version, target: Option<&Version>) -> Outcome {
    let Some(target) = target else {
        return Outcome::ApplyIncoming;
    };
    let order = incoming
        .time_micros
        .unwrap_or(i64::MIN)
        .cmp(&target.time_micros.unwrap_or(i64::MIN))
        .then_with(|| incoming.site.cmp(&target.site));
    if order == Ordering::Greater {
        Outcome::ApplyIncoming
    } else {
        Outcome::KeepTarget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: i64, site: &str) -> Version {
        Version {
            time_micros: Some(t),
            site: site.into(),
        }
    }

    #[test]
    fn origin_names_round_trip() {
        assert_eq!(origin_name("eu_west", 3), "ferry_eu_west_3");
        assert_eq!(site_of_origin("ferry_eu_west_3"), Some("eu_west"));
        assert_eq!(site_of_origin("ferry_eu"), None);
        assert_eq!(site_of_origin("pg_16384"), None);
        assert!(!is_ferry_origin("ferry_x_y"));
        assert!(valid_site_name("eu1") && !valid_site_name("EU") && !valid_site_name("1a"));
    }

    #[test]
    fn last_writer_wins_is_symmetric() {
        let p = ConflictPolicy::LastWriterWins;
        let k = ConflictKind::UpdateDiffers;
        let (a, b) = (v(10, "a"), v(20, "b"));
        assert_eq!(resolve(p, k, &a, Some(&b), &[]), Outcome::KeepTarget);
        assert_eq!(resolve(p, k, &b, Some(&a), &[]), Outcome::ApplyIncoming);
        // A tie goes to the greater site name on both sites.
        let (a, b) = (v(10, "a"), v(10, "b"));
        assert_eq!(resolve(p, k, &a, Some(&b), &[]), Outcome::KeepTarget);
        assert_eq!(resolve(p, k, &b, Some(&a), &[]), Outcome::ApplyIncoming);
    }

    #[test]
    fn site_priority_beats_time() {
        let p = ConflictPolicy::SitePriority;
        let k = ConflictKind::InsertExists;
        let prio = vec!["b".to_string(), "a".to_string()];
        let (a, b) = (v(30, "a"), v(20, "b"));
        assert_eq!(resolve(p, k, &a, Some(&b), &prio), Outcome::KeepTarget);
        assert_eq!(resolve(p, k, &b, Some(&a), &prio), Outcome::ApplyIncoming);
    }

    #[test]
    fn deletes_win_and_missing_rows_stay_missing() {
        for p in [ConflictPolicy::LastWriterWins, ConflictPolicy::SitePriority] {
            let old = v(1, "a");
            let new = v(9, "b");
            assert_eq!(
                resolve(p, ConflictKind::DeleteDiffers, &old, Some(&new), &[]),
                Outcome::ApplyIncoming
            );
            assert_eq!(
                resolve(p, ConflictKind::UpdateMissing, &new, None, &[]),
                Outcome::KeepTarget
            );
        }
        assert_eq!(
            resolve(
                ConflictPolicy::Stop,
                ConflictKind::InsertExists,
                &v(1, "a"),
                None,
                &[]
            ),
            Outcome::Halt
        );
    }
}
