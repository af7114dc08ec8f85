//! A TCP proxy on `127.0.0.1` that makes a loopback connection behave like
//! a long-distance link: limited bandwidth, added one-way latency, and a
//! cut on command (every connection dropped, new ones refused until
//! [`LinkProxy::restore`]). Tests and benchmarks put it between ferry and
//! one database to see what a cross-region link does to them.
//!
//! Plain threads, no runtime: two per direction of each connection (one
//! reads, one delivers each piece once its latency has passed and the
//! link's bandwidth allows). Counts the bytes it carried each way.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the link does to the bytes it carries, in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Bits per second each way; `None`: as fast as loopback.
    pub bits_per_sec: Option<u64>,
    /// Added to every byte's trip, each way (a round trip pays it twice).
    pub latency: Duration,
}

impl Link {
    /// A cross-region link: 100 Mbit/s, 20 ms each way.
    pub fn cross_region() -> Link {
        Link {
            bits_per_sec: Some(100_000_000),
            latency: Duration::from_millis(20),
        }
    }
}

struct Shared {
    link: Link,
    upstream: SocketAddr,
    stop: AtomicBool,
    cut: AtomicBool,
    /// Both ends of every open connection, to shut them down on a cut.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// Bytes carried toward the upstream server, and back.
    up: AtomicU64,
    down: AtomicU64,
}

/// The proxy: listens on a free loopback port and forwards to `upstream`.
/// Dropping it closes every connection.
pub struct LinkProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl LinkProxy {
    /// Starts a proxy to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16, link: Link) -> io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            link,
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            stop: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(&listener, &s));
        Ok(LinkProxy {
            port,
            shared,
            accept: Some(accept),
        })
    }

    /// The port clients connect to instead of the upstream's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the link: every open connection is shut down and new ones are
    /// closed as soon as they are accepted, until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        shut_all(&self.shared);
    }

    /// Ends a [`cut`](Self::cut): new connections go through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Bytes carried so far: (toward the upstream, back from it).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.up.load(Ordering::SeqCst),
            self.shared.down.load(Ordering::SeqCst),
        )
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        shut_all(&self.shared);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn shut_all(shared: &Shared) {
    let open = std::mem::take(&mut *shared.open.lock().unwrap_or_else(|p| p.into_inner()));
    for (a, b) in open {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = connect(client, shared);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn connect(client: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(shared.upstream)?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
    }
    shared
        .open
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((client.try_clone()?, server.try_clone()?));
    pipe(client.try_clone()?, server.try_clone()?, shared, true);
    pipe(server, client, shared, false);
    Ok(())
}

/// Carries bytes from `from` to `to` through the link: a reader thread
/// stamps each piece with its arrival, a writer delivers it once the
/// latency has passed and the bandwidth allows.
fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Arc<Shared>, up: bool) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let shared = shared.clone();
    std::thread::spawn(move || {
        let link = shared.link;
        // When the link is free to send the next byte.
        let mut free_at = Instant::now();
        for (arrived, piece) in rx {
            let due = arrived + link.latency;
            let start = free_at.max(due);
            let on_wire = link.bits_per_sec.map_or(Duration::ZERO, |bps| {
                Duration::from_secs_f64(piece.len() as f64 * 8.0 / bps as f64)
            });
            free_at = start + on_wire;
            let now = Instant::now();
            if free_at > now {
                std::thread::sleep(free_at - now);
            }
            if to.write_all(&piece).is_err() {
                break;
            }
            let counter = if up { &shared.up } else { &shared.down };
            counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port; returns its port.
    fn echo() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut s);
                });
            }
        });
        port
    }

    fn round_trip(port: u16, bytes: usize) -> io::Result<Duration> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let data = vec![7u8; bytes];
        let t = Instant::now();
        let mut w = s.try_clone()?;
        let writer = std::thread::spawn(move || w.write_all(&data));
        let mut back = vec![0u8; bytes];
        s.read_exact(&mut back)?;
        writer.join().unwrap()?;
        Ok(t.elapsed())
    }

    #[test]
    fn latency_is_paid_each_way() {
        let link = Link {
            bits_per_sec: None,
            latency: Duration::from_millis(30),
        };
        let p = LinkProxy::start(echo(), link).unwrap();
        let t = round_trip(p.port(), 10).unwrap();
        assert!(t >= Duration::from_millis(60), "{t:?}");
        assert!(t < Duration::from_millis(1000), "{t:?}");
        assert_eq!(p.bytes(), (10, 10));
    }

    #[test]
    fn bandwidth_is_limited() {
        // 1 Mbit/s: 50 kB take 0.4 s each way, pipelined.
        let link = Link {
            bits_per_sec: Some(1_000_000),
            latency: Duration::ZERO,
        };
        let p = LinkProxy::start(echo(), link).unwrap();
        let t = round_trip(p.port(), 50_000).unwrap();
        assert!(t >= Duration::from_millis(400), "{t:?}");
    }

    #[test]
    fn a_cut_drops_connections_until_restored() {
        let p = LinkProxy::start(
            echo(),
            Link {
                bits_per_sec: None,
                latency: Duration::ZERO,
            },
        )
        .unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", p.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        round_trip(p.port(), 100).unwrap();
        p.cut();
        // The open connection ends; a new one is closed at once.
        let mut buf = [0u8; 1];
        let _ = s.write_all(b"x");
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        assert!(round_trip(p.port(), 10).is_err());
        p.restore();
        round_trip(p.port(), 100).unwrap();
    }
}
