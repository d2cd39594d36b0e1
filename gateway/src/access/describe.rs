//! `describe` and `health` as JSON documents: what a product is (manifest, contract, ports)
//! and whether its storage answers, for one caller.

use std::sync::Arc;

use meshgate_adapters::Health;
use serde_json::{Value, json};

use super::error::Result;
use super::snapshot::MeshSnapshot;
use crate::catalog::{self, Catalog, Port, Product, Visibility};

/// What the caller may read of one port, as far as describing it goes.
#[derive(Debug, Clone, Default)]
pub(crate) struct PortAccess {
    /// The caller may read the port.
    pub(crate) readable: bool,
    /// `(column, strategy)` of every column masked for the caller.
    pub(crate) masks: Vec<(String, String)>,
    /// A row filter narrows what the caller reads.
    pub(crate) filtered: bool,
}

impl PortAccess {
    /// Whether the caller may see the port's exact row count: not when a row filter or a mask
    /// would hide rows or values from it (a count is then information the rows would not give).
    fn shows_counts(&self) -> bool {
        self.readable && !self.filtered && self.masks.is_empty()
    }
}

/// The caller's [`PortAccess`] to a port.
pub(crate) type AccessOf<'a> = &'a (dyn Fn(&Product, &Arc<Port>) -> PortAccess + Sync);

/// The product `domain/name` (and its port `port`, or the default one) as the caller sees it.
pub(crate) fn describe(
    snapshot: &MeshSnapshot,
    (domain, name, port): (String, String, Option<String>),
    visible: Visibility<'_>,
    access: AccessOf<'_>,
) -> Result<Value> {
    let snapshot = &snapshot.catalog;
    match snapshot.resolve_visible(&domain, &name, port.as_deref(), visible) {
        Ok((p, port)) => {
            let problems = snapshot.entries.get(&(domain, name)).map(|e| e.problems.clone()).unwrap_or_default();
            Ok(json!({
                "product": product_json(&p, access),
                "lineage": lineage(snapshot, &p, visible),
                "port": port.name,
                "contract": contract_json(&port, &access(&p, &port)),
                "status": if problems.is_empty() { "available" } else { "serving_last_good" },
                "problems": problems,
            }))
        }
        // A broken product is described with its problems, so its owners can see why.
        Err(catalog::Error::Unavailable { product, .. }) => {
            let entry = snapshot.entries.get(&(domain.clone(), name));
            Ok(json!({
                "product": {"address": product, "domain": domain},
                "status": "unavailable",
                "problems": entry.map(|e| e.problems.clone()).unwrap_or_default(),
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// Upstream (the products whose contracts `p`'s input ports name) and downstream (the products
/// whose input ports name one of `p`'s contracts). A product the caller may not discover is not
/// named: an upstream entry then keeps only the contract id its manifest already shows.
fn lineage(catalog: &catalog::CatalogState, p: &Product, visible: Visibility<'_>) -> Value {
    let shown = |x: &Product| visible(&x.domain, &x.name, Some(x));
    let upstream: Vec<Value> = p
        .inputs
        .iter()
        .map(|id| {
            let found = catalog
                .products()
                .find_map(|x| x.ports.iter().find(|o| &o.contract.id == id).map(|o| (x, o)))
                .filter(|(x, _)| shown(x));
            match found {
                Some((x, o)) => json!({"contract_id": id, "product": x.address(), "port": o.name}),
                None => json!({"contract_id": id, "product": null}),
            }
        })
        .collect();
    let mine: Vec<&str> = p.ports.iter().map(|o| o.contract.id.as_str()).collect();
    let downstream: Vec<Value> = catalog
        .products()
        .filter(|x| x.inputs.iter().any(|i| mine.contains(&i.as_str())) && shown(x))
        .map(|x| {
            let via: Vec<&String> = x.inputs.iter().filter(|i| mine.contains(&i.as_str())).collect();
            json!({"product": x.address(), "contract_ids": via})
        })
        .collect();
    json!({"upstream": upstream, "downstream": downstream})
}

fn product_json(p: &Product, access: AccessOf<'_>) -> Value {
    json!({
        "address": p.address(),
        "domain": p.domain,
        "name": p.name,
        "id": p.id,
        "title": p.title,
        "status": p.status,
        "owner": p.owner,
        "tags": p.tags,
        "description": p.description,
        "default_port": p.ports[p.default_port].name,
        "ports": p.ports.iter().map(|x| json!({
            "name": x.name,
            "version": x.version,
            "contract_id": x.contract.id,
            "contract_version": x.contract.version,
            // -1, as in FlightInfo: not known to this caller.
            "total_records": if access(p, x).shows_counts() { x.total_records } else { -1 },
        })).collect::<Vec<_>>(),
        "odps": public_document(&p.document),
    })
}

fn contract_json(port: &Port, access: &PortAccess) -> Value {
    let columns: Vec<Value> = port
        .contract
        .properties
        .iter()
        .map(|c| {
            let field = port.schema.field_with_name(&c.name).ok();
            json!({
                "name": c.name,
                "arrow_type": field.map(|f| f.data_type().to_string()),
                "nullable": field.map(|f| f.is_nullable()),
                "logicalType": c.logical_type,
                "physicalType": c.physical_type,
                "required": c.required,
                "primaryKey": c.primary_key,
                "classification": c.classification,
                // How the caller receives the column: masked (with the strategy) or in clear.
                "masked": access.masks.iter().find(|(m, _)| *m == c.name).map(|(_, s)| s.clone()),
                "description": c.description,
            })
        })
        .collect();
    json!({
        "id": port.contract.id,
        "version": port.contract.version,
        "status": port.contract.status,
        "readable": access.readable,
        "row_filtered": access.filtered,
        "columns": columns,
        "odcs": public_document(&port.contract.document),
    })
}

/// A manifest without meshgate's own settings: they name storage locations, which are the
/// operators' business, not the consumers'.
fn public_document(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(props) = doc.get_mut("customProperties").and_then(Value::as_array_mut) {
        props.retain(|p| !p.get("property").and_then(Value::as_str).is_some_and(|s| s.starts_with("meshgate.")));
    }
    doc
}

/// Each port of `entry`'s product with its storage's health, probed at once.
async fn port_health(catalog: &Catalog, entry: &catalog::Entry) -> Vec<(String, Health)> {
    let ports = entry.product.iter().flat_map(|p| p.ports.iter());
    futures::future::join_all(ports.map(|port| async move { (port.name.clone(), port.health(catalog.state()).await) }))
        .await
}

/// What health says of one port's data beside its storage: the last quality check's status and
/// the freshness against the SLA (either failing makes the gateway `degraded`).
#[derive(Debug, Clone)]
pub(crate) struct PortTrust {
    /// `pass`, `fail`, or null before the first check.
    pub(crate) quality: Value,
    /// `fresh`, `stale` or `unknown`.
    pub(crate) freshness: Value,
    /// Whether this port degrades the gateway's status.
    pub(crate) degraded: bool,
    /// The in-memory copy's status, for accelerated ports (a failed refresh degrades).
    pub(crate) acceleration: Option<Value>,
}

/// `(domain, product, port)` → its [`PortTrust`].
pub(crate) type TrustOf = std::collections::HashMap<(String, String, String), PortTrust>;

/// Gateway and per-product health, each port's storage checked, for the products `visible` shows,
/// with each port's quality and freshness from `trust`.
pub(crate) async fn health(
    catalog: &Catalog,
    snapshot: &MeshSnapshot,
    visible: Visibility<'_>,
    trust: &TrustOf,
) -> Value {
    let mut products = Vec::new();
    let mut degraded = false;
    let shown: Vec<_> =
        snapshot.catalog.entries.iter().filter(|((d, n), e)| visible(d, n, e.product.as_deref())).collect();
    // Every store is probed at once (each probe cached and bounded), so one hung store costs
    // one timeout, not one per product.
    let answers = futures::future::join_all(shown.iter().map(|(_, e)| port_health(catalog, e))).await;
    for (((domain, name), entry), answer) in shown.into_iter().zip(answers) {
        let mut ports = Vec::new();
        for (port, h) in answer {
            degraded |= h != Health::Ok;
            let mut entry = json!({"port": port, "health": h});
            if let Some(t) = trust.get(&(domain.clone(), name.clone(), port)) {
                degraded |= t.degraded;
                entry["quality"] = t.quality.clone();
                entry["freshness"] = t.freshness.clone();
                if let Some(a) = &t.acceleration {
                    entry["acceleration"] = a.clone();
                }
            }
            ports.push(entry);
        }
        let status = match (&entry.product, entry.problems.is_empty()) {
            (Some(_), true) => "available",
            (Some(_), false) => "serving_last_good",
            (None, _) => "unavailable",
        };
        degraded |= status != "available";
        products.push(json!({
            "product": format!("{domain}/{name}"),
            "status": status,
            "problems": entry.problems,
            "ports": ports,
        }));
    }
    json!({
        "status": if degraded { "degraded" } else { "ok" },
        "generation": snapshot.generation,
        "products": products,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_not_published() {
        let doc = json!({"id": "x", "customProperties": [{"property": "meshgate.binding", "value": {"location": "/srv"}}, {"property": "team.slack", "value": "#x"}]});
        let out = public_document(&doc);
        assert_eq!(out["customProperties"].as_array().unwrap().len(), 1);
        assert!(!out.to_string().contains("/srv"));
    }
}
