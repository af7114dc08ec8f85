//! Rows that `REPLACE` conflict resolution removes without firing a delete
//! trigger (ADR 0010).
//!
//! `INSERT OR REPLACE`, `REPLACE INTO`, `UPDATE OR REPLACE` and an upsert
//! whose statement says `OR REPLACE` delete every row the new row conflicts
//! with on a UNIQUE constraint (the key, another unique index, or the rowid
//! given explicitly), and SQLite fires delete triggers for those deletions
//! only when the *writer* turned `recursive_triggers` on. So the triggers
//! capture them themselves, through a *pending* table
//! `_ferry_pending_<table>`:
//!
//! - `_bi` (BEFORE INSERT) and `_bu` (BEFORE UPDATE, only when a column a
//!   unique index, the key or the rowid reads changes) record every row
//!   the new row conflicts with, by its identity (the key, or the rowid of
//!   a table without one) and its image, tagged with an *owner*: `'i'` for
//!   inserts, the updated row's rowid (or old key) for updates. A row
//!   already pending is re-tagged, never recorded twice.
//! - The AFTER INSERT / AFTER UPDATE triggers, before they append the
//!   row's own change, turn the owner's pending rows that are *gone* into
//!   `D` change rows (a row with the new row's identity is gone: the new
//!   row replaced it) and drop the owner's pending rows. Only this makes a
//!   pending row a delete: a statement that ignored the row (`OR IGNORE`,
//!   `DO NOTHING`), updated the conflicting row instead (`DO UPDATE`) or
//!   failed fires no AFTER trigger for it, and a row still there is not
//!   reported deleted whoever looks. Being in the same trigger, the delete
//!   of a replaced row always precedes the insert that replaced it.
//! - AFTER UPDATE also moves a pending row that the update changed to its
//!   new identity and image (a foreign-key action may update a pending
//!   row of the same table before its removal), and AFTER DELETE drops the
//!   pending row of a deleted row, whose delete it captures itself (a
//!   writer with `recursive_triggers` on gets one `D`, not two).
//!
//! A pending row outlives its statement only when no AFTER trigger of its
//! owner fired; the next insert that conflicts with anything (owner
//! `'i'`) or the next update of the same row clears it, and the source
//! clears every pending table when it records an ack (its own write
//! transaction: no statement of another writer can be half done then).

use ferry_core::TableSchema;
use rusqlite::{Connection, OptionalExtension};

use super::NOW_MICROS;
use super::triggers::{Trigger, image};
use crate::connection::{ident, literal};
use crate::ddl;

/// The BEFORE triggers this module adds to a table, by name suffix.
pub(crate) const SUFFIXES: [&str; 2] = ["bi", "bu"];

/// What a table's capture needs so that rows `REPLACE` removes are captured.
pub(crate) struct Displacement {
    pub(crate) create_pending: String,
    /// `_bi` and `_bu`.
    pub(crate) before: Vec<Trigger>,
    /// Statements the AFTER INSERT / UPDATE / DELETE triggers run before
    /// they append the row's change.
    pub(crate) after_insert: String,
    pub(crate) after_update: String,
    pub(crate) after_delete: String,
    /// The conflict condition of each unique index besides the key, as
    /// written into `_bi`: installed triggers cover an index when their
    /// text contains it.
    pub(crate) conditions: Vec<String>,
    /// A row of the table conflicts with NEW: any of `conditions`, equal
    /// keys, or the rowid.
    #[cfg(test)]
    pub(crate) conflicts: String,
}

/// The pending table of `table`.
pub(crate) fn pending_table(table: &str) -> String {
    format!("_ferry_pending_{table}")
}

/// One indexed term of a unique index.
enum Term {
    Column { name: String, coll: String },
    Expr(String),
}

struct UniqueIndex {
    terms: Vec<Term>,
    predicate: Option<String>,
}

/// What `table` needs, or `None` for a table without a key whose every
/// rowid name is a column (its rows cannot be told apart).
pub(crate) fn plan(
    conn: &Connection,
    table: &TableSchema,
) -> rusqlite::Result<Option<Displacement>> {
    let name = &table.name.name;
    let create: String = conn.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    let without_rowid = ddl::is_without_rowid(&create);
    let has_column = |n: &str| table.columns.iter().any(|c| c.name.eq_ignore_ascii_case(n));
    // The rowid under a name no column shadows.
    let rowid = (!without_rowid)
        .then(|| {
            ["rowid", "_rowid_", "oid"]
                .into_iter()
                .find(|n| !has_column(n))
        })
        .flatten();
    let keyed = !table.is_keyless();
    let alias_key = keyed && !without_rowid && is_rowid_alias(conn, table)?;
    let identity: Vec<String> = if keyed {
        table.key_names().iter().map(|k| ident(k)).collect()
    } else {
        match rowid {
            Some(r) => vec![r.to_owned()],
            None => return Ok(None),
        }
    };

    let indexes: Vec<UniqueIndex> = unique_indexes(conn, name)?
        .into_iter()
        // Rows equal on such an index have equal keys: the key's own
        // condition finds them.
        .filter(|u| !(keyed && covers_key(u, table)))
        .collect();
    let t = ident(name);
    let new_values = new_values(conn, table)?;
    let conditions: Vec<String> = indexes
        .iter()
        .map(|u| index_condition(u, &t, &new_values))
        .collect();
    let mut conflicts = conditions.clone();
    if keyed {
        let key = table
            .key_names()
            .iter()
            .map(|k| {
                let v = new_value(&new_values, k);
                format!("{t}.{} COLLATE BINARY = {v}", ident(k))
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        conflicts.push(format!("({key})"));
    }
    // A rowid given explicitly replaces the row that had it (before an
    // insert that lets SQLite pick it, NEW.rowid is -1).
    let rowid_conflict = rowid.filter(|_| !alias_key);
    if let Some(r) = rowid_conflict {
        conflicts.push(format!("{t}.{r} = NEW.{r}"));
    }
    let s = Sql {
        table,
        t: t.clone(),
        pending: ident(&pending_table(name)),
        identity,
        conflicts: conflicts.join(" OR "),
    };
    // The updated row itself, and who owns what its update records.
    let (own, owner) = match rowid {
        Some(r) => (format!("{t}.{r} = OLD.{r}"), format!("OLD.{r}")),
        None => (
            s.same_identity(&t, "OLD"),
            format!("'u'||{}", key_image(table, "OLD")),
        ),
    };
    let watched = watched_columns(&indexes, table, rowid_conflict);
    // Checked first: most inserts conflict with nothing, and the check
    // costs less than the statement that would find nothing to record.
    let any_conflict = format!("EXISTS (SELECT 1 FROM {t} WHERE {})", s.conflicts);
    let before = vec![
        Trigger::new(
            name,
            "bi",
            "BEFORE INSERT",
            Some(&any_conflict),
            // What an earlier insert left (it was ignored, or updated the
            // row instead) is settled: the rows are still there.
            &format!(
                "DELETE FROM {} WHERE owner = 'i'; {}",
                s.pending,
                s.record("'i'", "")
            ),
        ),
        Trigger::new(
            name,
            "bu",
            "BEFORE UPDATE",
            Some(&watched),
            &s.record(&owner, &format!(" AND NOT ({own})")),
        ),
    ];
    let slots: Vec<String> = (0..s.identity.len()).map(|i| format!("i{i}")).collect();
    Ok(Some(Displacement {
        // Looked up by owner in every AFTER trigger: an index keeps that a
        // seek however many leftovers an `UPDATE OR IGNORE` workload leaves
        // until the next ack.
        create_pending: format!(
            "CREATE TABLE IF NOT EXISTS {p}(owner, old_row TEXT NOT NULL, {}, UNIQUE({})); \
             CREATE INDEX IF NOT EXISTS {} ON {p}(owner)",
            slots.join(", "),
            slots.join(", "),
            ident(&format!("{}_owner", pending_table(name))),
            p = s.pending,
        ),
        before,
        after_insert: s.confirm("'i'"),
        after_update: format!("{} {}", s.confirm(&owner), s.follow()),
        after_delete: format!(
            "DELETE FROM {} WHERE {};",
            s.pending,
            s.pending_is(&s.identity_of("OLD"))
        ),
        conditions,
        #[cfg(test)]
        conflicts: s.conflicts.clone(),
    }))
}

/// Text of the statements, shared by the triggers.
struct Sql<'a> {
    table: &'a TableSchema,
    /// The captured table, quoted.
    t: String,
    pending: String,
    /// How a row is identified: its key columns, or the rowid.
    identity: Vec<String>,
    /// A row of the table conflicts with NEW on some unique constraint.
    conflicts: String,
}

impl Sql<'_> {
    fn identity_of(&self, prefix: &str) -> Vec<String> {
        self.identity
            .iter()
            .map(|c| format!("{prefix}.{c}"))
            .collect()
    }

    /// The pending row whose identity is `values`.
    fn pending_is(&self, values: &[String]) -> String {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("i{i} = {v}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Row `a` of the table has the same identity as `b`'s. Keys compare
    /// by bytes, as their index does (a column may be declared with
    /// another collation).
    fn same_identity(&self, a: &str, b: &str) -> String {
        self.identity
            .iter()
            .map(|c| format!("{a}.{c} COLLATE BINARY = {b}.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Records the rows NEW conflicts with (but for `except`) as `owner`'s.
    fn record(&self, owner: &str, except: &str) -> String {
        let slots: Vec<String> = (0..self.identity.len()).map(|i| format!("i{i}")).collect();
        format!(
            "INSERT OR REPLACE INTO {}(owner, old_row, {}) SELECT {owner}, {}, {} FROM {} WHERE ({}){except};",
            self.pending,
            slots.join(", "),
            image(self.table, &self.t),
            self.identity_of(&self.t).join(", "),
            self.t,
            self.conflicts
        )
    }

    /// Captures `owner`'s pending rows that are gone as deletes, then
    /// forgets `owner`'s pending rows. A pending row with NEW's identity is
    /// gone whatever the table holds now: NEW replaced it.
    fn confirm(&self, owner: &str) -> String {
        let p = &self.pending;
        let lookup = self
            .identity
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}.{c} COLLATE BINARY = {p}.i{i}", self.t))
            .collect::<Vec<_>>()
            .join(" AND ");
        let replaced = self.pending_is(&self.identity_of("NEW"));
        format!(
            "INSERT INTO _ferry_changes(tbl, op, old_row, new_row, ts) \
             SELECT {}, 'D', old_row, NULL, {NOW_MICROS} FROM {p} WHERE owner = {owner} \
             AND ({replaced} OR NOT EXISTS (SELECT 1 FROM {} WHERE {lookup})); \
             DELETE FROM {p} WHERE owner = {owner};",
            literal(&self.table.name.name),
            self.t
        )
    }

    /// A pending row the update changed follows it to its new identity and
    /// image. The pending row of the row that had the new identity was the
    /// update's own and is gone by now; should one remain, the pending row
    /// stays where it is rather than fail the writer's statement. (Not
    /// `UPDATE OR REPLACE`: that conflict mode costs every update about
    /// half the capture's own work, even when nothing matches.)
    fn follow(&self) -> String {
        let (old, new) = (
            self.pending_is(&self.identity_of("OLD")),
            self.pending_is(&self.identity_of("NEW")),
        );
        let set: Vec<String> = self
            .identity_of("NEW")
            .iter()
            .enumerate()
            .map(|(i, v)| format!("i{i} = {v}"))
            .collect();
        format!(
            "UPDATE {p} SET {}, old_row = {} WHERE {old} \
             AND NOT EXISTS (SELECT 1 FROM {p} WHERE {new} AND NOT ({old}));",
            set.join(", "),
            image(self.table, "NEW"),
            p = self.pending
        )
    }
}

/// `quote()` of the key columns of `prefix`, joined by `,`.
fn key_image(table: &TableSchema, prefix: &str) -> String {
    table
        .key_names()
        .iter()
        .map(|k| format!("quote({prefix}.{})", ident(k)))
        .collect::<Vec<_>>()
        .join("||','||")
}

/// `NEW` conflicts with a row of `t` on `u`: equal on every term under the
/// index's collation, and the row is in the index (a partial index's
/// predicate; NEW's side of it is left out, so this may name rows that do
/// not conflict, which `_ri`/`_ru` then find still there). An expression is
/// computed for NEW by a subquery whose columns are NEW's, so the index's
/// own text serves unchanged.
fn index_condition(u: &UniqueIndex, t: &str, new_values: &[(String, String)]) -> String {
    let new_value = |name: &str| new_value(new_values, name);
    let new_row = || {
        new_values
            .iter()
            .map(|(n, v)| format!("{v} AS {}", ident(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts: Vec<String> = u
        .terms
        .iter()
        .map(|term| match term {
            Term::Column { name, coll } => format!(
                "{t}.{} COLLATE {} = {}",
                ident(name),
                ident(coll),
                new_value(name)
            ),
            Term::Expr(e) => format!("({e}) = (SELECT {e} FROM (SELECT {}))", new_row()),
        })
        .collect();
    if let Some(p) = &u.predicate {
        parts.push(format!("({p})"));
    }
    format!("({})", parts.join(" AND "))
}

/// The value column `name` of the new row will have, as SQL on `NEW`.
fn new_value(new_values: &[(String, String)], name: &str) -> String {
    new_values
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| format!("NEW.{}", ident(name)), |(_, v)| v.clone())
}

/// Each column with the value the new row will have, as SQL on `NEW`:
/// REPLACE writes a NOT NULL column's default in place of NULL, after the
/// BEFORE triggers ran, so for such a column NEW's NULL stands for its
/// default.
fn new_values(conn: &Connection, table: &TableSchema) -> rusqlite::Result<Vec<(String, String)>> {
    let defaults: Vec<(String, bool, Option<String>)> = conn
        .prepare("SELECT name, \"notnull\", dflt_value FROM pragma_table_xinfo(?1)")?
        .query_map([&table.name.name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(table
        .columns
        .iter()
        .map(|c| {
            let new = format!("NEW.{}", ident(&c.name));
            let value = match defaults.iter().find(|d| d.0 == c.name) {
                Some((_, true, Some(default))) => format!("COALESCE({new}, ({default}))"),
                _ => new,
            };
            (c.name.clone(), value)
        })
        .collect())
}

/// `NEW.c IS NOT OLD.c OR …` over the columns whose change can make a
/// conflict: the key, the indexed columns, every column when an index has
/// an expression or a predicate, and the rowid when it can conflict.
fn watched_columns(indexes: &[UniqueIndex], table: &TableSchema, rowid: Option<&str>) -> String {
    let all = indexes
        .iter()
        .any(|u| u.predicate.is_some() || u.terms.iter().any(|t| matches!(t, Term::Expr(_))));
    let mut cols: Vec<String> = Vec::new();
    for (i, c) in table.columns.iter().enumerate() {
        let indexed = table.is_key_column(i)
            || indexes.iter().any(|u| {
                u.terms
                    .iter()
                    .any(|t| matches!(t, Term::Column { name, .. } if name == &c.name))
            });
        if all || indexed {
            cols.push(ident(&c.name));
        }
    }
    cols.extend(rowid.map(str::to_owned));
    cols.iter()
        .map(|c| format!("NEW.{c} IS NOT OLD.{c}"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Every key column is a term compared by bytes: rows equal on the index
/// have equal keys.
fn covers_key(u: &UniqueIndex, table: &TableSchema) -> bool {
    table.key_names().iter().all(|k| {
        u.terms.iter().any(|t| {
            matches!(t, Term::Column { name, coll }
                if name == k && coll.eq_ignore_ascii_case("BINARY"))
        })
    })
}

/// The table's one-column key is its `INTEGER PRIMARY KEY`, that is the
/// rowid: SQLite keeps no separate index for it.
fn is_rowid_alias(conn: &Connection, table: &TableSchema) -> rusqlite::Result<bool> {
    let name = &table.name.name;
    let pk: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0")?
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let pk_index: Option<String> = conn
        .query_row(
            "SELECT name FROM pragma_index_list(?1) WHERE origin = 'pk'",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(pk.len() == 1 && pk_index.is_none() && table.key_names() == [pk[0].as_str()])
}

fn unique_indexes(conn: &Connection, table: &str) -> rusqlite::Result<Vec<UniqueIndex>> {
    let list: Vec<(String, bool)> = conn
        .prepare(
            "SELECT name, partial FROM pragma_index_list(?1) WHERE \"unique\" = 1 ORDER BY name",
        )?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(list.len());
    for (index, partial) in list {
        // (column number, -2 for an expression; column name; collation)
        let cols: Vec<(i64, Option<String>, String)> = conn
            .prepare(
                "SELECT cid, name, coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
            )?
            .query_map([&index], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let needs_text = partial || cols.iter().any(|c| c.0 < 0 || c.1.is_none());
        let text: Option<String> = if needs_text {
            conn.query_row(
                "SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?1",
                [&index],
                |r| r.get(0),
            )
            .optional()?
            .flatten()
        } else {
            None
        };
        let shape = text.as_deref().and_then(ddl::shape);
        let unreadable = || unreadable_index(&index, text.as_deref());
        if needs_text && shape.as_ref().is_none_or(|s| s.items.len() != cols.len()) {
            return Err(unreadable());
        }
        let mut terms = Vec::with_capacity(cols.len());
        for (n, (_, name, coll)) in cols.into_iter().enumerate() {
            terms.push(match name {
                Some(name) => Term::Column { name, coll },
                None => {
                    let item = shape.as_ref().ok_or_else(unreadable)?.items[n];
                    Term::Expr(ddl::without_order(item).to_owned())
                }
            });
        }
        let predicate = if partial {
            let tail = shape.as_ref().map_or("", |s| s.tail);
            Some(ddl::index_where(tail).ok_or_else(unreadable)?.to_owned())
        } else {
            None
        };
        out.push(UniqueIndex { terms, predicate });
    }
    Ok(out)
}

fn unreadable_index(index: &str, text: Option<&str>) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some(format!(
            "cannot read the terms of unique index {index} from its definition {text:?}"
        )),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// `sql` with every `NEW.<column>` made a parameter.
    fn with_parameters(sql: &str) -> String {
        let mut out = String::new();
        let mut rest = sql;
        while let Some(at) = rest.find("NEW.") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 4..];
            let end = if let Some(quoted) = after.strip_prefix('"') {
                quoted.find('"').map_or(after.len(), |e| e + 2)
            } else {
                after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len())
            };
            out.push('?');
            rest = &after[end..];
        }
        out.push_str(rest);
        out
    }

    /// The BEFORE triggers look up the rows a new row conflicts with on
    /// every write: each lookup must use an index (a scan would make every
    /// write as slow as the table is large), whatever the index's
    /// collation, expression or predicate.
    #[test]
    fn conflict_lookups_use_indexes() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE a(id INTEGER PRIMARY KEY, email TEXT UNIQUE, n INT NOT NULL DEFAULT 0);
             CREATE TABLE b(k TEXT COLLATE NOCASE NOT NULL, slug TEXT NOT NULL DEFAULT 'x', v INT);
             CREATE UNIQUE INDEX b_k ON b(k COLLATE BINARY);
             CREATE UNIQUE INDEX b_slug ON b(lower(slug), v DESC) WHERE v > 0;
             CREATE TABLE w(x INT, y TEXT COLLATE NOCASE UNIQUE, z, PRIMARY KEY(x, z)) WITHOUT ROWID;
             CREATE TABLE t(p TEXT PRIMARY KEY, q INT UNIQUE);
             CREATE TABLE n(p TEXT UNIQUE, q);",
        )
        .unwrap();
        for name in ["a", "b", "w", "t", "n"] {
            let table = crate::schema::read_table(&c, Path::new("m"), name, false).unwrap();
            let d = plan(&c, &table).unwrap().unwrap();
            let sql = format!(
                "EXPLAIN QUERY PLAN SELECT 1 FROM {} WHERE {}",
                ident(name),
                with_parameters(&d.conflicts)
            );
            // Unbound parameters are NULL; the plan does not depend on them.
            let mut stmt = c.prepare(&sql).unwrap();
            let mut rows = stmt.raw_query();
            let mut steps: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get(3).unwrap());
            }
            assert!(
                !steps.iter().any(|s| s.starts_with(&format!("SCAN {name}"))),
                "{name}: {steps:?}\n{sql}"
            );
        }
    }

    #[test]
    fn which_conflicts_each_table_looks_for() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE a(id INTEGER PRIMARY KEY, v);
             CREATE TABLE t(k TEXT PRIMARY KEY, u INT, UNIQUE(k, u));
             CREATE TABLE n(p TEXT, q);",
        )
        .unwrap();
        let conflicts = |name: &str| {
            let table = crate::schema::read_table(&c, Path::new("m"), name, false).unwrap();
            plan(&c, &table).unwrap().unwrap().conflicts
        };
        // The key only: the rowid is the key.
        assert_eq!(conflicts("a"), "(\"a\".\"id\" COLLATE BINARY = NEW.\"id\")");
        // An index containing the key adds nothing; the rowid may be given.
        assert_eq!(
            conflicts("t"),
            "(\"t\".\"k\" COLLATE BINARY = NEW.\"k\") OR \"t\".rowid = NEW.rowid"
        );
        // Without a key: the rowid.
        assert_eq!(conflicts("n"), "\"n\".rowid = NEW.rowid");
    }
}
