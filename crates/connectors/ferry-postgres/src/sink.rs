//! The PostgreSQL sink: structure copy, the checkpoint table, and the
//! mapping of each ferry table onto its target table. Writers (the data
//! path) are in [`crate::writer`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::{
    CheckItem, Checkpoint, CheckpointRecord, CheckpointStore, Column, Error, Result, SequenceValue,
    Sink, SinkInfo, SinkWriter, Step, TableName, TableReader, TableRef, TableShape, UserType,
    UserTypeDef, Value,
};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::catalog::{self, PgTable, WriteTraits};
use crate::connection::Endpoint;
use crate::error::pg_error;
use crate::fence::{self, Lock};
use crate::reader::KeyOrderReads;
use crate::types::{
    Kind, PgType, TypeCache, column_ddl_type, ident, quote_literal, type_ident, writable,
};

/// The advisory lock every pipeline's structure copy on a database holds.
const STRUCTURE_LOCK: &str = "ferry structure copy";

/// Comment on a table ferry created without its primary key: the key is
/// added once the table's snapshot is loaded (loading into a table without
/// index and building the index once is faster, FIELD-NOTES.md).
pub(crate) const KEY_PENDING: &str = "ferry: primary key added after the snapshot load";

/// The checkpoint table, in schema `public` of the target database.
pub const CHECKPOINT_TABLE: &str = "public._ferry_checkpoint";

/// How to reach the target.
#[derive(Clone)]
pub struct PostgresSinkConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// The pipeline's name: the key of its checkpoint records.
    pub pipeline: String,
}

impl std::fmt::Debug for PostgresSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PostgresSinkConfig")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

/// A target table as a writer sees it: for each column of the ferry table
/// (in its order), the target column and type.
#[derive(Debug)]
pub(crate) struct Target {
    pub qualified: String,
    pub display: String,
    /// Quoted target column names, aligned with the ferry columns.
    pub cols: Vec<String>,
    pub types: Vec<PgType>,
    pub params: Vec<Type>,
    /// The ferry column names this mapping was built for.
    pub source_cols: Vec<String>,
    /// Indexes of the key columns.
    pub key: Vec<usize>,
    /// Created by ferry, primary key not built yet (see [`KEY_PENDING`]).
    pub key_pending: bool,
    /// The binary COPY encoding this table loads undecoded, if any
    /// ([`catalog::binary_copy_encoding`]).
    pub encoding: Option<String>,
    /// The key columns as key-range predicates compare them (online
    /// re-copy chunks replace the target's rows of a key range).
    pub key_read: Vec<crate::reader::ReadColumn>,
    /// A unique index on the key columns is `DEFERRABLE` (a table the
    /// operator created): `ON CONFLICT` refuses it as arbiter, so upserts
    /// update the rows that exist and insert the others instead.
    pub deferrable_key: bool,
    /// Indexes of the columns `GENERATED ALWAYS AS IDENTITY` on the
    /// target: inserts override the identity with the source's value, and
    /// since PostgreSQL lets no `UPDATE` set them, updates leave them out
    /// (a key change moves the row by delete and insert).
    pub always_identity: Vec<usize>,
    /// Some column is an array (whose value may come as text, see
    /// [`crate::apply::has_array_text`]).
    pub has_arrays: bool,
}

impl Target {
    /// Parameter `$n` bound to column `i`: a column of a type ferry
    /// carries as text gets a text parameter cast to the column's type
    /// (its input function reads it), `$n::bit(8)`.
    pub fn placeholder(&self, i: usize, n: usize) -> String {
        match self.types[i].kind {
            Kind::Other => format!("${n}::{}", self.types[i].name),
            _ => format!("${n}"),
        }
    }

    /// Whether a column has a type ferry carries as text: binary `COPY`
    /// cannot take its values, which then go through a staging table.
    pub fn has_text_columns(&self) -> bool {
        self.types.iter().any(|t| t.kind == Kind::Other)
    }

    /// `SELECT` list of a staging table for this target: its columns, a
    /// column of a type carried as text as `text`.
    pub fn stage_columns(&self) -> String {
        self.cols
            .iter()
            .zip(&self.types)
            .map(|(c, t)| match t.kind {
                Kind::Other => format!("{c}::text AS {c}"),
                _ => c.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `SELECT` list reading a staging table into this target: text cast
    /// back to the column's type.
    pub fn unstage_columns(&self) -> String {
        self.cols
            .iter()
            .zip(&self.types)
            .map(|(c, t)| match t.kind {
                Kind::Other => format!("{c}::{}", t.name),
                _ => c.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn matches(&self, table: &TableRef) -> bool {
        self.source_cols.len() == table.columns.len()
            && self
                .source_cols
                .iter()
                .zip(&table.columns)
                .all(|(a, b)| *a == b.name)
            && self.key == table.key
    }
}

/// State shared by the sink and its writers.
pub(crate) struct Shared {
    pub endpoint: Endpoint,
    /// The target server's major version.
    pub major: u32,
    pub pipeline: String,
    pub targets: Mutex<HashMap<TableName, Arc<Target>>>,
    /// The source's shape of each table beyond columns and key, for the
    /// tables this sink creates (`shape.rs`).
    pub shapes: Mutex<HashMap<TableName, TableShape>>,
}

impl Shared {
    /// The source's shape of `name`, if known.
    pub fn shape(&self, name: &TableName) -> Option<TableShape> {
        self.shapes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

/// Where a ferry table lives on the target: its namespace, else `public`.
pub(crate) fn target_name(name: &TableName) -> (String, String) {
    (
        name.namespace.clone().unwrap_or_else(|| "public".into()),
        name.name.clone(),
    )
}

fn param_type(t: &PgType) -> Type {
    if t.kind == Kind::Other {
        return Type::TEXT;
    }
    Type::from_oid(t.oid).unwrap_or_else(|| {
        Type::new(
            t.name.clone(),
            t.oid,
            tokio_postgres::types::Kind::Simple,
            "public".into(),
        )
    })
}

/// Builds the mapping of `table` onto the existing target table `pg`,
/// failing with a fix when the target cannot take the table's rows.
pub(crate) fn map_target(
    table: &TableRef,
    pg: &PgTable,
    traits: &WriteTraits,
    major: u32,
) -> Result<Target> {
    let display = pg.display();
    let mut cols = Vec::new();
    let mut types = Vec::new();
    let mut missing = Vec::new();
    for c in &table.columns {
        let Some(tc) = pg.column(&c.name) else {
            missing.push(c);
            continue;
        };
        let Some(ty) = tc.pg_type() else {
            return Err(Error::fatal(format!(
                "target column {display}.{} has type {}, which ferry cannot write",
                c.name, tc.type_name
            ))
            .with("table", display.clone())
            .with("column", c.name.clone())
            .with_fix("change the target column to a supported type (see docs/types.md)"));
        };
        if !writable(&c.ty, &ty.kind) {
            return Err(Error::fatal(format!(
                "target column {display}.{} has type {}, which cannot hold the source's {} ({:?})",
                c.name, tc.type_name, c.source_type, c.ty
            ))
            .with("table", display.clone())
            .with("column", c.name.clone())
            .with_fix(format!(
                "ALTER TABLE {} ALTER COLUMN {} TYPE {} on the target, or drop the target table \
                 so ferry creates it",
                pg.qualified(),
                ident(&c.name),
                column_ddl_type(c).unwrap_or_else(|_| "...".into())
            )));
        }
        cols.push(ident(&c.name));
        types.push(ty);
    }
    if !missing.is_empty() {
        let adds: Vec<String> = missing
            .iter()
            .map(|c| {
                format!(
                    "ADD COLUMN {} {}",
                    ident(&c.name),
                    column_ddl_type(c).unwrap_or_else(|_| "...".into())
                )
            })
            .collect();
        let names: Vec<&str> = missing.iter().map(|c| c.name.as_str()).collect();
        return Err(Error::fatal(format!(
            "target table {display} lacks column(s) {}",
            names.join(", ")
        ))
        .with("table", display)
        .with_fix(format!(
            "ALTER TABLE {} {}",
            pg.qualified(),
            adds.join(", ")
        )));
    }
    let key_names: Vec<&str> = table.key_names();
    let has_unique = pg.keys.iter().any(|k| {
        k.columns.len() == key_names.len()
            && key_names.iter().all(|n| k.columns.iter().any(|c| c == n))
    });
    // A keyless table needs no key on the target either (its rows are
    // found by all their columns).
    let has_unique = has_unique || table.is_keyless();
    let key_pending = !has_unique && pg.comment.as_deref() == Some(KEY_PENDING);
    if !has_unique && !key_pending {
        let quoted: Vec<String> = key_names.iter().map(|n| ident(n)).collect();
        return Err(Error::fatal(format!(
            "target table {display} has no primary key or unique index on ({}), which ferry \
             needs to apply updates and deletes",
            key_names.join(", ")
        ))
        .with("table", display)
        .with_fix(format!(
            "ALTER TABLE {} ADD PRIMARY KEY ({})",
            pg.qualified(),
            quoted.join(", ")
        )));
    }
    let key_read = table
        .key
        .iter()
        .map(|&k| crate::reader::ReadColumn {
            quoted: cols[k].clone(),
            kind: types[k].kind.clone(),
            type_name: types[k].name.clone(),
            bytewise: pg
                .column(&table.columns[k].name)
                .is_some_and(|tc| tc.bytewise),
            unread: false,
        })
        .collect();
    let same_columns = |cols: &Vec<String>| {
        cols.len() == key_names.len() && key_names.iter().all(|n| cols.iter().any(|c| c == n))
    };
    let deferrable_key = !table.is_keyless() && traits.deferrable_unique.iter().any(same_columns);
    let always_identity = table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| traits.always_identity.contains(&c.name))
        .map(|(i, _)| i)
        .collect();
    Ok(Target {
        deferrable_key,
        always_identity,
        has_arrays: types.iter().any(|t| matches!(t.kind, Kind::Array { .. })),
        qualified: pg.qualified(),
        display,
        params: types.iter().map(param_type).collect(),
        cols,
        types,
        source_cols: table.columns.iter().map(|c| c.name.clone()).collect(),
        key_read,
        key: table.key.clone(),
        key_pending,
        encoding: catalog::binary_copy_encoding(major, pg, table),
    })
}

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

/// The PostgreSQL sink. Cheap to share; each writer has its own connection.
pub struct PostgresSink {
    shared: Arc<Shared>,
    admin: Client,
    types: tokio::sync::Mutex<TypeCache>,
    /// `TableReader::read_rows` (`ferry verify`).
    reads: KeyOrderReads,
    /// The session holding the pipeline's lock on the target, once
    /// [`Sink::fence`] took it; the lock goes with it.
    fence: tokio::sync::Mutex<Option<Client>>,
    /// The checkpoint table is known to exist.
    checkpoint_ready: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("target", &self.shared.endpoint.describe())
            .field("pipeline", &self.shared.pipeline)
            .finish()
    }
}

impl PostgresSink {
    /// Connects to the target. Nothing is created yet: the checkpoint
    /// table comes with the structure copy ([`Sink::ensure_tables`]) or
    /// the first writer, so a run refused before either leaves the target
    /// as it was.
    pub async fn connect(config: PostgresSinkConfig) -> Result<PostgresSink> {
        if config.pipeline.is_empty() {
            return Err(Error::fatal("the pipeline name is empty").with_fix("name the pipeline"));
        }
        let endpoint = Endpoint::parse(&config.url, "target")?;
        let admin = endpoint.connect().await?;
        let major = catalog::server_major(&admin).await?;
        Ok(PostgresSink {
            reads: KeyOrderReads::new(endpoint.clone()),
            shared: Arc::new(Shared {
                endpoint,
                major,
                pipeline: config.pipeline,
                targets: Mutex::new(HashMap::new()),
                shapes: Mutex::new(HashMap::new()),
            }),
            admin,
            types: tokio::sync::Mutex::new(TypeCache::default()),
            fence: tokio::sync::Mutex::new(None),
            checkpoint_ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Creates the checkpoint table if the target lacks it.
    async fn ensure_checkpoint_table(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.checkpoint_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.checkpoint_table_usable().await? {
            self.create_checkpoint_table().await?;
        }
        self.checkpoint_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the checkpoint table exists; an error naming the grant
    /// when this user could neither write it nor create it.
    async fn checkpoint_table_usable(&self) -> Result<bool> {
        let row = self
            .admin
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, \
                        CASE WHEN to_regclass($1) IS NULL THEN has_schema_privilege('public', 'CREATE') \
                        ELSE has_table_privilege($1, 'SELECT') AND has_table_privilege($1, 'INSERT') \
                         AND has_table_privilege($1, 'UPDATE') AND has_table_privilege($1, 'DELETE') END",
                &[&CHECKPOINT_TABLE],
            )
            .await
            .map_err(|e| pg_error(e, "looking for the checkpoint table"))?;
        let (exists, allowed): (bool, bool) = (row.get(0), row.get(1));
        let user = self.shared.endpoint.user();
        match (exists, allowed) {
            (_, true) => Ok(exists),
            (true, false) => Err(Error::fatal(format!(
                "role {user} may not write the checkpoint table {CHECKPOINT_TABLE}"
            ))
            .with_fix(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON {CHECKPOINT_TABLE} TO {user}"
            ))),
            (false, false) => Err(Error::fatal(format!(
                "role {user} may not create the checkpoint table {CHECKPOINT_TABLE}"
            ))
            .with_fix(format!(
                "GRANT CREATE ON SCHEMA public TO {user}; or have an administrator create \
                 {CHECKPOINT_TABLE} (see README.md) and grant SELECT, INSERT, UPDATE, DELETE on it"
            ))),
        }
    }

    async fn create_checkpoint_table(&self) -> Result<()> {
        self.admin
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} (\
                   pipeline text NOT NULL, scope text NOT NULL, value text NOT NULL, \
                   updated_at timestamptz NOT NULL DEFAULT now(), \
                   PRIMARY KEY (pipeline, scope))"
            ))
            .await
            .map_err(|e| pg_error(e, &format!("creating {CHECKPOINT_TABLE}")))
    }

    /// The structure copy: checks every existing target table, then
    /// creates the missing ones (with their schemas and types) and the
    /// checkpoint table, and records every table's mapping. Nothing is
    /// created unless every existing table can take its rows. Returns the
    /// tables whose columns differ (see `Sink::ensure_tables`).
    async fn create_missing(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        use std::sync::atomic::Ordering;
        let checkpoint_exists = self.checkpoint_table_usable().await?;
        let mut altered = Vec::new();
        let mut missing = Vec::new();
        for table in tables {
            match self.describe(&table.name).await? {
                Some(pg) => {
                    if self.map_existing(table, &pg).await? {
                        altered.push(table.name.clone());
                    }
                }
                None => missing.push(table),
            }
        }
        for table in missing {
            let columns: Vec<&Column> = table.columns.iter().collect();
            ensure_user_types(&self.admin, &columns).await?;
            let (schema, _) = target_name(&table.name);
            let sql = match create_schema_sql(&self.admin, &schema).await? {
                Some(create) => format!("{create}; {}", create_table_sql(table, false)?),
                None => create_table_sql(table, false)?,
            };
            tracing::info!(table = %table.name, "creating the target table");
            // The table and what comes with it (`shape.rs`) in one
            // transaction: a crash between them would leave a table that
            // a restart, finding it, never completes.
            let (schema, name) = target_name(&table.name);
            let q = format!("{}.{}", ident(&schema), ident(&name));
            let statements = self
                .shared
                .shape(&table.name)
                .map(|shape| crate::shape::with_table(table, &q, &shape))
                .unwrap_or_default();
            let created = async {
                self.admin
                    .batch_execute(&format!("BEGIN; {sql}"))
                    .await
                    .map_err(|e| pg_error(e, &format!("creating table {}", table.name)))?;
                crate::shape::run_each(&self.admin, &q, &statements, true).await?;
                self.admin
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| pg_error(e, &format!("creating table {}", table.name)))
            }
            .await;
            if let Err(e) = created {
                let _ = self.admin.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            let pg = self.describe(&table.name).await?.ok_or_else(|| {
                Error::fatal(format!(
                    "table {} vanished right after creation",
                    table.name
                ))
            })?;
            self.map_existing(table, &pg).await?;
        }
        if !checkpoint_exists {
            self.create_checkpoint_table().await?;
        }
        self.checkpoint_ready.store(true, Ordering::Release);
        Ok(altered)
    }

    /// Records the mapping of `table` onto the existing target table `pg`,
    /// or returns `true` when the target lacks columns of it (or holds one
    /// in a type that cannot take its values): the pipeline alters such a
    /// table (writer `Step::Schema`) together with recording its re-copy.
    async fn map_existing(&self, table: &TableRef, pg: &PgTable) -> Result<bool> {
        let lacks = table.columns.iter().any(|c| {
            pg.column(&c.name)
                .is_none_or(|tc| !tc.kind.as_ref().is_some_and(|k| writable(&c.ty, k)))
        });
        if lacks {
            return Ok(true);
        }
        let traits = catalog::write_traits(&self.admin, pg.oid).await?;
        if !traits.writable {
            // Found now, before the source is prepared, rather than by the
            // first load after a slot and a publication exist.
            let user = self.shared.endpoint.user();
            return Err(Error::fatal(format!(
                "role {user} may not write target table {}",
                pg.display()
            ))
            .with("table", pg.display())
            .with_fix(format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON {} TO {user}",
                pg.qualified()
            )));
        }
        let target = map_target(table, pg, &traits, self.shared.major)?;
        self.shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.name.clone(), Arc::new(target));
        Ok(false)
    }

    async fn describe(&self, name: &TableName) -> Result<Option<PgTable>> {
        let (schema, table) = target_name(name);
        let mut types = self.types.lock().await;
        catalog::describe(&self.admin, &mut types, &schema, &table).await
    }
}

#[async_trait]
impl CheckpointStore for PostgresSink {
    /// A target without the checkpoint table holds no checkpoint.
    async fn load(&self) -> Result<Checkpoint> {
        let rows = match self
            .admin
            .query(
                &format!("SELECT scope, value FROM {CHECKPOINT_TABLE} WHERE pipeline = $1"),
                &[&self.shared.pipeline],
            )
            .await
        {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Vec::new(),
            r => r.map_err(|e| pg_error(e, "reading the checkpoint"))?,
        };
        let records: Vec<CheckpointRecord> = rows
            .iter()
            .map(|r| CheckpointRecord {
                scope: r.get(0),
                value: r.get(1),
            })
            .collect();
        Checkpoint::from_records(&records)
    }

    async fn clear(&self) -> Result<()> {
        match self
            .admin
            .execute(
                &format!("DELETE FROM {CHECKPOINT_TABLE} WHERE pipeline = $1"),
                &[&self.shared.pipeline],
            )
            .await
        {
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(()),
            r => r
                .map(|_| ())
                .map_err(|e| pg_error(e, "clearing the checkpoint")),
        }
    }
}

#[async_trait]
impl Sink for PostgresSink {
    fn info(&self) -> SinkInfo {
        SinkInfo { max_writers: 4 }
    }

    /// A session advisory lock keyed `ferry_target_<pipeline>`, taken on a
    /// connection of its own that lives as long as this sink (see
    /// `fence.rs`). It does not survive a restart of the target server;
    /// nothing written after one goes through the old connections, and a
    /// run that lost them fences again when it restarts.
    async fn fence(&self) -> Result<()> {
        let mut held = self.fence.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let client = self.shared.endpoint.connect().await?;
        let key = format!("ferry_target_{}", self.shared.pipeline);
        match fence::lock(&client, &key, "the pipeline's lock on the target").await? {
            Lock::Taken => {
                *held = Some(client);
                Ok(())
            }
            Lock::HeldBy(pid) => Err(Error::fatal(format!(
                "another ferry runs pipeline {:?} into target {} (session PID {} holds the \
                 pipeline's lock on the target)",
                self.shared.pipeline,
                self.shared.endpoint.describe(),
                Lock::holder(pid)
            ))
            .with_fix(
                "stop the other `ferry run` of this pipeline first (two runners would both apply \
                 every change); a killed runner's lock goes with its session",
            )),
        }
    }

    async fn identity(&self) -> Result<Option<String>> {
        catalog::database_identity(&self.admin).await.map(Some)
    }

    async fn check(&self) -> Vec<CheckItem> {
        crate::check::sink_checks(&self.admin, &self.shared.endpoint).await
    }

    /// Pipelines starting at once on one target would race to create the
    /// same schema, type or table (`duplicate key value violates unique
    /// constraint "pg_type_typname_nsp_index"`): the structure copy of
    /// every ferry pipeline on a database holds one advisory lock, so the
    /// second finds what the first created.
    async fn ensure_tables(&self, tables: &[TableRef]) -> Result<Vec<TableName>> {
        let lock = |f: &str| format!("SELECT {f}(hashtext('{STRUCTURE_LOCK}')::int8)");
        self.admin
            .batch_execute(&lock("pg_advisory_lock"))
            .await
            .map_err(|e| pg_error(e, "taking the structure copy's lock"))?;
        let created = self.create_missing(tables).await;
        let released = self.admin.batch_execute(&lock("pg_advisory_unlock")).await;
        let altered = created?;
        released.map_err(|e| pg_error(e, "releasing the structure copy's lock"))?;
        Ok(altered)
    }

    /// Binary `COPY` tuples, when every column of the target table has a
    /// built-in type: the same name as a PostgreSQL source of the same
    /// major version gives a table with the same column types.
    async fn row_encoding(&self, table: &TableRef) -> Result<Option<String>> {
        let map = self
            .shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(map
            .get(&table.name)
            .filter(|t| t.matches(table))
            .and_then(|t| t.encoding.clone()))
    }

    async fn render_sql(&self, steps: &[Step]) -> Result<String> {
        let mut tables = HashMap::new();
        for step in steps {
            let touched: Vec<&TableRef> = match step {
                Step::Rows(ops) => ops.iter().map(|t| &t.table).collect(),
                Step::Keyless { table, .. } => vec![table],
                _ => Vec::new(),
            };
            for t in touched {
                if let Some(pg) = self.describe(&t.name).await? {
                    tables.insert(t.name.clone(), pg);
                }
            }
        }
        crate::repair::render(steps, &tables)
    }

    /// Kept for the tables this sink creates: see `shape.rs`.
    async fn set_shapes(&self, shapes: Vec<(TableName, TableShape)>) {
        let mut map = self.shared.shapes.lock().unwrap_or_else(|p| p.into_inner());
        map.clear();
        map.extend(
            shapes
                .into_iter()
                .filter(|(_, s)| s.dialect == crate::shape::DIALECT),
        );
    }

    async fn set_sequences(&self, values: &[SequenceValue]) -> Result<()> {
        crate::shape::set_sequences(&self.admin, values).await
    }

    async fn writer(&self) -> Result<Box<dyn SinkWriter>> {
        self.ensure_checkpoint_table().await?;
        let client = self.shared.endpoint.connect().await?;
        Ok(Box::new(crate::writer::PostgresWriter::new(
            self.shared.clone(),
            client,
        )))
    }
}

#[async_trait]
impl TableReader for PostgresSink {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        let (schema, name) = target_name(&table.name);
        crate::reader::count_rows(&self.admin, &schema, &name).await
    }

    async fn has_table(&self, table: &TableRef) -> Result<bool> {
        Ok(self.describe(&table.name).await?.is_some())
    }

    async fn declared_shape(&self, table: &TableRef) -> Result<Option<ferry_core::DeclaredShape>> {
        Ok(self
            .describe(&table.name)
            .await?
            .map(|pg| ferry_core::DeclaredShape {
                columns: pg
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.type_name.clone()))
                    .collect(),
                key: pg
                    .primary_key()
                    .map(|k| k.columns.clone())
                    .unwrap_or_default(),
            }))
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let pg = self.describe_for_reading(table).await?;
        self.reads
            .read_rows(&self.admin, &pg, table, after, limit)
            .await
    }

    async fn key_after(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        let pg = self.describe_for_reading(table).await?;
        self.reads
            .key_after(&self.admin, &pg, table, after, rows)
            .await
    }

    fn row_digests(&self) -> Vec<&'static str> {
        crate::reader::ROW_DIGESTS.to_vec()
    }

    fn restrict(&mut self, condition: &str) -> Result<()> {
        self.reads.restrict(condition);
        Ok(())
    }

    async fn digest_range(
        &self,
        table: &TableRef,
        range: &ferry_core::KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<ferry_core::RangeDigest>> {
        self.reads
            .digest_range(
                self.describe_for_reading(table),
                table,
                range,
                limit,
                digest,
            )
            .await
    }

    async fn scan_rows(
        &self,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        let pg = self.describe(&table.name).await?.ok_or_else(|| {
            Error::fatal(format!("table {} does not exist on the target", table.name))
        })?;
        self.reads.scan_rows(&self.admin, &pg, table, on_rows).await
    }
}

impl PostgresSink {
    /// The catalog entry of a target table `ferry verify` reads, read once
    /// per structure version.
    async fn describe_for_reading(&self, table: &TableRef) -> Result<PgTable> {
        let describe = async {
            self.describe(&table.name).await?.ok_or_else(|| {
                Error::fatal(format!("table {} does not exist on the target", table.name))
            })
        };
        self.reads.described(table, describe).await
    }
}
