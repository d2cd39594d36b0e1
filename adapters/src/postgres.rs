//! PostgreSQL: a product backed by a table, view or read-only query of a PostgreSQL database.
//!
//! The operator lists the databases in the stores file (`--stores`, key `postgres:`), each with
//! its host, user and password *by reference*, TLS, pool size and timeouts, and the domains it is
//! open to ([`PostgresConfig`]). A binding names one of them and what to read:
//!
//! ```yaml
//! adapter: postgres
//! database: sales_db          # a `postgres:` entry of the stores file
//! table: public.orders        # a table, view or materialized view; or:
//! # query: SELECT id, amount::numeric(12,2) AS amount FROM orders WHERE NOT deleted
//! split: {column: id, parts: 4}   # optional: read in 4 ranges of `id`, in parallel
//! ```
//!
//! Built on `datafusion-table-providers-postgres` for what it does well (the connection pool,
//! TLS, decoding rows into Arrow 4 000 at a time as they stream in); this module decides what is
//! sent. Only predicates PostgreSQL evaluates exactly as DataFusion does go into the `WHERE`
//! ([`pushable`]); projection and limit always do. The SQL is built from quoted identifiers and
//! DataFusion's unparser, never by editing SQL text. Connections are read-only sessions
//! (`default_transaction_read_only`) in UTC with the configured `statement_timeout`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, IntervalUnit, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, TableReference};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect as ParserDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use datafusion_table_providers_common::sql::db_connection_pool::PasswordProvider;
use datafusion_table_providers_common::sql::db_connection_pool::dbconnection::AsyncDbConnection;
use datafusion_table_providers_postgres::conn::PostgresConnection;
use datafusion_table_providers_postgres::pool::PostgresConnectionPool;
use futures::{StreamExt, TryStreamExt};
use secrecy::SecretString;
use serde::Deserialize;
use tokio_postgres::types::Type;

use crate::pushdown::{self, Agreement};
use crate::secret::SecretRef;
use crate::stores::duration;
use crate::{Adapter, Binding, Error, Health, OpenContext, Opened, Result, StorageHandle};

/// One PostgreSQL database the gateway may read, from the stores file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresConfig {
    /// The name bindings use (`database: <name>`).
    pub name: String,
    /// Domains whose bindings may read it; absent: every domain.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// Host name or address.
    pub host: String,
    /// Port (default 5432).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name on the server.
    pub database: String,
    /// User the gateway connects as; give it read access only.
    pub user: String,
    /// Its password, by reference (read again for every new connection, so a rotated secret is
    /// picked up); absent for trust or certificate authentication.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (default).
    #[serde(default)]
    pub ssl_mode: Option<String>,
    /// CA certificate (PEM or DER) the server's certificate must chain to.
    #[serde(default)]
    pub ssl_root_cert: Option<String>,
    /// Connections at most (default 8), shared by the reads of one product.
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// How long connecting, or waiting for a free connection, may take (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// How long one statement may run (default 10m; PostgreSQL cancels it after that).
    #[serde(default)]
    pub statement_timeout: Option<String>,
}

fn default_port() -> u16 {
    5432
}

impl PostgresConfig {
    fn bad(&self, why: impl fmt::Display) -> Error {
        Error::InvalidBinding(format!("database `{}`: {why}", self.name))
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<()> {
        self.timeouts()?;
        if let Some(mode) = &self.ssl_mode
            && !matches!(mode.as_str(), "disable" | "prefer" | "require" | "verify-ca" | "verify-full")
        {
            return Err(
                self.bad(format!("sslMode `{mode}` is not one of disable, prefer, require, verify-ca, verify-full"))
            );
        }
        if self.pool_size == Some(0) {
            return Err(self.bad("poolSize must be at least 1"));
        }
        for (field, v) in [("host", &self.host), ("database", &self.database), ("user", &self.user)] {
            if v.is_empty() || v.contains(char::is_whitespace) || v.contains(['\'', '\\', '=']) {
                return Err(self.bad(format!("`{field}` must be a plain name (no spaces, quotes or `=`)")));
            }
        }
        Ok(())
    }

    fn timeouts(&self) -> Result<(Duration, Duration)> {
        Ok((
            duration("connectTimeout", &self.connect_timeout, Duration::from_secs(10))?,
            duration("statementTimeout", &self.statement_timeout, Duration::from_secs(600))?,
        ))
    }

    /// Opens a pool of read-only connections; fails when the database cannot be reached now.
    async fn pool(&self) -> Result<Arc<PostgresConnectionPool>> {
        let (connect, statement) = self.timeouts()?;
        let connection = format!(
            "host={} port={} user={} dbname={} connect_timeout={} application_name=meshgate",
            self.host,
            self.port,
            self.user,
            self.database,
            connect.as_secs().max(1)
        );
        let mut params: HashMap<String, SecretString> = HashMap::from([
            ("connection_string".into(), connection.into()),
            ("sslmode".into(), self.ssl_mode.clone().unwrap_or_else(|| "verify-full".into()).into()),
            ("connection_pool_size".into(), self.pool_size.unwrap_or(8).to_string().into()),
            (
                "options".into(),
                format!(
                    "-c default_transaction_read_only=on -c TimeZone=UTC -c statement_timeout={}",
                    statement.as_millis()
                )
                .into(),
            ),
        ]);
        if let Some(cert) = &self.ssl_root_cert {
            params.insert("sslrootcert".into(), cert.clone().into());
        }
        let opening = async {
            match &self.password {
                Some(secret) => {
                    secret.resolve().map_err(|e| self.bad(e))?;
                    let provider = Arc::new(Password(secret.clone()));
                    PostgresConnectionPool::new_with_password_provider(params, provider).await
                }
                None => PostgresConnectionPool::new(params).await,
            }
            .map_err(|e| self.unavailable(&e))
        };
        let pool = tokio::time::timeout(connect, opening)
            .await
            .map_err(|_| Error::Unavailable(format!("database `{}` did not answer within {connect:?}", self.name)))??;
        Ok(Arc::new(pool))
    }

    /// Why the database cannot be used, in words safe for clients (no host, user or server
    /// message); the details go to the gateway's log.
    fn unavailable(&self, e: &(dyn std::error::Error + 'static)) -> Error {
        tracing::warn!(database = %self.name, error = %e, "postgres: unavailable");
        Error::Unavailable(format!("database `{}` {}", self.name, reason(e, "cannot be reached")))
    }
}

/// What went wrong with a PostgreSQL call, for people; `otherwise` when nothing tells.
fn reason(e: &(dyn std::error::Error + 'static), otherwise: &'static str) -> &'static str {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
            if let Some(code) = pg.code() {
                let code = code.code();
                return match code {
                    "28P01" | "28000" => "refused the gateway's credentials",
                    "3D000" => "does not exist on the server",
                    "42P01" | "42703" => "no longer has the table or column the product reads",
                    "42501" => "does not allow the gateway's user to read the table",
                    "57014" => "cancelled the read: it ran longer than statementTimeout",
                    "25006" => "refused the statement: bindings are read-only",
                    c if c.starts_with("08") || c.starts_with("57P") => "closed the connection",
                    c if c.starts_with("53") => "is out of resources",
                    _ => "failed the read",
                };
            }
            if pg.is_closed() {
                return "closed the connection";
            }
        }
        cur = err.source();
    }
    // Errors of a running stream arrive as text.
    let text = e.to_string();
    if ["connection closed", "terminating connection", "Connection reset", "broken pipe"]
        .iter()
        .any(|w| text.contains(w))
    {
        return "closed the connection";
    }
    otherwise
}

/// Reads the password again for each new connection.
struct Password(SecretRef);

#[async_trait]
impl PasswordProvider for Password {
    async fn get_password(&self) -> std::result::Result<SecretString, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.resolve().map_err(|e| e.to_string())?.expose().to_string().into())
    }
}

/// A product stored in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresBinding {
    /// A `postgres:` entry of the stores file.
    pub database: String,
    /// `[schema.]name` of a table, view or materialized view (quote names with `"`).
    #[serde(default)]
    pub table: Option<String>,
    /// One read-only `SELECT` (or `WITH ... SELECT`); its columns become the product's.
    #[serde(default)]
    pub query: Option<String>,
    /// Reads split into ranges of an integer column, run in parallel.
    #[serde(default)]
    pub split: Option<Split>,
}

/// How a read is split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// An integer column (smallint, integer or bigint), ideally indexed.
    pub column: String,
    /// Number of ranges (2..=64).
    pub parts: usize,
}

/// The PostgreSQL adapter.
#[derive(Debug, Default, Clone, Copy)]
pub struct PostgresAdapter;

#[async_trait]
impl Adapter for PostgresAdapter {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Opened> {
        let Binding::Postgres(b) = binding else {
            return Err(Error::InvalidBinding(format!(
                "the postgres adapter cannot open a {} binding",
                binding.kind()
            )));
        };
        let config = ctx.stores.postgres(&b.database, &ctx.domain)?;
        let source = Source::of(b)?;
        let pool = config.pool().await?;
        let (connect, _) = config.timeouts()?;
        let db = Db { name: config.name.clone(), pool, connect };
        let columns = db.describe(&source).await?;
        let schema = Arc::new(Schema::new(columns.iter().map(|c| c.field.clone()).collect::<Vec<_>>()));
        let split = match &b.split {
            None => None,
            Some(s) => Some(check_split(s, &schema)?),
        };
        let db = Arc::new(db);
        let table = PostgresTable { db: Arc::clone(&db), shape: Shape { source, schema, columns }, split };
        Ok(Opened { table: Arc::new(table), storage: db, versions: None })
    }
}

fn check_split(s: &Split, schema: &Schema) -> Result<(usize, usize)> {
    let bad = |why: String| Error::InvalidBinding(format!("split: {why}"));
    let (i, f) = schema.column_with_name(&s.column).ok_or_else(|| bad(format!("no column `{}`", s.column)))?;
    if !matches!(f.data_type(), DataType::Int16 | DataType::Int32 | DataType::Int64) {
        return Err(bad(format!("column `{}` is not smallint, integer or bigint", s.column)));
    }
    if !(2..=64).contains(&s.parts) {
        return Err(bad("parts must be between 2 and 64".into()));
    }
    Ok((i, s.parts))
}

/// What the binding reads, as SQL text for the `FROM` clause.
#[derive(Debug, Clone)]
enum Source {
    /// A relation, its name quoted.
    Table(String),
    /// A query, re-printed from its parsed form (no comments, one statement).
    Query(String),
}

impl Source {
    fn of(b: &PostgresBinding) -> Result<Self> {
        match (&b.table, &b.query) {
            (Some(t), None) => {
                let r = TableReference::parse_str(t);
                let parts: Vec<&str> = match &r {
                    TableReference::Bare { table } => vec![table],
                    TableReference::Partial { schema, table } => vec![schema, table],
                    TableReference::Full { catalog, schema, table } => vec![catalog, schema, table],
                };
                if parts.iter().any(|p| p.is_empty()) {
                    return Err(Error::InvalidBinding(format!("table `{t}` is not `[schema.]name`")));
                }
                Ok(Source::Table(parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join(".")))
            }
            (None, Some(q)) => {
                let bad = |why: &str| Error::InvalidBinding(format!("query: {why}"));
                let statements =
                    Parser::parse_sql(&ParserDialect {}, q).map_err(|e| bad(&format!("does not parse ({e})")))?;
                match statements.as_slice() {
                    [datafusion::sql::sqlparser::ast::Statement::Query(query)] => {
                        if !query.locks.is_empty() {
                            return Err(bad("locking clauses (FOR UPDATE/SHARE) are not allowed"));
                        }
                        Ok(Source::Query(query.to_string()))
                    }
                    _ => Err(bad("must be exactly one SELECT statement")),
                }
            }
            _ => Err(Error::InvalidBinding("a postgres binding names exactly one of `table` or `query`".into())),
        }
    }

    fn sql_source(&self) -> String {
        match self {
            Source::Table(t) => t.clone(),
            Source::Query(q) => format!("({q}) AS \"meshgate_source\""),
        }
    }
}

/// `name` as a PostgreSQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column as PostgreSQL describes it.
#[derive(Debug, Clone)]
struct PgColumn {
    field: Field,
    pg_type: Type,
}

/// The database of one product: its pool, for reads and health.
struct Db {
    name: String,
    pool: Arc<PostgresConnectionPool>,
    connect: Duration,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDatabase").field("name", &self.name).finish()
    }
}

impl Db {
    fn unavailable(&self, e: &(dyn std::error::Error + 'static)) -> Error {
        tracing::warn!(database = %self.name, error = %e, "postgres: read failed");
        Error::Unavailable(format!("database `{}` {}", self.name, reason(e, "failed the read")))
    }

    /// A connection from the pool, within the connect timeout.
    async fn connection(&self) -> Result<PostgresConnection> {
        match tokio::time::timeout(self.connect, self.pool.connect_direct()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                tracing::warn!(database = %self.name, error = %e, "postgres: no connection");
                Err(Error::Unavailable(format!("database `{}` {}", self.name, reason(&e, "cannot be reached"))))
            }
            Err(_) => Err(Error::Unavailable(format!(
                "database `{}` gave no connection within {:?} (it is down, or every pooled connection is busy)",
                self.name, self.connect
            ))),
        }
    }

    /// The columns `source` yields, typed for Arrow; nullability from the catalog for columns
    /// read straight from a table.
    async fn describe(&self, source: &Source) -> Result<Vec<PgColumn>> {
        let conn = self.connection().await?;
        let client = &*conn.conn;
        let statement = client.prepare(&format!("SELECT * FROM {}", source.sql_source())).await.map_err(|e| match e
            .code()
            .map(|c| c.code())
        {
            Some("42P01") => {
                Error::InvalidBinding(format!("database `{}` has no table {}", self.name, source.sql_source()))
            }
            Some(c) if c.starts_with("42") => Error::InvalidBinding(format!(
                "database `{}` refused the binding's SQL: {}",
                self.name,
                e.as_db_error().map(|d| d.message()).unwrap_or("syntax or permission error")
            )),
            _ => self.unavailable(&e),
        })?;
        let mut columns = Vec::new();
        let mut names = std::collections::HashSet::new();
        for c in statement.columns() {
            if !names.insert(c.name().to_string()) {
                return Err(Error::InvalidBinding(format!(
                    "column name `{}` appears twice; alias one of them",
                    c.name()
                )));
            }
            let data_type = arrow_type(c.type_(), c.type_modifier()).map_err(|why| {
                Error::InvalidBinding(format!(
                    "column `{}` has PostgreSQL type `{}`, which meshgate cannot map{why}; cast it in a `query` binding (e.g. `{}::text`)",
                    c.name(),
                    c.type_().name(),
                    quote(c.name())
                ))
            })?;
            let not_null = match (c.table_oid(), c.column_id()) {
                (Some(table), Some(column)) => client
                    .query_opt(
                        "SELECT attnotnull FROM pg_attribute WHERE attrelid = $1 AND attnum = $2",
                        &[&table, &column],
                    )
                    .await
                    .map_err(|e| self.unavailable(&e))?
                    .is_some_and(|row| row.get::<_, bool>(0)),
                _ => false,
            };
            columns.push(PgColumn { field: Field::new(c.name(), data_type, !not_null), pg_type: c.type_().clone() });
        }
        Ok(columns)
    }
}

#[async_trait]
impl StorageHandle for Db {
    async fn health(&self, _state: &SessionState) -> Health {
        let probe = async {
            let conn = self.connection().await?;
            conn.conn.simple_query("SELECT 1").await.map_err(|e| self.unavailable(&e))?;
            Ok::<_, Error>(())
        };
        match probe.await {
            Ok(()) => Health::Ok,
            Err(e) => Health::Unavailable { reason: e.to_string() },
        }
    }
}

/// Numeric precision and scale from a `numeric(p,s)` type modifier.
fn numeric(modifier: i32) -> std::result::Result<(u8, i8), String> {
    if modifier < 4 {
        return Ok((38, 20));
    }
    let (p, s) = (((modifier - 4) >> 16) & 0xffff, (modifier - 4) & 0xffff);
    if p > 38 || s > p {
        return Err(format!(" (numeric({p},{s}) has more than 38 digits)"));
    }
    Ok((p as u8, s as i8))
}

/// The Arrow type a PostgreSQL type is served as; the same types the row decoder builds.
fn arrow_type(t: &Type, modifier: i32) -> std::result::Result<DataType, String> {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    Ok(match *t {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::OID => DataType::UInt32,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => {
            let (p, s) = numeric(modifier)?;
            DataType::Decimal128(p, s)
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UUID | Type::JSON | Type::JSONB => {
            DataType::Utf8
        }
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Nanosecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Nanosecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        Type::INTERVAL => DataType::Interval(IntervalUnit::MonthDayNano),
        // Arrays travel as JSON (`to_json`, see `Shape::select`): the row decoder reads native
        // arrays only without NULL elements.
        Type::BOOL_ARRAY => list(DataType::Boolean),
        Type::INT2_ARRAY => list(DataType::Int16),
        Type::INT4_ARRAY => list(DataType::Int32),
        Type::INT8_ARRAY => list(DataType::Int64),
        Type::FLOAT8_ARRAY => list(DataType::Float64),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY => list(DataType::Utf8),
        _ => return Err(String::new()),
    })
}

/// Whether a column is sent as JSON text (and decoded into its list type by the row decoder).
fn as_json(t: &Type) -> bool {
    matches!(t.kind(), tokio_postgres::types::Kind::Array(_))
}

/// How far PostgreSQL agrees with DataFusion on comparisons of a column of type `t`: floats
/// (-0 and NaN), `char(n)` (padding), uuid and json (normalised), arrays, intervals and bytes only
/// on `IS [NULL]`; text not on order (collations); sessions run in UTC, so timestamps agree.
fn agreement(t: &Type) -> Agreement {
    match *t {
        Type::BOOL
        | Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::NUMERIC
        | Type::DATE
        | Type::TIMESTAMP
        | Type::TIMESTAMPTZ => Agreement::Ordered,
        Type::TEXT | Type::VARCHAR => Agreement::Equality,
        _ => Agreement::Nulls,
    }
}

/// What a product reads and its columns: everything the SQL is built from.
#[derive(Debug)]
struct Shape {
    source: Source,
    schema: SchemaRef,
    columns: Vec<PgColumn>,
}

impl Shape {
    fn column(&self, c: &Column) -> Option<&PgColumn> {
        self.columns.iter().find(|col| col.field.name() == &c.name)
    }

    /// Whether PostgreSQL evaluates `e` exactly as DataFusion does.
    fn pushable(&self, e: &Expr) -> bool {
        pushdown::pushable(e, &|c| self.column(c).map(|c| agreement(&c.pg_type)))
    }

    /// `e` as PostgreSQL SQL, columns unqualified.
    fn sql(e: &Expr) -> DfResult<String> {
        pushdown::to_sql(e, &PostgreSqlDialect {})
    }

    /// The statement reading `columns` where every condition holds.
    fn select(&self, columns: &[usize], conditions: &[String], limit: Option<usize>) -> String {
        let list = if columns.is_empty() {
            // A count: one constant per row; the batches are cut to no columns.
            "1 AS \"meshgate_row\"".to_string()
        } else {
            let column = |i: usize| {
                let name = quote(self.schema.field(i).name());
                if as_json(&self.columns[i].pg_type) { format!("to_json({name}) AS {name}") } else { name }
            };
            columns.iter().map(|&i| column(i)).collect::<Vec<_>>().join(", ")
        };
        let mut sql = format!("SELECT {list} FROM {}", self.source.sql_source());
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" AND "));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        sql
    }
}

/// The table DataFusion reads.
#[derive(Debug)]
struct PostgresTable {
    db: Arc<Db>,
    shape: Shape,
    /// Column index and number of ranges.
    split: Option<(usize, usize)>,
}

impl PostgresTable {
    /// One statement per range of the split column: `[min, max]` cut into equal parts, NULLs
    /// in the first.
    async fn ranges(&self, column: usize, parts: usize, conditions: &[String]) -> Result<Vec<String>> {
        let name = quote(self.shape.schema.field(column).name());
        let bounds = self.shape.select(&[], conditions, None).replacen(
            "1 AS \"meshgate_row\"",
            &format!("min({name})::int8, max({name})::int8"),
            1,
        );
        let conn = self.db.connection().await?;
        let row = conn.conn.query_one(&bounds, &[]).await.map_err(|e| self.db.unavailable(&e))?;
        let (Some(lo), Some(hi)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) else {
            return Ok(vec![]);
        };
        let step = ((i128::from(hi) - i128::from(lo)) / parts as i128 + 1).max(1);
        let mut out = Vec::new();
        for p in 0..parts as i128 {
            let start = i128::from(lo) + p * step;
            if start > i128::from(hi) {
                break;
            }
            let end = start + step;
            let range = match (p == 0, end > i128::from(hi)) {
                (true, true) => format!("{name} IS NULL OR {name} >= {start}"),
                (true, false) => format!("{name} IS NULL OR {name} < {end}"),
                (false, true) => format!("{name} >= {start}"),
                (false, false) => format!("{name} >= {start} AND {name} < {end}"),
            };
            out.push(range);
        }
        Ok(out)
    }
}

#[async_trait]
impl TableProvider for PostgresTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.shape.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(pushdown::exact_where(filters, |f| self.shape.pushable(f)))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> =
            projection.cloned().unwrap_or_else(|| (0..self.shape.schema.fields().len()).collect());
        let schema = Arc::new(self.shape.schema.project(&columns)?);
        // Anything not pushable stays out of the SQL; DataFusion applies it (it was declared
        // Unsupported, so it is not among `filters` unless a caller ignores that answer).
        let conditions =
            filters.iter().filter(|f| self.shape.pushable(f)).map(Shape::sql).collect::<DfResult<Vec<_>>>()?;
        let statements = match (self.split, limit) {
            (Some((column, parts)), None) => {
                let ranges = self.ranges(column, parts, &conditions).await.map_err(Error::into_datafusion)?;
                ranges
                    .into_iter()
                    .map(|r| {
                        let mut c = conditions.clone();
                        c.push(r);
                        self.shape.select(&columns, &c, None)
                    })
                    .collect()
            }
            _ => vec![self.shape.select(&columns, &conditions, limit)],
        };
        Ok(Arc::new(PostgresScan::new(Arc::clone(&self.db), schema, statements)))
    }
}

/// Runs one statement per partition and streams its rows as Arrow batches of the announced
/// schema. Takes no filters, sorts or limits from the physical optimizer: the SQL is final.
#[derive(Debug)]
struct PostgresScan {
    db: Arc<Db>,
    schema: SchemaRef,
    statements: Vec<String>,
    properties: Arc<PlanProperties>,
}

impl PostgresScan {
    fn new(db: Arc<Db>, schema: SchemaRef, statements: Vec<String>) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(statements.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { db, schema, statements, properties }
    }
}

impl DisplayAs for PostgresScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresScan: database={} statements={:?}", self.db.name, self.statements)
    }
}

impl ExecutionPlan for PostgresScan {
    fn name(&self) -> &str {
        "PostgresScan"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn datafusion::physical_plan::PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let schema = Arc::clone(&self.schema);
        let Some(sql) = self.statements.get(partition).cloned() else {
            // A split read of an empty table has no statements and one (empty) partition.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty())));
        };
        let db = Arc::clone(&self.db);
        let announced = Arc::clone(&schema);
        let rows = async move {
            tracing::debug!(database = %db.name, %sql, "postgres: query");
            let mut conn = db.connection().await.map_err(Error::into_datafusion)?;
            let stream = match conn.query_arrow(&sql, &[], Some(Arc::clone(&announced))).await {
                Ok(s) => s,
                // A pooled connection opened before the database restarted fails its first
                // statement: one more try on a fresh connection (nothing was streamed yet).
                Err(e) => {
                    tracing::debug!(database = %db.name, error = %e, "postgres: retrying on a fresh connection");
                    drop(conn);
                    conn = db.connection().await.map_err(Error::into_datafusion)?;
                    conn.query_arrow(&sql, &[], Some(Arc::clone(&announced)))
                        .await
                        .map_err(|e| db.unavailable(e.as_ref()).into_datafusion())?
                }
            };
            // The connection goes back to the pool when the stream ends or is dropped.
            let failed = Arc::clone(&db);
            Ok::<_, DataFusionError>(stream.map(move |batch| {
                let _held = &conn;
                match batch {
                    Ok(b) => pushdown::conform(b, &announced),
                    Err(e) => Err(failed.unavailable(&e).into_datafusion()),
                }
            }))
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::once(rows).try_flatten())))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::common::ScalarValue;

    use super::*;

    fn shape(columns: &[(&str, Type)]) -> Shape {
        let columns: Vec<PgColumn> = columns
            .iter()
            .map(|(n, t)| PgColumn { field: Field::new(*n, arrow_type(t, -1).unwrap(), true), pg_type: t.clone() })
            .collect();
        let schema = Arc::new(Schema::new(columns.iter().map(|c| c.field.clone()).collect::<Vec<_>>()));
        Shape { source: Source::Table("\"public\".\"t\"".into()), schema, columns }
    }

    #[test]
    fn numeric_modifiers() {
        assert_eq!(numeric(-1).unwrap(), (38, 20));
        assert_eq!(numeric(((12 << 16) | 2) + 4).unwrap(), (12, 2));
        assert!(numeric(((50 << 16) | 2) + 4).unwrap_err().contains("numeric(50,2)"));
    }

    #[test]
    fn sources_are_quoted_and_queries_reprinted() {
        let b = |t: Option<&str>, q: Option<&str>| PostgresBinding {
            database: "d".into(),
            table: t.map(Into::into),
            query: q.map(Into::into),
            split: None,
        };
        assert_eq!(Source::of(&b(Some("public.orders"), None)).unwrap().sql_source(), "\"public\".\"orders\"");
        assert_eq!(Source::of(&b(Some("\"My \"\"T\"\"\""), None)).unwrap().sql_source(), "\"My \"\"T\"\"\"");
        let q = Source::of(&b(None, Some("select a from t -- trailing\n"))).unwrap().sql_source();
        assert_eq!(q, "(SELECT a FROM t) AS \"meshgate_source\"");
        for bad in ["select 1; drop table t", "delete from t", "select * from t for update", ""] {
            assert!(Source::of(&b(None, Some(bad))).is_err(), "{bad}");
        }
        assert!(Source::of(&b(None, None)).is_err());
        assert!(Source::of(&b(Some("t"), Some("select 1"))).is_err());
    }

    #[test]
    fn split_columns_are_integers() {
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]);
        let s = |c: &str, parts| Split { column: c.into(), parts };
        assert_eq!(check_split(&s("id", 4), &schema).unwrap(), (0, 4));
        assert!(check_split(&s("s", 4), &schema).is_err());
        assert!(check_split(&s("nope", 4), &schema).is_err());
        assert!(check_split(&s("id", 1), &schema).is_err());
    }

    #[test]
    fn only_agreeing_predicates_are_pushed() {
        use datafusion::prelude::{col, lit};
        let s = shape(&[
            ("id", Type::INT8),
            ("name", Type::TEXT),
            ("code", Type::BPCHAR),
            ("score", Type::FLOAT8),
            ("day", Type::DATE),
            ("tags", Type::TEXT_ARRAY),
        ]);
        let yes = [
            col("id").gt(lit(5i64)),
            lit(5i64).lt_eq(col("id")),
            col("name").eq(lit("O'Brien")),
            col("name").in_list(vec![lit("a"), lit("b")], true),
            col("id").between(lit(1i64), lit(9i64)).and(col("score").is_null()),
            col("tags").is_not_null().or(col("id").eq(lit(1i64))),
            datafusion::prelude::not(col("id").eq(lit(3i64))),
        ];
        for e in &yes {
            assert!(s.pushable(e), "{e}");
        }
        let no = [
            col("name").lt(lit("m")),
            col("code").eq(lit("ab")),
            col("score").gt(lit(1.5)),
            col("id").gt(lit(1.5)),
            col("name").like(lit("a%")),
            (col("id") + lit(1i64)).gt(lit(5i64)),
            col("id").eq(col("id")),
            col("id").gt(lit(1i64)).and(col("name").gt(lit("b"))),
            col("nope").eq(lit(1i64)),
        ];
        for e in &no {
            assert!(!s.pushable(e), "{e}");
        }
    }

    #[test]
    fn statements_are_built_from_quoted_parts() {
        use datafusion::prelude::{col, lit};
        let s = shape(&[("id", Type::INT8), ("na\"me", Type::TEXT), ("day", Type::DATE)]);
        let filter = col("na\"me").eq(lit("x' OR '1'='1")).and(col("id").gt_eq(lit(7i64)));
        let cond = Shape::sql(&filter).unwrap();
        assert_eq!(cond, "((\"na\"\"me\" = 'x'' OR ''1''=''1') AND (\"id\" >= 7))");
        assert_eq!(
            s.select(&[1, 0], &[cond], Some(10)),
            "SELECT \"na\"\"me\", \"id\" FROM \"public\".\"t\" WHERE (((\"na\"\"me\" = 'x'' OR ''1''=''1') AND (\"id\" >= 7))) LIMIT 10"
        );
        assert_eq!(s.select(&[], &[], None), "SELECT 1 AS \"meshgate_row\" FROM \"public\".\"t\"");
        let arrays = shape(&[("tags", Type::TEXT_ARRAY)]);
        assert_eq!(arrays.select(&[0], &[], None), "SELECT to_json(\"tags\") AS \"tags\" FROM \"public\".\"t\"");
        let day = col("t.day").eq(lit(ScalarValue::Date32(Some(19_000))));
        assert_eq!(Shape::sql(&day).unwrap(), "(\"day\" = CAST('2022-01-08' AS DATE))");
    }
}
