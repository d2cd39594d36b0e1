//! Read requests and their plans.
//!
//! A read is a [`ReadSpec`]: a product address plus optional columns, filter and limit. It
//! comes from a PATH descriptor (the whole port), from a CMD descriptor holding a JSON query,
//! or from a verified ticket. [`plan`] turns it into a DataFusion `DataFrame` over the port's
//! table; the same function runs for `GetFlightInfo`, `GetSchema` and `DoGet`, so the schema
//! announced is the schema streamed.
//!
//! Filters are SQL boolean expressions parsed by DataFusion against the product's contract
//! columns only, and checked against an allow-list of expression kinds: no subqueries, no
//! aggregates or windows, no placeholders, no session variables. They are pushed down by
//! DataFusion's optimizer like any other filter.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, visit_expressions};
use serde::Deserialize;

use meshgate_adapters::VersionPin;

use crate::catalog::{Port, Product};

/// Result with the query module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a read request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The descriptor's path has the wrong shape.
    #[error(
        "a path descriptor is [\"<domain>\", \"<product>\"], then optionally a port's name or version, then optionally \"@<data version>\" or \"@<RFC 3339 time>\"; got {0} elements"
    )]
    BadPath(usize),
    /// A pinned data version (`@...` on a path, `version`/`as_of` in JSON) is not readable.
    #[error(
        "`{0}` pins no data version; give a version number (path: \"@12\", JSON: \"version\": 12) or an RFC 3339 time (path: \"@2026-11-22T10:00:00Z\", JSON: \"as_of\": \"2026-11-22T10:00:00Z\")"
    )]
    BadVersion(String),
    /// A path element or query field is not valid UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// The CMD descriptor is not a valid JSON query.
    #[error(
        "the command is not a valid meshgate query ({0}); send JSON like {{\"product\": \"sales/orders\", \"columns\": [\"order_id\"], \"filter\": \"amount > 100\", \"limit\": 10}}"
    )]
    BadQuery(String),
    /// `product` is not `domain/product` or `domain/product/port`.
    #[error("`product` is `{0}`; write it as `<domain>/<product>`, optionally `/<port>`")]
    BadProduct(String),
    /// A requested column is not in the contract.
    #[error("product `{product}` has no column `{column}`; columns: {known}")]
    UnknownColumn {
        /// `domain/product`.
        product: String,
        /// The column asked for.
        column: String,
        /// Contract columns.
        known: String,
    },
    /// A column is requested twice, or the list is empty.
    #[error("{0}")]
    BadColumns(String),
    /// The filter does not parse or does not resolve against the product's columns.
    #[error("the filter is not valid for product `{product}`: {message}")]
    BadFilter {
        /// `domain/product`.
        product: String,
        /// What is wrong.
        message: String,
    },
    /// The filter uses an expression kind that filters may not use.
    #[error("filters may not use {0}; write a boolean expression over the product's columns")]
    FilterNotAllowed(&'static str),
    /// The filter is not boolean.
    #[error("the filter must be a boolean expression such as `amount > 100`; this one is {0}")]
    FilterNotBoolean(DataType),
    /// The expression cannot even be split into tokens.
    #[error("{what} does not parse: {message}")]
    Unreadable {
        /// Which expression.
        what: &'static str,
        /// The tokenizer's complaint.
        message: String,
    },
    /// The expression is larger or deeper than the gateway plans.
    #[error("{what} is too large: {found} {unit}, the limit is {limit}; {hint}")]
    TooLarge {
        /// Which expression (`the filter`, `the row filter`).
        what: &'static str,
        /// What was counted.
        unit: &'static str,
        /// How many.
        found: usize,
        /// The limit.
        limit: usize,
        /// How to stay within it.
        hint: &'static str,
    },
    /// DataFusion refused the plan.
    #[error(transparent)]
    Plan(Box<DataFusionError>),
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        Self::Plan(Box::new(e))
    }
}

/// One read request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadSpec {
    /// Owning domain.
    pub domain: String,
    /// Product.
    pub product: String,
    /// Port name or version; `None` for the product's default port.
    pub port: Option<String>,
    /// Columns in order; empty for every contract column.
    pub columns: Vec<String>,
    /// SQL boolean expression.
    pub filter: Option<String>,
    /// Row limit.
    pub limit: Option<u64>,
    /// Endpoints to split the read into, each returning its share of the rows exactly once
    /// (`None`: one endpoint).
    pub shards: Option<u32>,
    /// Seed of a reproducible order for a sharded read: the same seed gives the same order of
    /// endpoints and of the files and byte ranges within each (`None`: the listing's order).
    pub shuffle_seed: Option<u64>,
    /// Message body compression for the stream (`lz4` or `zstd`), kept in the ticket; a
    /// DoGet header overrides it.
    pub compression: Option<Compression>,
    /// Refuse the read when the product's data last changed longer ago than this (JSON
    /// `"max_staleness": "1h"`); checked when the read is planned.
    pub max_staleness: Option<std::time::Duration>,
    /// The version of the product's data to read (JSON `"version"` or `"as_of"`, a path's last
    /// element `@<version>` or `@<time>`); `None`: the latest. Products whose storage keeps
    /// versions (Delta) only.
    pub version: Option<VersionPin>,
}

/// Arrow IPC message body compression a read may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// LZ4 frame: fast, modest ratio.
    Lz4,
    /// Zstandard: better ratio, more CPU.
    Zstd,
}

impl Compression {
    /// The compression named `name` (`lz4`, `lz4_frame`, `zstd`; any case), `None` for `none`
    /// or empty; the error says what to use.
    pub fn parse(name: &str) -> std::result::Result<Option<Self>, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(None),
            "lz4" | "lz4_frame" => Ok(Some(Self::Lz4)),
            "zstd" => Ok(Some(Self::Zstd)),
            _ => Err(format!(
                "`{}` is not a compression meshgate offers; use lz4, zstd or none",
                crate::text::clip(name)
            )),
        }
    }

    /// Its name, as [`Compression::parse`] reads it back (kept in tickets).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Most shards one read may be split into.
pub const MAX_SHARDS: u32 = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonQuery {
    product: String,
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    shards: Option<u32>,
    #[serde(default)]
    shuffle_seed: Option<u64>,
    #[serde(default)]
    compression: Option<String>,
    #[serde(default)]
    max_staleness: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    as_of: Option<String>,
}

/// A pinned version as a path writes it after `@`: a number, or an RFC 3339 time.
fn parse_pin(text: &str) -> Result<VersionPin> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(VersionPin::Version).map_err(|_| Error::BadVersion(crate::text::clip(text)));
    }
    parse_time(text)
}

fn parse_time(text: &str) -> Result<VersionPin> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| VersionPin::AsOf(t.timestamp_millis()))
        .map_err(|_| Error::BadVersion(crate::text::clip(text)))
}

impl ReadSpec {
    /// The whole default (or named) port of a product, from a PATH descriptor.
    /// A last element `@<version>` or `@<RFC 3339 time>` pins the data version.
    pub fn from_path(path: &[String]) -> Result<Self> {
        let (path, version) = match path.split_last() {
            Some((last, rest)) if rest.len() >= 2 && last.starts_with('@') => (rest, Some(parse_pin(&last[1..])?)),
            _ => (path, None),
        };
        match path {
            [d, p] => Ok(Self { domain: d.clone(), product: p.clone(), version, ..Self::default() }),
            [d, p, port] => {
                Ok(Self { domain: d.clone(), product: p.clone(), port: Some(port.clone()), version, ..Self::default() })
            }
            _ => Err(Error::BadPath(path.len() + usize::from(version.is_some()))),
        }
    }

    /// A JSON query from a CMD descriptor.
    pub fn from_json(cmd: &[u8]) -> Result<Self> {
        let q: JsonQuery =
            serde_json::from_slice(cmd).map_err(|e| Error::BadQuery(crate::text::clip(&e.to_string())))?;
        let parts: Vec<&str> = q.product.split('/').collect();
        let (domain, product, port) = match parts.as_slice() {
            [d, p] => (d, p, q.port.clone()),
            [d, p, port] if q.port.is_none() => (d, p, Some(port.to_string())),
            _ => return Err(Error::BadProduct(crate::text::clip(&q.product))),
        };
        if q.columns.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::BadColumns(
                "`columns` is empty; list at least one column, or leave it out for all".into(),
            ));
        }
        match q.shards {
            Some(n) if n == 0 || n > MAX_SHARDS => {
                return Err(Error::BadQuery(format!("`shards` is {n}; ask for 1 to {MAX_SHARDS}")));
            }
            _ if q.shuffle_seed.is_some() && q.limit.is_some() => {
                return Err(Error::BadQuery(
                    "a `limit` of a shuffled read is not reproducible; leave one of them out".into(),
                ));
            }
            Some(n) if n > 1 && q.limit.is_some() => {
                return Err(Error::BadQuery("a `limit` cannot be split across `shards`; leave one of them out".into()));
            }
            _ => {}
        }
        Ok(Self {
            domain: domain.to_string(),
            product: product.to_string(),
            port,
            columns: q.columns.unwrap_or_default(),
            filter: q.filter.filter(|f| !f.trim().is_empty()),
            limit: q.limit,
            // A seed orders the files, so its read is assigned them even as one shard.
            shards: q.shards.filter(|n| *n > 1 || q.shuffle_seed.is_some()),
            shuffle_seed: q.shuffle_seed,
            compression: match q.compression {
                Some(name) => Compression::parse(&name).map_err(Error::BadQuery)?,
                None => None,
            },
            max_staleness: match q.max_staleness {
                Some(s) => Some(humantime::parse_duration(s.trim()).map_err(|_| {
                    Error::BadQuery(format!(
                        "`max_staleness` is `{}`; give a duration such as \"15m\", \"1h\" or \"2d\"",
                        crate::text::clip(&s)
                    ))
                })?),
                None => None,
            },
            version: match (q.version, q.as_of) {
                (Some(_), Some(_)) => {
                    return Err(Error::BadQuery(
                        "give `version` or `as_of`, not both: a read pins one version of the data".into(),
                    ));
                }
                (Some(v), None) => Some(VersionPin::Version(v)),
                (None, Some(t)) => Some(parse_time(&t)?),
                (None, None) => None,
            },
        })
    }
}

/// A planned read.
#[derive(Debug)]
pub struct Planned {
    /// The plan; execute it to stream the result.
    pub df: DataFrame,
    /// What is announced and streamed: the plan's schema with the contract's metadata.
    pub schema: SchemaRef,
}

/// One shard of a read split by the hash of the product's key: the key's columns and the
/// predicate that keeps the shard's rows.
#[derive(Debug, Clone)]
pub struct KeyShard {
    /// The key columns the predicate reads.
    pub key: Vec<String>,
    /// Boolean expression over the product's columns.
    pub filter: Expr,
}

/// Plans `spec` over `table`: the port's table as the caller may see it (the governed table, or
/// the adapter's table when governance is off). With `shard`, only that shard's rows.
pub fn plan(
    ctx: &SessionContext,
    product: &Product,
    port: &Port,
    table: Arc<dyn TableProvider>,
    spec: &ReadSpec,
    shard: Option<KeyShard>,
) -> Result<Planned> {
    let table_schema = table.schema();
    let contract_cols: Vec<&str> =
        port.schema.fields().iter().map(|f| f.name().as_str()).filter(|c| table_schema.index_of(c).is_ok()).collect();
    let mut seen = HashSet::new();
    for c in &spec.columns {
        if !contract_cols.contains(&c.as_str()) {
            return Err(Error::UnknownColumn {
                product: product.address(),
                column: crate::text::clip(c),
                known: contract_cols.join(", "),
            });
        }
        if !seen.insert(c) {
            return Err(Error::BadColumns(format!("column `{}` is requested twice", crate::text::clip(c))));
        }
    }
    // The contract is the interface: data columns it does not declare are not reachable, not
    // even from a filter.
    let mut df = ctx.read_table(table)?.select_columns(&contract_cols)?;
    if let Some(shard) = shard {
        check_key_readable(product, &shard.key, |c| contract_cols.contains(&c))?;
        df = df.filter(shard.filter)?;
    }
    if let Some(sql) = &spec.filter {
        let expr = parse_filter(ctx, product, &df, sql)?;
        df = df.filter(expr)?;
    }
    if !spec.columns.is_empty() {
        let cols: Vec<&str> = spec.columns.iter().map(String::as_str).collect();
        df = df.select_columns(&cols)?;
    }
    if let Some(n) = spec.limit {
        df = df.limit(0, Some(usize::try_from(n).unwrap_or(usize::MAX)))?;
    }
    let schema = with_contract_metadata(df.schema().as_arrow(), &port.schema);
    Ok(Planned { df, schema })
}

/// Refuses to split `product` by `key` when the caller cannot read one of its columns
/// (`readable`): the shard's rows are chosen by values the caller sees.
pub fn check_key_readable(product: &Product, key: &[String], readable: impl Fn(&str) -> bool) -> Result<()> {
    match key.iter().find(|k| !readable(k)) {
        Some(hidden) => Err(Error::BadColumns(format!(
            "`{}` is split into shards by its key, and its key column `{}` is not readable for you; read it as one stream",
            product.address(),
            crate::text::clip(hidden)
        ))),
        None => Ok(()),
    }
}

/// Bounds on a user expression, checked on its tokens before anything parses or plans it:
/// parsers, planners and optimizers recurse over the expression tree, so an unbounded one can
/// exhaust a thread's stack (and some rewrites are quadratic in the length of a chain).
#[derive(Debug, Clone, Copy)]
pub struct ExpressionLimits {
    /// Bytes of SQL text.
    pub max_bytes: usize,
    /// Operators (`AND`, `OR`, `||`, `+`, `=`, `NOT`, `LIKE`, ...) and function calls: a
    /// chain of them nests that deep in the expression tree.
    pub max_operators: usize,
    /// Parentheses open at once.
    pub max_nesting: usize,
}

/// The limits for filters in requests and row filters in governance files.
pub const EXPRESSION_LIMITS: ExpressionLimits =
    ExpressionLimits { max_bytes: 16 << 10, max_operators: 256, max_nesting: 32 };

impl ExpressionLimits {
    /// Checks `sql` (named `what` in errors) against the limits, without recursion.
    pub fn check(&self, what: &'static str, sql: &str) -> Result<()> {
        use datafusion::sql::sqlparser::dialect::GenericDialect;
        use datafusion::sql::sqlparser::keywords::Keyword;
        use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
        let too_large = |unit, found, limit, hint| Error::TooLarge { what, unit, found, limit, hint };
        if sql.len() > self.max_bytes {
            return Err(too_large(
                "bytes",
                sql.len(),
                self.max_bytes,
                "shorten it, e.g. with IN (...) lists or ranges",
            ));
        }
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize()
            .map_err(|e| Error::Unreadable { what, message: e.to_string() })?;
        let (mut operators, mut depth, mut deepest) = (0usize, 0usize, 0usize);
        let mut previous_word = false;
        for t in &tokens {
            match t {
                Token::LParen => {
                    // `name(` is a function call: one more level in the tree, like an operator.
                    operators += usize::from(previous_word);
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                Token::RParen => depth = depth.saturating_sub(1),
                Token::Word(w) => {
                    operators += usize::from(matches!(
                        w.keyword,
                        Keyword::AND
                            | Keyword::OR
                            | Keyword::NOT
                            | Keyword::XOR
                            | Keyword::LIKE
                            | Keyword::ILIKE
                            | Keyword::SIMILAR
                            | Keyword::IS
                            | Keyword::BETWEEN
                            | Keyword::IN
                            | Keyword::CASE
                            | Keyword::WHEN
                            | Keyword::CAST
                    ));
                }
                Token::Whitespace(_) | Token::Comma | Token::Period | Token::EOF => {}
                Token::Number(..) | Token::SingleQuotedString(_) | Token::DoubleQuotedString(_) => {}
                Token::Placeholder(_) => {}
                _ => operators += 1,
            }
            if !matches!(t, Token::Whitespace(_)) {
                previous_word = matches!(t, Token::Word(_));
            }
        }
        if deepest > self.max_nesting {
            return Err(too_large("levels of parentheses", deepest, self.max_nesting, "flatten the nesting"));
        }
        if operators > self.max_operators {
            return Err(too_large(
                "operators and function calls",
                operators,
                self.max_operators,
                "write long alternatives as `column IN (a, b, c)` and split the rest into several requests",
            ));
        }
        Ok(())
    }
}

/// Parses and checks a filter against the columns of `df`.
fn parse_filter(ctx: &SessionContext, product: &Product, df: &DataFrame, sql: &str) -> Result<Expr> {
    EXPRESSION_LIMITS.check("the filter", sql)?;
    let bad = |message: String| Error::BadFilter { product: product.address(), message };
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let parsed = state.sql_to_expr_with_alias(sql, &dialect).map_err(|e| bad(e.find_root().message().to_string()))?;
    // Subqueries are refused on the syntax tree: resolving one would look up other tables.
    let subquery = visit_expressions(&parsed.expr, |e| match e {
        SqlExpr::Subquery(_) | SqlExpr::Exists { .. } | SqlExpr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if subquery.is_break() {
        return Err(Error::FilterNotAllowed("subqueries"));
    }
    let expr = state.create_logical_expr_from_sql_expr(parsed, df.schema()).map_err(|e| match e.find_root() {
        DataFusionError::SchemaError(inner, _) => bad(inner.to_string()),
        other => bad(other.message().to_string()),
    })?;
    let mut refused = None;
    expr.apply(|e| {
        refused = forbidden(e);
        Ok(if refused.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    if let Some(what) = refused {
        return Err(Error::FilterNotAllowed(what));
    }
    match expr.get_type(df.schema()).map_err(|e| bad(e.message().to_string()))? {
        DataType::Boolean | DataType::Null => Ok(expr),
        other => Err(Error::FilterNotBoolean(other)),
    }
}

/// Functions whose result describes the gateway (engine, version, platform), not the data.
const DISCLOSING_FUNCTIONS: &[&str] = &["version"];

/// The allow-list of expression kinds in a filter; `Some(name)` for a refused kind.
fn forbidden(e: &Expr) -> Option<&'static str> {
    match e {
        Expr::Column(_)
        | Expr::Literal(..)
        | Expr::BinaryExpr(_)
        | Expr::Like(_)
        | Expr::SimilarTo(_)
        | Expr::Not(_)
        | Expr::IsNotNull(_)
        | Expr::IsNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Negative(_)
        | Expr::Between(_)
        | Expr::Case(_)
        | Expr::Cast(_)
        | Expr::TryCast(_)
        | Expr::InList(_)
        | Expr::Alias(_) => None,
        Expr::ScalarFunction(f) if DISCLOSING_FUNCTIONS.contains(&f.name()) => {
            Some("functions that describe the server")
        }
        Expr::ScalarFunction(_) => None,
        Expr::Exists(_)
        | Expr::InSubquery(_)
        | Expr::SetComparison(_)
        | Expr::ScalarSubquery(_)
        | Expr::OuterReferenceColumn(..) => Some("subqueries"),
        Expr::AggregateFunction(_) | Expr::GroupingSet(_) => Some("aggregate functions"),
        Expr::WindowFunction(_) => Some("window functions"),
        Expr::Placeholder(_) => Some("placeholders"),
        Expr::ScalarVariable(..) => Some("session variables"),
        #[allow(deprecated)]
        Expr::Wildcard { .. } => Some("wildcards"),
        Expr::Unnest(_) => Some("unnest"),
        Expr::HigherOrderFunction(_) | Expr::Lambda(_) | Expr::LambdaVariable(_) => Some("lambdas"),
    }
}

/// `plan_schema` with the field metadata of `contract` (matched by name) and its schema metadata.
fn with_contract_metadata(plan_schema: &Schema, contract: &Schema) -> SchemaRef {
    let fields: Vec<Field> = plan_schema
        .fields()
        .iter()
        .map(|f| {
            let md = contract.field_with_name(f.name()).map(|c| c.metadata().clone()).unwrap_or_default();
            f.as_ref().clone().with_metadata(md)
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, contract.metadata().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names() {
        assert_eq!(Compression::parse("LZ4").unwrap(), Some(Compression::Lz4));
        assert_eq!(Compression::parse("lz4_frame").unwrap(), Some(Compression::Lz4));
        assert_eq!(Compression::parse("zstd").unwrap(), Some(Compression::Zstd));
        assert_eq!(Compression::parse("none").unwrap(), None);
        assert!(Compression::parse("gzip").unwrap_err().contains("lz4, zstd or none"));
        for c in [Compression::Lz4, Compression::Zstd] {
            assert_eq!(Compression::parse(c.name()).unwrap(), Some(c));
        }
    }

    #[test]
    fn json_queries() {
        let s =
            ReadSpec::from_json(br#"{"product":"sales/orders","columns":["a"],"filter":"a > 1","limit":3}"#).unwrap();
        assert_eq!((s.domain.as_str(), s.product.as_str(), s.limit), ("sales", "orders", Some(3)));
        let s = ReadSpec::from_json(br#"{"product":"sales/orders/v2"}"#).unwrap();
        assert_eq!(s.port.as_deref(), Some("v2"));
        for bad in [
            &br#"{"product":"sales"}"#[..],
            br#"{"product":"a/b","colums":[]}"#,
            br#"{"product":"a/b","columns":[]}"#,
            b"not json",
            br#"{"product":"a/b","limit":-1}"#,
        ] {
            assert!(ReadSpec::from_json(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn expression_limits_count_operators_calls_and_nesting() {
        let l = EXPRESSION_LIMITS;
        l.check("f", "region = 'EMEA' AND amount > 100 OR lower(name) LIKE 'a%'").unwrap();
        l.check("f", &format!("id IN ({})", (0..1000).map(|i| i.to_string()).collect::<Vec<_>>().join(", "))).unwrap();
        for op in ["OR", "AND", "||", "+", "-", "*", "/", "%", "=", "<>", "<", ">=", "LIKE"] {
            let chain = vec!["x"; 300].join(&format!(" {op} "));
            let e = l.check("f", &chain).unwrap_err();
            assert!(matches!(e, Error::TooLarge { found: 299, .. }), "{op}: {e}");
            let fits = vec!["x"; 200].join(&format!(" {op} "));
            l.check("f", &fits).unwrap();
        }
        let nested = format!("{}x{}", "(".repeat(40), ")".repeat(40));
        assert!(matches!(l.check("f", &nested), Err(Error::TooLarge { unit: "levels of parentheses", .. })));
        let calls = format!("{}x{}", "abs(".repeat(20), ")".repeat(20));
        l.check("f", &calls).unwrap();
        let nots = "NOT ".repeat(300) + "x";
        assert!(l.check("f", &nots).is_err());
        let huge = "x".repeat(1 << 20);
        assert!(matches!(l.check("f", &huge), Err(Error::TooLarge { unit: "bytes", .. })));
    }

    #[test]
    fn paths() {
        assert!(ReadSpec::from_path(&["a".into()]).is_err());
        assert_eq!(ReadSpec::from_path(&["a".into(), "b".into(), "v1".into()]).unwrap().port.as_deref(), Some("v1"));
    }

    #[test]
    fn pinned_versions() {
        let path = |p: &[&str]| ReadSpec::from_path(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let s = path(&["a", "b", "@12"]).unwrap();
        assert_eq!((s.port, s.version), (None, Some(VersionPin::Version(12))));
        let s = path(&["a", "b", "v1", "@2026-11-22T10:00:00Z"]).unwrap();
        assert_eq!((s.port.as_deref(), s.version), (Some("v1"), Some(VersionPin::AsOf(1_795_341_600_000))));
        assert!(matches!(path(&["a", "b", "@yesterday"]), Err(Error::BadVersion(_))));
        assert!(matches!(path(&["a", "b", "v1", "x", "@1"]), Err(Error::BadPath(5))));
        let s = ReadSpec::from_json(br#"{"product":"a/b","version":3}"#).unwrap();
        assert_eq!(s.version, Some(VersionPin::Version(3)));
        let s = ReadSpec::from_json(br#"{"product":"a/b","as_of":"2026-11-22T11:00:00+01:00"}"#).unwrap();
        assert_eq!(s.version, Some(VersionPin::AsOf(1_795_341_600_000)));
        assert!(matches!(ReadSpec::from_json(br#"{"product":"a/b","as_of":"noon"}"#), Err(Error::BadVersion(_))));
        let both = ReadSpec::from_json(br#"{"product":"a/b","version":1,"as_of":"2026-11-22T10:00:00Z"}"#);
        assert!(both.unwrap_err().to_string().contains("not both"));
    }
}
