//! Structure the sink creates on the target: schemas, the enums, domains,
//! composite and range types and extensions columns are declared with,
//! tables (with their primary key, or marked [`KEY_PENDING`] to get it
//! after the snapshot load), and that pending key.

use std::collections::HashSet;

use ferry_core::{Column, Error, Result, TableName, TableRef, UserType, UserTypeDef};
use tokio_postgres::Client;

use crate::error::pg_error;
use crate::target::{KEY_PENDING, Target, target_name};
use crate::types::{column_ddl_type, ident, quote_literal, type_ident};

/// `ALTER TABLE ... ADD PRIMARY KEY` for a table whose key is pending.
pub(crate) fn add_key_sql(t: &Target) -> String {
    let key: Vec<&str> = t.key.iter().map(|&i| t.cols[i].as_str()).collect();
    format!(
        "ALTER TABLE {q} ADD PRIMARY KEY ({}); COMMENT ON TABLE {q} IS NULL",
        key.join(", "),
        q = t.qualified
    )
}

/// `CREATE TABLE` for a ferry table; without `with_key` the primary key is
/// left for later and the table marked [`KEY_PENDING`]. A keyless table
/// gets no key.
pub(crate) fn create_table_sql(table: &TableRef, with_key: bool) -> Result<String> {
    let (schema, name) = target_name(&table.name);
    let mut defs = Vec::new();
    for c in &table.columns {
        let ty = column_ddl_type(c).map_err(|e| {
            Error::fatal(format!(
                "cannot create column {}.{}: {}",
                table.name,
                c.name,
                e.message()
            ))
        })?;
        let null = if c.nullable { "" } else { " NOT NULL" };
        defs.push(format!("{} {ty}{null}", ident(&c.name)));
    }
    let q = format!("{}.{}", ident(&schema), ident(&name));
    if table.is_keyless() {
        return Ok(format!("CREATE TABLE {q} ({})", defs.join(", ")));
    }
    if with_key {
        let key: Vec<String> = table.key_names().iter().map(|k| ident(k)).collect();
        defs.push(format!("PRIMARY KEY ({})", key.join(", ")));
        return Ok(format!("CREATE TABLE {q} ({})", defs.join(", ")));
    }
    Ok(format!(
        "CREATE TABLE {q} ({}); COMMENT ON TABLE {q} IS {}",
        defs.join(", "),
        quote_literal(KEY_PENDING)
    ))
}

/// `CREATE SCHEMA` for a schema the target lacks; `None` when it exists.
/// (`CREATE SCHEMA IF NOT EXISTS` would need the CREATE privilege on the
/// database even for an existing schema: a user allowed to create tables
/// in `public` only could not run it.)
pub(crate) async fn create_schema_sql(client: &Client, schema: &str) -> Result<Option<String>> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .map_err(|e| pg_error(e, "looking for the target schema"))?
        .get(0);
    Ok((!exists).then(|| format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema))))
}

/// Creates the enums and domains `columns` are declared with that the
/// target lacks, and adds the labels an existing enum lacks, so that
/// [`column_ddl_type`] names types that exist. An existing domain is left
/// as it is. A label added here can be used once the transaction that
/// added it has committed (a PostgreSQL rule).
pub(crate) async fn ensure_user_types(client: &Client, columns: &[&Column]) -> Result<()> {
    let mut done = HashSet::new();
    for c in columns {
        if let Some(ut) = &c.user_type {
            ensure_user_type(client, ut, &mut done).await?;
        }
    }
    Ok(())
}

async fn ensure_user_type(
    client: &Client,
    ut: &UserType,
    done: &mut HashSet<TableName>,
) -> Result<()> {
    if !done.insert(ut.name.clone()) {
        return Ok(());
    }
    match &ut.def {
        UserTypeDef::Domain {
            base_type: Some(base),
            ..
        } => Box::pin(ensure_user_type(client, base, done)).await?,
        UserTypeDef::Defined { uses, .. } => {
            for used in uses {
                Box::pin(ensure_user_type(client, used, done)).await?;
            }
        }
        UserTypeDef::Extension { extension } => {
            return ensure_extension(client, ut, extension).await;
        }
        _ => {}
    }
    let q = type_ident(&ut.name);
    let schema = ut.name.namespace.as_deref().unwrap_or("public");
    let failed =
        |e| pg_error(e, &format!("creating type {}", ut.name)).with("type", ut.name.to_string());
    let existing: Option<(String, Vec<String>)> = client
        .query_opt(
            "SELECT t.typtype::text, ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e \
                    WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) \
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname = $1 AND t.typname = $2",
            &[&schema, &ut.name.name],
        )
        .await
        .map_err(failed)?
        .map(|r| (r.get(0), r.get(1)));
    let (want, kind) = match &ut.def {
        UserTypeDef::Enum(_) => ("e", "an enum"),
        UserTypeDef::Domain { .. } => ("d", "a domain"),
        UserTypeDef::Defined { body, .. } if body.starts_with("AS RANGE") => ("r", "a range type"),
        UserTypeDef::Defined { .. } => ("c", "a composite type"),
        UserTypeDef::Extension { .. } => return Ok(()),
    };
    let mut sql = Vec::new();
    match (&ut.def, existing) {
        (_, Some((typtype, _))) if typtype != want => {
            return Err(Error::fatal(format!(
                "the target has a type {} that is not {kind} like the source's",
                ut.name
            ))
            .with("type", ut.name.to_string())
            .with_fix(format!(
                "drop or rename the target's type {q}, or create the target table beforehand \
                 with the column types you want"
            )));
        }
        (UserTypeDef::Enum(labels), Some((_, have))) => sql = missing_labels_sql(&q, labels, &have),
        // An existing domain, composite or range type is used as it is.
        (_, Some(_)) => {}
        (def, None) => {
            sql.extend(create_schema_sql(client, schema).await?);
            sql.push(create_type_sql(&q, def));
        }
    }
    if !sql.is_empty() {
        tracing::info!(r#type = %ut.name, "creating the type on the target");
        client
            .batch_execute(&sql.join("; "))
            .await
            .map_err(failed)?;
    }
    Ok(())
}

/// Installs the extension that provides type `ut` (`hstore`, `citext`)
/// when the target lacks it, in the type's schema.
async fn ensure_extension(client: &Client, ut: &UserType, extension: &str) -> Result<()> {
    let failed = |e| {
        pg_error(e, &format!("installing extension {extension}"))
            .with("type", ut.name.to_string())
            .with_fix(format!(
                "install the extension on the target (CREATE EXTENSION {} on its database, as a \
                 user allowed to; its files come with the server's contrib package), or create \
                 the target table beforehand with the column types you want",
                ident(extension)
            ))
    };
    let installed: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = $1)",
            &[&extension],
        )
        .await
        .map_err(failed)?
        .get(0);
    if installed {
        return Ok(());
    }
    let schema = ut.name.namespace.as_deref().unwrap_or("public");
    let mut sql: Vec<String> = create_schema_sql(client, schema)
        .await?
        .into_iter()
        .collect();
    sql.push(format!(
        "CREATE EXTENSION IF NOT EXISTS {} SCHEMA {}",
        ident(extension),
        ident(schema)
    ));
    tracing::info!(extension, r#type = %ut.name, "installing the extension on the target");
    client.batch_execute(&sql.join("; ")).await.map_err(failed)
}

/// `CREATE TYPE ... AS ENUM`, `CREATE DOMAIN` or `CREATE TYPE ... AS
/// (...)`/`AS RANGE (...)` for the named type `q`.
fn create_type_sql(q: &str, def: &UserTypeDef) -> String {
    match def {
        UserTypeDef::Defined { body, .. } => format!("CREATE TYPE {q} {body}"),
        // Installed, not created (see `ensure_extension`).
        UserTypeDef::Extension { extension } => {
            format!("CREATE EXTENSION IF NOT EXISTS {}", ident(extension))
        }
        UserTypeDef::Enum(labels) => {
            let list: Vec<String> = labels.iter().map(|l| quote_literal(l)).collect();
            format!("CREATE TYPE {q} AS ENUM ({})", list.join(", "))
        }
        UserTypeDef::Domain {
            base,
            not_null,
            checks,
            ..
        } => {
            let mut create = format!("CREATE DOMAIN {q} AS {base}");
            if *not_null {
                create.push_str(" NOT NULL");
            }
            for (name, def) in checks {
                create.push_str(&format!(" CONSTRAINT {} {def}", ident(name)));
            }
            create
        }
    }
}

/// `ALTER TYPE ... ADD VALUE` for the source labels an existing enum
/// lacks, each right after the label that precedes it on the source, so
/// the sort order stays the same.
fn missing_labels_sql(q: &str, labels: &[String], have: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut prev: Option<&String> = None;
    for l in labels {
        if !have.contains(l) {
            let place = match (prev, have.first()) {
                (Some(p), _) => format!(" AFTER {}", quote_literal(p)),
                (None, Some(first)) => format!(" BEFORE {}", quote_literal(first)),
                (None, None) => String::new(),
            };
            out.push(format!(
                "ALTER TYPE {q} ADD VALUE IF NOT EXISTS {}{place}",
                quote_literal(l)
            ));
        }
        prev = Some(l);
    }
    out
}
