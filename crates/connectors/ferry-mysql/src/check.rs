//! What a MySQL/MariaDB source must have for capture: binary logging on,
//! row-based, full or minimal row images, and the replication privileges.
//! Used by `ferry check` (each as an item) and before a run (the first
//! failure as an error).

use ferry_core::{CheckItem, Error, Result};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::error::my_error;

/// The server settings capture depends on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub log_bin: bool,
    pub binlog_format: String,
    pub row_image: String,
    pub server_id: u32,
    pub expire_seconds: u64,
    pub version: String,
    pub grants: Vec<String>,
}

pub(crate) async fn settings(conn: &mut Conn) -> Result<Settings> {
    let doing = "reading the source's binlog settings";
    let row: Option<(u8, String, String, u32, String)> = conn
        .query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@server_id, @@version",
        )
        .await
        .map_err(|e| my_error(e, doing))?;
    let (log_bin, binlog_format, row_image, server_id, version) = row.unwrap_or_default();
    let expire_seconds: u64 = match conn
        .query_first::<u64, _>("SELECT @@binlog_expire_logs_seconds")
        .await
    {
        Ok(v) => v.unwrap_or(0),
        Err(_) => conn
            .query_first::<f64, _>("SELECT @@expire_logs_days")
            .await
            .map_err(|e| my_error(e, doing))?
            .map_or(0, |days| (days * 86_400.0) as u64),
    };
    let grants: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .map_err(|e| my_error(e, doing))?;
    Ok(Settings {
        log_bin: log_bin == 1,
        binlog_format,
        row_image,
        server_id,
        expire_seconds,
        version,
        grants,
    })
}

/// Every requirement, as check items; `server_id` is the one ferry's
/// binlog connection uses.
pub(crate) fn items(s: &Settings, server_id: u32) -> Vec<CheckItem> {
    let mut items = vec![CheckItem::ok("source: server", s.version.clone())];
    items.push(if s.log_bin {
        CheckItem::ok("source: log_bin", "ON")
    } else {
        CheckItem::fail(
            "source: log_bin",
            "binary logging is off: there is no change stream to read",
            "start the server with log_bin (e.g. --log-bin=mysql-bin) and binlog_format=ROW",
        )
    });
    items.push(if s.binlog_format.eq_ignore_ascii_case("ROW") {
        CheckItem::ok("source: binlog_format", "ROW")
    } else {
        CheckItem::fail(
            "source: binlog_format",
            format!(
                "binlog_format is {}: the binlog holds statements, not the rows they changed",
                s.binlog_format
            ),
            "set binlog_format=ROW (SET GLOBAL binlog_format='ROW' and in the server's \
             configuration), then restart the applications' sessions",
        )
    });
    items.push(match s.row_image.to_ascii_uppercase().as_str() {
        "FULL" | "MINIMAL" => CheckItem::ok("source: binlog_row_image", s.row_image.clone()),
        other => CheckItem::fail(
            "source: binlog_row_image",
            format!("binlog_row_image is {other}: row images leave out columns ferry needs"),
            "set binlog_row_image=FULL (or MINIMAL)",
        ),
    });
    let replication = s.grants.iter().any(|g| {
        let g = g.to_ascii_uppercase();
        g.contains("ALL PRIVILEGES ON *.*") || g.contains("REPLICATION SLAVE")
    });
    items.push(if replication {
        CheckItem::ok("source: privileges", "REPLICATION SLAVE")
    } else {
        CheckItem::fail(
            "source: privileges",
            "ferry's user lacks REPLICATION SLAVE: it cannot read the binlog",
            "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO <ferry's user> \
             (and SELECT on the database)",
        )
    });
    items.push(if s.server_id == server_id {
        CheckItem::fail(
            "source: server_id",
            format!("the source's server_id is {server_id}, the id ferry's binlog reader uses"),
            "give the source another server_id",
        )
    } else {
        CheckItem::ok(
            "source: server_id",
            format!("ferry reads the binlog as replica id {server_id}"),
        )
    });
    items.push(match s.expire_seconds {
        0 => CheckItem::ok(
            "source: binlog retention",
            "binlogs are kept until purged by hand",
        ),
        secs if secs < 86_400 => CheckItem::warn(
            "source: binlog retention",
            format!("binlogs are purged after {secs} s: a longer outage of ferry loses its place"),
            "keep binlogs for at least a day (binlog_expire_logs_seconds=86400 or more)",
        ),
        secs => CheckItem::ok(
            "source: binlog retention",
            format!("binlogs are kept for {} h", secs / 3600),
        ),
    });
    items
}

/// The first failed requirement as an error.
pub(crate) fn require(s: &Settings, server_id: u32) -> Result<()> {
    match items(s, server_id)
        .into_iter()
        .find(|i| i.status == ferry_core::CheckStatus::Fail)
    {
        Some(item) => Err(Error::fatal(format!("{}: {}", item.name, item.detail))
            .with_fix(item.fix.unwrap_or_default())),
        None => Ok(()),
    }
}
