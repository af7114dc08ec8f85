//! Reading a target table back (`ferry verify`, tests): rows in key order
//! through the binary protocol (doubles and floats arrive as their exact
//! bits, dates and times as numbers), each value turned into the ferry
//! value of the *source's* column type, so a target read compares equal
//! to the source's read of the same row: a `TINYINT(1)` holding 1 is
//! `Bool(true)` for a `Bool` column, a `DATETIME(6)` a `TimestampTz` for a
//! `TimestampTz` column, a `CHAR(36)` a `Uuid`.

use ferry_core::time::{days_from_civil, parse_uuid};
use ferry_core::{ColumnType, Error, Result, TableRef, Value};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value as My};

use super::encode::parse_interval;
use crate::connection::quote_ident;
use crate::error::my_error;

/// Rows handed to a scan's callback at a time.
const SCAN_BATCH: usize = 1000;

/// A value as a statement parameter (a key bound in a `WHERE`).
pub(crate) fn param(v: &Value) -> My {
    match v {
        Value::Null | Value::Unchanged => My::NULL,
        Value::Bool(b) => My::Int(i64::from(*b)),
        Value::Int(i) => My::Int(*i),
        Value::Float(f) => My::Double(*f),
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => My::Bytes(s.as_bytes().to_vec()),
        Value::Bytes(b) => My::Bytes(b.clone()),
        Value::Date(_) | Value::Time(_) | Value::Timestamp(_) | Value::TimestampTz(_) => {
            // The literal's text without its quotes: the server parses it
            // as the column's type.
            let lit = super::encode::literal(v, super::encode::Fit::Any).unwrap_or_default();
            My::Bytes(lit.trim_matches('\'').as_bytes().to_vec())
        }
        Value::Interval {
            months,
            days,
            micros,
        } => My::Bytes(
            super::encode::format_interval(*months, *days, *micros)
                .as_bytes()
                .to_vec(),
        ),
        Value::Uuid(u) => My::Bytes(ferry_core::time::format_uuid(u).into_bytes()),
        Value::Array(_) => My::Bytes(v.to_string().into_bytes()),
    }
}

/// The ferry value of column type `ty` for a value read from the target.
pub(crate) fn decode(ty: &ColumnType, v: My) -> std::result::Result<Value, String> {
    use ColumnType as C;
    let utf8 = |b: Vec<u8>| String::from_utf8(b).map_err(|_| "text is not valid UTF-8".to_owned());
    Ok(match (ty, v) {
        (_, My::NULL) => Value::Null,
        (C::Bool, My::Int(i)) => Value::Bool(i != 0),
        (C::Bool, My::UInt(i)) => Value::Bool(i != 0),
        (C::Bool, My::Bytes(b)) if b.len() == 1 => Value::Bool(b[0] != 0 && b[0] != b'0'),
        (C::Int16 | C::Int32 | C::Int64 | C::Dynamic, My::Int(i)) => Value::Int(i),
        (C::Int16 | C::Int32 | C::Int64 | C::Dynamic, My::UInt(u)) => match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Decimal(u.to_string()),
        },
        // A BIT(n) column (a MySQL source's, created verbatim) reads as its
        // bytes, most significant first.
        (C::Int16 | C::Int32 | C::Int64, My::Bytes(b)) if b.len() <= 8 => {
            Value::Int(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)) as i64)
        }
        (C::Float32 | C::Float64 | C::Dynamic, My::Float(f)) => Value::Float(f64::from(f)),
        (C::Float32 | C::Float64 | C::Dynamic, My::Double(d)) => Value::Float(d),
        (C::Decimal { .. }, My::Bytes(b)) => Value::Decimal(utf8(b)?),
        (C::Decimal { .. }, My::Int(i)) => Value::Decimal(i.to_string()),
        (C::Decimal { .. }, My::UInt(u)) => Value::Decimal(u.to_string()),
        (C::Text { .. } | C::Other { .. }, My::Bytes(b)) => Value::Text(utf8(b)?),
        (C::Text { .. } | C::Other { .. }, My::Int(i)) => Value::Text(i.to_string()),
        (C::Text { .. } | C::Other { .. }, My::UInt(u)) => Value::Text(u.to_string()),
        (C::Json, My::Bytes(b)) => Value::Json(utf8(b)?),
        (C::Bytes, My::Bytes(b)) => Value::Bytes(b),
        (C::Date, My::Date(y, m, d, ..)) => Value::Date(days(y, m, d) as i32),
        (C::Time, My::Time(neg, d, h, m, s, us)) => {
            let micros =
                ((i64::from(d) * 24 + i64::from(h)) * 3600 + i64::from(m) * 60 + i64::from(s))
                    * 1_000_000
                    + i64::from(us);
            Value::Time(if neg { -micros } else { micros })
        }
        (C::Timestamp, My::Date(y, mo, d, h, mi, s, us)) => {
            Value::Timestamp(micros(y, mo, d, h, mi, s, us))
        }
        (C::TimestampTz, My::Date(y, mo, d, h, mi, s, us)) => {
            Value::TimestampTz(micros(y, mo, d, h, mi, s, us))
        }
        (C::Interval, My::Bytes(b)) => {
            let s = utf8(b)?;
            parse_interval(&s).ok_or_else(|| format!("{s:?} is not an interval ferry wrote"))?
        }
        (C::Uuid, My::Bytes(b)) if b.len() == 16 => {
            Value::Uuid(b.try_into().expect("length checked"))
        }
        (C::Uuid, My::Bytes(b)) => {
            let s = utf8(b)?;
            Value::Uuid(parse_uuid(&s).ok_or_else(|| format!("{s:?} is not a UUID"))?)
        }
        (C::Array(elem), My::Bytes(b)) => {
            let s = utf8(b)?;
            match super::array::decode(&s, elem) {
                Some(items) => Value::Array(items),
                None => Value::Text(s),
            }
        }
        (C::Dynamic, My::Bytes(b)) => match String::from_utf8(b) {
            Ok(s) => Value::Text(s),
            Err(e) => Value::Bytes(e.into_bytes()),
        },
        (C::Dynamic, My::Date(y, mo, d, h, mi, s, us)) => {
            Value::Timestamp(micros(y, mo, d, h, mi, s, us))
        }
        (ty, v) => return Err(format!("a {v:?} read from the target is not a {ty:?}")),
    })
}

fn days(y: u16, m: u8, d: u8) -> i64 {
    days_from_civil(i64::from(y), u32::from(m.max(1)), u32::from(d.max(1)))
}

fn micros(y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8, us: u32) -> i64 {
    (days(y, mo, d) * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * 1_000_000
        + i64::from(us)
}

/// Decodes a row of `t`'s columns.
fn decode_row(t: &TableRef, row: Row) -> Result<Vec<Value>> {
    row.unwrap()
        .into_iter()
        .zip(&t.columns)
        .map(|(v, c)| {
            decode(&c.ty, v).map_err(|why| {
                Error::fatal(format!(
                    "column {} of target table {}: {why}",
                    c.name, t.name.name
                ))
                .with("table", t.name.name.clone())
            })
        })
        .collect()
}

fn column_list(t: &TableRef) -> String {
    t.columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `key > after` written out (see `statements::push_key_compare`), with
/// placeholders, and its parameters.
fn after_condition(t: &TableRef, after: &[Value]) -> (String, Vec<My>) {
    let mut params = Vec::new();
    let mut ors = Vec::new();
    for n in 0..t.key.len() {
        let mut ands = Vec::new();
        for (m, (&i, v)) in t.key.iter().zip(after).enumerate().take(n + 1) {
            let op = if m < n { "=" } else { ">" };
            ands.push(format!("{} {op} ?", quote_ident(&t.columns[i].name)));
            params.push(param(v));
        }
        ors.push(format!("({})", ands.join(" AND ")));
    }
    (format!("({})", ors.join(" OR ")), params)
}

/// Up to `limit` rows of `t` (target table `name`) with a key above
/// `after`, in key order; `condition` limits them further.
pub(crate) async fn read_rows(
    conn: &mut Conn,
    name: &str,
    t: &TableRef,
    after: Option<&[Value]>,
    limit: usize,
    condition: Option<&str>,
) -> Result<Vec<Vec<Value>>> {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    if let Some(after) = after.filter(|_| !t.is_keyless()) {
        let (c, p) = after_condition(t, after);
        conds.push(c);
        params = p;
    }
    if let Some(c) = condition {
        conds.push(format!("({c})"));
    }
    let mut sql = format!("SELECT {} FROM {}", column_list(t), quote_ident(name));
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    if !t.is_keyless() {
        let key: Vec<String> = t.key_names().iter().map(|k| quote_ident(k)).collect();
        sql.push_str(&format!(" ORDER BY {}", key.join(", ")));
    }
    sql.push_str(&format!(" LIMIT {limit}"));
    let rows: Vec<Row> = conn
        .exec(sql.as_str(), params)
        .await
        .map_err(|e| my_error(e, &format!("reading target table {name}")).with("statement", sql))?;
    rows.into_iter().map(|r| decode_row(t, r)).collect()
}

/// Every row of `t`, a batch at a time.
pub(crate) async fn scan_rows(
    conn: &mut Conn,
    name: &str,
    t: &TableRef,
    condition: Option<&str>,
    on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
) -> Result<()> {
    let mut sql = format!("SELECT {} FROM {}", column_list(t), quote_ident(name));
    if let Some(c) = condition {
        sql.push_str(&format!(" WHERE {c}"));
    }
    let failed = |e| my_error(e, &format!("reading target table {name}"));
    let mut result = conn.exec_iter(sql.as_str(), ()).await.map_err(failed)?;
    let mut batch = Vec::with_capacity(SCAN_BATCH);
    while let Some(row) = result.next().await.map_err(failed)? {
        batch.push(decode_row(t, row)?);
        if batch.len() == SCAN_BATCH {
            on_rows(std::mem::replace(
                &mut batch,
                Vec::with_capacity(SCAN_BATCH),
            ))?;
        }
    }
    if !batch.is_empty() {
        on_rows(batch)?;
    }
    Ok(())
}

/// `SELECT COUNT(*)`, limited by `condition`.
pub(crate) async fn count_rows(
    conn: &mut Conn,
    name: &str,
    condition: Option<&str>,
) -> Result<u64> {
    let mut sql = format!("SELECT COUNT(*) FROM {}", quote_ident(name));
    if let Some(c) = condition {
        sql.push_str(&format!(" WHERE {c}"));
    }
    let n: Option<u64> = conn
        .query_first(sql)
        .await
        .map_err(|e| my_error(e, &format!("counting the rows of target table {name}")))?;
    Ok(n.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_values_become_the_source_columns_values() {
        let text = ColumnType::Text {
            max_len: None,
            fixed: false,
        };
        assert_eq!(
            decode(&ColumnType::Bool, My::Int(1)).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            decode(&ColumnType::TimestampTz, My::Date(1970, 1, 2, 0, 0, 1, 5)).unwrap(),
            Value::TimestampTz(86_401_000_005)
        );
        assert_eq!(
            decode(&ColumnType::Time, My::Time(true, 1, 2, 0, 0, 0)).unwrap(),
            Value::Time(-26 * 3_600_000_000)
        );
        assert_eq!(
            decode(
                &ColumnType::Uuid,
                My::Bytes(b"00000000-0000-0000-0000-0000000000ff".to_vec())
            )
            .unwrap(),
            Value::Uuid({
                let mut u = [0; 16];
                u[15] = 255;
                u
            })
        );
        assert!(decode(&text, My::Bytes(vec![0xff])).is_err());
    }
}
