//! Active-active configuration (ADR 0014): a sites file (`[sites.<name>]`,
//! one URL each) describes every site and the tables; each direction
//! between two sites is a pipeline, chosen with `--from SITE --to SITE`.
//! A plain pipeline file may also be one direction, with
//! `[active_active] source_site`/`target_site`.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_core::conflict::valid_site_name;
use ferry_core::{ActiveActive, ConflictPolicy, Error};
use serde::Deserialize;

use super::{RawEndpoint, config_error};

/// `[active_active]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawActive {
    /// The site this pipeline reads (a plain pipeline file only).
    source_site: Option<String>,
    /// The site this pipeline writes (a plain pipeline file only).
    target_site: Option<String>,
    /// Default conflict policy.
    policy: Option<String>,
    /// Sites, highest priority first (`site_priority`).
    #[serde(default)]
    priority: Vec<String>,
    /// Conflict policy per table (`schema.table` or `table`, as the target
    /// names it).
    #[serde(default)]
    tables: BTreeMap<String, String>,
}

/// One direction picked out of a sites file (`--from`, `--to`).
#[derive(Debug, Clone, Default)]
pub struct Direction {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Direction {
    pub fn new(from: Option<String>, to: Option<String>) -> Self {
        Direction { from, to }
    }

    fn given(&self) -> bool {
        self.from.is_some() || self.to.is_some()
    }
}

/// What a file says about the two ends of one pipeline.
pub(super) struct Ends {
    pub source: RawEndpoint,
    pub target: Option<RawEndpoint>,
    /// Appended to the file's pipeline name (`_<from>_<to>`).
    pub suffix: String,
    pub active: Option<ActiveActive>,
}

/// Every direction of a sites file, `(from, to)`, in name order: a full
/// mesh (each site forwards only what was written on it).
pub fn directions(sites: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in sites {
        for b in sites {
            if a != b {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    out
}

/// Picks the two ends of the pipeline out of `[source]`/`[target]` or
/// `[sites]` and validates `[active_active]`.
pub(super) fn ends(
    path: &Path,
    source: Option<RawEndpoint>,
    target: Option<RawEndpoint>,
    sites: Option<BTreeMap<String, RawEndpoint>>,
    active: Option<RawActive>,
    direction: &Direction,
) -> Result<Ends, Error> {
    let Some(mut sites) = sites else {
        if direction.given() {
            return Err(config_error(
                path,
                "--from/--to pick a direction of a sites file, and this file has no [sites]",
            )
            .with_fix("leave out --from and --to, or describe the sites under [sites.<name>]"));
        }
        let source = source.ok_or_else(|| {
            config_error(path, "the pipeline file has no [source] section")
                .with_fix("add [source] with `url = \"...\"` (the database to copy from)")
        })?;
        let active = match active {
            None => None,
            Some(raw) => {
                let (Some(from), Some(to)) = (raw.source_site.clone(), raw.target_site.clone())
                else {
                    return Err(config_error(
                        path,
                        "[active_active] in a pipeline file needs `source_site` and `target_site`",
                    )
                    .with_fix(
                        "name the two sites (source_site = \"eu\", target_site = \"us\"), or \
                         describe every site in a sites file ([sites.<name>] url = ...)",
                    ));
                };
                Some(policies(path, raw, from, to, None)?)
            }
        };
        return Ok(Ends {
            source,
            target,
            suffix: String::new(),
            active,
        });
    };
    if source.is_some() || target.is_some() {
        return Err(config_error(
            path,
            "a sites file describes its databases under [sites.<name>], not [source]/[target]",
        )
        .with_fix("remove [source] and [target]; each direction is `--from SITE --to SITE`"));
    }
    let names: Vec<String> = sites.keys().cloned().collect();
    for s in &names {
        if !valid_site_name(s) {
            return Err(config_error(
                path,
                format!("site name {s:?} must be lower-case letters, digits or '_', starting with a letter"),
            )
            .with_fix("e.g. [sites.eu_west]"));
        }
    }
    if names.len() < 2 {
        return Err(config_error(path, "a sites file needs at least two sites")
            .with_fix("add another [sites.<name>] with its `url`"));
    }
    let (Some(from), Some(to)) = (direction.from.clone(), direction.to.clone()) else {
        let all: Vec<String> = directions(&names)
            .iter()
            .map(|(a, b)| format!("--from {a} --to {b}"))
            .collect();
        return Err(config_error(
            path,
            "this is a sites file: each direction between two sites is its own pipeline",
        )
        .with_fix(format!(
            "pass the direction, one of: {} (run one ferry per direction)",
            all.join(", ")
        )));
    };
    let unknown = |s: &str| {
        config_error(path, format!("no site {s:?} in this file"))
            .with_fix(format!("use one of: {}", names.join(", ")))
    };
    if from == to {
        return Err(
            config_error(path, format!("--from and --to are both {from:?}"))
                .with_fix("a direction goes from one site to another"),
        );
    }
    let source = sites.remove(&from).ok_or_else(|| unknown(&from))?;
    let target = sites.remove(&to).ok_or_else(|| unknown(&to))?;
    let raw = active.unwrap_or_default();
    if raw.source_site.is_some() || raw.target_site.is_some() {
        return Err(config_error(
            path,
            "`source_site`/`target_site` belong in a pipeline file; a sites file takes them \
             from --from and --to",
        )
        .with_fix("remove them from [active_active]"));
    }
    let active = policies(path, raw, from.clone(), to.clone(), Some(&names))?;
    Ok(Ends {
        source,
        target: Some(target),
        suffix: format!("_{from}_{to}"),
        active: Some(active),
    })
}

fn policies(
    path: &Path,
    raw: RawActive,
    from: String,
    to: String,
    sites: Option<&[String]>,
) -> Result<ActiveActive, Error> {
    for s in [&from, &to] {
        if !valid_site_name(s) {
            return Err(config_error(
                path,
                format!("site name {s:?} must be lower-case letters, digits or '_', starting with a letter"),
            )
            .with_fix("e.g. source_site = \"eu_west\""));
        }
    }
    let parse = |field: &str, s: &str| {
        ConflictPolicy::parse(s).ok_or_else(|| {
            config_error(path, format!("`{field}` = {s:?} is not a conflict policy"))
                .with_fix(format!("use {}", ConflictPolicy::NAMES))
        })
    };
    let default_policy = match &raw.policy {
        None => ConflictPolicy::LastWriterWins,
        Some(p) => parse("active_active.policy", p)?,
    };
    let mut tables = BTreeMap::new();
    for (t, p) in &raw.tables {
        tables.insert(t.clone(), parse(&format!("active_active.tables.{t}"), p)?);
    }
    let uses_priority = default_policy == ConflictPolicy::SitePriority
        || tables.values().any(|p| *p == ConflictPolicy::SitePriority);
    if uses_priority && raw.priority.is_empty() {
        return Err(config_error(
            path,
            "the \"site_priority\" policy needs `active_active.priority`",
        )
        .with_fix("list the sites, highest priority first: priority = [\"eu\", \"us\"]"));
    }
    if let Some(sites) = sites
        && let Some(bad) = raw.priority.iter().find(|p| !sites.contains(p))
    {
        return Err(config_error(
            path,
            format!("`active_active.priority` names no site {bad:?}"),
        )
        .with_fix(format!("use the sites of this file: {}", sites.join(", "))));
    }
    Ok(ActiveActive {
        source_site: from,
        target_site: to,
        default_policy,
        policies: tables,
        priority: raw.priority,
    })
}
