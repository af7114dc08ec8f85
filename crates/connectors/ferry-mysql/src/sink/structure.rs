//! The structure copy: MySQL/MariaDB column types for ferry's types,
//! `CREATE TABLE`, and what an existing target table looks like.
//!
//! The mapping (also in the crate's README):
//!
//! | ferry | MySQL/MariaDB |
//! |---|---|
//! | `Bool` | `TINYINT(1)` |
//! | `Int16` / `Int32` / `Int64` | `SMALLINT` / `INT` / `BIGINT` |
//! | `Float32` / `Float64` | `FLOAT` / `DOUBLE` |
//! | `Decimal(p,s)`, p ≤ 65, 0 ≤ s ≤ 38 | `DECIMAL(p,s)` |
//! | `Decimal` unconstrained or wider | `DECIMAL(65,30)`; a value with more digits is a data error |
//! | `Text(n)`, n ≤ 16383 | `VARCHAR(n)` (also for `char(n)`: MySQL's `CHAR` drops trailing spaces) |
//! | `Text` unbounded or longer | `LONGTEXT`; in a key `VARCHAR(768 / text key columns)` |
//! | `Bytes` | `LONGBLOB`; in a key `VARBINARY(3072 / binary key columns)` |
//! | `Date` / `Time` / `Timestamp` | `DATE` / `TIME(6)` / `DATETIME(6)` |
//! | `TimestampTz` | `DATETIME(6)`, in UTC |
//! | `Interval` | `VARCHAR(64)`, `P<months>M<days>DT<seconds>S` |
//! | `Uuid` | `CHAR(36) CHARACTER SET ascii COLLATE ascii_bin` |
//! | `Json` | `JSON` (MariaDB: `LONGTEXT` with `JSON_VALID`) |
//! | `Array` | `LONGTEXT`, a JSON array |
//! | `Other` / `Dynamic` | `LONGTEXT`, the source's text |
//!
//! Text columns use the server's binary collation without trailing-space
//! padding (`utf8mb4_nopad_bin` on MariaDB, `utf8mb4_0900_bin` on MySQL
//! 8): `'a'` and `'a '` are two keys, and text orders by its bytes, as
//! ferry orders keys. A MySQL/MariaDB source's columns keep the type the
//! source declared (`bigint(20) unsigned`, `enum('a','b')`).

use ferry_core::{Column, ColumnType, Error, Result, TableSchema};

use crate::connection::quote_ident;

/// InnoDB's limit on the bytes of one index key (`innodb_large_prefix`,
/// DYNAMIC row format).
const MAX_KEY_BYTES: u32 = 3072;
/// Longest `VARCHAR` of utf8mb4 characters a row can hold.
const MAX_VARCHAR: u32 = 16_383;
/// The widest `DECIMAL`, and MariaDB's widest scale.
const MAX_PRECISION: u32 = 65;
const MAX_SCALE: i32 = 38;

/// What the structure copy needs to know about the target server.
#[derive(Debug, Clone)]
pub(crate) struct Dialect {
    /// Binary text collation without pad space.
    pub text_collation: &'static str,
    /// The source is MySQL/MariaDB too: its declared types are used as
    /// they are.
    pub same_engine: bool,
}

impl Dialect {
    /// From `SELECT VERSION()`.
    pub fn new(version: &str, same_engine: bool) -> Dialect {
        let mariadb = version.to_ascii_lowercase().contains("mariadb");
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let text_collation = if mariadb {
            "utf8mb4_nopad_bin"
        } else if major >= 8 {
            "utf8mb4_0900_bin"
        } else {
            "utf8mb4_bin"
        };
        Dialect {
            text_collation,
            same_engine,
        }
    }
}

/// The type of `col` on the target; `key_share` is how many key columns
/// of unbounded text or bytes share the key's bytes (0: not a key column).
pub(crate) fn column_type(col: &Column, d: &Dialect, key_share: u32) -> String {
    if d.same_engine && !col.source_type.trim().is_empty() {
        return col.source_type.clone();
    }
    let text = |decl: String| format!("{decl} CHARACTER SET utf8mb4 COLLATE {}", d.text_collation);
    let key_chars = |bytes_per_char: u32| MAX_KEY_BYTES / bytes_per_char / key_share.max(1);
    match &col.ty {
        ColumnType::Bool => "TINYINT(1)".into(),
        ColumnType::Int16 => "SMALLINT".into(),
        ColumnType::Int32 => "INT".into(),
        ColumnType::Int64 => "BIGINT".into(),
        ColumnType::Float32 => "FLOAT".into(),
        ColumnType::Float64 => "DOUBLE".into(),
        ColumnType::Decimal { precision, scale } => {
            let (p, s) = decimal(*precision, *scale);
            format!("DECIMAL({p},{s})")
        }
        ColumnType::Text {
            max_len: Some(n), ..
        } if *n <= MAX_VARCHAR && (key_share == 0 || *n <= key_chars(4)) => {
            text(format!("VARCHAR({n})"))
        }
        ColumnType::Bytes if key_share > 0 => format!("VARBINARY({})", key_chars(1)),
        ColumnType::Bytes => "LONGBLOB".into(),
        ColumnType::Date => "DATE".into(),
        ColumnType::Time => "TIME(6)".into(),
        ColumnType::Timestamp | ColumnType::TimestampTz => "DATETIME(6)".into(),
        ColumnType::Interval => "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin".into(),
        ColumnType::Uuid => "CHAR(36) CHARACTER SET ascii COLLATE ascii_bin".into(),
        ColumnType::Json if key_share == 0 => "JSON".into(),
        _ if key_share > 0 => text(format!("VARCHAR({})", key_chars(4))),
        ColumnType::Text { .. }
        | ColumnType::Json
        | ColumnType::Array(_)
        | ColumnType::Other { .. }
        | ColumnType::Dynamic => text("LONGTEXT".into()),
    }
}

/// `DECIMAL(p,s)` for a ferry decimal: the same when MySQL has it; a
/// negative scale (multiples of 10^-s) as more integer digits; a scale
/// above the precision as that many fraction digits; unconstrained or
/// wider than MySQL's as `DECIMAL(65,30)`.
pub(crate) fn decimal(precision: Option<u32>, scale: Option<i32>) -> (u32, u32) {
    let fallback = (MAX_PRECISION, 30);
    let Some(p) = precision else {
        return fallback;
    };
    let s = scale.unwrap_or(0);
    let (p, s) = if s < 0 {
        (p + s.unsigned_abs(), 0)
    } else if s as u32 > p {
        (s as u32, s as u32)
    } else {
        (p, s as u32)
    };
    if p == 0 || p > MAX_PRECISION || s as i32 > MAX_SCALE {
        fallback
    } else {
        (p, s)
    }
}

/// How many key columns need a share of the key's bytes (unbounded text,
/// bytes, text-like types).
fn key_share(t: &TableSchema, d: &Dialect) -> u32 {
    if d.same_engine {
        return 0;
    }
    t.key
        .iter()
        .filter(|&&i| {
            !matches!(
                t.columns[i].ty,
                ColumnType::Bool
                    | ColumnType::Int16
                    | ColumnType::Int32
                    | ColumnType::Int64
                    | ColumnType::Float32
                    | ColumnType::Float64
                    | ColumnType::Decimal { .. }
                    | ColumnType::Date
                    | ColumnType::Time
                    | ColumnType::Timestamp
                    | ColumnType::TimestampTz
                    | ColumnType::Interval
                    | ColumnType::Uuid
            )
        })
        .count() as u32
}

/// A column's definition in `CREATE TABLE` and `ADD COLUMN`.
pub(crate) fn column_def(t: &TableSchema, i: usize, d: &Dialect) -> String {
    let c = &t.columns[i];
    let share = if t.is_key_column(i) {
        key_share(t, d).max(1)
    } else {
        0
    };
    let mut def = format!("{} {}", quote_ident(&c.name), column_type(c, d, share));
    if !c.nullable || t.is_key_column(i) {
        def.push_str(" NOT NULL");
    } else {
        // MySQL gives the first TIMESTAMP column of a table a default of
        // CURRENT_TIMESTAMP unless told otherwise (explicit_defaults_for_timestamp).
        def.push_str(" NULL");
    }
    def
}

/// `CREATE TABLE` for `t` under the name `name`: its columns, its key as
/// the primary key (none for a keyless table), InnoDB, utf8mb4.
pub(crate) fn create_table_sql(t: &TableSchema, name: &str, d: &Dialect) -> Result<String> {
    if t.columns.is_empty() {
        return Err(Error::fatal(format!(
            "table {} has no columns; MySQL/MariaDB cannot create such a table",
            t.name
        )));
    }
    let mut parts: Vec<String> = (0..t.columns.len()).map(|i| column_def(t, i, d)).collect();
    if !t.is_keyless() {
        let key: Vec<String> = t.key_names().iter().map(|k| quote_ident(k)).collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={}",
        quote_ident(name),
        parts.join(", "),
        d.text_collation
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::TableName;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            nullable: true,
            source_type: "whatever(1)".into(),
            user_type: None,
        }
    }

    #[test]
    fn decimals_map_to_what_mysql_holds() {
        assert_eq!(decimal(Some(12), Some(2)), (12, 2));
        assert_eq!(decimal(None, None), (65, 30));
        assert_eq!(decimal(Some(7), Some(-3)), (10, 0));
        assert_eq!(decimal(Some(3), Some(5)), (5, 5));
        assert_eq!(decimal(Some(100), Some(2)), (65, 30));
    }

    #[test]
    fn create_table_keys_text_with_a_length_and_keeps_mysql_types() {
        let text = ColumnType::Text {
            max_len: None,
            fixed: false,
        };
        let t = TableSchema {
            name: TableName::new(Some("public"), "or`ders"),
            columns: vec![
                col("k", text.clone()),
                col("b", ColumnType::Bytes),
                col("n", text),
                col("u", ColumnType::Uuid),
            ],
            key: vec![0, 1],
            version: 1,
            key_deferrable: false,
        };
        let d = Dialect::new("10.11.6-MariaDB", false);
        assert_eq!(
            create_table_sql(&t, "or`ders", &d).unwrap(),
            "CREATE TABLE IF NOT EXISTS `or``ders` (`k` VARCHAR(384) CHARACTER SET utf8mb4 \
             COLLATE utf8mb4_nopad_bin NOT NULL, `b` VARBINARY(1536) NOT NULL, `n` LONGTEXT \
             CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL, `u` CHAR(36) CHARACTER SET \
             ascii COLLATE ascii_bin NULL, PRIMARY KEY (`k`, `b`)) ENGINE=InnoDB DEFAULT \
             CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin"
        );
        let same = Dialect::new("8.0.36", true);
        assert_eq!(same.text_collation, "utf8mb4_0900_bin");
        assert_eq!(column_type(&t.columns[3], &same, 0), "whatever(1)");
    }
}
