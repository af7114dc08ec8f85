//! `ferry check` for a MySQL/MariaDB target: reachable, and the user may
//! create, alter and write tables in the database.

use ferry_core::{CheckItem, Result};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::connection::{Endpoint, quote_ident};
use crate::error::my_error;

/// What a target needs on its database.
const NEEDED: [&str; 6] = ["SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "ALTER"];

/// The checks, each a line of `ferry check`.
pub(crate) async fn sink_checks(conn: &mut Conn, endpoint: &Endpoint) -> Vec<CheckItem> {
    let mut items = Vec::new();
    let version: Result<Option<String>> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| my_error(e, "reading the server version"));
    match version {
        Ok(v) => items.push(CheckItem::ok(
            "target: connection",
            format!("{} (server {})", endpoint.describe(), v.unwrap_or_default()),
        )),
        Err(e) => {
            items.push(CheckItem::from_error("target: connection", &e));
            return items;
        }
    }
    items.push(match missing_privileges(conn, endpoint.database()).await {
        Ok((_, missing)) if missing.is_empty() => CheckItem::ok(
            "target: privileges",
            format!("may create and write tables in {}", endpoint.database()),
        ),
        Ok((user, missing)) => CheckItem::fail(
            "target: privileges",
            format!(
                "{user} lacks {} on database {}",
                missing.join(", "),
                endpoint.database()
            ),
            format!(
                "GRANT {} ON {}.* TO {user}",
                NEEDED.join(", "),
                quote_ident(endpoint.database())
            ),
        ),
        Err(e) => CheckItem::from_error("target: privileges", &e),
    });
    items
}

/// The current user (`'app'@'%'`) and the privileges of [`NEEDED`] it
/// lacks on `db`, granted globally or on the database (a pattern such as
/// `shop\_%` counts).
async fn missing_privileges(conn: &mut Conn, db: &str) -> Result<(String, Vec<&'static str>)> {
    let grantee: String = conn
        .query_first(
            "SELECT CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
                    SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await
        .map_err(|e| my_error(e, "reading the current user"))?
        .unwrap_or_default();
    let granted: Vec<String> = conn
        .exec(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ? \
             UNION SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES \
             WHERE GRANTEE = ? AND ? LIKE TABLE_SCHEMA",
            (&grantee, &grantee, db),
        )
        .await
        .map_err(|e| my_error(e, "reading the user's privileges"))?;
    let missing = NEEDED
        .into_iter()
        .filter(|p| !granted.iter().any(|g| g.eq_ignore_ascii_case(p)))
        .collect();
    Ok((grantee, missing))
}
