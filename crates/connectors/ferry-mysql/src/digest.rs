//! Row digests computed inside MariaDB/MySQL (`ferry verify`): each row's
//! canonical encoding ([`ferry_core::canonical`]) built in SQL, hashed
//! with MD5 ([`CANONICAL_MD5_DIGEST`]: the server has no lookup3), summed
//! per key range. Only the counts and sums cross the link.
//!
//! A column is encoded here only when the value the reader would make of
//! it is known exactly from its type ([`Canon`]); a table with any other
//! column (FLOAT/DOUBLE, whose IEEE bits SQL cannot show; BIT; a target
//! column of an unexpected type) is compared row by row instead. So is a
//! table whose key has a text or UUID column: its index orders by the
//! column's collation, not by ferry's byte order, so every range would be
//! a scan and a sort.

use ferry_core::canonical::CANONICAL_MD5_DIGEST;
use ferry_core::{ColumnType, Error, KeyRange, RangeDigest, Result, TableSchema, Value};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value as MyValue};

use crate::connection::quote_ident;
use crate::error::my_error;
use crate::sql::range_filter;
use crate::types::Decode;

/// The digests a MySQL/MariaDB reader offers.
pub(crate) const ROW_DIGESTS: [&str; 1] = [CANONICAL_MD5_DIGEST];

/// How a column's values are encoded: by the ferry value its reader makes
/// of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Canon {
    /// An integer column: `Int`.
    Int,
    /// `YEAR`: `Int` of its number.
    Year,
    /// `TINYINT(1)` holding a `Bool`.
    Bool,
    /// `DECIMAL` (and `BIGINT UNSIGNED`): `Decimal` of its text.
    Decimal,
    /// Text of any character set, ENUM, SET: `Text`.
    Text,
    Json,
    Bytes,
    Date,
    /// `DATETIME`: `Timestamp`.
    Timestamp,
    /// `TIMESTAMP` (read in UTC), or a `DATETIME` holding a `TimestampTz`.
    TimestampTz,
    Time,
    /// `UUID`, or `CHAR(36)` holding one.
    Uuid,
}

impl Canon {
    /// A column read by the type it has here (a source's table).
    pub(crate) fn of_decode(how: &Decode) -> Option<Canon> {
        Some(match how {
            Decode::Signed | Decode::Int24 | Decode::Unsigned { .. } => Canon::Int,
            Decode::Year => Canon::Year,
            Decode::BigUnsigned | Decode::Decimal => Canon::Decimal,
            Decode::Text | Decode::Latin1 | Decode::Enum(_) | Decode::Set(_) => Canon::Text,
            Decode::Json => Canon::Json,
            Decode::Bytes => Canon::Bytes,
            Decode::Date => Canon::Date,
            Decode::DateTime => Canon::Timestamp,
            Decode::Timestamp => Canon::TimestampTz,
            Decode::Time => Canon::Time,
            Decode::Uuid => Canon::Uuid,
            Decode::Float | Decode::Double | Decode::Bit => return None,
        })
    }

    /// A target column of `data_type` read as the source's type `ty`
    /// (`sink/read.rs`); `None` for a pairing not known to read exactly.
    pub(crate) fn of_target(ty: &ColumnType, data_type: &str) -> Option<Canon> {
        use ColumnType as C;
        let integer = matches!(
            data_type,
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
        );
        let text = matches!(
            data_type,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set"
        );
        let bytes = matches!(
            data_type,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
        );
        Some(match ty {
            C::Int16 | C::Int32 | C::Int64 if integer => Canon::Int,
            C::Int16 | C::Int32 | C::Int64 if data_type == "year" => Canon::Year,
            C::Bool if data_type == "tinyint" => Canon::Bool,
            C::Decimal { .. } if data_type == "decimal" || data_type == "bigint" => Canon::Decimal,
            C::Text { .. } if text => Canon::Text,
            C::Json if data_type == "json" || data_type == "longtext" => Canon::Json,
            C::Bytes if bytes => Canon::Bytes,
            C::Date if data_type == "date" => Canon::Date,
            C::Timestamp if data_type == "datetime" => Canon::Timestamp,
            C::TimestampTz if data_type == "datetime" || data_type == "timestamp" => {
                Canon::TimestampTz
            }
            C::Time if data_type == "time" => Canon::Time,
            C::Uuid if data_type == "uuid" || data_type == "char" => Canon::Uuid,
            _ => return None,
        })
    }

    /// Whether a key column of this kind is ordered by its index as ferry
    /// orders its values.
    fn orders_as_ferry(self) -> bool {
        !matches!(self, Canon::Text | Canon::Json | Canon::Uuid)
    }

    /// The SQL of the column's encoding (never NULL), as binary bytes, so
    /// no collations meet in the `CONCAT`.
    fn sql(self, quoted: &str) -> String {
        let q = quoted;
        let tagged =
            |tag: &str, payload: String| format!("COALESCE(CONCAT('{tag}', {payload}, ';'), 'N;')");
        let sized = |tag: &str| {
            let bytes = format!("CAST(CONVERT({q} USING utf8mb4) AS BINARY)");
            format!("COALESCE(CONCAT('{tag}', OCTET_LENGTH({bytes}), ':', {bytes}), 'N;')")
        };
        let micros = |tag: &str| {
            tagged(
                tag,
                format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {q})"),
            )
        };
        match self {
            Canon::Int => tagged("I", q.to_owned()),
            Canon::Year => tagged("I", format!("{q} + 0")),
            Canon::Bool => {
                format!("CASE WHEN {q} IS NULL THEN 'N;' WHEN {q} <> 0 THEN 'Bt;' ELSE 'Bf;' END")
            }
            Canon::Decimal => tagged("D", q.to_owned()),
            Canon::Text => sized("S"),
            Canon::Json => sized("J"),
            Canon::Bytes => tagged("X", format!("LOWER(HEX({q}))")),
            // A zero date reads as NULL; DATEDIFF makes it NULL too.
            Canon::Date => tagged("A", format!("DATEDIFF({q}, '1970-01-01')")),
            Canon::Timestamp => micros("P"),
            Canon::TimestampTz => micros("Z"),
            Canon::Time => tagged("T", format!("ROUND(TIME_TO_SEC({q}) * 1000000)")),
            Canon::Uuid => tagged("U", format!("LOWER({q})")),
        }
    }
}

/// What digesting one table needs: built once per table by a reader.
#[derive(Debug, Clone)]
pub(crate) struct DigestPlan {
    /// The table here, quoted.
    from: String,
    /// The table's columns and key as ferry types (for key order and
    /// range predicates).
    schema: TableSchema,
    /// The row's hash, as SQL.
    hash: String,
}

impl DigestPlan {
    /// `None` when a column has no encoding here or the key's index does
    /// not order as ferry does.
    pub(crate) fn new(name: &str, schema: &TableSchema, canons: &[Option<Canon>]) -> Option<Self> {
        if !key_in_ferry_order(schema, canons) {
            return None;
        }
        let canons: Vec<Canon> = canons.iter().copied().collect::<Option<_>>()?;
        let parts: Vec<String> = schema
            .columns
            .iter()
            .zip(&canons)
            .map(|(c, canon)| canon.sql(&quote_ident(&c.name)))
            .collect();
        Some(DigestPlan {
            from: quote_ident(name),
            schema: schema.clone(),
            hash: format!(
                "(CAST(CONV(LEFT(MD5(CONCAT({})), 16), 16, 10) AS UNSIGNED) & 9223372036854775807)",
                parts.join(", ")
            ),
        })
    }

    /// The rows of `range` (the first `limit` in key order) that
    /// `condition` keeps: their count, hash sum and last key, which
    /// `decode_key(i, v)` turns from the server's value of key column `i`
    /// (an index into the table's columns) into ferry's.
    pub(crate) async fn digest(
        &self,
        conn: &mut Conn,
        range: &KeyRange,
        limit: Option<u64>,
        condition: Option<&str>,
        decode_key: DecodeKey<'_>,
    ) -> Result<RangeDigest> {
        let mut params = Vec::new();
        let mut filter = range_filter(&self.schema, range, &mut params);
        if let Some(c) = condition {
            filter = if filter.is_empty() {
                format!("WHERE ({c})")
            } else {
                format!("{filter} AND ({c})")
            };
        }
        let (from, hash) = (&self.from, &self.hash);
        let failed = |sql: &str| {
            let sql = sql.to_owned();
            move |e| my_error(e, "digesting rows").with("statement", sql)
        };
        let Some(limit) = limit else {
            let sql = format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM({hash}), 0) AS CHAR) FROM {from} {filter}"
            );
            let row: Option<(u64, String)> = conn
                .exec_first(sql.as_str(), params)
                .await
                .map_err(failed(&sql))?;
            let (rows, sum) = row.unwrap_or((0, "0".into()));
            return Ok(RangeDigest {
                rows,
                sum,
                last: None,
            });
        };
        // The first `limit` rows, then the last of them with the count and
        // the sum: one pass over the range.
        let keys: Vec<String> = self
            .schema
            .key
            .iter()
            .map(|&i| quote_ident(&self.schema.columns[i].name))
            .collect();
        let (list, asc) = (keys.join(", "), keys.join(" ASC, "));
        let desc = keys.join(" DESC, ");
        let sql = format!(
            "SELECT {list}, ferry_n, CAST(ferry_s AS CHAR) FROM (\
               SELECT {list}, COUNT(*) OVER () AS ferry_n, SUM(ferry_h) OVER () AS ferry_s, \
                 ROW_NUMBER() OVER (ORDER BY {desc} DESC) AS ferry_r \
               FROM (SELECT {list}, {hash} AS ferry_h FROM {from} {filter} \
                     ORDER BY {asc} ASC LIMIT {limit}) AS c) AS w \
             WHERE ferry_r = 1"
        );
        let row: Option<Row> = conn
            .exec_first(sql.as_str(), params)
            .await
            .map_err(failed(&sql))?;
        let Some(row) = row else {
            return Ok(RangeDigest {
                rows: 0,
                sum: "0".into(),
                last: None,
            });
        };
        let mut values = row.unwrap();
        let shape = || Error::fatal("a row digest came back in another shape; this is a ferry bug");
        let sum = match values.pop() {
            Some(MyValue::Bytes(b)) => String::from_utf8(b).map_err(|_| shape())?,
            _ => return Err(shape()),
        };
        let rows = match values.pop() {
            Some(MyValue::Int(n)) => n as u64,
            Some(MyValue::UInt(n)) => n,
            _ => return Err(shape()),
        };
        Ok(RangeDigest {
            rows,
            sum,
            last: Some(decode_keys(&self.schema, values, decode_key)?),
        })
    }
}

/// Decodes the server's value of key column `i` (an index into the
/// table's columns) into ferry's.
pub(crate) type DecodeKey<'a> =
    &'a (dyn Fn(usize, MyValue) -> std::result::Result<Value, String> + Sync);

/// Whether the key's index orders `schema`'s key as ferry does, by the
/// key columns' encodings: then ranges are cut reading keys only.
pub(crate) fn key_in_ferry_order(schema: &TableSchema, canons: &[Option<Canon>]) -> bool {
    !schema.key.is_empty()
        && schema
            .key
            .iter()
            .all(|&k| canons[k].is_some_and(Canon::orders_as_ferry))
}

/// [`ferry_core::TableReader::key_after`] through the key's index, reading
/// keys only (the caller checked [`key_in_ferry_order`]).
pub(crate) async fn key_after(
    conn: &mut Conn,
    name: &str,
    schema: &TableSchema,
    after: Option<&[Value]>,
    rows: u64,
    condition: Option<&str>,
    decode_key: DecodeKey<'_>,
) -> Result<Option<Vec<Value>>> {
    let mut params = Vec::new();
    let mut conditions: Vec<String> = after
        .map(|a| vec![crate::sql::key_compare(schema, a, true, &mut params)])
        .unwrap_or_default();
    conditions.extend(condition.map(|c| format!("({c})")));
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let keys: Vec<String> = schema
        .key
        .iter()
        .map(|&i| quote_ident(&schema.columns[i].name))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} {filter} ORDER BY {} LIMIT 1 OFFSET {}",
        keys.join(", "),
        quote_ident(name),
        keys.join(", "),
        rows.max(1) - 1
    );
    let row: Option<Row> = conn
        .exec_first(sql.as_str(), params)
        .await
        .map_err(|e| my_error(e, "reading where to cut a table").with("statement", sql))?;
    let Some(row) = row else { return Ok(None) };
    decode_keys(schema, row.unwrap(), decode_key).map(Some)
}

fn decode_keys(
    schema: &TableSchema,
    values: Vec<MyValue>,
    decode_key: DecodeKey<'_>,
) -> Result<Vec<Value>> {
    values
        .into_iter()
        .zip(&schema.key)
        .map(|(v, &i)| {
            decode_key(i, v).map_err(|why| {
                Error::fatal(format!(
                    "key column {} of table {}: {why}",
                    schema.columns[i].name, schema.name
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exactly_read_pairings_are_encoded() {
        let text = ColumnType::Text {
            max_len: None,
            fixed: false,
        };
        assert_eq!(Canon::of_target(&text, "varchar"), Some(Canon::Text));
        assert_eq!(Canon::of_target(&text, "int"), None);
        assert_eq!(Canon::of_target(&ColumnType::Float64, "double"), None);
        assert_eq!(
            Canon::of_target(&ColumnType::TimestampTz, "datetime"),
            Some(Canon::TimestampTz)
        );
        assert_eq!(Canon::of_decode(&Decode::Double), None);
        assert_eq!(Canon::of_decode(&Decode::Latin1), Some(Canon::Text));
    }
}
