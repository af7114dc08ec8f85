//! What a table has beyond its columns and key — defaults, constraints,
//! indexes, sequences — as its source engine writes it, so that a target
//! of the same engine can give the copy the same shape. A target of
//! another engine ignores it (its structure copy stays columns and key).

use crate::schema::TableName;

/// The shape of one source table, in the source engine's own SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableShape {
    /// The engine the definitions are written for (`"postgresql"`).
    pub dialect: String,
    /// Column defaults: `(column, expression)`.
    pub defaults: Vec<(String, String)>,
    /// Table `CHECK` constraints: created with the table, before the load.
    pub checks: Vec<ShapeItem>,
    /// Unique and exclusion constraints and secondary indexes: built once
    /// the table's copy is loaded (one build is faster than keeping them
    /// up to date row by row).
    pub indexes: Vec<ShapeItem>,
    /// Sequences the table's columns own (`serial`, identity): created
    /// with the table, their values set at the end of the copy and by
    /// `ferry sync-sequences`.
    pub sequences: Vec<ShapeItem>,
    /// Identity columns (`GENERATED ... AS IDENTITY`): made identity
    /// columns with the table; `name` is the identity's sequence, whose
    /// value is set like [`sequences`](Self::sequences)'.
    pub identity: Vec<ShapeItem>,
    /// Stored generated columns (`GENERATED ALWAYS AS (...) STORED`),
    /// which the source does not send: added to the table ferry creates,
    /// so the target computes them; `name` is the column. Sinks never
    /// write them (they are not in the table's columns).
    pub generated: Vec<ShapeItem>,
}

/// One definition of a [`TableShape`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapeItem {
    /// Its name (constraint, index or sequence name).
    pub name: String,
    /// The statement or clause that creates it, as the source prints it
    /// (`CHECK ((qty > 0))`, `CREATE INDEX i ON s.t USING btree (c)`).
    pub sql: String,
    /// The columns it reads: a target table without one of them (an
    /// excluded column) does not get it.
    pub columns: Vec<String>,
}

/// A sequence's position: `(last_value, is_called)` as PostgreSQL's
/// `setval` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceValue {
    pub name: TableName,
    pub last_value: i64,
    /// `false`: the next value is `last_value` itself (never used yet).
    pub is_called: bool,
}
