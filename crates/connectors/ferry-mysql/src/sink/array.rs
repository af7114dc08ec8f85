//! Arrays in a MySQL/MariaDB target: stored as JSON array text in a
//! `LONGTEXT` column (MySQL/MariaDB have no array type), read back by the
//! column's element type.
//!
//! Elements: `null`, booleans and integers as JSON; floats and decimals as
//! JSON numbers in their exact text (a float that is not finite as the
//! string `"NaN"`, `"inf"`, `"-inf"`); everything else as a JSON string of
//! the text the sink writes for a scalar of that type (dates
//! `YYYY-MM-DD`, bytes as lower-case hex, UUIDs hyphenated, ...).

use std::fmt::Write;

use ferry_core::time::{format_uuid, parse_date, parse_time, parse_timestamp, parse_uuid};
use ferry_core::{ColumnType, Value};

use super::encode::{format_interval, parse_interval};

/// Appends `items` as a JSON array.
pub(crate) fn encode(out: &mut String, items: &[Value]) -> Result<(), String> {
    out.push('[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) if f.is_finite() => {
                let _ = write!(out, "{f:?}");
            }
            Value::Float(f) => push_string(out, &f.to_string()),
            Value::Decimal(d) if d.bytes().all(|b| b.is_ascii_digit() || b"-.".contains(&b)) => {
                out.push_str(d)
            }
            Value::Decimal(d) => push_string(out, d),
            Value::Text(s) | Value::Json(s) => push_string(out, s),
            Value::Bytes(b) => {
                let mut hex = String::with_capacity(b.len() * 2);
                for byte in b {
                    let _ = write!(hex, "{byte:02x}");
                }
                push_string(out, &hex);
            }
            Value::Date(_) | Value::Time(_) | Value::Timestamp(_) | Value::TimestampTz(_) => {
                push_string(out, item.to_string().trim_end_matches("+00"))
            }
            Value::Interval {
                months,
                days,
                micros,
            } => push_string(out, &format_interval(*months, *days, *micros)),
            Value::Uuid(u) => push_string(out, &format_uuid(u)),
            Value::Array(inner) => encode(out, inner)?,
            Value::Unchanged => return Err("an unchanged value inside an array".into()),
        }
    }
    out.push(']');
    Ok(())
}

fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The array [`encode`] wrote, its elements of type `elem`.
pub(crate) fn decode(text: &str, elem: &ColumnType) -> Option<Vec<Value>> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    let items = p.array(elem)?;
    p.skip_ws();
    (p.at == p.s.len()).then_some(items)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.skip_ws();
        let hit = self.s.get(self.at) == Some(&b);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn array(&mut self, elem: &ColumnType) -> Option<Vec<Value>> {
        if !self.eat(b'[') {
            return None;
        }
        let mut items = Vec::new();
        if self.eat(b']') {
            return Some(items);
        }
        loop {
            items.push(self.value(elem)?);
            if self.eat(b']') {
                return Some(items);
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn value(&mut self, ty: &ColumnType) -> Option<Value> {
        self.skip_ws();
        match self.s.get(self.at)? {
            b'[' => match ty {
                ColumnType::Array(inner) => self.array(inner).map(Value::Array),
                _ => self.array(ty).map(Value::Array),
            },
            b'"' => {
                let s = self.string()?;
                scalar_from_text(ty, &s)
            }
            _ => {
                let start = self.at;
                while self.at < self.s.len() && !b",] \t\r\n".contains(&self.s[self.at]) {
                    self.at += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.at]).ok()?;
                match (word, ty) {
                    ("null", _) => Some(Value::Null),
                    ("true" | "false", _) => Some(Value::Bool(word == "true")),
                    (_, ColumnType::Float32 | ColumnType::Float64) => {
                        word.parse().ok().map(Value::Float)
                    }
                    (_, ColumnType::Decimal { .. }) => Some(Value::Decimal(word.to_owned())),
                    _ => word.parse().ok().map(Value::Int),
                }
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let rest = std::str::from_utf8(&self.s[self.at..]).ok()?;
            let end = rest.find(['"', '\\'])?;
            out.push_str(&rest[..end]);
            self.at += end + 1;
            if rest.as_bytes()[end] == b'"' {
                return Some(out);
            }
            match *self.s.get(self.at)? {
                b'u' => {
                    let hex = std::str::from_utf8(self.s.get(self.at + 1..self.at + 5)?).ok()?;
                    out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                    self.at += 5;
                }
                c => {
                    out.push(match c {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        other => other as char,
                    });
                    self.at += 1;
                }
            }
        }
    }
}

/// An element written as a JSON string, by its type.
fn scalar_from_text(ty: &ColumnType, s: &str) -> Option<Value> {
    Some(match ty {
        ColumnType::Float32 | ColumnType::Float64 => Value::Float(s.parse().ok()?),
        ColumnType::Decimal { .. } => Value::Decimal(s.to_owned()),
        ColumnType::Json => Value::Json(s.to_owned()),
        ColumnType::Bytes => Value::Bytes(
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?,
        ),
        ColumnType::Date => Value::Date(parse_date(s)?),
        ColumnType::Time => Value::Time(parse_time(s)?),
        ColumnType::Timestamp => Value::Timestamp(parse_timestamp(s)?),
        ColumnType::TimestampTz => Value::TimestampTz(parse_timestamp(s)?),
        ColumnType::Interval => parse_interval(s)?,
        ColumnType::Uuid => Value::Uuid(parse_uuid(s)?),
        _ => Value::Text(s.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_read_back_by_their_element_type() {
        let cases = [
            (
                ColumnType::Int32,
                vec![Value::Int(1), Value::Null, Value::Int(-3)],
            ),
            (
                ColumnType::Text {
                    max_len: None,
                    fixed: false,
                },
                vec![
                    Value::Text("a\"b\\c\n,]".into()),
                    Value::Text(String::new()),
                ],
            ),
            (
                ColumnType::Float64,
                vec![Value::Float(0.1), Value::Float(f64::INFINITY)],
            ),
            (ColumnType::Date, vec![Value::Date(-1), Value::Date(19_000)]),
            (ColumnType::Uuid, vec![Value::Uuid([7; 16])]),
            (ColumnType::Bytes, vec![Value::Bytes(vec![0, 255])]),
            (
                ColumnType::Array(Box::new(ColumnType::Int64)),
                vec![Value::Array(vec![Value::Int(1)]), Value::Array(vec![])],
            ),
        ];
        for (ty, items) in cases {
            let mut text = String::new();
            encode(&mut text, &items).unwrap();
            assert_eq!(decode(&text, &ty), Some(items), "{text}");
        }
    }
}
