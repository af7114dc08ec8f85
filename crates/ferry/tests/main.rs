//! End-to-end tests of the real `ferry` binary on real SQLite files and
//! real PostgreSQL servers, crash tests included.

mod active_active;
mod bad_input;
mod crash;
mod e2e;
mod exact;
mod failpoints;
mod fence;
mod fidelity;
mod gateway;
mod help;
mod kit;
mod mariadb;
mod mariadb_crash;
mod mariadb_target;
mod operations;
mod outage;
mod pg_to_sqlite;
mod postgres;
mod precreated;
mod refused;
mod replace;
mod shape;
mod sqlite_exact;
mod verify;
mod verify_mariadb;
