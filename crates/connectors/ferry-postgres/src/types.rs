//! PostgreSQL types as ferry sees them: which wire encoding a column uses
//! ([`Kind`]), how it maps to ferry's [`ColumnType`], and the type a sink
//! creates for a ferry column. The byte-level codecs live in
//! [`crate::binary`]. The mapping is documented in `docs/types.md`.

use std::collections::HashMap;

use ferry_core::{Column, ColumnType, Error, Result, TableName, UserType, UserTypeDef};
use tokio_postgres::Client;

use crate::error::pg_error;

/// How values of a column travel in PostgreSQL's binary format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, name, citext-like: UTF-8 bytes.
    Text,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    Json,
    Jsonb,
    /// An enum: its label as UTF-8 bytes on the wire, `Text` in ferry.
    Enum,
    Inet,
    Cidr,
    /// A one-dimensional array; `elem_oid` is written into the array header.
    Array {
        elem_oid: u32,
        elem: Box<Kind>,
    },
    /// Any other type (`xml`, ranges, geometric, composite, extension
    /// types, arrays of them): carried by its text form, which the server's
    /// output function writes and its input function reads back. Read as
    /// `col::text`; written as a text parameter cast to the column's type
    /// (see `Target::placeholder`).
    Other,
}

impl Kind {
    /// `json` (and arrays of it) has no equality operator: values compare
    /// by their text.
    pub(crate) fn has_no_equality(&self) -> bool {
        match self {
            // Some have none (`point`, `xml`); their text is compared.
            Kind::Json | Kind::Other => true,
            Kind::Array { elem, .. } => elem.has_no_equality(),
            _ => false,
        }
    }
}

/// A resolved column type: wire kind plus the OID the server knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgType {
    pub oid: u32,
    pub kind: Kind,
    /// `format_type(oid, typmod)`: used in casts and messages.
    pub name: String,
}

/// Built-in scalar types by OID.
fn builtin(oid: u32) -> Option<Kind> {
    Some(match oid {
        16 => Kind::Bool,
        21 => Kind::Int2,
        23 => Kind::Int4,
        20 => Kind::Int8,
        700 => Kind::Float4,
        701 => Kind::Float8,
        1700 => Kind::Numeric,
        25 | 1043 | 1042 | 19 => Kind::Text,
        17 => Kind::Bytea,
        1082 => Kind::Date,
        1083 => Kind::Time,
        1114 => Kind::Timestamp,
        1184 => Kind::TimestampTz,
        1186 => Kind::Interval,
        2950 => Kind::Uuid,
        114 => Kind::Json,
        3802 => Kind::Jsonb,
        869 => Kind::Inet,
        650 => Kind::Cidr,
        _ => return None,
    })
}

/// PostgreSQL's `FirstNormalObjectId`: OIDs below are built in.
pub(crate) const FIRST_USER_OID: u32 = 16_384;

/// Resolves type OIDs (built-in, enums, domains, arrays) against one
/// database, caching what it learnt. Every type of the database resolves
/// (to [`Kind::Other`] when ferry has no codec for it); `None` = no such
/// type.
#[derive(Debug, Default)]
pub(crate) struct TypeCache {
    known: HashMap<u32, Option<Kind>>,
    named: HashMap<u32, Option<UserType>>,
}

impl TypeCache {
    pub async fn kind(&mut self, client: &Client, oid: u32) -> Result<Option<Kind>> {
        if let Some(k) = builtin(oid) {
            return Ok(Some(k));
        }
        if let Some(k) = self.known.get(&oid) {
            return Ok(k.clone());
        }
        // Follow domains to their base type and arrays to their element;
        // bounded so a malformed catalog cannot loop.
        let mut kind = None;
        let row = client
            .query_opt(
                "SELECT typtype::text, typbasetype, typelem, typcategory::text, typlen \
                 FROM pg_catalog.pg_type WHERE oid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| pg_error(e, "reading pg_type"))?;
        if let Some(row) = row {
            let typtype: String = row.get(0);
            let base: u32 = row.get(1);
            let elem: u32 = row.get(2);
            let category: String = row.get(3);
            let typlen: i16 = row.get(4);
            kind = match typtype.as_str() {
                "e" => Some(Kind::Enum),
                "d" => Box::pin(self.kind(client, base)).await?,
                // An array of a type ferry carries as text is text as a
                // whole (`{"(1,2)","(3,4)"}`), as is an array of arrays.
                "b" if category == "A" && elem != 0 && typlen == -1 => {
                    Box::pin(self.kind(client, elem)).await?.map(|k| match k {
                        Kind::Array { .. } | Kind::Other => Kind::Other,
                        k => Kind::Array {
                            elem_oid: elem,
                            elem: Box::new(k),
                        },
                    })
                }
                _ => Some(Kind::Other),
            };
        }
        self.known.insert(oid, kind.clone());
        Ok(kind)
    }

    /// The enum or domain behind `oid` (an array's element type, for an
    /// array), as structure copy recreates it; `None` for built-in types.
    pub async fn user_type(&mut self, client: &Client, oid: u32) -> Result<Option<UserType>> {
        if oid < FIRST_USER_OID {
            return Ok(None);
        }
        if let Some(u) = self.named.get(&oid) {
            return Ok(u.clone());
        }
        let row = client
            .query_opt(
                "SELECT t.typtype::text, n.nspname::text, t.typname::text, t.typelem, \
                        t.typcategory::text, format_type(t.typbasetype, t.typtypmod), \
                        t.typbasetype, t.typnotnull, \
                        ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e \
                              WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), \
                        ARRAY(SELECT c.conname::text FROM pg_catalog.pg_constraint c \
                              WHERE c.contypid = t.oid AND c.contype = 'c' ORDER BY c.conname), \
                        ARRAY(SELECT pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c \
                              WHERE c.contypid = t.oid AND c.contype = 'c' ORDER BY c.conname), \
                        (SELECT e.extname::text FROM pg_catalog.pg_depend d \
                           JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid \
                          WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = t.oid \
                            AND d.refclassid = 'pg_catalog.pg_extension'::regclass \
                            AND d.deptype = 'e' LIMIT 1), \
                        ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                              WHERE a.attrelid = t.typrelid AND a.attnum > 0 \
                                AND NOT a.attisdropped ORDER BY a.attnum), \
                        ARRAY(SELECT format_type(a.atttypid, a.atttypmod) \
                              FROM pg_catalog.pg_attribute a \
                              WHERE a.attrelid = t.typrelid AND a.attnum > 0 \
                                AND NOT a.attisdropped ORDER BY a.attnum), \
                        ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                              WHERE a.attrelid = t.typrelid AND a.attnum > 0 \
                                AND NOT a.attisdropped ORDER BY a.attnum), \
                        r.rngsubtype, format_type(r.rngsubtype, NULL), \
                        format_type((to_jsonb(r) ->> 'rngmultitypid')::oid, NULL), \
                        (SELECT m.rngtypid FROM pg_catalog.pg_range m \
                          WHERE (to_jsonb(m) ->> 'rngmultitypid')::oid = t.oid) \
                 FROM pg_catalog.pg_type t \
                 JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
                 LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid WHERE t.oid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| pg_error(e, "reading pg_type"))?;
        let mut named = None;
        if let Some(r) = row {
            let typtype: String = r.get(0);
            let name = TableName::new(Some(r.get::<_, String>(1).as_str()), r.get(2));
            let elem: u32 = r.get(3);
            let category: String = r.get(4);
            let extension: Option<String> = r.get(11);
            named = match typtype.as_str() {
                // An extension's type comes with its extension, whatever
                // kind of type it is.
                _ if extension.is_some() => Some(UserType {
                    name,
                    def: UserTypeDef::Extension {
                        extension: extension.unwrap_or_default(),
                    },
                }),
                "e" => Some(UserType {
                    name,
                    def: UserTypeDef::Enum(r.get(8)),
                }),
                "d" => {
                    let base_oid: u32 = r.get(6);
                    let base_type = Box::pin(self.user_type(client, base_oid)).await?;
                    let names: Vec<String> = r.get(9);
                    let defs: Vec<String> = r.get(10);
                    Some(UserType {
                        name,
                        def: UserTypeDef::Domain {
                            base: r.get(5),
                            base_type: base_type.map(Box::new),
                            not_null: r.get(7),
                            checks: names.into_iter().zip(defs).collect(),
                        },
                    })
                }
                "b" if category == "A" && elem != 0 => {
                    Box::pin(self.user_type(client, elem)).await?
                }
                "c" => {
                    let names: Vec<String> = r.get(12);
                    let types: Vec<String> = r.get(13);
                    let oids: Vec<u32> = r.get(14);
                    let mut uses = Vec::new();
                    for o in oids {
                        uses.extend(Box::pin(self.user_type(client, o)).await?);
                    }
                    let attrs: Vec<String> = names
                        .iter()
                        .zip(&types)
                        .map(|(n, t)| format!("{} {t}", ident(n)))
                        .collect();
                    Some(UserType {
                        name,
                        def: UserTypeDef::Defined {
                            body: format!("AS ({})", attrs.join(", ")),
                            uses,
                        },
                    })
                }
                "r" => {
                    let subtype: u32 = r.get(15);
                    let uses = Box::pin(self.user_type(client, subtype)).await?;
                    let subtype_name: String = r.get(16);
                    // Multiranges exist from PostgreSQL 14 on (read through
                    // `to_jsonb` so older servers answer too).
                    let multirange = match r.get::<_, Option<String>>(17) {
                        Some(m) => format!(", MULTIRANGE_TYPE_NAME = {m}"),
                        None => String::new(),
                    };
                    Some(UserType {
                        name,
                        def: UserTypeDef::Defined {
                            body: format!("AS RANGE (SUBTYPE = {subtype_name}{multirange})"),
                            uses: uses.into_iter().collect(),
                        },
                    })
                }
                // A multirange comes with its range.
                "m" => match r.get::<_, Option<u32>>(18) {
                    Some(range) => Box::pin(self.user_type(client, range)).await?,
                    None => None,
                },
                _ => None,
            };
        }
        self.named.insert(oid, named.clone());
        Ok(named)
    }
}

/// `"schema"."name"` of a named type.
pub(crate) fn type_ident(name: &TableName) -> String {
    match &name.namespace {
        Some(ns) => format!("{}.{}", ident(ns), ident(&name.name)),
        None => ident(&name.name),
    }
}

/// The PostgreSQL type a sink creates for a ferry column: the source's
/// enum or domain when it names one (created beforehand, see
/// `structure::ensure_user_types`), else [`ddl_type`].
pub(crate) fn column_ddl_type(c: &Column) -> Result<String> {
    if let ColumnType::Other { type_name } = &c.ty {
        return Ok(type_name.clone());
    }
    match &c.user_type {
        // `format_type` spells an array of the named type `name[]`; a
        // domain over an array is the domain itself.
        Some(ut) if c.source_type.ends_with("[]") => Ok(format!("{}[]", type_ident(&ut.name))),
        Some(ut) => Ok(type_ident(&ut.name)),
        None => ddl_type(&c.ty, &c.source_type),
    }
}

/// The ferry column type of a PostgreSQL column of type `oid` (`typmod`
/// as in `pg_attribute.atttypmod`, `type_name` its `format_type`).
pub(crate) fn column_type(kind: &Kind, oid: u32, typmod: i32, type_name: &str) -> ColumnType {
    match kind {
        Kind::Other => ColumnType::Other {
            type_name: type_name.to_owned(),
        },
        Kind::Bool => ColumnType::Bool,
        Kind::Int2 => ColumnType::Int16,
        Kind::Int4 => ColumnType::Int32,
        Kind::Int8 => ColumnType::Int64,
        Kind::Float4 => ColumnType::Float32,
        Kind::Float8 => ColumnType::Float64,
        Kind::Numeric => {
            if typmod >= 4 {
                let m = typmod - 4;
                ColumnType::Decimal {
                    precision: Some(((m >> 16) & 0xffff) as u32),
                    // An 11-bit two's complement number (PostgreSQL 15
                    // allows -1000..=1000).
                    scale: Some(((m & 0x7ff) ^ 1024) - 1024),
                }
            } else {
                ColumnType::Decimal {
                    precision: None,
                    scale: None,
                }
            }
        }
        Kind::Text => {
            // 1042 = bpchar (char(n)), 1043 = varchar(n).
            let sized = (oid == 1042 || oid == 1043) && typmod >= 4;
            ColumnType::Text {
                max_len: sized.then(|| (typmod - 4) as u32),
                fixed: oid == 1042,
            }
        }
        Kind::Enum | Kind::Inet | Kind::Cidr => ColumnType::Text {
            max_len: None,
            fixed: false,
        },
        Kind::Bytea => ColumnType::Bytes,
        Kind::Date => ColumnType::Date,
        Kind::Time => ColumnType::Time,
        Kind::Timestamp => ColumnType::Timestamp,
        Kind::TimestampTz => ColumnType::TimestampTz,
        Kind::Interval => ColumnType::Interval,
        Kind::Uuid => ColumnType::Uuid,
        Kind::Json | Kind::Jsonb => ColumnType::Json,
        Kind::Array { elem, elem_oid } => {
            ColumnType::Array(Box::new(column_type(elem, *elem_oid, typmod, type_name)))
        }
    }
}

/// The PostgreSQL type a sink creates for a ferry column. `source_type` is
/// the source's spelling, used only to keep `json` apart from `jsonb`.
pub(crate) fn ddl_type(ty: &ColumnType, source_type: &str) -> Result<String> {
    Ok(match ty {
        ColumnType::Bool => "boolean".into(),
        ColumnType::Int16 => "smallint".into(),
        ColumnType::Int32 => "integer".into(),
        ColumnType::Int64 => "bigint".into(),
        ColumnType::Float32 => "real".into(),
        ColumnType::Float64 => "double precision".into(),
        ColumnType::Decimal {
            precision: Some(p),
            scale,
        } if *p >= 1 && *p <= 1000 => format!("numeric({p},{})", scale.unwrap_or(0)),
        ColumnType::Decimal { .. } => "numeric".into(),
        ColumnType::Text {
            max_len: Some(n),
            fixed: true,
        } => format!("character({n})"),
        ColumnType::Text {
            max_len: Some(n),
            fixed: false,
        } if *n >= 1 => format!("character varying({n})"),
        // Addresses keep their type (a PostgreSQL source names it): they
        // travel as text, which the target parses back.
        ColumnType::Text {
            max_len: None,
            fixed: false,
        } if matches!(base_type(source_type).as_str(), "inet" | "cidr") => base_type(source_type),
        ColumnType::Text { .. } | ColumnType::Dynamic => "text".into(),
        // The source's own type (a PostgreSQL source: its named types are
        // created beforehand, see `structure::ensure_user_types`).
        ColumnType::Other { type_name } => type_name.clone(),
        ColumnType::Bytes => "bytea".into(),
        ColumnType::Date => "date".into(),
        ColumnType::Time => "time without time zone".into(),
        ColumnType::Timestamp => "timestamp without time zone".into(),
        ColumnType::TimestampTz => "timestamp with time zone".into(),
        ColumnType::Interval => "interval".into(),
        ColumnType::Uuid => "uuid".into(),
        ColumnType::Json => {
            if base_type(source_type) == "json" {
                "json".into()
            } else {
                "jsonb".into()
            }
        }
        ColumnType::Array(inner) => {
            if matches!(**inner, ColumnType::Array(_)) {
                return Err(Error::fatal(
                    "nested arrays cannot be created on PostgreSQL (arrays are one type per column)",
                ));
            }
            format!("{}[]", ddl_type(inner, source_type)?)
        }
    })
}

/// The element type a source named, lower case, without array brackets.
fn base_type(source_type: &str) -> String {
    source_type
        .trim_end_matches("[]")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a ferry column of type `from` can be written into a target
/// column of kind `to` (used to check an existing target table).
pub(crate) fn writable(from: &ColumnType, to: &Kind) -> bool {
    use ColumnType as C;
    match (from, to) {
        (_, Kind::Text) => !matches!(from, C::Array(_) | C::Bytes),
        // Text goes through the column type's input function; a value
        // of another kind through its text form (a data error names the
        // value the type's input function refuses).
        (C::Array(_) | C::Bytes, Kind::Other) => false,
        (_, Kind::Other) => true,
        (C::Dynamic, _) => true,
        (C::Bool, Kind::Bool) => true,
        (C::Bool | C::Int16 | C::Int32 | C::Int64, Kind::Int2 | Kind::Int4 | Kind::Int8) => true,
        (
            C::Int16 | C::Int32 | C::Int64 | C::Float32 | C::Float64 | C::Decimal { .. },
            Kind::Float4 | Kind::Float8 | Kind::Numeric,
        ) => true,
        (C::Text { .. }, Kind::Enum | Kind::Inet | Kind::Cidr | Kind::Json | Kind::Jsonb) => true,
        (C::Text { .. }, Kind::Uuid | Kind::Date | Kind::Timestamp | Kind::TimestampTz) => true,
        (C::Text { .. } | C::Bytes, Kind::Bytea) => true,
        (C::Json, Kind::Json | Kind::Jsonb) => true,
        (C::Date, Kind::Date) | (C::Time, Kind::Time) | (C::Interval, Kind::Interval) => true,
        (C::Timestamp | C::TimestampTz, Kind::Timestamp | Kind::TimestampTz) => true,
        (C::Uuid, Kind::Uuid) => true,
        (C::Array(a), Kind::Array { elem, .. }) => writable(a, elem),
        _ => false,
    }
}

/// Quotes an identifier (`"na""me"`).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal (`'it''s'`); `standard_conforming_strings` is on
/// in every supported server.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmod_gives_precision_and_scale() {
        let t = column_type(&Kind::Numeric, 1700, (12 << 16 | 2) + 4, "");
        assert_eq!(
            t,
            ColumnType::Decimal {
                precision: Some(12),
                scale: Some(2)
            }
        );
        assert_eq!(ddl_type(&t, "").unwrap(), "numeric(12,2)");
        // Scales are signed (PostgreSQL 15: -1000..=1000).
        for (p, s) in [(7, -3), (3, 5), (1000, -1000), (1000, 1000)] {
            let t = column_type(&Kind::Numeric, 1700, ((p << 16) | (s & 0x7ff)) + 4, "");
            assert_eq!(
                t,
                ColumnType::Decimal {
                    precision: Some(p as u32),
                    scale: Some(s)
                }
            );
            assert_eq!(ddl_type(&t, "").unwrap(), format!("numeric({p},{s})"));
        }
    }

    #[test]
    fn text_lengths() {
        let v = column_type(&Kind::Text, 1043, 24, "");
        assert_eq!(
            v,
            ColumnType::Text {
                max_len: Some(20),
                fixed: false
            }
        );
        let c = column_type(&Kind::Text, 1042, 7, "");
        assert_eq!(ddl_type(&c, "").unwrap(), "character(3)");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
