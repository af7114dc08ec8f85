//! PostgreSQL's binary wire format ↔ ferry [`Value`]s: the per-type codecs,
//! the binary `COPY` framing, and the text forms used in SQL literals.
//!
//! One codec serves the snapshot (`COPY ... TO STDOUT (FORMAT binary)`),
//! change capture (pgoutput with `binary 'true'`), the sink's `COPY FROM`
//! and its statement parameters.

use bytes::{BufMut, BytesMut};
use ferry_core::time::{format_date, format_time, format_timestamp, format_uuid};
use ferry_core::{Error, Result, Value};

use crate::types::Kind;

/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn bad(kind: &Kind, why: &str) -> Error {
    Error::data(format!("cannot decode a {kind:?} value: {why}"))
}

fn take<const N: usize>(buf: &mut &[u8]) -> Option<[u8; N]> {
    let (head, rest) = buf.split_first_chunk::<N>()?;
    *buf = rest;
    Some(*head)
}

/// Decodes one non-null binary value.
pub(crate) fn decode(kind: &Kind, raw: &[u8]) -> Result<Value> {
    let exact = |n: usize| {
        if raw.len() == n {
            Ok(())
        } else {
            Err(bad(kind, &format!("{} bytes, expected {n}", raw.len())))
        }
    };
    let text = || {
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| bad(kind, "not UTF-8"))
    };
    Ok(match kind {
        Kind::Bool => {
            exact(1)?;
            Value::Bool(raw[0] != 0)
        }
        Kind::Int2 => {
            exact(2)?;
            Value::Int(i16::from_be_bytes([raw[0], raw[1]]) as i64)
        }
        Kind::Int4 => {
            exact(4)?;
            Value::Int(i32::from_be_bytes(raw.try_into().unwrap_or_default()) as i64)
        }
        Kind::Int8 => {
            exact(8)?;
            Value::Int(i64::from_be_bytes(raw.try_into().unwrap_or_default()))
        }
        Kind::Float4 => {
            exact(4)?;
            Value::Float(f32::from_be_bytes(raw.try_into().unwrap_or_default()) as f64)
        }
        Kind::Float8 => {
            exact(8)?;
            Value::Float(f64::from_be_bytes(raw.try_into().unwrap_or_default()))
        }
        Kind::Numeric => {
            Value::Decimal(crate::numeric::decode(raw).ok_or_else(|| bad(kind, "malformed"))?)
        }
        // `Other` columns are read as `col::text` (see `reader::column_list`)
        // and turned into text in the stream (`stream::textify`).
        Kind::Text | Kind::Enum | Kind::Other => Value::Text(text()?),
        Kind::Json => Value::Json(text()?),
        Kind::Jsonb => match raw.split_first() {
            Some((1, rest)) => Value::Json(
                std::str::from_utf8(rest)
                    .map_err(|_| bad(kind, "not UTF-8"))?
                    .to_owned(),
            ),
            _ => return Err(bad(kind, "unknown jsonb version")),
        },
        Kind::Bytea => Value::Bytes(raw.to_vec()),
        Kind::Date => {
            exact(4)?;
            let d = i32::from_be_bytes(raw.try_into().unwrap_or_default());
            Value::Date(if d == i32::MAX || d == i32::MIN {
                d
            } else {
                d + PG_EPOCH_DAYS
            })
        }
        Kind::Time => {
            exact(8)?;
            Value::Time(i64::from_be_bytes(raw.try_into().unwrap_or_default()))
        }
        Kind::Timestamp | Kind::TimestampTz => {
            exact(8)?;
            let t = i64::from_be_bytes(raw.try_into().unwrap_or_default());
            let t = if t == i64::MAX || t == i64::MIN {
                t
            } else {
                t + PG_EPOCH_MICROS
            };
            if *kind == Kind::Timestamp {
                Value::Timestamp(t)
            } else {
                Value::TimestampTz(t)
            }
        }
        Kind::Interval => {
            exact(16)?;
            let mut b = raw;
            let micros = i64::from_be_bytes(take(&mut b).unwrap_or_default());
            let days = i32::from_be_bytes(take(&mut b).unwrap_or_default());
            let months = i32::from_be_bytes(take(&mut b).unwrap_or_default());
            Value::Interval {
                months,
                days,
                micros,
            }
        }
        Kind::Uuid => {
            exact(16)?;
            Value::Uuid(raw.try_into().unwrap_or_default())
        }
        Kind::Inet | Kind::Cidr => {
            Value::Text(decode_inet(raw).ok_or_else(|| bad(kind, "malformed"))?)
        }
        Kind::Array { elem, .. } => decode_array(elem, raw)?,
    })
}

/// Decodes a binary array. One dimension is a [`Value::Array`] of its
/// elements, several are nested arrays (row-major); an array whose lower
/// bounds are not all 1 (`'[0:2]={1,2,3}'`) has no place for them in a
/// [`Value::Array`] and becomes the text PostgreSQL reads it back from
/// ([`Value::Text`]), which the sink sends in text format.
fn decode_array(elem: &Kind, raw: &[u8]) -> Result<Value> {
    let mut b = raw;
    let malformed = || Error::data("cannot decode an array value: malformed");
    let ndim = i32::from_be_bytes(take(&mut b).ok_or_else(malformed)?);
    let _has_null = take::<4>(&mut b).ok_or_else(malformed)?;
    let _elem_oid = take::<4>(&mut b).ok_or_else(malformed)?;
    if !(0..=6).contains(&ndim) {
        return Err(malformed());
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    for _ in 0..ndim {
        let n = i32::from_be_bytes(take(&mut b).ok_or_else(malformed)?);
        let lower = i32::from_be_bytes(take(&mut b).ok_or_else(malformed)?);
        dims.push((usize::try_from(n).map_err(|_| malformed())?, lower));
    }
    let total = dims.iter().map(|d| d.0).product::<usize>();
    if ndim == 0 || total == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    let mut flat = Vec::with_capacity(total.min(raw.len()));
    for _ in 0..total {
        let len = i32::from_be_bytes(take(&mut b).ok_or_else(malformed)?);
        if len < 0 {
            flat.push(Value::Null);
            continue;
        }
        let (v, rest) = b.split_at_checked(len as usize).ok_or_else(malformed)?;
        b = rest;
        flat.push(decode(elem, v)?);
    }
    let lengths: Vec<usize> = dims.iter().map(|d| d.0).collect();
    let nested = nest(&mut flat.into_iter(), &lengths);
    if dims.iter().all(|d| d.1 == 1) {
        return Ok(nested);
    }
    let Value::Array(items) = &nested else {
        return Err(malformed());
    };
    let mut text = String::new();
    for (n, lower) in &dims {
        let upper = i64::from(*lower) + *n as i64 - 1;
        text.push_str(&format!("[{lower}:{upper}]"));
    }
    text.push('=');
    text.push_str(
        &array_text(items)
            .ok_or_else(|| Error::data("cannot decode an array value: an element has no text"))?,
    );
    Ok(Value::Text(text))
}

/// Row-major `items` as arrays nested `lengths.len()` deep.
fn nest(items: &mut impl Iterator<Item = Value>, lengths: &[usize]) -> Value {
    match lengths {
        [] => items.next().unwrap_or(Value::Null),
        [n, inner @ ..] => Value::Array((0..*n).map(|_| nest(items, inner)).collect()),
    }
}

/// An array's text form as PostgreSQL's input function reads it
/// (`{"a",NULL,"it's"}`): every element quoted, `NULL` bare, nested arrays
/// as nested braces; `None` when an element has no text form.
pub(crate) fn array_text(items: &[Value]) -> Option<String> {
    let mut s = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match item {
            Value::Null => s.push_str("NULL"),
            Value::Array(inner) => s.push_str(&array_text(inner)?),
            other => {
                let text = text_of(other)?;
                s.push('"');
                s.push_str(&text.replace('\\', "\\\\").replace('"', "\\\""));
                s.push('"');
            }
        }
    }
    s.push('}');
    Some(s)
}

fn decode_inet(raw: &[u8]) -> Option<String> {
    let mut b = raw;
    let [family, bits, is_cidr, nb] = take::<4>(&mut b)?;
    let addr = match (family, nb) {
        (2, 4) => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string(),
        (3, 16) => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string(),
        _ => return None,
    };
    let max = if family == 2 { 32 } else { 128 };
    Some(if is_cidr != 0 || bits != max {
        format!("{addr}/{bits}")
    } else {
        addr
    })
}

/// Decodes a text-format value (pgoutput sends text for types without a
/// binary send function; only text-like kinds arrive that way).
pub(crate) fn decode_text(kind: &Kind, s: &str) -> Result<Value> {
    Ok(match kind {
        Kind::Text | Kind::Enum | Kind::Inet | Kind::Cidr | Kind::Other => {
            Value::Text(s.to_owned())
        }
        Kind::Json | Kind::Jsonb => Value::Json(s.to_owned()),
        Kind::Numeric => Value::Decimal(s.to_owned()),
        Kind::Int2 | Kind::Int4 | Kind::Int8 => Value::Int(
            s.parse()
                .map_err(|_| Error::data(format!("not an integer: {s:?}")))?,
        ),
        Kind::Bool => Value::Bool(s == "t"),
        _ => {
            return Err(Error::data(format!(
                "a {kind:?} value arrived in text format, which ferry does not parse"
            )));
        }
    })
}

// ---------------------------------------------------------------- encoding

fn cannot(v: &Value, kind: &Kind) -> Error {
    Error::data(format!(
        "value {v} cannot be written to a column of type {kind:?}"
    ))
}

/// The canonical text of a scalar value (what PostgreSQL's input functions
/// accept), or `None` for values with no text form (arrays, Unchanged).
pub(crate) fn text_of(v: &Value) -> Option<String> {
    Some(match v {
        Value::Bool(b) => if *b { "true" } else { "false" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => s.clone(),
        Value::Bytes(b) => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s
        }
        Value::Date(d) if *d == i32::MAX => "infinity".into(),
        Value::Date(d) if *d == i32::MIN => "-infinity".into(),
        Value::Date(d) => bc_era(format_date(*d)),
        Value::Time(t) => format_time(*t),
        Value::Timestamp(t) | Value::TimestampTz(t) if *t == i64::MAX => "infinity".into(),
        Value::Timestamp(t) | Value::TimestampTz(t) if *t == i64::MIN => "-infinity".into(),
        Value::Timestamp(t) => bc_era(format_timestamp(*t)),
        Value::TimestampTz(t) => bc_era(format!("{}+00", format_timestamp(*t))),
        Value::Interval {
            months,
            days,
            micros,
        } => format!("{months} mons {days} days {micros} microseconds"),
        Value::Uuid(u) => format_uuid(u),
        Value::Null | Value::Array(_) | Value::Unchanged => return None,
    })
}

/// ferry's text of a date or timestamp (`-0043-03-15 …`: ISO 8601's
/// astronomical years, 1 BC being year 0) in the form PostgreSQL reads
/// (`0044-03-15 … BC`).
fn bc_era(text: String) -> String {
    let (year, rest) = text.split_at(text[1..].find('-').map_or(0, |i| i + 1));
    match year.parse::<i64>() {
        Ok(y) if y <= 0 => format!("{:04}{rest} BC", 1 - y),
        _ => text,
    }
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f == f64::INFINITY {
        "Infinity".into()
    } else if f == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        format!("{f:?}")
    }
}

/// Appends the binary encoding of a non-null `v` for a column of `kind`.
pub(crate) fn encode(v: &Value, kind: &Kind, out: &mut BytesMut) -> Result<()> {
    let int = |v: &Value| -> Option<i64> {
        match v {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(*f as i64),
            Value::Decimal(s) | Value::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let float = |v: &Value| -> Option<f64> {
        match v {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Decimal(s) | Value::Text(s) => match s.trim() {
                "NaN" => Some(f64::NAN),
                "Infinity" | "inf" => Some(f64::INFINITY),
                "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
                t => t.parse().ok(),
            },
            _ => None,
        }
    };
    match kind {
        Kind::Bool => match v {
            Value::Bool(b) => out.put_u8(*b as u8),
            Value::Text(s) if matches!(s.as_str(), "t" | "true" | "f" | "false") => {
                out.put_u8(matches!(s.as_str(), "t" | "true") as u8)
            }
            _ => out.put_u8(match int(v) {
                Some(0) => 0,
                Some(1) => 1,
                _ => return Err(cannot(v, kind)),
            }),
        },
        Kind::Int2 => {
            let i = int(v).ok_or_else(|| cannot(v, kind))?;
            out.put_i16(i16::try_from(i).map_err(|_| out_of_range(v, "smallint"))?)
        }
        Kind::Int4 => {
            let i = int(v).ok_or_else(|| cannot(v, kind))?;
            out.put_i32(i32::try_from(i).map_err(|_| out_of_range(v, "integer"))?)
        }
        Kind::Int8 => out.put_i64(int(v).ok_or_else(|| cannot(v, kind))?),
        Kind::Float4 => out.put_f32(float(v).ok_or_else(|| cannot(v, kind))? as f32),
        Kind::Float8 => out.put_f64(float(v).ok_or_else(|| cannot(v, kind))?),
        Kind::Numeric => {
            let s = match v {
                Value::Float(f) => float_text(*f),
                Value::Bool(_) => return Err(cannot(v, kind)),
                other => text_of(other).ok_or_else(|| cannot(v, kind))?,
            };
            crate::numeric::encode(s.trim(), out).ok_or_else(|| cannot(v, kind))?
        }
        // `Other` travels as a text parameter, cast to the column's type
        // in the statement (see `Target::placeholder`).
        Kind::Text | Kind::Enum | Kind::Json | Kind::Other => match v {
            Value::Text(s) | Value::Json(s) | Value::Decimal(s) => out.put_slice(s.as_bytes()),
            Value::Bytes(b) if *kind == Kind::Text => out.put_slice(
                std::str::from_utf8(b)
                    .map_err(|_| cannot(v, kind))?
                    .as_bytes(),
            ),
            other if matches!(kind, Kind::Text | Kind::Other) => {
                out.put_slice(text_of(other).ok_or_else(|| cannot(v, kind))?.as_bytes())
            }
            _ => return Err(cannot(v, kind)),
        },
        Kind::Jsonb => match v {
            Value::Text(s) | Value::Json(s) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes())
            }
            _ => return Err(cannot(v, kind)),
        },
        Kind::Bytea => match v {
            Value::Bytes(b) => out.put_slice(b),
            Value::Text(s) => out.put_slice(s.as_bytes()),
            _ => return Err(cannot(v, kind)),
        },
        Kind::Date => {
            let d = match v {
                Value::Date(d) => *d,
                Value::Text(s) => match s.as_str() {
                    "infinity" => i32::MAX,
                    "-infinity" => i32::MIN,
                    _ => ferry_core::time::parse_date(s).ok_or_else(|| cannot(v, kind))?,
                },
                _ => return Err(cannot(v, kind)),
            };
            out.put_i32(if d == i32::MAX || d == i32::MIN {
                d
            } else {
                d - PG_EPOCH_DAYS
            })
        }
        Kind::Time => match v {
            Value::Time(t) => out.put_i64(*t),
            Value::Text(s) => {
                out.put_i64(ferry_core::time::parse_time(s).ok_or_else(|| cannot(v, kind))?)
            }
            _ => return Err(cannot(v, kind)),
        },
        Kind::Timestamp | Kind::TimestampTz => {
            let t = match v {
                Value::Timestamp(t) | Value::TimestampTz(t) => *t,
                Value::Text(s) => match s.as_str() {
                    "infinity" => i64::MAX,
                    "-infinity" => i64::MIN,
                    _ => ferry_core::time::parse_timestamp(s).ok_or_else(|| cannot(v, kind))?,
                },
                _ => return Err(cannot(v, kind)),
            };
            out.put_i64(if t == i64::MAX || t == i64::MIN {
                t
            } else {
                t - PG_EPOCH_MICROS
            })
        }
        Kind::Interval => match v {
            Value::Interval {
                months,
                days,
                micros,
            } => {
                out.put_i64(*micros);
                out.put_i32(*days);
                out.put_i32(*months)
            }
            _ => return Err(cannot(v, kind)),
        },
        Kind::Uuid => match v {
            Value::Uuid(u) => out.put_slice(u),
            Value::Bytes(b) if b.len() == 16 => out.put_slice(b),
            Value::Text(s) => {
                out.put_slice(&ferry_core::time::parse_uuid(s).ok_or_else(|| cannot(v, kind))?)
            }
            _ => return Err(cannot(v, kind)),
        },
        Kind::Inet | Kind::Cidr => match v {
            Value::Text(s) => {
                encode_inet(s, *kind == Kind::Cidr, out).ok_or_else(|| cannot(v, kind))?
            }
            _ => return Err(cannot(v, kind)),
        },
        Kind::Array { elem_oid, elem } => match v {
            Value::Array(items) => {
                encode_array(items, *elem_oid, elem, out).ok_or_else(|| {
                    Error::data(format!(
                        "value {v} cannot be written to an array column: its nested arrays \
                         differ in length (PostgreSQL arrays are rectangular)"
                    ))
                })??
            }
            _ => return Err(cannot(v, kind)),
        },
    }
    Ok(())
}

fn out_of_range(v: &Value, ty: &str) -> Error {
    Error::data(format!("value {v} is out of range for type {ty}"))
}

/// Appends a binary array of `items`, nested arrays being further
/// dimensions; `None` when they are not rectangular.
fn encode_array(
    items: &[Value],
    elem_oid: u32,
    elem: &Kind,
    out: &mut BytesMut,
) -> Option<Result<()>> {
    // The lengths along the first item of each level; every other item
    // must agree with them.
    let mut lengths = vec![items.len()];
    let mut first = items.first();
    while let Some(Value::Array(inner)) = first {
        lengths.push(inner.len());
        first = inner.first();
    }
    fn rectangular(items: &[Value], lengths: &[usize]) -> bool {
        match lengths {
            [n] => items.len() == *n && !items.iter().any(|v| matches!(v, Value::Array(_))),
            [n, inner @ ..] => {
                items.len() == *n
                    && items
                        .iter()
                        .all(|v| matches!(v, Value::Array(i) if rectangular(i, inner)))
            }
            [] => false,
        }
    }
    if !rectangular(items, &lengths) {
        return None;
    }
    let empty = lengths.contains(&0);
    let mut flat = Vec::new();
    fn flatten<'a>(items: &'a [Value], flat: &mut Vec<&'a Value>) {
        for v in items {
            match v {
                Value::Array(inner) => flatten(inner, flat),
                v => flat.push(v),
            }
        }
    }
    flatten(items, &mut flat);
    out.put_i32(if empty { 0 } else { lengths.len() as i32 });
    out.put_i32(flat.iter().any(|v| v.is_null()) as i32);
    out.put_u32(elem_oid);
    if empty {
        return Some(Ok(()));
    }
    for n in &lengths {
        out.put_i32(*n as i32);
        out.put_i32(1);
    }
    for item in flat {
        if let Err(e) = encode_field(item, elem, out) {
            return Some(Err(e));
        }
    }
    Some(Ok(()))
}

/// Appends a length-prefixed field (`-1` for NULL), as in COPY and arrays.
pub(crate) fn encode_field(v: &Value, kind: &Kind, out: &mut BytesMut) -> Result<()> {
    match v {
        Value::Null => {
            out.put_i32(-1);
            Ok(())
        }
        Value::Unchanged => Err(Error::fatal(
            "an unchanged (not sent) value reached a full-row write; this is a ferry bug",
        )),
        _ => {
            let at = out.len();
            out.put_i32(0);
            encode(v, kind, out)?;
            let len = (out.len() - at - 4) as i32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
    }
}

fn encode_inet(s: &str, cidr: bool, out: &mut BytesMut) -> Option<()> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    match ip {
        std::net::IpAddr::V4(v4) => {
            out.put_slice(&[2, bits.unwrap_or(32), cidr as u8, 4]);
            out.put_slice(&v4.octets());
        }
        std::net::IpAddr::V6(v6) => {
            out.put_slice(&[3, bits.unwrap_or(128), cidr as u8, 16]);
            out.put_slice(&v6.octets());
        }
    }
    Some(())
}

/// A SQL literal for a key value in a column of PostgreSQL type `ty`
/// (`'2024-01-01'::date`), used in range predicates of `COPY (SELECT ...)`,
/// which takes no parameters.
pub(crate) fn literal(v: &Value, ty: &str) -> Result<String> {
    match v {
        Value::Null => Ok("NULL".into()),
        Value::Int(i) => Ok(format!("{i}::{ty}")),
        other => {
            let text = text_of(other).ok_or_else(|| {
                Error::fatal(format!("value {other} cannot be used in a key range"))
            })?;
            Ok(format!("{}::{ty}", crate::types::quote_literal(&text)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(kind: &Kind, v: Value) -> Value {
        let mut b = BytesMut::new();
        encode(&v, kind, &mut b).unwrap();
        decode(kind, &b).unwrap()
    }

    #[test]
    fn dates_before_year_one_are_written_as_bc() {
        let bc_44 = ferry_core::time::days_from_civil(-43, 3, 15) as i32;
        assert_eq!(text_of(&Value::Date(bc_44)).unwrap(), "0044-03-15 BC");
        let t = bc_44 as i64 * 86_400_000_000 + 1;
        assert_eq!(
            text_of(&Value::TimestampTz(t)).unwrap(),
            "0044-03-15 00:00:00.000001+00 BC"
        );
        assert_eq!(text_of(&Value::Date(0)).unwrap(), "1970-01-01");
        let year_0 = ferry_core::time::days_from_civil(0, 6, 1) as i32;
        assert_eq!(text_of(&Value::Date(year_0)).unwrap(), "0001-06-01 BC");
    }

    #[test]
    fn numerics_round_trip_exactly() {
        for s in [
            "0",
            "1",
            "-1",
            "12.50",
            "0.0001",
            "-0.000123",
            "10000",
            "123456789.987654321",
            "1e3",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.00",
            "99999999999999999999.5",
        ] {
            let back = round(&Kind::Numeric, Value::Decimal(s.into()));
            let expect = if s == "1e3" { "1000" } else { s };
            assert_eq!(back, Value::Decimal(expect.into()), "{s}");
        }
    }

    #[test]
    fn numerics_at_postgres_limits_round_trip() {
        use crate::numeric::{MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS};
        // More than 32,767 base-10000 groups: the digit count is unsigned.
        let widest = format!(
            "-{}.{}",
            "9".repeat(MAX_INTEGER_DIGITS),
            "7".repeat(MAX_FRACTION_DIGITS)
        );
        let huge = format!("1{}", "0".repeat(MAX_INTEGER_DIGITS - 1));
        let tiny = format!("0.{}1", "0".repeat(MAX_FRACTION_DIGITS - 1));
        for s in [widest, huge, tiny, "1234000".to_owned()] {
            let back = round(&Kind::Numeric, Value::Decimal(s.clone()));
            assert!(back == Value::Decimal(s.clone()), "{} digits", s.len());
        }
        // Past them: refused, not wrapped or expanded without bound.
        for s in [
            format!("1{}", "0".repeat(MAX_INTEGER_DIGITS)),
            format!("0.{}1", "0".repeat(MAX_FRACTION_DIGITS)),
            "1e2000000000".to_owned(),
            "1e-2000000000".to_owned(),
        ] {
            let mut b = BytesMut::new();
            assert!(encode(&Value::Decimal(s.clone()), &Kind::Numeric, &mut b).is_err());
        }
    }

    #[test]
    fn times_and_misc() {
        assert_eq!(round(&Kind::Date, Value::Date(19_000)), Value::Date(19_000));
        assert_eq!(
            round(&Kind::Date, Value::Date(i32::MAX)),
            Value::Date(i32::MAX)
        );
        assert_eq!(
            round(&Kind::TimestampTz, Value::TimestampTz(-5)),
            Value::TimestampTz(-5)
        );
        assert_eq!(
            round(&Kind::Inet, Value::Text("10.0.0.0/8".into())),
            Value::Text("10.0.0.0/8".into())
        );
        assert_eq!(
            round(&Kind::Cidr, Value::Text("10.0.0.0/32".into())),
            Value::Text("10.0.0.0/32".into())
        );
        let arr = Value::Array(vec![Value::Int(1), Value::Null, Value::Int(3)]);
        let k = Kind::Array {
            elem_oid: 23,
            elem: Box::new(Kind::Int4),
        };
        assert_eq!(round(&k, arr.clone()), arr);
        assert_eq!(round(&k, Value::Array(vec![])), Value::Array(vec![]));
    }

    fn int4_array() -> Kind {
        Kind::Array {
            elem_oid: 23,
            elem: Box::new(Kind::Int4),
        }
    }

    #[test]
    fn multi_dimensional_arrays_round_trip_as_nested_arrays() {
        let k = int4_array();
        let row = |a: i64, b: Value| Value::Array(vec![Value::Int(a), b]);
        let matrix = Value::Array(vec![row(1, Value::Null), row(3, Value::Int(4))]);
        assert_eq!(round(&k, matrix.clone()), matrix);
        let cube = Value::Array(vec![Value::Array(vec![row(1, Value::Int(2))])]);
        assert_eq!(round(&k, cube.clone()), cube);
        let ragged = Value::Array(vec![row(1, Value::Int(2)), Value::Array(vec![])]);
        let mut b = BytesMut::new();
        let e = encode(&ragged, &k, &mut b).unwrap_err();
        assert!(e.to_string().contains("rectangular"), "{e}");
    }

    #[test]
    fn arrays_with_other_lower_bounds_become_their_text() {
        // '[0:1][-1:0]={{1,NULL},{3,4}}'::int4[] as array_send writes it.
        let mut raw = BytesMut::new();
        for word in [2, 1, 23, 2, 0, 2, -1] {
            raw.put_i32(word);
        }
        for v in [Some(1), None, Some(3), Some(4)] {
            match v {
                Some(v) => {
                    raw.put_i32(4);
                    raw.put_i32(v);
                }
                None => raw.put_i32(-1),
            }
        }
        assert_eq!(
            decode(&int4_array(), &raw).unwrap(),
            Value::Text("[0:1][-1:0]={{\"1\",NULL},{\"3\",\"4\"}}".into())
        );
        let text = Kind::Array {
            elem_oid: 25,
            elem: Box::new(Kind::Text),
        };
        let mut raw = BytesMut::new();
        for word in [1, 0, 25, 1, 7] {
            raw.put_i32(word);
        }
        raw.put_i32(4);
        raw.put_slice(b"a\"\\b");
        assert_eq!(
            decode(&text, &raw).unwrap(),
            Value::Text("[7:7]={\"a\\\"\\\\b\"}".into())
        );
    }
}
