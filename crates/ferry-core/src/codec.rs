//! A small self-describing text encoding of value lists, used to store keys
//! in checkpoints. Not a wire format: it never leaves ferry's own records.

use crate::value::Value;

/// Encodes values as `tag:len:payload` items.
pub fn encode_values(values: &[Value]) -> String {
    let mut out = String::new();
    for v in values {
        let (tag, payload): (char, String) = match v {
            Value::Null => ('n', String::new()),
            Value::Bool(b) => ('b', (*b as u8).to_string()),
            Value::Int(i) => ('i', i.to_string()),
            Value::Float(f) => ('f', format!("{:x}", f.to_bits())),
            Value::Decimal(s) => ('d', s.clone()),
            Value::Text(s) => ('t', s.clone()),
            Value::Json(s) => ('j', s.clone()),
            Value::Bytes(b) => ('x', b.iter().map(|b| format!("{b:02x}")).collect()),
            Value::Date(d) => ('D', d.to_string()),
            Value::Time(t) => ('T', t.to_string()),
            Value::Timestamp(t) => ('S', t.to_string()),
            Value::TimestampTz(t) => ('Z', t.to_string()),
            Value::Uuid(u) => ('u', u.iter().map(|b| format!("{b:02x}")).collect()),
            Value::Interval {
                months,
                days,
                micros,
            } => ('v', format!("{months},{days},{micros}")),
            Value::Array(items) => ('a', encode_values(items)),
            Value::Unchanged => ('?', String::new()),
        };
        out.push(tag);
        out.push(':');
        out.push_str(&payload.len().to_string());
        out.push(':');
        out.push_str(&payload);
    }
    out
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Decodes what [`encode_values`] wrote; `None` on malformed input.
pub fn decode_values(mut s: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let tag = s.chars().next()?;
        let rest = s.get(tag.len_utf8()..)?.strip_prefix(':')?;
        let (len, rest) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let payload = rest.get(..len)?;
        s = &rest[len..];
        out.push(match tag {
            'n' => Value::Null,
            'b' => Value::Bool(payload == "1"),
            'i' => Value::Int(payload.parse().ok()?),
            'f' => Value::Float(f64::from_bits(u64::from_str_radix(payload, 16).ok()?)),
            'd' => Value::Decimal(payload.to_owned()),
            't' => Value::Text(payload.to_owned()),
            'j' => Value::Json(payload.to_owned()),
            'x' => Value::Bytes(hex_bytes(payload)?),
            'D' => Value::Date(payload.parse().ok()?),
            'T' => Value::Time(payload.parse().ok()?),
            'S' => Value::Timestamp(payload.parse().ok()?),
            'Z' => Value::TimestampTz(payload.parse().ok()?),
            'u' => Value::Uuid(hex_bytes(payload)?.try_into().ok()?),
            'v' => {
                let mut it = payload.split(',');
                Value::Interval {
                    months: it.next()?.parse().ok()?,
                    days: it.next()?.parse().ok()?,
                    micros: it.next()?.parse().ok()?,
                }
            }
            'a' => Value::Array(decode_values(payload)?),
            '?' => Value::Unchanged,
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let vals = vec![
            Value::Null,
            Value::Int(-5),
            Value::Float(f64::NAN),
            Value::Text("a:3:b\nc".into()),
            Value::Bytes(vec![0, 255]),
            Value::Uuid([7; 16]),
            Value::Array(vec![Value::Int(1), Value::Text("é".into())]),
            Value::Interval {
                months: 1,
                days: -2,
                micros: 3,
            },
        ];
        let back = decode_values(&encode_values(&vals)).unwrap();
        assert_eq!(back.len(), vals.len());
        assert_eq!(back[3], vals[3]);
        assert_eq!(back[6], vals[6]);
        assert!(decode_values("i:2:1").is_none());
    }
}
