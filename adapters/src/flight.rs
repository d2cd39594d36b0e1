//! Remote Flight and Flight SQL servers: a product served by another gateway (federation), by
//! any Flight server's path, or by a Flight SQL query.
//!
//! The operator lists the servers in the stores file (`--stores`, key `flight:`) with their
//! address, TLS root, a service token by reference, how the caller's identity travels and the
//! domains each is open to ([`FlightConfig`]). A binding names one and what to read:
//!
//! ```yaml
//! adapter: flight
//! server: hq               # a `flight:` entry of the stores file
//! product: sales/orders    # a product of a remote meshgate gateway; or:
//! # path: [exports, daily] # any Flight server's path (read whole, filtered here); or:
//! # sql: SELECT id, amount FROM orders   # a Flight SQL query
//! ```
//!
//! What the remote takes is sent to it: to a meshgate gateway, columns, filter and limit in its
//! JSON read command (the same engine decides every predicate the same way); to a Flight SQL
//! server, a `SELECT` of the needed columns around the query with the predicates it decides as
//! DataFusion does ([`crate::pushdown`]) and the limit; to a plain path, nothing.
//!
//! Identity: `service` (default) sends the configured token and names the caller in the
//! `x-meshgate-on-behalf-of` header, which a remote gateway writes into its audit record;
//! `forward` sends the caller's own bearer token ([`Caller`]), so the remote's policies decide
//! for the caller. Opening a product and health probes always use the service token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, SchemaRef};
use arrow_flight::error::FlightError;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightClient, FlightDescriptor, FlightInfo};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Column;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::unparser::dialect::DefaultDialect;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::pushdown::{self, Agreement};
use crate::secret::{Secret, SecretRef};
use crate::stores::duration;
use crate::{Adapter, Binding, Error, Health, OpenContext, Opened, Result, StorageHandle};

/// The header naming the caller when the service token is used.
pub const ON_BEHALF_OF: &str = "x-meshgate-on-behalf-of";

/// Who a read is for. The gateway puts it in the session (`SessionConfig` extension) of every
/// read; adapters that call another service for the caller read it from there.
#[derive(Clone)]
pub struct Caller {
    /// The caller's subject.
    pub subject: String,
    /// The bearer token the caller presented, if it authenticated with one.
    pub bearer: Option<Secret>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller").field("subject", &self.subject).field("bearer", &self.bearer.is_some()).finish()
    }
}

/// How the caller's identity reaches the remote server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// The configured service token; the caller named in `x-meshgate-on-behalf-of`.
    #[default]
    Service,
    /// The caller's own bearer token.
    Forward,
}

/// One remote Flight server the gateway may read, from the stores file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlightConfig {
    /// The name bindings use (`server: <name>`).
    pub name: String,
    /// Domains whose bindings may read it; absent: every domain.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// `grpc://host:port` or `grpc+tls://host:port`.
    pub url: String,
    /// CA certificate (PEM) the server's certificate must chain to; required with `grpc+tls`.
    #[serde(default)]
    pub tls_root_cert: Option<String>,
    /// Service bearer token, by reference.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// `service` (default) or `forward`.
    #[serde(default)]
    pub identity: Identity,
    /// How long connecting may take (default 5s).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// How long one call may take, a whole stream included (default 10m).
    #[serde(default)]
    pub timeout: Option<String>,
}

impl FlightConfig {
    fn bad(&self, why: impl fmt::Display) -> Error {
        Error::InvalidBinding(format!("server `{}`: {why}", self.name))
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<()> {
        self.endpoint().map(|_| ())
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let (scheme, rest) = self.url.split_once("://").ok_or_else(|| self.bad("url is not `grpc://host:port`"))?;
        let tls = match scheme {
            "grpc" | "grpc+tcp" | "http" => false,
            "grpc+tls" | "https" => true,
            _ => return Err(self.bad("url scheme is not grpc, grpc+tcp or grpc+tls")),
        };
        let http = format!("{}://{rest}", if tls { "https" } else { "http" });
        let connect = duration("connectTimeout", &self.connect_timeout, Duration::from_secs(5))?;
        let timeout = duration("timeout", &self.timeout, Duration::from_secs(600))?;
        let mut e = Endpoint::from_shared(http)
            .map_err(|_| self.bad("url is not `grpc://host:port`"))?
            .connect_timeout(connect)
            .timeout(timeout)
            .tcp_nodelay(true);
        if tls {
            let path = self.tls_root_cert.as_ref().ok_or_else(|| self.bad("grpc+tls needs `tlsRootCert`"))?;
            let pem =
                std::fs::read(path).map_err(|e| self.bad(format!("tlsRootCert cannot be read ({})", e.kind())))?;
            e = e
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| self.bad(format!("TLS: {e}")))?;
        }
        Ok(e)
    }
}

/// A product read from a remote Flight server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightBinding {
    /// A `flight:` entry of the stores file.
    pub server: String,
    /// `domain/product[/port]` of a remote meshgate gateway.
    #[serde(default)]
    pub product: Option<String>,
    /// A Flight path of any Flight server.
    #[serde(default)]
    pub path: Option<Vec<String>>,
    /// One Flight SQL query.
    #[serde(default)]
    pub sql: Option<String>,
}

/// What a binding reads.
#[derive(Debug, Clone)]
enum Source {
    Product(String),
    Path(Vec<String>),
    Sql(String),
}

impl Source {
    fn of(b: &FlightBinding) -> Result<Self> {
        match (&b.product, &b.path, &b.sql) {
            (Some(p), None, None) => {
                let parts: Vec<&str> = p.split('/').collect();
                if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                    return Err(Error::InvalidBinding(format!("product `{p}` is not `domain/product[/port]`")));
                }
                Ok(Source::Product(p.clone()))
            }
            (None, Some(path), None) if !path.is_empty() => Ok(Source::Path(path.clone())),
            (None, None, Some(q)) => {
                let bad = |why: &str| Error::InvalidBinding(format!("sql: {why}"));
                let statements =
                    Parser::parse_sql(&GenericDialect {}, q).map_err(|e| bad(&format!("does not parse ({e})")))?;
                match statements.as_slice() {
                    [datafusion::sql::sqlparser::ast::Statement::Query(query)] => Ok(Source::Sql(query.to_string())),
                    _ => Err(bad("must be exactly one SELECT statement")),
                }
            }
            _ => Err(Error::InvalidBinding(
                "a flight binding names exactly one of `product`, `path` (non-empty) or `sql`".into(),
            )),
        }
    }
}

/// The remote adapter.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlightAdapter;

#[async_trait]
impl Adapter for FlightAdapter {
    fn kind(&self) -> &'static str {
        "flight"
    }

    async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Opened> {
        let Binding::Flight(b) = binding else {
            return Err(Error::InvalidBinding(format!("the flight adapter cannot open a {} binding", binding.kind())));
        };
        let config = ctx.stores.flight(&b.server, &ctx.domain)?;
        let source = Source::of(b)?;
        let service = match &config.token {
            Some(t) => Some(t.resolve().map_err(|e| config.bad(e))?),
            None => None,
        };
        let remote = Arc::new(Remote {
            name: config.name.clone(),
            channel: config.endpoint()?.connect_lazy(),
            identity: config.identity,
            service,
        });
        let whole = RemoteTable::descriptor(&source, &[], None, &[], None)?;
        let info = remote.info(whole, &remote.service_headers(None)).await?;
        let schema = info
            .try_decode_schema()
            .map_err(|_| Error::Unavailable(format!("server `{}` sent a schema that cannot be read", remote.name)))?;
        let table = RemoteTable { remote: Arc::clone(&remote), source, schema: Arc::new(schema) };
        let storage = Arc::new(RemoteHealth { remote, probe: table.probe() });
        Ok(Opened { table: Arc::new(table), storage, versions: None })
    }
}

/// A connection to one remote server.
struct Remote {
    name: String,
    channel: Channel,
    identity: Identity,
    service: Option<Secret>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("name", &self.name).field("identity", &self.identity).finish()
    }
}

type Headers = Vec<(&'static str, String)>;

impl Remote {
    /// The service token, with the caller named when there is one.
    fn service_headers(&self, caller: Option<&Caller>) -> Headers {
        let mut h = Headers::new();
        if let Some(t) = &self.service {
            h.push(("authorization", format!("Bearer {}", t.expose())));
        }
        if let Some(c) = caller {
            h.push((ON_BEHALF_OF, c.subject.clone()));
        }
        h
    }

    /// The headers of a read for `caller`.
    fn headers(&self, caller: Option<&Caller>) -> Result<Headers> {
        match self.identity {
            Identity::Service => Ok(self.service_headers(caller)),
            Identity::Forward => match caller.and_then(|c| c.bearer.as_ref()) {
                Some(t) => Ok(vec![("authorization", format!("Bearer {}", t.expose()))]),
                None => Err(Error::Unavailable(format!(
                    "server `{}` reads with the caller's own token; call the gateway with a bearer token",
                    self.name
                ))),
            },
        }
    }

    fn client(&self, headers: &Headers) -> Result<FlightClient> {
        let mut c = FlightClient::new(self.channel.clone());
        for (k, v) in headers {
            c.add_header(k, v).map_err(|e| self.failed(&e))?;
        }
        Ok(c)
    }

    fn failed(&self, e: &FlightError) -> Error {
        tracing::warn!(server = %self.name, error = %e, "flight: remote call failed");
        let why = match e {
            FlightError::Tonic(s) => match s.code() {
                tonic::Code::Unauthenticated => "refused the gateway's credentials",
                tonic::Code::PermissionDenied => "refused the read (permission denied there)",
                tonic::Code::NotFound => "has no such product or path",
                tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => "refused the request",
                tonic::Code::ResourceExhausted => "is busy",
                tonic::Code::DeadlineExceeded => "did not answer in time",
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => "cannot be reached",
                _ => "failed the read",
            },
            _ => "failed the read",
        };
        Error::Unavailable(format!("server `{}` {why}", self.name))
    }

    async fn info(&self, descriptor: FlightDescriptor, headers: &Headers) -> Result<FlightInfo> {
        self.client(headers)?.get_flight_info(descriptor).await.map_err(|e| self.failed(&e))
    }
}

/// The table DataFusion reads.
#[derive(Debug)]
struct RemoteTable {
    remote: Arc<Remote>,
    source: Source,
    schema: SchemaRef,
}

impl RemoteTable {
    /// How far the remote decides predicates on `c` as DataFusion does.
    fn agreement(&self, c: &Column) -> Option<Agreement> {
        let f = self.schema.field_with_name(&c.name).ok()?;
        match &self.source {
            // Another meshgate gateway: the same engine.
            Source::Product(_) => Some(Agreement::Ordered),
            Source::Path(_) => None,
            Source::Sql(_) => Some(match f.data_type() {
                t if t.is_integer() => Agreement::Ordered,
                DataType::Boolean | DataType::Date32 | DataType::Decimal128(..) | DataType::Timestamp(..) => {
                    Agreement::Ordered
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Agreement::Equality,
                _ => Agreement::Nulls,
            }),
        }
    }

    fn pushable(&self, e: &Expr) -> bool {
        pushdown::pushable(e, &|c| self.agreement(c))
    }

    /// The request for `columns` of `schema` where `conditions` hold, at most `limit` rows.
    fn descriptor(
        source: &Source,
        columns: &[&str],
        limit: Option<usize>,
        conditions: &[String],
        all: Option<&[&str]>,
    ) -> Result<FlightDescriptor> {
        let filter = conditions.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" AND ");
        Ok(match source {
            Source::Product(p) => {
                let mut cmd = serde_json::json!({ "product": p });
                if all.is_some() {
                    cmd["columns"] = serde_json::json!(columns);
                }
                if !filter.is_empty() {
                    cmd["filter"] = serde_json::json!(filter);
                }
                if let Some(n) = limit {
                    cmd["limit"] = serde_json::json!(n);
                }
                FlightDescriptor::new_cmd(cmd.to_string())
            }
            Source::Path(path) => FlightDescriptor::new_path(path.clone()),
            Source::Sql(q) => {
                let list = match all {
                    None => "*".to_string(),
                    Some(_) => columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
                };
                let mut sql = format!("SELECT {list} FROM ({q}) AS \"meshgate_source\"");
                if !filter.is_empty() {
                    sql.push_str(&format!(" WHERE {filter}"));
                }
                if let Some(n) = limit {
                    sql.push_str(&format!(" LIMIT {n}"));
                }
                let cmd = CommandStatementQuery { query: sql, transaction_id: None };
                FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec())
            }
        })
    }

    /// The cheapest request that still plans the read on the remote (no rows).
    fn probe(&self) -> FlightDescriptor {
        let first: Vec<&str> = self.schema.fields().iter().take(1).map(|f| f.name().as_str()).collect();
        let all: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
        let limit = match self.source {
            Source::Path(_) => None,
            _ => Some(0),
        };
        Self::descriptor(&self.source, &first, limit, &[], Some(&all))
            .unwrap_or_else(|_| FlightDescriptor::new_path(vec![]))
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl TableProvider for RemoteTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(pushdown::exact_where(filters, |f| self.pushable(f)))
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let caller = session.config().get_extension::<Caller>();
        let headers = self.remote.headers(caller.as_deref()).map_err(Error::into_datafusion)?;
        let indices: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let schema = Arc::new(self.schema.project(&indices)?);
        let all: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
        let conditions = filters
            .iter()
            .filter(|f| self.pushable(f))
            .map(|f| pushdown::to_sql(f, &DefaultDialect {}))
            .collect::<DfResult<Vec<_>>>()?;
        let (descriptor, keep) = match &self.source {
            // The whole path is streamed; the projection is taken here.
            Source::Path(_) => (Self::descriptor(&self.source, &[], None, &[], None), Some(indices)),
            _ => {
                // A count still needs one column from the remote.
                let wanted: Vec<usize> = if indices.is_empty() { vec![0] } else { indices };
                let names: Vec<&str> = wanted.iter().map(|&i| all[i]).collect();
                (Self::descriptor(&self.source, &names, limit, &conditions, Some(&all)), None)
            }
        };
        let descriptor = descriptor.map_err(Error::into_datafusion)?;
        Ok(Arc::new(RemoteScan::new(Arc::clone(&self.remote), schema, descriptor, headers, keep)))
    }
}

/// Streams every endpoint of one remote request, in order.
struct RemoteScan {
    remote: Arc<Remote>,
    schema: SchemaRef,
    descriptor: FlightDescriptor,
    headers: Headers,
    /// Columns to keep from each batch (a path read streams every column).
    keep: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for RemoteScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteScan").field("server", &self.remote.name).finish()
    }
}

impl RemoteScan {
    fn new(
        remote: Arc<Remote>,
        schema: SchemaRef,
        descriptor: FlightDescriptor,
        headers: Headers,
        keep: Option<Vec<usize>>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { remote, schema, descriptor, headers, keep, properties }
    }
}

impl DisplayAs for RemoteScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteScan: server={}", self.remote.name)
    }
}

impl ExecutionPlan for RemoteScan {
    fn name(&self) -> &str {
        "RemoteScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn datafusion::physical_plan::PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let remote = Arc::clone(&self.remote);
        let (descriptor, headers, keep) = (self.descriptor.clone(), self.headers.clone(), self.keep.clone());
        let announced = Arc::clone(&self.schema);
        let batches = async move {
            let info = remote.info(descriptor, &headers).await.map_err(Error::into_datafusion)?;
            let mut streams = Vec::new();
            for endpoint in info.endpoint {
                let ticket = endpoint.ticket.ok_or_else(|| {
                    Error::Unavailable(format!("server `{}` sent an endpoint without a ticket", remote.name))
                        .into_datafusion()
                })?;
                let client = remote.client(&headers).map_err(Error::into_datafusion)?;
                let remote = Arc::clone(&remote);
                let (keep, announced) = (keep.clone(), Arc::clone(&announced));
                let stream = futures::stream::once(async move {
                    let mut client = client;
                    client.do_get(ticket).await
                })
                .try_flatten()
                .map(move |b| {
                    let b = b.map_err(|e| remote.failed(&e).into_datafusion())?;
                    let b = match &keep {
                        Some(k) => b.project(k)?,
                        None => b,
                    };
                    pushdown::conform(b, &announced)
                });
                streams.push(stream);
            }
            Ok::<_, DataFusionError>(futures::stream::iter(streams).flatten())
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::once(batches).try_flatten(),
        )))
    }
}

/// Health of a remote product: the remote plans it (no rows are read).
#[derive(Debug)]
struct RemoteHealth {
    remote: Arc<Remote>,
    probe: FlightDescriptor,
}

#[async_trait]
impl StorageHandle for RemoteHealth {
    async fn health(&self, _state: &SessionState) -> Health {
        match self.remote.info(self.probe.clone(), &self.remote.service_headers(None)).await {
            Ok(_) => Health::Ok,
            Err(e) => Health::Unavailable { reason: e.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{col, lit};

    use super::*;

    fn binding(product: Option<&str>, path: Option<Vec<&str>>, sql: Option<&str>) -> FlightBinding {
        FlightBinding {
            server: "hq".into(),
            product: product.map(Into::into),
            path: path.map(|p| p.into_iter().map(Into::into).collect()),
            sql: sql.map(Into::into),
        }
    }

    #[test]
    fn bindings_name_one_thing_to_read() {
        assert!(Source::of(&binding(Some("sales/orders"), None, None)).is_ok());
        assert!(Source::of(&binding(Some("sales/orders/v2"), None, None)).is_ok());
        assert!(Source::of(&binding(Some("orders"), None, None)).is_err());
        assert!(Source::of(&binding(Some("sales/orders"), Some(vec!["a"]), None)).is_err());
        assert!(Source::of(&binding(None, Some(vec![]), None)).is_err());
        assert!(Source::of(&binding(None, None, Some("delete from t"))).is_err());
        assert!(Source::of(&binding(None, None, Some("select 1; select 2"))).is_err());
        assert!(Source::of(&binding(None, None, None)).is_err());
    }

    #[test]
    fn a_product_read_sends_columns_filter_and_limit_in_the_json_command() {
        let source = Source::Product("sales/orders".into());
        let d =
            RemoteTable::descriptor(&source, &["id"], Some(5), &["(\"status\" = 'x')".into()], Some(&["id", "status"]))
                .unwrap();
        let cmd: serde_json::Value = serde_json::from_slice(&d.cmd).unwrap();
        assert_eq!(
            cmd,
            serde_json::json!({"product": "sales/orders", "columns": ["id"], "filter": "((\"status\" = 'x'))", "limit": 5})
        );
        let whole = RemoteTable::descriptor(&source, &[], None, &[], None).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&whole.cmd).unwrap(),
            serde_json::json!({"product": "sales/orders"})
        );
    }

    #[test]
    fn a_flight_sql_read_wraps_the_query() {
        use arrow_flight::sql::{Any, Command};
        let source = Source::Sql("SELECT a, b FROM t".into());
        let d = RemoteTable::descriptor(&source, &["b"], Some(3), &["(\"a\" > 1)".into()], Some(&["a", "b"])).unwrap();
        let any = Any::decode(d.cmd).unwrap();
        let Ok(Command::CommandStatementQuery(q)) = Command::try_from(any) else { panic!("a statement query") };
        assert_eq!(
            q.query,
            "SELECT \"b\" FROM (SELECT a, b FROM t) AS \"meshgate_source\" WHERE ((\"a\" > 1)) LIMIT 3"
        );
    }

    #[tokio::test]
    async fn what_is_pushed_depends_on_the_remote() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]));
        let remote = Arc::new(Remote {
            name: "hq".into(),
            channel: Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
            identity: Identity::Service,
            service: None,
        });
        let table = |source| RemoteTable { remote: Arc::clone(&remote), source, schema: Arc::clone(&schema) };
        let order_on_text = col("name").lt(lit("m"));
        let gateway = table(Source::Product("a/b".into()));
        assert!(gateway.pushable(&order_on_text), "the same engine decides text order the same way");
        let sql = table(Source::Sql("SELECT 1".into()));
        assert!(!sql.pushable(&order_on_text), "another engine may collate differently");
        assert!(sql.pushable(&col("id").gt(lit(3i64))) && sql.pushable(&col("name").eq(lit("x"))));
        let path = table(Source::Path(vec!["x".into()]));
        assert!(!path.pushable(&col("id").gt(lit(3i64))), "a plain path takes no predicates");
    }

    #[tokio::test]
    async fn forwarding_needs_the_callers_token_and_service_names_the_caller() {
        let remote = Remote {
            name: "hq".into(),
            channel: Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
            identity: Identity::Forward,
            service: Some(Secret::from("svc".to_string())),
        };
        let anonymous = Caller { subject: "anonymous".into(), bearer: None };
        assert!(remote.headers(Some(&anonymous)).is_err());
        let alice = Caller { subject: "alice".into(), bearer: Some(Secret::from("tok".to_string())) };
        assert_eq!(remote.headers(Some(&alice)).unwrap(), vec![("authorization", "Bearer tok".to_string())]);
        let service = Remote { identity: Identity::Service, ..remote };
        assert_eq!(
            service.headers(Some(&alice)).unwrap(),
            vec![("authorization", "Bearer svc".to_string()), (ON_BEHALF_OF, "alice".to_string())]
        );
    }
}
