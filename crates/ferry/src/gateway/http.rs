//! The HTTP/JSON API of a gateway node.
//!
//! * `GET /tables/{table}/rows/{key}`: one row by key.
//! * `GET /tables/{table}/rows?from=&to=&where=&limit=`: rows in key order,
//!   `from <= key < to`, those for which `where` holds, at most `limit`.
//! * `GET /status`: the node's state, position, staleness and memory.
//!
//! Keys are written as in `ferry verify --after`: one value per key
//! column, separated by commas, text in single quotes when it holds a
//! comma (`42`, `'eu',42`); percent-encode them in a URL. Every read takes
//! `consistency=strong` (the default: every transaction committed before
//! the request is visible) or `eventual` (at once, as the replica is), and
//! `min_position=<token>` (a node already past the token answers at once).
//! Every answer carries the node's `position` token for these rows,
//! `staleness_ms` and `consistency`: `strong`, `eventual`, or
//! `min_position` (the node was past the token: answered without a
//! lookup). Strong reads the node cannot answer safely get 503 with
//! the reason; they are never answered from a replica that may be stale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use ferry_core::{Error, TableRef, Value};
use ferry_pipeline::predicate::Expr;
use serde_json::{Map, Value as Json, json};
use tokio::sync::watch;

use super::Node;
use super::replica::Table;
use super::token::Token;

/// Serves the API on `listener` until `shutdown`.
pub fn serve(listener: tokio::net::TcpListener, node: Arc<Node>, shutdown: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/tables/{table}/rows/{key}", get(row))
        .route("/tables/{table}/rows", get(rows))
        .route("/status", get(status))
        .with_state(node);
    // Delayed ACKs against Nagle's algorithm stall small answers by 40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let mut sd = shutdown;
        let stop = async move {
            let _ = sd.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("the gateway's HTTP server stopped: {e}");
        }
    });
}

/// A request turned down: small enough to travel in a `Result`, made a
/// response at the end.
struct Reject {
    status: StatusCode,
    body: Json,
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        answer(self.status, self.body)
    }
}

fn answer(status: StatusCode, body: Json) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bad_request(e: Error) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({ "error": e.to_string(), "fix": e.fix() }),
    )
}

/// Query parameters: `name=value` pairs, percent-decoded.
fn params(query: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Result<String, Error> {
    let bad = || {
        Error::fatal(format!(
            "{s:?} in the query string is not valid percent-encoding"
        ))
        .with_fix("percent-encode the value as UTF-8 (%27 for a quote, %2C for a comma)")
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// What every read asks for.
#[derive(Debug)]
struct ReadOptions {
    strong: bool,
    min_position: Option<Token>,
}

const READ_PARAMS: &str = "consistency, min_position";

fn read_options(params: &[(String, String)], allowed: &[&str]) -> Result<ReadOptions, Error> {
    let mut o = ReadOptions {
        strong: true,
        min_position: None,
    };
    for (k, v) in params {
        match k.as_str() {
            "consistency" => {
                o.strong = match v.as_str() {
                    "strong" => true,
                    "eventual" => false,
                    _ => {
                        return Err(Error::fatal(format!("consistency={v:?} is not a mode"))
                            .with_fix(
                                "use consistency=strong (the default) or consistency=eventual",
                            ));
                    }
                }
            }
            "min_position" => {
                o.min_position = Some(Token::parse(v).map_err(|e| {
                    Error::fatal(e).with_fix(
                        "pass a token a gateway answered with, or one `ferry position` printed",
                    )
                })?)
            }
            other if allowed.contains(&other) => {}
            other => {
                return Err(
                    Error::fatal(format!("unknown query parameter {other:?}")).with_fix(format!(
                        "use {READ_PARAMS}{}{}",
                        if allowed.is_empty() { "" } else { ", " },
                        allowed.join(", ")
                    )),
                );
            }
        }
    }
    Ok(o)
}

/// What a read may serve from, once the node agreed to answer.
struct Served {
    consistency: &'static str,
    /// The replica is known to hold everything committed before this.
    fresh_as_of: Option<Instant>,
}

/// Decides whether (and once) the node may answer: waits for a strong
/// read, returns the 503 otherwise.
async fn admit(node: &Node, o: &ReadOptions) -> Result<Served, Reject> {
    let arrived = Instant::now();
    let refused = |reason: String| {
        let staleness = node.staleness().map(ms);
        Reject {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: json!({
                "error": reason,
                "position": node.token(node.replica.applied().position.as_ref()),
                "staleness_ms": staleness,
                "fix": "retry, or read with consistency=eventual to accept stale rows",
            }),
        }
    };
    if let Some(r) = node.eventual_refusal() {
        return Err(refused(r.reason));
    }
    let past_token = o.min_position.as_ref().and_then(|t| node.past(t));
    // Every write the token stands for is here: answered without asking
    // the source (what `consistency` says). An eventual read is answered
    // so even while the stream is broken; a strong one needs it healthy.
    if past_token == Some(true) && (!o.strong || node.strong_refusal().is_none()) {
        return Ok(Served {
            consistency: "min_position",
            fresh_as_of: fresh_as_of(node),
        });
    }
    // A token this node is not past yet (or of another history) needs
    // the same wait as a strong read.
    if o.strong || o.min_position.is_some() {
        return match node.wait_strong(arrived).await {
            Ok(looked_up) => Ok(Served {
                consistency: "strong",
                fresh_as_of: Some(looked_up),
            }),
            Err(r) => Err(refused(r.reason)),
        };
    }
    Ok(Served {
        consistency: "eventual",
        fresh_as_of: fresh_as_of(node),
    })
}

fn fresh_as_of(node: &Node) -> Option<Instant> {
    node.staleness().and_then(|d| Instant::now().checked_sub(d))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Finds a table by its full name (`public.items`) or, when unique, its
/// bare name (`items`).
fn find<'a>(
    tables: &'a std::collections::BTreeMap<String, Table>,
    name: &str,
) -> Result<&'a Table, Reject> {
    if let Some(t) = tables.get(name) {
        return Ok(t);
    }
    let mut bare = tables.values().filter(|t| t.schema.name.name == name);
    match (bare.next(), bare.next()) {
        (Some(t), None) => Ok(t),
        _ => Err(Reject {
            status: StatusCode::NOT_FOUND,
            body: json!({
                "error": format!("no table {name:?} on this gateway"),
                "fix": format!(
                    "use one of: {}",
                    tables.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }),
        }),
    }
}

fn envelope(
    node: &Node,
    served: &Served,
    table: &Table,
    applied: Option<&ferry_core::Position>,
) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("table".into(), table.schema.name.to_string().into());
    m.insert("consistency".into(), served.consistency.into());
    m.insert("position".into(), node.token(applied).into());
    m.insert(
        "staleness_ms".into(),
        served.fresh_as_of.map(|t| ms(t.elapsed())).into(),
    );
    m
}

async fn row(
    State(node): State<Arc<Node>>,
    Path((table, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let o = match params(query.as_deref()).and_then(|p| read_options(&p, &[])) {
        Ok(o) => o,
        Err(e) => return bad_request(e),
    };
    let served = match admit(&node, &o).await {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    node.replica.read(|s| {
        let t = match find(&s.tables, &table) {
            Ok(t) => t,
            Err(r) => return r.into_response(),
        };
        let key = match crate::verify::parse_key(&t.schema, &key) {
            Ok(k) => k,
            Err(e) => return bad_request(e),
        };
        let mut body = envelope(&node, &served, t, s.applied.as_ref());
        let found = t.rows.get(&key);
        body.insert(
            "row".into(),
            found.map_or(Json::Null, |r| row_json(&t.schema, r)),
        );
        let status = if found.is_some() {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        answer(status, Json::Object(body))
    })
}

/// Rows returned by a range read when `limit` is not given, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

async fn rows(
    State(node): State<Arc<Node>>,
    Path(table): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match params(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let o = match read_options(&params, &["from", "to", "where", "limit"]) {
        Ok(o) => o,
        Err(e) => return bad_request(e),
    };
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit").map(str::parse::<usize>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return bad_request(
                Error::fatal(format!(
                    "limit={:?} is out of range",
                    get("limit").unwrap_or("")
                ))
                .with_fix(format!("use 1 to {MAX_LIMIT}")),
            );
        }
    };
    let filter = match get("where").map(Expr::parse) {
        None => None,
        Some(Ok(e)) => Some(e),
        Some(Err(why)) => {
            return bad_request(
                Error::fatal(format!(
                    "where={:?} is not a filter: {why}",
                    get("where").unwrap_or("")
                ))
                .with_fix("write it like region = 'eu' AND amount > 10"),
            );
        }
    };
    let served = match admit(&node, &o).await {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    node.replica.read(|s| {
        let t = match find(&s.tables, &table) {
            Ok(t) => t,
            Err(r) => return r.into_response(),
        };
        let bound = |name: &str| {
            get(name)
                .map(|k| crate::verify::parse_key(&t.schema, k))
                .transpose()
        };
        let (from, to) = match (bound("from"), bound("to")) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return bad_request(e),
        };
        if let Some(f) = &filter
            && let Some(c) = f
                .columns()
                .into_iter()
                .find(|c| t.schema.column_index(c).is_none())
        {
            return bad_request(
                Error::fatal(format!(
                    "where= reads column {c:?}, which {} does not have",
                    t.schema.name
                ))
                .with_fix(format!(
                    "use its columns: {}",
                    t.schema
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
        }
        use std::ops::Bound;
        let lower = from.map_or(Bound::Unbounded, Bound::Included);
        let upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        if matches!((&lower, &upper), (Bound::Included(a), Bound::Excluded(b)) if a >= b) {
            return bad_request(
                Error::fatal("from= is not below to=").with_fix("give from < to, or leave one out"),
            );
        }
        let mut out = Vec::new();
        let mut next = None;
        for (k, r) in t.rows.range((lower, upper)) {
            if filter
                .as_ref()
                .is_some_and(|f| f.eval(&t.schema, r) != Some(true))
            {
                continue;
            }
            if out.len() == limit {
                next = Some(key_text(k));
                break;
            }
            out.push(row_json(&t.schema, r));
        }
        let mut body = envelope(&node, &served, t, s.applied.as_ref());
        body.insert("rows".into(), Json::Array(out));
        body.insert("next".into(), next.into());
        answer(StatusCode::OK, Json::Object(body))
    })
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let strong = node.strong_refusal().map(|r| r.reason);
    let applied = node.replica.applied().position;
    let tables: Map<String, Json> = node.replica.read(|s| {
        s.tables
            .iter()
            .map(|(name, t)| {
                let per_row = t.bytes.checked_div(t.rows.len()).unwrap_or(0);
                (
                    name.clone(),
                    json!({ "rows": t.rows.len(), "bytes": t.bytes, "bytes_per_row": per_row }),
                )
            })
            .collect()
    });
    answer(
        StatusCode::OK,
        json!({
            "epoch": node.epoch,
            "phase": node.stats.phase(),
            "position": node.token(applied.as_ref()),
            "strong_reads": if strong.is_none() { "served" } else { "refused" },
            "refused_because": strong,
            "staleness_ms": node.staleness().map(ms),
            "lookups": node.lookups.count(),
            "lookup_query_micros": node.lookups.query_micros(),
            "strong_wait": {
                "reads": node.strong_wait.reads.load(Relaxed),
                "lookup_micros": node.strong_wait.lookup_micros.load(Relaxed),
                "apply_micros": node.strong_wait.apply_micros.load(Relaxed),
                "nudges": node.strong_wait.nudges.load(Relaxed),
            },
            "last_lookup_error": node.lookups.latest().and_then(|l| l.outcome.err()),
            "tables": tables,
        }),
    )
}

/// A row as a JSON object, column by column.
fn row_json(schema: &TableRef, row: &[Value]) -> Json {
    Json::Object(
        schema
            .columns
            .iter()
            .zip(row)
            .map(|(c, v)| (c.name.clone(), value_json(v)))
            .collect(),
    )
}

/// Ferry's values as JSON: numbers and booleans as such, JSON columns as
/// JSON, arrays as arrays; exact decimals, times, UUIDs and bytes as text
/// (bytes as `\x` hex, as PostgreSQL writes them), so nothing is rounded.
fn value_json(v: &Value) -> Json {
    match v {
        Value::Null | Value::Unchanged => Json::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(x) if x.is_finite() => (*x).into(),
        Value::Text(s) => s.clone().into(),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| s.clone().into()),
        Value::Bytes(b) => {
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("\\x");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s.into()
        }
        Value::Array(items) => items.iter().map(value_json).collect(),
        other => other.to_string().into(),
    }
}

/// A key in the form the API reads (`42`, `'eu',42`).
fn key_text(key: &[Value]) -> String {
    key.iter()
        .map(|v| match v {
            Value::Int(i) => i.to_string(),
            Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
            other => {
                let s = other.to_string();
                format!("'{}'", s.trim_matches('"').replace('\'', "''"))
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_and_unknown_parameters_are_refused() {
        let p = params(Some("from=%27eu%27%2C4&limit=5&where=a+%3D+1")).unwrap();
        assert_eq!(p[0], ("from".into(), "'eu',4".into()));
        assert_eq!(p[2], ("where".into(), "a = 1".into()));
        assert!(params(Some("a=%zz")).is_err());
        assert!(params(Some("a=%e2%82")).is_err());
        let e = read_options(&params(Some("consistancy=strong")).unwrap(), &[]).unwrap_err();
        assert!(e.fix().unwrap_or("").contains("consistency"));
        let o = read_options(&params(Some("consistency=eventual")).unwrap(), &[]).unwrap();
        assert!(!o.strong);
        assert!(read_options(&params(Some("min_position=x")).unwrap(), &[]).is_err());
    }

    #[test]
    fn values_become_json_without_losing_precision() {
        assert_eq!(value_json(&Value::Decimal("12.50".into())), json!("12.50"));
        assert_eq!(
            value_json(&Value::Json("{\"a\":1}".into())),
            json!({"a": 1})
        );
        assert_eq!(value_json(&Value::Bytes(vec![1, 255])), json!("\\x01ff"));
        assert_eq!(value_json(&Value::Float(f64::NAN)), json!("NaN"));
        assert_eq!(
            key_text(&[Value::Text("it's".into()), Value::Int(4)]),
            "'it''s',4"
        );
    }
}
