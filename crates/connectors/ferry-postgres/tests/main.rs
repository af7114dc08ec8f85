//! Integration tests of ferry-postgres against real PostgreSQL servers
//! started by ferry-testkit (one server per test).

mod cdc;
mod check;
mod common;
mod conformance;
mod sink;
mod source;
mod types;
