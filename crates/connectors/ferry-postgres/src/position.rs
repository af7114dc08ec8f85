//! PostgreSQL positions: how LSNs of the stream become ferry's typed
//! [`PgPosition`]s, and which transactions a resume position excludes.
//!
//! * A transaction's position is `(commit_lsn, end_lsn)`: where its commit
//!   record starts and ends. `end_lsn` is what the slot is confirmed to.
//! * A snapshot or heartbeat position is `(lsn, lsn)`: every transaction
//!   whose commit record starts before `lsn` is included, none that starts
//!   at or after it. Since `end_lsn > commit_lsn`, a transaction committed
//!   exactly at `lsn` orders after the snapshot, as the server streams it.

use ferry_core::{Lsn, PgPosition, Position};

use crate::binary::PG_EPOCH_MICROS;

pub(crate) fn txn_position(commit_lsn: Lsn, end_lsn: Lsn) -> Position {
    Position::Postgres(PgPosition {
        commit_lsn,
        lsn: end_lsn,
    })
}

/// The position of a snapshot, or of "everything before `lsn`".
pub(crate) fn point(lsn: Lsn) -> Position {
    Position::Postgres(PgPosition {
        commit_lsn: lsn,
        lsn,
    })
}

/// Whether a transaction whose commit record starts at `commit_lsn` was
/// already delivered before `from` (so must be skipped on resume).
pub(crate) fn already_delivered(commit_lsn: Lsn, from: &PgPosition) -> bool {
    match commit_lsn.cmp(&from.commit_lsn) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        // Same commit: `from` is that transaction's own position (skip), or
        // a snapshot point right at its commit (deliver).
        std::cmp::Ordering::Equal => from.lsn > from.commit_lsn,
    }
}

/// Where `START_REPLICATION` starts for a resume position.
pub(crate) fn start_lsn(from: &PgPosition) -> Lsn {
    from.lsn
}

/// Now, in microseconds since 2000-01-01 (the protocol's clock).
pub(crate) fn pg_now_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    unix - PG_EPOCH_MICROS
}

/// A protocol timestamp as Unix microseconds.
pub(crate) fn unix_micros(pg_micros: i64) -> i64 {
    pg_micros + PG_EPOCH_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_excludes_exactly_what_was_delivered() {
        let txn = PgPosition {
            commit_lsn: Lsn(100),
            lsn: Lsn(130),
        };
        assert!(already_delivered(Lsn(100), &txn));
        assert!(already_delivered(Lsn(50), &txn));
        assert!(!already_delivered(Lsn(130), &txn));
        let snap = PgPosition {
            commit_lsn: Lsn(100),
            lsn: Lsn(100),
        };
        assert!(!already_delivered(Lsn(100), &snap));
        assert!(already_delivered(Lsn(99), &snap));
        // A transaction committed at the snapshot point orders after it.
        assert!(txn_position(Lsn(100), Lsn(130)) > point(Lsn(100)));
        assert_eq!(start_lsn(&txn), Lsn(130));
    }
}
