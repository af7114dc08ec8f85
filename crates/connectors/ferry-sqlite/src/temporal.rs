//! Text forms of dates, times, timestamps and intervals as ferry stores
//! them in SQLite (SQLite has no such storage classes): the forms of
//! `ferry_core::time`, which sort as text in time order within a column.

use ferry_core::time::{push_date, push_time, push_timestamp};
use ferry_core::{ColumnType, Value};

pub(crate) use ferry_core::time::{format_interval, parse_interval};

/// `YYYY-MM-DD HH:MM:SS.ffffff+00:00`: always six fraction digits and an
/// explicit offset, so values of one column sort as text in time order.
#[cfg(test)]
pub(crate) fn format_timestamp_tz(micros: i64) -> String {
    let mut out = String::with_capacity(32);
    temporal_text(&Value::TimestampTz(micros), &mut out);
    out
}

/// PostgreSQL's `infinity` and `-infinity` dates and timestamps, which
/// ferry carries as the extreme values of `Value::Date` (`i32::MAX`,
/// `i32::MIN`) and of `Value::Timestamp`/`TimestampTz` (`i64::MAX`,
/// `i64::MIN`). SQLite stores them as the text `infinity`/`-infinity`:
/// as a date they would be year 5881580 or 294247, which no reader takes
/// for infinity. As text of the column, `-infinity` sorts before every
/// date of year 0 or later (`-` < `0`) and `infinity` after every date
/// (`i` > `9`), as in PostgreSQL. (Dates before year 0 are written with a
/// `-` and do not sort in time order as text in any case.)
pub(crate) fn infinity_text(v: &Value) -> Option<&'static str> {
    match *v {
        Value::Date(i32::MAX) | Value::Timestamp(i64::MAX) | Value::TimestampTz(i64::MAX) => {
            Some("infinity")
        }
        Value::Date(i32::MIN) | Value::Timestamp(i64::MIN) | Value::TimestampTz(i64::MIN) => {
            Some("-infinity")
        }
        _ => None,
    }
}

/// The value `infinity_text` writes for `text` in a column of `ty`
/// (`Date`, `Timestamp` or `TimestampTz`).
pub(crate) fn infinity_value(ty: &ColumnType, text: &str) -> Option<Value> {
    let positive = match text {
        "infinity" => true,
        "-infinity" => false,
        _ => return None,
    };
    Some(match ty {
        ColumnType::Date => Value::Date(if positive { i32::MAX } else { i32::MIN }),
        ColumnType::Timestamp => Value::Timestamp(if positive { i64::MAX } else { i64::MIN }),
        ColumnType::TimestampTz => Value::TimestampTz(if positive { i64::MAX } else { i64::MIN }),
        _ => return None,
    })
}

/// Writes the text form of a date or time value into `out` (cleared
/// first) and returns true; false for any other value. The same text as
/// `ferry_core::time`'s formatters, without allocating once `out` has
/// grown: a snapshot load formats every timestamp it writes. Infinite
/// dates and timestamps are `infinity`/`-infinity` ([`infinity_text`]).
pub(crate) fn temporal_text(v: &Value, out: &mut String) -> bool {
    out.clear();
    if let Some(inf) = infinity_text(v) {
        out.push_str(inf);
        return true;
    }
    match *v {
        Value::Date(d) => push_date(out, d),
        Value::Time(t) => push_time(out, t),
        Value::Timestamp(t) => push_timestamp(out, t),
        Value::TimestampTz(t) => {
            push_timestamp(out, t);
            if out.len() == 19 {
                out.push_str(".000000");
            }
            out.push_str("+00:00");
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::time::{format_date, format_time, format_timestamp};

    #[test]
    fn temporal_text_matches_ferry_core() {
        let mut out = String::new();
        let micros = [
            0,
            1,
            -1,
            999_999,
            1_700_000_000_123_456,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            -62_167_219_200_000_001,
        ];
        for m in micros {
            assert!(temporal_text(&Value::Timestamp(m), &mut out));
            assert_eq!(out, format_timestamp(m), "{m}");
        }
        for t in [
            0,
            1,
            3_600_000_000,
            86_400_000_000,
            359_999_999_999,
            360_000_000_000,
            -5,
        ] {
            temporal_text(&Value::Time(t), &mut out);
            assert_eq!(out, format_time(t), "{t}");
        }
        // i32::MIN and i32::MAX are the infinities (see below).
        for d in [
            i32::MIN + 1,
            -719_529,
            -719_528,
            0,
            2_932_896,
            2_932_897,
            i32::MAX - 1,
        ] {
            temporal_text(&Value::Date(d), &mut out);
            assert_eq!(out, format_date(d), "{d}");
        }
        assert!(!temporal_text(&Value::Int(1), &mut out));
    }

    #[test]
    fn infinite_dates_and_timestamps_are_text_that_reads_back() {
        let mut out = String::new();
        for (ty, v, text) in [
            (ColumnType::Date, Value::Date(i32::MAX), "infinity"),
            (ColumnType::Date, Value::Date(i32::MIN), "-infinity"),
            (
                ColumnType::Timestamp,
                Value::Timestamp(i64::MAX),
                "infinity",
            ),
            (
                ColumnType::Timestamp,
                Value::Timestamp(i64::MIN),
                "-infinity",
            ),
            (
                ColumnType::TimestampTz,
                Value::TimestampTz(i64::MAX),
                "infinity",
            ),
            (
                ColumnType::TimestampTz,
                Value::TimestampTz(i64::MIN),
                "-infinity",
            ),
        ] {
            assert!(temporal_text(&v, &mut out));
            assert_eq!(out, text);
            assert_eq!(infinity_value(&ty, text), Some(v));
        }
        // Text order is time order, infinities included.
        let mut texts: Vec<String> = [i64::MIN, -1, 0, 1_700_000_000_000_000, i64::MAX]
            .iter()
            .map(|&t| format_timestamp_tz(t))
            .collect();
        let sorted = texts.clone();
        texts.sort();
        assert_eq!(texts, sorted);
        assert_eq!(infinity_value(&ColumnType::Time, "infinity"), None);
    }

    #[test]
    fn timestamptz_text_has_fixed_width() {
        assert_eq!(format_timestamp_tz(0), "1970-01-01 00:00:00.000000+00:00");
        assert_eq!(format_timestamp_tz(1), "1970-01-01 00:00:00.000001+00:00");
    }
}
