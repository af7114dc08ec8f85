//! The smallest PostgreSQL client the benchmark needs: the simple-query
//! protocol over TCP with `trust` authentication, values as text. The
//! benchmark's own servers trust 127.0.0.1, so there is no password to
//! handle; this keeps xtask free of a database driver and of a `psql`
//! process per poll (a poll every 20 ms must cost next to nothing on two
//! cores).

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::{Ctx, Res};

/// An error the server reported, with its SQLSTATE.
#[derive(Debug)]
pub struct ServerError {
    pub code: String,
    pub message: String,
}

/// A result row, values as text (`None` for NULL).
pub type Row = Vec<Option<String>>;

pub struct Client {
    what: String,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Client {
    /// Connects as `postgres` to `db` on `127.0.0.1:port`.
    pub fn connect(port: u16, db: &str) -> Res<Client> {
        let what = format!("127.0.0.1:{port}/{db}");
        let stream =
            TcpStream::connect(("127.0.0.1", port)).ctx(|| format!("connecting to {what}"))?;
        stream.set_nodelay(true).ctx(|| "TCP_NODELAY".into())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(600)))
            .ctx(|| "read timeout".into())?;
        let reader = BufReader::new(stream.try_clone().ctx(|| "socket clone".into())?);
        let mut c = Client {
            what,
            reader,
            writer: BufWriter::new(stream),
        };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
        for (k, v) in [("user", "postgres"), ("database", db)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let len = i32::try_from(body.len() + 4).map_err(|_| "startup packet too long")?;
        c.write(&len.to_be_bytes())?;
        c.write(&body)?;
        c.flush()?;
        loop {
            let (tag, msg) = c.read_message()?;
            match tag {
                b'R' => {
                    let code = msg
                        .get(..4)
                        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    if code != Some(0) {
                        return Err(format!(
                            "{}: the server asks for a password (auth code {code:?}); the benchmark's servers trust 127.0.0.1",
                            c.what
                        ));
                    }
                }
                b'E' => {
                    let e = parse_error(&msg);
                    return Err(format!(
                        "connecting to {}: {} ({})",
                        c.what, e.message, e.code
                    ));
                }
                b'Z' => return Ok(c),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Res<()> {
        self.writer
            .write_all(bytes)
            .ctx(|| format!("writing to {}", self.what))
    }

    fn flush(&mut self) -> Res<()> {
        self.writer
            .flush()
            .ctx(|| format!("writing to {}", self.what))
    }

    fn read_message(&mut self) -> Res<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.reader
            .read_exact(&mut head)
            .ctx(|| format!("reading from {}", self.what))?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len =
            usize::try_from(len - 4).map_err(|_| format!("{}: bad message length", self.what))?;
        let mut msg = vec![0u8; len];
        self.reader
            .read_exact(&mut msg)
            .ctx(|| format!("reading from {}", self.what))?;
        Ok((head[0], msg))
    }

    /// Runs `sql` (one or more statements; several run as one implicit
    /// transaction) and returns the rows of the last result. A server error
    /// comes back as `Ok(Err(..))`; the connection stays usable.
    pub fn try_query(&mut self, sql: &str) -> Res<Result<Vec<Row>, ServerError>> {
        let len = i32::try_from(sql.len() + 5).map_err(|_| "query too long")?;
        self.write(b"Q")?;
        self.write(&len.to_be_bytes())?;
        self.write(sql.as_bytes())?;
        self.write(&[0])?;
        self.flush()?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (tag, msg) = self.read_message()?;
            match tag {
                b'T' => rows.clear(),
                b'D' => rows
                    .push(parse_row(&msg).ok_or_else(|| format!("{}: bad data row", self.what))?),
                b'E' => error = Some(parse_error(&msg)),
                b'G' | b'H' => {
                    return Err(format!(
                        "{}: COPY is not supported by this client",
                        self.what
                    ));
                }
                b'Z' => break,
                _ => {} // CommandComplete, EmptyQuery, notices
            }
        }
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(rows),
        })
    }

    /// [`Client::try_query`], a server error being an error.
    pub fn query(&mut self, sql: &str) -> Res<Vec<Row>> {
        self.try_query(sql)?.map_err(|e| {
            format!(
                "{}: {} ({}) in: {}",
                self.what,
                e.message,
                e.code,
                abbreviate(sql)
            )
        })
    }

    pub fn exec(&mut self, sql: &str) -> Res<()> {
        self.query(sql).map(|_| ())
    }

    /// The first column of the first row (`None` if no row or NULL).
    pub fn value(&mut self, sql: &str) -> Res<Option<String>> {
        Ok(self
            .query(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.writer.write_all(&[b'X', 0, 0, 0, 4]);
        let _ = self.writer.flush();
    }
}

fn abbreviate(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}…", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

fn parse_row(msg: &[u8]) -> Option<Row> {
    let n = u16::from_be_bytes([*msg.first()?, *msg.get(1)?]) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let b = msg.get(at..at + 4)?;
        let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let v = msg.get(at..at + len as usize)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
            at += len as usize;
        }
    }
    Some(row)
}

fn parse_error(msg: &[u8]) -> ServerError {
    let mut e = ServerError {
        code: String::new(),
        message: String::new(),
    };
    for field in msg.split(|b| *b == 0) {
        if let Some((&kind, text)) = field.split_first() {
            let text = String::from_utf8_lossy(text).into_owned();
            match kind {
                b'C' => e.code = text,
                b'M' => e.message = text,
                _ => {}
            }
        }
    }
    e
}

/// An LSN as PostgreSQL prints it (`16/B374D848`), as a number.
pub fn parse_lsn(s: &str) -> Res<u64> {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not an LSN"))?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| format!("{s:?} is not an LSN"))?;
    Ok((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_and_rows() {
        assert_eq!(parse_lsn("0/0").unwrap(), 0);
        assert_eq!(
            parse_lsn("16/B374D848").unwrap(),
            (0x16 << 32) | 0xB374_D848
        );
        assert!(parse_lsn("16B374D848").is_err());
        // Two columns: "ab" and NULL.
        let msg = [0, 2, 0, 0, 0, 2, b'a', b'b', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_row(&msg).unwrap(), vec![Some("ab".to_owned()), None]);
        let e = parse_error(b"SERROR\0C42P01\0Mrelation \"t\" does not exist\0\0");
        assert_eq!(e.code, "42P01");
        assert_eq!(e.message, "relation \"t\" does not exist");
    }
}
