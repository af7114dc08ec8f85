//! The binary `COPY` format: framing for `COPY ... FROM STDIN (FORMAT
//! binary)` and an incremental decoder for `COPY ... TO STDOUT`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_core::{Error, Result, Value};

use crate::binary::{decode, encode_field};
use crate::types::Kind;

const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The header of a binary COPY stream.
pub(crate) fn copy_header(out: &mut BytesMut) {
    out.put_slice(COPY_SIGNATURE);
    out.put_i32(0);
    out.put_i32(0);
}

/// The trailer of a binary COPY stream.
pub(crate) fn copy_trailer(out: &mut BytesMut) {
    out.put_i16(-1);
}

/// Appends one row as a binary COPY tuple.
pub(crate) fn copy_row(row: &[Value], kinds: &[&Kind], out: &mut BytesMut) -> Result<()> {
    out.put_i16(row.len() as i16);
    for (v, k) in row.iter().zip(kinds) {
        encode_field(v, k, out)?;
    }
    Ok(())
}

/// Incremental decoder of a binary `COPY TO STDOUT` stream.
///
/// The server sends one row per CopyData message, so rows are decoded
/// straight from each message; only a row split across messages is copied
/// into a buffer.
pub(crate) struct CopyDecoder {
    /// Unconsumed bytes when a row spans messages.
    pending: BytesMut,
    /// The current message, consumed from the front.
    cur: Bytes,
    header_done: bool,
    pub finished: bool,
}

impl CopyDecoder {
    pub fn new() -> Self {
        CopyDecoder {
            pending: BytesMut::new(),
            cur: Bytes::new(),
            header_done: false,
            finished: false,
        }
    }

    pub fn push(&mut self, data: Bytes) {
        if self.pending.is_empty() && self.cur.is_empty() {
            self.cur = data;
        } else {
            self.pending.extend_from_slice(&self.cur);
            self.cur = Bytes::new();
            self.pending.extend_from_slice(&data);
        }
    }

    fn consume(&mut self, n: usize) {
        if self.pending.is_empty() {
            self.cur.advance(n);
        } else {
            self.pending.advance(n);
        }
    }

    /// The next complete row, if buffered.
    pub fn next_row(&mut self, kinds: &[Kind]) -> Result<Option<Vec<Value>>> {
        let malformed = || Error::fatal("malformed binary COPY data from the server");
        if !self.header_done {
            let buf: &[u8] = if self.pending.is_empty() {
                &self.cur
            } else {
                &self.pending
            };
            if buf.len() < 19 {
                return Ok(None);
            }
            if &buf[..11] != COPY_SIGNATURE {
                return Err(malformed());
            }
            let ext = u32::from_be_bytes(buf[15..19].try_into().unwrap_or_default()) as usize;
            if buf.len() < 19 + ext {
                return Ok(None);
            }
            self.consume(19 + ext);
            self.header_done = true;
        }
        let buf: &[u8] = if self.pending.is_empty() {
            &self.cur
        } else {
            &self.pending
        };
        if self.finished || buf.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([buf[0], buf[1]]);
        if count == -1 {
            self.finished = true;
            return Ok(None);
        }
        if count as usize != kinds.len() {
            return Err(malformed());
        }
        // Make sure the whole tuple is here before decoding anything.
        let field_len =
            |at: usize| i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mut at = 2;
        for _ in 0..count {
            if buf.len() < at + 4 {
                return Ok(None);
            }
            at += 4 + field_len(at).max(0) as usize;
            if buf.len() < at {
                return Ok(None);
            }
        }
        let end = at;
        let mut row = Vec::with_capacity(kinds.len());
        let mut at = 2;
        for kind in kinds {
            let len = field_len(at);
            at += 4;
            if len < 0 {
                row.push(Value::Null);
            } else {
                let e = at + len as usize;
                row.push(decode(kind, &buf[at..e])?);
                at = e;
            }
        }
        self.consume(end);
        Ok(Some(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_frames_decode() {
        let mut b = BytesMut::new();
        copy_header(&mut b);
        copy_row(
            &[Value::Int(7), Value::Null],
            &[&Kind::Int8, &Kind::Text],
            &mut b,
        )
        .unwrap();
        copy_trailer(&mut b);
        let mut d = CopyDecoder::new();
        let kinds = [Kind::Int8, Kind::Text];
        let b = b.freeze();
        d.push(b.slice(..5));
        assert!(d.next_row(&kinds).unwrap().is_none());
        d.push(b.slice(5..25));
        assert!(d.next_row(&kinds).unwrap().is_none());
        d.push(b.slice(25..));
        assert_eq!(
            d.next_row(&kinds).unwrap().unwrap(),
            vec![Value::Int(7), Value::Null]
        );
        assert!(d.next_row(&kinds).unwrap().is_none());
        assert!(d.finished);
    }
}
