//! Tests of the MySQL/MariaDB connector against a real MariaDB server.

mod sink;
mod source;
