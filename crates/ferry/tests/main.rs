//! End-to-end tests of the real `ferry` binary on real SQLite files.

mod bad_input;
mod crash;
mod e2e;
mod kit;
mod postgres;
mod replace;
