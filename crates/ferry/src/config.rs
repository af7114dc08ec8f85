//! Pipeline files: raw TOML → validated [`PipelineConfig`], in two steps.
//!
//! Parsing (`RawConfig`) rejects unknown keys and wrong types with the line
//! and column; validation (pure) checks values and cross-references and
//! says what to write instead. Nothing here opens a connection.

mod active;

pub use active::{Direction, directions};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::{Error, Selection};
use ferry_pipeline::predicate::Expr;
use ferry_pipeline::{Consistency, OnGap, Ops, Options, TransformSpec};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<String>,
    /// Required unless the file is a sites file (`sites`).
    source: Option<RawEndpoint>,
    /// A sites file (active-active): every site's database, by site name.
    sites: Option<BTreeMap<String, RawEndpoint>>,
    /// Active-active settings (ADR 0014), validated by `active`.
    active_active: Option<active::RawActive>,
    /// Required by every command but `ferry gateway`, which keeps the
    /// tables in memory (checked in [`PipelineConfig::validate`]).
    target: Option<RawEndpoint>,
    /// `ferry gateway` only; validated by `crate::gateway::config`.
    gateway: Option<toml::Table>,
    #[serde(default)]
    tables: RawTables,
    #[serde(default)]
    operations: RawOps,
    #[serde(default)]
    apply: RawApply,
    #[serde(default)]
    snapshot: RawSnapshot,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: String,
    poll_interval: Option<String>,
    on_gap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTables {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    exclude_columns: Vec<String>,
    #[serde(default)]
    rename: BTreeMap<String, String>,
    #[serde(default)]
    filter: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOps {
    #[serde(default = "yes")]
    insert: bool,
    #[serde(default = "yes")]
    update: bool,
    #[serde(default = "yes")]
    delete: bool,
    #[serde(default = "yes")]
    truncate: bool,
}

fn yes() -> bool {
    true
}

impl Default for RawOps {
    fn default() -> Self {
        RawOps {
            insert: true,
            update: true,
            delete: true,
            truncate: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApply {
    batch_rows: Option<usize>,
    batch_time: Option<String>,
    workers: Option<usize>,
    consistency: Option<String>,
    queue_events: Option<usize>,
    queue_bytes: Option<String>,
    max_retries: Option<u32>,
    give_up_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot {
    chunk_rows: Option<usize>,
}

/// A database endpoint after validation: the URL with `${VAR}`s expanded.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    pub poll_interval: Duration,
    /// Source only: what to do when the source cannot continue from the
    /// target's checkpoint.
    pub on_gap: OnGap,
}

impl Endpoint {
    /// The URL with any password replaced, safe to print.
    pub fn display_url(&self) -> String {
        redact(&self.url)
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.display_url())
    }
}

/// Replaces the password of `scheme://user:password@host` with `***`
/// (the password may hold a raw `@`: see `ferry_core::url`).
pub fn redact(url: &str) -> String {
    ferry_core::url::redact(url)
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub path: PathBuf,
    pub name: String,
    pub source: Endpoint,
    pub target: Endpoint,
    pub selection: Selection,
    pub transform: TransformSpec,
    pub options: Options,
    /// `snapshot.chunk_rows`; each source has its own default.
    pub chunk_rows: Option<usize>,
    /// Valid but noteworthy settings (a key whose meaning changed), logged
    /// when the pipeline starts.
    pub warnings: Vec<String>,
    /// This pipeline is one direction between active-active sites.
    pub active_active: Option<ferry_core::ActiveActive>,
}

/// The excluded columns no filter of their table reads: a source need not
/// decode them (so a value of one it cannot read stops nothing).
fn unread_columns(transform: &TransformSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (table, rule) in &transform.tables {
        let read = rule
            .filter
            .as_ref()
            .map(|f| f.columns())
            .unwrap_or_default();
        for c in &rule.exclude_columns {
            if !read.contains(&c.as_str()) {
                out.push(format!("{table}.{c}"));
            }
        }
    }
    out.sort();
    out
}

fn config_error(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::fatal(format!("{}: {msg}", path.display()))
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A duration as an operator writes it: `1h`, `2m30s`, `45s`, `1.6s`,
/// `250ms`.
pub fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 10_000 && !ms.is_multiple_of(1000) {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let secs = (ms + 500) / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        _ => return None,
    };
    Some(n * mult)
}

/// Expands `${NAME}` from the environment; a missing variable is an error.
fn expand_env(path: &Path, field: &str, s: &str) -> Result<String, Error> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| config_error(path, format!("`{field}` has an unclosed `${{`")))?;
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| {
            config_error(
                path,
                format!("`{field}` uses environment variable {var}, which is not set"),
            )
            .with_fix(format!("export {var}=... before running ferry"))
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

const SCHEMES: &str =
    "sqlite:PATH, postgres://USER@HOST:PORT/DB (or postgresql://), mysql://USER@HOST:PORT/DB";

fn endpoint(path: &Path, field: &str, raw: RawEndpoint) -> Result<Endpoint, Error> {
    let url = expand_env(path, field, &raw.url)?;
    let known = [
        "sqlite:",
        "postgres://",
        "postgresql://",
        "mysql://",
        "mariadb://",
    ];
    if !known.iter().any(|k| url.starts_with(k)) {
        return Err(config_error(
            path,
            format!(
                "`{field}.url` = {:?} is not a database URL ferry knows",
                redact(&url)
            ),
        )
        .with_fix(format!("use one of: {SCHEMES}")));
    }
    if field == "target" && raw.poll_interval.is_some() {
        return Err(config_error(
            path,
            "`target.poll_interval` has no effect: only a source is polled",
        )
        .with_fix("move `poll_interval` to the [source] section or remove it"));
    }
    if field == "target" && raw.on_gap.is_some() {
        return Err(config_error(
            path,
            "`target.on_gap` has no effect: a gap is in the source's change log",
        )
        .with_fix("move `on_gap` to the [source] section"));
    }
    let on_gap = match raw.on_gap.as_deref() {
        None | Some("fail") => OnGap::Fail,
        Some("resync") => OnGap::Resync,
        Some(other) => {
            return Err(config_error(
                path,
                format!("`{field}.on_gap` = {other:?} is not a gap policy"),
            )
            .with_fix("use \"fail\" (the default: stop and say so) or \"resync\" (re-copy every table online)"));
        }
    };
    let poll_interval = match raw.poll_interval {
        None => Duration::from_millis(20),
        Some(s) => parse_duration(&s).ok_or_else(|| {
            config_error(
                path,
                format!("`{field}.poll_interval` = {s:?} is not a duration"),
            )
            .with_fix("write it like \"20ms\", \"1s\"")
        })?,
    };
    Ok(Endpoint {
        url,
        poll_interval,
        on_gap,
    })
}

impl PipelineConfig {
    /// Reads and validates a pipeline file, or one direction of a sites file.
    pub fn load_for(path: &Path, direction: &Direction) -> Result<PipelineConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::fatal(format!("cannot read pipeline file {}: {e}", path.display()))
                .with_fix("check the path and that the file is readable")
        })?;
        Self::parse_for(path, &text, direction)
    }

    /// The site names of a sites file (`None`: a plain pipeline file).
    pub fn sites_of(path: &Path) -> Result<Option<Vec<String>>, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::fatal(format!("cannot read pipeline file {}: {e}", path.display()))
                .with_fix("check the path and that the file is readable")
        })?;
        let raw = Self::parse_raw(path, &text)?;
        Ok(raw.sites.map(|s| s.into_keys().collect()))
    }

    #[cfg(test)]
    pub fn parse(path: &Path, text: &str) -> Result<PipelineConfig, Error> {
        Self::parse_for(path, text, &Direction::default())
    }

    pub fn parse_for(
        path: &Path,
        text: &str,
        direction: &Direction,
    ) -> Result<PipelineConfig, Error> {
        let mut raw = Self::parse_raw(path, text)?;
        if raw.gateway.is_some() {
            return Err(config_error(
                path,
                "this is a gateway file (it has a [gateway] section): run it with `ferry gateway`",
            )
            .with_fix("run `ferry gateway FILE`, or remove the [gateway] section"));
        }
        let ends = active::ends(
            path,
            raw.source.take(),
            raw.target.take(),
            raw.sites.take(),
            raw.active_active.take(),
            direction,
        )?;
        let Some(target) = ends.target else {
            return Err(
                config_error(path, "the pipeline file has no [target] section")
                    .with_fix("add [target] with `url = \"...\"` (the database to copy into)"),
            );
        };
        let target = endpoint(path, "target", target)?;
        if let Some(name) = raw.name.as_mut() {
            name.push_str(&ends.suffix);
        } else if !ends.suffix.is_empty() {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into());
            raw.name = Some(format!("{stem}{}", ends.suffix));
        }
        let mut cfg = Self::validate(path, raw, ends.source, target)?;
        if let Some(active) = ends.active {
            let pg = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
            if !pg(&cfg.source.url) || !pg(&cfg.target.url) {
                return Err(config_error(
                    path,
                    "active-active is built for PostgreSQL sites only so far",
                )
                .with_fix("use postgres:// URLs for every site, or remove [active_active]"));
            }
            if cfg.options.consistency == Consistency::Eventual {
                return Err(config_error(
                    path,
                    "`apply.consistency = \"eventual\"` cannot run active-active: every source \
                     transaction is applied as one target transaction with its commit time",
                )
                .with_fix("remove `apply.consistency` (active-active is transactional)"));
            }
            cfg.options.active_active = true;
            cfg.active_active = Some(active);
        }
        Ok(cfg)
    }

    /// A `ferry gateway` file: a pipeline file whose `[target]` is the
    /// gateway's memory, with a `[gateway]` section (returned as written,
    /// for `crate::gateway::config` to validate).
    pub fn load_gateway(path: &Path) -> Result<(PipelineConfig, toml::Table), Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::fatal(format!("cannot read gateway file {}: {e}", path.display()))
                .with_fix("check the path and that the file is readable")
        })?;
        let mut raw = Self::parse_raw(path, &text)?;
        if raw.sites.is_some() || raw.active_active.is_some() {
            return Err(
                config_error(path, "a gateway file has no [sites] or [active_active]")
                    .with_fix("point the gateway at one site with [source]"),
            );
        }
        let Some(source) = raw.source.take() else {
            return Err(
                config_error(path, "the gateway file has no [source] section")
                    .with_fix("add [source] with `url = \"...\"` (the database to serve)"),
            );
        };
        if raw.target.is_some() {
            return Err(config_error(
                path,
                "a gateway has no [target]: it holds the tables in its own memory",
            )
            .with_fix("remove the [target] section (or run the file with `ferry run`)"));
        }
        let Some(gateway) = raw.gateway.take() else {
            return Err(
                config_error(path, "the gateway file has no [gateway] section")
                    .with_fix("add [gateway] with `listen = \"127.0.0.1:8080\"`"),
            );
        };
        let target = Endpoint {
            url: "memory:".into(),
            poll_interval: Duration::from_millis(20),
            on_gap: OnGap::Fail,
        };
        Ok((Self::validate(path, raw, source, target)?, gateway))
    }

    fn parse_raw(path: &Path, text: &str) -> Result<RawConfig, Error> {
        toml::from_str(text).map_err(|e| {
            config_error(path, format!("invalid pipeline file: {e}")).with_fix(
                "see the configuration reference in README.md (section \"Pipeline file\")",
            )
        })
    }

    fn validate(
        path: &Path,
        raw: RawConfig,
        source: RawEndpoint,
        target: Endpoint,
    ) -> Result<PipelineConfig, Error> {
        let name = raw.name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into())
        });
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(config_error(
                path,
                format!("pipeline name {name:?} must be letters, digits, '_' or '-'"),
            )
            .with_fix("set `name = \"my_pipeline\"`"));
        }
        let source = endpoint(path, "source", source)?;

        let mut transform = TransformSpec::default();
        for col in &raw.tables.exclude_columns {
            let Some((table, column)) = col.rsplit_once('.') else {
                return Err(config_error(
                    path,
                    format!("`tables.exclude_columns` entry {col:?} must be \"table.column\""),
                )
                .with_fix("e.g. \"users.password_hash\""));
            };
            transform
                .tables
                .entry(table.to_owned())
                .or_default()
                .exclude_columns
                .push(column.to_owned());
        }
        for (from, to) in raw.tables.rename {
            if to.is_empty() {
                return Err(
                    config_error(path, format!("`tables.rename.{from}` is empty"))
                        .with_fix("give the target table name"),
                );
            }
            transform.tables.entry(from).or_default().rename = Some(to);
        }
        for (table, expr) in raw.tables.filter {
            let parsed = Expr::parse(&expr).map_err(|why| {
                config_error(
                    path,
                    format!("`tables.filter.{table}` = {expr:?} is not a valid filter: {why}"),
                )
                .with_fix("write it like \"region = 'eu' AND amount > 10\"")
            })?;
            transform.tables.entry(table).or_default().filter = Some(parsed);
        }
        let o = raw.operations;
        transform.ops = Ops {
            insert: o.insert,
            update: o.update,
            delete: o.delete,
            truncate: o.truncate,
        };

        let mut options = Options::new(&name);
        options.on_gap = source.on_gap;
        let a = raw.apply;
        if let Some(n) = a.batch_rows {
            if n == 0 {
                return Err(config_error(path, "`apply.batch_rows` must be at least 1")
                    .with_fix("e.g. batch_rows = 1000"));
            }
            options.batch_rows = n;
        }
        if let Some(s) = a.batch_time {
            options.batch_time = parse_duration(&s).ok_or_else(|| {
                config_error(
                    path,
                    format!("`apply.batch_time` = {s:?} is not a duration"),
                )
                .with_fix("write it like \"500ms\" or \"2s\"")
            })?;
        }
        if let Some(n) = a.workers {
            if n == 0 || n > 64 {
                return Err(
                    config_error(path, format!("`apply.workers` = {n} is out of range"))
                        .with_fix("use 1 to 64"),
                );
            }
            options.workers = n;
        }
        match a.consistency.as_deref() {
            None | Some("transactional") => options.consistency = Consistency::Transactional,
            Some("eventual") => options.consistency = Consistency::Eventual,
            Some(other) => {
                return Err(config_error(
                    path,
                    format!("`apply.consistency` = {other:?} is not a consistency mode"),
                )
                .with_fix("use \"transactional\" (the default) or \"eventual\""));
            }
        }
        if let Some(n) = a.queue_events {
            options.queue_events = n.max(1);
        }
        if let Some(s) = a.give_up_after {
            options.give_up_after = parse_duration(&s).ok_or_else(|| {
                config_error(
                    path,
                    format!("`apply.give_up_after` = {s:?} is not a duration"),
                )
                .with_fix("write it like \"1h\", \"30min\" or \"90s\"")
            })?;
        }
        if let Some(s) = a.queue_bytes {
            options.queue_bytes = parse_size(&s).ok_or_else(|| {
                config_error(path, format!("`apply.queue_bytes` = {s:?} is not a size"))
                    .with_fix("write it like \"64MiB\"")
            })?;
        }
        let mut warnings = Vec::new();
        if let Some(n) = a.max_retries {
            options.max_retries = n;
            warnings.push(format!(
                "`apply.max_retries` = {n} now only bounds how often a group is retried on a \
                 live connection before the pipeline restarts from its checkpoint; ferry no \
                 longer stops after it, but after `apply.give_up_after` (now {}) of continuous \
                 failure: set that instead to choose when ferry gives up",
                humantime(options.give_up_after)
            ));
        }
        let chunk_rows = raw.snapshot.chunk_rows.map(|n| n.max(1));
        Ok(PipelineConfig {
            path: path.to_owned(),
            name,
            source,
            target,
            selection: Selection {
                include: raw.tables.include,
                exclude: raw.tables.exclude,
                unread_columns: unread_columns(&transform),
                row_filter: Some(std::sync::Arc::new(transform.clone())),
            },
            transform,
            options,
            chunk_rows,
            warnings,
            active_active: None,
        })
    }

    /// File where a running pipeline publishes its status for `ferry status`.
    pub fn status_path(&self) -> PathBuf {
        let dir = self.path.parent().map(Path::to_owned).unwrap_or_default();
        dir.join(format!(".ferry-{}.status", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PipelineConfig, Error> {
        PipelineConfig::parse(Path::new("p.toml"), s)
    }

    const MIN: &str = "[source]\nurl = \"sqlite:a.db\"\n[target]\nurl = \"sqlite:b.db\"\n";

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.name, "p");
        assert_eq!(c.options.batch_rows, 1000);
        assert_eq!(c.options.batch_time, Duration::from_millis(500));
    }

    #[test]
    fn unknown_key_names_the_line() {
        let e = parse(&format!("{MIN}[apply]\nbatch_size = 5\n")).unwrap_err();
        let r = e.report();
        assert!(
            r.contains("line 6") && r.contains("batch_size") && r.contains("batch_rows"),
            "{r}"
        );
    }

    #[test]
    fn bad_values_say_the_fix() {
        let e = parse(&format!("{MIN}[apply]\nbatch_time = \"soon\"\n")).unwrap_err();
        assert!(e.report().contains("500ms"));
        let e =
            parse("[source]\nurl = \"oracle://x\"\n[target]\nurl = \"sqlite:b\"\n").unwrap_err();
        assert!(e.report().contains("sqlite:PATH"));
        let e = parse(&format!("{MIN}[tables.filter]\nt = \"a = \"\n")).unwrap_err();
        assert!(e.report().contains("not a valid filter"));
    }

    #[test]
    fn secrets_come_from_env_and_are_redacted() {
        // SAFETY-free: unique variable name, set before reading.
        let e = parse("[source]\nurl = \"postgres://u:${FERRY_TEST_UNSET_VAR}@h/db\"\n[target]\nurl = \"sqlite:b\"\n").unwrap_err();
        assert!(e.report().contains("FERRY_TEST_UNSET_VAR"));
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        // Passwords with characters a URL splits on: nothing of them shows.
        for pw in ["p@ss", "a@b@c", "x:y/z@", "q?r@s", "@@", "h@st:1/db"] {
            let c = parse(&format!(
                "[source]\nurl = \"postgres://app:{pw}@db.example:5432/app\"\n\
                 [target]\nurl = \"sqlite:b\"\n"
            ))
            .unwrap();
            let shown = format!("{:?} {}", c.source, c.source.display_url());
            assert!(!shown.contains(pw), "{pw:?} shows in {shown}");
            assert!(
                shown.contains("Endpoint(postgres://app:***@db.example:5432/app)"),
                "{shown}"
            );
        }
    }

    #[test]
    fn give_up_after_and_the_changed_max_retries() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.options.give_up_after, Duration::from_secs(3600));
        assert!(c.warnings.is_empty());
        let c = parse(&format!("{MIN}[apply]\ngive_up_after = \"90s\"\n")).unwrap();
        assert_eq!(c.options.give_up_after, Duration::from_secs(90));
        let e = parse(&format!("{MIN}[apply]\ngive_up_after = \"forever\"\n")).unwrap_err();
        assert!(e.report().contains("give_up_after") && e.report().contains("1h"));
        // Still accepted, with a note on what it means now.
        let c = parse(&format!("{MIN}[apply]\nmax_retries = 5\n")).unwrap();
        assert_eq!(c.options.max_retries, 5);
        assert!(
            c.warnings.len() == 1 && c.warnings[0].contains("give_up_after"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(humantime(Duration::from_secs(3600)), "1h");
        assert_eq!(humantime(Duration::from_secs(150)), "2m30s");
        assert_eq!(humantime(Duration::from_millis(1600)), "1.6s");
        assert_eq!(humantime(Duration::from_secs(2)), "2s");
        assert_eq!(humantime(Duration::from_millis(25_600)), "26s");
        assert_eq!(humantime(Duration::from_millis(250)), "250ms");
    }
}
