//! The producer path: a domain team publishes a new version of a product it owns.
//!
//! `DoPut` on a product's PATH and Flight SQL bulk ingest (`CommandStatementIngest`) both end
//! here. A publish is decided by the policies' `write` action, then every batch is conformed to
//! the contract (the contract's columns, no others, each castable to its declared type without
//! loss; `required` columns without nulls) while it is staged, up to `--max-publish-bytes`. The
//! contract's blocking quality rules are measured on the version the publish would create (the
//! staged rows for `replace`; the current rows and the staged ones for `append`) before anything
//! is written; a failing rule refuses the publish with the rule, the column and offending row
//! numbers. Only then is the version committed, atomically, by the storage
//! ([`meshgate_adapters::Versioned`]). The caller, rows, bytes and version are audited, and the
//! rules' outcomes recorded as the new version's quality check (a refused candidate's outcomes
//! are in the refusal only: the port's last check stays that of the version it serves).

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, UInt64Array};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use futures::stream::BoxStream;
use meshgate_adapters::{CommitNote, VersionPin, WriteMode};
use serde::Serialize;

use super::{AccessCore, Call, Error, Result};
use crate::audit;
use crate::catalog::{Port, Product};
use crate::quality::rules::{Check, Rule};
use crate::quality::{self, Outcome, Trigger};

/// Publishes staged by default at most this many bytes (Arrow, in memory).
pub const DEFAULT_MAX_PUBLISH_BYTES: u64 = 1 << 30;

/// Offending row numbers named in a refusal.
const SAMPLE_ROWS: usize = 10;

/// Why a publish was refused. Every message says what to fix; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The product's storage does not keep versions, so nothing can be published to it.
    #[error(
        "`{product}` is stored by the `{kind}` adapter, which meshgate only reads; products published through meshgate are bound to `adapter: delta`"
    )]
    NotPublishable {
        /// `domain/product`.
        product: String,
        /// Its binding's adapter.
        kind: &'static str,
    },
    /// The policies do not allow the caller to publish the product.
    #[error("you may not publish `{product}`; only its owning domain publishes it (the policies' `write` action)")]
    Denied {
        /// `domain/product`.
        product: String,
        /// Policies that decided (for the audit record).
        policy_ids: Vec<String>,
    },
    /// The batches' columns or types do not fit the contract.
    #[error("the data does not fit the contract of `{product}`: {message}")]
    Schema {
        /// `domain/product`.
        product: String,
        /// What does not fit, and how to fix it.
        message: String,
    },
    /// A `required` column holds nulls.
    #[error(
        "column `{column}` of `{product}` is required but {count} rows sent are null (rows {rows}, counted from 0 in the order sent); fill it or fix the contract"
    )]
    Required {
        /// `domain/product`.
        product: String,
        /// The column.
        column: String,
        /// Null values in the batch where they were found.
        count: usize,
        /// Sample of offending row numbers, comma-separated.
        rows: String,
    },
    /// Blocking quality rules fail on the version the publish would create.
    #[error("the publish to `{product}` was refused by its contract's quality rules: {failures}; nothing was written")]
    Rules {
        /// `domain/product`.
        product: String,
        /// Each failing rule: name, metric and column, measure, expectation, offending rows.
        failures: String,
    },
    /// The batches could not be decoded.
    #[error("the published stream does not decode: {0}")]
    Decode(String),
    /// More bytes than the gateway stages for one publish.
    #[error(
        "the publish is larger than the gateway's limit of {limit} bytes (--max-publish-bytes); publish it in several appends, or ask the operators to raise the limit"
    )]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The storage refused the commit (nothing was committed).
    #[error("the new version of `{product}` could not be committed: {reason}")]
    Commit {
        /// `domain/product`.
        product: String,
        /// Why, without server paths.
        reason: String,
    },
}

/// A new version, committed.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// `domain/product`.
    pub product: String,
    /// The port written.
    pub port: String,
    /// The storage's version number.
    pub version: u64,
    /// `append` or `replace`.
    pub mode: WriteMode,
    /// Rows written.
    pub rows: u64,
    /// Arrow bytes written.
    pub bytes: u64,
    /// Blocking rules checked (all passed).
    pub rules_checked: usize,
}

/// The batches a client streams, already decoded.
pub type Incoming = BoxStream<'static, std::result::Result<RecordBatch, String>>;

impl AccessCore {
    /// Publishes `batches` as a new version of `(domain, product, port)` for the caller, with
    /// `mode`; see the [module](self) for the steps. The outcome is audited.
    pub async fn publish(
        self: &Arc<Self>,
        call: &Call,
        (domain, name, port): (String, String, Option<String>),
        mode: WriteMode,
        batches: Incoming,
    ) -> Result<Published> {
        let mut token = self.begin(call)?;
        let snapshot = self.snapshot();
        let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(&call.principal, prod);
        let resolved = snapshot.catalog.resolve_visible(&domain, &name, port.as_deref(), &visible);
        let (product, port) = match resolved {
            Ok(x) => x,
            Err(e) => return Err(super::fail(token, e.into()).await),
        };
        if let Some(t) = token.as_mut() {
            t.ids(&uuid::Uuid::new_v4().to_string(), None);
            t.kind("publish");
            t.resources(&[audit::Resource {
                domain: product.domain.clone(),
                product: product.name.clone(),
                port: port.name.clone(),
                contract_id: port.contract.id.clone(),
                contract_version: port.contract.version.clone(),
                columns: port.schema.fields().iter().map(|f| f.name().clone()).collect(),
            }]);
        }
        let verdict = match &snapshot.rules {
            None => None,
            Some(rules) => match rules.write_verdict(&call.principal, &product) {
                Ok(v) => Some(v),
                Err(e) => return Err(super::fail(token, e.into()).await),
            },
        };
        if let (Some(t), Some(v)) = (token.as_mut(), &verdict) {
            t.decision(&audit::Decision {
                effect: if v.allowed { "allow" } else { "deny" }.into(),
                policy_ids: v.policy_ids.clone(),
                ..Default::default()
            });
        }
        if let Some(v) = verdict.as_ref().filter(|v| !v.allowed) {
            let e = PublishError::Denied { product: product.address(), policy_ids: v.policy_ids.clone() };
            return Err(super::fail(token, e.into()).await);
        }
        let lineage = self.lineage.as_ref().map(|l| {
            let written = super::Resolved { product: Arc::clone(&product), port: Arc::clone(&port), grant: None };
            let mut output = super::plan::lineage_dataset(&written, None);
            output.columns = port.schema.fields().iter().map(|f| f.name().clone()).collect();
            output.policies = verdict.map(|v| v.policy_ids).unwrap_or_default();
            let job = crate::lineage::Job {
                kind: "PUBLISH",
                principal: call.principal.clone(),
                client: call.client.clone(),
                sql: None,
            };
            l.begin(job, Vec::new(), vec![output])
        });
        let core = Arc::clone(self);
        let (p, c) = (Arc::clone(&product), Arc::clone(&port));
        let author = call.principal.subject.clone();
        let max = self.options.max_publish_bytes;
        let done =
            self.exec.run(async move { core.stage_check_commit(&p, &c, mode, batches, author, max).await }).await;
        if let Some(run) = lineage {
            match &done {
                Ok(p) => {
                    run.complete(crate::lineage::Delivered { rows: p.rows, bytes: p.bytes, version: Some(p.version) })
                }
                Err(e) => run.fail(super::error::to_status(e).message()),
            }
        }
        match (done, token) {
            (Ok(published), Some(mut t)) => {
                t.add(published.rows, published.bytes);
                t.version(published.version);
                t.ok().await?;
                Ok(published)
            }
            (Ok(published), None) => Ok(published),
            (Err(e), token) => Err(super::fail(token, e).await),
        }
    }

    /// The lock publishes of one port take turns on in this process.
    fn publish_turn(&self, product: &str, port: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(turns.entry(format!("{product}/{port}")).or_default())
    }

    /// A Flight SQL table name of `domain` as (product, port): `<product>__<port>` names a
    /// port unless a product is named exactly so.
    pub fn split_table(&self, domain: &str, table: &str) -> (String, Option<String>) {
        let snapshot = self.snapshot();
        let exact = snapshot.catalog.entries.contains_key(&(domain.to_string(), table.to_string()));
        match table.rsplit_once(super::PORT_SEPARATOR) {
            Some((product, port)) if !exact && !product.is_empty() && !port.is_empty() => {
                (product.to_string(), Some(port.to_string()))
            }
            _ => (table.to_string(), None),
        }
    }

    /// Whether the port has a committed version (false when it cannot be found or told).
    pub async fn has_version(
        &self,
        p: &crate::auth::Principal,
        (domain, name, port): (&str, &str, Option<&str>),
    ) -> bool {
        let snapshot = self.snapshot();
        let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(p, prod);
        let Ok((_, port)) = snapshot.catalog.resolve_visible(domain, name, port, &visible) else {
            return false;
        };
        match &port.versions {
            Some(v) => matches!(v.latest().await, Ok(Some(_))),
            None => true,
        }
    }

    async fn stage_check_commit(
        &self,
        product: &Product,
        port: &Port,
        mode: WriteMode,
        mut batches: Incoming,
        author: String,
        max_bytes: u64,
    ) -> Result<Published> {
        let address = product.address();
        let Some(versions) = port.versions.clone() else {
            return Err(PublishError::NotPublishable { product: address, kind: port.binding.kind() }.into());
        };
        let target = stored_schema(port);
        let (mut staged, mut rows, mut bytes) = (Vec::new(), 0u64, 0u64);
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(PublishError::Decode)?;
            let batch = conform(&batch, &target, port, rows).map_err(|e| e.for_product(&address))?;
            bytes += batch.get_array_memory_size() as u64;
            if bytes > max_bytes {
                return Err(PublishError::TooLarge { limit: max_bytes }.into());
            }
            rows += batch.num_rows() as u64;
            if batch.num_rows() > 0 {
                staged.push(batch);
            }
        }
        // One publish of a port at a time here, from the checks to the commit; a publish from
        // another replica in between makes this commit fail instead of landing unchecked.
        let turn = self.publish_turn(&address, &port.name);
        let _turn = turn.lock().await;
        let base = versions
            .latest()
            .await
            .map_err(|e| PublishError::Commit { product: address.clone(), reason: commit_reason(&e) })?
            .map(|v| v.version);
        let (outcomes, refusal) = self.check_candidate((product, port), mode, &target, &staged, base).await?;
        let checked = outcomes.len();
        // A refused candidate's outcomes are in the refusal; the port's last check stays that
        // of the version it serves.
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        tracing::info!(product = %address, port = %port.name, rows, bytes, "publish checked; committing");
        let note = CommitNote { author, mode, rows, base: base.filter(|_| mode == WriteMode::Append) };
        let version = match versions.commit(staged, note).await {
            Ok(v) => v,
            Err(e) => return Err(PublishError::Commit { product: address, reason: commit_reason(&e) }.into()),
        };
        self.quality.record(product, port, Some(format!("version {version}")), outcomes);
        tracing::info!(product = %address, port = %port.name, version, rows, bytes, mode = mode.name(), "published");
        Ok(Published { product: address, port: port.name.clone(), version, mode, rows, bytes, rules_checked: checked })
    }

    /// Measures the port's runnable rules on the version the publish would create: their
    /// outcomes, and the refusal when a blocking one fails (or cannot be measured).
    async fn check_candidate(
        &self,
        (product, port): (&Product, &Port),
        mode: WriteMode,
        schema: &SchemaRef,
        staged: &[RecordBatch],
        base: Option<u64>,
    ) -> Result<(Vec<Outcome>, Option<Error>)> {
        let rules: Vec<&Rule> = port.contract.rules.iter().filter(|r| r.runnable()).collect();
        if rules.is_empty() {
            return Ok((Vec::new(), None));
        }
        let state = self.catalog.state().clone();
        let mut numbered = numbered(schema, staged)?;
        let new_rows: Arc<dyn TableProvider> =
            Arc::new(MemTable::try_new(Arc::clone(schema), vec![staged.to_vec()]).map_err(|e| internal("staging", e))?);
        let candidate = match mode {
            WriteMode::Replace => Arc::clone(&new_rows),
            WriteMode::Append => {
                let ctx = SessionContext::new_with_state(state.clone());
                let current =
                    match (&port.versions, base) {
                        (Some(v), Some(base)) => Some(v.at(VersionPin::Version(base)).await.map_err(|e| {
                            PublishError::Commit { product: product.address(), reason: commit_reason(&e) }
                        })?),
                        _ => None,
                    };
                match current {
                    Some((current, _)) => {
                        let current = ctx.read_table(current).map_err(|e| internal("reading", e))?;
                        let current = current.select_columns(&names(schema)).map_err(|e| internal("reading", e))?;
                        let added = ctx.read_table(Arc::clone(&new_rows)).map_err(|e| internal("staging", e))?;
                        // The current rows carry no row number: only rows sent are named.
                        let unnumbered = current
                            .clone()
                            .with_column(ROW, datafusion::prelude::lit(datafusion::common::ScalarValue::UInt64(None)))
                            .map_err(|e| internal("reading", e))?;
                        let sent = ctx.read_table(Arc::clone(&numbered)).map_err(|e| internal("staging", e))?;
                        numbered = unnumbered.union(sent).map_err(|e| internal("staging", e))?.into_view();
                        current.union(added).map_err(|e| internal("staging", e))?.into_view()
                    }
                    None => Arc::clone(&new_rows),
                }
            }
        };
        let limit = self.rule_time();
        let mut outcomes = Vec::with_capacity(rules.len());
        let mut failures = Vec::new();
        for rule in &rules {
            let measured = quality::run::measure(&state, Arc::clone(&candidate), rule, limit).await;
            let outcome = Outcome::new((product, port), rule, measured, None, Trigger::Publish);
            if !outcome.passed && rule.blocking() {
                let sample = offending_rows(&state, &numbered, rule, limit).await;
                failures.push(describe_failure(&outcome, &sample));
            }
            outcomes.push(outcome);
        }
        let refusal = (!failures.is_empty())
            .then(|| PublishError::Rules { product: product.address(), failures: failures.join("; ") }.into());
        Ok((outcomes, refusal))
    }
}

fn internal(what: &str, e: datafusion::error::DataFusionError) -> Error {
    Error::Internal(format!("{what} a publish: {e}"))
}

fn names(schema: &Schema) -> Vec<&str> {
    schema.fields().iter().map(|f| f.name().as_str()).collect()
}

/// The schema a publish writes: the contract's columns (in contract order) typed as the storage
/// holds them.
fn stored_schema(port: &Port) -> SchemaRef {
    let stored = port.table.schema();
    let fields: Vec<Field> = port
        .schema
        .fields()
        .iter()
        .map(|f| match stored.field_with_name(f.name()) {
            Ok(s) => s.clone().with_metadata(Default::default()),
            Err(_) => f.as_ref().clone().with_metadata(Default::default()),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Why a batch does not fit; [`Misfit::for_product`] names the product.
#[derive(Debug)]
enum Misfit {
    Schema(String),
    Required { column: String, count: usize, rows: Vec<u64> },
}

impl Misfit {
    fn for_product(self, product: &str) -> Error {
        match self {
            Misfit::Schema(message) => PublishError::Schema { product: product.into(), message }.into(),
            Misfit::Required { column, count, rows } => PublishError::Required {
                product: product.into(),
                column,
                count,
                rows: rows.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            }
            .into(),
        }
    }
}

/// `batch` with the contract's columns in contract order, cast to the stored types (a cast that
/// would lose a value fails), checked for nulls in `required` columns. `first_row` is the
/// number of the batch's first row in the publish, for messages.
fn conform(batch: &RecordBatch, target: &SchemaRef, port: &Port, first_row: u64) -> Result<RecordBatch, Misfit> {
    let sent = batch.schema();
    let extra: Vec<&str> =
        sent.fields().iter().map(|f| f.name().as_str()).filter(|n| target.field_with_name(n).is_err()).collect();
    if !extra.is_empty() {
        return Err(Misfit::Schema(format!(
            "columns {} are not in the contract; send only the contract's columns ({}), or add them to the contract first",
            quoted(&extra),
            quoted(&names(target))
        )));
    }
    let missing: Vec<&str> = names(target).into_iter().filter(|n| sent.field_with_name(n).is_err()).collect();
    if !missing.is_empty() {
        return Err(Misfit::Schema(format!(
            "columns {} of the contract are missing; send every contract column (null where a value is unknown)",
            quoted(&missing)
        )));
    }
    let strict = CastOptions { safe: false, ..Default::default() };
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let (i, _) = sent.column_with_name(field.name()).expect("checked above");
        let array = batch.column(i);
        let array = if array.data_type() == field.data_type() {
            Arc::clone(array)
        } else if !castable(array.data_type(), field.data_type()) {
            return Err(Misfit::Schema(format!(
                "column `{}` is {} but the contract's type is {}; send it as {}",
                field.name(),
                array.data_type(),
                field.data_type(),
                field.data_type()
            )));
        } else {
            arrow::compute::cast_with_options(array, field.data_type(), &strict).map_err(|e| {
                Misfit::Schema(format!(
                    "column `{}` cannot be stored as {} without losing values ({e}); send it as {}",
                    field.name(),
                    field.data_type(),
                    field.data_type()
                ))
            })?
        };
        let required = port.contract.properties.iter().any(|p| p.name == *field.name() && p.required);
        if required && array.null_count() > 0 {
            let rows: Vec<u64> = (0..array.len())
                .filter(|&r| array.is_null(r))
                .take(SAMPLE_ROWS)
                .map(|r| first_row + r as u64)
                .collect();
            return Err(Misfit::Required { column: field.name().clone(), count: array.null_count(), rows });
        }
        columns.push(array);
    }
    RecordBatch::try_new(Arc::clone(target), columns).map_err(|e| Misfit::Schema(e.to_string()))
}

/// Whether values of `from` may be stored as `to`: the same kind of value (numbers as numbers,
/// text as text, times as times), never text parsed into numbers or dates.
fn castable(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let text = |t: &DataType| matches!(t, Utf8 | LargeUtf8 | Utf8View);
    let binary = |t: &DataType| matches!(t, Binary | LargeBinary | BinaryView | FixedSizeBinary(_));
    let number = |t: &DataType| t.is_numeric();
    let time = |t: &DataType| matches!(t, Date32 | Date64 | Timestamp(..));
    match (from, to) {
        (Dictionary(_, v), to) => castable(v, to),
        (Null, _) => true,
        (f, t) if text(f) => text(t),
        (f, t) if binary(f) => binary(t),
        (f, t) if number(f) => number(t),
        (f, t) if time(f) => time(t),
        (Boolean, Boolean) => true,
        (f, t) => f == t,
    }
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// Name of the row-number column of the staged rows.
const ROW: &str = "__meshgate_row";

/// The staged rows with their numbers (0-based, in the order sent) as a last column.
fn numbered(schema: &SchemaRef, staged: &[RecordBatch]) -> Result<Arc<dyn TableProvider>> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROW, DataType::UInt64, true));
    let with_rows = Arc::new(Schema::new(fields));
    let mut first = 0u64;
    let mut out = Vec::with_capacity(staged.len());
    for b in staged {
        let n = b.num_rows() as u64;
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(first..first + n)));
        first += n;
        out.push(RecordBatch::try_new(Arc::clone(&with_rows), columns).map_err(|e| Error::Internal(e.to_string()))?);
    }
    Ok(Arc::new(MemTable::try_new(with_rows, vec![out]).map_err(|e| internal("staging", e))?))
}

/// Up to [`SAMPLE_ROWS`] numbers of sent rows that violate a column rule (`None` for rules
/// measured over the whole table, like `rowCount` and `sql`).
async fn offending_rows(
    state: &datafusion::execution::session_state::SessionState,
    numbered: &Arc<dyn TableProvider>,
    rule: &Rule,
    limit: std::time::Duration,
) -> Option<Vec<u64>> {
    let (row, t) = (quality::run::ident(ROW), quality::run::ident(quality::run::TABLE));
    let query = match &rule.check {
        Check::NullValues | Check::MissingValues(_) | Check::InvalidValues { .. } => {
            let condition = quality::run::violation(rule)?;
            format!(
                "SELECT {row} FROM {t} WHERE {row} IS NOT NULL AND ({condition}) ORDER BY {row} LIMIT {SAMPLE_ROWS}"
            )
        }
        Check::DuplicateValues(cols) => {
            let keys: Vec<String> = cols.iter().map(|c| quality::run::ident(c)).collect();
            let on: Vec<String> = keys.iter().map(|k| format!("r.{k} = d.{k}")).collect();
            format!(
                "SELECT r.{row} FROM {t} r JOIN (SELECT {keys} FROM {t} GROUP BY {keys} HAVING COUNT(*) > 1) d ON {on} \
                 WHERE r.{row} IS NOT NULL ORDER BY r.{row} LIMIT {SAMPLE_ROWS}",
                keys = keys.join(", "),
                on = on.join(" AND ")
            )
        }
        Check::RowCount | Check::Sql(_) | Check::Text => return None,
    };
    quality::run::rows(state, Arc::clone(numbered), &query, limit).await
}

fn describe_failure(o: &Outcome, sample: &Option<Vec<u64>>) -> String {
    let on = o.column.as_deref().map(|c| format!(" on `{c}`")).unwrap_or_default();
    let measured = match (&o.value, &o.error) {
        (Some(v), _) => format!("measured {v}, expected {}", o.expect.as_deref().unwrap_or("-")),
        (None, Some(e)) => format!("could not be measured ({e})"),
        (None, None) => "could not be measured".into(),
    };
    let rows = match sample {
        Some(rows) if !rows.is_empty() => format!(
            ", offending rows {} (counted from 0 in the order sent)",
            rows.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
        _ => String::new(),
    };
    format!("rule `{}` ({}{on}) {measured}{rows}", o.rule, o.metric)
}

fn commit_reason(e: &meshgate_adapters::Error) -> String {
    match e {
        meshgate_adapters::Error::Write(why) => why.clone(),
        _ => "the table's storage failed; nothing was committed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_values_of_the_same_kind_are_cast() {
        assert!(castable(&DataType::Int32, &DataType::Int64));
        assert!(castable(&DataType::Utf8View, &DataType::Utf8));
        assert!(castable(&DataType::Null, &DataType::Date32));
        assert!(!castable(&DataType::Utf8, &DataType::Int64), "text is never parsed into numbers");
        assert!(!castable(&DataType::Int64, &DataType::Utf8));
        assert!(!castable(&DataType::Float64, &DataType::Date32));
    }
}
