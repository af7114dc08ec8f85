//! MySQL/MariaDB column types in ferry's type system, and values read from
//! result sets and binlog row events as ferry [`Value`]s.
//!
//! The mapping (README "Types"): integers keep their range (an unsigned
//! type whose top half does not fit the signed type of its width moves up
//! one; `BIGINT UNSIGNED` becomes `DECIMAL(20,0)`), DECIMAL stays exact,
//! CHAR/VARCHAR/TEXT in any character set become text (a latin1 value is
//! read as latin1 and carried as UTF-8), binary strings and BLOBs bytes,
//! DATETIME a timestamp without time zone, TIMESTAMP an instant in UTC,
//! TIME a signed duration in microseconds (negative and beyond 24 h kept),
//! YEAR and BIT(n ≤ 64) integers, ENUM and SET their labels as text, JSON
//! its text. Zero dates (`0000-00-00`) are read as NULL.

use ferry_core::{ColumnType, Value, time};
use mysql_async::Value as MyValue;

/// How to turn one column's values into ferry values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decode {
    Signed,
    /// A signed MEDIUMINT, which row events may send as its unsigned
    /// 24-bit pattern.
    Int24,
    /// An unsigned integer of `bits` bits that a signed 64-bit integer
    /// holds; a row event sends it as signed unless told otherwise.
    Unsigned {
        bits: u32,
    },
    /// `BIGINT UNSIGNED`: beyond i64, carried as a decimal.
    BigUnsigned,
    Decimal,
    Float,
    Double,
    Text,
    /// Text in latin1 (MySQL's cp1252), which row events send undecoded.
    Latin1,
    Bytes,
    Date,
    Time,
    DateTime,
    Timestamp,
    Year,
    Bit,
    Json,
    Uuid,
    /// An ENUM's labels: row events send the 1-based index.
    Enum(Vec<String>),
    /// A SET's labels: row events send a bitmask.
    Set(Vec<String>),
}

/// Where a value was read: result sets and row events spell some types
/// differently (a TIMESTAMP is a date in one, epoch seconds in the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Query,
    Binlog,
}

/// One column as `information_schema.columns` describes it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ColumnInfo {
    pub data_type: String,
    pub column_type: String,
    pub precision: Option<u64>,
    pub scale: Option<u64>,
    pub max_len: Option<u64>,
    pub charset: Option<String>,
    /// `json_valid(col)` is a CHECK of the table (MariaDB's JSON).
    pub json: bool,
}

/// Ferry's type for a column and how to decode its values; `Err` names
/// what ferry cannot carry.
pub(crate) fn map_column(c: &ColumnInfo) -> Result<(ColumnType, Decode), String> {
    let unsigned = c.column_type.contains("unsigned");
    let text = |max_len: Option<u64>, fixed: bool| ColumnType::Text {
        max_len: max_len.and_then(|n| u32::try_from(n).ok()),
        fixed,
    };
    let text_decode = || match c.charset.as_deref() {
        Some("latin1") => Decode::Latin1,
        _ => Decode::Text,
    };
    Ok(match c.data_type.as_str() {
        "tinyint" => (ColumnType::Int16, unsigned_or(unsigned, 8)),
        "smallint" if unsigned => (ColumnType::Int32, Decode::Unsigned { bits: 16 }),
        "smallint" => (ColumnType::Int16, Decode::Signed),
        "mediumint" if unsigned => (ColumnType::Int32, Decode::Unsigned { bits: 24 }),
        "mediumint" => (ColumnType::Int32, Decode::Int24),
        "int" | "integer" if unsigned => (ColumnType::Int64, Decode::Unsigned { bits: 32 }),
        "int" | "integer" => (ColumnType::Int32, Decode::Signed),
        "bigint" if unsigned => (
            ColumnType::Decimal {
                precision: Some(20),
                scale: Some(0),
            },
            Decode::BigUnsigned,
        ),
        "bigint" => (ColumnType::Int64, Decode::Signed),
        "decimal" | "numeric" => (
            ColumnType::Decimal {
                precision: c.precision.map(|p| p as u32),
                scale: c.scale.map(|s| s as i32),
            },
            Decode::Decimal,
        ),
        "float" => (ColumnType::Float32, Decode::Float),
        "double" | "real" => (ColumnType::Float64, Decode::Double),
        // MySQL drops a CHAR's trailing spaces when it is read (and in row
        // events): its values are unpadded text, so another engine gets a
        // varchar that holds them as they read, not a blank-padded char.
        "char" => (text(c.max_len, false), text_decode()),
        "varchar" => (text(c.max_len, false), text_decode()),
        "tinytext" | "text" | "mediumtext" | "longtext" if c.json => {
            (ColumnType::Json, Decode::Json)
        }
        "tinytext" | "text" | "mediumtext" | "longtext" => (text(None, false), text_decode()),
        "json" => (ColumnType::Json, Decode::Json),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            (ColumnType::Bytes, Decode::Bytes)
        }
        "date" => (ColumnType::Date, Decode::Date),
        "time" => (ColumnType::Time, Decode::Time),
        "datetime" => (ColumnType::Timestamp, Decode::DateTime),
        "timestamp" => (ColumnType::TimestampTz, Decode::Timestamp),
        "year" => (ColumnType::Int16, Decode::Year),
        "bit" => (ColumnType::Int64, Decode::Bit),
        "uuid" => (ColumnType::Uuid, Decode::Uuid),
        "enum" => (text(None, false), Decode::Enum(labels(&c.column_type))),
        "set" => (text(None, false), Decode::Set(labels(&c.column_type))),
        "inet4" | "inet6" => (
            ColumnType::Other {
                type_name: c.data_type.clone(),
            },
            Decode::Text,
        ),
        other => return Err(format!("type {other} ({})", c.column_type)),
    })
}

fn unsigned_or(unsigned: bool, bits: u32) -> Decode {
    if unsigned {
        Decode::Unsigned { bits }
    } else {
        Decode::Signed
    }
}

/// The labels of `enum('a','b''c')` or `set(...)`, in declaration order.
pub(crate) fn labels(column_type: &str) -> Vec<String> {
    let Some(inner) = column_type
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map(|(inner, _)| inner)
    else {
        return Vec::new();
    };
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut label = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    label.push('\'');
                } else {
                    break;
                }
            } else if c == '\\' {
                // information_schema escapes a backslash as two
                if let Some(next) = chars.next() {
                    label.push(next);
                }
            } else {
                label.push(c);
            }
        }
        labels.push(label);
    }
    labels
}

/// One value as ferry carries it. `Err` says why the value cannot be read
/// (the caller adds table, key and column).
pub(crate) fn decode(value: MyValue, how: &Decode, origin: Origin) -> Result<Value, String> {
    use MyValue as M;
    if let M::NULL = value {
        return Ok(Value::Null);
    }
    Ok(match (how, value) {
        (Decode::Int24, M::Int(i)) if i >= 1 << 23 => Value::Int(i - (1 << 24)),
        (Decode::Signed | Decode::Year | Decode::Int24, M::Int(i)) => Value::Int(i),
        (Decode::Signed | Decode::Int24 | Decode::Year, M::UInt(u)) => Value::Int(u as i64),
        (Decode::Unsigned { bits }, M::Int(i)) if i < 0 => Value::Int(i + (1i64 << bits)),
        (Decode::Unsigned { .. }, M::Int(i)) => Value::Int(i),
        (Decode::Unsigned { .. }, M::UInt(u)) => Value::Int(u as i64),
        (Decode::BigUnsigned, M::Int(i)) => Value::Decimal((i as u64).to_string()),
        (Decode::BigUnsigned, M::UInt(u)) => Value::Decimal(u.to_string()),
        (Decode::Float, M::Float(f)) => Value::Float(f64::from(f)),
        (Decode::Float, M::Double(f)) => Value::Float(f64::from(f as f32)),
        (Decode::Double, M::Double(f)) => Value::Float(f),
        (Decode::Double, M::Float(f)) => Value::Float(f64::from(f)),
        (Decode::Date, M::Date(y, m, d, ..)) => match zero_date(y, m, d) {
            true => Value::Null,
            false => Value::Date(time::days_from_civil(y.into(), m.into(), d.into()) as i32),
        },
        (Decode::DateTime | Decode::Timestamp, M::Date(y, m, d, h, mi, s, us)) => {
            if zero_date(y, m, d) {
                return Ok(Value::Null);
            }
            let days = time::days_from_civil(y.into(), m.into(), d.into());
            let micros = ((days * 24 + i64::from(h)) * 60 + i64::from(mi)) * 60 + i64::from(s);
            let micros = micros * 1_000_000 + i64::from(us);
            match how {
                Decode::Timestamp => Value::TimestampTz(micros),
                _ => Value::Timestamp(micros),
            }
        }
        (Decode::Time, M::Time(negative, days, h, m, s, us)) => {
            let micros = (((i64::from(days) * 24 + i64::from(h)) * 60 + i64::from(m)) * 60
                + i64::from(s))
                * 1_000_000
                + i64::from(us);
            Value::Time(if negative { -micros } else { micros })
        }
        (Decode::Enum(labels), M::Int(i)) => match i {
            0 => Value::Text(String::new()),
            i => Value::Text(
                labels
                    .get(i as usize - 1)
                    .cloned()
                    .ok_or_else(|| format!("ENUM index {i} is not one of its labels"))?,
            ),
        },
        (Decode::Set(labels), M::Bytes(mask)) if origin == Origin::Binlog => {
            let bits = mask
                .iter()
                .enumerate()
                .fold(0u64, |acc, (i, b)| acc | (u64::from(*b) << (8 * i)));
            let chosen: Vec<&str> = labels
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, l)| l.as_str())
                .collect();
            Value::Text(chosen.join(","))
        }
        (Decode::Bit, M::Bytes(bytes)) => {
            Value::Int(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) as i64)
        }
        (Decode::Bit, M::Int(i)) => Value::Int(i),
        (Decode::Bit, M::UInt(u)) => Value::Int(u as i64),
        (Decode::Bytes, M::Bytes(bytes)) => Value::Bytes(bytes),
        (Decode::Latin1, M::Bytes(bytes)) if origin == Origin::Binlog => {
            Value::Text(latin1_to_string(&bytes))
        }
        (how, M::Bytes(bytes)) => {
            let text = String::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_owned())?;
            from_text(text, how, origin)?
        }
        (how, other) => return Err(format!("{other:?} cannot be read as {how:?}")),
    })
}

/// A value a server sent as text.
fn from_text(text: String, how: &Decode, origin: Origin) -> Result<Value, String> {
    let bad = || format!("{text:?} is not a valid {how:?} value");
    Ok(match how {
        Decode::Signed | Decode::Int24 | Decode::Year | Decode::Unsigned { .. } => {
            Value::Int(text.trim().parse().map_err(|_| bad())?)
        }
        Decode::BigUnsigned | Decode::Decimal => Value::Decimal(text),
        Decode::Float | Decode::Double => Value::Float(text.trim().parse().map_err(|_| bad())?),
        Decode::Text | Decode::Latin1 | Decode::Enum(_) | Decode::Set(_) => Value::Text(text),
        Decode::Json => Value::Json(text),
        Decode::Uuid => Value::Uuid(time::parse_uuid(&text).ok_or_else(bad)?),
        Decode::Date if text.starts_with("0000-00-00") => Value::Null,
        Decode::Date => Value::Date(time::parse_date(&text).ok_or_else(bad)?),
        Decode::DateTime if text.starts_with("0000-00-00") => Value::Null,
        Decode::DateTime => Value::Timestamp(time::parse_timestamp(&text).ok_or_else(bad)?),
        // A row event's TIMESTAMP: seconds since the epoch, with a fraction.
        Decode::Timestamp if origin == Origin::Binlog => {
            let (secs, frac) = text.split_once('.').unwrap_or((&text, ""));
            let secs: i64 = secs.parse().map_err(|_| bad())?;
            if secs == 0 && frac.bytes().all(|b| b == b'0') {
                return Ok(Value::Null);
            }
            let micros: i64 = format!("{frac:0<6}")[..6].parse().map_err(|_| bad())?;
            Value::TimestampTz(secs * 1_000_000 + micros)
        }
        Decode::Timestamp if text.starts_with("0000-00-00") => Value::Null,
        Decode::Timestamp => Value::TimestampTz(time::parse_timestamp(&text).ok_or_else(bad)?),
        Decode::Time => Value::Time(parse_duration(&text).ok_or_else(bad)?),
        Decode::Bytes | Decode::Bit => Value::Bytes(text.into_bytes()),
    })
}

/// The value rows that existed before a column was added hold in it: its
/// constant default as `information_schema.columns.column_default` spells
/// it (`'x'`, `5`, `NULL`), or for a NOT NULL column without one the
/// implicit default. `Err` for a default computed per row
/// (`current_timestamp()`, `uuid()`), which no single value describes.
pub(crate) fn added_column_value(
    default: Option<&str>,
    nullable: bool,
    how: &Decode,
) -> Result<Value, String> {
    let literal = match default {
        None | Some("NULL") if nullable => return Ok(Value::Null),
        None | Some("NULL") => return implicit_default(how),
        Some(d) => d,
    };
    let text = if let Some(quoted) = literal
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
    {
        quoted.replace("''", "'")
    } else if literal.parse::<f64>().is_ok() {
        literal.to_owned()
    } else {
        return Err(format!("its default {literal} is computed for each row"));
    };
    match how {
        Decode::Bytes => Ok(Value::Bytes(text.into_bytes())),
        Decode::Bit => Err(format!("its default {literal} is a bit value")),
        how => from_text(text, how, Origin::Query),
    }
}

/// What MySQL puts in a NOT NULL column added without a default.
fn implicit_default(how: &Decode) -> Result<Value, String> {
    Ok(match how {
        Decode::Signed | Decode::Int24 | Decode::Unsigned { .. } | Decode::Year | Decode::Bit => {
            Value::Int(0)
        }
        Decode::BigUnsigned | Decode::Decimal => Value::Decimal("0".into()),
        Decode::Float | Decode::Double => Value::Float(0.0),
        Decode::Text | Decode::Latin1 | Decode::Set(_) => Value::Text(String::new()),
        Decode::Enum(labels) => Value::Text(labels.first().cloned().unwrap_or_default()),
        Decode::Bytes => Value::Bytes(Vec::new()),
        Decode::Time => Value::Time(0),
        other => {
            return Err(format!(
                "a NOT NULL {other:?} column added without a default"
            ));
        }
    })
}

fn zero_date(y: u16, m: u8, d: u8) -> bool {
    y == 0 && m == 0 && d == 0
}

/// `-838:59:59.000000` to microseconds.
fn parse_duration(text: &str) -> Option<i64> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (hms, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let mut parts = hms.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: i64 = parts.next()?.parse().ok()?;
    let us: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").get(..6)?.parse().ok()?
    };
    let micros = ((h * 60 + m) * 60 + s) * 1_000_000 + us;
    Some(if negative { -micros } else { micros })
}

/// MySQL's latin1 is Windows-1252: 0x80–0x9F hold the typographic
/// characters of that code page.
fn latin1_to_string(bytes: &[u8]) -> String {
    const CP1252: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž',
        '\u{8F}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}',
        'ž', 'Ÿ',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => CP1252[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(data_type: &str, column_type: &str) -> ColumnInfo {
        ColumnInfo {
            data_type: data_type.into(),
            column_type: column_type.into(),
            ..ColumnInfo::default()
        }
    }

    #[test]
    fn unsigned_integers_keep_their_range() {
        let (ty, how) = map_column(&info("int", "int(10) unsigned")).unwrap();
        assert_eq!(ty, ColumnType::Int64);
        assert_eq!(
            decode(MyValue::Int(-1), &how, Origin::Binlog).unwrap(),
            Value::Int(4_294_967_295)
        );
        let (_, how) = map_column(&info("bigint", "bigint(20) unsigned")).unwrap();
        assert_eq!(
            decode(MyValue::Int(-1), &how, Origin::Binlog).unwrap(),
            Value::Decimal("18446744073709551615".into())
        );
        let (_, how) = map_column(&info("tinyint", "tinyint(3) unsigned")).unwrap();
        assert_eq!(
            decode(MyValue::Int(-1), &how, Origin::Binlog).unwrap(),
            Value::Int(255)
        );
    }

    #[test]
    fn enum_and_set_labels_are_read_from_both_spellings() {
        assert_eq!(
            labels("enum('a','b''c','d\\\\e')"),
            vec!["a", "b'c", "d\\e"]
        );
        let how = Decode::Set(labels("set('x','y','z')"));
        assert_eq!(
            decode(MyValue::Bytes(vec![0b101]), &how, Origin::Binlog).unwrap(),
            Value::Text("x,z".into())
        );
        assert_eq!(
            decode(MyValue::Bytes(b"x,z".to_vec()), &how, Origin::Query).unwrap(),
            Value::Text("x,z".into())
        );
        let how = Decode::Enum(labels("enum('s','m','l')"));
        assert_eq!(
            decode(MyValue::Int(3), &how, Origin::Binlog).unwrap(),
            Value::Text("l".into())
        );
    }

    #[test]
    fn times_keep_sign_and_hours_beyond_a_day() {
        assert_eq!(
            decode(
                MyValue::Time(true, 34, 22, 59, 59, 5),
                &Decode::Time,
                Origin::Query
            )
            .unwrap(),
            Value::Time(-((838 * 3600 + 59 * 60 + 59) * 1_000_000 + 5))
        );
        assert_eq!(parse_duration("-838:59:59.5"), Some(-(3_020_399_500_000)));
        assert_eq!(
            decode(
                MyValue::Bytes(b"1700000000.250000".to_vec()),
                &Decode::Timestamp,
                Origin::Binlog
            )
            .unwrap(),
            Value::TimestampTz(1_700_000_000_250_000)
        );
        assert_eq!(
            decode(
                MyValue::Date(0, 0, 0, 0, 0, 0, 0),
                &Decode::DateTime,
                Origin::Query
            )
            .unwrap(),
            Value::Null
        );
    }

    #[test]
    fn latin1_is_windows_1252() {
        assert_eq!(latin1_to_string(&[0x80, b'a', 0xE9]), "€aé");
    }
}
