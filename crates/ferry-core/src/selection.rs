//! Which source tables a pipeline replicates (include/exclude globs), and
//! which of their columns nothing downstream reads.

use crate::schema::TableName;

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
}
