//! Reading tables back in ferry's key order (`ferry verify`), for the
//! source and the target alike.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ferry_core::{
    DeclaredShape, Error, KeyRange, RangeDigest, Result, TableName, TableReader, TableRef,
    TableSchema, Value,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, Row};

use crate::catalog::{MyTable, read_tables};
use crate::connection::{Endpoint, quote_ident};
use crate::digest::{Canon, DigestPlan};
use crate::error::my_error;
use crate::sql::{column_list, key_compare, order_by_key};
use crate::types::{Decode, Origin, decode};

/// Reads the tables of one database. The table asked for may come from
/// another database (the pipeline's source): its columns are found here
/// by name and decoded by this database's types.
pub struct MySqlReader {
    endpoint: Endpoint,
    pool: Pool,
    local: Mutex<HashMap<String, Option<MyTable>>>,
    condition: Option<String>,
}

impl MySqlReader {
    pub fn new(endpoint: Endpoint) -> MySqlReader {
        let pool = Pool::new(endpoint.opts().clone());
        MySqlReader {
            endpoint,
            pool,
            local: Mutex::new(HashMap::new()),
            condition: None,
        }
    }

    async fn conn(&self) -> Result<mysql_async::Conn> {
        self.pool
            .get_conn()
            .await
            .map_err(|e| my_error(e, &format!("connecting to {}", self.endpoint.describe())))
    }

    /// This database's table of `table`'s name, read once.
    async fn local(&self, table: &TableName) -> Result<Option<MyTable>> {
        if let Some(found) = self.local.lock().expect("reader lock").get(&table.name) {
            return Ok(found.clone());
        }
        let mut conn = self.conn().await?;
        let found = read_tables(&mut conn, self.endpoint.database(), None)
            .await?
            .into_iter()
            .find(|t| t.table.name.name == table.name);
        self.local
            .lock()
            .expect("reader lock")
            .insert(table.name.clone(), found.clone());
        Ok(found)
    }

    /// `table` (another database's) as this database holds it: the
    /// columns of `table` in its order, with this database's types.
    async fn aligned(&self, table: &TableRef) -> Result<(TableSchema, Vec<Decode>)> {
        let local = self.local(&table.name).await?.ok_or_else(|| {
            Error::fatal(format!(
                "table {} does not exist in {}",
                table.name.name,
                self.endpoint.describe()
            ))
        })?;
        let mut columns = Vec::new();
        let mut decode = Vec::new();
        for column in &table.columns {
            let i = local.table.column_index(&column.name).ok_or_else(|| {
                Error::fatal(format!(
                    "table {} in {} has no column {}",
                    table.name.name,
                    self.endpoint.describe(),
                    column.name
                ))
            })?;
            columns.push(local.table.columns[i].clone());
            decode.push(local.decode[i].clone());
        }
        let schema = TableSchema {
            name: TableName::bare(&table.name.name),
            columns,
            key: table.key.clone(),
            version: table.version,
            key_deferrable: false,
        };
        Ok((schema, decode))
    }

    /// `table` as this database holds it, with each column's digest
    /// encoding (`digest.rs`).
    async fn digestible(
        &self,
        table: &TableRef,
    ) -> Result<(TableSchema, Vec<Decode>, Vec<Option<Canon>>)> {
        let (schema, decoders) = self.aligned(table).await?;
        let canons = decoders.iter().map(Canon::of_decode).collect();
        Ok((schema, decoders, canons))
    }

    fn filter(&self, mut clauses: Vec<String>) -> String {
        clauses.extend(self.condition.iter().map(|c| format!("({c})")));
        if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        }
    }
}

/// A result row as ferry values.
pub(crate) fn decode_row(table: &TableSchema, decoders: &[Decode], row: Row) -> Result<Vec<Value>> {
    let values = row.unwrap();
    values
        .into_iter()
        .zip(decoders)
        .enumerate()
        .map(|(i, (v, how))| {
            decode(v, how, Origin::Query).map_err(|why| {
                Error::data(format!(
                    "table {}, column {}: {why}",
                    table.name, table.columns[i].name
                ))
            })
        })
        .collect()
}

#[async_trait]
impl TableReader for MySqlReader {
    async fn count_rows(&self, table: &TableRef) -> Result<u64> {
        let mut conn = self.conn().await?;
        let sql = format!(
            "SELECT COUNT(*) FROM {}{}",
            quote_ident(&table.name.name),
            self.filter(Vec::new())
        );
        let n: Option<u64> = conn
            .query_first(sql)
            .await
            .map_err(|e| my_error(e, &format!("counting the rows of {}", table.name)))?;
        Ok(n.unwrap_or(0))
    }

    async fn estimate_rows(&self, table: &TableRef) -> Result<u64> {
        let mut conn = self.conn().await?;
        let n: Option<Option<u64>> = conn
            .exec_first(
                "SELECT table_rows FROM information_schema.tables \
                 WHERE table_schema = ? AND table_name = ?",
                (self.endpoint.database(), &table.name.name),
            )
            .await
            .map_err(|e| my_error(e, "reading table statistics"))?;
        Ok(n.flatten().unwrap_or(0))
    }

    async fn has_table(&self, table: &TableRef) -> Result<bool> {
        Ok(self.local(&table.name).await?.is_some())
    }

    async fn declared_shape(&self, table: &TableRef) -> Result<Option<DeclaredShape>> {
        Ok(self.local(&table.name).await?.map(|t| DeclaredShape {
            columns: t
                .table
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.source_type.clone()))
                .collect(),
            key: t.table.key_names().into_iter().map(str::to_owned).collect(),
        }))
    }

    fn restrict(&mut self, condition: &str) -> Result<()> {
        self.condition = Some(condition.to_owned());
        Ok(())
    }

    fn row_digests(&self) -> Vec<&'static str> {
        crate::digest::ROW_DIGESTS.to_vec()
    }

    async fn digest_range(
        &self,
        table: &TableRef,
        range: &KeyRange,
        limit: Option<u64>,
        digest: &str,
    ) -> Result<Option<RangeDigest>> {
        if !crate::digest::ROW_DIGESTS.contains(&digest) {
            return Ok(None);
        }
        let (schema, decoders, canons) = self.digestible(table).await?;
        let Some(plan) = DigestPlan::new(&schema.name.name, &schema, &canons) else {
            return Ok(None);
        };
        let mut conn = self.conn().await?;
        let decode_key = |i: usize, v| decode(v, &decoders[i], Origin::Query);
        plan.digest(
            &mut conn,
            range,
            limit,
            self.condition.as_deref(),
            &decode_key,
        )
        .await
        .map(Some)
    }

    /// Through the key's index, keys only, when it orders as ferry does.
    async fn key_after(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        rows: u64,
    ) -> Result<Option<Vec<Value>>> {
        let (schema, decoders, canons) = self.digestible(table).await?;
        if !crate::digest::key_in_ferry_order(&schema, &canons) {
            let got = self.read_rows(table, after, rows.max(1) as usize).await?;
            return Ok(ferry_core::reader::key_of_nth(table, &got, rows));
        }
        let mut conn = self.conn().await?;
        let decode_key = |i: usize, v| decode(v, &decoders[i], Origin::Query);
        crate::digest::key_after(
            &mut conn,
            &schema.name.name,
            &schema,
            after,
            rows,
            self.condition.as_deref(),
            &decode_key,
        )
        .await
    }

    async fn scan_rows(
        &self,
        table: &TableRef,
        on_rows: &mut (dyn FnMut(Vec<Vec<Value>>) -> Result<()> + Send),
    ) -> Result<()> {
        let (schema, decoders) = self.aligned(table).await?;
        let sql = format!(
            "SELECT {} FROM {}{}",
            column_list(&schema),
            quote_ident(&schema.name.name),
            self.filter(Vec::new())
        );
        let mut conn = self.conn().await?;
        let doing = format!("reading table {}", table.name);
        let mut result = conn
            .query_iter(sql)
            .await
            .map_err(|e| my_error(e, &doing))?;
        let mut batch = Vec::new();
        while let Some(row) = result.next().await.map_err(|e| my_error(e, &doing))? {
            batch.push(decode_row(&schema, &decoders, row)?);
            if batch.len() == 10_000 {
                on_rows(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            on_rows(batch)?;
        }
        Ok(())
    }

    async fn read_rows(
        &self,
        table: &TableRef,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Result<Vec<Vec<Value>>> {
        let (schema, decoders) = self.aligned(table).await?;
        let mut params = Vec::new();
        let clauses = after
            .map(|after| vec![key_compare(&schema, after, true, &mut params)])
            .unwrap_or_default();
        let sql = format!(
            "SELECT {} FROM {}{} {} LIMIT {limit}",
            column_list(&schema),
            quote_ident(&schema.name.name),
            self.filter(clauses),
            order_by_key(&schema)
        );
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = conn
            .exec(sql, params)
            .await
            .map_err(|e| my_error(e, &format!("reading table {}", table.name)))?;
        rows.into_iter()
            .map(|row| decode_row(&schema, &decoders, row))
            .collect()
    }
}
