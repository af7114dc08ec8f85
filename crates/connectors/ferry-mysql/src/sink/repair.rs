//! Repairs as SQL (`ferry verify --repair print`): row steps with the
//! literals the writer sends, for an operator to review and run with the
//! `mariadb`/`mysql` client. The script sets the session the writer uses
//! first (`NO_BACKSLASH_ESCAPES`, UTC), so it stores what ferry would.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_core::{RepairSql, Result, Step, TableName, TableRef, Value};

use super::statements::{delete_one, insert_head, push_key_match, push_rows};
use super::target::Plan;
use crate::connection::SESSION_SETUP;

/// The script for `steps`, with each table's plan.
pub(crate) fn render(steps: &[Step], plans: &HashMap<TableName, Arc<Plan>>) -> Result<String> {
    let body = ferry_core::render_repair(steps, &Dialect { plans })?;
    Ok(format!("{};\n{body}", SESSION_SETUP.join(";\n")))
}

struct Dialect<'a> {
    plans: &'a HashMap<TableName, Arc<Plan>>,
}

impl Dialect<'_> {
    fn plan(&self, t: &TableRef) -> Result<&Plan> {
        self.plans.get(&t.name).map(Arc::as_ref).ok_or_else(|| {
            ferry_core::Error::fatal(format!(
                "table {} does not exist on the target",
                t.name.name
            ))
        })
    }
}

impl RepairSql for Dialect<'_> {
    fn delete_by_key(&self, t: &TableRef, key: &[Value]) -> Result<String> {
        let plan = self.plan(t)?;
        let mut out = format!("DELETE FROM {} WHERE ", plan.table);
        push_key_match(&mut out, plan, t, key)?;
        out.push(';');
        Ok(out)
    }

    fn insert(&self, t: &TableRef, row: &[Value]) -> Result<String> {
        let plan = self.plan(t)?;
        let row = row.to_vec();
        let mut out = insert_head(plan);
        push_rows(&mut out, plan, t, &[&row], 0, 0)?;
        out.push(';');
        Ok(out)
    }

    fn delete_one(&self, t: &TableRef, row: &[Value]) -> Result<String> {
        Ok(format!("{};", delete_one(self.plan(t)?, t, row)?))
    }
}
