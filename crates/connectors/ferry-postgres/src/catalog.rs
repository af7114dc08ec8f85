//! Reading table structure from `pg_catalog`, for the source (what to
//! replicate) and the sink (what the target looks like).

use std::sync::Arc;

use ferry_core::{Column, Error, Result, TableName, TableRef, TableSchema, UserType};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::pg_error;
use crate::types::{FIRST_USER_OID, Kind, PgType, TypeCache, column_type, ident};

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
pub(crate) struct PgColumn {
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
    pub not_null: bool,
    /// `format_type(atttypid, atttypmod)`.
    pub type_name: String,
    /// `None`: a type ferry does not carry.
    pub kind: Option<Kind>,
    /// The enum or domain the column is declared with (or whose array it is).
    pub user_type: Option<UserType>,
    pub generated: bool,
    /// `pg_attribute.attnum`: stays with the column through a rename.
    pub attnum: i16,
    /// Rows older than the column read it as this value (its text form):
    /// it was added with a constant default (`atthasmissing`).
    pub missing: Option<String>,
    /// Text compares by bytes here, as ferry orders keys: libc collation
    /// `C`, `POSIX` or `C.UTF-8` (code point order, which is UTF-8 byte
    /// order), or the database's default when it is one of them. An index
    /// on the column then serves ferry's key ranges.
    pub bytewise: bool,
}

impl PgColumn {
    pub fn pg_type(&self) -> Option<PgType> {
        Some(PgType {
            oid: self.type_oid,
            kind: self.kind.clone()?,
            name: self.type_name.clone(),
        })
    }
}

/// A unique index usable as a row key.
#[derive(Debug, Clone)]
pub(crate) struct PgKey {
    pub columns: Vec<String>,
    pub primary: bool,
    pub replica_identity: bool,
    /// `DEFERRABLE`: checked at the end of the statement or transaction.
    pub deferrable: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct PgTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `d` default (primary key), `i` index, `f` full, `n` nothing.
    pub replident: String,
    /// `COMMENT ON TABLE`, where ferry marks a table whose key it adds
    /// after the snapshot load.
    pub comment: Option<String>,
    pub columns: Vec<PgColumn>,
    pub keys: Vec<PgKey>,
    /// `pg_class.relfilenode`: changes when the table is rewritten (a
    /// column type changed with new values, a volatile default added).
    pub filenode: u32,
}

impl PgTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }

    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn column(&self, name: &str) -> Option<&PgColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn primary_key(&self) -> Option<&PgKey> {
        self.keys.iter().find(|k| k.primary)
    }

    /// The key changes are identified by: the replica identity (primary
    /// key by default, or the chosen index). `FULL` uses the primary key,
    /// else a unique index on NOT NULL columns: old rows then carry every
    /// column, that key included.
    pub fn replication_key(&self) -> Option<&PgKey> {
        match self.replident.as_str() {
            "i" => self.keys.iter().find(|k| k.replica_identity),
            "d" => self.primary_key(),
            "f" => self.primary_key().or_else(|| {
                self.keys.iter().find(|k| {
                    k.columns
                        .iter()
                        .all(|c| self.column(c).is_some_and(|pc| pc.not_null))
                })
            }),
            _ => None,
        }
    }
}

/// Tables of the database that are not system tables: `(schema, name)`.
pub(crate) async fn list_tables(client: &Client) -> Result<Vec<TableName>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, "listing tables"))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(Some(r.get::<_, String>(0).as_str()), r.get(1)))
        .collect())
}

/// Describes `schema.name`, or `None` when there is no such table.
/// Its queries go out in one round trip each (`query_typed`): a catalog
/// far away costs a round trip per query, not two.
pub(crate) async fn describe(
    client: &Client,
    types: &mut TypeCache,
    schema: &str,
    name: &str,
) -> Result<Option<PgTable>> {
    let what = format!("reading the structure of {schema}.{name}");
    let Some(rel) = client
        .query_typed_opt(
            "SELECT c.oid, c.relreplident::text, obj_description(c.oid, 'pg_class'), c.relfilenode \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[(&schema, Type::TEXT), (&name, Type::TEXT)],
        )
        .await
        .map_err(|e| pg_error(e, &what))?
    else {
        return Ok(None);
    };
    let oid: u32 = rel.get(0);
    let cols = client
        .query_typed(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, a.attnotnull, \
                    format_type(a.atttypid, a.atttypmod), a.attgenerated::text, \
                    coalesce(CASE WHEN a.attcollation = 100 THEN \
                      (SELECT coalesce(to_jsonb(d) ->> 'datlocprovider', 'c') = 'c' \
                              AND d.datcollate IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8') \
                       FROM pg_catalog.pg_database d WHERE d.datname = current_database()) \
                    ELSE (SELECT c.collprovider = 'c' \
                                 AND c.collcollate IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8') \
                          FROM pg_catalog.pg_collation c WHERE c.oid = a.attcollation) END, false), \
                    a.attnum, CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[(&oid, Type::OID)],
        )
        .await
        .map_err(|e| pg_error(e, &what))?;
    let mut columns = Vec::with_capacity(cols.len());
    for r in cols {
        let type_oid: u32 = r.get(1);
        let generated: String = r.get(5);
        columns.push(PgColumn {
            name: r.get(0),
            type_oid,
            typmod: r.get(2),
            not_null: r.get(3),
            type_name: r.get(4),
            kind: types.kind(client, type_oid).await?,
            user_type: types.user_type(client, type_oid).await?,
            generated: !generated.is_empty(),
            bytewise: r.get(6),
            attnum: r.get(7),
            missing: r.get(8),
        });
    }
    let idx = client
        .query_typed(
            "SELECT i.indisprimary, i.indisreplident, \
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n \
                          ORDER BY k.o), \
                    NOT i.indimmediate \
             FROM pg_catalog.pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL \
             ORDER BY i.indisprimary DESC, i.indexrelid",
            &[(&oid, Type::OID)],
        )
        .await
        .map_err(|e| pg_error(e, &what))?;
    let keys = idx
        .iter()
        .map(|r| PgKey {
            primary: r.get(0),
            replica_identity: r.get(1),
            columns: r.get(2),
            deferrable: r.get(3),
        })
        .collect();
    Ok(Some(PgTable {
        oid,
        schema: schema.to_owned(),
        name: name.to_owned(),
        replident: rel.get(1),
        comment: rel.get(2),
        columns,
        keys,
        filenode: rel.get(3),
    }))
}

/// The ferry schema of a source table. Generated columns are left out
/// (pgoutput does not send them; the target computes its own). A table
/// without a usable key is a fatal error naming table and fix.
pub(crate) fn source_schema(t: &PgTable) -> Result<TableRef> {
    let mut columns = Vec::new();
    for c in t.columns.iter().filter(|c| !c.generated) {
        // Every type resolves (to text for a type ferry has no codec
        // for); a missing one means the catalog changed under the read.
        let Some(kind) = &c.kind else {
            return Err(Error::transient(format!(
                "the type of column {}.{} ({}) vanished while the table was read",
                t.display(),
                c.name,
                c.type_name
            ))
            .with("table", t.display())
            .with("column", c.name.clone()));
        };
        columns.push(Column {
            name: c.name.clone(),
            ty: column_type(kind, c.type_oid, c.typmod, &c.type_name),
            nullable: !c.not_null,
            source_type: c.type_name.clone(),
            user_type: c.user_type.clone(),
        });
    }
    let no_key = |why: &str| {
        Error::fatal(format!("table {} cannot be replicated: {why}", t.display()))
            .with("table", t.display())
            .with_fix(format!(
                "add a primary key (ALTER TABLE {q} ADD PRIMARY KEY (...)), or choose a unique \
                 index on NOT NULL columns as replica identity (ALTER TABLE {q} REPLICA IDENTITY \
                 USING INDEX ...), or replicate it without a key (ALTER TABLE {q} REPLICA \
                 IDENTITY FULL: every change then finds its row by all columns, one at a time), \
                 or exclude the table from the pipeline",
                q = t.qualified()
            ))
    };
    let key_deferrable = t.replication_key().is_some_and(|k| k.deferrable);
    let key: &[String] = match (t.replident.as_str(), t.replication_key()) {
        ("n", _) => {
            return Err(no_key(
                "its replica identity is NOTHING, so updates and deletes carry no key",
            ));
        }
        (_, Some(key)) => &key.columns,
        // FULL without a usable key: a keyless table (old rows carry every
        // column, which is how its rows are found).
        ("f", None) => &[],
        _ => {
            return Err(no_key(
                "it has no primary key and no replica identity index",
            ));
        }
    };
    let key = key
        .iter()
        .map(|k| {
            columns
                .iter()
                .position(|c| &c.name == k)
                .ok_or_else(|| no_key(&format!("key column {k} is a generated column")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(TableSchema {
        name: TableName::new(Some(&t.schema), &t.name),
        columns,
        key,
        version: 1,
        key_deferrable,
    }))
}

/// The server's major version (`15` for 15.x).
pub(crate) async fn server_major(client: &Client) -> Result<u32> {
    let v: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .map_err(|e| pg_error(e, "reading the server version"))?
        .get(0);
    Ok(v.parse::<u32>().unwrap_or(0) / 10_000)
}

/// The identity of the database `client` is connected to: the cluster's
/// `system_identifier` (unique per `initdb`, the same for every address of
/// the server) and the database's oid. A physical standby shares its
/// primary's identity, rightly: replicating from a standby into its own
/// primary would loop as well.
pub(crate) async fn database_identity(client: &Client) -> Result<String> {
    let row = client
        .query_one(
            "SELECT s.system_identifier::text, d.oid::int8 FROM pg_control_system() s, \
               pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, "reading the database's identity"))?;
    let system: String = row.get(0);
    let oid: i64 = row.get(1);
    Ok(format!("postgres:system={system}:database={oid}"))
}

/// The row encoding of `table`'s rows as binary `COPY` tuples on a server
/// of major version `major`, when every column has a built-in type: the
/// binary forms of built-in types are fixed for a major version, and their
/// OIDs (which array values carry) are the same on every server. `None`
/// for a user-defined type (enum, domain, composite, extension) or a
/// column `pg` lacks.
pub(crate) fn binary_copy_encoding(major: u32, pg: &PgTable, table: &TableRef) -> Option<String> {
    let mut types = Vec::with_capacity(table.columns.len());
    for c in &table.columns {
        let pc = pg.column(&c.name)?;
        // `Other` columns are read as text, not in their binary form.
        if pc.type_oid >= FIRST_USER_OID
            || pc.kind.as_ref().is_none_or(|k| *k == Kind::Other)
            || pc.generated
        {
            return None;
        }
        types.push(format!("{}/{}", pc.type_oid, pc.typmod));
    }
    Some(format!(
        "postgresql-{major}-binary-copy({})",
        types.join(",")
    ))
}

/// What an existing target table's own structure asks of the statements
/// that write it (a table created beforehand by the operator).
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteTraits {
    /// Column lists of the table's unique indexes that are `DEFERRABLE`:
    /// `INSERT ... ON CONFLICT` refuses them as arbiters.
    pub deferrable_unique: Vec<Vec<String>>,
    /// Columns `GENERATED ALWAYS AS IDENTITY`: an `INSERT` gives them a
    /// value only with `OVERRIDING SYSTEM VALUE`, and no `UPDATE` may.
    pub always_identity: Vec<String>,
    /// The current user may read, insert, update and delete its rows.
    pub writable: bool,
}

/// Reads the [`WriteTraits`] of table `oid`.
pub(crate) async fn write_traits(client: &Client, oid: u32) -> Result<WriteTraits> {
    let what = "reading the target table's unique indexes and identity columns";
    let deferrable = client
        .query(
            "SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(n, o) \
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n \
                    ORDER BY k.o) \
             FROM pg_catalog.pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique AND NOT i.indimmediate",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error(e, what))?;
    let identity = client
        .query(
            "SELECT attname::text FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attidentity = 'a' \
             ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error(e, what))?;
    let writable: bool = client
        .query_one(
            // A list of privileges asks for any one of them: each alone.
            "SELECT has_table_privilege($1::oid, 'SELECT') \
                    AND has_table_privilege($1::oid, 'INSERT') \
                    AND has_table_privilege($1::oid, 'UPDATE') \
                    AND has_table_privilege($1::oid, 'DELETE')",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error(e, what))?
        .get(0);
    Ok(WriteTraits {
        writable,
        deferrable_unique: deferrable.iter().map(|r| r.get(0)).collect(),
        always_identity: identity.iter().map(|r| r.get(0)).collect(),
    })
}

/// The shape of table `oid` beyond columns and key (see
/// [`ferry_core::TableShape`]): defaults, `CHECK`s, unique and exclusion
/// constraints, secondary indexes, owned sequences. The indexes behind
/// the primary key and behind ferry's key (`key`, which the target gets
/// as its primary key) are left out; so are foreign keys and generated
/// columns (not copied: see docs/types.md). Identity columns' statements
/// name `table` as the source qualifies it, which is the target's name
/// too (shapes go only to targets that keep the source's names).
pub(crate) async fn table_shape(
    client: &Client,
    table: &PgTable,
    key: &[String],
) -> Result<ferry_core::TableShape> {
    let oid = table.oid;
    use ferry_core::ShapeItem;
    let what = "reading the table's defaults, constraints and indexes";
    let failed = |e| pg_error(e, what);
    let defaults = client
        .query(
            "SELECT a.attname::text, pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_catalog.pg_attrdef d \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
             WHERE d.adrelid = $1 AND a.attgenerated = '' AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let constraints = client
        .query(
            "SELECT c.conname::text, c.contype::text, pg_get_constraintdef(c.oid), \
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) k(n) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n \
                          ORDER BY a.attnum) \
             FROM pg_catalog.pg_constraint c \
             WHERE c.conrelid = $1 AND c.contype IN ('c', 'u', 'x') \
             ORDER BY c.conname",
            &[&oid],
        )
        .await
        .map_err(failed)?;
    let mut checks = Vec::new();
    let mut indexes = Vec::new();
    for r in &constraints {
        let kind: String = r.get(1);
        let columns: Vec<String> = r.get(3);
        let item = ShapeItem {
            name: r.get(0),
            sql: r.get(2),
            columns,
        };
        if kind == "c" {
            checks.push(item);
        } else if !same_columns(&item.columns, key) {
            indexes.push(ShapeItem {
                sql: format!("CONSTRAINT {} {}", ident(&item.name), item.sql),
                ..item
            });
        }
    }
    // Plain indexes: not behind a constraint, not the key.
    let plain = client
        .query(
            "SELECT ci.relname::text, pg_get_indexdef(i.indexrelid), \
                    ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid = i.indrelid AND a.attnum > 0 \
                            AND (a.attnum = ANY (i.indkey::int2[]) \
                                 OR a.attnum IN (SELECT d.refobjsubid FROM pg_catalog.pg_depend d \
                                                 WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                                                   AND d.objid = i.indexrelid \
                                                   AND d.refobjid = i.indrelid)) \
                          ORDER BY a.attnum), \
                    i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL \
                      AND i.indimmediate, \
                    ARRAY(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k(n) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ci ON ci.oid = i.indexrelid \
             WHERE i.indrelid = $1 AND NOT i.indisprimary AND i.indisvalid \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c \
                               WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid \
                                 AND c.contype IN ('p', 'u', 'x')) \
             ORDER BY ci.relname",
            &[&oid],
        )
        .await
        .map_err(failed)?;
    for r in &plain {
        let plain_unique: bool = r.get(3);
        let key_columns: Vec<String> = r.get(4);
        if plain_unique && same_columns(&key_columns, key) {
            // The index ferry keys the table by: the target's primary key.
            continue;
        }
        let def: String = r.get(1);
        indexes.push(ShapeItem {
            name: r.get(0),
            sql: def.replacen(" INDEX ", " INDEX IF NOT EXISTS ", 1),
            columns: r.get(2),
        });
    }
    let sequences = client
        .query(
            "SELECT n.nspname::text, s.relname::text, a.attname::text, \
                    format_type(q.seqtypid, NULL), q.seqstart, q.seqincrement, q.seqmax, \
                    q.seqmin, q.seqcache, q.seqcycle \
             FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace \
             JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1 \
               AND d.deptype = 'a' \
             ORDER BY 1, 2",
            &[&oid],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| {
            let (schema, name, column): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let (start, inc, max, min, cache, cycle): (i64, i64, i64, i64, i64, bool) =
                (r.get(4), r.get(5), r.get(6), r.get(7), r.get(8), r.get(9));
            let ty: String = r.get(3);
            ShapeItem {
                name: format!("{schema}.{name}"),
                sql: format!(
                    "CREATE SEQUENCE IF NOT EXISTS {}.{} AS {ty} INCREMENT BY {inc} \
                     MINVALUE {min} MAXVALUE {max} START WITH {start} CACHE {cache}{}",
                    ident(&schema),
                    ident(&name),
                    if cycle { " CYCLE" } else { "" }
                ),
                columns: vec![column],
            }
        })
        .collect();
    let identity = client
        .query(
            "SELECT a.attname::text, a.attidentity = 'a', n.nspname::text, s.relname::text, \
                    q.seqstart, q.seqincrement, q.seqmax, q.seqmin, q.seqcache, q.seqcycle \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum \
               AND d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'i' \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace \
             JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid \
             WHERE a.attrelid = $1 AND a.attidentity IN ('a', 'd') AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| {
            let (column, always, schema, name): (String, bool, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let (start, inc, max, min, cache, cycle): (i64, i64, i64, i64, i64, bool) =
                (r.get(4), r.get(5), r.get(6), r.get(7), r.get(8), r.get(9));
            ShapeItem {
                name: format!("{schema}.{name}"),
                sql: format!(
                    "ALTER TABLE {} ALTER COLUMN {} ADD GENERATED {} AS IDENTITY \
                     (SEQUENCE NAME {}.{} INCREMENT BY {inc} MINVALUE {min} MAXVALUE {max} \
                     START WITH {start} CACHE {cache}{})",
                    table.qualified(),
                    ident(&column),
                    if always { "ALWAYS" } else { "BY DEFAULT" },
                    ident(&schema),
                    ident(&name),
                    if cycle { " CYCLE" } else { "" }
                ),
                columns: vec![column],
            }
        })
        .collect();
    let generated = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    pg_get_expr(d.adbin, d.adrelid), \
                    ARRAY(SELECT b.attname::text FROM pg_catalog.pg_depend x \
                          JOIN pg_catalog.pg_attribute b ON b.attrelid = x.refobjid \
                            AND b.attnum = x.refobjsubid \
                          WHERE x.refobjid = a.attrelid AND x.refobjsubid > 0 \
                            AND x.refobjsubid <> a.attnum \
                            AND ((x.classid = 'pg_catalog.pg_attrdef'::regclass AND x.objid = d.oid) \
                                 OR (x.classid = 'pg_catalog.pg_class'::regclass \
                                     AND x.objid = a.attrelid AND x.objsubid = a.attnum))) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attgenerated = 's' AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|r| {
            let (column, ty, expr): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            ShapeItem {
                sql: format!(
                    "ALTER TABLE {} ADD COLUMN {} {ty} GENERATED ALWAYS AS ({expr}) STORED",
                    table.qualified(),
                    ident(&column)
                ),
                name: column,
                columns: r.get(3),
            }
        })
        .collect();
    Ok(ferry_core::TableShape {
        generated,
        dialect: "postgresql".into(),
        defaults,
        checks,
        indexes,
        sequences,
        identity,
    })
}

fn same_columns(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|c| b.contains(c))
}

/// `(last_value, is_called)` of sequence `schema.name`, `None` when there
/// is no such sequence.
pub(crate) async fn sequence_value(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Option<(i64, bool)>> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S')",
            &[&schema, &name],
        )
        .await
        .map_err(|e| pg_error(e, "looking for a sequence"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one(
            &format!(
                "SELECT last_value, is_called FROM {}.{}",
                ident(schema),
                ident(name)
            ),
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &format!("reading sequence {schema}.{name}")))?;
    Ok(Some((row.get(0), row.get(1))))
}
