//! Opening SQL connections, with errors that name the server and the fix.

use std::time::Duration;

use ferry_core::{Error, Result};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::pg_error;

/// A validated connection target. Never prints the password.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub config: Config,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Endpoint {
    /// Parses a `postgres://` URL or a `key=value` string. A password
    /// may hold `@`, `:`, `/` or `?` without percent-encoding (see
    /// `ferry_core::url`).
    pub fn parse(url: &str, role: &str) -> Result<Endpoint> {
        let url = ferry_core::url::encode_userinfo(url);
        let mut config: Config = url.parse().map_err(|e| {
            Error::fatal(format!(
                "the {role} URL is not a valid PostgreSQL connection string: {e}"
            ))
            .with_fix("use the form postgres://user:password@host:port/database")
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(Error::fatal(format!(
                "the {role} URL asks for sslmode=require, but this build of ferry-postgres \
                 connects without TLS"
            ))
            .with_fix("use sslmode=disable (or prefer) or a TLS-terminating proxy on this host"));
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_user().is_none() {
            return Err(Error::fatal(format!("the {role} URL names no user"))
                .with_fix("put the user in the URL: postgres://user@host/db"));
        }
        if config.get_application_name().is_none() {
            config.application_name("ferry");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        Ok(Endpoint { config })
    }

    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }

    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_else(|| self.user())
    }

    pub fn password(&self) -> Option<&[u8]> {
        self.config.get_password()
    }

    /// `user@host:port/db`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user(),
            self.host(),
            self.port(),
            self.dbname()
        )
    }

    /// Opens a SQL connection; its driver task runs until the client drops.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.connect_error(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// The server wants a password and the URL has none.
    pub fn password_missing(&self) -> Error {
        Error::fatal(format!(
            "PostgreSQL at {}:{} asks user {:?} for a password, and the URL has none",
            self.host(),
            self.port(),
            self.user()
        ))
        .with_fix(format!(
            "put the password in the URL (postgres://{0}:PASSWORD@{1}:{2}/{3}), or read it from \
             the environment: url = \"postgres://{0}:${{PGPASSWORD}}@{1}:{2}/{3}\" in the \
             pipeline file (ferry expands ${{VAR}} in URLs; @, : and / in a password need no \
             escaping)",
            self.user(),
            self.host(),
            self.port(),
            self.dbname()
        ))
    }

    /// Turns a failed connection attempt into an error naming the server.
    pub fn connect_error(&self, e: tokio_postgres::Error) -> Error {
        let target = self.describe();
        if e.as_db_error().is_some() {
            return pg_error(e, &format!("connecting to {target}"));
        }
        // The driver's own text can be as vague as "invalid
        // configuration"; the reason is in its sources.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        let io_kind = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind);
        let (host, port) = (self.host(), self.port());
        match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => Error::transient(format!(
                "cannot connect to PostgreSQL at {host}:{port}: connection refused"
            ))
            .with_fix(format!(
                "check that PostgreSQL runs on {host} and listens on port {port} \
                 (listen_addresses, port), and that the URL names the right host and port"
            )),
            Some(_) => Error::transient(format!(
                "cannot connect to PostgreSQL at {host}:{port}: {text}"
            ))
            .with_fix(format!(
                "check that {host}:{port} is reachable from this machine"
            )),
            None if text.contains("password missing") => self.password_missing(),
            None if text.contains("timeout") || text.contains("timed out") => Error::transient(
                format!("cannot connect to PostgreSQL at {host}:{port}: timed out"),
            )
            .with_fix(format!(
                "check that {host}:{port} is reachable from this machine"
            )),
            None => Error::fatal(format!("cannot connect to {target}: {text}")),
        }
    }
}
