//! The audit log as a product: `_governance/audit`, read through the same governed path as any
//! other product (the sample policies let only auditors discover or read it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use meshgate_adapters::Binding;
use meshgate_adapters::memory::MemoryBinding;

use crate::catalog::manifest::Property;
use crate::catalog::{Contract, Port, Product};

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn list(name: &str) -> Field {
    Field::new(name, DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true)
}

fn record(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

/// The Arrow schema of audit records.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, true),
        text("time"),
        text("kind"),
        text("rpc"),
        text("event_id"),
        text("request_id"),
        text("ticket_id"),
        text("replica"),
        record("client", vec![text("address"), text("user_agent")]),
        record("actor", vec![text("sub"), text("iss"), text("auth_method"), list("roles"), text("purpose")]),
        record(
            "resource",
            vec![
                text("domain"),
                text("product"),
                text("port"),
                text("contract_id"),
                text("contract_version"),
                list("columns"),
            ],
        ),
        record("decision", vec![text("effect"), list("policy_ids"), list("masks"), list("row_filters")]),
        record(
            "outcome",
            vec![
                text("status"),
                text("message"),
                Field::new("rows", DataType::Int64, true),
                Field::new("bytes", DataType::Int64, true),
                Field::new("duration_us", DataType::Int64, true),
            ],
        ),
        text("prev_hash"),
        text("hash"),
    ]))
}

/// The log file read as a table, whole, at each scan.
#[derive(Debug)]
pub struct AuditTable {
    path: PathBuf,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for AuditTable {
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
        let text = tokio::fs::read(&self.path).await.map_err(|e| {
            meshgate_adapters::Error::Unavailable(format!("the audit log cannot be read ({})", e.kind()))
                .into_datafusion()
        })?;
        // Only whole lines: the writer may be appending the last one right now.
        let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let reader = arrow::json::ReaderBuilder::new(Arc::clone(&self.schema))
            .build(&text[..end])
            .map_err(DataFusionError::from)?;
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(DataFusionError::from)?;
        MemTable::try_new(Arc::clone(&self.schema), vec![batches])?.scan(state, projection, filters, limit).await
    }
}

/// The product serving the log at `path`.
pub fn product(path: &Path) -> Product {
    let schema = schema();
    let properties: Vec<Property> = schema
        .fields()
        .iter()
        .map(|f| Property {
            name: f.name().clone(),
            logical_type: Some(
                match f.data_type() {
                    DataType::Int64 => "integer",
                    DataType::Float64 => "number",
                    DataType::Struct(_) => "object",
                    DataType::List(_) => "array",
                    _ => "string",
                }
                .into(),
            ),
            physical_type: None,
            required: false,
            primary_key: f.name() == "seq",
            classification: Some("restricted".into()),
            description: None,
        })
        .collect();
    let md = |k: &str, v: &str| (k.to_string(), v.to_string());
    let served = Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(HashMap::from([md("meshgate.classification", "restricted")])))
            .collect::<Vec<_>>(),
        HashMap::from([
            md("meshgate.product_id", "meshgate:governance:audit"),
            md("meshgate.port", "v1"),
            md("meshgate.contract_id", "meshgate:governance:audit:v1"),
            md("meshgate.contract_version", "1.0.0"),
            md("meshgate.status", "active"),
            md("meshgate.owner", "governance"),
        ]),
    ));
    let port = Port {
        name: "v1".into(),
        version: Some("1.0.0".into()),
        contract: Contract {
            id: "meshgate:governance:audit:v1".into(),
            version: "1.0.0".into(),
            status: "active".into(),
            properties,
            document: serde_json::json!({"kind": "DataContract", "id": "meshgate:governance:audit:v1", "version": "1.0.0"}),
        },
        binding: Binding::Memory(MemoryBinding { dataset: "_governance/audit".into() }),
        table: Arc::new(AuditTable { path: path.to_path_buf(), schema: Arc::clone(&schema) }),
        schema: served,
        total_records: -1,
        total_bytes: -1,
        product_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    Product {
        domain: "_governance".into(),
        name: "audit".into(),
        id: "meshgate:governance:audit".into(),
        title: "Gateway audit log".into(),
        status: "active".into(),
        description: "Every read, denial and authentication failure recorded by the gateway, hash-chained.".into(),
        owner: Some("governance".into()),
        tags: vec!["governance".into(), "audit".into()],
        // Who may read it is decided by the governance policies on the `_governance` domain.
        sensitivity: "confidential".into(),
        ports: vec![Arc::new(port)],
        default_port: 0,
        document: serde_json::json!({"kind": "DataProduct", "id": "meshgate:governance:audit"}),
    }
}
