//! Source tests against a real MariaDB.
