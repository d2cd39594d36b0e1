//! The governed table: the one enforcement point.
//!
//! Every product a request reads is wrapped in a [`GovernedTable`]. Its scan puts a
//! [`GuardExec`] directly on top of the adapter's scan: the guard applies the row filter first,
//! then the masks, and only its output is visible to anything the caller wrote. The guard lets
//! no filter pass through it, so a caller's predicate runs only on rows the caller may see and
//! only on masked values: an expression that errors on a hidden row never meets one.
//! [`check_guarded`] walks the final physical plan and fails closed if any scan lost its guard.
//!
//! # Pushdown under the guard
//! The storage still prunes. The policy's row filter is trusted and is handed to the adapter's
//! scan (partition pruning, Parquet statistics, a `WHERE` sent to a database), and the guard
//! applies it again to what comes back. A caller's predicate goes below the guard only when it
//! is [`leakproof`]: built from comparisons, `IN`, `BETWEEN`, `IS [NOT] NULL`, `NOT`, `AND` and
//! `OR` of *unmasked* columns against literals. Such a predicate cannot raise an error or show a
//! value, whichever rows it meets; it only lets the storage skip data. It is also kept above
//! the guard (DataFusion's `Inexact`), so the rows a caller gets are exactly as without it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, ExprSchemable, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties};
use futures::StreamExt;

/// One output column: its name and the expression (over the adapter's columns) producing it.
#[derive(Debug, Clone)]
pub struct OutputColumn {
    /// Column name.
    pub name: String,
    /// `col(name)`, or its mask.
    pub expr: Expr,
}

/// In a session's config (`--no-storage-pushdown`): governed tables hand the storage neither
/// the row filter nor caller predicates, and read every partition and row group; the guard
/// filters as always. For measuring what pushdown saves, and for ruling it out when diagnosing.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoragePushdownOff;

/// A product as one principal may see it.
#[derive(Debug)]
pub struct GovernedTable {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    columns: Vec<OutputColumn>,
    row_filter: Option<Expr>,
    source: String,
}

impl GovernedTable {
    /// Wraps `inner`, serving `columns` of the rows `row_filter` keeps (`None`: all rows).
    pub fn try_new(
        inner: Arc<dyn TableProvider>,
        columns: Vec<OutputColumn>,
        row_filter: Option<Expr>,
        contract: &Schema,
    ) -> Result<Self> {
        let inner_schema = DFSchema::try_from(inner.schema())?;
        let fields = columns
            .iter()
            .map(|c| {
                let (_, field) = c.expr.to_field(&inner_schema)?;
                let md = contract.field_with_name(&c.name).map(|f| f.metadata().clone()).unwrap_or_default();
                Ok(Field::new(c.name.clone(), field.data_type().clone(), field.is_nullable()).with_metadata(md))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(f) = &row_filter {
            f.to_field(&inner_schema)?;
        }
        Ok(Self { inner, schema: Arc::new(Schema::new(fields)), columns, row_filter, source: String::new() })
    }

    /// The same view (columns, masks, row filter) over `inner`: another version of the same data,
    /// with the schema the contract announces.
    pub fn over(&self, inner: Arc<dyn TableProvider>) -> Result<Self> {
        let t = Self::try_new(inner, self.columns.clone(), self.row_filter.clone(), &self.schema)?;
        Ok(t.with_source(self.source.clone()))
    }

    /// Names what the table serves (`<domain>/<product>`), for plans and audit records.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    /// Leakproof caller filters go to the storage too, for pruning; they are still applied above
    /// the guard (`Inexact`). Every other filter stays above the guard only.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match leakproof(f, &|c| self.unmasked(c)) {
                true => TableProviderFilterPushDown::Inexact,
                false => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.columns.len()).collect());
        let inner_schema = self.inner.schema();
        let (pushed, to_apply) = if state.config().get_extension::<StoragePushdownOff>().is_some() {
            (Vec::new(), Vec::new())
        } else {
            self.storage_filters(filters)?
        };
        let mut needed = std::collections::BTreeSet::new();
        for e in wanted.iter().map(|i| &self.columns[*i].expr).chain(self.row_filter.iter()).chain(to_apply.iter()) {
            for c in e.column_refs() {
                needed.insert(inner_schema.index_of(&c.name)?);
            }
        }
        let needed: Vec<usize> = needed.into_iter().collect();
        // A limit may only go below the guard when the guard drops no rows.
        let inner_limit = if self.row_filter.is_none() { limit } else { None };
        let mut input = self.inner.scan(state, Some(&needed), &pushed, inner_limit).await?;
        let input_schema = DFSchema::try_from(input.schema())?;
        // Filters the storage takes inexactly are evaluated right on its output, below the
        // guard, where DataFusion's physical filter pushdown hands them to the scan itself
        // (Parquet statistics and page index).
        if let Some(f) = datafusion::logical_expr::utils::conjunction(to_apply) {
            let predicate = state.create_physical_expr(f, &input_schema)?;
            input = Arc::new(datafusion::physical_plan::filter::FilterExec::try_new(predicate, input)?);
        }
        let row_filter =
            self.row_filter.as_ref().map(|e| state.create_physical_expr(e.clone(), &input_schema)).transpose()?;
        let exprs = wanted
            .iter()
            .map(|i| state.create_physical_expr(self.columns[*i].expr.clone(), &input_schema))
            .collect::<Result<Vec<_>>>()?;
        let schema = Arc::new(self.schema.project(&wanted)?);
        Ok(Arc::new(GuardExec::new(input, row_filter, exprs, schema, self.source.clone())))
    }
}

impl GovernedTable {
    /// Whether output column `name` is served unmasked: the storage's column of that name.
    fn unmasked(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name && matches!(&c.expr, Expr::Column(col) if col.name == name))
    }

    /// What the storage scan is given: the row filter's conjuncts and the caller's (leakproof,
    /// checked again here) filters, each only where the storage says it can use it; and of
    /// those, the ones the storage applies inexactly, which must still be evaluated on its output.
    fn storage_filters(&self, caller: &[Expr]) -> Result<(Vec<Expr>, Vec<Expr>)> {
        let mut candidates: Vec<Expr> = self
            .row_filter
            .as_ref()
            .map(|f| datafusion::logical_expr::utils::split_conjunction(f).into_iter().cloned().collect())
            .unwrap_or_default();
        candidates.extend(caller.iter().filter(|f| leakproof(f, &|c| self.unmasked(c))).map(unqualify));
        let refs: Vec<&Expr> = candidates.iter().collect();
        let support = self.inner.supports_filters_pushdown(&refs)?;
        let (mut pushed, mut inexact) = (Vec::new(), Vec::new());
        for (f, s) in candidates.into_iter().zip(support) {
            match s {
                TableProviderFilterPushDown::Exact => pushed.push(f),
                TableProviderFilterPushDown::Inexact => {
                    inexact.push(f.clone());
                    pushed.push(f);
                }
                TableProviderFilterPushDown::Unsupported => {}
            }
        }
        Ok((pushed, inexact))
    }
}

/// `e` with its columns' table qualifiers removed: the storage names its columns bare.
fn unqualify(e: &Expr) -> Expr {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    e.clone()
        .transform(|e| match e {
            Expr::Column(c) if c.relation.is_some() => {
                Ok(Transformed::yes(Expr::Column(datafusion::common::Column::new_unqualified(c.name))))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| e.clone())
}

/// Whether `e` may run on rows the caller cannot see: it raises no error and computes no value
/// from any column, whatever the data. The allow-list (like PostgreSQL's leakproof functions):
/// `=`, `<>`, `<`, `<=`, `>`, `>=`, `IS [NOT] DISTINCT FROM` between a column and a literal;
/// `IN (literals)`; `BETWEEN literal AND literal`; `IS [NOT] NULL`, `IS [NOT] TRUE/FALSE`; a
/// bare boolean column; `NOT`, `AND`, `OR` of those. Every column must satisfy `unmasked`.
pub fn leakproof(e: &Expr, unmasked: &dyn Fn(&str) -> bool) -> bool {
    use datafusion::logical_expr::{Between, BinaryExpr, Operator};
    let column = |e: &Expr| matches!(e, Expr::Column(c) if unmasked(&c.name));
    let literal = |e: &Expr| matches!(e, Expr::Literal(..));
    match e {
        Expr::Column(_) => column(e),
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And | Operator::Or, right }) => {
            leakproof(left, unmasked) && leakproof(right, unmasked)
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            matches!(
                op,
                Operator::Eq
                    | Operator::NotEq
                    | Operator::Lt
                    | Operator::LtEq
                    | Operator::Gt
                    | Operator::GtEq
                    | Operator::IsDistinctFrom
                    | Operator::IsNotDistinctFrom
            ) && ((column(left) && literal(right)) || (literal(left) && column(right)))
        }
        Expr::InList(l) => column(&l.expr) && l.list.iter().all(literal),
        Expr::Between(Between { expr, low, high, .. }) => column(expr) && literal(low) && literal(high),
        Expr::IsNull(x)
        | Expr::IsNotNull(x)
        | Expr::IsTrue(x)
        | Expr::IsFalse(x)
        | Expr::IsNotTrue(x)
        | Expr::IsNotFalse(x)
        | Expr::IsUnknown(x)
        | Expr::IsNotUnknown(x) => column(x),
        Expr::Not(x) => leakproof(x, unmasked),
        _ => false,
    }
}

/// Applies a row filter and column masks to its input; lets nothing be pushed through it.
#[derive(Debug)]
pub struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
    row_filter: Option<Arc<dyn PhysicalExpr>>,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    source: String,
}

impl GuardExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        row_filter: Option<Arc<dyn PhysicalExpr>>,
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
        source: String,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        Self { input, row_filter, exprs, schema, properties, source }
    }
}

impl DisplayAs for GuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.source.is_empty() {
            write!(f, "GuardExec: product={}, ", self.source)?;
        } else {
            write!(f, "GuardExec: ")?;
        }
        write!(f, "row_filter={}, columns={}", self.row_filter.is_some(), self.exprs.len())
    }
}

fn guard_batch(
    b: RecordBatch,
    row_filter: Option<&Arc<dyn PhysicalExpr>>,
    exprs: &[Arc<dyn PhysicalExpr>],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let b = match row_filter {
        Some(f) => {
            let keep = f.evaluate(&b)?.into_array(b.num_rows())?;
            filter_record_batch(&b, keep.as_boolean())?
        }
        None => b,
    };
    let columns = exprs.iter().map(|e| e.evaluate(&b)?.into_array(b.num_rows())).collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
    )?)
}

impl ExecutionPlan for GuardExec {
    fn name(&self) -> &str {
        "GuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        for e in self.row_filter.iter().chain(self.exprs.iter()) {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("GuardExec has exactly one child".into()));
        }
        Ok(Arc::new(GuardExec::new(
            children.remove(0),
            self.row_filter.clone(),
            self.exprs.clone(),
            Arc::clone(&self.schema),
            self.source.clone(),
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (row_filter, exprs, schema) = (self.row_filter.clone(), self.exprs.clone(), Arc::clone(&self.schema));
        let out_schema = Arc::clone(&schema);
        let guarded = input.map(move |b| b.and_then(|b| guard_batch(b, row_filter.as_ref(), &exprs, &schema)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, guarded)))
    }
}

/// `plan` as `EXPLAIN` shows it to a caller: one line per operator, indented, each guard's
/// subtree (the storage scan: file paths, adapter details) and the row filter's predicate left
/// out, so the plan says where governance applies but not what it hides.
pub fn explain(plan: &Arc<dyn ExecutionPlan>) -> String {
    fn walk(plan: &Arc<dyn ExecutionPlan>, depth: usize, out: &mut String) {
        let indent = "  ".repeat(depth);
        let line = datafusion::physical_plan::displayable(plan.as_ref()).one_line().to_string();
        out.push_str(&indent);
        out.push_str(line.trim_end());
        out.push('\n');
        if (plan.as_ref() as &dyn Any).downcast_ref::<GuardExec>().is_some() {
            out.push_str(&indent);
            out.push_str("  GovernedScan: the product's storage (not shown)\n");
            return;
        }
        for child in plan.children() {
            walk(child, depth + 1, out);
        }
    }
    let mut out = String::new();
    walk(plan, 0, &mut out);
    out
}

/// The columns `plan` reads from each named governed table (`<domain>/<product>`, in plan
/// order), as its guards serve them: what an audit record says was read.
pub fn columns_read(plan: &Arc<dyn ExecutionPlan>) -> Vec<(String, Vec<String>)> {
    fn walk(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(String, Vec<String>)>) {
        if let Some(g) = (plan.as_ref() as &dyn Any).downcast_ref::<GuardExec>() {
            if g.source.is_empty() {
                return;
            }
            let at = match out.iter().position(|(s, _)| *s == g.source) {
                Some(i) => i,
                None => {
                    out.push((g.source.clone(), Vec::new()));
                    out.len() - 1
                }
            };
            for f in g.schema.fields() {
                if !out[at].1.contains(f.name()) {
                    out[at].1.push(f.name().clone());
                }
            }
            return;
        }
        for c in plan.children() {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

/// Fails unless every leaf of `plan` that reads data is beneath a [`GuardExec`].
pub fn check_guarded(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    if (plan.as_ref() as &dyn Any).downcast_ref::<GuardExec>().is_some() {
        return Ok(());
    }
    let children = plan.children();
    if children.is_empty() {
        return match plan.name() {
            "EmptyExec" | "PlaceholderRowExec" => Ok(()),
            other => Err(DataFusionError::Internal(format!(
                "governance guard missing above {other}; the request was refused"
            ))),
        };
    }
    children.into_iter().try_for_each(check_guarded)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use datafusion::common::ScalarValue;
    use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::logical_expr::{cast, col, lit};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::prelude::SessionContext;

    use super::*;
    use std::ops::Not;

    fn unmasked(name: &str) -> bool {
        name != "email"
    }

    #[test]
    fn only_leakproof_predicates_of_unmasked_columns_go_below() {
        let ok = [
            col("amount").gt(lit(100i64)),
            lit(5i64).lt_eq(col("amount")),
            col("region").in_list(vec![lit("EMEA"), lit("AMER")], true),
            col("amount").between(lit(1i64), lit(9i64)),
            col("region").is_null().or(col("amount").not_eq(lit(3i64))).not(),
            col("flag"),
            col("flag").is_not_true(),
        ];
        for e in &ok {
            assert!(leakproof(e, &unmasked), "{e}");
        }
        let refused = [
            // a masked column, even in a harmless comparison
            col("email").eq(lit("a@b.c")),
            col("amount").gt(lit(1i64)).and(col("email").is_null()),
            // arithmetic and casts can raise errors on hidden rows
            (lit(1i64) / col("amount")).gt(lit(0i64)),
            cast(col("region"), DataType::Int64).eq(lit(1i64)),
            // functions compute values; column against column; LIKE
            datafusion::functions::expr_fn::length(col("region")).gt(lit(3i64)),
            col("amount").eq(col("other")),
            col("region").like(lit("E%")),
            col("region").in_list(vec![col("other")], false),
        ];
        for e in &refused {
            assert!(!leakproof(e, &unmasked), "{e}");
        }
    }

    /// A hive-partitioned Parquet folder: `region=<r>/part-<n>.parquet`, two files per region
    /// whose `amount` ranges do not overlap (0..50 and 1000..1050).
    fn partitioned(dir: &std::path::Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Int64, false),
            Field::new("email", DataType::Utf8, true),
        ]));
        for region in ["EMEA", "AMER", "APAC"] {
            let folder = dir.join(format!("region={region}"));
            std::fs::create_dir_all(&folder).unwrap();
            for (n, base) in [(0, 0i64), (1, 1000)] {
                let amounts: Vec<i64> = (base..base + 50).collect();
                let batch = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from_iter_values(0..50)),
                        Arc::new(Int64Array::from(amounts)),
                        Arc::new(StringArray::from_iter_values((0..50).map(|i| format!("u{i}@x.org")))),
                    ],
                )
                .unwrap();
                let file = std::fs::File::create(folder.join(format!("part-{n}.parquet"))).unwrap();
                let mut w = ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
                w.write(&batch).unwrap();
                w.close().unwrap();
            }
        }
    }

    /// Files the plan's storage scans open, and the rows they produced once run.
    fn scanned(plan: &Arc<dyn ExecutionPlan>) -> (usize, usize) {
        if let Some(ds) = (plan.as_ref() as &dyn Any).downcast_ref::<DataSourceExec>() {
            let files = ds
                .data_source()
                .downcast_ref::<FileScanConfig>()
                .map(|c| c.file_groups.iter().map(|g| g.len()).sum())
                .unwrap_or(0);
            let rows = ds.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
            return (files, rows);
        }
        plan.children().into_iter().map(scanned).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    async fn governed(dir: &std::path::Path, ctx: &SessionContext, masked: bool) -> GovernedTable {
        let url = ListingTableUrl::parse(format!("{}/", dir.display())).unwrap();
        let options =
            ListingOptions::new(Arc::new(datafusion::datasource::file_format::parquet::ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(vec![("region".to_string(), DataType::Utf8)]);
        let config =
            ListingTableConfig::new(url).with_listing_options(options).infer_schema(&ctx.state()).await.unwrap();
        let inner: Arc<dyn TableProvider> = Arc::new(ListingTable::try_new(config).unwrap());
        let contract = inner.schema();
        let columns = ["id", "amount", "email", "region"]
            .into_iter()
            .map(|n| OutputColumn {
                name: n.into(),
                expr: if masked && n == "email" { lit(ScalarValue::Utf8(None)) } else { col(n) },
            })
            .collect();
        GovernedTable::try_new(inner, columns, Some(col("region").eq(lit("EMEA"))), &contract).unwrap()
    }

    async fn run(ctx: &SessionContext, sql: &str) -> (Vec<RecordBatch>, usize, usize) {
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        check_guarded(&plan).unwrap();
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let (files, rows) = scanned(&plan);
        (batches, files, rows)
    }

    #[tokio::test]
    async fn the_row_filter_prunes_partitions_and_leakproof_filters_prune_files() {
        let dir = tempfile::tempdir().unwrap();
        partitioned(dir.path());
        let ctx = SessionContext::new();
        ctx.register_table("orders", Arc::new(governed(dir.path(), &ctx, true).await)).unwrap();

        // The row filter reaches the listing: only EMEA's two files are opened.
        let (batches, files, rows) = run(&ctx, "SELECT * FROM orders").await;
        assert_eq!((files, rows), (2, 100));
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 100);

        // A leakproof caller filter on an unmasked column prunes with Parquet statistics.
        let (batches, files, rows) = run(&ctx, "SELECT id FROM orders WHERE amount >= 1000").await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
        assert_eq!(files, 2, "both EMEA files are listed");
        assert_eq!(rows, 50, "the file of small amounts is skipped by its statistics");

        // A caller asking for another region's partition gets nothing, and reads nothing more.
        let (batches, files, _) = run(&ctx, "SELECT id FROM orders WHERE region = 'AMER'").await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
        assert!(files <= 2, "{files}");

        // A filter on a masked column stays above the guard: the storage reads every EMEA row
        // and the filter sees only the masked (null) values.
        let (batches, _, rows) = run(&ctx, "SELECT id FROM orders WHERE email = 'u1@x.org'").await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
        assert_eq!(rows, 100);

        // An expression that could raise an error (arithmetic) stays above the guard as well.
        let (batches, _, rows) = run(&ctx, "SELECT id FROM orders WHERE 1000 / (amount + 1) > 0").await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
        assert_eq!(rows, 100);
    }

    #[tokio::test]
    async fn with_pushdown_off_every_file_is_read_and_the_guard_still_filters() {
        let dir = tempfile::tempdir().unwrap();
        partitioned(dir.path());
        let config = datafusion::prelude::SessionConfig::new().with_extension(Arc::new(StoragePushdownOff));
        let ctx = SessionContext::new_with_config(config);
        ctx.register_table("orders", Arc::new(governed(dir.path(), &ctx, true).await)).unwrap();
        let (batches, files, rows) = run(&ctx, "SELECT id FROM orders WHERE amount >= 1000").await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
        assert_eq!((files, rows), (6, 300), "every region, every row");
    }
}
