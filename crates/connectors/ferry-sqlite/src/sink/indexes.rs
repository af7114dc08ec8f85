//! Secondary indexes of a SQLite source, created on a SQLite target.
//!
//! When both ends are SQLite the sink reads the source's index definitions
//! (`CREATE INDEX` / `CREATE UNIQUE INDEX` in `sqlite_schema`, partial and
//! expression indexes included) and creates them on each target table it
//! creates itself, in the same transaction as the table. A target table
//! that already existed keeps the indexes it has. The index SQLite makes
//! for a `PRIMARY KEY` comes with the table's key; one made for a `UNIQUE`
//! constraint of the table (`sqlite_autoindex_<table>_<n>`, which has no
//! SQL of its own) becomes the same `UNIQUE (...)` table constraint of the
//! target's `CREATE TABLE`, columns, collations and order kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferry_core::{Result, TableSchema};
use rusqlite::{Connection, OpenFlags};

use crate::connection::{BUSY_TIMEOUT, db_error, ident};

/// Where the sink finds the indexes to copy: the SQLite source of the
/// pipeline.
#[derive(Debug, Clone)]
pub struct IndexSource {
    /// The source database file.
    pub path: PathBuf,
    /// Source table name of each target table whose name differs (a table
    /// renamed by the pipeline), keyed by target name.
    pub renamed: HashMap<String, String>,
}

/// One index of a source table.
#[derive(Debug, Clone, PartialEq)]
struct SourceIndex {
    name: String,
    unique: bool,
    /// Indexed table columns; `None` for an expression.
    columns: Vec<Option<String>>,
    /// Everything from the column list's `(` on: columns, collations,
    /// order, `WHERE` of a partial index.
    body: String,
}

/// The indexes of one source table.
#[derive(Debug, Default)]
pub(crate) struct SourceIndexes {
    /// `UNIQUE` constraints of the table (no SQL of their own).
    constraints: Vec<SourceIndex>,
    /// `CREATE [UNIQUE] INDEX` statements.
    indexes: Vec<SourceIndex>,
}

impl SourceIndexes {
    /// Opens the source read-only and reads the indexes of the source
    /// table that becomes `table`.
    pub(crate) fn read(from: &IndexSource, table: &TableSchema) -> Result<Self> {
        let name = &table.name.name;
        let source_name = from.renamed.get(name).unwrap_or(name);
        read(&from.path, source_name).map_err(|e| {
            db_error(
                &from.path,
                &format!("reading the indexes of {source_name}"),
                e,
            )
        })
    }

    /// `UNIQUE (...)` table constraints for the target's `CREATE TABLE`.
    pub(crate) fn constraints(&self, table: &TableSchema) -> Vec<String> {
        self.constraints
            .iter()
            .filter(|i| copied(i, table))
            .map(|i| format!("UNIQUE {}", i.body))
            .collect()
    }

    /// Creates, on `target` (inside its open transaction), the source's
    /// `CREATE INDEX` indexes on `table`. One that the target refuses is
    /// skipped with a warning: the rows are copied all the same.
    pub(crate) fn create(
        &self,
        target: &Connection,
        target_path: &Path,
        table: &TableSchema,
    ) -> Result<()> {
        let name = &table.name.name;
        for index in self.indexes.iter().filter(|i| copied(i, table)) {
            create(target, target_path, name, index)?;
        }
        Ok(())
    }
}

/// Whether the target has every column `index` uses; else a warning.
fn copied(index: &SourceIndex, table: &TableSchema) -> bool {
    let missing = index
        .columns
        .iter()
        .flatten()
        .find(|c| table.column_index(c).is_none());
    if let Some(column) = missing {
        tracing::warn!(table = %table.name.name, index = %index.name, column = %column,
            "source index not created on the target: the pipeline does not copy a column it uses");
    }
    missing.is_none()
}

fn create(target: &Connection, target_path: &Path, name: &str, index: &SourceIndex) -> Result<()> {
    let sql = create_sql(index, name);
    match target.execute_batch(&sql) {
        Ok(()) => {
            tracing::info!(table = %name, index = %index.name, "source index created on the target");
            Ok(())
        }
        // A failed statement is undone alone; the transaction, the table
        // and the rows stay.
        Err(e) if !target.is_autocommit() => {
            tracing::warn!(table = %name, index = %index.name, statement = %sql, error = %e,
                "source index not created on the target; create it by hand if it is needed");
            Ok(())
        }
        Err(e) => Err(
            db_error(target_path, &format!("creating index {}", index.name), e)
                .with("statement", sql),
        ),
    }
}

fn read(path: &Path, table: &str) -> rusqlite::Result<SourceIndexes> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    let defs: Vec<(String, String)> = c
        .prepare(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 \
             AND sql IS NOT NULL ORDER BY name",
        )?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = SourceIndexes::default();
    let constraints: Vec<String> = c
        .prepare(
            "SELECT name FROM pragma_index_list(?1) WHERE origin = 'u' AND partial = 0 \
             ORDER BY name",
        )?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for auto in constraints {
        let parts: Vec<(Option<String>, bool, String)> = c
            .prepare(
                "SELECT name, \"desc\", coll FROM pragma_index_xinfo(?1) WHERE key = 1 \
                 ORDER BY seqno",
            )?
            .query_map([&auto], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let body: Vec<String> = parts
            .iter()
            .map(|(name, desc, coll)| {
                format!(
                    "{} COLLATE {}{}",
                    ident(name.as_deref().unwrap_or_default()),
                    ident(coll),
                    if *desc { " DESC" } else { "" }
                )
            })
            .collect();
        out.constraints.push(SourceIndex {
            name: auto,
            unique: true,
            columns: parts.into_iter().map(|p| p.0).collect(),
            body: format!("({})", body.join(", ")),
        });
    }
    for (name, sql) in defs {
        let columns = c
            .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
            .query_map([&name], |r| r.get::<_, Option<String>>(0))?
            .collect::<rusqlite::Result<_>>()?;
        let Some((unique, body)) = parse_create_index(&sql) else {
            tracing::warn!(table = %table, index = %name, statement = %sql,
                "source index not understood; not created on the target");
            continue;
        };
        out.indexes.push(SourceIndex {
            name,
            unique,
            columns,
            body: body.to_owned(),
        });
    }
    Ok(out)
}

fn create_sql(index: &SourceIndex, table: &str) -> String {
    format!(
        "CREATE {}INDEX IF NOT EXISTS {} ON {} {}",
        if index.unique { "UNIQUE " } else { "" },
        ident(&index.name),
        ident(table),
        index.body
    )
}

/// Splits `CREATE [UNIQUE] INDEX [IF NOT EXISTS] [schema.]name ON table
/// (...)` into whether it is unique and the text from the column list's
/// `(` on. Identifiers may be quoted in any of SQLite's ways (`"x"`,
/// `[x]`, `` `x` ``, `'x'`), which may hold spaces and parentheses.
fn parse_create_index(sql: &str) -> Option<(bool, &str)> {
    let mut rest = sql.trim_start();
    let mut word = |expect: Option<&str>| -> Option<String> {
        let (token, after) = token(rest)?;
        if let Some(e) = expect
            && !token.eq_ignore_ascii_case(e)
        {
            return None;
        }
        rest = after.trim_start();
        Some(token.to_owned())
    };
    word(Some("CREATE"))?;
    let mut next = word(None)?;
    let unique = next.eq_ignore_ascii_case("UNIQUE");
    if unique {
        next = word(None)?;
    }
    if !next.eq_ignore_ascii_case("INDEX") {
        return None;
    }
    let mut next = word(None)?;
    if next.eq_ignore_ascii_case("IF") {
        word(Some("NOT"))?;
        word(Some("EXISTS"))?;
        next = word(None)?;
    }
    // `next` is the index name, possibly followed by `.name`.
    let _ = next;
    let mut next = word(None)?;
    if next == "." {
        word(None)?;
        next = word(None)?;
    }
    if !next.eq_ignore_ascii_case("ON") {
        return None;
    }
    word(None)?; // the table
    rest.starts_with('(').then_some((unique, rest))
}

/// The first token of `s` (no leading blanks): a quoted identifier, a
/// word, or one other character; and what follows it.
fn token(s: &str) -> Option<(&str, &str)> {
    let first = s.chars().next()?;
    let close = match first {
        '"' => Some('"'),
        '`' => Some('`'),
        '\'' => Some('\''),
        '[' => Some(']'),
        _ => None,
    };
    if let Some(close) = close {
        // A doubled closing quote stands for itself (not inside [...]).
        let mut i = 1;
        while i < s.len() {
            if s[i..].starts_with(close) {
                if close != ']' && s[i + 1..].starts_with(close) {
                    i += 2;
                    continue;
                }
                return Some((&s[..=i], &s[i + 1..]));
            }
            i += s[i..].chars().next().map_or(1, char::len_utf8);
        }
        return None;
    }
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .map_or(s.len(), |(i, _)| i);
    if end == 0 {
        Some((&s[..first.len_utf8()], &s[first.len_utf8()..]))
    } else {
        Some((&s[..end], &s[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_index_statements_split_at_the_column_list() {
        assert_eq!(
            parse_create_index("CREATE INDEX t_v ON t(v)"),
            Some((false, "(v)"))
        );
        assert_eq!(
            parse_create_index(
                "create unique index if not exists \"a (b)\" on [my table] (\"c\" COLLATE NOCASE DESC, lower(d)) WHERE d > 0"
            ),
            Some((true, "(\"c\" COLLATE NOCASE DESC, lower(d)) WHERE d > 0"))
        );
        assert_eq!(
            parse_create_index("CREATE INDEX main.\"x\"\"y\" ON `t` ( a )"),
            Some((false, "( a )"))
        );
        assert_eq!(parse_create_index("CREATE TABLE t(a)"), None);
        assert_eq!(parse_create_index("CREATE INDEX \"open ON t(a)"), None);
    }

    #[test]
    fn indexes_are_recreated_on_the_target_table_name() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("s.db");
        let c = Connection::open(&src).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT UNIQUE, b, gone);
             CREATE INDEX \"t (b)\" ON t(b DESC) WHERE b IS NOT NULL;
             CREATE UNIQUE INDEX t_lower ON t(lower(a), b);
             CREATE INDEX t_gone ON t(gone);",
        )
        .unwrap();
        let found = read(&src, "t").unwrap();
        let names: Vec<&str> = found.indexes.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["t (b)", "t_gone", "t_lower"]);
        assert_eq!(found.indexes[2].columns, [None, Some("b".to_owned())]);
        assert_eq!(
            create_sql(&found.indexes[0], "u"),
            "CREATE INDEX IF NOT EXISTS \"t (b)\" ON \"u\" (b DESC) WHERE b IS NOT NULL"
        );
        // On a target table `u` without column `gone`: the other three.
        let dst = Connection::open(dir.path().join("d.db")).unwrap();
        let table = TableSchema {
            name: ferry_core::TableName::bare("u"),
            columns: ["id", "a", "b"]
                .iter()
                .map(|n| ferry_core::Column {
                    name: (*n).into(),
                    ty: ferry_core::ColumnType::Dynamic,
                    nullable: true,
                    source_type: String::new(),
                    user_type: None,
                })
                .collect(),
            key: vec![0],
            version: 1,
            key_deferrable: false,
        };
        let from = IndexSource {
            path: src.clone(),
            renamed: HashMap::from([("u".to_owned(), "t".to_owned())]),
        };
        let found = SourceIndexes::read(&from, &table).unwrap();
        assert_eq!(
            found.constraints(&table),
            ["UNIQUE (\"a\" COLLATE \"BINARY\")"]
        );
        dst.execute_batch("BEGIN; CREATE TABLE u(id INTEGER PRIMARY KEY, a TEXT, b)")
            .unwrap();
        found.create(&dst, Path::new("d"), &table).unwrap();
        dst.execute_batch("COMMIT").unwrap();
        let made: Vec<(String, bool, bool)> = dst
            .prepare("SELECT name, \"unique\", partial FROM pragma_index_list('u') ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            made,
            [
                ("t (b)".to_owned(), false, true),
                ("t_lower".to_owned(), true, false),
            ]
        );
    }
}
