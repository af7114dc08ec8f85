//! A throwaway NATS server with JetStream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{
    START_TIMEOUT, STOP_GRACE, StartError, kill, log_tail, output_file, poll_until, require_binary,
    temp_dir, terminate, with_port_retry,
};
use crate::port::free_port;

/// Options for a [`NatsServer`]; get one from [`NatsServer::builder`].
#[derive(Clone, Debug)]
pub struct NatsBuilder {
    jetstream: bool,
    args: Vec<String>,
}

impl Default for NatsBuilder {
    fn default() -> Self {
        NatsBuilder {
            jetstream: true,
            args: Vec::new(),
        }
    }
}

impl NatsBuilder {
    /// Whether JetStream is on (default `true`).
    pub fn jetstream(mut self, on: bool) -> Self {
        self.jetstream = on;
        self
    }

    /// An extra `nats-server` command-line option, e.g. `"--max_payload=1MB"`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Starts the server; panics with the reason and the log tail if it
    /// cannot.
    pub fn start(self) -> NatsServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("NatsServer: {e}"))
    }

    /// Starts the server, or says why it could not. Retries once with new
    /// ports if a chosen one was taken meanwhile.
    pub fn try_start(self) -> Result<NatsServer, StartError> {
        let binary = require_binary("nats-server", "nats-server")?;
        with_port_retry(|| {
            let mut server = NatsServer {
                config: self.clone(),
                binary: binary.clone(),
                port: free_port(),
                monitor_port: free_port(),
                child: None,
                dir: temp_dir("ferry-nats-")?,
            };
            server.spawn_and_wait()?;
            Ok(server)
        })
    }
}

/// A NATS server of its own for one test: `127.0.0.1` on a free port,
/// JetStream on with its store in a temporary directory, monitoring
/// (`/healthz`, `/varz`, `/jsz`) on a second free port.
///
/// Dropping it kills the server and deletes the directory.
///
/// ```no_run
/// let nats = ferry_testkit::NatsServer::start();
/// assert!(nats.info().contains(r#""jetstream":true"#));
/// let url = nats.url(); // nats://127.0.0.1:PORT
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct NatsServer {
    // Field order matters: `dir` is deleted after `Drop::drop` killed the
    // server.
    config: NatsBuilder,
    binary: PathBuf,
    port: u16,
    monitor_port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Options for a server; finish with [`NatsBuilder::start`].
    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// Starts a server with JetStream; panics if it cannot.
    pub fn start() -> NatsServer {
        Self::builder().start()
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.stderr")
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let stderr = output_file(&self.stderr_path())?;
        let stdout = stderr
            .try_clone()
            .map_err(|e| super::io_error("dup of the stderr file", e))?;
        let mut cmd = Command::new(&self.binary);
        if self.config.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.store_dir());
        }
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            // The monitoring listener binds the same host as `-a`.
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-l")
            .arg(self.log_path())
            .args(&self.config.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .map_err(|e| StartError::new(format!("cannot run {}: {e}", self.binary.display())))?;
        self.child = Some(child);
        let logs = [self.log_path(), self.stderr_path()];
        let logs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
        let (port, monitor_port) = (self.port, self.monitor_port);
        let child = self.child.as_mut().expect("just spawned");
        poll_until("nats-server", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(StartError::new(format!(
                    "nats-server on port {port} exited during start-up ({status})"
                )));
            }
            Ok(healthz_ok(monitor_port).then_some(()))
        })
        .map_err(|e| e.with_logs(&logs))
    }

    /// The client port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (on 127.0.0.1).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:MONITOR_PORT`
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// The `INFO {...}` line the server greets a new client connection
    /// with (without the trailing CRLF). Panics if none arrives in 5 s.
    pub fn info(&self) -> String {
        read_info(self.port)
            .unwrap_or_else(|e| panic!("NatsServer::info on port {}: {e}", self.port))
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 20 s), keeping
    /// the JetStream store; the ports then refuse connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_GRACE);
        }
    }

    /// Starts the server again on the same ports and store (after
    /// [`stop`](Self::stop)), or restarts it if running.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("NatsServer::restart on port {}: {e}", self.port);
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // The store is deleted with the directory: no need to be graceful.
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// `GET /healthz` on the monitoring port answers 200 (with JetStream on,
/// only once JetStream is ready).
fn healthz_ok(monitor_port: u16) -> bool {
    let Ok(mut stream) = connect(monitor_port) else {
        return false;
    };
    let request = "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return false;
    }
    let status_ok = response
        .lines()
        .next()
        .is_some_and(|l| l.starts_with("HTTP/1.") && l.split(' ').nth(1) == Some("200"));
    status_ok && response.contains("\"ok\"")
}

fn read_info(port: u16) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(connect(port)?).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}
