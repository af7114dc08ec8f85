//! Position tokens: what a client carries between reads and writes.
//!
//! A token is `<epoch>.<position>`: the source history the position
//! belongs to, then a point in it. PostgreSQL: `pg.<system
//! identifier>.<timeline>.<LSN>` (`pg.7449….1.0/16B3F28`), meaning every
//! transaction whose commit record starts before that LSN. Positions of
//! different epochs are never compared: a token from before a failover
//! tells nothing about the history after it. Merging tokens (a client
//! that read from two nodes) takes the greater one of the same epoch.

use std::fmt;

use ferry_core::{Lsn, PgPosition, Position, SqlitePosition};

/// A point in one source history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub epoch: String,
    /// What the point covers, as a comparable number in the epoch's units
    /// (PostgreSQL: an LSN; SQLite: a change-table sequence number).
    pub point: Point,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Point {
    Lsn(Lsn),
    Seq(i64),
}

impl Point {
    /// How far an applied position covers: a PostgreSQL transaction at
    /// `(commit_lsn, end_lsn)` includes every commit record starting before
    /// `end_lsn` (the next one starts at or after it); a heartbeat or
    /// snapshot point `(lsn, lsn)` every one before `lsn`.
    pub fn of(p: &Position) -> Option<Point> {
        match p {
            Position::Postgres(PgPosition { lsn, .. }) => Some(Point::Lsn(*lsn)),
            Position::Sqlite(SqlitePosition { seq }) => Some(Point::Seq(*seq)),
            Position::MySql(_) => None,
        }
    }

    /// Whether everything `self` covers includes everything `other` does
    /// (`None` when the two are of different kinds: never comparable).
    pub fn covers(&self, other: &Point) -> Option<bool> {
        match (self, other) {
            (Point::Lsn(a), Point::Lsn(b)) => Some(a >= b),
            (Point::Seq(a), Point::Seq(b)) => Some(a >= b),
            _ => None,
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.point {
            Point::Lsn(l) => write!(f, "{}.{l}", self.epoch),
            Point::Seq(s) => write!(f, "{}.{s}", self.epoch),
        }
    }
}

impl Token {
    /// Parses a token as [`Display`](fmt::Display) writes it.
    pub fn parse(text: &str) -> Result<Token, String> {
        let bad = |why: &str| format!("{text:?} is not a position token: {why}");
        let (epoch, point) = text
            .rsplit_once('.')
            .ok_or_else(|| bad("expected <epoch>.<position>"))?;
        let point = if epoch.starts_with("pg.") {
            Point::Lsn(
                point
                    .parse()
                    .map_err(|_| bad("the LSN is not like 0/16B3F28"))?,
            )
        } else if epoch.starts_with("sqlite.") {
            Point::Seq(
                point
                    .parse()
                    .map_err(|_| bad("the sequence is not a number"))?,
            )
        } else {
            return Err(bad("the epoch starts with neither pg. nor sqlite."));
        };
        Ok(Token {
            epoch: epoch.to_owned(),
            point,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_compare_only_within_an_epoch() {
        let t = Token::parse("pg.7449312345678901234.1.0/16B3F28").unwrap();
        assert_eq!(t.epoch, "pg.7449312345678901234.1");
        assert_eq!(t.point, Point::Lsn(Lsn(0x16B3F28)));
        assert_eq!(t.to_string(), "pg.7449312345678901234.1.0/16B3F28");
        let s = Token::parse("sqlite.abc.42").unwrap();
        assert_eq!(s.point, Point::Seq(42));
        assert_eq!(t.point.covers(&s.point), None);
        for bad in ["", "pg.1.1", "pg.1.1.xyz", "mysql.1.5", "sqlite.a.b"] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_applied_transaction_covers_commits_before_its_end() {
        let applied = Position::Postgres(PgPosition {
            commit_lsn: Lsn(100),
            lsn: Lsn(140),
        });
        let p = Point::of(&applied).unwrap();
        assert_eq!(p.covers(&Point::Lsn(Lsn(140))), Some(true));
        assert_eq!(p.covers(&Point::Lsn(Lsn(141))), Some(false));
    }
}
