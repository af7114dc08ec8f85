//! End-to-end tests of the real `ferry` binary on real SQLite files.

mod bad_input;
mod crash;
mod e2e;
mod exact;
mod fence;
mod help;
mod kit;
mod operations;
mod outage;
mod postgres;
