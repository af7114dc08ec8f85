//! Which source tables a pipeline replicates (include/exclude globs), and
//! which of their columns nothing downstream reads, and the rows the
//! pipeline's filters leave out (which a source may ask about a row it
//! cannot wholly decode).

use std::sync::Arc;

use crate::schema::{TableName, TableSchema};
use crate::value::Value;

/// Include/exclude patterns over table names (`*` any run, `?` one char).
/// A pattern with a dot matches `namespace.name`; without, the bare name.
/// A table is selected when it matches an include (or there are none) and
/// no exclude. Ferry's own tables (`_ferry_*`) are never selected.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Columns no target gets and no filter reads, as `table.column`
    /// (`name.column` or `ns.name.column`, as `exclude_columns` spells
    /// them). A source may leave such a value unread: one it cannot decode
    /// is then no error (see [`Selection::unread`]).
    pub unread_columns: Vec<String>,
    /// The pipeline's row filters, for a source that meets a value it
    /// cannot decode: when the filter leaves the row out whatever that value
    /// is, the row is no error (see [`Selection::leaves_out`]).
    pub row_filter: Option<Arc<dyn RowFilter>>,
}

/// The rows a pipeline's filters leave out, as a source sees them.
pub trait RowFilter: Send + Sync + std::fmt::Debug {
    /// Whether the filter of `table` leaves `row` out. Cells the source
    /// could not decode are [`Value::Unchanged`]; a filter whose answer
    /// depends on one keeps the row.
    fn leaves_out(&self, table: &TableSchema, row: &[Value]) -> bool;
}

impl Selection {
    pub fn selects(&self, table: &TableName) -> bool {
        if table.name.starts_with("_ferry_") || table.name.starts_with("sqlite_") {
            return false;
        }
        let matches = |p: &String| {
            if p.contains('.') {
                glob_match(p, &table.to_string())
            } else {
                glob_match(p, &table.name)
            }
        };
        (self.include.is_empty() || self.include.iter().any(matches))
            && !self.exclude.iter().any(matches)
    }

    /// Whether nothing downstream reads `column` of `table` (an entry of
    /// [`unread_columns`](Self::unread_columns) names it, by the table's
    /// bare or namespaced name).
    pub fn unread(&self, table: &TableName, column: &str) -> bool {
        self.unread_columns.iter().any(|entry| {
            entry
                .rsplit_once('.')
                .is_some_and(|(t, c)| c == column && (t == table.name || t == table.to_string()))
        })
    }

    /// Whether the pipeline's filter leaves out `row` of `table`, whose
    /// undecodable cells are [`Value::Unchanged`].
    pub fn leaves_out(&self, table: &TableSchema, row: &[Value]) -> bool {
        self.row_filter
            .as_ref()
            .is_some_and(|f| f.leaves_out(table, row))
    }
}

/// The way to skip one row from now on: a filter that leaves out its key
/// (`names` the key columns, `key` their values), which the pipeline file
/// then records; what a target holds of the row stays as it is. `None` for
/// a key a filter cannot name (a type other than integers and text, a
/// column name that needs quoting).
pub fn skip_row_fix(table: &str, names: &[&str], key: &[Value]) -> Option<String> {
    let parts = names
        .iter()
        .zip(key)
        .map(|(name, v)| match v {
            Value::Int(i) => Some(format!("{name} = {i}")),
            Value::Text(s) => Some(format!("{name} = '{}'", s.replace('\'', "''"))),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    if names
        .iter()
        .any(|n| !n.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        return None;
    }
    let expr = format!("NOT ({})", parts.join(" AND "));
    Some(format!(
        "skip this row's changes from now on with `filter = {{ \"{table}\" = \"{}\" }}` \
         under `[tables]` (the pipeline file records it; what the target holds of the row \
         stays as it is; remove the filter and run `ferry resync` on the table to copy it \
         again)",
        expr.replace('"', "\\\"")
    ))
}

/// Glob match with `*` and `?`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("acc*", "accounts"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*s", "accounts"));
    }

    #[test]
    fn include_exclude() {
        let s = Selection {
            include: vec!["public.*".into()],
            exclude: vec!["*_log".into()],
            unread_columns: vec!["users.secret".into(), "other.t.c".into()],
            row_filter: None,
        };
        let users = TableName::new(Some("public"), "users");
        assert!(s.unread(&users, "secret") && !s.unread(&users, "name"));
        assert!(s.unread(&TableName::new(Some("other"), "t"), "c"));
        assert!(!s.unread(&TableName::new(Some("public"), "t"), "c"));
        assert!(s.selects(&TableName::new(Some("public"), "users")));
        assert!(!s.selects(&TableName::new(Some("public"), "audit_log")));
        assert!(!s.selects(&TableName::new(Some("other"), "users")));
        assert!(!Selection::default().selects(&TableName::bare("_ferry_changes")));
    }

    #[test]
    fn a_refused_row_can_be_skipped_by_a_filter_on_its_key() {
        let key = [Value::Int(7), Value::Text("it's".into())];
        let skip = skip_row_fix("public.m", &["id", "k"], &key).unwrap();
        assert!(
            skip.contains(r#"filter = { "public.m" = "NOT (id = 7 AND k = 'it''s')" }"#),
            "{skip}"
        );
        // What a filter cannot name is not offered.
        assert_eq!(skip_row_fix("m", &["d"], &[Value::Date(1)]), None);
        assert_eq!(skip_row_fix("m", &["a b"], &[Value::Int(1)]), None);
    }
}
