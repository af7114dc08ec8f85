//! ferry [`Value`]s as MySQL/MariaDB SQL literals.
//!
//! The sink writes every value as a literal in the statement text (the
//! text protocol): one multi-row `INSERT` carries thousands of rows in one
//! round trip without the 65,535-placeholder limit of prepared statements,
//! and `ferry verify --repair print` writes the same literals.
//!
//! Every literal is checked against what the target column can hold
//! *before* it is sent: MariaDB rounds a decimal with too many fraction
//! digits with only a note, even in strict mode, and has no NaN or
//! infinity. A value that does not fit is a data error naming the column;
//! the caller adds table and key.

use std::fmt::Write;

use ferry_core::Value;
use ferry_core::time::{civil_from_days, format_uuid, push_date};

/// What a target column can hold, as far as literals are checked here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// No check beyond the value's own validity.
    Any,
    /// `DECIMAL(precision, scale)`.
    Decimal { precision: u32, scale: u32 },
}

/// Largest TIME MySQL/MariaDB hold: 838:59:59.999999, either sign.
const MAX_TIME_MICROS: i64 = (838 * 3600 + 59 * 60 + 59) * 1_000_000 + 999_999;

/// Appends the literal of `v` to `out`; `Err` says why the column cannot
/// hold it (nothing useful is left in `out` then).
pub(crate) fn push_literal(out: &mut String, v: &Value, fit: Fit) -> Result<(), String> {
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Bool(b) => out.push(if *b { '1' } else { '0' }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => push_float(out, *f)?,
        Value::Decimal(d) => push_decimal(out, d, fit)?,
        Value::Text(s) | Value::Json(s) => push_quoted(out, s),
        Value::Bytes(b) => push_hex(out, b),
        Value::Date(d) => {
            check_year(i64::from(*d) * 86_400_000_000)?;
            out.push('\'');
            push_date(out, *d);
            out.push('\'');
        }
        Value::Time(t) => {
            if t.abs() > MAX_TIME_MICROS {
                return Err(format!(
                    "the time {} is outside the range of a TIME column (±838:59:59.999999)",
                    ferry_core::time::format_time(*t)
                ));
            }
            push_time_literal(out, *t);
        }
        Value::Timestamp(t) | Value::TimestampTz(t) => {
            check_year(*t)?;
            out.push('\'');
            ferry_core::time::push_timestamp(out, *t);
            out.push('\'');
        }
        Value::Interval {
            months,
            days,
            micros,
        } => push_quoted(out, &format_interval(*months, *days, *micros)),
        Value::Uuid(u) => push_quoted(out, &format_uuid(u)),
        Value::Array(items) => {
            let mut json = String::new();
            super::array::encode(&mut json, items)?;
            push_quoted(out, &json);
        }
        Value::Unchanged => {
            return Err("an unchanged value reached a statement; this is a ferry bug".into());
        }
    }
    Ok(())
}

/// `'[-]HH:MM:SS[.ffffff]'`, hours past 24 as MySQL's TIME takes them.
fn push_time_literal(out: &mut String, micros: i64) {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let (secs, frac) = (abs / 1_000_000, abs % 1_000_000);
    let _ = write!(
        out,
        "'{sign}{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let _ = write!(out, ".{frac:06}");
    }
    out.push('\'');
}

/// The literal of `v` as a new string.
pub(crate) fn literal(v: &Value, fit: Fit) -> Result<String, String> {
    let mut out = String::new();
    push_literal(&mut out, v, fit)?;
    Ok(out)
}

/// A double in scientific notation with the shortest digits that read
/// back as the same double (`1.5e0`, `1e-1`): MySQL reads a literal with
/// an exponent as a double, never through a decimal.
fn push_float(out: &mut String, f: f64) -> Result<(), String> {
    if !f.is_finite() {
        return Err(format!(
            "{f} cannot be stored: MySQL/MariaDB have no NaN or infinite floating-point values"
        ));
    }
    let _ = write!(out, "{f:e}");
    Ok(())
}

/// A decimal as an exact decimal literal, after checking that the column
/// holds it without rounding.
fn push_decimal(out: &mut String, d: &str, fit: Fit) -> Result<(), String> {
    let t = d.trim();
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !plain {
        return Err(format!(
            "{d} cannot be stored: MySQL/MariaDB decimals hold only finite numbers"
        ));
    }
    if let Fit::Decimal { precision, scale } = fit {
        let int_digits = int.trim_start_matches('0').len() as u32;
        let frac_digits = frac.trim_end_matches('0').len() as u32;
        if frac_digits > scale || int_digits > precision.saturating_sub(scale) {
            return Err(format!(
                "{d} does not fit DECIMAL({precision},{scale}) without rounding (at most {} \
                 digits before the point and {scale} after it)",
                precision.saturating_sub(scale)
            ));
        }
    }
    out.push_str(t);
    Ok(())
}

/// `'text'` with quotes doubled: every ferry session runs with
/// `NO_BACKSLASH_ESCAPES`, so a backslash is just a backslash. Text with
/// a NUL character goes as `_utf8mb4 X'..'`, which the `mariadb` client
/// takes too (a repair script).
pub(crate) fn push_quoted(out: &mut String, s: &str) {
    if s.contains('\0') {
        out.push_str("_utf8mb4 ");
        push_hex(out, s.as_bytes());
        return;
    }
    out.reserve(s.len() + 2);
    out.push('\'');
    let mut rest = s;
    while let Some(at) = rest.find('\'') {
        out.push_str(&rest[..=at]);
        out.push('\'');
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('\'');
}

/// `X'0aff'`: bytes of any value, no character set involved.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 3);
    out.push_str("X'");
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out.push('\'');
}

/// DATE and DATETIME hold years 0 to 9999.
fn check_year(micros: i64) -> Result<(), String> {
    let days = micros.div_euclid(86_400_000_000);
    let (y, _, _) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        Ok(())
    } else if micros == i64::MAX || micros == i64::MIN || days.abs() > 100_000_000 {
        Err("infinite dates and timestamps cannot be stored in MySQL/MariaDB".into())
    } else {
        Err(format!(
            "year {y} is outside the range of MySQL/MariaDB dates (0 to 9999)"
        ))
    }
}

pub(crate) use ferry_core::time::{format_interval, parse_interval};

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: Value) -> String {
        literal(&v, Fit::Any).unwrap()
    }

    #[test]
    fn literals_keep_every_value_exactly() {
        assert_eq!(lit(Value::Text("it's \\ ok".into())), "'it''s \\ ok'");
        assert_eq!(lit(Value::Bytes(vec![0, 0xff])), "X'00ff'");
        assert_eq!(lit(Value::Text("a\0".into())), "_utf8mb4 X'6100'");
        assert_eq!(lit(Value::Float(0.1)), "1e-1");
        assert_eq!(lit(Value::Float(-0.0)), "-0e0");
        assert_eq!(lit(Value::Float(f64::MAX)), "1.7976931348623157e308");
        assert_eq!(lit(Value::Date(0)), "'1970-01-01'");
        assert_eq!(lit(Value::Time(-3_600_000_001)), "'-01:00:00.000001'");
        assert_eq!(
            lit(Value::Timestamp(1_500_000)),
            "'1970-01-01 00:00:01.500000'"
        );
        assert_eq!(lit(Value::Bool(true)), "1");
        assert_eq!(
            lit(Value::Interval {
                months: 14,
                days: -3,
                micros: -1_500_000
            }),
            "'P14M-3DT-1.500000S'"
        );
    }

    #[test]
    fn values_a_column_cannot_hold_are_refused_not_rounded() {
        let fit = Fit::Decimal {
            precision: 5,
            scale: 2,
        };
        assert_eq!(
            literal(&Value::Decimal("-123.40".into()), fit).unwrap(),
            "-123.40"
        );
        assert!(literal(&Value::Decimal("1.234".into()), fit).is_err());
        assert!(literal(&Value::Decimal("1234".into()), fit).is_err());
        assert!(literal(&Value::Decimal("NaN".into()), Fit::Any).is_err());
        assert!(literal(&Value::Float(f64::NAN), Fit::Any).is_err());
        assert!(literal(&Value::Timestamp(i64::MAX), Fit::Any).is_err());
        assert!(literal(&Value::Time(839 * 3_600_000_000), Fit::Any).is_err());
        assert!(literal(&Value::Date(-800_000), Fit::Any).is_err());
    }

    #[test]
    fn intervals_read_back() {
        for (m, d, u) in [(0, 0, 0), (14, -3, -1_500_000), (-1, 2, 3_000_001)] {
            let text = format_interval(m, d, u);
            assert_eq!(
                parse_interval(&text),
                Some(Value::Interval {
                    months: m,
                    days: d,
                    micros: u
                })
            );
        }
    }
}
