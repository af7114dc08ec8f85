//! Reading a table in key order through binary `COPY (SELECT ...)`, shared
//! by the source and the sink ([`ferry_core::TableReader`]) and by the
//! snapshot. Key order follows ferry's `Value` order: text keys compare
//! with `COLLATE "C"` (bytes), enums and addresses by their text.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_core::canonical::{CANONICAL_DIGEST, CANONICAL_MD5_DIGEST, hash64};
use ferry_core::{Error, KeyRange, RangeDigest, Result, TableName, TableRef, Value};
use futures_util::StreamExt;
use tokio_postgres::{Client, CopyOutStream};

use crate::binary;
use crate::catalog::PgTable;
use crate::connection::Endpoint;
use crate::copy::CopyDecoder;
use crate::error::pg_error;
use crate::types::{Kind, ident};

/// A column read from a table: its quoted name, kind and type name.
#[derive(Debug, Clone)]
pub(crate) struct ReadColumn {
    pub quoted: String,
    pub kind: Kind,
    pub type_name: String,
    /// Text that already compares by bytes (see `PgColumn::bytewise`):
    /// compared and ordered as it is, so its index serves key ranges.
    pub bytewise: bool,
    /// Nothing reads the column (excluded, no filter uses it): selected as
    /// `NULL`, so its values are never read at all.
    pub unread: bool,
}

/// The columns of `table` (ferry's order) as they are in `pg`.
pub(crate) fn read_columns(pg: &PgTable, table: &TableRef) -> Result<Vec<ReadColumn>> {
    table
        .columns
        .iter()
        .map(|c| {
            let pc = pg.column(&c.name).ok_or_else(|| {
                Error::fatal(format!("table {} has no column {}", pg.display(), c.name))
            })?;
            let kind = pc.kind.clone().ok_or_else(|| {
                Error::transient(format!(
                    "the type of column {}.{} ({}) vanished while the table was read",
                    pg.display(),
                    c.name,
                    pc.type_name
                ))
            })?;
            Ok(ReadColumn {
                quoted: ident(&c.name),
                kind,
                type_name: pc.type_name.clone(),
                bytewise: pc.bytewise,
                unread: false,
            })
        })
        .collect()
}

/// The SQL expression a key column is compared and ordered by: bytewise,
/// as ferry orders keys.
pub(crate) fn key_expr(c: &ReadColumn) -> String {
    match c.kind {
        Kind::Text if c.bytewise => c.quoted.clone(),
        Kind::Text => format!("{} COLLATE \"C\"", c.quoted),
        Kind::Enum | Kind::Inet | Kind::Cidr | Kind::Other => {
            format!("({}::text) COLLATE \"C\"", c.quoted)
        }
        _ => c.quoted.clone(),
    }
}

fn key_literals(cols: &[&ReadColumn], key: &[Value]) -> Result<String> {
    let parts = cols
        .iter()
        .zip(key)
        .map(|(c, v)| {
            let ty = match c.kind {
                Kind::Enum | Kind::Inet | Kind::Cidr | Kind::Other => "text",
                _ => c.type_name.as_str(),
            };
            let lit = binary::literal(v, ty)?;
            Ok(if c.kind == Kind::Text && !c.bytewise {
                format!("{lit} COLLATE \"C\"")
            } else {
                lit
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(format!("ROW({})", parts.join(", ")))
}

/// `WHERE` conditions selecting `range` (`lower < key <= upper`).
pub(crate) fn range_predicate(cols: &[&ReadColumn], range: &KeyRange) -> Result<Option<String>> {
    let exprs: Vec<String> = cols.iter().map(|c| key_expr(c)).collect();
    let key = format!("ROW({})", exprs.join(", "));
    let mut conds = Vec::new();
    if let Some(l) = &range.lower {
        conds.push(format!("{key} > {}", key_literals(cols, l)?));
    }
    if let Some(u) = &range.upper {
        conds.push(format!("{key} <= {}", key_literals(cols, u)?));
    }
    Ok((!conds.is_empty()).then(|| conds.join(" AND ")))
}

/// Whether an index on the key serves [`range_predicate`] and [`order_by`]
/// (else each range read is a full scan and a sort).
pub(crate) fn indexed_order(cols: &[ReadColumn]) -> bool {
    cols.iter().all(|c| match c.kind {
        Kind::Text => c.bytewise,
        Kind::Enum | Kind::Inet | Kind::Cidr | Kind::Other => false,
        _ => true,
    })
}

/// `ORDER BY` list for the key.
fn order_by(cols: &[&ReadColumn]) -> String {
    cols.iter()
        .map(|c| key_expr(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `COPY (query) TO STDOUT (FORMAT binary)` and calls `on_row` for
/// every decoded row, in order.
pub(crate) async fn copy_out_rows(
    client: &Client,
    query: &str,
    kinds: &[Kind],
    mut on_row: impl FnMut(Vec<Value>) -> Result<()>,
) -> Result<()> {
    let sql = format!("COPY ({query}) TO STDOUT (FORMAT binary)");
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(|e| pg_error(e, "reading rows").with("statement", query.to_owned()))?;
    futures_util::pin_mut!(stream);
    let mut dec = CopyDecoder::new();
    while let Some(data) = stream.next().await {
        let data =
            data.map_err(|e| pg_error(e, "reading rows").with("statement", query.to_owned()))?;
        dec.push(data);
        while let Some(row) = dec.next_row(kinds)? {
            on_row(row)?;
        }
    }
    Ok(())
}

/// A field's raw binary value, as the server sent it.
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// Runs `query` (no parameters) in one round trip (parse, bind and
/// execute sent together, results in binary) and calls `on_row` for every
/// decoded row, in order. For the many small reads of `ferry verify`,
/// where a round trip to a distant server costs more than the rows; bulk
/// reads go through [`copy_out_rows`].
pub(crate) async fn query_rows(
    client: &Client,
    query: &str,
    kinds: &[Kind],
    mut on_row: impl FnMut(Vec<Value>) -> Result<()>,
) -> Result<()> {
    let failed = |e| pg_error(e, "reading rows").with("statement", query.to_owned());
    let stream = client
        .query_typed_raw(
            query,
            std::iter::empty::<(
                &(dyn tokio_postgres::types::ToSql + Sync),
                tokio_postgres::types::Type,
            )>(),
        )
        .await
        .map_err(failed)?;
    futures_util::pin_mut!(stream);
    while let Some(row) = stream.next().await {
        let row = row.map_err(failed)?;
        let mut out = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.iter().enumerate() {
            let Raw(raw) = row.try_get(i).map_err(failed)?;
            out.push(match raw {
                None => Value::Null,
                Some(bytes) => binary::decode(kind, bytes)?,
            });
        }
        on_row(out)?;
    }
    Ok(())
}

pub(crate) async fn count_rows(client: &Client, schema: &str, name: &str) -> Result<u64> {
    let sql = format!("SELECT count(*) FROM {}.{}", ident(schema), ident(name));
    let n: i64 = client
        .query_one(sql.as_str(), &[])
        .await
        .map_err(|e| pg_error(e, &format!("counting rows of {schema}.{name}")))?
        .get(0);
    Ok(n as u64)
}

/// Serves [`ferry_core::TableReader::read_rows`]: up to `limit` rows
/// with key greater than `after`, in ferry's key order. A key whose index
/// serves that order is read a page at a time (`WHERE key > after ORDER BY
/// key LIMIT n`). For any other key (a linguistic collation; enum or
/// address keys) each such page would be a full scan and a sort, so its
/// rows come from one sorted stream on a connection of its own, continued
/// while the caller asks for the page after the last row it got.
pub(crate) struct KeyOrderReads {
    endpoint: Endpoint,
    /// Only rows for which this SQL condition holds (`ferry verify
    /// --where`).
    condition: Option<String>,
    open: tokio::sync::Mutex<Option<SortedStream>>,
    /// The connection row digests are computed on, its text output fixed
    /// ([`DIGEST_SETTINGS`]); `None` inside when the server has no
    /// `hashtextextended` (before PostgreSQL 11).
    digests: tokio::sync::OnceCell<Option<DigestConnection>>,
    /// What digesting each table needs, by table and structure version;
    /// `None`: the table cannot be digested.
    plans: tokio::sync::Mutex<HashMap<TableVersion, Option<Arc<DigestPlan>>>>,
    /// Catalog entries read for reading rows, by table and structure
    /// version: a compare reads hundreds of ranges of one table.
    described: tokio::sync::Mutex<HashMap<TableVersion, PgTable>>,
}

/// A table and the version of its structure.
type TableVersion = (TableName, u32);

/// A table's columns as digests read them.
struct DigestPlan {
    from: String,
    cols: Vec<ReadColumn>,
    key_cols: Vec<ReadColumn>,
    /// The row's canonical encoding as a SQL expression
    /// ([`canonical_row`]); `None` when a column has none.
    canonical: Option<String>,
}

struct DigestConnection {
    client: Client,
    /// `hashtextextended` computes [`ferry_core::canonical::hash64`] here
    /// (a little-endian server), so the canonical digest can be offered.
    canonical: bool,
}

/// The digest PostgreSQL readers prefer between themselves:
/// `hashtextextended` of the row's text, summed. Equal for equal rows of
/// equal types whatever the two servers' settings, because the digest
/// connection fixes every setting that changes a value's text.
pub(crate) const ROW_DIGEST: &str = "postgresql: sum of hashtextextended(row text)";

/// Every digest a PostgreSQL reader offers, preferred first (MD5, slower
/// here than lookup3, for a MariaDB on the other side).
pub(crate) const ROW_DIGESTS: [&str; 3] = [ROW_DIGEST, CANONICAL_DIGEST, CANONICAL_MD5_DIGEST];

/// Text whose hash tells whether the server hashes as ferry does.
const HASH_PROBE: &str = "ferry: does this server hash like lookup3 on little-endian?";

/// The SQL expression of column `c`'s canonical encoding
/// ([`ferry_core::canonical`]), never NULL; `None` for a column without
/// one (arrays).
fn canonical_column(c: &ReadColumn) -> Option<String> {
    let q = &c.quoted;
    let with = |tag: &str, payload: String| format!("coalesce('{tag}' || {payload} || ';', 'N;')");
    let sized = |tag: &str, text: String| {
        format!("coalesce('{tag}' || octet_length({text})::text || ':' || {text}, 'N;')")
    };
    let micros = |of: &str| format!("(EXTRACT(EPOCH FROM {of}) * 1000000)::bigint::text");
    let finite_or_text =
        |finite: String| format!("CASE WHEN isfinite({q}) THEN {finite} ELSE {q}::text END");
    // `format` (the type's output function) turns NULL into ''.
    let output = format!("CASE WHEN {q} IS NOT NULL THEN format('%s', {q}) END");
    Some(match &c.kind {
        Kind::Bool => format!("CASE WHEN {q} IS NULL THEN 'N;' WHEN {q} THEN 'Bt;' ELSE 'Bf;' END"),
        Kind::Int2 | Kind::Int4 | Kind::Int8 => with("I", format!("{q}::text")),
        Kind::Float4 | Kind::Float8 => with(
            "F",
            format!(
                "CASE WHEN {q} = 'NaN' THEN '7ff8000000000000' \
                 ELSE encode(float8send({q}::float8), 'hex') END"
            ),
        ),
        Kind::Numeric => with("D", format!("{q}::text")),
        // `char(n)` keeps its padding (its cast to text would drop it);
        // addresses print as their output function does.
        Kind::Text if c.type_name.starts_with("character(") || c.type_name == "character" => {
            sized("S", output)
        }
        Kind::Inet | Kind::Cidr => sized("S", output),
        Kind::Text | Kind::Enum | Kind::Other => sized("S", format!("{q}::text")),
        Kind::Json | Kind::Jsonb => sized("J", format!("{q}::text")),
        Kind::Bytea => with("X", format!("encode({q}, 'hex')")),
        Kind::Date => with(
            "A",
            finite_or_text(format!("({q} - DATE '1970-01-01')::text")),
        ),
        Kind::Time => with("T", micros(q)),
        Kind::Timestamp => with("P", finite_or_text(micros(q))),
        Kind::TimestampTz => with("Z", finite_or_text(micros(q))),
        Kind::Interval => with(
            "V",
            format!(
                "(EXTRACT(YEAR FROM {q}) * 12 + EXTRACT(MONTH FROM {q}))::bigint::text || ',' || \
                 EXTRACT(DAY FROM {q})::bigint::text || ',' || \
                 (EXTRACT(HOUR FROM {q}) * 3600000000 + EXTRACT(MINUTE FROM {q}) * 60000000 \
                  + EXTRACT(MICROSECONDS FROM {q}))::bigint::text"
            ),
        ),
        Kind::Uuid => with("U", format!("{q}::text")),
        Kind::Array { .. } => return None,
    })
}

/// A row's canonical encoding: its columns' one after the other.
fn canonical_row(cols: &[ReadColumn]) -> Option<String> {
    let parts = cols
        .iter()
        .map(canonical_column)
        .collect::<Option<Vec<_>>>()?;
    Some(format!("concat({})", parts.join(", ")))
}

const DIGEST_SETTINGS: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'; SET xmloption = 'content'";

struct SortedStream {
    table: TableName,
    /// The key of the last row handed out: the `after` of the next page.
    last: Option<Vec<Value>>,
    kinds: Vec<Kind>,
    stream: std::pin::Pin<Box<CopyOutStream>>,
    dec: CopyDecoder,
    /// The stream's own connection, closed with it.
    _client: Client,
}

impl KeyOrderReads {
    pub fn new(endpoint: Endpoint) -> Self {
        KeyOrderReads {
            endpoint,
            condition: None,
            open: tokio::sync::Mutex::new(None),
            digests: tokio::sync::OnceCell::new(),
            plans: tokio::sync::Mutex::new(HashMap::new()),
            described: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Limits every later read to rows for which `condition` holds.
    pub fn restrict(&mut self, condition: &str) {
        self.condition = Some(condition.to_owned());
    }

    /// What reads select from: the table, or only its rows that meet the
    /// condition (a subquery the planner flattens, so the key's index
    /// still serves key order).
    fn relation(&self, pg: &PgTable) -> String {
        match &self.condition {
            None => pg.qualified(),
            Some(c) => format!(
                "(SELECT * FROM {} WHERE ({c})) AS {}",
                pg.qualified(),
                ident(&pg.name)
            ),
        }
    }

    /// Serves [`ferry_core::TableReader::scan_rows`]: every row of `table`,
    /// unordered, a few thousand at a time.
    pub(crate) async fn scan_rows(
        &self,
        client: &Client,
        pg: &PgTable,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        const BATCH: usize = 5_000;
        let cols = read_columns(pg, table)?;
        let kinds: Vec<Kind> = cols.iter().map(|c| c.kind.clone()).collect();
        let sql = format!("SELECT {} FROM {}", column_list(&cols), self.relation(pg));
        let mut batch = Vec::with_capacity(BATCH);
        copy_out_rows(client, &sql, &kinds, |row| {
            batch.push(row);
            if batch.len() == BATCH {
                on_rows(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))?;
            }
            Ok(())
        })
        .await?;
        if !batch.is_empty() {
            on_rows(batch)?;
        }
        Ok(())
    }

    /// `table`'s catalog entry: from `describe` the first time, then as
    /// it was read (for this structure version of the table).
    pub async fn described(
        &self,
        table: &TableRef,
        describe: impl std::future::Future<Output = Result<PgTable>>,
    ) -> Result<PgTable> {
        self.described_if_there(table, async { describe.await.map(Some) })
            .await?
            .ok_or_else(|| Error::fatal(format!("table {} is not there", table.name)))
    }

    /// As [`described`](Self::described), for a table that may not exist
    /// (`None`, not remembered: it may be created meanwhile).
    pub async fn described_if_there(
        &self,
        table: &TableRef,
        describe: impl std::future::Future<Output = Result<Option<PgTable>>>,
    ) -> Result<Option<PgTable>> {
        let key = (table.name.clone(), table.version);
        // Held while describing: reads of one table in flight together
        // wait for one description.
        let mut described = self.described.lock().await;
        if let Some(pg) = described.get(&key) {
            return Ok(Some(pg.clone()));
        }
        let pg = describe.await?;
        if let Some(pg) = &pg {
            described.insert(key, pg.clone());
        }
        Ok(pg)
    }

    /// Opens the connection row digests run on, ahead of the first digest
    /// (a distant database's connection set-up then overlaps other work).
    pub async fn prepare_digests(&self) -> Result<()> {
        self.digest_client().await.map(|_| ())
    }

    async fn digest_client(&self) -> Result<Option<&DigestConnection>> {
        let c = self
            .digests
            .get_or_try_init(|| async {
                let c = self.endpoint.connect().await?;
                // One round trip: the three go out together (a server
                // before PostgreSQL 11 fails the probe and is told apart by
                // its version).
                let (version, settings, probe) = tokio::join!(
                    c.query_typed_one("SELECT current_setting('server_version_num')", &[]),
                    c.batch_execute(DIGEST_SETTINGS),
                    c.query_typed_one(
                        "SELECT hashtextextended($1, 0)",
                        &[(&HASH_PROBE, tokio_postgres::types::Type::TEXT)]
                    )
                );
                let version: String = version
                    .map_err(|e| pg_error(e, "reading the server version"))?
                    .get(0);
                if version.parse::<u32>().unwrap_or(0) < 110_000 {
                    return Ok(None);
                }
                settings.map_err(|e| pg_error(e, "preparing a connection for row digests"))?;
                let probe: i64 = probe
                    .map_err(|e| pg_error(e, "probing the server's hash function"))?
                    .get(0);
                let canonical = probe == hash64(HASH_PROBE.as_bytes(), 0) as i64;
                Ok::<_, Error>(Some(DigestConnection {
                    client: c,
                    canonical,
                }))
            })
            .await?;
        Ok(c.as_ref())
    }

    /// Serves [`ferry_core::TableReader::digest_range`]; `None` for a key
    /// no index orders as ferry does (each range would be a full scan) and
    /// on servers before PostgreSQL 11.
    ///
    /// `describe` reads the table's catalog entry; it runs once per table
    /// (a compare digests hundreds of ranges of one table).
    pub async fn digest_range(
        &self,
        describe: impl std::future::Future<Output = Result<PgTable>>,
        table: &TableRef,
        range: &KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<RangeDigest>> {
        let plan_key = (table.name.clone(), table.version);
        // Held while planning: digests of one table in flight together
        // wait for one plan.
        let mut plans = self.plans.lock().await;
        let known = plans.get(&plan_key).cloned();
        let plan = match known {
            Some(plan) => plan,
            None => {
                let pg = describe.await?;
                let cols = read_columns(&pg, table)?;
                let key_cols: Vec<ReadColumn> =
                    table.key.iter().map(|&i| cols[i].clone()).collect();
                let plan = (!key_cols.is_empty() && indexed_order(&key_cols)).then(|| {
                    Arc::new(DigestPlan {
                        from: self.relation(&pg),
                        canonical: canonical_row(&cols),
                        cols,
                        key_cols,
                    })
                });
                plans.insert(plan_key, plan.clone());
                plan
            }
        };
        drop(plans);
        let Some(plan) = plan else {
            return Ok(None);
        };
        let Some(conn) = self.digest_client().await? else {
            return Ok(None);
        };
        let client = &conn.client;
        let (cols, key_cols) = (&plan.cols, &plan.key_cols);
        let key_refs: Vec<&ReadColumn> = key_cols.iter().collect();
        let row_text = match digest {
            ROW_DIGEST => format!(
                "hashtextextended(ROW({})::text, 0)",
                cols.iter()
                    .map(|c| c.quoted.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CANONICAL_DIGEST => match (&plan.canonical, conn.canonical) {
                (Some(row), true) => format!("hashtextextended({row}, 0)"),
                _ => return Ok(None),
            },
            // `ferry_core::canonical::md5_63`.
            CANONICAL_MD5_DIGEST => match &plan.canonical {
                Some(row) => format!(
                    "(('x' || left(md5({row}), 16))::bit(64)::bigint & 9223372036854775807)"
                ),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let mut from = plan.from.clone();
        if let Some(p) = range_predicate(&key_refs, range)? {
            from.push_str(&format!(" WHERE {p}"));
        }
        let failed = |sql: &str| {
            let sql = sql.to_owned();
            move |e| pg_error(e, "digesting rows").with("statement", sql)
        };
        let Some(limit) = limit else {
            let sql = format!("SELECT count(*), coalesce(sum({row_text}), 0)::text FROM {from}");
            let row = client
                .query_typed_one(sql.as_str(), &[])
                .await
                .map_err(failed(&sql))?;
            return Ok(Some(RangeDigest {
                rows: row.get::<_, i64>(0) as u64,
                sum: row.get(1),
                last: None,
            }));
        };
        // The first `limit` rows, then the last of them with the count and
        // the sum: one pass over the range, its key columns decoded as the
        // rows' are.
        let keys: Vec<&str> = key_cols.iter().map(|c| c.quoted.as_str()).collect();
        let order = order_by(&key_refs);
        let desc: Vec<String> = key_refs
            .iter()
            .map(|c| format!("{} DESC", key_expr(c)))
            .collect();
        let sql = format!(
            "WITH c AS MATERIALIZED (SELECT {}, {row_text} AS ferry_h FROM {from} ORDER BY {order} \
             LIMIT {limit}) \
             SELECT {}, (SELECT count(*) FROM c), (SELECT coalesce(sum(ferry_h), 0)::text FROM c) \
             FROM c ORDER BY {} LIMIT 1",
            keys.join(", "),
            column_list(key_cols),
            desc.join(", ")
        );
        let mut kinds: Vec<Kind> = key_cols.iter().map(|c| c.kind.clone()).collect();
        kinds.extend([Kind::Int8, Kind::Text]);
        let mut out = RangeDigest {
            rows: 0,
            sum: "0".into(),
            last: None,
        };
        query_rows(client, &sql, &kinds, |mut row| {
            let (Some(Value::Text(sum)), Some(Value::Int(n))) = (row.pop(), row.pop()) else {
                return Err(Error::fatal(
                    "a row digest came back in another shape; this is a ferry bug",
                ));
            };
            out = RangeDigest {
                rows: n as u64,
                sum,
                last: Some(row),
            };
            Ok(())
        })
        .await?;
        Ok(Some(out))
    }

    /// Serves [`ferry_core::TableReader::key_after`]: through the key's
    /// index, reading keys only, when it orders as ferry does; else by
    /// reading the rows.
    pub async fn key_after(
        &self,
        client: &Client,
        pg: &PgTable,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        let cols = read_columns(pg, table)?;
        let key_cols: Vec<ReadColumn> = table.key.iter().map(|&i| cols[i].clone()).collect();
        if key_cols.is_empty() || !indexed_order(&key_cols) {
            let got = self
                .read_rows(client, pg, table, after, rows.max(1) as usize)
                .await?;
            return Ok(ferry_core::reader::key_of_nth(table, &got, rows));
        }
        let key_refs: Vec<&ReadColumn> = key_cols.iter().collect();
        let range = KeyRange {
            lower: after.map(<[Value]>::to_vec),
            upper: None,
        };
        let mut sql = format!(
            "SELECT {} FROM {}",
            column_list(&key_cols),
            self.relation(pg)
        );
        if let Some(p) = range_predicate(&key_refs, &range)? {
            sql.push_str(&format!(" WHERE {p}"));
        }
        sql.push_str(&format!(
            " ORDER BY {} OFFSET {} LIMIT 1",
            order_by(&key_refs),
            rows.max(1) - 1
        ));
        let kinds: Vec<Kind> = key_cols.iter().map(|c| c.kind.clone()).collect();
        let mut key = None;
        query_rows(client, &sql, &kinds, |r| {
            key = Some(r);
            Ok(())
        })
        .await?;
        Ok(key)
    }

    pub async fn read_rows(
        &self,
        client: &Client,
        pg: &PgTable,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let cols = read_columns(pg, table)?;
        let key_cols: Vec<ReadColumn> = table.key.iter().map(|&i| cols[i].clone()).collect();
        let kinds: Vec<Kind> = cols.iter().map(|c| c.kind.clone()).collect();
        let after_range = KeyRange {
            lower: after.map(<[Value]>::to_vec),
            upper: None,
        };
        let sql = select_range(&self.relation(pg), &cols, &key_cols, &after_range)?;
        if indexed_order(&key_cols) {
            let mut rows = Vec::new();
            query_rows(client, &format!("{sql} LIMIT {limit}"), &kinds, |r| {
                rows.push(r);
                Ok(())
            })
            .await?;
            return Ok(rows);
        }
        let mut open = self.open.lock().await;
        let continues = open
            .as_ref()
            .is_some_and(|s| s.table == table.name && s.last.as_deref() == after);
        if !continues {
            *open = None;
            let c = self.endpoint.connect().await?;
            let failed = |e| pg_error(e, "reading rows").with("statement", sql.clone());
            let stream = c
                .copy_out(format!("COPY ({sql}) TO STDOUT (FORMAT binary)").as_str())
                .await
                .map_err(failed)?;
            *open = Some(SortedStream {
                table: table.name.clone(),
                last: after.map(<[Value]>::to_vec),
                kinds,
                stream: Box::pin(stream),
                dec: CopyDecoder::new(),
                _client: c,
            });
        }
        let s = open.as_mut().expect("opened above");
        let mut rows = Vec::new();
        while rows.len() < limit {
            if let Some(row) = s.dec.next_row(&s.kinds)? {
                rows.push(row);
                continue;
            }
            match s.stream.next().await {
                Some(data) => s.dec.push(data.map_err(|e| pg_error(e, "reading rows"))?),
                None => {
                    *open = None;
                    return Ok(rows);
                }
            }
        }
        s.last = rows.last().map(|r| table.key_of(r));
        Ok(rows)
    }
}

/// `c1, c2, ...`: the quoted names of `cols`, a column of a type ferry
/// carries as text read through the type's output function (`c3::text`).
pub(crate) fn column_list(cols: &[ReadColumn]) -> String {
    cols.iter()
        .map(|c| match c.kind {
            _ if c.unread => "NULL".to_owned(),
            Kind::Other => format!("{}::text", c.quoted),
            _ => c.quoted.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SELECT <columns> FROM <from> WHERE <key in range> ORDER BY <key>`, in
/// ferry's key order (see [`key_expr`]).
pub(crate) fn select_range(
    from: &str,
    cols: &[ReadColumn],
    key_cols: &[ReadColumn],
    range: &KeyRange,
) -> Result<String> {
    let key_refs: Vec<&ReadColumn> = key_cols.iter().collect();
    let mut sql = format!("SELECT {} FROM {from}", column_list(cols));
    if let Some(p) = range_predicate(&key_refs, range)? {
        sql.push_str(&format!(" WHERE {p}"));
    }
    sql.push_str(&format!(" ORDER BY {}", order_by(&key_refs)));
    Ok(sql)
}

/// `SELECT <columns> FROM <from>` restricted to the heap blocks of `range`
/// (`lower < block <= upper`, a block number as the one key value): how a
/// table without a key is cut into pieces (a TID range scan reads only
/// those blocks). Unordered: a keyless piece claims its blocks only with
/// its last chunk.
pub(crate) fn select_blocks(from: &str, cols: &[ReadColumn], range: &KeyRange) -> Result<String> {
    let block = |k: &Option<Vec<Value>>| -> Result<Option<i64>> {
        match k.as_deref() {
            None => Ok(None),
            Some([Value::Int(b)]) => Ok(Some(*b)),
            Some(other) => Err(Error::fatal(format!(
                "a piece of a table without a key is bounded by block numbers, not {other:?}; \
                 this is a ferry bug"
            ))),
        }
    };
    let mut conds = Vec::new();
    if let Some(l) = block(&range.lower)? {
        conds.push(format!("ctid >= '({},0)'::tid", l + 1));
    }
    if let Some(u) = block(&range.upper)? {
        conds.push(format!("ctid < '({},0)'::tid", u + 1));
    }
    let mut sql = format!("SELECT {} FROM {from}", column_list(cols));
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    Ok(sql)
}
