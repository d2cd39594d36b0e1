//! The two manifest files of a product, as written by domain teams.
//!
//! - `product.odps.yaml`: Open Data Product Standard v1.0.0 (`kind: DataProduct`).
//! - `<port>.odcs.yaml`: Open Data Contract Standard v3.1.0 (`kind: DataContract`), one per
//!   output port.
//!
//! Standard fields meshgate does not use are accepted and kept (they show up in `describe`).
//! meshgate's own settings live in `customProperties` entries whose `property` starts with
//! `meshgate.`; an unknown one of those is an error, so typos do not pass silently.

use serde::Deserialize;
use serde_yaml::Value;

/// `customProperties` entries meshgate understands, per file kind.
pub(crate) const PRODUCT_PROPERTIES: &[&str] = &["meshgate.defaultPort", "meshgate.sensitivity"];
/// See [`PRODUCT_PROPERTIES`].
pub(crate) const CONTRACT_PROPERTIES: &[&str] = &["meshgate.binding", super::accel::PROPERTY];

/// An ODPS v1 data product (the fields meshgate reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductManifest {
    /// Standard version, `v1.0.0`.
    pub api_version: String,
    /// Always `DataProduct`.
    pub kind: String,
    /// Stable identifier of the product.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: Option<String>,
    /// Owning domain; must match the folder the product is in.
    #[serde(default)]
    pub domain: Option<String>,
    /// `proposed`, `draft`, `active`, `deprecated` or `retired`.
    pub status: String,
    /// Owning team (`name`, `members`, ...).
    #[serde(default)]
    pub team: Option<Value>,
    /// Text, or ODPS's `{purpose, limitations, usage}` object.
    #[serde(default)]
    pub description: Option<Value>,
    /// Free tags, used by `ListFlights` criteria `tag:x`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Input ports: the contracts (of other products, or of sources outside the mesh) the
    /// product is made from; its upstream lineage.
    #[serde(default)]
    pub input_ports: Vec<InputPort>,
    /// Output ports; each names the contract that describes it.
    #[serde(default)]
    pub output_ports: Vec<OutputPort>,
    /// `{property, value}` entries; meshgate's own start with `meshgate.`.
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// An ODPS output port.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputPort {
    /// Port name; its contract is in `<name>.odcs.yaml` beside the product file.
    pub name: String,
    /// Port version, addressable as the third path element.
    #[serde(default)]
    pub version: Option<String>,
    /// `id` of the contract describing the port.
    pub contract_id: String,
    /// Text.
    #[serde(default)]
    pub description: Option<Value>,
}

/// An ODPS input port: a contract the product consumes.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputPort {
    /// Port name.
    pub name: String,
    /// `id` of the consumed contract (an output port's `contractId` when it is in the mesh).
    pub contract_id: String,
}

/// A `customProperties` entry (both standards use this shape).
#[derive(Debug, Clone, Deserialize)]
pub struct CustomProperty {
    /// Name; meshgate's start with `meshgate.`.
    pub property: String,
    /// Any YAML value.
    #[serde(default)]
    pub value: Value,
}

/// An ODCS v3.1 data contract (the fields meshgate reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContractManifest {
    /// Standard version, `v3.1.0` (any `v3.x`).
    pub api_version: String,
    /// Always `DataContract`.
    pub kind: String,
    /// Contract identifier, referenced by the port's `contractId`.
    pub id: String,
    /// Contract version, carried in every ticket.
    pub version: String,
    /// `proposed`, `draft`, `active`, `deprecated` or `retired`.
    pub status: String,
    /// Exactly one schema object: the table the port serves.
    #[serde(default)]
    pub schema: Vec<SchemaObject>,
    /// Service levels (`latency`, `frequency`, ...); the age limit is measured (`quality::sla`).
    #[serde(default)]
    pub sla_properties: Vec<Value>,
    /// `{property, value}` entries; `meshgate.binding` says where the data is.
    #[serde(default)]
    pub custom_properties: Vec<CustomProperty>,
}

/// An ODCS schema object (a table).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaObject {
    /// Table name.
    pub name: String,
    /// Columns.
    #[serde(default)]
    pub properties: Vec<Property>,
}

/// An ODCS property (a column).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Property {
    /// Column name in the data.
    pub name: String,
    /// ODCS logical type: string, integer, number, boolean, date, timestamp, time, array, object.
    #[serde(default)]
    pub logical_type: Option<String>,
    /// Storage type as the producer names it (informational).
    #[serde(default)]
    pub physical_type: Option<String>,
    /// Whether the column must have a value.
    #[serde(default)]
    pub required: bool,
    /// Whether the column is (part of) the primary key.
    #[serde(default)]
    pub primary_key: bool,
    /// Sensitivity: e.g. `public`, `internal`, `confidential`, `pii`, `restricted`.
    #[serde(default)]
    pub classification: Option<String>,
    /// Text.
    #[serde(default)]
    pub description: Option<String>,
    /// Keys of other products this column refers to.
    #[serde(default)]
    pub relationships: Vec<Relationship>,
}

/// An ODCS property relationship: this column refers to a column of another product.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    /// Kind of relationship; meshgate reads `foreignKey` (the default).
    #[serde(default = "foreign_key", rename = "type")]
    pub kind: String,
    /// The referenced column in ODCS notation: `<table>.<column>` in the same contract, or
    /// `<contract file>#/schema/<table>/properties/<column>` with the file relative to this
    /// contract's folder (`../../sales/orders/v1.odcs.yaml#/schema/orders/properties/order_id`).
    pub to: String,
}

fn foreign_key() -> String {
    "foreignKey".into()
}

/// The column a relationship refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Domain of the referenced product.
    pub domain: String,
    /// Referenced product.
    pub product: String,
    /// Referenced port (its contract file's name); `None` for this contract's own port.
    pub port: Option<String>,
    /// Referenced column.
    pub column: String,
}

impl Relationship {
    /// The referenced column, resolved from the contract of `(domain, product)`; `None` when
    /// `to` is not a reference to a contract of the mesh.
    pub fn target(&self, (domain, product): (&str, &str)) -> Option<Target> {
        let here =
            |column: &str| Target { domain: domain.into(), product: product.into(), port: None, column: column.into() };
        let Some((file, pointer)) = self.to.split_once('#') else {
            if let Some(column) = pointer_column(&self.to) {
                return Some(here(column));
            }
            // Shorthand `<table>.<column>`: this contract's one table.
            return match self.to.split('.').collect::<Vec<_>>().as_slice() {
                [t, c] if !t.is_empty() && !c.is_empty() => Some(here(c)),
                _ => None,
            };
        };
        let column = pointer_column(pointer)?;
        // Resolve the file against `<domain>/<product>/` without touching the file system:
        // it must name `<domain>/<product>/<port>.odcs.yaml` inside the mesh.
        let mut parts: Vec<&str> = vec![domain, product];
        for seg in file.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                s => parts.push(s),
            }
        }
        match parts.as_slice() {
            [d, p, f] => {
                let port = f.strip_suffix(".odcs.yaml")?;
                Some(Target {
                    domain: d.to_string(),
                    product: p.to_string(),
                    port: Some(port.into()),
                    column: column.into(),
                })
            }
            _ => None,
        }
    }
}

/// The column of `/schema/<table>/properties/<column>` (leading `/` optional).
fn pointer_column(pointer: &str) -> Option<&str> {
    match pointer.trim_start_matches('/').split('/').collect::<Vec<_>>().as_slice() {
        ["schema", t, "properties", c] if !t.is_empty() && !c.is_empty() => Some(c),
        _ => None,
    }
}

/// Renders an ODPS/ODCS description (text or `{purpose, usage, limitations}`) as one text.
pub(crate) fn description_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Mapping(m)) => ["purpose", "usage", "limitations"]
            .iter()
            .filter_map(|k| m.get(*k).and_then(Value::as_str).map(|s| s.trim().to_string()))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(other) => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
    }
}

/// The team's name from an ODPS/ODCS `team` value (a mapping with `name`, or a text).
pub(crate) fn team_name(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Mapping(m) => m.get("name").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(s: &str) -> Relationship {
        Relationship { kind: "foreignKey".into(), to: s.into() }
    }

    #[test]
    fn references_resolve_from_the_contracts_folder() {
        let here = ("logistics", "shipments");
        let t = to("../../sales/orders/v1.odcs.yaml#/schema/orders/properties/order_id").target(here).unwrap();
        assert_eq!(
            t,
            Target {
                domain: "sales".into(),
                product: "orders".into(),
                port: Some("v1".into()),
                column: "order_id".into()
            }
        );
        let t = to("../warehouses/v1.odcs.yaml#/schema/warehouses/properties/warehouse_id").target(here).unwrap();
        assert_eq!((t.domain.as_str(), t.product.as_str()), ("logistics", "warehouses"));
        assert_eq!(to("shipments.order_id").target(here).unwrap().column, "order_id");
        assert_eq!(to("/schema/shipments/properties/carrier").target(here).unwrap().product, "shipments");
        // Outside the mesh, not a contract, or not a column: no target.
        assert_eq!(to("../../../etc/v1.odcs.yaml#/schema/x/properties/y").target(here), None);
        assert_eq!(to("../../sales/orders/product.odps.yaml#/schema/x/properties/y").target(here), None);
        assert_eq!(to("../../sales/orders/v1.odcs.yaml#/schema/orders").target(here), None);
        assert_eq!(to("sales.orders.order_id").target(here), None);
    }
}
