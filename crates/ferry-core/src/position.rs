//! Typed, ordered replication positions.
//!
//! Inside ferry a position is always typed: a PostgreSQL position is an
//! `(commit_lsn, lsn)` pair, a SQLite one the sequence number of its change
//! table. Only at the checkpoint boundary does a position become text: a
//! versioned envelope (`ferry.pos.v1 <kind> <payload>`) that
//! [`Position::from_envelope`] decodes and rejects loudly when it does not
//! know the version or kind, rather than resuming from a wrong place.
//!
//! # What a connector's position must be
//!
//! Each engine has one arm of [`Position`], holding a type of its own. The
//! pipeline compares positions of one source only, and a checkpoint outlives
//! the ferry that wrote it, so that type MUST have:
//!
//! * a total order consistent with equality (`Ord` and `Eq` agree:
//!   `a.cmp(b) == Equal` exactly when `a == b`), in the order the source
//!   commits: the pipeline keeps the newest position durable and resumes
//!   after it, so an order that ties or inverts two different positions
//!   repeats or skips changes. Parts that only look ordered as text (a
//!   file name with a numeric suffix) are compared as what they mean;
//! * a stable text form: a kind name of its own and a payload of
//!   space-separated fields that parses back to an equal value. Checkpoints
//!   keep it across upgrades, so once released a form never changes; another
//!   form is another kind or another envelope version.
//!
//! Adding an engine's position is its type here, one arm of [`Position`]
//! and one arm in each match below; which positions a resume excludes is
//! the connector's own rule (in its `position.rs`).

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

/// Position in a SQLite source's change table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SqlitePosition {
    /// Highest change-table sequence number included.
    pub seq: i64,
}

/// Position in a MySQL/MariaDB binary log: the end of the last whole
/// transaction delivered, as the binlog file and the offset in it.
///
/// Files are ordered by their numeric suffix (`binlog.000010` after
/// `binlog.000009`, and after `binlog.999999` comes `binlog.1000000`),
/// never as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MySqlPosition {
    /// The binlog file's name, e.g. `binlog.000003`.
    pub file: String,
    /// Offset in `file` just past the transaction's last event.
    pub offset: u64,
}

impl MySqlPosition {
    /// The file's numeric suffix (`binlog.000003` → 3).
    pub fn file_index(&self) -> u64 {
        self.file
            .rsplit_once('.')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Ord for MySqlPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.file_index(), self.offset, &self.file).cmp(&(
            other.file_index(),
            other.offset,
            &other.file,
        ))
    }
}

impl PartialOrd for MySqlPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
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
            (Position::Sqlite(a), Position::Sqlite(b)) => Some(a.cmp(b)),
            (Position::Postgres(a), Position::Postgres(b)) => Some(a.cmp(b)),
            (Position::MySql(a), Position::MySql(b)) => Some(a.cmp(b)),
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
            Position::MySql(p) => format!("{} {}", p.file, p.offset),
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
                [file, offset] if !file.is_empty() => Ok(Position::MySql(MySqlPosition {
                    file: (*file).to_owned(),
                    offset: offset.parse().map_err(|_| malformed("mysql"))?,
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

    pub fn as_mysql(&self) -> Result<MySqlPosition, PositionError> {
        match self {
            Position::MySql(p) => Ok(p.clone()),
            other => Err(PositionError::WrongKind {
                expected: "mysql",
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
            Position::MySql(p) => write!(f, "binlog {}:{}", p.file, p.offset),
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
                offset: 1234,
            }),
        ];
        for p in positions {
            assert_eq!(Position::from_envelope(&p.to_envelope()).unwrap(), p);
        }
    }

    /// Checkpoints written by earlier versions hold these very texts.
    #[test]
    fn text_forms_are_stable() {
        let sqlite = Position::Sqlite(SqlitePosition { seq: 42 });
        let postgres = Position::Postgres(PgPosition {
            commit_lsn: Lsn(0x1_0000_00A0),
            lsn: Lsn(0x1_0000_00C8),
        });
        assert_eq!(sqlite.to_envelope(), "ferry.pos.v1 sqlite 42");
        assert_eq!(postgres.to_envelope(), "ferry.pos.v1 postgres 1/A0 1/C8");
        assert_eq!(sqlite.to_string(), "seq 42");
        assert_eq!(postgres.to_string(), "lsn 1/A0");
        let mysql = Position::MySql(MySqlPosition {
            file: "binlog.000003".into(),
            offset: 1234,
        });
        assert_eq!(mysql.to_envelope(), "ferry.pos.v1 mysql binlog.000003 1234");
        assert_eq!(mysql.to_string(), "binlog binlog.000003:1234");
    }

    #[test]
    fn binlog_files_order_by_their_number_not_their_text() {
        let at = |file: &str, offset| MySqlPosition {
            file: file.into(),
            offset,
        };
        assert!(at("binlog.000009", 900) < at("binlog.000010", 4));
        assert!(at("binlog.999999", 900) < at("binlog.1000000", 4));
        assert!(at("binlog.000010", 4) < at("binlog.000010", 5));
        assert_eq!(
            at("binlog.000010", 4).cmp(&at("binlog.000010", 4)),
            Ordering::Equal
        );
        // Ord agrees with Eq even for names with equal numbers.
        assert_ne!(at("a.000001", 4).cmp(&at("b.1", 4)), Ordering::Equal);
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
