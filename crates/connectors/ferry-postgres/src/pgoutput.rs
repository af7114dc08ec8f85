//! Decoding `pgoutput` messages (logical replication protocol version 1).

use bytes::{Buf, Bytes};
use ferry_core::{Error, Lsn, Result};

/// One column value of a tuple.
#[derive(Debug, Clone)]
pub(crate) enum Datum {
    Null,
    /// Unchanged TOAST value: not sent.
    Unchanged,
    Text(Bytes),
    Binary(Bytes),
}

#[derive(Debug, Clone)]
pub(crate) struct RelColumn {
    /// Part of the replica identity.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
}

#[derive(Debug, Clone)]
pub(crate) struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    pub columns: Vec<RelColumn>,
}

/// An old tuple of an update or delete: the key columns (`K`) or the
/// whole row (`O`, replica identity full).
#[derive(Debug)]
pub(crate) struct OldTuple {
    pub key_only: bool,
    pub datums: Vec<Datum>,
}

#[derive(Debug)]
pub(crate) enum PgOutput {
    Begin {
        final_lsn: Lsn,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        rel: u32,
        new: Vec<Datum>,
    },
    Update {
        rel: u32,
        old: Option<OldTuple>,
        new: Vec<Datum>,
    },
    Delete {
        rel: u32,
        old: OldTuple,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// A logical decoding message (ferry's heartbeats, re-copy chunk
    /// markers and `ferry resync` requests among them).
    Message {
        prefix: String,
        content: Bytes,
    },
    /// The replication origin of the transaction whose Begin came just
    /// before: sent for transactions an apply session with an origin
    /// wrote (ferry's active-active apply among them).
    Origin {
        name: String,
    },
    /// Type and anything newer that ferry does not need.
    Other,
}

fn malformed(what: &str) -> Error {
    Error::fatal(format!("malformed pgoutput {what} message"))
}

fn need(b: &Bytes, n: usize, what: &str) -> Result<()> {
    if b.remaining() < n {
        Err(malformed(what))
    } else {
        Ok(())
    }
}

fn cstring(b: &mut Bytes, what: &str) -> Result<String> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| malformed(what))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn tuple(b: &mut Bytes, what: &str) -> Result<Vec<Datum>> {
    need(b, 2, what)?;
    let n = b.get_i16();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        need(b, 1, what)?;
        out.push(match b.get_u8() {
            b'n' => Datum::Null,
            b'u' => Datum::Unchanged,
            kind @ (b't' | b'b') => {
                need(b, 4, what)?;
                let len = b.get_i32().max(0) as usize;
                need(b, len, what)?;
                let v = b.split_to(len);
                if kind == b't' {
                    Datum::Text(v)
                } else {
                    Datum::Binary(v)
                }
            }
            _ => return Err(malformed(what)),
        });
    }
    Ok(out)
}

/// Decodes one pgoutput message (the payload of an XLogData).
pub(crate) fn decode(mut b: Bytes) -> Result<PgOutput> {
    need(&b, 1, "empty")?;
    let tag = b.get_u8();
    Ok(match tag {
        b'B' => {
            need(&b, 20, "Begin")?;
            PgOutput::Begin {
                final_lsn: Lsn(b.get_u64()),
            }
        }
        b'C' => {
            need(&b, 25, "Commit")?;
            b.advance(1);
            PgOutput::Commit {
                commit_lsn: Lsn(b.get_u64()),
                end_lsn: Lsn(b.get_u64()),
                commit_time: b.get_i64(),
            }
        }
        b'R' => {
            need(&b, 4, "Relation")?;
            let oid = b.get_u32();
            let namespace = cstring(&mut b, "Relation")?;
            let name = cstring(&mut b, "Relation")?;
            need(&b, 3, "Relation")?;
            let _replident = b.get_u8();
            let n = b.get_i16();
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                need(&b, 1, "Relation")?;
                let flags = b.get_u8();
                let cname = cstring(&mut b, "Relation")?;
                need(&b, 8, "Relation")?;
                columns.push(RelColumn {
                    key: flags & 1 == 1,
                    name: cname,
                    type_oid: b.get_u32(),
                    typmod: b.get_i32(),
                });
            }
            PgOutput::Relation(Relation {
                oid,
                namespace: if namespace.is_empty() {
                    "pg_catalog".into()
                } else {
                    namespace
                },
                name,
                columns,
            })
        }
        b'I' => {
            need(&b, 5, "Insert")?;
            let rel = b.get_u32();
            if b.get_u8() != b'N' {
                return Err(malformed("Insert"));
            }
            PgOutput::Insert {
                rel,
                new: tuple(&mut b, "Insert")?,
            }
        }
        b'U' => {
            need(&b, 5, "Update")?;
            let rel = b.get_u32();
            let mut marker = b.get_u8();
            let mut old = None;
            if marker == b'K' || marker == b'O' {
                old = Some(OldTuple {
                    key_only: marker == b'K',
                    datums: tuple(&mut b, "Update")?,
                });
                need(&b, 1, "Update")?;
                marker = b.get_u8();
            }
            if marker != b'N' {
                return Err(malformed("Update"));
            }
            PgOutput::Update {
                rel,
                old,
                new: tuple(&mut b, "Update")?,
            }
        }
        b'D' => {
            need(&b, 5, "Delete")?;
            let rel = b.get_u32();
            let marker = b.get_u8();
            if marker != b'K' && marker != b'O' {
                return Err(malformed("Delete"));
            }
            PgOutput::Delete {
                rel,
                old: OldTuple {
                    key_only: marker == b'K',
                    datums: tuple(&mut b, "Delete")?,
                },
            }
        }
        b'T' => {
            need(&b, 5, "Truncate")?;
            let n = b.get_i32().max(0) as usize;
            let _options = b.get_u8();
            need(&b, 4 * n, "Truncate")?;
            PgOutput::Truncate {
                rels: (0..n).map(|_| b.get_u32()).collect(),
            }
        }
        b'M' => {
            // Flags (1 = transactional), the message's LSN, prefix, content.
            need(&b, 9, "Message")?;
            let _flags = b.get_u8();
            let _lsn = b.get_u64();
            let prefix = cstring(&mut b, "Message")?;
            need(&b, 4, "Message")?;
            let n = b.get_i32().max(0) as usize;
            need(&b, n, "Message")?;
            PgOutput::Message {
                prefix,
                content: b.split_to(n),
            }
        }
        b'O' => {
            // The origin's commit LSN, then its name.
            need(&b, 8, "Origin")?;
            let _lsn = b.get_u64();
            PgOutput::Origin {
                name: cstring(&mut b, "Origin")?,
            }
        }
        _ => PgOutput::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn decodes_an_origin() {
        let mut m = BytesMut::new();
        m.put_u8(b'O');
        m.put_u64(0x1234);
        m.put_slice(b"ferry_eu_0\0");
        match decode(m.freeze()).unwrap() {
            PgOutput::Origin { name } => assert_eq!(name, "ferry_eu_0"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_a_logical_message() {
        let mut m = BytesMut::new();
        m.put_u8(b'M');
        m.put_u8(1);
        m.put_u64(0x1234);
        m.put_slice(b"ferry_p.chunk\0");
        m.put_i32(2);
        m.put_slice(b"17");
        match decode(m.freeze()).unwrap() {
            PgOutput::Message { prefix, content } => {
                assert_eq!(prefix, "ferry_p.chunk");
                assert_eq!(&content[..], b"17");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_update_with_key_and_unchanged_toast() {
        let mut m = BytesMut::new();
        m.put_u8(b'U');
        m.put_u32(16384);
        m.put_u8(b'K');
        m.put_i16(2);
        m.put_u8(b'b');
        m.put_i32(4);
        m.put_i32(7);
        m.put_u8(b'n');
        m.put_u8(b'N');
        m.put_i16(2);
        m.put_u8(b'b');
        m.put_i32(4);
        m.put_i32(8);
        m.put_u8(b'u');
        match decode(m.freeze()).unwrap() {
            PgOutput::Update {
                rel: 16384,
                old: Some(old),
                new,
            } => {
                assert!(old.key_only);
                assert!(matches!(new[1], Datum::Unchanged));
                assert!(matches!(old.datums[1], Datum::Null));
            }
            other => panic!("{other:?}"),
        }
    }
}
