//! The one integration-test binary of ferry-pipeline: the runtime driven end
//! to end over the in-memory doubles of `ferry-testkit` (a `MemoryDb`
//! behind a `MemorySource`, a `MemorySink` with real transactions, the
//! recording and fault-injecting wrappers).
//!
//! The modules live in `tests/pipeline/` (a directory without `main.rs`,
//! so cargo does not build them as test binaries of their own).

#[path = "pipeline/support.rs"]
mod support;

#[path = "pipeline/errors.rs"]
mod errors;
#[path = "pipeline/eventual.rs"]
mod eventual;
#[path = "pipeline/fence.rs"]
mod fence;
#[path = "pipeline/heartbeat.rs"]
mod heartbeat;
#[path = "pipeline/recopy.rs"]
mod recopy;
#[path = "pipeline/restart.rs"]
mod restart;
#[path = "pipeline/snapshot.rs"]
mod snapshot;
#[path = "pipeline/stream.rs"]
mod stream;
