//! A canonical encoding of rows that every engine produces alike, and the
//! 64-bit hash of it, so `ferry verify` compares key ranges of two
//! databases of different engines by digests computed where the rows are.
//!
//! Each value becomes a tag and a payload; equal [`Value`]s give equal
//! bytes and different ones different bytes (the encoding is injective per
//! column), so a digest that matches means the rows match up to a hash
//! collision. Values an engine stores in another form (a decimal `1.5`
//! against `1.50`) give different bytes: their range is then compared row
//! by row, which decides.
//!
//! | value | encoding |
//! |---|---|
//! | NULL | `N;` |
//! | `Bool` | `Bt;` / `Bf;` |
//! | `Int` | `I<decimal>;` |
//! | `Float` | `F<16 hex digits of the IEEE bits>;` (every NaN as `7ff8000000000000`) |
//! | `Decimal` | `D<text>;` |
//! | `Text` | `S<byte length>:<text>` |
//! | `Bytes` | `X<lower-case hex>;` |
//! | `Date` | `A<days since 1970-01-01>;`, `Ainfinity;`, `A-infinity;` |
//! | `Time` | `T<microseconds since midnight>;` |
//! | `Timestamp` | `P<microseconds since 1970>;` (or `infinity`, `-infinity`) |
//! | `TimestampTz` | `Z<microseconds since 1970 UTC>;` (or `infinity`, `-infinity`) |
//! | `Interval` | `V<months>,<days>,<microseconds>;` |
//! | `Uuid` | `U<lower-case, hyphenated>;` |
//! | `Json` | `J<byte length>:<text>` |
//!
//! Arrays have no canonical encoding: a table with an array column is
//! compared row by row across engines.
//!
//! A row is its values' encodings one after the other, hashed with
//! [`hash64`] (seed 0): Bob Jenkins' lookup3 as PostgreSQL's
//! `hashtextextended` computes it on a little-endian server, so a
//! PostgreSQL reader digests in SQL and others in Rust. A range's digest
//! sums the rows' hashes as signed 64-bit numbers.
//!
//! MariaDB has no lookup3, so the same encoding is also hashed with
//! [`md5_63`] ([`CANONICAL_MD5_DIGEST`]): the first 64 bits of its MD5,
//! big-endian, with the top bit cleared, which MariaDB
//! (`CONV(LEFT(MD5(..), 16), 16, 10) & 0x7fff…`), PostgreSQL
//! (`('x' || left(md5(..), 16))::bit(64)::bigint & 0x7fff…`) and Rust
//! compute alike. MD5 costs more than lookup3 in PostgreSQL, so readers
//! offer it last: it is for pairs where one side is MariaDB.

use std::io::Write;

use crate::time::format_uuid;
use crate::value::Value;

/// The name readers give this digest ([`crate::TableReader::row_digests`]).
pub const CANONICAL_DIGEST: &str = "canonical row encoding, 64-bit lookup3 hash, summed";

/// The same encoding hashed with [`md5_63`], summed.
pub const CANONICAL_MD5_DIGEST: &str = "canonical row encoding, md5's first 63 bits, summed";

/// Whether `digest` gives equal values for equal rows whatever the engine
/// (not only between tables of the same declared types of one engine).
pub fn is_canonical(digest: &str) -> bool {
    digest == CANONICAL_DIGEST || digest == CANONICAL_MD5_DIGEST
}

/// The hash `digest` (one of the canonical ones) gives a row's canonical
/// encoding; `None` for another digest or a value without an encoding.
pub fn row_hash_by(digest: &str, row: &[Value], buf: &mut Vec<u8>) -> Option<i64> {
    match digest {
        CANONICAL_DIGEST => row_hash(row, buf),
        CANONICAL_MD5_DIGEST => {
            encode_row(row, buf)?;
            Some(md5_63(buf))
        }
        _ => None,
    }
}

/// The first 64 bits of the MD5 of `bytes`, big-endian, top bit cleared:
/// a number every engine's SQL reads the same from MD5's hex digits.
pub fn md5_63(bytes: &[u8]) -> i64 {
    use md5::Digest;
    let d = md5::Md5::digest(bytes);
    let first: [u8; 8] = d[..8].try_into().expect("md5 has 16 bytes");
    (u64::from_be_bytes(first) & (i64::MAX as u64)) as i64
}

/// Appends the canonical encoding of `v`; `false` for a value without one
/// (an array, or [`Value::Unchanged`]).
pub fn encode_value(v: &Value, out: &mut Vec<u8>) -> bool {
    let infinite = |t: i64| match t {
        i64::MAX => Some("infinity"),
        i64::MIN => Some("-infinity"),
        _ => None,
    };
    let _ = match v {
        Value::Null => write!(out, "N;"),
        Value::Bool(b) => write!(out, "B{};", if *b { 't' } else { 'f' }),
        Value::Int(i) => write!(out, "I{i};"),
        Value::Float(f) => {
            let bits = if f.is_nan() {
                0x7ff8_0000_0000_0000
            } else {
                f.to_bits()
            };
            write!(out, "F{bits:016x};")
        }
        Value::Decimal(d) => write!(out, "D{d};"),
        Value::Text(s) => write!(out, "S{}:{s}", s.len()),
        Value::Json(s) => write!(out, "J{}:{s}", s.len()),
        Value::Bytes(b) => {
            out.push(b'X');
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            write!(out, ";")
        }
        Value::Date(d) => match *d {
            i32::MAX => write!(out, "Ainfinity;"),
            i32::MIN => write!(out, "A-infinity;"),
            d => write!(out, "A{d};"),
        },
        Value::Time(t) => write!(out, "T{t};"),
        Value::Timestamp(t) => match infinite(*t) {
            Some(inf) => write!(out, "P{inf};"),
            None => write!(out, "P{t};"),
        },
        Value::TimestampTz(t) => match infinite(*t) {
            Some(inf) => write!(out, "Z{inf};"),
            None => write!(out, "Z{t};"),
        },
        Value::Interval {
            months,
            days,
            micros,
        } => write!(out, "V{months},{days},{micros};"),
        Value::Uuid(u) => write!(out, "U{};", format_uuid(u)),
        Value::Array(_) | Value::Unchanged => return false,
    };
    true
}

/// The hash of a row's canonical encoding (`buf` is scratch space), as a
/// signed number the way PostgreSQL's `bigint` holds it; `None` when a
/// value has no encoding.
pub fn row_hash(row: &[Value], buf: &mut Vec<u8>) -> Option<i64> {
    encode_row(row, buf)?;
    Some(hash64(buf, 0) as i64)
}

/// A row's canonical encoding into `buf` (cleared first); `None` when a
/// value has none.
fn encode_row(row: &[Value], buf: &mut Vec<u8>) -> Option<()> {
    buf.clear();
    for v in row {
        if !encode_value(v, buf) {
            return None;
        }
    }
    Some(())
}

/// Bob Jenkins' lookup3 hash of `key` to 64 bits (the final `b` and `c`),
/// as PostgreSQL's `hash_bytes_extended` computes it on a little-endian
/// machine (`hashtextextended(text, seed)` for a deterministic collation).
pub fn hash64(key: &[u8], seed: u64) -> u64 {
    let init = 0x9e37_79b9_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    let word = |w: &[u8]| u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    let mut k = key;
    while k.len() >= 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    // The last 11 bytes: little-endian into a and b, and into c from its
    // second byte (the lowest byte of c is reserved for the length).
    let mut tail = [0u8; 12];
    tail[..k.len()].copy_from_slice(k);
    if k.len() > 8 {
        c = c.wrapping_add(u32::from_le_bytes([0, tail[8], tail[9], tail[10]]));
    }
    if k.len() > 4 {
        b = b.wrapping_add(word(&tail[4..8]));
    }
    if !k.is_empty() {
        a = a.wrapping_add(word(&tail[0..4]));
    }
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Sums row hashes the way PostgreSQL's `sum(bigint)` does, without
/// overflow; [`Display`](std::fmt::Display) gives the same decimal text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashSum(pub i128);

impl HashSum {
    pub fn add(&mut self, h: i64) {
        self.0 += i128::from(h);
    }
}

impl std::fmt::Display for HashSum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: Value) -> String {
        let mut out = Vec::new();
        assert!(encode_value(&v, &mut out), "{v:?}");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn md5_63_is_the_first_md5_bits_without_the_sign() {
        // md5("abc") = 900150983cd24fb0 d6963f7d28e17f72
        assert_eq!(md5_63(b"abc"), 0x1001_5098_3cd2_4fb0);
        // md5("") = d41d8cd98f00b204 ...: the top bit goes.
        assert_eq!(md5_63(b""), 0x541d_8cd9_8f00_b204);
        let mut buf = Vec::new();
        let row = [Value::Int(1), Value::Text("a".into())];
        assert_eq!(
            row_hash_by(CANONICAL_MD5_DIGEST, &row, &mut buf),
            Some(md5_63(b"I1;S1:a"))
        );
        assert_eq!(
            row_hash_by(CANONICAL_DIGEST, &row, &mut buf),
            row_hash(&row, &mut Vec::new())
        );
        assert!(is_canonical(CANONICAL_MD5_DIGEST) && !is_canonical("postgresql: x"));
    }

    #[test]
    fn values_encode_by_tag_and_payload() {
        assert_eq!(enc(Value::Null), "N;");
        assert_eq!(enc(Value::Int(-7)), "I-7;");
        assert_eq!(enc(Value::Float(1.5)), "F3ff8000000000000;");
        assert_eq!(enc(Value::Float(-0.0)), "F8000000000000000;");
        assert_eq!(enc(Value::Float(-f64::NAN)), "F7ff8000000000000;");
        assert_eq!(enc(Value::Text("é;".into())), "S3:é;");
        assert_eq!(enc(Value::Bytes(vec![0, 255])), "X00ff;");
        assert_eq!(enc(Value::Date(i32::MIN)), "A-infinity;");
        assert_eq!(enc(Value::TimestampTz(i64::MAX)), "Zinfinity;");
        assert_eq!(
            enc(Value::Interval {
                months: -1,
                days: 2,
                micros: -3
            }),
            "V-1,2,-3;"
        );
        let mut out = Vec::new();
        assert!(!encode_value(&Value::Array(vec![]), &mut out));
    }

    #[test]
    fn different_rows_encode_differently() {
        // Length prefixes keep text from running into the next value.
        let a = [Value::Text("a".into()), Value::Text("b".into())];
        let b = [Value::Text("aS1:b".into())];
        let mut buf = Vec::new();
        assert_ne!(row_hash(&a, &mut buf), row_hash(&b, &mut buf));
        let (i, t) = ([Value::Int(1)], [Value::Text("1".into())]);
        assert_ne!(row_hash(&i, &mut buf), row_hash(&t, &mut buf));
    }

    #[test]
    fn sums_print_like_postgresql_numerics() {
        let mut s = HashSum::default();
        s.add(i64::MAX);
        s.add(i64::MAX);
        assert_eq!(s.to_string(), "18446744073709551614");
        s.add(i64::MIN);
        s.add(i64::MIN);
        s.add(-1);
        assert_eq!(s.to_string(), "-3");
    }
}
