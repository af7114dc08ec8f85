//! Table structure as ferry sees it, shared by sources, the pipeline and sinks.

use std::fmt;
use std::sync::Arc;

use crate::value::{ColumnType, Value};

/// What a structure change did that comparing the old and the new
/// structure cannot tell (see [`Change::Schema`](crate::Change::Schema)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alteration {
    /// Columns renamed, `(old name, new name)`: their values stay.
    pub renamed: Vec<(String, String)>,
    /// Added columns whose rows that existed before the change hold this
    /// value rather than NULL (a constant default, as PostgreSQL records
    /// it for such rows).
    pub filled: Vec<(String, Value)>,
}

/// A table's name: an optional namespace (PostgreSQL schema, MySQL database)
/// and the table name. SQLite tables have no namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub namespace: Option<String>,
    pub name: String,
}

impl TableName {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        TableName {
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    pub fn bare(name: &str) -> Self {
        TableName::new(None, name)
    }

    /// Parses `ns.name` or `name`.
    pub fn parse(s: &str) -> Self {
        match s.split_once('.') {
            Some((ns, name)) => TableName::new(Some(ns), name),
            None => TableName::bare(s),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    /// The type as the source database spelled it (`varchar(20)`), for messages
    /// and for same-kind structure copy.
    pub source_type: String,
    /// The named type the source declared the column with (an enum or a
    /// domain; for an array column, its element's), so that a target of the
    /// same kind can create that type. Values travel as `ty` either way; a
    /// target of another kind ignores it.
    pub user_type: Option<UserType>,
}

/// A type the source defines by name, as a target can recreate it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserType {
    /// The type's name, with its namespace (PostgreSQL schema).
    pub name: TableName,
    pub def: UserTypeDef,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserTypeDef {
    /// An enum: its labels in sort order.
    Enum(Vec<String>),
    /// A domain over `base` (the source's spelling of the base type, e.g.
    /// `numeric(10,2)`), which is itself `base_type` when that is a named
    /// type too.
    Domain {
        base: String,
        base_type: Option<Box<UserType>>,
        not_null: bool,
        /// `(constraint name, definition)`, e.g. `("positive", "CHECK ((VALUE > 0))")`.
        checks: Vec<(String, String)>,
    },
    /// A composite or range type, as the source's SQL defines it: `body`
    /// follows `CREATE TYPE <name>` (`AS (x integer, y text)`, `AS RANGE
    /// (SUBTYPE = ...)`); `uses` are the named types it refers to, which a
    /// target creates first.
    Defined { body: String, uses: Vec<UserType> },
    /// A type an extension provides (`hstore`, `citext`): a target of the
    /// same kind installs the extension (`extension`) in the type's schema.
    Extension { extension: String },
}

/// The structure of one table at one point of the stream.
///
/// Row images travel as `Vec<Value>` aligned with `columns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    pub name: TableName,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the key that identifies a row (primary key,
    /// or the replica identity). Empty for a keyless table: its rows are
    /// identified by their whole image, several rows may be identical, and
    /// its changes apply one by one in source order (see
    /// [`Step::Keyless`](crate::Step::Keyless)).
    pub key: Vec<usize>,
    /// Bumped by the source each time it reports a new structure for the table.
    pub version: u32,
    /// The key is a unique constraint checked at commit (PostgreSQL
    /// `DEFERRABLE`): inside a transaction a key may hold two rows for a
    /// while (a swap of keys), so the pipeline holds a key's rows until
    /// it holds one again before writing them to a target, even across
    /// the parts of a transaction too large for memory.
    pub key_deferrable: bool,
}

/// Shared handle on a table schema; cheap to clone into every change.
pub type TableRef = Arc<TableSchema>;

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The key values of a row image.
    pub fn key_of(&self, row: &[Value]) -> Vec<Value> {
        self.key.iter().map(|&i| row[i].clone()).collect()
    }

    pub fn key_names(&self) -> Vec<&str> {
        self.key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }

    /// A table without a key (see [`TableSchema::key`]).
    pub fn is_keyless(&self) -> bool {
        self.key.is_empty()
    }

    pub fn is_key_column(&self, index: usize) -> bool {
        self.key.contains(&index)
    }
}
