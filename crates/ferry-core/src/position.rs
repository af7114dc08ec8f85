//! Typed, ordered replication positions.
//!
//! Inside ferry a position is always typed: a PostgreSQL position is an
//! `(commit_lsn, lsn)` pair, a MySQL one a binlog file and offset (with the
//! GTID set when known), a SQLite one the sequence number of its change
//! table. Only at the checkpoint boundary does a position become text: a
//! versioned envelope (`ferry.pos.v1 <kind> <payload>`) that
//! [`Position::from_envelope`] decodes and rejects loudly when it does not
//! know the version or kind, rather than resuming from a wrong place.

use std::cmp::Ordering;
use std::fmt;

use thiserror::Error;

const ENVELOPE_PREFIX: &str = "ferry.pos.v1";

/// A PostgreSQL log sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl std::str::FromStr for Lsn {
    type Err = PositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PositionError::Malformed {
            kind: "postgres",
            text: s.to_owned(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// Position in a PostgreSQL logical stream: the commit LSN of the last whole
/// transaction, and the LSN of the last change of it that was delivered
/// (equal to the end of the commit for whole transactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgPosition {
    pub commit_lsn: Lsn,
    pub lsn: Lsn,
}

/// Position in a MySQL/MariaDB binlog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MySqlPosition {
    pub file: String,
    pub offset: u64,
    /// GTID set (MySQL) or GTID position (MariaDB) after this event, if known.
    pub gtid: Option<String>,
}

impl PartialOrd for MySqlPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        // Binlog file names carry a zero-padded increasing suffix.
        Some((self.file.as_str(), self.offset).cmp(&(other.file.as_str(), other.offset)))
    }
}

/// Position in a SQLite source's change table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SqlitePosition {
    /// Highest change-table sequence number included.
    pub seq: i64,
}

/// A position of any source kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Position {
    Sqlite(SqlitePosition),
    Postgres(PgPosition),
    MySql(MySqlPosition),
}

impl PartialOrd for Position {
    /// Positions of different kinds do not compare.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self, other) {
            (Position::Sqlite(a), Position::Sqlite(b)) => a.partial_cmp(b),
            (Position::Postgres(a), Position::Postgres(b)) => a.partial_cmp(b),
            (Position::MySql(a), Position::MySql(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PositionError {
    #[error(
        "checkpoint position {text:?} is not in a format this ferry understands \
         (expected it to start with {ENVELOPE_PREFIX:?}); it was written by another \
         version of ferry or edited by hand. Run the version of ferry that wrote it, \
         or reset the pipeline (`ferry reset`) to start again from a fresh snapshot"
    )]
    UnknownVersion { text: String },
    #[error(
        "checkpoint position {text:?} is of kind {kind:?}, which this ferry does not know; \
         the checkpoint belongs to another kind of source. Reset the pipeline or point it \
         at the source that wrote the checkpoint"
    )]
    UnknownKind { kind: String, text: String },
    #[error("checkpoint position {text:?} is not a valid {kind} position")]
    Malformed { kind: &'static str, text: String },
    #[error(
        "the checkpoint holds a {found} position but this pipeline's source is {expected}; \
         the target was written by another pipeline. Use another target or reset this one"
    )]
    WrongKind {
        expected: &'static str,
        found: &'static str,
    },
}

impl Position {
    pub fn kind(&self) -> &'static str {
        match self {
            Position::Sqlite(_) => "sqlite",
            Position::Postgres(_) => "postgres",
            Position::MySql(_) => "mysql",
        }
    }

    /// The versioned text form stored in checkpoints.
    pub fn to_envelope(&self) -> String {
        let payload = match self {
            Position::Sqlite(p) => p.seq.to_string(),
            Position::Postgres(p) => format!("{} {}", p.commit_lsn, p.lsn),
            Position::MySql(p) => {
                format!(
                    "{} {} {}",
                    p.file,
                    p.offset,
                    p.gtid.as_deref().unwrap_or("-")
                )
            }
        };
        format!("{ENVELOPE_PREFIX} {} {payload}", self.kind())
    }

    pub fn from_envelope(text: &str) -> Result<Position, PositionError> {
        let mut parts = text.split(' ');
        if parts.next() != Some(ENVELOPE_PREFIX) {
            return Err(PositionError::UnknownVersion {
                text: text.to_owned(),
            });
        }
        let kind = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        let malformed = |kind| PositionError::Malformed {
            kind,
            text: text.to_owned(),
        };
        match kind {
            "sqlite" => match rest.as_slice() {
                [seq] => Ok(Position::Sqlite(SqlitePosition {
                    seq: seq.parse().map_err(|_| malformed("sqlite"))?,
                })),
                _ => Err(malformed("sqlite")),
            },
            "postgres" => match rest.as_slice() {
                [commit, lsn] => Ok(Position::Postgres(PgPosition {
                    commit_lsn: commit.parse().map_err(|_| malformed("postgres"))?,
                    lsn: lsn.parse().map_err(|_| malformed("postgres"))?,
                })),
                _ => Err(malformed("postgres")),
            },
            "mysql" => match rest.as_slice() {
                [file, offset, gtid] => Ok(Position::MySql(MySqlPosition {
                    file: (*file).to_owned(),
                    offset: offset.parse().map_err(|_| malformed("mysql"))?,
                    gtid: (*gtid != "-").then(|| (*gtid).to_owned()),
                })),
                _ => Err(malformed("mysql")),
            },
            other => Err(PositionError::UnknownKind {
                kind: other.to_owned(),
                text: text.to_owned(),
            }),
        }
    }

    /// Decodes a SQLite position, rejecting any other kind.
    pub fn as_sqlite(&self) -> Result<SqlitePosition, PositionError> {
        match self {
            Position::Sqlite(p) => Ok(*p),
            other => Err(PositionError::WrongKind {
                expected: "sqlite",
                found: other.kind(),
            }),
        }
    }

    pub fn as_postgres(&self) -> Result<PgPosition, PositionError> {
        match self {
            Position::Postgres(p) => Ok(*p),
            other => Err(PositionError::WrongKind {
                expected: "postgres",
                found: other.kind(),
            }),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Sqlite(p) => write!(f, "seq {}", p.seq),
            Position::Postgres(p) => write!(f, "lsn {}", p.commit_lsn),
            Position::MySql(p) => write!(f, "{}:{}", p.file, p.offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let positions = [
            Position::Sqlite(SqlitePosition { seq: 42 }),
            Position::Postgres(PgPosition {
                commit_lsn: Lsn(0x1_0000_00A0),
                lsn: Lsn(7),
            }),
            Position::MySql(MySqlPosition {
                file: "binlog.000003".into(),
                offset: 4,
                gtid: None,
            }),
            Position::MySql(MySqlPosition {
                file: "binlog.000003".into(),
                offset: 4,
                gtid: Some("0-1-17".into()),
            }),
        ];
        for p in positions {
            assert_eq!(Position::from_envelope(&p.to_envelope()).unwrap(), p);
        }
    }

    #[test]
    fn unknown_envelopes_are_rejected_loudly() {
        assert!(matches!(
            Position::from_envelope("ferry.pos.v9 sqlite 1"),
            Err(PositionError::UnknownVersion { .. })
        ));
        assert!(matches!(
            Position::from_envelope("ferry.pos.v1 oracle 1"),
            Err(PositionError::UnknownKind { .. })
        ));
        assert!(matches!(
            Position::from_envelope("ferry.pos.v1 sqlite x"),
            Err(PositionError::Malformed { .. })
        ));
        let err = Position::Sqlite(SqlitePosition { seq: 1 })
            .as_postgres()
            .unwrap_err();
        assert!(err.to_string().contains("another pipeline"));
    }

    #[test]
    fn positions_order_within_a_kind_only() {
        let a = Position::Sqlite(SqlitePosition { seq: 1 });
        let b = Position::Sqlite(SqlitePosition { seq: 2 });
        assert!(a < b);
        let p = Position::Postgres(PgPosition {
            commit_lsn: Lsn(1),
            lsn: Lsn(1),
        });
        assert_eq!(a.partial_cmp(&p), None);
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
    }
}
