//! The streaming replication protocol: a connection in logical replication
//! mode (`replication=database`), replication commands over the simple
//! query protocol, and the copy-both stream of `START_REPLICATION`.
//!
//! A thin layer on `postgres-protocol` (message framing, SCRAM and MD5),
//! which tokio-postgres also uses; see `docs/adr/0002`. No background task:
//! the stream is read only when the source is asked for its next event, so
//! the server's TCP window is the only buffer.

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use ferry_core::{Error, ErrorClass, Lsn, Result};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;

use crate::connection::Endpoint;
use crate::error::{class_of, fix_for};

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// An error the server reported, with its SQLSTATE.
#[derive(Debug, Clone)]
pub(crate) struct ServerError {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

impl ServerError {
    fn parse(body: &ErrorResponseBody) -> ServerError {
        let mut e = ServerError {
            code: String::new(),
            message: String::new(),
            detail: None,
        };
        let mut fields = body.fields();
        while let Ok(Some(f)) = fields.next() {
            let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                _ => {}
            }
        }
        e
    }

    pub fn into_error(self, what: &str) -> Error {
        let mut err = Error::new(class_of(&self.code), format!("{what}: {}", self.message))
            .with("sqlstate", self.code.clone());
        if let Some(d) = self.detail {
            err = err.with("detail", d);
        }
        if let Some(f) = fix_for(&self.code) {
            err = err.with_fix(f);
        }
        err
    }
}

/// What the copy-both stream delivers.
#[derive(Debug)]
pub(crate) enum ReplicationMessage {
    XLogData { data: Bytes },
    Keepalive { wal_end: Lsn, reply: bool },
}

/// A replication connection.
pub(crate) struct ReplicationConn {
    rd: ReadHalf<Box<dyn Io>>,
    /// Shared with the keepalive task of a running stream.
    wr: Arc<Mutex<WriteHalf<Box<dyn Io>>>>,
    buf: BytesMut,
    out: BytesMut,
    endpoint: String,
}

/// Failure of a replication command: a server error (with SQLSTATE) or
/// anything else, already converted.
pub(crate) enum CommandError {
    Server(ServerError),
    Other(Error),
}

impl CommandError {
    pub fn into_error(self, what: &str) -> Error {
        match self {
            CommandError::Server(s) => s.into_error(what),
            CommandError::Other(e) => e,
        }
    }
}

impl From<Error> for CommandError {
    fn from(e: Error) -> Self {
        CommandError::Other(e)
    }
}

impl ReplicationConn {
    /// Connects and authenticates in logical replication mode.
    pub async fn connect(endpoint: &Endpoint) -> Result<ReplicationConn> {
        let (host, port) = (endpoint.host(), endpoint.port());
        let io: Box<dyn Io> = match endpoint.config.get_hosts().first() {
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(
                    tokio::net::UnixStream::connect(&path)
                        .await
                        .map_err(|e| io_error(&host, port, e))?,
                )
            }
            _ => {
                let s = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    tokio::net::TcpStream::connect((host.as_str(), port)),
                )
                .await
                .map_err(|_| {
                    Error::transient(format!(
                        "cannot connect to PostgreSQL at {host}:{port}: timed out"
                    ))
                })?
                .map_err(|e| io_error(&host, port, e))?;
                s.set_nodelay(true).ok();
                Box::new(s)
            }
        };
        let (rd, wr) = tokio::io::split(io);
        let mut conn = ReplicationConn {
            rd,
            wr: Arc::new(Mutex::new(wr)),
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::new(),
            endpoint: format!("{host}:{port}"),
        };
        let mut params = vec![
            ("user", endpoint.user()),
            ("database", endpoint.dbname()),
            ("replication", "database"),
            ("application_name", "ferry"),
        ];
        params.retain(|(_, v)| !v.is_empty());
        frontend::startup_message(params.iter().copied(), &mut conn.out)
            .map_err(|e| conn.io_err(e))?;
        conn.flush().await?;
        conn.authenticate(endpoint).await.map_err(|e| match e {
            CommandError::Server(s) => {
                s.into_error(&format!("connecting to {}", endpoint.describe()))
            }
            CommandError::Other(e) => e,
        })?;
        Ok(conn)
    }

    async fn authenticate(&mut self, endpoint: &Endpoint) -> Result<(), CommandError> {
        let password = || {
            endpoint
                .password()
                .ok_or_else(|| endpoint.password_missing())
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read_message().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = password()?.to_vec();
                    frontend::password_message(&pw, &mut self.out).map_err(|e| self.io_err(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        endpoint.user().as_bytes(),
                        password()?,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.out)
                        .map_err(|e| self.io_err(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut ok = false;
                    while let Ok(Some(m)) = mechs.next() {
                        ok |= m == sasl::SCRAM_SHA_256;
                    }
                    if !ok {
                        return Err(Error::fatal(
                            "the server offers no SASL mechanism ferry supports (SCRAM-SHA-256)",
                        )
                        .into());
                    }
                    let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.out,
                    )
                    .map_err(|e| self.io_err(e))?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::fatal("unexpected SASL message"))?;
                    s.update(body.data())
                        .map_err(|e| Error::fatal(format!("SCRAM authentication failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.out)
                        .map_err(|e| self.io_err(e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::fatal("unexpected SASL message"))?;
                    s.finish(body.data())
                        .map_err(|e| Error::fatal(format!("SCRAM authentication failed: {e}")))?;
                }
                Message::ErrorResponse(body) => {
                    return Err(CommandError::Server(ServerError::parse(&body)));
                }
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => {}
                _ => {
                    return Err(Error::fatal("unsupported authentication method requested by the server")
                        .with_fix("allow scram-sha-256, md5, password or trust for ferry's user in pg_hba.conf")
                        .into());
                }
            }
        }
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        Error::transient(format!("replication connection to {}: {e}", self.endpoint))
    }

    async fn flush(&mut self) -> Result<()> {
        let out = self.out.split();
        let mut wr = self.wr.lock().await;
        wr.write_all(&out).await.map_err(|e| self.io_err(e))?;
        wr.flush().await.map_err(|e| self.io_err(e))
    }

    /// Reads one backend message. Cancel-safe: partial reads stay buffered.
    async fn read_raw(&mut self) -> Result<(u8, BytesMut)> {
        loop {
            if self.buf.len() >= 5 {
                let len =
                    u32::from_be_bytes(self.buf[1..5].try_into().unwrap_or_default()) as usize;
                if len < 4 {
                    return Err(Error::fatal(
                        "malformed message on the replication connection",
                    ));
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    return Ok((tag, self.buf.split_to(len + 1)));
                }
                self.buf.reserve(len + 1 - self.buf.len());
            }
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| self.io_err(e))?;
            if n == 0 {
                return Err(Error::transient(format!(
                    "the replication connection to {} was closed by the server",
                    self.endpoint
                )));
            }
        }
    }

    async fn read_message(&mut self) -> Result<Message> {
        let (tag, mut frame) = self.read_raw().await?;
        if tag == b'W' {
            return Err(Error::fatal("unexpected copy-both response"));
        }
        Message::parse(&mut frame)
            .map_err(|e| self.io_err(e))?
            .ok_or_else(|| Error::fatal("truncated message on the replication connection"))
    }

    /// Runs a replication command (or SQL) and returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, CommandError> {
        frontend::query(sql, &mut self.out).map_err(|e| self.io_err(e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Ok(Some(r)) = ranges.next() {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Message::ErrorResponse(body) => error = Some(ServerError::parse(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(CommandError::Server(e)),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION ...` and waits for the copy-both response.
    pub async fn start_replication(&mut self, sql: &str) -> Result<(), CommandError> {
        frontend::query(sql, &mut self.out).map_err(|e| self.io_err(e))?;
        self.flush().await?;
        loop {
            let (tag, mut frame) = self.read_raw().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => {
                    if let Ok(Some(Message::ErrorResponse(body))) = Message::parse(&mut frame) {
                        let err = ServerError::parse(&body);
                        // Drain up to ReadyForQuery so the session stays usable.
                        while let Ok(m) = self.read_message().await {
                            if matches!(m, Message::ReadyForQuery(_)) {
                                break;
                            }
                        }
                        return Err(CommandError::Server(err));
                    }
                    return Err(Error::fatal("malformed error response").into());
                }
                b'N' | b'S' => {}
                other => {
                    return Err(Error::fatal(format!(
                        "unexpected message {:?} after START_REPLICATION",
                        other as char
                    ))
                    .into());
                }
            }
        }
    }

    /// Whether a whole message is already buffered (`recv` will not wait).
    pub fn has_buffered_message(&self) -> bool {
        self.buf.len() >= 5
            && self.buf.len()
                > u32::from_be_bytes(self.buf[1..5].try_into().unwrap_or_default()) as usize
    }

    /// The next message of the replication stream. Cancel-safe.
    pub async fn recv(&mut self) -> Result<ReplicationMessage, CommandError> {
        loop {
            let (tag, mut frame) = self.read_raw().await?;
            match tag {
                b'd' => {
                    frame.advance(5);
                    let mut data = frame.freeze();
                    let malformed = || Error::fatal("malformed replication message");
                    match data.first() {
                        Some(b'w') if data.len() >= 25 => {
                            data.advance(1);
                            // start LSN, end LSN, send time: the pgoutput
                            // messages carry the positions ferry uses.
                            data.advance(24);
                            return Ok(ReplicationMessage::XLogData { data });
                        }
                        Some(b'k') if data.len() >= 18 => {
                            data.advance(1);
                            let wal_end = Lsn(data.get_u64());
                            let _time = data.get_i64();
                            let reply = data.get_u8() != 0;
                            return Ok(ReplicationMessage::Keepalive { wal_end, reply });
                        }
                        _ => return Err(malformed().into()),
                    }
                }
                b'E' => {
                    if let Ok(Some(Message::ErrorResponse(body))) = Message::parse(&mut frame) {
                        return Err(CommandError::Server(ServerError::parse(&body)));
                    }
                    return Err(Error::fatal("malformed error response").into());
                }
                b'c' => {
                    return Err(Error::transient(format!(
                        "the server at {} ended the replication stream",
                        self.endpoint
                    ))
                    .into());
                }
                _ => {}
            }
        }
    }

    /// Sends a standby status update: everything up to `flushed` is durable.
    pub async fn send_status(&mut self, flushed: Lsn) -> Result<()> {
        status_message(flushed, &mut self.out).map_err(|e| self.io_err(e))?;
        self.flush().await
    }

    /// Starts a task that sends a standby status update with `confirmed`
    /// every `every`, so the server keeps the stream even while the
    /// pipeline, busy applying, does not read it (`wal_sender_timeout`).
    /// The task ends when the returned handle is aborted or a write fails.
    pub fn keepalive(&self, confirmed: Arc<AtomicU64>, every: Duration) -> JoinHandle<()> {
        let wr = self.wr.clone();
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            loop {
                tokio::time::sleep(every).await;
                if status_message(Lsn(confirmed.load(Ordering::Acquire)), &mut out).is_err() {
                    return;
                }
                let data = out.split();
                let mut wr = wr.lock().await;
                if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        })
    }
}

/// A standby status update: everything up to `flushed` is written,
/// flushed and applied.
fn status_message(flushed: Lsn, out: &mut BytesMut) -> std::io::Result<()> {
    let mut msg = BytesMut::with_capacity(34);
    msg.extend_from_slice(b"r");
    for _ in 0..3 {
        msg.extend_from_slice(&flushed.0.to_be_bytes());
    }
    msg.extend_from_slice(&crate::position::pg_now_micros().to_be_bytes());
    msg.extend_from_slice(&[0]);
    frontend::CopyData::new(msg.freeze())?.write(out);
    Ok(())
}

fn io_error(host: &str, port: u16, e: std::io::Error) -> Error {
    let class = ErrorClass::Transient;
    let what = if e.kind() == std::io::ErrorKind::ConnectionRefused {
        "connection refused".to_owned()
    } else {
        e.to_string()
    };
    Error::new(
        class,
        format!("cannot connect to PostgreSQL at {host}:{port}: {what}"),
    )
    .with_fix(format!(
        "check that PostgreSQL runs on {host} and listens on port {port}, and that the URL names \
         the right host and port"
    ))
}
