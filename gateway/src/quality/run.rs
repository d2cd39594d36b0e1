//! Running rules: each becomes one read-only SQL query over the product's table (library
//! metrics are compiled to SQL, `sql` rules are the owner's own query), planned with the same
//! checks as a Flight SQL statement and executed under the gateway's memory pool.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
    SchemaProvider, TableProvider,
};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::{DataFrame, SessionContext};
use serde_json::Value;

use super::rules::{Check, Rule};
use crate::access::read_only_plan;

/// Name under which the checked table is registered; `{object}` in a `sql` rule stands for it.
pub(crate) const TABLE: &str = "product";

/// `s` as a quoted SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        other => Some(format!("'{}'", other.to_string().replace('\'', "''"))),
    }
}

/// `col IN (values)`, comparing as text so that a list of strings applies to any column type;
/// `None` when the list has no non-null value.
fn listed(col: &str, values: &[Value]) -> Option<String> {
    let lits: Vec<String> = values.iter().filter_map(literal).collect();
    (!lits.is_empty()).then(|| format!("CAST({col} AS VARCHAR) IN ({})", lits.join(", ")))
}

/// The SQL measuring `rule` over [`TABLE`]: one row, the measure in the first column and the
/// table's row count in the second (for `unit: percent`).
pub(crate) fn sql(rule: &Rule) -> String {
    let t = ident(TABLE);
    let col = rule.column().map(ident).unwrap_or_default();
    let count_where =
        |cond: String| format!("SELECT COUNT(*) FILTER (WHERE {cond}) AS measured, COUNT(*) AS total FROM {t}");
    if let Some(cond) = violation(rule) {
        return count_where(cond);
    }
    match &rule.check {
        Check::NullValues | Check::MissingValues(_) | Check::InvalidValues { .. } => count_where("FALSE".into()),
        Check::DuplicateValues(cols) => {
            let keys = cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
            format!(
                "SELECT COALESCE(SUM(n - 1), 0) AS measured, COALESCE(SUM(n), 0) AS total FROM (SELECT COUNT(*) AS n FROM {t} GROUP BY {keys})"
            )
        }
        Check::RowCount => format!("SELECT COUNT(*) AS measured, COUNT(*) AS total FROM {t}"),
        Check::Sql(q) => {
            let mut q = q.clone();
            for k in ["${table}", "${object}", "{table}", "{object}"] {
                q = q.replace(k, &t);
            }
            if !col.is_empty() {
                for k in ["${column}", "${property}", "{column}", "{property}"] {
                    q = q.replace(k, &col);
                }
            }
            q
        }
        Check::Text => "SELECT NULL".into(),
    }
}

/// The condition a row violates a column rule by (`nullValues`, `missingValues`,
/// `invalidValues`), over [`TABLE`]; `None` for other rules and for a rule that no row can
/// violate (an empty list of missing values).
pub(crate) fn violation(rule: &Rule) -> Option<String> {
    let col = rule.column().map(ident)?;
    match &rule.check {
        Check::NullValues => Some(format!("{col} IS NULL")),
        Check::MissingValues(values) => {
            let mut conds = Vec::new();
            if values.iter().any(Value::is_null) {
                conds.push(format!("{col} IS NULL"));
            }
            conds.extend(listed(&col, values));
            (!conds.is_empty()).then(|| conds.join(" OR "))
        }
        Check::InvalidValues { valid, pattern } => {
            let mut bad = Vec::new();
            if let Some(values) = valid {
                bad.push(match listed(&col, values) {
                    Some(l) => format!("NOT ({l})"),
                    None => "TRUE".into(),
                });
            }
            if let Some(p) = pattern {
                bad.push(format!(
                    "NOT regexp_like(CAST({col} AS VARCHAR), {})",
                    literal(&Value::String(p.clone())).unwrap_or_default()
                ));
            }
            (!bad.is_empty()).then(|| format!("{col} IS NOT NULL AND ({})", bad.join(" OR ")))
        }
        _ => None,
    }
}

/// Why a rule could not be measured. The text is kept with the result: it names the rule's
/// problem (its SQL) but never a storage path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The rule's query is not a valid read-only query over the product.
    #[error("the rule's query is not a valid read-only query over the product: {0}")]
    Query(String),
    /// The query did not return one number.
    #[error("the rule's query must return one row with one number or boolean; {0}")]
    Shape(String),
    /// Reading the data failed.
    #[error("the product's data could not be read")]
    Read,
    /// The check ran past its time limit.
    #[error("the check did not finish within {}s", .0.as_secs())]
    Timeout(Duration),
}

/// Measures `rule` over `table`, with `base`'s settings and memory pool, within `limit`.
pub(crate) async fn measure(
    base: &SessionState,
    table: Arc<dyn TableProvider>,
    rule: &Rule,
    limit: Duration,
) -> Result<f64, Error> {
    let ctx = session(base, table)?;
    let query = sql(rule);
    let run = async {
        let batches = collect(&ctx, &query).await.map_err(|e| {
            if let Error::Read = e {
                tracing::warn!(rule = %rule.name, "a quality check could not read the data");
            }
            e
        })?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Error::Shape(format!("it returned {rows} rows")))?;
        if rows != 1 {
            return Err(Error::Shape(format!("it returned {rows} rows")));
        }
        let value = number(batch.column(0).as_ref())
            .ok_or_else(|| Error::Shape(format!("its first column is {}", batch.column(0).data_type())))?;
        if !rule.percent {
            return Ok(value);
        }
        let total = batch.columns().get(1).and_then(|c| number(c.as_ref())).unwrap_or(0.0);
        Ok(if total == 0.0 { 0.0 } else { value * 100.0 / total })
    };
    tokio::time::timeout(limit, run).await.map_err(|_| Error::Timeout(limit))?
}

/// The values of the first (unsigned integer) column `query` returns over `table`, within
/// `limit`; `None` when it cannot be run (the caller reports without them).
pub(crate) async fn rows(
    base: &SessionState,
    table: Arc<dyn TableProvider>,
    query: &str,
    limit: Duration,
) -> Option<Vec<u64>> {
    let ctx = session(base, table).ok()?;
    let batches = tokio::time::timeout(limit, collect(&ctx, query)).await.ok()?.ok()?;
    let mut out = Vec::new();
    for b in &batches {
        let c = b.column(0).as_primitive_opt::<arrow::datatypes::UInt64Type>()?;
        out.extend(c.iter().flatten());
    }
    Some(out)
}

/// Plans `query` read-only in `ctx` and runs it.
async fn collect(ctx: &SessionContext, query: &str) -> Result<Vec<arrow::array::RecordBatch>, Error> {
    let plan = read_only_plan(&ctx.state(), query).await.map_err(|e| Error::Query(e.to_string()))?;
    DataFrame::new(ctx.state(), plan).collect().await.map_err(|e| {
        tracing::debug!(error = %e, "a quality query failed");
        Error::Read
    })
}

/// A session whose only table is `table`, as [`TABLE`] in the default catalog and schema,
/// with `base`'s settings and memory pool.
fn session(base: &SessionState, table: Arc<dyn TableProvider>) -> Result<SessionContext, Error> {
    let schema = MemorySchemaProvider::new();
    schema.register_table(TABLE.into(), table).map_err(|e| Error::Query(e.to_string()))?;
    let catalog = MemoryCatalogProvider::new();
    let defaults = &base.config().options().catalog;
    catalog.register_schema(&defaults.default_schema, Arc::new(schema)).map_err(|e| Error::Query(e.to_string()))?;
    let catalogs = MemoryCatalogProviderList::new();
    catalogs.register_catalog(defaults.default_catalog.clone(), Arc::new(catalog));
    let state = SessionStateBuilder::new_from_existing(base.clone())
        .with_catalog_list(Arc::new(catalogs))
        .with_table_functions(Default::default())
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// The first value of a numeric or boolean column, as a number (null counts as 0).
fn number(a: &dyn Array) -> Option<f64> {
    use arrow::datatypes::*;
    if a.is_empty() {
        return None;
    }
    if a.is_null(0) {
        return Some(0.0);
    }
    Some(match a.data_type() {
        DataType::Boolean => f64::from(u8::from(a.as_boolean().value(0))),
        DataType::Int8 => f64::from(a.as_primitive::<Int8Type>().value(0)),
        DataType::Int16 => f64::from(a.as_primitive::<Int16Type>().value(0)),
        DataType::Int32 => f64::from(a.as_primitive::<Int32Type>().value(0)),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(0) as f64,
        DataType::UInt8 => f64::from(a.as_primitive::<UInt8Type>().value(0)),
        DataType::UInt16 => f64::from(a.as_primitive::<UInt16Type>().value(0)),
        DataType::UInt32 => f64::from(a.as_primitive::<UInt32Type>().value(0)),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(0) as f64,
        DataType::Float32 => f64::from(a.as_primitive::<Float32Type>().value(0)),
        DataType::Float64 => a.as_primitive::<Float64Type>().value(0),
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => {
            let cast = arrow::compute::cast(a, &DataType::Float64).ok()?;
            cast.as_primitive::<Float64Type>().value(0)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::rules::parse;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use serde_json::json;

    fn table() -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("unit", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(2), None])),
                Arc::new(StringArray::from(vec![Some("kg"), Some(""), Some("lbs"), None])),
            ],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    async fn measured(table_rules: Value, unit_rules: Value) -> Vec<Result<f64, Error>> {
        let doc = json!({"schema": [{"name": "t", "quality": table_rules,
            "properties": [{"name": "id"}, {"name": "unit", "quality": unit_rules}]}]});
        let rules = parse(&doc, &["id".into(), "unit".into()]).unwrap();
        let state = SessionContext::new().state();
        let mut out = Vec::new();
        for r in &rules {
            out.push(measure(&state, table(), r, Duration::from_secs(30)).await);
        }
        out
    }

    #[tokio::test]
    async fn library_metrics_count_what_the_standard_says() {
        let got = measured(
            json!([{"metric": "rowCount", "mustBe": 4},
                   {"metric": "duplicateValues", "arguments": {"properties": ["id"]}, "mustBe": 0}]),
            json!([{"metric": "nullValues", "mustBe": 0},
                   {"metric": "nullValues", "unit": "percent", "mustBe": 0},
                   {"metric": "missingValues", "arguments": {"missingValues": [null, ""]}, "mustBe": 0},
                   {"metric": "invalidValues", "arguments": {"validValues": ["kg", "g"]}, "mustBe": 0},
                   {"metric": "invalidValues", "arguments": {"pattern": "^[a-z]+$"}, "mustBe": 0},
                   {"metric": "duplicateValues", "mustBe": 0}]),
        )
        .await;
        let got: Vec<f64> = got.into_iter().map(Result::unwrap).collect();
        // rows; duplicate ids (2 twice); nulls; 25%; null + ""; "" and "lbs"; ""; no duplicate units.
        assert_eq!(got, vec![4.0, 1.0, 1.0, 25.0, 2.0, 2.0, 1.0, 0.0]);
    }

    #[tokio::test]
    async fn sql_rules_run_read_only_over_the_product() {
        let got = measured(
            json!([{"type": "sql", "query": "SELECT COUNT(*) FROM {object} WHERE id > 1", "mustBe": 2},
                   {"type": "sql", "query": "SELECT MAX(id) = 2 FROM ${table}", "mustBe": 1},
                   {"type": "sql", "query": "DROP TABLE {object}", "mustBe": 0},
                   {"type": "sql", "query": "SELECT id FROM {object}", "mustBe": 0},
                   {"type": "sql", "query": "SELECT * FROM mesh.sales.orders", "mustBe": 0}]),
            json!([{"type": "sql", "query": "SELECT COUNT({property}) FROM {object}", "mustBe": 3}]),
        )
        .await;
        assert_eq!(got[0], Ok(2.0));
        assert_eq!(got[1], Ok(1.0));
        assert!(matches!(got[2], Err(Error::Query(_))), "{:?}", got[2]);
        assert!(matches!(got[3], Err(Error::Shape(_))), "{:?}", got[3]);
        assert!(matches!(got[4], Err(Error::Query(_))), "{:?}", got[4]);
        assert_eq!(got[5], Ok(3.0));
    }
}
