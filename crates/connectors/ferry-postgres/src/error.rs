//! Maps driver and server errors to ferry's error classes.
//!
//! The class follows the SQLSTATE: serialization failures, deadlocks,
//! lost connections and shutdowns are transient; constraint and data
//! exceptions are data errors; privileges, authentication and everything
//! unknown are fatal. Messages keep the server's text and add a fix where
//! there is a known one.

use ferry_core::{Error, ErrorClass};

/// Class of a SQLSTATE.
pub(crate) fn class_of(code: &str) -> ErrorClass {
    match code {
        "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57014" | "53300" | "53200"
        | "53100" | "58030" => ErrorClass::Transient,
        c if c.starts_with("08") => ErrorClass::Transient,
        c if c.starts_with("23") || c.starts_with("22") => ErrorClass::Data,
        _ => ErrorClass::Fatal,
    }
}

/// SQLSTATEs after which the session is gone: connection exceptions, and
/// the server ending the session (shutdown, crash recovery, terminated
/// backend).
fn ends_session(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// A fix for well-known SQLSTATEs.
pub(crate) fn fix_for(code: &str) -> Option<&'static str> {
    Some(match code {
        "42501" => {
            "grant the missing privilege to ferry's user (the message names the object), \
             or connect as its owner"
        }
        "28P01" | "28000" => {
            "check the user and password in the connection URL (the password can come from \
             the environment), and that pg_hba.conf allows this user from this host"
        }
        "3D000" => "create the database, or fix the database name in the connection URL",
        "53300" => "too many connections: raise max_connections or lower ferry's writers",
        "57P01" | "57P02" | "57P03" => "the server is shutting down or starting; ferry retries",
        _ => return None,
    })
}

/// The fix for a label the target's enum lacks (added to the source's
/// enum after ferry created the type): PostgreSQL says `invalid input
/// value for enum <type>: "<label>"`.
fn enum_label_fix(code: &str, message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid input value for enum ")?;
    let (ty, label) = rest.split_once(": ")?;
    let label = label.strip_prefix('"')?.strip_suffix('"')?;
    (code == "22P02").then(|| {
        format!(
            "the source's enum has a label the target's lacks: run ALTER TYPE {ty} ADD VALUE \
             '{}' on the target (AFTER the label that precedes it on the source), then \
             restart ferry",
            label.replace('\'', "''")
        )
    })
}

/// Converts a driver error, with `what` saying what ferry was doing.
pub(crate) fn pg_error(e: tokio_postgres::Error, what: &str) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code().to_owned();
        let mut err = Error::new(class_of(&code), format!("{what}: {}", db.message()))
            .with("sqlstate", code.clone());
        if let Some(d) = db.detail() {
            err = err.with("detail", d);
        }
        if let Some(h) = db.hint() {
            err = err.with("hint", h);
        }
        if let Some(t) = db.table() {
            err = err.with("db table", t);
        }
        if let Some(w) = db.where_() {
            // "COPY t, line 2, column v: ...": where in the data.
            err = err.with("where", w);
        }
        if let Some(c) = db.constraint() {
            err = err.with("constraint", c);
        }
        if let Some(f) = fix_for(&code) {
            err = err.with_fix(f);
        }
        if let Some(f) = enum_label_fix(&code, db.message()) {
            err = err.with_fix(f);
        }
        if ends_session(&code) {
            err = err.with_connection_lost();
        }
        return err;
    }
    if e.is_closed() {
        return Error::transient(format!("{what}: the connection to PostgreSQL was closed"))
            .with_source(e)
            .with_connection_lost();
    }
    let text = e.to_string();
    match e.into_source() {
        Some(src) => match src.downcast::<Error>() {
            // A value that could not be encoded (ToSql).
            Ok(ours) => *ours,
            Err(src) => {
                // An I/O error on the socket: the connection is broken.
                if src.downcast_ref::<std::io::Error>().is_some() {
                    Error::transient(format!("{what}: {text}: {src}")).with_connection_lost()
                } else {
                    Error::fatal(format!("{what}: {text}: {src}"))
                }
            }
        },
        None => Error::fatal(format!("{what}: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify() {
        assert_eq!(class_of("40001"), ErrorClass::Transient);
        assert_eq!(class_of("08006"), ErrorClass::Transient);
        assert_eq!(class_of("23505"), ErrorClass::Data);
        assert_eq!(class_of("22003"), ErrorClass::Data);
        assert_eq!(class_of("42501"), ErrorClass::Fatal);
        assert!(fix_for("28P01").is_some());
        assert!(ends_session("08006") && ends_session("57P01"));
        assert!(!ends_session("40001") && !ends_session("57014"));
    }
}
