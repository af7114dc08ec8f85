//! Maps driver and server errors to ferry's error classes.
//!
//! The class follows the server's error number: deadlocks, lock waits,
//! lost connections and shutdowns are transient; bad values and duplicate
//! keys are data errors; privileges, authentication and everything unknown
//! are fatal. Messages keep the server's text and add a fix where there is
//! a known one.

use ferry_core::{Error, ErrorClass};

/// Class of a server error number.
pub(crate) fn class_of(code: u16) -> ErrorClass {
    match code {
        // deadlock, lock wait timeout, too many connections, server
        // shutdown, connection killed, query interrupted
        1213 | 1205 | 1040 | 1053 | 1927 | 1317 | 3024 => ErrorClass::Transient,
        // duplicate key, out of range, incorrect value, data too long,
        // truncated, cannot be null, foreign key
        1062 | 1264 | 1366 | 1367 | 1406 | 1292 | 1048 | 1451 | 1452 | 1265 | 4025 => {
            ErrorClass::Data
        }
        _ => ErrorClass::Fatal,
    }
}

/// A fix for well-known server errors.
pub(crate) fn fix_for(code: u16) -> Option<&'static str> {
    Some(match code {
        1045 => {
            "check the user and password in the connection URL (the password can come from \
             the environment: url = \"mysql://user:${MYSQL_PASSWORD}@host:3306/db\"), and that \
             the user may connect from this host"
        }
        1044 | 1142 | 1143 | 1227 => {
            "grant the missing privilege to ferry's user (the message names it): a source \
             needs SELECT, RELOAD-free consistent reads and REPLICATION SLAVE, REPLICATION \
             CLIENT; a target needs SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, DROP on \
             its database"
        }
        1049 => "create the database, or fix the database name in the connection URL",
        1040 => "too many connections: raise max_connections or lower ferry's workers",
        1236 => {
            "the binlog ferry needs was purged from the source (or the position is not in \
             it): raise expire_logs_days/binlog_expire_logs_seconds, then `ferry reset` the \
             pipeline (or `ferry resync`) to copy the tables again"
        }
        _ => return None,
    })
}

/// A failed statement or read, as a ferry error; `doing` says what ferry
/// was doing ("reading table shop.orders").
pub(crate) fn my_error(e: mysql_async::Error, doing: &str) -> Error {
    match e {
        mysql_async::Error::Server(s) => {
            let mut err = Error::new(
                class_of(s.code),
                format!(
                    "{doing}: {} (error {}, SQLSTATE {})",
                    s.message, s.code, s.state
                ),
            );
            if let Some(fix) = fix_for(s.code) {
                err = err.with_fix(fix);
            }
            if matches!(s.code, 1053 | 1927) {
                err = err.with_connection_lost();
            }
            err
        }
        mysql_async::Error::Io(io) => {
            Error::transient(format!("{doing}: the connection failed: {io}")).with_connection_lost()
        }
        other if other.is_fatal() => {
            Error::transient(format!("{doing}: {other}")).with_connection_lost()
        }
        other => Error::fatal(format!("{doing}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlocks_are_retried_and_bad_values_are_data() {
        assert_eq!(class_of(1213), ErrorClass::Transient);
        assert_eq!(class_of(1062), ErrorClass::Data);
        assert_eq!(class_of(1045), ErrorClass::Fatal);
        assert!(fix_for(1236).unwrap().contains("purged"));
    }
}
