//! Parts of the `CREATE TABLE` / `CREATE INDEX` text SQLite keeps in
//! `sqlite_schema.sql`, for what no pragma tells: the expressions of an
//! index on expressions, the `WHERE` of a partial index, and whether a
//! table is `WITHOUT ROWID`.
//!
//! The text is SQLite's own, verbatim as its author typed it, so it is
//! valid SQL: the scanner only has to step over string literals, quoted
//! identifiers and comments to find the parentheses and commas that
//! structure the statement.

/// The top-level parenthesized list of a `CREATE` statement (the columns of
/// a table, the indexed columns of an index) and the text after it.
#[derive(Debug, PartialEq)]
pub(crate) struct Shape<'a> {
    /// The list's items, trimmed, in order.
    pub(crate) items: Vec<&'a str>,
    /// Everything after the closing parenthesis, trimmed.
    pub(crate) tail: &'a str,
}

/// Splits `sql` at its first top-level parenthesis; `None` when it has
/// none or it is not closed.
pub(crate) fn shape(sql: &str) -> Option<Shape<'_>> {
    let mut depth = 0usize;
    let mut open = None;
    let mut cuts = Vec::new();
    for (i, b) in code_bytes(sql) {
        match b {
            b'(' => {
                if depth == 0 && open.is_none() {
                    open = Some(i);
                }
                depth += 1;
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    let start = open? + 1;
                    let mut items = Vec::new();
                    let mut from = start;
                    for &c in &cuts {
                        items.push(sql[from..c].trim());
                        from = c + 1;
                    }
                    items.push(sql[from..i].trim());
                    return Some(Shape {
                        items,
                        tail: sql[i + 1..].trim(),
                    });
                }
            }
            b',' if depth == 1 => cuts.push(i),
            _ => {}
        }
    }
    None
}

/// The predicate of a partial index: the tail of its `CREATE INDEX` after
/// `WHERE`.
pub(crate) fn index_where(tail: &str) -> Option<&str> {
    let (first, rest) = first_word(tail)?;
    first
        .eq_ignore_ascii_case("WHERE")
        .then(|| rest.trim().trim_end_matches(';').trim())
}

/// An indexed column's text without a trailing `ASC` or `DESC` (which do
/// not change what the index considers equal).
pub(crate) fn without_order(item: &str) -> &str {
    let trimmed = item.trim_end();
    for word in ["ASC", "DESC"] {
        if trimmed.len() > word.len() {
            let (head, tail) = trimmed.split_at(trimmed.len() - word.len());
            let bare = head.ends_with(|c: char| c.is_whitespace() || ")\"]`".contains(c));
            if tail.eq_ignore_ascii_case(word) && bare && in_code(item, head.len()) {
                return head.trim_end();
            }
        }
    }
    trimmed
}

/// Whether the table options after a `CREATE TABLE`'s column list include
/// `WITHOUT ROWID`.
pub(crate) fn is_without_rowid(create_table: &str) -> bool {
    let Some(shape) = shape(create_table) else {
        return false;
    };
    let words: Vec<String> = shape
        .tail
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    words
        .windows(2)
        .any(|w| w[0] == "WITHOUT" && w[1] == "ROWID")
}

fn first_word(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

/// Whether byte `at` of `sql` is outside literals and comments.
fn in_code(sql: &str, at: usize) -> bool {
    code_bytes(sql).any(|(i, _)| i == at) || at == sql.len()
}

/// The bytes of `sql` that are code, with their offsets: string literals
/// (`'…'`), quoted identifiers (`"…"`, `` `…` ``, `[…]`) and comments are
/// stepped over whole.
fn code_bytes(sql: &str) -> impl Iterator<Item = (usize, u8)> + '_ {
    let b = sql.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            let start = i;
            let close = match b[i] {
                b'\'' => Some(b'\''),
                b'"' => Some(b'"'),
                b'`' => Some(b'`'),
                b'[' => Some(b']'),
                _ => None,
            };
            if let Some(close) = close {
                i += 1;
                while i < b.len() {
                    if b[i] == close {
                        // A doubled quote is an escaped one (not inside `[…]`).
                        if close != b']' && b.get(i + 1) == Some(&close) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            if b[i..].starts_with(b"--") {
                i = sql[i..].find('\n').map_or(b.len(), |n| i + n + 1);
                continue;
            }
            if b[i..].starts_with(b"/*") {
                i = sql[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                continue;
            }
            i += 1;
            return Some((start, b[start]));
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_items_and_predicate() {
        let sql = "CREATE UNIQUE INDEX \"i(,\" ON t(lower(a) COLLATE NOCASE DESC, [b,c] , substr(x, 1, ')') ASC) \
                   WHERE a > 0 AND b <> 'x;'";
        let s = shape(sql).unwrap();
        assert_eq!(
            s.items,
            [
                "lower(a) COLLATE NOCASE DESC",
                "[b,c]",
                "substr(x, 1, ')') ASC"
            ]
        );
        assert_eq!(without_order(s.items[0]), "lower(a) COLLATE NOCASE");
        assert_eq!(without_order(s.items[1]), "[b,c]");
        assert_eq!(without_order(s.items[2]), "substr(x, 1, ')')");
        assert_eq!(without_order("\"desc\""), "\"desc\"");
        assert_eq!(without_order("'a DESC'"), "'a DESC'");
        assert_eq!(index_where(s.tail), Some("a > 0 AND b <> 'x;'"));
        assert_eq!(index_where(""), None);
        let s = shape("CREATE INDEX i ON t(a) -- WHERE (x)\n").unwrap();
        assert_eq!(index_where(s.tail), None);
    }

    #[test]
    fn without_rowid_is_read_from_the_table_options() {
        assert!(is_without_rowid(
            "CREATE TABLE t(a PRIMARY KEY, b) WITHOUT ROWID"
        ));
        assert!(is_without_rowid(
            "CREATE TABLE t(a PRIMARY KEY) STRICT, without\n rowid"
        ));
        assert!(!is_without_rowid(
            "CREATE TABLE t(a DEFAULT 'WITHOUT ROWID', \"without rowid\" /* ) WITHOUT ROWID */)"
        ));
        assert!(!is_without_rowid("CREATE TABLE t(a)"));
    }
}
