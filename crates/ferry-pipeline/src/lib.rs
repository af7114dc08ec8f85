//! Ferry's pipeline runtime: bounded queues, batching, hot-row merge,
//! dependency scheduling, apply workers, ordered commits, acks and
//! shutdown. Knows no database: it drives `ferry_core::{Source, Sink}`.

mod commits;
mod dispatch;
pub mod merge;
pub mod options;
pub mod ownership;
pub mod predicate;
pub mod queue;
mod recopy;
pub mod runtime;
pub mod schedule;
mod snapshot;
mod startup;
pub mod stats;
pub mod transform;
mod worker;

pub use options::{Consistency, OnGap, Options};
pub use ownership::different_databases;
pub use runtime::{Outcome, Pipeline, share_shapes, sync_sequences};
pub use stats::{Stats, TargetConsistency};
pub use transform::{Ops, TableRule, Transform, TransformSpec};
