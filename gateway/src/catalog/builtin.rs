//! Products the gateway itself serves in the `_governance` domain (the audit log, quality
//! outcomes): one shape for all of them, governed like any other product.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use meshgate_adapters::Binding;
use meshgate_adapters::memory::MemoryBinding;

use super::RESERVED_DOMAIN;
use super::manifest::Property;
use super::model::{Contract, Port, Product};

/// What describes one of the gateway's own products.
#[derive(Debug)]
pub struct Builtin {
    /// Product name in `_governance`.
    pub name: &'static str,
    /// Human title.
    pub title: &'static str,
    /// What it holds.
    pub description: &'static str,
    /// Tags.
    pub tags: &'static [&'static str],
    /// Its rows.
    pub table: Arc<dyn TableProvider>,
    /// The column that identifies a row, if one does.
    pub key: Option<&'static str>,
}

/// The product serving `b`: port `v1`, every column classified `restricted`, owned by
/// governance, sensitivity `confidential` (who may read it is the policies' decision).
pub fn product(b: Builtin) -> Product {
    let schema = b.table.schema();
    let properties: Vec<Property> = schema
        .fields()
        .iter()
        .map(|f| Property {
            name: f.name().clone(),
            logical_type: Some(
                match f.data_type() {
                    DataType::Int64 => "integer",
                    DataType::Float64 => "number",
                    DataType::Boolean => "boolean",
                    DataType::Struct(_) => "object",
                    DataType::List(_) => "array",
                    _ => "string",
                }
                .into(),
            ),
            physical_type: None,
            required: false,
            primary_key: Some(f.name().as_str()) == b.key,
            classification: Some("restricted".into()),
            description: None,
            relationships: vec![],
        })
        .collect();
    let product_id = format!("meshgate:governance:{}", b.name);
    let contract_id = format!("{product_id}:v1");
    let md = |k: &str, v: &str| (k.to_string(), v.to_string());
    let served: SchemaRef = Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_metadata(HashMap::from([md("meshgate.classification", "restricted")])))
            .collect::<Vec<_>>(),
        HashMap::from([
            md("meshgate.product_id", &product_id),
            md("meshgate.port", "v1"),
            md("meshgate.contract_id", &contract_id),
            md("meshgate.contract_version", "1.0.0"),
            md("meshgate.status", "active"),
            md("meshgate.owner", "governance"),
        ]),
    ));
    let port = Port {
        name: "v1".into(),
        version: Some("1.0.0".into()),
        contract: Contract {
            id: contract_id.clone(),
            version: "1.0.0".into(),
            status: "active".into(),
            properties,
            document: serde_json::json!({"kind": "DataContract", "id": contract_id, "version": "1.0.0"}),
            rules: vec![],
            age_limit: None,
        },
        binding: Binding::Memory(MemoryBinding { dataset: format!("{RESERVED_DOMAIN}/{}", b.name) }),
        table: b.table,
        schema: served,
        total_records: -1,
        total_bytes: -1,
        // Its health is that of the gateway part that writes it.
        storage: Arc::new(meshgate_adapters::InMemoryStorage),
        versions: None,
        acceleration: None,
        health: Default::default(),
    };
    Product {
        domain: RESERVED_DOMAIN.into(),
        name: b.name.into(),
        id: product_id.clone(),
        title: b.title.into(),
        status: "active".into(),
        description: b.description.into(),
        owner: Some("governance".into()),
        tags: b.tags.iter().map(|t| t.to_string()).collect(),
        sensitivity: "confidential".into(),
        inputs: vec![],
        ports: vec![Arc::new(port)],
        default_port: 0,
        document: serde_json::json!({"kind": "DataProduct", "id": product_id}),
        fingerprint: [0; 32],
    }
}
