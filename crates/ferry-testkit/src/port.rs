//! Free loopback ports for servers started by tests.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Ports already handed out by this process, so that two fixtures started
/// at the same time in one test binary never get the same port.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// Binds port 0, reads the port the kernel chose and closes the socket, so
/// another process may grab it before the server binds it (a small race;
/// the server fixtures retry their start once with a new port when that
/// happens). Within this process a port is never returned twice.
///
/// # Panics
///
/// If no loopback port can be bound.
pub fn free_port() -> u16 {
    let mut seen = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("free_port: cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("free_port: local_addr: {e}"))
            .port();
        if seen.insert(port) {
            return port;
        }
    }
    panic!("free_port: the kernel kept returning ports already handed out")
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` (connect
/// with a 200 ms timeout).
pub fn port_is_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
