//! The catalog's JSON API, over the access core.
//!
//! | route | answers |
//! |---|---|
//! | `GET /api/products?q=&tag=&domain=&owner=&classification=` | products the caller may discover |
//! | `GET /api/products/{domain}/{name}` | manifest, contract (columns with classification and the caller's masks), status, health, usage, snippets |
//! | `GET /api/products/{domain}/{name}/usage?days=30` | reads, rows and distinct consumers per day |
//! | `GET /api/health` | gateway and product health, for the products the caller may discover |
//! | `GET /api/audit?limit=&product=` | the newest audit records, read through the governed `_governance/audit` product |

use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::session::{client, principal};
use super::{Error, HttpState, Result};
use crate::access::{Call, ReadRequest, Shard, SqlRead};
use crate::auth::Principal;

/// Search criteria; every given one must match.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Search {
    /// Case-insensitive text in the address, title, description or tags.
    #[serde(default)]
    pub(crate) q: String,
    /// A tag (exact, case-insensitive).
    #[serde(default)]
    pub(crate) tag: String,
    /// A domain (exact).
    #[serde(default)]
    pub(crate) domain: String,
    /// An owning team (exact, case-insensitive).
    #[serde(default)]
    pub(crate) owner: String,
    /// A classification some column carries (exact).
    #[serde(default)]
    pub(crate) classification: String,
}

/// The summary of one product in a listing, from its description.
fn summary(d: &Value) -> Value {
    let p = &d["product"];
    let mut classes: Vec<String> = d["contract"]["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["classification"].as_str().map(str::to_string))
        .collect();
    classes.sort();
    classes.dedup();
    json!({
        "address": p["address"],
        "domain": p["domain"],
        "name": p["name"],
        "title": p["title"],
        "description": p["description"],
        "owner": p["owner"],
        "tags": p["tags"],
        "status": d["status"],
        "classifications": classes,
    })
}

fn matches(s: &Value, q: &Search) -> bool {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_lowercase();
    let tags: Vec<String> = s["tags"].as_array().into_iter().flatten().map(text).collect();
    let needle = q.q.trim().to_lowercase();
    let hit = needle.is_empty()
        || [&s["address"], &s["title"], &s["description"]].iter().any(|v| text(v).contains(&needle))
        || tags.iter().any(|t| t.contains(&needle));
    hit && (q.tag.is_empty() || tags.contains(&q.tag.trim().to_lowercase()))
        && (q.domain.is_empty() || s["domain"].as_str() == Some(q.domain.trim()))
        && (q.owner.is_empty() || text(&s["owner"]) == q.owner.trim().to_lowercase())
        && (q.classification.is_empty()
            || s["classifications"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c.as_str() == Some(q.classification.trim())))
}

/// Every product `p` may discover that matches `q`, as summaries.
pub(crate) fn search(state: &HttpState, p: &Principal, q: &Search) -> Vec<Value> {
    state
        .core
        .product_keys(p)
        .into_iter()
        .filter_map(|(domain, name)| state.core.describe(p, (domain, name, None)).ok())
        .map(|d| summary(&d))
        .filter(|s| matches(s, q))
        .collect()
}

/// `GET /api/products`.
pub(crate) async fn products(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Search>,
) -> Result<Json<Value>> {
    let p = principal(&state, &headers, peer).await?;
    Ok(Json(json!({"products": search(&state, &p, &q)})))
}

/// `mesh.<domain>.<name>` with each part quoted when SQL needs it.
pub(crate) fn sql_name(domain: &str, name: &str) -> String {
    let part = |s: &str| {
        let plain = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain { s.to_string() } else { format!("\"{}\"", s.replace('"', "\"\"")) }
    };
    format!("mesh.{}.{}", part(domain), part(name))
}

/// Copy-paste code reading the product: pyarrow (Flight), ADBC with polars (Flight SQL), SQL.
pub(crate) fn snippets(flight_url: &str, domain: &str, name: &str, secured: bool) -> Value {
    let py = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let (d, n) = (py(domain), py(name));
    let table = sql_name(domain, name);
    let sign_in = if secured {
        "token = client.authenticate_basic_token(\"USER\", \"PASSWORD\")\noptions = flight.FlightCallOptions(headers=[token])\n"
    } else {
        "options = flight.FlightCallOptions()\n"
    };
    let pyarrow = format!(
        "import pyarrow.flight as flight\n\nclient = flight.connect(\"{flight_url}\")\n{sign_in}\
         info = client.get_flight_info(flight.FlightDescriptor.for_path(\"{d}\", \"{n}\"), options)\n\
         table = client.do_get(info.endpoints[0].ticket, options).read_all()\nprint(table.num_rows, table.schema)\n"
    );
    let kwargs = if secured { ", db_kwargs={\"username\": \"USER\", \"password\": \"PASSWORD\"}" } else { "" };
    let adbc = format!(
        "import adbc_driver_flightsql.dbapi as flightsql\nimport polars as pl\n\n\
         with flightsql.connect(\"{flight_url}\"{kwargs}) as conn:\n    \
         df = pl.read_database(\"SELECT * FROM {} LIMIT 1000\", conn)\nprint(df)\n",
        table.replace('"', "\\\"")
    );
    json!({"pyarrow": pyarrow, "adbc_polars": adbc, "sql": format!("SELECT * FROM {table} LIMIT 1000;")})
}

/// The product page's document: the description, with health, usage and snippets.
pub(crate) async fn product_document(state: &HttpState, p: &Principal, domain: &str, name: &str) -> Result<Value> {
    let mut d = state.core.describe_live(p, (domain.to_string(), name.to_string(), None)).await?;
    let address = format!("{domain}/{name}");
    let health = state.core.health(p).await;
    d["health"] = health["products"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["product"] == address)
        .cloned()
        .unwrap_or(Value::Null);
    d["usage"] = match state.core.usage(p, (domain.to_string(), name.to_string()), 30).await? {
        Some(days) => json!(days),
        None => Value::Null,
    };
    d["snippets"] = snippets(&state.flight_url, domain, name, state.auth.is_some());
    Ok(d)
}

/// `GET /api/products/{domain}/{name}`.
pub(crate) async fn product(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((domain, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let p = principal(&state, &headers, peer).await?;
    Ok(Json(product_document(&state, &p, &domain, &name).await?))
}

/// How many days of usage.
#[derive(Debug, Deserialize)]
pub(crate) struct Days {
    #[serde(default = "thirty")]
    days: u32,
}

fn thirty() -> u32 {
    30
}

/// `GET /api/products/{domain}/{name}/usage`.
pub(crate) async fn usage(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((domain, name)): Path<(String, String)>,
    Query(q): Query<Days>,
) -> Result<Json<Value>> {
    let p = principal(&state, &headers, peer).await?;
    match state.core.usage(&p, (domain, name), q.days).await? {
        Some(days) => Ok(Json(json!({"days": days}))),
        None => Err(Error::Core(tonic::Status::failed_precondition(
            "usage comes from the audit log, which this gateway does not keep (--audit-log)",
        ))),
    }
}

/// `GET /api/health`.
pub(crate) async fn health(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let p = principal(&state, &headers, peer).await?;
    Ok(Json(state.core.health(&p).await))
}

/// Which audit records.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default = "hundred")]
    pub(crate) limit: u32,
    /// `domain/product`: only records about it.
    #[serde(default)]
    pub(crate) product: String,
}

fn hundred() -> u32 {
    100
}

/// A domain or product name as the audit filter takes it (never `..`, never a quote).
fn name_part(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// Most audit records one request returns.
pub(crate) const MAX_AUDIT_ROWS: u32 = 1000;

/// The newest audit records `p` may read (the `_governance/audit` product, governed: masks and
/// refusals apply as over Flight), as JSON rows.
pub(crate) async fn audit_records(
    state: &HttpState,
    p: Principal,
    headers: &HeaderMap,
    peer: SocketAddr,
    q: &AuditQuery,
) -> Result<Vec<Value>> {
    let mut filter = String::new();
    if !q.product.is_empty() {
        let (domain, product) = q
            .product
            .split_once('/')
            .filter(|(d, n)| [d, n].iter().all(|s| name_part(s)))
            .ok_or_else(|| {
                Error::BadRequest("`product` is `domain/product`: letters, digits, `_`, `-`, `.`, starting with a letter, digit or `_`".into())
            })?;
        filter = format!(" WHERE resource['domain'] = '{domain}' AND resource['product'] = '{product}'");
    }
    let sql = format!(
        "SELECT seq, time, kind, rpc, actor['sub'] AS subject, resource['domain'] AS domain, \
         resource['product'] AS product, decision['effect'] AS decision, outcome['status'] AS status, \
         outcome['rows'] AS rows FROM mesh._governance.audit{filter} ORDER BY seq DESC LIMIT {}",
        q.limit.clamp(1, MAX_AUDIT_ROWS)
    );
    let call = Call { rpc: "HTTP /api/audit".into(), principal: p, client: client(headers, peer) };
    let plan = state.core.authorize(&call, ReadRequest::Sql(SqlRead::new(sql))).await?;
    let stream = state.core.execute(&call, plan, Shard::WHOLE).await?;
    let batches: Vec<RecordBatch> = stream.batches.try_collect().await?;
    json_rows(&batches)
}

/// Record batches as JSON objects.
fn json_rows(batches: &[RecordBatch]) -> Result<Vec<Value>> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let bad = |e: arrow::error::ArrowError| Error::Core(tonic::Status::internal(format!("encoding rows as JSON: {e}")));
    writer.write_batches(&refs).map_err(bad)?;
    writer.finish().map_err(bad)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Core(tonic::Status::internal(format!("encoding rows as JSON: {e}"))))
}

/// `GET /api/audit`.
pub(crate) async fn audit(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>> {
    let p = principal(&state, &headers, peer).await?;
    Ok(Json(json!({"records": audit_records(&state, p, &headers, peer, &q).await?})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_matches_every_given_criterion() {
        let s = json!({"address": "sales/orders", "domain": "sales", "title": "Orders", "description": "All orders",
                       "owner": "sales-data", "tags": ["sales", "Core"], "classifications": ["pii"]});
        let q = |f: fn(&mut Search)| {
            let mut q = Search::default();
            f(&mut q);
            matches(&s, &q)
        };
        assert!(q(|_| {}));
        assert!(q(|q| q.q = "ORDERS".into()));
        assert!(q(|q| q.tag = "core".into()));
        assert!(q(|q| {
            q.domain = "sales".into();
            q.classification = "pii".into();
        }));
        assert!(!q(|q| q.domain = "sal".into()));
        assert!(!q(|q| q.classification = "confidential".into()));
        assert!(!q(|q| q.owner = "someone".into()));
        assert!(!q(|q| q.q = "shipments".into()));
    }

    #[test]
    fn audit_filters_take_names_only() {
        assert!(name_part("sales") && name_part("daily_revenue") && name_part("v1.2-x"));
        for bad in ["", "..", ".hidden", "a'b", "a b", "-x", "x;--"] {
            assert!(!name_part(bad), "{bad}");
        }
    }

    #[test]
    fn table_names_are_quoted_when_sql_needs_it() {
        assert_eq!(sql_name("sales", "orders"), "mesh.sales.orders");
        assert_eq!(sql_name("sales", "daily-revenue"), "mesh.sales.\"daily-revenue\"");
        assert_eq!(sql_name("Sales", "a\"b"), "mesh.\"Sales\".\"a\"\"b\"");
    }

    #[test]
    fn snippets_name_the_product_and_the_address() {
        let s = snippets("grpc://127.0.0.1:8815", "sales", "orders", true);
        let py = s["pyarrow"].as_str().unwrap();
        assert!(py.contains("flight.connect(\"grpc://127.0.0.1:8815\")"));
        assert!(py.contains("for_path(\"sales\", \"orders\")"));
        assert!(py.contains("authenticate_basic_token"));
        assert!(s["adbc_polars"].as_str().unwrap().contains("SELECT * FROM mesh.sales.orders"));
        assert_eq!(s["sql"], "SELECT * FROM mesh.sales.orders LIMIT 1000;");
    }
}
