//! Active-active apply (ADR 0014): each source transaction's commit time
//! and origin ([`Step::Stamp`](ferry_core::Step::Stamp)), and its changes
//! to keyed tables checked one by one against the target's row
//! ([`Step::Checked`](ferry_core::Step::Checked)).
//!
//! For each change the writer locks the target's row by key and reads its
//! version (`pg_xact_commit_timestamp_origin(xmin)`: commit time and
//! origin, so the site that wrote it). A conflict is an insert of a key
//! the target holds, or an update or delete whose before-image is not the
//! target's row (compared column by column when the source sent the whole
//! old row, `REPLICA IDENTITY FULL`; with a key-only image, when the row
//! holds a write from another site newer than the change). The table's
//! policy decides ([`ferry_core::conflict::resolve`]); every conflict is a
//! row of `_ferry_conflicts`, in the same transaction.

use ferry_core::conflict::{self, ConflictKind, ConflictPolicy, Outcome, Version};
use ferry_core::value::display_key;
use ferry_core::{Error, KeylessOp, Position, Result, TableOps, TableRef, Value};
use tokio_postgres::types::{ToSql, Type};

use super::PostgresWriter;
use crate::apply::{Param, param_refs, row_params};
use crate::error::pg_error;
use crate::origin::CONFLICTS_TABLE;
use crate::target::Target;

/// The target's row for one key, as the lookup read it.
struct Found {
    image: String,
    /// The row equals the change's before-image (`None`: only the key was
    /// sent, nothing to compare).
    same: Option<bool>,
    version: Version,
    /// Written earlier in this very transaction.
    mine: bool,
}

impl PostgresWriter {
    /// `pg_replication_origin_xact_setup`: this transaction commits with
    /// the source transaction's LSN and commit time.
    pub(super) async fn stamp(&mut self, position: &Position, time: Option<i64>) -> Result<()> {
        if self.shared.active.is_none() {
            return Ok(());
        }
        let lsn = match position {
            Position::Postgres(p) => p.commit_lsn.to_string(),
            _ => "0/0".to_owned(),
        };
        self.stamped = true;
        self.current_time = time;
        let Some(time) = time else {
            return Ok(());
        };
        let sql = "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, \
                   'epoch'::timestamptz + $2::bigint * interval '1 microsecond')";
        self.exec(sql, &[(&lsn, Type::TEXT), (&time, Type::INT8)])
            .await
            .map_err(|e| e.with("step", "recording the source's commit time and origin"))?;
        Ok(())
    }

    /// Changes to one keyed table, each checked for a conflict first.
    pub(super) async fn apply_checked(
        &mut self,
        table: &TableRef,
        ops: &[KeylessOp],
    ) -> Result<()> {
        let Some(active) = self.shared.active.clone() else {
            return Err(Error::fatal(
                "checked changes reached a sink not set up for active-active; this is a ferry bug",
            ));
        };
        let t = self.keyed_target(table).await?;
        let policy = active.policy_for(&table.name);
        let incoming = Version {
            time_micros: self.current_time,
            site: active.source_site.clone(),
        };
        for op in ops {
            let (before, after, key_row) = match op {
                KeylessOp::Insert(row) => (None, Some(row), row),
                KeylessOp::Update { before, after } => (Some(before), Some(after), before),
                KeylessOp::Delete(before) => (Some(before), None, before),
            };
            let found = self.lookup(&t, key_row, before).await?;
            let kind = match (op, &found) {
                (_, Some(f)) if f.mine => None,
                (KeylessOp::Insert(_), None) => None,
                (KeylessOp::Insert(_), Some(_)) => Some(ConflictKind::InsertExists),
                (KeylessOp::Update { .. }, None) => Some(ConflictKind::UpdateMissing),
                (KeylessOp::Delete(_), None) => Some(ConflictKind::DeleteMissing),
                (_, Some(f)) => {
                    let differs = match f.same {
                        Some(same) => !same,
                        // Key-only image: a write from another site newer
                        // than this change cannot be what the source saw.
                        // That is enough for last writer wins only.
                        None if policy != ConflictPolicy::LastWriterWins => {
                            return Err(Error::fatal(format!(
                                "table {} has conflict policy \"{}\", which needs the whole \
                                 old row of each update and delete, and its source sends only \
                                 the key",
                                table.name,
                                policy.name()
                            ))
                            .with_fix(format!(
                                "ALTER TABLE {} REPLICA IDENTITY FULL; on every site (or use \
                                 \"last_writer_wins\" for this table)",
                                table.name
                            )));
                        }
                        None => {
                            f.version.site != incoming.site
                                && f.version.time_micros.unwrap_or(i64::MIN)
                                    > incoming.time_micros.unwrap_or(i64::MIN)
                        }
                    };
                    match (differs, op) {
                        (false, _) => None,
                        (true, KeylessOp::Delete(_)) => Some(ConflictKind::DeleteDiffers),
                        (true, _) => Some(ConflictKind::UpdateDiffers),
                    }
                }
            };
            let outcome = match kind {
                None => Outcome::ApplyIncoming,
                Some(kind) => {
                    let target = found.as_ref().map(|f| &f.version);
                    let outcome =
                        conflict::resolve(policy, kind, &incoming, target, &active.priority);
                    if outcome == Outcome::Halt {
                        return Err(Error::data(format!(
                            "conflict on {} key {}: {} (policy \"stop\"); the change from site {} \
                             is {}, the target holds {}",
                            t.display,
                            display_key(&table.key_of(key_row)),
                            kind.name(),
                            incoming.site,
                            row_json(table, after.or(before).unwrap_or(key_row)),
                            found.as_ref().map_or("no row", |f| f.image.as_str()),
                        ))
                        .with_fix(
                            "make the row what it should be on both sites, then change the \
                             table's conflict policy or restart; or choose another policy \
                             in the [active_active] section",
                        ));
                    }
                    self.log_conflict(
                        &t,
                        table,
                        key_row,
                        kind,
                        policy.name(),
                        outcome,
                        &incoming,
                        after.or(before),
                        found.as_ref(),
                    )
                    .await?;
                    outcome
                }
            };
            if outcome != Outcome::ApplyIncoming {
                continue;
            }
            self.write_one(table, op, found.is_some()).await?;
        }
        Ok(())
    }

    /// Applies one change that won (or met no conflict).
    async fn write_one(&mut self, table: &TableRef, op: &KeylessOp, exists: bool) -> Result<()> {
        let mut ops = TableOps::new(table.clone());
        match op {
            KeylessOp::Insert(row) => ops.upserts.push(row.clone()),
            KeylessOp::Delete(before) => ops.deletes.push(table.key_of(before)),
            KeylessOp::Update { before, after } => {
                let old_key = table.key_of(before);
                let full = !after.iter().any(|v| matches!(v, Value::Unchanged));
                if old_key != table.key_of(after) {
                    if full {
                        ops.deletes.push(old_key);
                        self.apply_rows(&ops).await?;
                        ops = TableOps::new(table.clone());
                        ops.upserts.push(after.clone());
                    } else {
                        return self.move_key(table, &old_key, after).await;
                    }
                } else if full || exists {
                    ops.upserts.push(after.clone());
                } else {
                    return Ok(());
                }
            }
        }
        self.apply_rows(&ops).await
    }

    /// Locks the target's row with `row`'s key and reads its version, and
    /// whether it equals `before` (when that is a whole row).
    async fn lookup(
        &mut self,
        t: &Target,
        row: &[Value],
        before: Option<&Vec<Value>>,
    ) -> Result<Option<Found>> {
        let full = before.filter(|b| !b.iter().any(|v| matches!(v, Value::Unchanged)));
        let mut cols: Vec<usize> = t.key.clone();
        let mut conds: Vec<String> = t
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("x.{} = {}", t.cols[i], t.placeholder(i, n + 1)))
            .collect();
        let same = match full {
            Some(_) => {
                let others: Vec<usize> = (0..t.cols.len()).filter(|i| !t.key.contains(i)).collect();
                let parts: Vec<String> = others
                    .iter()
                    .enumerate()
                    .map(|(n, &i)| {
                        let p = t.placeholder(i, t.key.len() + n + 1);
                        if t.types[i].kind.has_no_equality() {
                            format!("x.{}::text IS NOT DISTINCT FROM ({p})::text", t.cols[i])
                        } else {
                            format!("x.{} IS NOT DISTINCT FROM {p}", t.cols[i])
                        }
                    })
                    .collect();
                cols.extend(others);
                if parts.is_empty() {
                    "true".to_owned()
                } else {
                    parts.join(" AND ")
                }
            }
            None => "NULL::bool".to_owned(),
        };
        if conds.is_empty() {
            conds.push("false".into());
        }
        let sql = format!(
            "SELECT to_jsonb(x)::text, {same}, \
                    (extract(epoch FROM c.timestamp) * 1000000)::bigint, o.roname::text, \
                    COALESCE(x.xmin::text::bigint = \
                       pg_current_xact_id_if_assigned()::text::bigint % 4294967296, false) \
             FROM {} AS x \
             LEFT JOIN LATERAL pg_xact_commit_timestamp_origin(x.xmin) AS c ON true \
             LEFT JOIN pg_replication_origin AS o ON o.roident = c.roident \
             WHERE {} FOR UPDATE OF x",
            t.qualified,
            conds.join(" AND ")
        );
        let image = full.map(|b| b.as_slice()).unwrap_or(row);
        let owned = image.to_vec();
        let params: Vec<Param> = row_params(t, &[&owned], &cols);
        let refs: Vec<(&(dyn ToSql + Sync), Type)> = param_refs(&params, t, 1, &cols);
        self.send_begin().await?;
        let rows = self.client.query_typed(&sql, &refs).await.map_err(|e| {
            pg_error(e, "reading the target's row to check for a conflict")
                .with("table", t.display.clone())
        })?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let local = self
            .shared
            .active
            .as_ref()
            .map(|a| a.target_site.clone())
            .unwrap_or_default();
        let origin: Option<String> = r.get(3);
        let site = match origin {
            None => local,
            Some(o) => conflict::site_of_origin(&o).map(str::to_owned).unwrap_or(o),
        };
        Ok(Some(Found {
            image: r.get(0),
            same: r.get(1),
            version: Version {
                time_micros: r.get(2),
                site,
            },
            mine: r.get(4),
        }))
    }

    /// One row of `_ferry_conflicts`, in the open transaction.
    #[allow(clippy::too_many_arguments)]
    async fn log_conflict(
        &mut self,
        t: &Target,
        table: &TableRef,
        key_row: &[Value],
        kind: ConflictKind,
        policy: &str,
        outcome: Outcome,
        incoming: &Version,
        incoming_row: Option<&Vec<Value>>,
        found: Option<&Found>,
    ) -> Result<()> {
        let pipeline = self.shared.pipeline.clone();
        let key = display_key(&table.key_of(key_row));
        let source_row = incoming_row.map(|r| row_json(table, r));
        let target_row = found.map(|f| f.image.clone());
        let target_site = found.map(|f| f.version.site.clone());
        let target_time = found.and_then(|f| f.version.time_micros);
        let sql = format!(
            "INSERT INTO {CONFLICTS_TABLE} (pipeline, table_name, key, kind, policy, outcome, \
             source_site, source_time, target_site, target_time, source_row, target_row) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, \
                     'epoch'::timestamptz + $8::bigint * interval '1 microsecond', $9, \
                     'epoch'::timestamptz + $10::bigint * interval '1 microsecond', $11, $12)"
        );
        let (kind, outcome) = (kind.name().to_owned(), outcome.name().to_owned());
        let policy = policy.to_owned();
        let params: [(&(dyn ToSql + Sync), Type); 12] = [
            (&pipeline, Type::TEXT),
            (&t.display, Type::TEXT),
            (&key, Type::TEXT),
            (&kind, Type::TEXT),
            (&policy, Type::TEXT),
            (&outcome, Type::TEXT),
            (&incoming.site, Type::TEXT),
            (&incoming.time_micros, Type::INT8),
            (&target_site, Type::TEXT),
            (&target_time, Type::INT8),
            (&source_row, Type::TEXT),
            (&target_row, Type::TEXT),
        ];
        self.exec(&sql, &params)
            .await
            .map_err(|e| e.with("step", "writing the conflict log"))?;
        tracing::info!(
            table = %t.display,
            key = %key,
            kind = %kind,
            policy = %policy,
            outcome = %outcome,
            "conflict"
        );
        Ok(())
    }
}

/// A row as a JSON object of its values' text forms (for the conflict log).
fn row_json(table: &TableRef, row: &[Value]) -> String {
    let mut out = String::from("{");
    for (i, (c, v)) in table.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        json_string(&mut out, &c.name);
        out.push_str(": ");
        match v {
            Value::Null => out.push_str("null"),
            Value::Unchanged => out.push_str("\"(unchanged)\""),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(n) => out.push_str(&n.to_string()),
            Value::Text(t) | Value::Decimal(t) => json_string(&mut out, t),
            Value::Json(j) => out.push_str(j),
            v => json_string(&mut out, &v.to_string()),
        }
    }
    out.push('}');
    out
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
