//! Arrays in a SQLite target: stored as JSON array text (`ARRAY_JSON`
//! columns), elements in the text forms the scalar columns use, so the
//! sink's table reader gets back the values that were written.

use ferry_core::time::{format_time, format_uuid};
use ferry_core::{ColumnType, Value};
use rusqlite::types::ValueRef;

use crate::temporal::{format_interval, temporal_text};
use crate::types::to_value;

/// Encodes array items as a JSON array.
pub(crate) fn encode(items: &[Value]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode_item(item, &mut out);
    }
    out.push(']');
    out
}

fn encode_item(v: &Value, out: &mut String) {
    match v {
        Value::Null | Value::Unchanged => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) if f.is_finite() => out.push_str(&format!("{f:?}")),
        Value::Float(f) => string(&format!("{f}").replace("inf", "Inf"), out),
        Value::Decimal(d)
            if d.bytes()
                .all(|b| b.is_ascii_digit() || b"-+.eE".contains(&b)) =>
        {
            out.push_str(d)
        }
        Value::Decimal(d) => string(d, out),
        Value::Text(s) => string(s, out),
        Value::Json(j) => out.push_str(j),
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            string(&format!("\\x{hex}"), out)
        }
        Value::Time(t) => string(&format_time(*t), out),
        Value::Date(_) | Value::Timestamp(_) | Value::TimestampTz(_) => {
            let mut text = String::with_capacity(32);
            temporal_text(v, &mut text);
            string(&text, out)
        }
        Value::Interval {
            months,
            days,
            micros,
        } => string(&format_interval(*months, *days, *micros), out),
        Value::Uuid(u) => string(&format_uuid(u), out),
        Value::Array(items) => out.push_str(&encode(items)),
    }
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Decodes a JSON array written by [`encode`] into values of `elem` type.
pub(crate) fn decode(text: &str, elem: &ColumnType) -> Option<Vec<Value>> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let items = p.array(elem)?;
    p.ws();
    (p.i == p.s.len()).then_some(items)
}

/// Whether `text` is PostgreSQL's text of an array whose lower bounds
/// are not all 1 (`[0:2]={1,NULL,3}`): a PostgreSQL source carries such an
/// array as that text, which a JSON array cannot hold, and the sink
/// stores it as it came.
pub(crate) fn is_bounded_literal(text: &str) -> bool {
    let mut rest = text;
    let mut dims = 0;
    while let Some(after) = rest.strip_prefix('[') {
        let Some((bounds, tail)) = after.split_once(']') else {
            return false;
        };
        let Some((lower, upper)) = bounds.split_once(':') else {
            return false;
        };
        if lower.parse::<i32>().is_err() || upper.parse::<i64>().is_err() {
            return false;
        }
        dims += 1;
        rest = tail;
    }
    dims > 0 && rest.starts_with("={") && rest.ends_with('}')
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        let hit = self.s.get(self.i) == Some(&b);
        self.i += usize::from(hit);
        hit
    }

    fn array(&mut self, elem: &ColumnType) -> Option<Vec<Value>> {
        if !self.eat(b'[') {
            return None;
        }
        let mut out = Vec::new();
        if self.eat(b']') {
            return Some(out);
        }
        loop {
            out.push(self.item(elem)?);
            if self.eat(b']') {
                return Some(out);
            }
            if !self.eat(b',') {
                return None;
            }
        }
    }

    fn item(&mut self, elem: &ColumnType) -> Option<Value> {
        self.ws();
        let start = self.i;
        match (self.s.get(self.i)?, elem) {
            (b'[', ColumnType::Array(inner)) => self.array(inner).map(Value::Array),
            // A further dimension of a multi-dimensional array.
            (b'[', _) => self.array(elem).map(Value::Array),
            (b'"', ColumnType::Bytes) => {
                let s = self.string()?;
                let hex = s.strip_prefix("\\x")?;
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()
                    .map(Value::Bytes)
            }
            (b'"', ColumnType::Json) => {
                self.string()?;
                Some(Value::Json(self.raw(start)))
            }
            (b'"', ty) => to_value(ty, ValueRef::Text(self.string()?.as_bytes())).ok(),
            (_, ColumnType::Json) => {
                self.skip_value()?;
                Some(Value::Json(self.raw(start)))
            }
            (b'n', _) => self.word(b"null").then_some(Value::Null),
            (b't', _) => self.word(b"true").then_some(Value::Bool(true)),
            (b'f', _) => self.word(b"false").then_some(Value::Bool(false)),
            (_, ty) => {
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| b.is_ascii_digit() || b"-+.eE".contains(b))
                {
                    self.i += 1;
                }
                let num = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                let stored = match num.parse::<i64>() {
                    Ok(i) => ValueRef::Integer(i),
                    Err(_) => ValueRef::Real(num.parse().ok()?),
                };
                match ty {
                    ColumnType::Decimal { .. } => Some(Value::Decimal(num.to_owned())),
                    _ => to_value(ty, stored).ok(),
                }
            }
        }
    }

    fn raw(&self, start: usize) -> String {
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn word(&mut self, w: &[u8]) -> bool {
        let hit = self.s[self.i..].starts_with(w);
        self.i += if hit { w.len() } else { 0 };
        hit
    }

    fn string(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let b = *self.s.get(self.i)?;
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    let c = match e {
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
                        }
                        other => other as char,
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b => out.push(b),
            }
        }
    }

    /// Skips one JSON value of any kind (objects inside JSON elements).
    fn skip_value(&mut self) -> Option<()> {
        match *self.s.get(self.i)? {
            b'"' => {
                self.string()?;
            }
            b'[' | b'{' => {
                let mut depth = 0usize;
                loop {
                    match *self.s.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while self
                    .s
                    .get(self.i)
                    .is_some_and(|b| !b",]} \t\r\n".contains(b))
                {
                    self.i += 1;
                }
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_round_trip_by_element_type() {
        let cases = [
            (
                ColumnType::Text {
                    max_len: None,
                    fixed: false,
                },
                vec![
                    Value::Text("a\"b\\c\n, é".into()),
                    Value::Null,
                    Value::Text(String::new()),
                ],
            ),
            (
                ColumnType::Int64,
                vec![Value::Int(-1), Value::Int(i64::MAX)],
            ),
            (
                ColumnType::Float64,
                vec![Value::Float(0.1), Value::Float(-2.5e300)],
            ),
            (
                ColumnType::Decimal {
                    precision: None,
                    scale: None,
                },
                vec![Value::Decimal("12.50".into()), Value::Decimal("NaN".into())],
            ),
            (
                ColumnType::Bool,
                vec![Value::Bool(true), Value::Bool(false)],
            ),
            (ColumnType::Bytes, vec![Value::Bytes(vec![0, 255])]),
            (ColumnType::Timestamp, vec![Value::Timestamp(123_456_789)]),
            (
                ColumnType::TimestampTz,
                vec![
                    Value::TimestampTz(i64::MIN),
                    Value::TimestampTz(-1),
                    Value::TimestampTz(i64::MAX),
                ],
            ),
            (
                ColumnType::Date,
                vec![Value::Date(i32::MAX), Value::Date(0)],
            ),
            (ColumnType::Uuid, vec![Value::Uuid([3; 16])]),
            (
                ColumnType::Json,
                vec![
                    Value::Json(r#"{"a":[1,{"b":"]"}]}"#.into()),
                    Value::Json("\"s\"".into()),
                    Value::Json("3".into()),
                ],
            ),
            (
                ColumnType::Array(Box::new(ColumnType::Int64)),
                vec![Value::Array(vec![Value::Int(1)]), Value::Array(vec![])],
            ),
        ];
        for (elem, items) in cases {
            let text = encode(&items);
            assert_eq!(decode(&text, &elem), Some(items), "{text}");
        }
        assert_eq!(decode("[1,", &ColumnType::Int64), None);
        assert_eq!(decode("[1] x", &ColumnType::Int64), None);
    }

    #[test]
    fn multi_dimensional_arrays_nest_under_one_element_type() {
        let matrix = vec![
            Value::Array(vec![Value::Int(1), Value::Null]),
            Value::Array(vec![Value::Int(3), Value::Int(4)]),
        ];
        let text = encode(&matrix);
        assert_eq!(text, "[[1,null],[3,4]]");
        assert_eq!(decode(&text, &ColumnType::Int32), Some(matrix));
    }

    #[test]
    fn bounded_literals_are_recognised() {
        assert!(is_bounded_literal("[0:2]={1,NULL,3}"));
        assert!(is_bounded_literal("[-5:-5][1:2]={{7,8}}"));
        assert!(!is_bounded_literal("[1,2]"));
        assert!(!is_bounded_literal("{1,2}"));
        assert!(!is_bounded_literal("[0:x]={1}"));
        assert!(!is_bounded_literal("[0:1]="));
    }
}
