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

    /// The bytes buffered and not consumed.
    fn buffered(&self) -> &[u8] {
        if self.pending.is_empty() {
            &self.cur
        } else {
            &self.pending
        }
    }

    /// Skips the stream's header once it is buffered.
    fn header(&mut self) -> Result<bool> {
        if self.header_done {
            return Ok(true);
        }
        let buf = self.buffered();
        if buf.len() < 19 {
            return Ok(false);
        }
        if &buf[..11] != COPY_SIGNATURE {
            return Err(malformed());
        }
        let ext = u32::from_be_bytes(buf[15..19].try_into().unwrap_or_default()) as usize;
        if buf.len() < 19 + ext {
            return Ok(false);
        }
        self.consume(19 + ext);
        self.header_done = true;
        Ok(true)
    }

    /// The next complete tuple (field count, then each field's length and
    /// bytes), if buffered: a slice of the server's message when the tuple
    /// is inside one (no copy).
    pub fn next_tuple(&mut self, fields: usize) -> Result<Option<Bytes>> {
        if !self.header()? || self.finished {
            return Ok(None);
        }
        let Some(end) = tuple_len(self.buffered(), fields)? else {
            return Ok(None);
        };
        if end == 0 {
            self.finished = true;
            return Ok(None);
        }
        Ok(Some(if self.pending.is_empty() {
            self.cur.split_to(end)
        } else {
            self.pending.split_to(end).freeze()
        }))
    }

    /// The next complete row, if buffered.
    pub fn next_row(&mut self, kinds: &[Kind]) -> Result<Option<Vec<Value>>> {
        let Some(tuple) = self.next_tuple(kinds.len())? else {
            return Ok(None);
        };
        let mut row = Vec::with_capacity(kinds.len());
        for_each_field(&tuple, |i, field| {
            row.push(match field {
                None => Value::Null,
                Some(bytes) => decode(&kinds[i], bytes)?,
            });
            Ok(())
        })?;
        Ok(Some(row))
    }
}

fn malformed() -> Error {
    Error::fatal("malformed binary COPY data from the server")
}

/// Length of the tuple at the start of `buf` with `fields` fields: `None`
/// when it is not all there yet, `Some(0)` at the stream's trailer.
fn tuple_len(buf: &[u8], fields: usize) -> Result<Option<usize>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let count = i16::from_be_bytes([buf[0], buf[1]]);
    if count == -1 {
        return Ok(Some(0));
    }
    if count as usize != fields {
        return Err(malformed());
    }
    let mut at = 2;
    for _ in 0..fields {
        let Some(len) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4 + len.max(0) as usize;
        if buf.len() < at {
            return Ok(None);
        }
    }
    Ok(Some(at))
}

/// Calls `f` with each field of a complete tuple: its index and bytes
/// (`None` for NULL).
pub(crate) fn for_each_field<'a>(
    tuple: &'a [u8],
    mut f: impl FnMut(usize, Option<&'a [u8]>) -> Result<()>,
) -> Result<()> {
    let count = i16::from_be_bytes([tuple[0], tuple[1]]).max(0) as usize;
    let mut at = 2;
    for i in 0..count {
        let len = i32::from_be_bytes([tuple[at], tuple[at + 1], tuple[at + 2], tuple[at + 3]]);
        at += 4;
        if len < 0 {
            f(i, None)?;
        } else {
            let e = at + len as usize;
            f(i, Some(&tuple[at..e]))?;
            at = e;
        }
    }
    Ok(())
}

/// The values of the fields at `columns` (with their kinds) of a complete
/// tuple, in the order of `columns`.
pub(crate) fn decode_fields(tuple: &[u8], columns: &[(usize, &Kind)]) -> Result<Vec<Value>> {
    let mut out = vec![Value::Null; columns.len()];
    for_each_field(tuple, |i, field| {
        for (slot, (c, kind)) in out.iter_mut().zip(columns) {
            if *c == i {
                *slot = match field {
                    None => Value::Null,
                    Some(bytes) => decode(kind, bytes)?,
                };
            }
        }
        Ok(())
    })?;
    Ok(out)
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

    #[test]
    fn tuples_pass_through_whole_across_messages() {
        let kinds = [Kind::Int8, Kind::Text];
        let rows = [
            vec![Value::Int(1), Value::Text("one".into())],
            vec![Value::Int(2), Value::Null],
            vec![Value::Int(3), Value::Text("three".into())],
        ];
        let mut b = BytesMut::new();
        copy_header(&mut b);
        for r in &rows {
            copy_row(r, &[&Kind::Int8, &Kind::Text], &mut b).unwrap();
        }
        copy_trailer(&mut b);
        let b = b.freeze();
        // Every split point: the tuples come out whole and in order.
        for split in 0..b.len() {
            let mut d = CopyDecoder::new();
            let mut tuples = Vec::new();
            for part in [b.slice(..split), b.slice(split..)] {
                d.push(part);
                while let Some(t) = d.next_tuple(2).unwrap() {
                    tuples.push(t);
                }
            }
            assert!(d.finished, "split at {split}");
            assert_eq!(tuples.len(), 3, "split at {split}");
            for (t, r) in tuples.iter().zip(&rows) {
                let mut one = BytesMut::new();
                copy_row(r, &[&Kind::Int8, &Kind::Text], &mut one).unwrap();
                assert_eq!(&t[..], &one[..]);
                assert_eq!(
                    decode_fields(t, &[(0, &kinds[0])]).unwrap(),
                    vec![r[0].clone()]
                );
            }
        }
    }

    #[test]
    fn a_wrong_field_count_is_an_error() {
        let mut b = BytesMut::new();
        copy_header(&mut b);
        copy_row(&[Value::Int(1)], &[&Kind::Int8], &mut b).unwrap();
        let mut d = CopyDecoder::new();
        d.push(b.freeze());
        assert!(d.next_tuple(2).is_err());
    }
}
