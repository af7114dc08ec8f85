//! The SQL text of the writer's statements, values as literals
//! ([`super::encode`]). Each builder appends to a buffer and stops at a
//! byte budget, so one statement carries as many rows as fit in one
//! packet.

use ferry_core::value::display_key;
use ferry_core::{Error, KeyRange, Result, TableSchema, Value};

use super::encode::push_literal;
use super::target::Plan;

/// Appends the literal of `row[i]` (the column `i` of `t`); `key` names
/// the row in the error when the column cannot hold it.
pub(crate) fn push_value(
    out: &mut String,
    plan: &Plan,
    t: &TableSchema,
    i: usize,
    v: &Value,
    key: &dyn Fn() -> Vec<Value>,
) -> Result<()> {
    push_literal(out, v, plan.fits[i]).map_err(|why| {
        let column = &t.columns[i].name;
        Error::data(format!(
            "cannot write column {column} of table {} at key {}: {why}",
            plan.display,
            display_key(&key())
        ))
        .with("table", plan.display.clone())
        .with("key", display_key(&key()))
        .with("column", column.clone())
        .with_fix(
            "change the value at the source, or widen the target column (ALTER TABLE ... MODIFY) \
             and restart the pipeline",
        )
    })
}

/// `INSERT INTO t (c1, c2) VALUES `
pub(crate) fn insert_head(plan: &Plan) -> String {
    format!(
        "INSERT INTO {} ({}) VALUES ",
        plan.table,
        plan.cols.join(", ")
    )
}

/// Appends `(v1, v2), (...)` for `rows[start..]` until `out` holds
/// `budget` bytes (one row at least); returns where it stopped.
pub(crate) fn push_rows(
    out: &mut String,
    plan: &Plan,
    t: &TableSchema,
    rows: &[&Vec<Value>],
    start: usize,
    budget: usize,
) -> Result<usize> {
    let mut n = start;
    while n < rows.len() && (n == start || out.len() < budget) {
        let row = rows[n];
        if n > start {
            out.push(',');
        }
        out.push('(');
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_value(out, plan, t, i, v, &|| t.key_of(row))?;
        }
        out.push(')');
        n += 1;
    }
    Ok(n)
}

/// ` ON DUPLICATE KEY UPDATE c = VALUES(c), ...` for every column outside
/// the key (a table of key columns only updates its first key column to
/// itself: a duplicate is then no error and no change).
pub(crate) fn on_duplicate(plan: &Plan, t: &TableSchema) -> String {
    let set: Vec<String> = (0..plan.cols.len())
        .filter(|&i| !t.is_key_column(i))
        .map(|i| format!("{0} = VALUES({0})", plan.cols[i]))
        .collect();
    if set.is_empty() {
        let k = &plan.cols[t.key[0]];
        return format!(" ON DUPLICATE KEY UPDATE {k} = {k}");
    }
    format!(" ON DUPLICATE KEY UPDATE {}", set.join(", "))
}

/// `k = v AND ...` for a key (its values in key order).
pub(crate) fn push_key_match(
    out: &mut String,
    plan: &Plan,
    t: &TableSchema,
    key: &[Value],
) -> Result<()> {
    for (n, (&i, v)) in t.key.iter().zip(key).enumerate() {
        if n > 0 {
            out.push_str(" AND ");
        }
        out.push_str(&plan.cols[i]);
        out.push_str(" = ");
        push_value(out, plan, t, i, v, &|| key.to_vec())?;
    }
    Ok(())
}

/// `DELETE FROM t WHERE` the keys `keys[start..]` (until `budget` bytes):
/// `k IN (...)` for a one-column key, `(k1 = a AND k2 = b) OR ...`
/// otherwise, both served by the primary key. Returns where it stopped.
pub(crate) fn push_delete(
    out: &mut String,
    plan: &Plan,
    t: &TableSchema,
    keys: &[Vec<Value>],
    start: usize,
    budget: usize,
) -> Result<usize> {
    out.push_str("DELETE FROM ");
    out.push_str(&plan.table);
    out.push_str(" WHERE ");
    let single = t.key.len() == 1;
    if single {
        out.push_str(&plan.cols[t.key[0]]);
        out.push_str(" IN (");
    }
    let mut n = start;
    while n < keys.len() && (n == start || out.len() < budget) {
        let key = &keys[n];
        if single {
            if n > start {
                out.push(',');
            }
            push_value(out, plan, t, t.key[0], &key[0], &|| key.clone())?;
        } else {
            if n > start {
                out.push_str(" OR ");
            }
            out.push('(');
            push_key_match(out, plan, t, key)?;
            out.push(')');
        }
        n += 1;
    }
    if single {
        out.push(')');
    }
    Ok(n)
}

/// `UPDATE t SET c = v, ... WHERE <key of where_key>` for the columns of
/// `row` that are not `Unchanged` (key columns too when `with_key`: a
/// row moved to a new key). `None` when there is nothing to set.
pub(crate) fn update_by_key(
    plan: &Plan,
    t: &TableSchema,
    row: &[Value],
    where_key: &[Value],
    with_key: bool,
) -> Result<Option<String>> {
    let mut out = format!("UPDATE {} SET ", plan.table);
    let mut any = false;
    for (i, v) in row.iter().enumerate() {
        if matches!(v, Value::Unchanged) || (!with_key && t.is_key_column(i)) {
            continue;
        }
        if any {
            out.push_str(", ");
        }
        any = true;
        out.push_str(&plan.cols[i]);
        out.push_str(" = ");
        push_value(&mut out, plan, t, i, v, &|| where_key.to_vec())?;
    }
    if !any {
        return Ok(None);
    }
    out.push_str(" WHERE ");
    push_key_match(&mut out, plan, t, where_key)?;
    Ok(Some(out))
}

/// `c1 <=> v1 AND ...` over the columns of a keyless row's image that are
/// not `Unchanged` (`<=>` matches NULL to NULL); `1` for none.
fn push_image_match(out: &mut String, plan: &Plan, t: &TableSchema, image: &[Value]) -> Result<()> {
    let mut any = false;
    for (i, v) in image.iter().enumerate() {
        if matches!(v, Value::Unchanged) {
            continue;
        }
        if any {
            out.push_str(" AND ");
        }
        any = true;
        out.push_str(&plan.cols[i]);
        out.push_str(" <=> ");
        // MySQL's JSON type compares with JSON, not with text.
        if plan.json[i] && !v.is_null() {
            out.push_str("CAST(");
            push_value(out, plan, t, i, v, &|| image.to_vec())?;
            out.push_str(" AS JSON)");
        } else {
            push_value(out, plan, t, i, v, &|| image.to_vec())?;
        }
    }
    if !any {
        out.push('1');
    }
    Ok(())
}

/// Deletes one row of a keyless table equal to `image`.
pub(crate) fn delete_one(plan: &Plan, t: &TableSchema, image: &[Value]) -> Result<String> {
    let mut out = format!("DELETE FROM {} WHERE ", plan.table);
    push_image_match(&mut out, plan, t, image)?;
    out.push_str(" LIMIT 1");
    Ok(out)
}

/// Sets the known columns of `after` on one row of a keyless table equal
/// to `before`; `None` when `after` sets nothing.
pub(crate) fn update_one(
    plan: &Plan,
    t: &TableSchema,
    before: &[Value],
    after: &[Value],
) -> Result<Option<String>> {
    let mut out = format!("UPDATE {} SET ", plan.table);
    let mut any = false;
    for (i, v) in after.iter().enumerate() {
        if matches!(v, Value::Unchanged) {
            continue;
        }
        if any {
            out.push_str(", ");
        }
        any = true;
        out.push_str(&plan.cols[i]);
        out.push_str(" = ");
        push_value(&mut out, plan, t, i, v, &|| before.to_vec())?;
    }
    if !any {
        return Ok(None);
    }
    out.push_str(" WHERE ");
    push_image_match(&mut out, plan, t, before)?;
    out.push_str(" LIMIT 1");
    Ok(Some(out))
}

/// `(k1, k2) > (a, b)` written out as `k1 > a OR (k1 = a AND k2 > b)`, which
/// the primary key serves in MySQL and MariaDB alike (row comparisons
/// are not always range-optimized). `op` is `>` or `<=`-like: the last
/// column takes `last`, the others `strict`.
pub(crate) fn push_key_compare(
    out: &mut String,
    plan: &Plan,
    t: &TableSchema,
    key: &[Value],
    strict: &str,
    last: &str,
) -> Result<()> {
    out.push('(');
    for n in 0..t.key.len() {
        if n > 0 {
            out.push_str(" OR ");
        }
        out.push('(');
        for (m, (&i, v)) in t.key.iter().zip(key).enumerate().take(n + 1) {
            if m > 0 {
                out.push_str(" AND ");
            }
            let op = if m < n {
                "="
            } else if n + 1 == t.key.len() {
                last
            } else {
                strict
            };
            out.push_str(&plan.cols[i]);
            out.push_str(&format!(" {op} "));
            push_value(out, plan, t, i, v, &|| key.to_vec())?;
        }
        out.push(')');
    }
    out.push(')');
    Ok(())
}

/// `DELETE FROM t [WHERE lower < key <= upper]`: an online re-copy's range.
pub(crate) fn delete_range(plan: &Plan, t: &TableSchema, range: &KeyRange) -> Result<String> {
    let mut out = format!("DELETE FROM {}", plan.table);
    if t.is_keyless() {
        return Ok(out);
    }
    let mut conds = Vec::new();
    if let Some(lower) = &range.lower {
        let mut c = String::new();
        push_key_compare(&mut c, plan, t, lower, ">", ">")?;
        conds.push(c);
    }
    if let Some(upper) = &range.upper {
        let mut c = String::new();
        push_key_compare(&mut c, plan, t, upper, "<", "<=")?;
        conds.push(c);
    }
    if !conds.is_empty() {
        out.push_str(" WHERE ");
        out.push_str(&conds.join(" AND "));
    }
    Ok(out)
}
