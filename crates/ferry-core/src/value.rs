//! Ferry's one intermediate type system.
//!
//! Every source maps its native values *into* [`Value`] and every sink maps
//! them *out of* it, so N sources and M sinks need N + M converters rather
//! than N × M. [`ColumnType`] is the logical type of a column; the mapping of
//! each connector to and from these types is documented in `docs/types.md`.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Logical column type shared by all connectors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Exact decimal; `None` precision means unconstrained (PostgreSQL
    /// `numeric`). A negative scale rounds to tens, hundreds, ...
    /// (PostgreSQL 15: `numeric(7,-3)` holds multiples of 1000 up to
    /// 9,999,999,000); a scale above the precision leaves only fraction
    /// digits (`numeric(3,5)`: up to 0.00999).
    Decimal {
        precision: Option<u32>,
        scale: Option<i32>,
    },
    /// Text, optionally length-limited (`varchar(n)`); `fixed` for `char(n)`.
    Text {
        max_len: Option<u32>,
        fixed: bool,
    },
    Bytes,
    Date,
    Time,
    /// Timestamp without time zone.
    Timestamp,
    /// Timestamp with time zone (an instant, stored as UTC).
    TimestampTz,
    Interval,
    Uuid,
    Json,
    /// Array of an element type.
    Array(Box<ColumnType>),
    /// A value whose type the source could not narrow down (SQLite columns
    /// declared without a type): each value keeps its own storage class.
    Dynamic,
    /// A type ferry carries by its text form only (`Value::Text`, as the
    /// source's output function writes it): PostgreSQL types without a
    /// native ferry type (`xml`, ranges, geometric types, composites,
    /// extension types, ...). `type_name` is the source's name of the type
    /// (`format_type`, e.g. `bit(8)`, `hstore`, `point[]`): a target of the
    /// same kind creates the column with it and parses the text back with
    /// the type's input function; other targets store the text.
    Other {
        type_name: String,
    },
}

/// One value, in ferry's intermediate representation.
///
/// Times are counted in microseconds so every supported source keeps its
/// full precision: `Date` is days since 1970-01-01, `Time` microseconds
/// since midnight, `Timestamp`/`TimestampTz` microseconds since the Unix
/// epoch (the latter in UTC).
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Exact decimal kept as its canonical text (`-12.50`, `NaN`).
    Decimal(String),
    Text(String),
    Bytes(Vec<u8>),
    Date(i32),
    Time(i64),
    Timestamp(i64),
    TimestampTz(i64),
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
    Uuid([u8; 16]),
    Json(String),
    Array(Vec<Value>),
    /// Not a value: "the target keeps what it has". Sources emit it for a
    /// column whose new value was not sent (PostgreSQL unchanged TOAST data,
    /// or the non-key columns of a key-only before-image).
    Unchanged,
}

impl Value {
    /// Heap and inline bytes this value holds (allocator overhead included
    /// roughly), used to bound queues in bytes.
    pub fn approx_size(&self) -> usize {
        const HEAP_OVERHEAD: usize = 16;
        std::mem::size_of::<Value>()
            + match self {
                Value::Decimal(s) | Value::Text(s) | Value::Json(s) => s.capacity() + HEAP_OVERHEAD,
                Value::Bytes(b) => b.capacity() + HEAP_OVERHEAD,
                Value::Array(items) => {
                    items.iter().map(Value::approx_size).sum::<usize>() + HEAP_OVERHEAD
                }
                _ => 0,
            }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Decimal(_) => 3,
            Value::Text(_) => 4,
            Value::Bytes(_) => 5,
            Value::Date(_) => 6,
            Value::Time(_) => 7,
            Value::Timestamp(_) => 8,
            Value::TimestampTz(_) => 9,
            Value::Interval { .. } => 10,
            Value::Uuid(_) => 11,
            Value::Json(_) => 12,
            Value::Array(_) => 13,
            Value::Unchanged => 14,
        }
    }
}

/// Values have a total order (floats by `total_cmp`, integers and floats
/// compared numerically, text by bytes) so keys can be hashed, sorted and
/// compared with the order the databases use for `COLLATE "C"`/`BINARY`.
impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        use Value::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Float(a), Float(b)) => a.total_cmp(b),
            (Int(a), Float(b)) => (*a as f64).total_cmp(b),
            (Float(a), Int(b)) => a.total_cmp(&(*b as f64)),
            (Bool(a), Bool(b)) => a.cmp(b),
            (Decimal(a), Decimal(b)) => decimal_cmp(a, b),
            (Text(a), Text(b)) | (Json(a), Json(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Bytes(a), Bytes(b)) => a.cmp(b),
            (Date(a), Date(b)) => a.cmp(b),
            (Time(a), Time(b))
            | (Timestamp(a), Timestamp(b))
            | (TimestampTz(a), TimestampTz(b)) => a.cmp(b),
            (
                Interval {
                    months: m1,
                    days: d1,
                    micros: u1,
                },
                Interval {
                    months: m2,
                    days: d2,
                    micros: u2,
                },
            ) => (m1, d1, u1).cmp(&(m2, d2, u2)),
            (Uuid(a), Uuid(b)) => a.cmp(b),
            (Array(a), Array(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        use Value::*;
        match self {
            // Ints and integral floats compare equal, so they must hash alike.
            Int(i) => (2u8, *i).hash(state),
            Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => (2u8, *f as i64).hash(state),
            Float(f) => {
                2u8.hash(state);
                f.to_bits().hash(state)
            }
            Bool(b) => b.hash(state),
            Decimal(s) => normalize_decimal(s).hash(state),
            Text(s) | Json(s) => s.hash(state),
            Bytes(b) => b.hash(state),
            Date(d) => d.hash(state),
            Time(t) | Timestamp(t) | TimestampTz(t) => t.hash(state),
            Interval {
                months,
                days,
                micros,
            } => (months, days, micros).hash(state),
            Uuid(u) => u.hash(state),
            Array(a) => a.hash(state),
            Null | Unchanged => self.rank().hash(state),
        }
    }
}

impl fmt::Display for Value {
    /// Human-readable rendering used in error messages and diffs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Decimal(s) => f.write_str(s),
            Value::Text(s) | Value::Json(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => {
                f.write_str("x'")?;
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                f.write_str("'")
            }
            Value::Date(d) => f.write_str(&crate::time::format_date(*d)),
            Value::Time(t) => f.write_str(&crate::time::format_time(*t)),
            Value::Timestamp(t) => f.write_str(&crate::time::format_timestamp(*t)),
            Value::TimestampTz(t) => write!(f, "{}+00", crate::time::format_timestamp(*t)),
            Value::Interval {
                months,
                days,
                micros,
            } => {
                write!(f, "{months} mons {days} days {micros} us")
            }
            Value::Uuid(u) => f.write_str(&crate::time::format_uuid(u)),
            Value::Array(items) => {
                f.write_str("{")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("}")
            }
            Value::Unchanged => f.write_str("<unchanged>"),
        }
    }
}

/// A decimal's text without sign noise and insignificant zeros
/// (`"-012.500"` → `"-12.5"`, `"-0.0"` → `"0"`), so equal numbers compare
/// and hash alike whatever scale a database prints them with. Text that is
/// not a plain decimal (`NaN`, exponents) is returned as it is.
pub fn normalize_decimal(s: &str) -> std::borrow::Cow<'_, str> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return std::borrow::Cow::Borrowed(s);
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let mut out = String::with_capacity(t.len());
    if neg && !(int.is_empty() && frac.is_empty()) {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    std::borrow::Cow::Owned(out)
}

/// Numeric order of two decimal texts (falls back to text order for values
/// that are not plain decimals, such as `NaN`).
fn decimal_cmp(a: &str, b: &str) -> Ordering {
    let (na, nb) = (normalize_decimal(a), normalize_decimal(b));
    let parse = |s: &str| -> Option<(bool, String, String)> {
        let (neg, d) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
        let (i, f) = d.split_once('.').unwrap_or((d, ""));
        (i.bytes().all(|c| c.is_ascii_digit()) && f.bytes().all(|c| c.is_ascii_digit()))
            .then(|| (neg, i.to_owned(), f.to_owned()))
    };
    match (parse(&na), parse(&nb)) {
        (Some((sa, ia, fa)), Some((sb, ib, fb))) => {
            let magnitude = ia
                .len()
                .cmp(&ib.len())
                .then_with(|| ia.cmp(&ib))
                .then_with(|| fa.cmp(&fb));
            match (sa, sb) {
                (false, false) => magnitude,
                (true, true) => magnitude.reverse(),
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
            }
        }
        _ => na.cmp(&nb),
    }
}

/// Renders a key (the values of the primary-key columns) for messages.
pub fn display_key(key: &[Value]) -> String {
    let parts: Vec<String> = key.iter().map(ToString::to_string).collect();
    format!("({})", parts.join(", "))
}

/// Renders the key of a full row of `table` for messages.
pub fn display_key_of(table: &crate::schema::TableSchema, row: &[Value]) -> String {
    display_key(&table.key_of(row))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn h(v: &Value) -> u64 {
        let mut s = DefaultHasher::new();
        v.hash(&mut s);
        s.finish()
    }

    #[test]
    fn ints_and_integral_floats_are_equal_and_hash_alike() {
        assert_eq!(Value::Int(3), Value::Float(3.0));
        assert_eq!(h(&Value::Int(3)), h(&Value::Float(3.0)));
        assert!(Value::Int(3) < Value::Float(3.5));
    }

    #[test]
    fn decimals_compare_as_numbers() {
        let d = |s: &str| Value::Decimal(s.into());
        assert_eq!(d("12.50"), d("12.5"));
        assert_eq!(h(&d("12.50")), h(&d("012.5")));
        assert_eq!(d("-0.00"), d("0"));
        assert!(d("9.5") < d("10"));
        assert!(d("-10") < d("-9.5"));
        assert!(d("-1") < d("0.5"));
        assert!(d("0.05") < d("0.5"));
        assert_eq!(normalize_decimal("NaN"), "NaN");
        assert_ne!(d("NaN"), d("0"));
    }

    #[test]
    fn text_orders_by_bytes() {
        assert!(Value::Text("B".into()) < Value::Text("a".into()));
        assert!(Value::Null < Value::Int(i64::MIN));
    }
}
