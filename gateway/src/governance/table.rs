//! The governed table: the one enforcement point.
//!
//! Every product a request reads is wrapped in a [`GovernedTable`]. Its scan puts a
//! [`GuardExec`] directly on top of the adapter's scan: the guard applies the row filter first,
//! then the masks, and only its output is visible to anything the caller wrote. The table
//! accepts no filter pushdown, and the guard lets no filter pass through it, so a caller's
//! predicate runs only on rows the caller may see and only on masked values: an expression that
//! errors on a hidden row never meets one. [`check_guarded`] walks the final physical plan and
//! fails closed if any scan lost its guard.

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

    /// No caller filter goes below the guard.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.columns.len()).collect());
        let inner_schema = self.inner.schema();
        let mut needed = std::collections::BTreeSet::new();
        for e in wanted.iter().map(|i| &self.columns[*i].expr).chain(self.row_filter.iter()) {
            for c in e.column_refs() {
                needed.insert(inner_schema.index_of(&c.name)?);
            }
        }
        let needed: Vec<usize> = needed.into_iter().collect();
        // A limit may only go below the guard when the guard drops no rows.
        let inner_limit = if self.row_filter.is_none() { limit } else { None };
        let input = self.inner.scan(state, Some(&needed), &[], inner_limit).await?;
        let input_schema = DFSchema::try_from(input.schema())?;
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
