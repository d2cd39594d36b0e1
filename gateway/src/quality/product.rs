//! Quality outcomes as a product: `_governance/quality`, every outcome kept (newest
//! [`KEEP`](super::KEEP)), read through the same governed path as any product.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::Quality;
use crate::catalog::Product;
use crate::catalog::builtin::{self, Builtin};

/// The product's name in `_governance`.
pub const NAME: &str = "quality";

/// The Arrow schema of outcomes (the fields of [`Outcome`](super::Outcome)).
pub fn schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("time"),
        text("domain"),
        text("product"),
        text("port"),
        text("contract_version"),
        text("rule"),
        text("metric"),
        text("column"),
        text("dimension"),
        text("severity"),
        text("expect"),
        Field::new("value", DataType::Float64, true),
        Field::new("passed", DataType::Boolean, true),
        text("error"),
        text("data_version"),
        text("trigger"),
    ]))
}

/// The outcomes kept in `quality`, as a table read at scan time.
#[derive(Debug)]
struct QualityTable {
    quality: Arc<Quality>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for QualityTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&self.schema)).build_decoder()?;
        decoder.serialize(&self.quality.outcomes())?;
        let batches: Vec<_> = decoder.flush()?.into_iter().collect();
        MemTable::try_new(Arc::clone(&self.schema), vec![batches])?.scan(state, projection, filters, limit).await
    }
}

/// The product serving `quality`'s outcomes.
pub fn product(quality: Arc<Quality>) -> Product {
    builtin::product(Builtin {
        name: NAME,
        title: "Data quality outcomes",
        description: "Every quality rule of every contract, each time it was checked: value, pass or fail, data version.",
        tags: &["governance", "quality"],
        table: Arc::new(QualityTable { quality, schema: schema() }),
        key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::{Outcome, Trigger};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn outcomes_are_rows() {
        let q = Arc::new(Quality::default());
        let p = product(Arc::clone(&q));
        let o = Outcome {
            time: "t".into(),
            domain: "sales".into(),
            product: "orders".into(),
            port: "v1".into(),
            contract_version: "1.0.0".into(),
            rule: "r".into(),
            metric: "rowCount".into(),
            column: None,
            dimension: Some("completeness".into()),
            severity: None,
            expect: Some("mustBeGreaterThan 0".into()),
            value: Some(3.0),
            passed: true,
            error: None,
            data_version: Some("abc".into()),
            trigger: Trigger::Schedule,
        };
        q.recent.lock().unwrap().push_back(o);
        let ctx = SessionContext::new();
        ctx.register_table("q", Arc::clone(&p.ports[0].table)).unwrap();
        let rows = ctx.sql("SELECT rule, value, passed, trigger FROM q").await.unwrap().collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&rows).unwrap().to_string();
        assert!(text.contains("| r    | 3.0   | true   | schedule |"), "{text}");
        assert_eq!(p.address(), "_governance/quality");
    }
}
