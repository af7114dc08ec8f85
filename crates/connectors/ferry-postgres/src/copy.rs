//! The binary `COPY` format: framing for `COPY ... FROM STDIN (FORMAT
//! binary)` and an incremental decoder for `COPY ... TO STDOUT`.

use bytes::{BufMut, BytesMut};
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
pub(crate) struct CopyDecoder {
    buf: BytesMut,
    header_done: bool,
    pub finished: bool,
}

impl CopyDecoder {
    pub fn new() -> Self {
        CopyDecoder {
            buf: BytesMut::new(),
            header_done: false,
            finished: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete row, if buffered.
    pub fn next_row(&mut self, kinds: &[Kind]) -> Result<Option<Vec<Value>>> {
        let malformed = || Error::fatal("malformed binary COPY data from the server");
        if !self.header_done {
            if self.buf.len() < 19 {
                return Ok(None);
            }
            if &self.buf[..11] != COPY_SIGNATURE {
                return Err(malformed());
            }
            let ext = u32::from_be_bytes(self.buf[15..19].try_into().unwrap_or_default()) as usize;
            if self.buf.len() < 19 + ext {
                return Ok(None);
            }
            let _ = self.buf.split_to(19 + ext);
            self.header_done = true;
        }
        if self.finished || self.buf.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if count == -1 {
            self.finished = true;
            return Ok(None);
        }
        if count as usize != kinds.len() {
            return Err(malformed());
        }
        // Find the tuple's end before decoding anything.
        let mut at = 2;
        let mut spans = Vec::with_capacity(kinds.len());
        for _ in 0..count {
            if self.buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes(self.buf[at..at + 4].try_into().unwrap_or_default());
            at += 4;
            if len < 0 {
                spans.push(None);
                continue;
            }
            let end = at + len as usize;
            if self.buf.len() < end {
                return Ok(None);
            }
            spans.push(Some((at, end)));
            at = end;
        }
        let tuple = self.buf.split_to(at);
        let mut row = Vec::with_capacity(kinds.len());
        for (span, kind) in spans.into_iter().zip(kinds) {
            row.push(match span {
                None => Value::Null,
                Some((s, e)) => decode(kind, &tuple[s..e])?,
            });
        }
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
        d.push(&b[..5]);
        assert!(d.next_row(&kinds).unwrap().is_none());
        d.push(&b[5..]);
        assert_eq!(
            d.next_row(&kinds).unwrap().unwrap(),
            vec![Value::Int(7), Value::Null]
        );
        assert!(d.next_row(&kinds).unwrap().is_none());
        assert!(d.finished);
    }
}
