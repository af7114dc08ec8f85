//! SQLite declared types ↔ ferry's [`ColumnType`], and SQLite storage values
//! ↔ ferry's [`Value`].
//!
//! SQLite stores five storage classes (NULL, INTEGER, REAL, TEXT, BLOB) and
//! lets any column hold any of them; the declared type only sets an
//! affinity. Ferry narrows a column to a logical type from its declared
//! type (the same keywords SQLite's affinity rules look at) and then checks
//! every value against it, so a value that does not fit is reported rather
//! than reinterpreted.

use ferry_core::time::{format_uuid, parse_date, parse_time, parse_timestamp, parse_uuid};
use ferry_core::{ColumnType, Value};
use rusqlite::ToSql;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::array;
use crate::temporal::{format_interval, infinity_value, parse_interval, temporal_text};

/// Declared types ferry understands, for messages.
pub(crate) const SUPPORTED_TYPES: &str = "INTEGER (INT, BIGINT, ...), BOOLEAN, REAL (FLOAT, DOUBLE), \
     DECIMAL(p,s)/NUMERIC, TEXT (VARCHAR(n), CHAR, CLOB), BLOB, DATE, TIME, DATETIME/TIMESTAMP, \
     TIMESTAMPTZ, INTERVAL, UUID, JSON, or no type at all";

const INT_WORDS: &[&str] = &[
    "INT",
    "INTEGER",
    "TINYINT",
    "SMALLINT",
    "MEDIUMINT",
    "BIGINT",
    "INT2",
    "INT4",
    "INT8",
];

/// Maps a declared column type to a logical type, or `None` when ferry does
/// not know what the type means (`GEOMETRY`, `POINT`).
///
/// Whole words are matched rather than substrings (SQLite's own rule is
/// "contains INT"), so `POINT` is not mistaken for an integer.
pub(crate) fn column_type(declared: &str) -> Option<ColumnType> {
    let upper = declared.trim().to_ascii_uppercase();
    let (base, params) = match upper.split_once('(') {
        Some((b, p)) => (b.trim(), parse_params(p)),
        None => (upper.as_str(), Vec::new()),
    };
    let words: Vec<&str> = base.split_whitespace().collect();
    let has = |w: &str| words.contains(&w);
    let text = |max_len: Option<u32>| ColumnType::Text {
        max_len,
        fixed: false,
    };
    Some(match base {
        "" => ColumnType::Dynamic,
        "BOOLEAN" | "BOOL" => ColumnType::Bool,
        "DECIMAL" | "NUMERIC" | "DECIMAL_TEXT" | "NUMBER" => ColumnType::Decimal {
            precision: params.first().and_then(|&p| u32::try_from(p).ok()),
            scale: params.get(1).and_then(|&s| i32::try_from(s).ok()),
        },
        "DATE" => ColumnType::Date,
        "DATETIME" | "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => ColumnType::Timestamp,
        "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => ColumnType::TimestampTz,
        "TIME" | "TIME WITHOUT TIME ZONE" => ColumnType::Time,
        "INTERVAL" => ColumnType::Interval,
        "JSON" | "JSONB" | "JSON_TEXT" | "ARRAY_JSON" => ColumnType::Json,
        "UUID" => ColumnType::Uuid,
        "BLOB" | "BYTEA" | "BINARY" | "VARBINARY" => ColumnType::Bytes,
        "TEXT" | "CLOB" => text(None),
        _ if words.iter().any(|w| INT_WORDS.contains(w)) => ColumnType::Int64,
        _ if words
            .iter()
            .any(|w| w.contains("CHAR") || w.contains("TEXT") || w.contains("CLOB")) =>
        {
            text(params.first().and_then(|&n| u32::try_from(n).ok()))
        }
        _ if words.iter().any(|w| w.contains("BLOB")) => ColumnType::Bytes,
        _ if has("REAL")
            || words
                .iter()
                .any(|w| w.starts_with("FLOA") || w.starts_with("DOUB")) =>
        {
            ColumnType::Float64
        }
        _ => return None,
    })
}

fn parse_params(p: &str) -> Vec<i64> {
    p.trim_end()
        .trim_end_matches(')')
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The declared type a target column gets. Affinities matter: decimals and
/// JSON go to TEXT-affinity types (`DECIMAL_TEXT`, `JSON_TEXT`) because
/// NUMERIC affinity would round them through a double; integers use exactly `INTEGER` so a
/// single-column integer key becomes the rowid.
pub(crate) fn declared_type(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Bool => "BOOLEAN".into(),
        ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => "INTEGER".into(),
        ColumnType::Float32 | ColumnType::Float64 => "REAL".into(),
        ColumnType::Decimal {
            precision: Some(p),
            scale,
        } => format!("DECIMAL_TEXT({p},{})", scale.unwrap_or(0)),
        ColumnType::Decimal { .. } => "DECIMAL_TEXT".into(),
        ColumnType::Text {
            max_len: Some(n), ..
        } => format!("VARCHAR({n})"),
        // A type without a SQLite match (PostgreSQL `xml`, ranges, ...) is
        // stored as its source's text form.
        ColumnType::Text { .. } | ColumnType::Other { .. } => "TEXT".into(),
        ColumnType::Bytes => "BLOB".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time => "TIME".into(),
        ColumnType::Timestamp => "DATETIME".into(),
        ColumnType::TimestampTz => "TIMESTAMPTZ".into(),
        ColumnType::Interval => "INTERVAL".into(),
        ColumnType::Uuid => "UUID".into(),
        // TEXT affinity: under `JSON` (NUMERIC affinity) a document that is
        // a bare number would be stored as a number and lose digits.
        ColumnType::Json => "JSON_TEXT".into(),
        ColumnType::Array(_) => "ARRAY_JSON".into(),
        ColumnType::Dynamic => String::new(),
    }
}

/// The declared type a target column gets: a `Dynamic` column keeps the
/// type its source declared, verbatim (`VARCHAR(20)`, `DECIMAL(10,2)`,
/// none at all), so the target applies the same affinity to the same
/// values; SQLite → SQLite reads every column that way. Other columns get
/// [`declared_type`].
pub(crate) fn target_declared_type(col: &ferry_core::Column) -> String {
    match col.ty {
        ColumnType::Dynamic => col.source_type.clone(),
        ref ty => declared_type(ty),
    }
}

/// Whether SQLite gives a column declared `declared` TEXT affinity (its
/// rules: no `INT`, and `CHAR`, `CLOB` or `TEXT`), so text stays text.
pub(crate) fn has_text_affinity(declared: &str) -> bool {
    let u = declared.to_ascii_uppercase();
    !u.contains("INT") && (u.contains("CHAR") || u.contains("CLOB") || u.contains("TEXT"))
}

/// Converts a stored SQLite value to a [`Value`] of the column's type.
/// `Err` carries why it does not fit; the caller adds table, column and key.
pub(crate) fn to_value(ty: &ColumnType, v: ValueRef<'_>) -> Result<Value, String> {
    use ValueRef as R;
    if let R::Null = v {
        return Ok(Value::Null);
    }
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "text is not valid UTF-8".to_string())
    };
    let parsed = |bytes: &[u8], what: &str, f: &dyn Fn(&str) -> Option<Value>| {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(f)
            .ok_or_else(|| format!("is not a valid {what}"))
    };
    // `infinity`/`-infinity` in a date or timestamp column (see
    // `temporal::infinity_text`).
    if let R::Text(t) = v
        && let Some(inf) = std::str::from_utf8(t)
            .ok()
            .and_then(|s| infinity_value(ty, s))
    {
        return Ok(inf);
    }
    let out = match (ty, v) {
        (ColumnType::Dynamic, R::Integer(i)) => Value::Int(i),
        (ColumnType::Dynamic, R::Real(f)) => Value::Float(f),
        (ColumnType::Dynamic, R::Text(t)) => Value::Text(text(t)?),
        (ColumnType::Dynamic, R::Blob(b)) => Value::Bytes(b.to_vec()),
        (ColumnType::Bool, R::Integer(i @ (0 | 1))) => Value::Bool(i == 1),
        (ColumnType::Bool, R::Real(f)) if f == 0.0 || f == 1.0 => Value::Bool(f == 1.0),
        (ColumnType::Bool, R::Text(t)) => match t.to_ascii_lowercase().as_slice() {
            b"true" | b"t" => Value::Bool(true),
            b"false" | b"f" => Value::Bool(false),
            _ => return Err("is not a boolean (0, 1, 'true' or 'false')".into()),
        },
        (ColumnType::Int16, R::Integer(i)) if i16::try_from(i).is_ok() => Value::Int(i),
        (ColumnType::Int32, R::Integer(i)) if i32::try_from(i).is_ok() => Value::Int(i),
        (ColumnType::Int64, R::Integer(i)) => Value::Int(i),
        (ColumnType::Float32 | ColumnType::Float64, R::Real(f)) => Value::Float(f),
        (ColumnType::Float32 | ColumnType::Float64, R::Integer(i)) => Value::Float(i as f64),
        // NaN cannot be stored as a REAL (SQLite turns it into NULL), so
        // the sink writes it as text.
        (ColumnType::Float32 | ColumnType::Float64, R::Text(t)) => {
            parsed(t, "floating-point number", &|s| {
                matches!(s, "NaN" | "Inf" | "-Inf" | "Infinity" | "-Infinity")
                    .then(|| s.replace("Infinity", "Inf").parse().ok().map(Value::Float))
                    .flatten()
            })?
        }
        (ColumnType::Decimal { .. }, R::Integer(i)) => Value::Decimal(i.to_string()),
        (ColumnType::Decimal { .. }, R::Real(f)) if f.is_finite() => Value::Decimal(f.to_string()),
        (ColumnType::Decimal { .. }, R::Text(t)) => parsed(t, "decimal number", &|s| {
            is_decimal(s).then(|| Value::Decimal(s.to_owned()))
        })?,
        (ColumnType::Text { .. } | ColumnType::Other { .. }, R::Text(t)) => Value::Text(text(t)?),
        (ColumnType::Text { .. }, R::Integer(i)) => Value::Text(i.to_string()),
        (ColumnType::Json, R::Text(t)) => Value::Json(text(t)?),
        // JSON's NUMERIC affinity turns a bare JSON number into a number.
        (ColumnType::Json, R::Integer(i)) => Value::Json(i.to_string()),
        (ColumnType::Json, R::Real(f)) if f.is_finite() => Value::Json(format!("{f:?}")),
        (ColumnType::Bytes, R::Blob(b)) => Value::Bytes(b.to_vec()),
        (ColumnType::Bytes, R::Text(t)) => Value::Bytes(t.to_vec()),
        (ColumnType::Date, R::Text(t)) => parsed(t, "date (YYYY-MM-DD)", &|s| {
            date_shaped(s)
                .then(|| parse_date(s).map(Value::Date))
                .flatten()
        })?,
        (ColumnType::Time, R::Text(t)) => parsed(t, "time (HH:MM:SS[.ffffff])", &|s| {
            parse_time(s).map(Value::Time)
        })?,
        (ColumnType::Timestamp, R::Text(t)) => {
            parsed(t, "timestamp (YYYY-MM-DD HH:MM:SS[.ffffff])", &|s| {
                parse_timestamp(s).map(Value::Timestamp)
            })?
        }
        (ColumnType::TimestampTz, R::Text(t)) => parsed(
            t,
            "timestamp (YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM])",
            &|s| parse_timestamp(s).map(Value::TimestampTz),
        )?,
        (ColumnType::Interval, R::Text(t)) => {
            parsed(t, "interval (P<months>M<days>DT<seconds>S)", &|s| {
                parse_interval(s)
            })?
        }
        (ColumnType::Uuid, R::Text(t)) => parsed(t, "UUID", &|s| parse_uuid(s).map(Value::Uuid))?,
        (ColumnType::Uuid, R::Blob(b)) if b.len() == 16 => {
            Value::Uuid(b.try_into().expect("length checked"))
        }
        (ColumnType::Array(elem), R::Text(t)) => parsed(t, "JSON array", &|s| {
            array::decode(s, elem)
                .map(Value::Array)
                .or_else(|| array::is_bounded_literal(s).then(|| Value::Text(s.to_owned())))
        })?,
        (ty, v) => {
            return Err(format!(
                "a {} value does not fit a {ty:?} column",
                storage_class(v)
            ));
        }
    };
    Ok(out)
}

fn storage_class(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// Renders a stored value for error messages.
pub(crate) fn display_raw(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}'{}", if b.len() > 32 { "..." } else { "" })
        }
    }
}

/// `[-+]digits[.digits][e[-+]digits]`, or `NaN`/`Infinity` (PostgreSQL numeric).
/// `YYYY-MM-DD`, the year possibly negative or longer than four digits
/// (how ferry writes dates outside years 0 to 9999): nothing after the day.
fn date_shaped(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s).as_bytes();
    let n = body.len();
    n >= 10
        && body[n - 6] == b'-'
        && body[n - 3] == b'-'
        && body[..n - 6].iter().all(u8::is_ascii_digit)
}

fn is_decimal(s: &str) -> bool {
    if matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    !(int.is_empty() && frac.is_empty())
        && digits(int)
        && digits(frac)
        && exp.is_none_or(|e| !e.is_empty() && digits(e))
}

/// A [`Value`] bound as a statement parameter. Text and blobs are borrowed,
/// not copied; times become the text forms this crate reads back.
pub(crate) struct Param<'a>(pub(crate) &'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as Owned;
        fn borrowed(v: ValueRef<'_>) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(ToSqlOutput::Borrowed(v))
        }
        let owned = |v: Owned| Ok(ToSqlOutput::Owned(v));
        match self.0 {
            Value::Null => borrowed(ValueRef::Null),
            Value::Bool(b) => borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Int(i) => borrowed(ValueRef::Integer(*i)),
            Value::Float(f) if f.is_nan() => borrowed(ValueRef::Text(b"NaN")),
            Value::Float(f) => borrowed(ValueRef::Real(*f)),
            Value::Decimal(s) | Value::Text(s) | Value::Json(s) => {
                borrowed(ValueRef::Text(s.as_bytes()))
            }
            Value::Bytes(b) => borrowed(ValueRef::Blob(b)),
            Value::Date(_) | Value::Time(_) | Value::Timestamp(_) | Value::TimestampTz(_) => {
                let mut text = String::with_capacity(32);
                temporal_text(self.0, &mut text);
                owned(Owned::Text(text))
            }
            Value::Interval {
                months,
                days,
                micros,
            } => owned(Owned::Text(format_interval(*months, *days, *micros))),
            Value::Uuid(u) => owned(Owned::Text(format_uuid(u))),
            Value::Array(items) => owned(Owned::Text(array::encode(items))),
            Value::Unchanged => Err(rusqlite::Error::ToSqlConversionFailure(
                "an unchanged-column marker cannot be written as a value".into(),
            )),
        }
    }
}

/// `v` as a SQL literal, stored as [`Param`] would bind it (for a column
/// default).
pub(crate) fn sql_literal(v: &Value) -> rusqlite::Result<String> {
    use rusqlite::types::ToSqlOutput;
    let param = Param(v);
    let out = param.to_sql()?;
    let r = match &out {
        ToSqlOutput::Borrowed(r) => *r,
        ToSqlOutput::Owned(o) => ValueRef::from(o),
        _ => ValueRef::Null,
    };
    Ok(match r {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:e}"),
        ValueRef::Text(t) => crate::connection::literal(&String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!(
            "X'{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_before_year_zero_and_after_9999_read_back() {
        let date = |s: &str| to_value(&ColumnType::Date, ValueRef::Text(s.as_bytes()));
        let bc_44 = ferry_core::time::days_from_civil(-43, 3, 15) as i32;
        assert_eq!(date("-0043-03-15"), Ok(Value::Date(bc_44)));
        let far = ferry_core::time::days_from_civil(10_000, 1, 1) as i32;
        assert_eq!(date("10000-01-01"), Ok(Value::Date(far)));
        assert!(date("2024-01-01 12:00").is_err());
        assert!(date("-2024-1-01").is_err());
    }

    #[test]
    fn literals_read_back_as_the_values_bound() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for v in [
            Value::Int(-7),
            Value::Float(0.1),
            Value::Text("it's".into()),
            Value::Bytes(vec![0, 255]),
            Value::Null,
        ] {
            let lit = sql_literal(&v).unwrap();
            let (a, b): (rusqlite::types::Value, rusqlite::types::Value) = c
                .query_row(&format!("SELECT {lit}, ?1"), [Param(&v)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            assert_eq!(a, b, "{lit}");
        }
    }

    #[test]
    fn declared_types_map_like_affinity() {
        let t = |s| column_type(s);
        assert_eq!(t(""), Some(ColumnType::Dynamic));
        assert_eq!(t("INTEGER"), Some(ColumnType::Int64));
        assert_eq!(t("unsigned big int"), Some(ColumnType::Int64));
        assert_eq!(t("BOOLEAN"), Some(ColumnType::Bool));
        assert_eq!(
            t("varchar(20)"),
            Some(ColumnType::Text {
                max_len: Some(20),
                fixed: false
            })
        );
        assert_eq!(
            t("NVARCHAR"),
            Some(ColumnType::Text {
                max_len: None,
                fixed: false
            })
        );
        assert_eq!(t("double precision"), Some(ColumnType::Float64));
        assert_eq!(t("FLOAT"), Some(ColumnType::Float64));
        assert_eq!(
            t("DECIMAL_TEXT(12, 2)"),
            Some(ColumnType::Decimal {
                precision: Some(12),
                scale: Some(2)
            })
        );
        assert_eq!(t("datetime"), Some(ColumnType::Timestamp));
        assert_eq!(t("TIMESTAMPTZ"), Some(ColumnType::TimestampTz));
        assert_eq!(t("TIME"), Some(ColumnType::Time));
        assert_eq!(t("json"), Some(ColumnType::Json));
        assert_eq!(t("uuid"), Some(ColumnType::Uuid));
        assert_eq!(t("POINT"), None);
        assert!(has_text_affinity("JSON_TEXT") && has_text_affinity("varchar(3)"));
        assert!(!has_text_affinity("JSON") && !has_text_affinity("TINYTEXT_INT"));
        assert_eq!(t("GEOMETRY"), None);
    }

    #[test]
    fn target_types_read_back_as_themselves() {
        for ty in [
            ColumnType::Bool,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Decimal {
                precision: Some(10),
                scale: Some(2),
            },
            ColumnType::Decimal {
                precision: Some(7),
                scale: Some(-3),
            },
            ColumnType::Text {
                max_len: Some(5),
                fixed: false,
            },
            ColumnType::Bytes,
            ColumnType::Date,
            ColumnType::Time,
            ColumnType::Timestamp,
            ColumnType::TimestampTz,
            ColumnType::Interval,
            ColumnType::Uuid,
            ColumnType::Json,
            ColumnType::Dynamic,
        ] {
            assert_eq!(column_type(&declared_type(&ty)), Some(ty));
        }
    }

    #[test]
    fn values_round_trip_through_params() {
        let cases = [
            (ColumnType::Bool, Value::Bool(true)),
            (
                ColumnType::Decimal {
                    precision: None,
                    scale: None,
                },
                Value::Decimal("-12.50".into()),
            ),
            (ColumnType::Float64, Value::Float(f64::NAN)),
            (ColumnType::Float64, Value::Float(f64::NEG_INFINITY)),
            (ColumnType::Date, Value::Date(-3)),
            (ColumnType::Time, Value::Time(3_600_000_001)),
            (
                ColumnType::Timestamp,
                Value::Timestamp(1_700_000_000_000_001),
            ),
            (ColumnType::TimestampTz, Value::TimestampTz(-1)),
            (ColumnType::TimestampTz, Value::TimestampTz(i64::MAX)),
            (ColumnType::Timestamp, Value::Timestamp(i64::MIN)),
            (ColumnType::Date, Value::Date(i32::MIN)),
            (ColumnType::Json, Value::Json("12345678901234567890".into())),
            (
                ColumnType::Interval,
                Value::Interval {
                    months: -14,
                    days: 3,
                    micros: -4_000_007,
                },
            ),
            (ColumnType::Uuid, Value::Uuid([9; 16])),
            (
                ColumnType::Array(Box::new(ColumnType::Date)),
                Value::Array(vec![Value::Date(1), Value::Null]),
            ),
        ];
        for (ty, v) in cases {
            let p = Param(&v);
            let out = p.to_sql().unwrap();
            let stored = match &out {
                ToSqlOutput::Borrowed(r) => *r,
                ToSqlOutput::Owned(o) => ValueRef::from(o),
                _ => unreachable!(),
            };
            let back = to_value(&ty, stored).unwrap();
            if let Value::Float(f) = v
                && f.is_nan()
            {
                assert!(matches!(back, Value::Float(b) if b.is_nan()));
            } else {
                assert_eq!(back, v, "{ty:?}");
            }
        }
    }

    /// Through a real column of the declared type the sink gives it, so
    /// the column's affinity has its say: a JSON document that is a bare
    /// number and infinite timestamps come back as they went in.
    #[test]
    fn values_survive_the_affinity_of_their_target_column() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        let cases = [
            (ColumnType::Json, Value::Json("12345678901234567890".into())),
            (ColumnType::Json, Value::Json("1.0".into())),
            (ColumnType::Json, Value::Json("-0".into())),
            (ColumnType::TimestampTz, Value::TimestampTz(i64::MAX)),
            (ColumnType::TimestampTz, Value::TimestampTz(i64::MIN)),
            (ColumnType::Timestamp, Value::Timestamp(i64::MAX)),
            (ColumnType::Date, Value::Date(i32::MIN)),
            (ColumnType::Date, Value::Date(i32::MAX)),
        ];
        for (i, (ty, v)) in cases.into_iter().enumerate() {
            let table = format!("t{i}");
            c.execute_batch(&format!("CREATE TABLE {table}(v {})", declared_type(&ty)))
                .unwrap();
            c.execute(&format!("INSERT INTO {table} VALUES (?1)"), [Param(&v)])
                .unwrap();
            let back = c
                .query_row(&format!("SELECT v FROM {table}"), [], |r| {
                    Ok(to_value(&ty, r.get_ref(0)?))
                })
                .unwrap();
            assert_eq!(back, Ok(v), "{ty:?}");
        }
    }

    #[test]
    fn values_that_do_not_fit_are_rejected() {
        assert!(to_value(&ColumnType::Int64, ValueRef::Real(1.5)).is_err());
        assert!(to_value(&ColumnType::Bool, ValueRef::Integer(2)).is_err());
        assert!(to_value(&ColumnType::Date, ValueRef::Text(b"yesterday")).is_err());
        let dec = ColumnType::Decimal {
            precision: None,
            scale: None,
        };
        assert!(to_value(&dec, ValueRef::Text(b"1.2.3")).is_err());
        assert_eq!(
            to_value(&dec, ValueRef::Text(b"1e-5")).unwrap(),
            Value::Decimal("1e-5".into())
        );
        assert_eq!(
            to_value(&dec, ValueRef::Integer(7)).unwrap(),
            Value::Decimal("7".into())
        );
    }
}
