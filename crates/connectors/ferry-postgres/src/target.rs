//! The target tables as the sink and its writers see them: each ferry
//! table's mapping onto its target table ([`Target`]), built from the
//! catalog and checked that the table can take the rows, and the state the
//! sink shares with its writers ([`Shared`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_core::{Error, Result, TableName, TableRef, TableShape};
use tokio_postgres::types::Type;

use crate::catalog::{self, PgTable, WriteTraits};
use crate::connection::Endpoint;
use crate::reader::ReadColumn;
use crate::types::{Kind, PgType, column_ddl_type, ident, writable};

/// Comment on a table ferry created without its primary key: the key is
/// added once the table's snapshot is loaded (loading into a table without
/// index and building the index once is faster, FIELD-NOTES.md).
pub(crate) const KEY_PENDING: &str = "ferry: primary key added after the snapshot load";

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
    pub key_read: Vec<ReadColumn>,
    /// A unique index on the key columns is `DEFERRABLE` (a table the
    /// operator created): `ON CONFLICT` refuses it as arbiter, so upserts
    /// update the rows that exist and insert the others instead.
    pub deferrable_key: bool,
    /// Indexes of the columns `GENERATED ALWAYS AS IDENTITY` on the
    /// target: inserts override the identity with the source's value, and
    /// since PostgreSQL lets no `UPDATE` set them, updates leave them out
    /// (a key change moves the row by delete and insert).
    pub always_identity: Vec<usize>,
    /// Some column is an array (whose value may come as text, which only
    /// a text parameter can carry: the apply path looks for it).
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
    /// Active-active apply (ADR 0014), when this pipeline is one direction
    /// between sites.
    pub active: Option<ferry_core::ActiveActive>,
    /// Writers opened so far (each active-active writer has its own origin).
    pub writers: std::sync::atomic::AtomicUsize,
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
        .map(|&k| ReadColumn {
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
