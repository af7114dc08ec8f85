//! Reading table structure from a SQLite file.

use std::path::Path;

use ferry_core::{Column, ColumnType, Error, Selection, TableName, TableSchema};
use rusqlite::Connection;

use crate::connection::db_error;
use crate::types::{SUPPORTED_TYPES, column_type};

/// Names of the ordinary tables `selection` selects, sorted.
pub(crate) fn selected_tables(
    conn: &Connection,
    path: &Path,
    selection: &Selection,
) -> Result<Vec<String>, Error> {
    let names = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| db_error(path, "listing tables", e))?;
    Ok(names
        .into_iter()
        .filter(|n| selection.selects(&TableName::bare(n)))
        .collect())
}

/// Reads one table's columns and key: its primary key, else a unique index
/// on NOT NULL columns, else none (a keyless table). A table ferry cannot
/// replicate (virtual, unknown column type, non-binary primary key
/// collation) is a fatal error naming the table and the fix; every column
/// of a type ferry does not support is named at once.
#[cfg(test)]
pub(crate) fn read_table(
    conn: &Connection,
    path: &Path,
    name: &str,
    keep_storage_classes: bool,
) -> Result<TableSchema, Error> {
    read_selected_table(
        conn,
        path,
        name,
        &Selection::default(),
        keep_storage_classes,
    )
}

/// [`read_table`], where a column `selection` leaves unread (excluded, no
/// filter reads it) may have any declared type: it is read as `Dynamic`
/// (each value as stored), and the transform drops it.
///
/// With `keep_storage_classes` every column is `Dynamic` (each value keeps
/// its storage class) and any declared type is accepted: it travels
/// verbatim in `source_type` for a SQLite target to declare again.
pub(crate) fn read_selected_table(
    conn: &Connection,
    path: &Path,
    name: &str,
    selection: &Selection,
    keep_storage_classes: bool,
) -> Result<TableSchema, Error> {
    let err = |e| db_error(path, &format!("reading the structure of table {name}"), e);
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )
        .map_err(err)?;
    let exclude_fix = format!("exclude the table with `exclude = [\"{name}\"]`");
    let upper_sql = sql.to_ascii_uppercase();
    if upper_sql.starts_with("CREATE VIRTUAL TABLE") {
        return Err(Error::fatal(format!(
            "table {name} is a virtual table; SQLite cannot put capture triggers on it"
        ))
        .with_fix(exclude_fix));
    }
    let without_rowid = crate::ddl::is_without_rowid(&sql);

    // (name, declared type, not null, position in the primary key)
    let raw: Vec<(String, String, bool, i64)> = conn
        .prepare(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_xinfo(?1) \
             WHERE hidden <> 1 ORDER BY cid",
        )
        .and_then(|mut s| {
            s.query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .map_err(err)?;

    let mut key: Vec<(i64, usize)> = raw
        .iter()
        .enumerate()
        .filter(|(_, c)| c.3 > 0)
        .map(|(i, c)| (c.3, i))
        .collect();
    key.sort();
    // Without a primary key, a unique index on NOT NULL columns is the key;
    // without one either, the table has no key (ADR 0008): copied in rowid
    // order, its changes applied one row at a time.
    if key.is_empty() {
        key = unique_not_null_key(conn, name, &raw)
            .map_err(err)?
            .into_iter()
            .enumerate()
            .map(|(n, i)| (n as i64, i))
            .collect();
    }
    // A lone INTEGER PRIMARY KEY is the rowid and can never be NULL; other
    // key columns of rowid tables can (an old SQLite quirk).
    let rowid_alias = key.len() == 1 && raw[key[0].1].1.eq_ignore_ascii_case("INTEGER");

    let mut columns = Vec::with_capacity(raw.len());
    let mut unsupported = Vec::new();
    for (cname, declared, not_null, pk) in &raw {
        let ty = match column_type(declared) {
            _ if keep_storage_classes => ColumnType::Dynamic,
            Some(ty) => ty,
            None if selection.unread(&TableName::bare(name), cname) => ColumnType::Dynamic,
            None => {
                unsupported.push((cname.as_str(), declared.as_str()));
                continue;
            }
        };
        // Kept as declared for a SQLite target, which reads the key the
        // same way (an `INTEGER PRIMARY KEY` stays the rowid).
        let key_never_null = *pk > 0 && (without_rowid || rowid_alias) && !keep_storage_classes;
        columns.push(Column {
            name: cname.clone(),
            ty,
            nullable: !not_null && !key_never_null,
            source_type: declared.clone(),
            user_type: None,
        });
    }
    if !unsupported.is_empty() {
        let list: Vec<String> = (unsupported.iter())
            .map(|(c, d)| format!("{name}.{c} ({d})"))
            .collect();
        let entries: Vec<String> = (unsupported.iter())
            .map(|(c, _)| format!("\"{name}.{c}\""))
            .collect();
        return Err(Error::fatal(format!(
            "table {name} has columns of types ferry does not support: {}",
            list.join(", ")
        ))
        .with("table", name)
        .with("column", unsupported[0].0)
        .with_fix(format!(
            "declare the columns with supported types ({SUPPORTED_TYPES}) or exclude them \
             (`exclude_columns = [{}]` in the table's transform)",
            entries.join(", ")
        )));
    }
    check_key_collation(conn, path, name, &columns)?;
    Ok(TableSchema {
        name: TableName::bare(name),
        columns,
        key: key.into_iter().map(|(_, i)| i).collect(),
        version: 1,
        key_deferrable: false,
    })
}

/// The columns (positions in `raw`) of the first unique index, by name,
/// that is not partial, has only NOT NULL table columns (no expressions)
/// and compares them by bytes; empty when there is none.
fn unique_not_null_key(
    conn: &Connection,
    table: &str,
    raw: &[(String, String, bool, i64)],
) -> rusqlite::Result<Vec<usize>> {
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND partial = 0 \
             ORDER BY name",
        )?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for index in indexes {
        let cols: Vec<(Option<String>, String)> = conn
            .prepare("SELECT name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno")?
            .query_map([&index], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let usable: Option<Vec<usize>> = cols
            .iter()
            .map(|(name, coll)| {
                let i = raw.iter().position(|c| Some(&c.0) == name.as_ref())?;
                (raw[i].2 && coll.eq_ignore_ascii_case("BINARY")).then_some(i)
            })
            .collect();
        if let Some(key) = usable.filter(|k| !k.is_empty()) {
            return Ok(key);
        }
    }
    Ok(Vec::new())
}

/// Ferry orders keys by bytes (`BINARY`); a key declared `COLLATE NOCASE`
/// sorts differently, so snapshot ranges and verify pages would not agree
/// with SQLite's order.
fn check_key_collation(
    conn: &Connection,
    path: &Path,
    table: &str,
    columns: &[Column],
) -> Result<(), Error> {
    let collations: Vec<(String, String)> = conn
        .prepare(
            "SELECT x.name, x.coll FROM pragma_index_list(?1) AS l, pragma_index_xinfo(l.name) AS x \
             WHERE l.origin = 'pk' AND x.key = 1",
        )
        .and_then(|mut s| {
            s.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(|e| db_error(path, &format!("reading the key of table {table}"), e))?;
    for (column, coll) in collations {
        if !coll.eq_ignore_ascii_case("BINARY") && columns.iter().any(|c| c.name == column) {
            return Err(Error::fatal(format!(
                "key column {table}.{column} uses collation {coll}; ferry orders keys by bytes \
                 (BINARY) and would copy ranges of this table inconsistently"
            ))
            .with("table", table)
            .with_fix(format!(
                "declare the key column COLLATE BINARY, or exclude the table with `exclude = [\"{table}\"]`"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(sql: &str) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(sql).unwrap();
        c
    }

    #[test]
    fn reads_columns_and_key_order() {
        let c = db("CREATE TABLE t(b TEXT NOT NULL, a INT, x, PRIMARY KEY(a, b))");
        let t = read_table(&c, Path::new("m"), "t", false).unwrap();
        assert_eq!(t.key_names(), ["a", "b"]);
        assert_eq!(t.columns[2].ty, ColumnType::Dynamic);
        assert!(!t.columns[0].nullable);
        let c = db("CREATE TABLE u(id INTEGER PRIMARY KEY, v REAL)");
        let u = read_table(&c, Path::new("m"), "u", false).unwrap();
        assert!(!u.columns[0].nullable);
        assert_eq!(u.columns[1].ty, ColumnType::Float64);
    }

    #[test]
    fn without_a_primary_key_a_unique_not_null_index_is_the_key_else_none() {
        let c = db("CREATE TABLE nokey(a, b); \
             CREATE TABLE uk(a INT, b TEXT NOT NULL, c INT NOT NULL, UNIQUE(a)); \
             CREATE UNIQUE INDEX uk_cb ON uk(c, b); \
             CREATE TABLE ci(a TEXT NOT NULL COLLATE NOCASE UNIQUE, b); \
             CREATE TABLE part(a INT NOT NULL, b); CREATE UNIQUE INDEX part_a ON part(a) WHERE a > 0;");
        let t = read_table(&c, Path::new("m"), "nokey", false).unwrap();
        assert!(t.is_keyless());
        // `UNIQUE(a)` is on a nullable column: the index on (c, b) is the key.
        let t = read_table(&c, Path::new("m"), "uk", false).unwrap();
        assert_eq!(t.key_names(), ["c", "b"]);
        // Not ordered by bytes, or partial: no key.
        assert!(
            read_table(&c, Path::new("m"), "ci", false)
                .unwrap()
                .is_keyless()
        );
        assert!(
            read_table(&c, Path::new("m"), "part", false)
                .unwrap()
                .is_keyless()
        );
    }

    #[test]
    fn keeping_storage_classes_every_column_is_dynamic_with_its_declared_type() {
        let c = db(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v VARCHAR(20), d DECIMAL(10,2), \
             p POINT, x)",
        );
        let t = read_table(&c, Path::new("m"), "t", true).unwrap();
        let cols: Vec<(&str, &ColumnType)> = t
            .columns
            .iter()
            .map(|c| (c.source_type.as_str(), &c.ty))
            .collect();
        assert_eq!(
            cols,
            [
                ("INTEGER", &ColumnType::Dynamic),
                ("VARCHAR(20)", &ColumnType::Dynamic),
                ("DECIMAL(10,2)", &ColumnType::Dynamic),
                ("POINT", &ColumnType::Dynamic),
                ("", &ColumnType::Dynamic),
            ]
        );
        assert_eq!(t.key_names(), ["id"]);
        // As declared: no NOT NULL (the rowid cannot be NULL all the same).
        assert!(t.columns[0].nullable);
    }

    #[test]
    fn unusable_tables_are_fatal_with_fixes() {
        let c = db("CREATE TABLE geo(id INTEGER PRIMARY KEY, p POINT); \
             CREATE TABLE ci(k TEXT COLLATE NOCASE PRIMARY KEY)");
        let e = read_table(&c, Path::new("m"), "geo", false).unwrap_err();
        assert!(e.message().contains("geo.p") && e.message().contains("POINT"));
        assert!(e.fix().unwrap().contains("exclude_columns = [\"geo.p\"]"));
        let e = read_table(&c, Path::new("m"), "ci", false).unwrap_err();
        assert!(e.message().contains("NOCASE"));
    }

    #[test]
    fn every_unsupported_column_is_named_and_excluded_ones_are_read_as_stored() {
        let c = db("CREATE TABLE geo(id INTEGER PRIMARY KEY, p POINT, a TEXT, g GEOMETRY)");
        let e = read_table(&c, Path::new("m"), "geo", false).unwrap_err();
        assert!(
            e.message().contains("geo.p (POINT)") && e.message().contains("geo.g (GEOMETRY)"),
            "{e}"
        );
        assert!(e.fix().unwrap().contains("[\"geo.p\", \"geo.g\"]"), "{e}");
        let selection = Selection {
            unread_columns: vec!["geo.p".into(), "geo.g".into()],
            ..Selection::default()
        };
        let t = read_selected_table(&c, Path::new("m"), "geo", &selection, false).unwrap();
        assert_eq!(t.columns[1].ty, ColumnType::Dynamic);
        assert_eq!(t.columns[3].ty, ColumnType::Dynamic);
    }
}
