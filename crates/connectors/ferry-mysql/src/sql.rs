//! SQL text shared by the snapshot, the re-copy and the reader: key-order
//! predicates, select lists, and ferry values as statement parameters.

use ferry_core::{ColumnType, TableSchema, Value, time};
use mysql_async::Value as MyValue;

use crate::connection::quote_ident;

/// A key column in ferry's key order (text by bytes): text columns compare
/// as binary strings whatever their collation.
pub(crate) fn key_expr(table: &TableSchema, index: usize) -> String {
    let column = &table.columns[index];
    let name = quote_ident(&column.name);
    match column.ty {
        ColumnType::Text { .. } => format!("BINARY {name}"),
        _ => name,
    }
}

/// `ORDER BY` of the key, in ferry's key order.
pub(crate) fn order_by_key(table: &TableSchema) -> String {
    let keys: Vec<String> = table.key.iter().map(|&i| key_expr(table, i)).collect();
    format!("ORDER BY {}", keys.join(", "))
}

/// `key > after` (`strict`) or `key <= after`, spelled so that MariaDB
/// uses the key's index (`a > ? OR (a = ? AND b > ?)`), with its
/// parameters appended to `params`.
pub(crate) fn key_compare(
    table: &TableSchema,
    after: &[Value],
    greater: bool,
    params: &mut Vec<MyValue>,
) -> String {
    let mut ors = Vec::new();
    for n in 0..table.key.len() {
        let mut ands = Vec::new();
        for (j, &col) in table.key.iter().enumerate().take(n + 1) {
            let op = match (j == n, greater) {
                (false, _) => "=",
                (true, true) => ">",
                (true, false) if n + 1 == table.key.len() => "<=",
                (true, false) => "<",
            };
            ands.push(format!("{} {op} ?", key_expr(table, col)));
            params.push(param(&after[j]));
        }
        ors.push(format!("({})", ands.join(" AND ")));
    }
    format!("({})", ors.join(" OR "))
}

/// `WHERE` limiting rows to the keys of `range` (empty for the whole
/// table), with its parameters appended to `params`.
pub(crate) fn range_filter(
    table: &TableSchema,
    range: &ferry_core::KeyRange,
    params: &mut Vec<MyValue>,
) -> String {
    let mut conditions = Vec::new();
    if let Some(lower) = &range.lower {
        conditions.push(key_compare(table, lower, true, params));
    }
    if let Some(upper) = &range.upper {
        conditions.push(key_compare(table, upper, false, params));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

/// The table's columns, quoted, in order.
pub(crate) fn column_list(table: &TableSchema) -> String {
    table
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A ferry value as a statement parameter, in the form MariaDB converts
/// exactly to the column's type.
pub(crate) fn param(value: &Value) -> MyValue {
    match value {
        Value::Null | Value::Unchanged => MyValue::NULL,
        Value::Bool(b) => MyValue::Int(i64::from(*b)),
        Value::Int(i) => MyValue::Int(*i),
        Value::Float(f) => MyValue::Double(*f),
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => MyValue::Bytes(s.clone().into()),
        Value::Bytes(b) => MyValue::Bytes(b.clone()),
        Value::Date(d) => MyValue::Bytes(time::format_date(*d).into()),
        Value::Time(t) => MyValue::Bytes(format_duration(*t).into()),
        Value::Timestamp(t) | Value::TimestampTz(t) => {
            MyValue::Bytes(time::format_timestamp(*t).into())
        }
        Value::Uuid(u) => MyValue::Bytes(time::format_uuid(u).into()),
        other => MyValue::Bytes(format!("{other:?}").into()),
    }
}

/// Microseconds as MySQL's `[-]HHH:MM:SS.ffffff`.
pub(crate) fn format_duration(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let (secs, us) = (m / 1_000_000, m % 1_000_000);
    format!(
        "{sign}{:02}:{:02}:{:02}.{us:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_sign_and_hours() {
        assert_eq!(format_duration(-3_020_399_500_000), "-838:59:59.500000");
        assert_eq!(format_duration(1), "00:00:00.000001");
    }
}
