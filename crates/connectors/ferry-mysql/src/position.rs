//! Binlog positions: where the server's binlog is now, which files it
//! still holds, and whether a checkpoint's position can still be read.

use ferry_core::{Continuity, MySqlPosition, Position, Result};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::error::my_error;

/// The end of the server's binlog now (`SHOW MASTER STATUS`); `None` when
/// binary logging is off.
pub(crate) async fn current(conn: &mut Conn) -> Result<Option<MySqlPosition>> {
    let row: Option<mysql_async::Row> = conn
        .query_first("SHOW MASTER STATUS")
        .await
        .map_err(|e| my_error(e, "reading the binlog position (SHOW MASTER STATUS)"))?;
    Ok(row.and_then(|r| {
        let file: String = r.get(0)?;
        let offset: u64 = r.get(1)?;
        Some(MySqlPosition { file, offset })
    }))
}

/// The binlog files the server holds, oldest first, with their sizes.
pub(crate) async fn files(conn: &mut Conn) -> Result<Vec<(String, u64)>> {
    let rows: Vec<mysql_async::Row> = conn
        .query("SHOW BINARY LOGS")
        .await
        .map_err(|e| my_error(e, "listing the binlog files (SHOW BINARY LOGS)"))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect())
}

/// Whether the stream can start right after `from`: its file must still be
/// on the server and hold that offset.
pub(crate) async fn continuity(conn: &mut Conn, from: &MySqlPosition) -> Result<Continuity> {
    let files = files(conn).await?;
    let held = files
        .iter()
        .any(|(file, size)| *file == from.file && from.offset <= *size);
    if held {
        return Ok(Continuity::Exact);
    }
    let oldest = files.first().map(|(file, _)| MySqlPosition {
        file: file.clone(),
        offset: 4,
    });
    let reason = match files.first() {
        Some((first, _))
            if MySqlPosition {
                file: first.clone(),
                offset: 4,
            } > *from =>
        {
            format!(
                "binlog file {} was purged from the source (the oldest it holds is {first})",
                from.file
            )
        }
        _ => format!(
            "the source's binlog does not hold {}:{} (it was reset or the server is another one)",
            from.file, from.offset
        ),
    };
    Ok(Continuity::Gap {
        reason,
        resume: Position::MySql(oldest.unwrap_or_else(|| from.clone())),
    })
}
