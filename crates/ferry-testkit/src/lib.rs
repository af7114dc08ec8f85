//! Test-only kit for ferry.
//!
//! * [`server`]: real servers started per test — [`PostgresServer`],
//!   [`MariaDbServer`], [`NatsServer`] — on `127.0.0.1`, free ports and
//!   temporary directories, stopped on drop.
//! * [`eventually()`] / [`eventually_blocking()`]: wait on a condition with a
//!   deadline instead of sleeping.
//! * [`port`]: free loopback ports.
//! * [`doubles`]: in-memory, recording and fault-injecting doubles of the
//!   `ferry-core` contracts.
//! * [`failpoint`]: named failure points.
//! * [`link`]: a proxy that makes a loopback connection a slow, distant
//!   link (bandwidth, latency, a cut on command).
//!
//! The servers' binaries are installed by `scripts/install-test-deps.sh`.

#![warn(missing_docs)]

pub mod doubles;
pub mod eventually;
pub mod failpoint;
pub mod link;
pub mod port;
pub mod server;

pub use eventually::{Attempt, eventually, eventually_blocking};
pub use link::{Link, LinkProxy};
pub use port::{free_port, port_is_open};
pub use server::{
    MariaDbBuilder, MariaDbServer, NatsBuilder, NatsServer, PostgresBuilder, PostgresServer,
    StartError,
};
