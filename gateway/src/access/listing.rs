//! What one principal sees of the catalog `mesh`, for SQL metadata calls and the `_mesh`
//! system tables.
//!
//! - [`TableEntry`]: every table the principal can name (product default ports, named ports,
//!   system tables) with its schema as the principal would read it, its primary key (the
//!   contract's `primaryKey` columns) and its foreign keys (the contract's `relationships` whose
//!   target product the principal may discover).
//! - The schema `_mesh` holds `products`, `ports` and `columns`: the mesh's own description,
//!   limited to the products the principal may discover, and queryable with SQL like any table.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::col;

use super::mesh::{CATALOG, PORT_SEPARATOR, PrincipalView};
use crate::catalog::sqltype::sql_type;
use crate::catalog::{Port, Product};
use crate::governance::{GovernedTable, OutputColumn};

/// The schema of the system tables.
pub const SYSTEM_SCHEMA: &str = "_mesh";

/// What a table is, in SQL metadata terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A product port.
    Table,
    /// One of the `_mesh` tables.
    System,
}

impl TableKind {
    /// The table type SQL clients see.
    pub fn name(self) -> &'static str {
        match self {
            Self::Table => "TABLE",
            Self::System => "SYSTEM TABLE",
        }
    }

    /// Every table type, in the order clients list them.
    pub const ALL: [TableKind; 2] = [Self::System, Self::Table];
}

/// A foreign key: a column of this table referring to another table's column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The referring column, in this table.
    pub column: String,
    /// Schema (domain) of the referenced table.
    pub pk_schema: String,
    /// The referenced table (its product's default port).
    pub pk_table: String,
    /// The referenced column.
    pub pk_column: String,
}

/// One table of the catalog `mesh` as a principal sees it.
#[derive(Debug, Clone)]
pub struct TableEntry {
    /// Schema: the domain, or [`SYSTEM_SCHEMA`].
    pub schema_name: String,
    /// Table name: the product, or `<product>__<port>`.
    pub name: String,
    /// Product or system table.
    pub kind: TableKind,
    /// Columns as the principal reads them (masked columns keep their name).
    pub schema: SchemaRef,
    /// Primary key columns, in column order.
    pub primary_key: Vec<String>,
    /// Foreign keys, in column order.
    pub foreign_keys: Vec<ForeignKey>,
    /// Whether the principal may read the table (it may discover every listed one).
    pub readable: bool,
}

impl PrincipalView {
    /// Every table the principal can name: for each product it may discover, its default port
    /// and each port by name, then the system tables.
    pub(crate) fn tables(&self) -> Vec<TableEntry> {
        let mut out = Vec::new();
        for product in self.visible_products() {
            let default = &product.ports[product.default_port];
            out.push(self.entry(product, default, product.name.clone()));
            for port in &product.ports {
                out.push(self.entry(product, port, format!("{}{PORT_SEPARATOR}{}", product.name, port.name)));
            }
        }
        for (name, schema) in system_schemas() {
            out.push(TableEntry {
                schema_name: SYSTEM_SCHEMA.into(),
                name: name.into(),
                kind: TableKind::System,
                schema,
                primary_key: vec![],
                foreign_keys: vec![],
                readable: true,
            });
        }
        out
    }

    fn entry(&self, product: &Arc<Product>, port: &Arc<Port>, name: String) -> TableEntry {
        let grant = self.decisions().grant(self.snapshot(), self.principal(), product, port);
        let table = match &grant {
            Ok(Some(g)) => g.table.as_ref().map(|t| t.schema()),
            Ok(None) => Some(Arc::clone(&port.schema)),
            Err(_) => None,
        };
        let props = &port.contract.properties;
        let foreign_keys = props
            .iter()
            .flat_map(|p| p.relationships.iter().map(move |r| (p, r)))
            .filter_map(|(p, r)| {
                let t = r.target((&product.domain, &product.name))?;
                let referenced = self.visible_products().find(|x| x.domain == t.domain && x.name == t.product)?;
                let default = &referenced.ports[referenced.default_port];
                let (pk_port, pk_table) = match t.port.as_deref() {
                    None => (default, t.product.clone()),
                    Some(name) if name == default.name => (default, t.product.clone()),
                    Some(name) => (
                        referenced.ports.iter().find(|x| x.name == name)?,
                        format!("{}{}{name}", t.product, super::PORT_SEPARATOR),
                    ),
                };
                pk_port.schema.field_with_name(&t.column).ok()?;
                Some(ForeignKey { column: p.name.clone(), pk_schema: t.domain, pk_table, pk_column: t.column })
            })
            .collect();
        TableEntry {
            schema_name: product.domain.clone(),
            name,
            kind: TableKind::Table,
            readable: table.is_some(),
            schema: table.unwrap_or_else(|| Arc::clone(&port.schema)),
            primary_key: props.iter().filter(|p| p.primary_key).map(|p| p.name.clone()).collect(),
            foreign_keys,
        }
    }

    /// The rows of system table `name`, for the products the principal may discover.
    fn system_batch(&self, name: &str) -> Option<Result<RecordBatch, DataFusionError>> {
        let schema = system_schemas().into_iter().find(|(n, _)| *n == name)?.1;
        let products: Vec<&Arc<Product>> = self.visible_products().collect();
        let text = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let columns: Vec<ArrayRef> = match name {
            "products" => {
                let tables = self.tables();
                let readable =
                    |p: &Product| tables.iter().any(|t| t.schema_name == p.domain && t.name == p.name && t.readable);
                vec![
                    text(products.iter().map(|p| Some(p.domain.clone())).collect()),
                    text(products.iter().map(|p| Some(p.name.clone())).collect()),
                    text(products.iter().map(|p| Some(p.title.clone())).collect()),
                    text(products.iter().map(|p| Some(p.status.clone())).collect()),
                    text(products.iter().map(|p| p.owner.clone()).collect()),
                    text(products.iter().map(|p| Some(p.description.clone())).collect()),
                    text(products.iter().map(|p| Some(p.tags.join(","))).collect()),
                    text(products.iter().map(|p| Some(p.ports[p.default_port].name.clone())).collect()),
                    Arc::new(BooleanArray::from(products.iter().map(|p| readable(p)).collect::<Vec<_>>())),
                ]
            }
            "ports" => {
                let rows: Vec<(&Arc<Product>, &Arc<Port>)> =
                    products.iter().flat_map(|p| p.ports.iter().map(move |port| (*p, port))).collect();
                vec![
                    text(rows.iter().map(|(p, _)| Some(p.domain.clone())).collect()),
                    text(rows.iter().map(|(p, _)| Some(p.name.clone())).collect()),
                    text(rows.iter().map(|(_, port)| Some(port.name.clone())).collect()),
                    text(rows.iter().map(|(_, port)| port.version.clone()).collect()),
                    text(
                        rows.iter()
                            .map(|(p, port)| {
                                Some(format!("{CATALOG}.{}.\"{}{PORT_SEPARATOR}{}\"", p.domain, p.name, port.name))
                            })
                            .collect(),
                    ),
                    text(rows.iter().map(|(_, port)| Some(port.contract.id.clone())).collect()),
                    text(rows.iter().map(|(_, port)| Some(port.contract.version.clone())).collect()),
                    text(rows.iter().map(|(_, port)| Some(port.contract.status.clone())).collect()),
                    text(
                        rows.iter()
                            .map(|(_, port)| {
                                port.contract
                                    .document
                                    .get("slaProperties")
                                    .filter(|v| !v.is_null())
                                    .map(|v| v.to_string())
                            })
                            .collect(),
                    ),
                    Arc::new(Int64Array::from(
                        rows.iter().map(|(_, port)| Some(port.total_records).filter(|n| *n >= 0)).collect::<Vec<_>>(),
                    )),
                ]
            }
            "columns" => {
                let mut rows = Vec::new();
                for p in &products {
                    for port in &p.ports {
                        for (i, prop) in port.contract.properties.iter().enumerate() {
                            let dt = port.schema.field_with_name(&prop.name).map(|f| f.data_type().clone()).ok();
                            rows.push((*p, port, i, prop, dt));
                        }
                    }
                }
                vec![
                    text(rows.iter().map(|r| Some(r.0.domain.clone())).collect()),
                    text(rows.iter().map(|r| Some(r.0.name.clone())).collect()),
                    text(rows.iter().map(|r| Some(r.1.name.clone())).collect()),
                    text(rows.iter().map(|r| Some(r.3.name.clone())).collect()),
                    Arc::new(Int32Array::from(rows.iter().map(|r| r.2 as i32 + 1).collect::<Vec<_>>())),
                    text(rows.iter().map(|r| r.4.as_ref().map(|dt| sql_type(dt).name.to_string())).collect()),
                    Arc::new(BooleanArray::from(rows.iter().map(|r| r.3.primary_key).collect::<Vec<_>>())),
                    Arc::new(BooleanArray::from(rows.iter().map(|r| r.3.required).collect::<Vec<_>>())),
                    text(rows.iter().map(|r| r.3.classification.clone()).collect()),
                    text(rows.iter().map(|r| r.3.description.clone()).collect()),
                    text(
                        rows.iter()
                            .map(|r| {
                                let to: Vec<&str> = r.3.relationships.iter().map(|x| x.to.as_str()).collect();
                                (!to.is_empty()).then(|| to.join(","))
                            })
                            .collect(),
                    ),
                ]
            }
            _ => return None,
        };
        Some(RecordBatch::try_new(schema, columns).map_err(DataFusionError::from))
    }
}

/// The system tables and their schemas.
fn system_schemas() -> Vec<(&'static str, SchemaRef)> {
    let text = |n: &str, nullable: bool| Field::new(n, DataType::Utf8, nullable);
    let flag = |n: &str| Field::new(n, DataType::Boolean, false);
    vec![
        (
            "products",
            Arc::new(Schema::new(vec![
                text("domain", false),
                text("product", false),
                text("title", false),
                text("status", false),
                text("owner", true),
                text("description", false),
                text("tags", false),
                text("default_port", false),
                flag("readable"),
            ])),
        ),
        (
            "ports",
            Arc::new(Schema::new(vec![
                text("domain", false),
                text("product", false),
                text("port", false),
                text("version", true),
                text("table_name", false),
                text("contract_id", false),
                text("contract_version", false),
                text("contract_status", false),
                text("sla", true),
                Field::new("total_records", DataType::Int64, true),
            ])),
        ),
        (
            "columns",
            Arc::new(Schema::new(vec![
                text("domain", false),
                text("product", false),
                text("port", false),
                text("column_name", false),
                Field::new("ordinal_position", DataType::Int32, false),
                text("data_type", true),
                flag("primary_key"),
                flag("required"),
                text("classification", true),
                text("description", true),
                text("references", true),
            ])),
        ),
    ]
}

/// The schema `_mesh` for one principal.
#[derive(Debug)]
pub(crate) struct SystemSchema(pub(crate) Arc<PrincipalView>);

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        system_schemas().into_iter().map(|(n, _)| n.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(batch) = self.0.system_batch(name) else { return Ok(None) };
        // Rows are already limited to what the principal may discover.
        Ok(Some(computed_table(batch?)?))
    }

    fn table_exist(&self, name: &str) -> bool {
        system_schemas().iter().any(|(n, _)| *n == name)
    }
}

/// A table of rows the core computed for the caller (system tables, `EXPLAIN` output), behind
/// an identity guard so every plan's leaves stay under one, as the executor checks.
pub(crate) fn computed_table(batch: RecordBatch) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let schema = batch.schema();
    let memory = Arc::new(MemTable::try_new(Arc::clone(&schema), vec![vec![batch]])?);
    let columns =
        schema.fields().iter().map(|f| OutputColumn { name: f.name().clone(), expr: col(f.name()) }).collect();
    Ok(Arc::new(GovernedTable::try_new(memory, columns, None, &schema)?))
}
