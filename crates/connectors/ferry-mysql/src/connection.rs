//! Opening connections to a MySQL/MariaDB server, with errors that name the
//! server and the fix.

use std::time::Duration;

use ferry_core::{Error, Result};
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::my_error;

/// A validated connection target: one server and one database. Never
/// prints the password.
#[derive(Clone)]
pub struct Endpoint {
    opts: Opts,
    database: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Endpoint {
    /// Parses a `mysql://` (or `mariadb://`) URL naming a database. A
    /// password may hold `@`, `:`, `/` or `?` without percent-encoding (see
    /// `ferry_core::url`). `role` is "source" or "target", for messages.
    pub fn parse(url: &str, role: &str) -> Result<Endpoint> {
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_owned(),
        };
        let url = ferry_core::url::encode_userinfo(&url);
        let opts = Opts::from_url(&url).map_err(|e| {
            Error::fatal(format!(
                "the {role} URL is not a valid MySQL/MariaDB connection URL: {e}"
            ))
            .with_fix("use the form mysql://user:password@host:3306/database")
        })?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        if database.is_empty() {
            return Err(Error::fatal(format!(
                "the {role} URL names no database; ferry reads and writes the tables of one \
                 database"
            ))
            .with_fix("put the database in the URL: mysql://user@host:3306/shop"));
        }
        let opts = OptsBuilder::from_opts(opts)
            .conn_ttl(None)
            .stmt_cache_size(64)
            .wait_timeout(Some(28_800))
            .setup(SESSION_SETUP.to_vec())
            .into();
        Ok(Endpoint { opts, database })
    }

    pub fn host(&self) -> String {
        self.opts.ip_or_hostname().to_owned()
    }

    pub fn port(&self) -> u16 {
        self.opts.tcp_port()
    }

    pub fn user(&self) -> &str {
        self.opts.user().unwrap_or_default()
    }

    /// The database whose tables ferry reads or writes.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The password, for the binlog connection's handshake.
    pub fn opts(&self) -> &Opts {
        &self.opts
    }

    /// `user@host:port/db`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user(),
            self.host(),
            self.port(),
            self.database
        )
    }

    /// Opens a connection, in ten seconds at most.
    pub async fn connect(&self) -> Result<Conn> {
        let (host, port) = (self.host(), self.port());
        let attempt = tokio::time::timeout(Duration::from_secs(10), Conn::new(self.opts.clone()));
        match attempt.await {
            Err(_) => Err(Error::transient(format!(
                "cannot connect to MySQL/MariaDB at {host}:{port}: timed out"
            ))
            .with_fix(format!(
                "check that {host}:{port} is reachable from this machine"
            ))),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(mysql_async::Error::Io(io))) => {
                let refused = std::error::Error::source(&io)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .map(std::io::Error::kind)
                    == Some(std::io::ErrorKind::ConnectionRefused)
                    || io.to_string().contains("refused");
                let (what, fix) = if refused {
                    (
                        "connection refused".to_owned(),
                        format!(
                            "check that MySQL/MariaDB runs on {host} and listens on port \
                             {port} (bind-address, port), and that the URL names the right \
                             host and port"
                        ),
                    )
                } else {
                    (
                        io.to_string(),
                        format!("check that {host}:{port} is reachable from this machine"),
                    )
                };
                Err(Error::transient(format!(
                    "cannot connect to MySQL/MariaDB at {host}:{port}: {what}"
                ))
                .with_fix(fix)
                .with_connection_lost())
            }
            Ok(Err(e)) => Err(my_error(e, &format!("connecting to {}", self.describe()))),
        }
    }
}

/// Quotes an identifier for MySQL/MariaDB: `` `a``b` ``.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Quotes a string literal (backslash escapes stay literal only under
/// `NO_BACKSLASH_ESCAPES`, which every ferry session sets).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The session settings every ferry connection runs with (set up on
/// each new connection by [`Endpoint::connect`] and the reader's pool): UTC for
/// TIMESTAMP values, strict values, standard string literals, utf8mb4.
pub const SESSION_SETUP: [&str; 2] = [
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
    "SET time_zone = '+00:00', \
     sql_mode = 'STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES,NO_AUTO_VALUE_ON_ZERO'",
];

/// The identity of `database` on the server behind `conn`, equal for every
/// way of reaching it (host name, port forwarding) and the same for the
/// source and the target side, so a pipeline from a database into itself
/// is refused: the server's host name and data directory, and the
/// database.
pub(crate) async fn identity(conn: &mut Conn, database: &str) -> Result<String> {
    use mysql_async::prelude::Queryable;
    let row: Option<(String, String)> = conn
        .query_first("SELECT @@hostname, @@datadir")
        .await
        .map_err(|e| my_error(e, "reading the server's identity"))?;
    let (host, datadir) = row.unwrap_or_default();
    Ok(format!("mysql:{host}:{datadir}:{database}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_server_and_database() {
        let e = Endpoint::parse("mysql://app:p@ss/w:rd@db.example:3307/shop", "source").unwrap();
        assert_eq!(e.describe(), "app@db.example:3307/shop");
        let e = Endpoint::parse("mariadb://root@127.0.0.1/x", "target").unwrap();
        assert_eq!(e.port(), 3306);
        let err = Endpoint::parse("mysql://root@127.0.0.1:3306/", "source").unwrap_err();
        assert!(err.message().contains("names no database"), "{err:?}");
        assert!(quote_ident("a`b") == "`a``b`");
    }
}
