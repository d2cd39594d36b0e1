//! Flight actions: `describe`, `health`, `reload`.
//!
//! Each returns one result whose body is a JSON document.

use std::sync::Arc;

use meshgate_adapters::Health;
use serde_json::{Value, json};

use super::error::{Error, Result};
use crate::catalog::{self, Catalog, Port, Product, Visibility};

/// Actions offered, with their descriptions (as `ListActions` returns them).
pub const ACTIONS: &[(&str, &str)] = &[
    (
        "describe",
        "Product and contract as JSON. Body: `{\"product\": \"<domain>/<product>\", \"port\": \"<port>\"}` or the text `<domain>/<product>[/<port>]`.",
    ),
    ("health", "Gateway and per-product health as JSON (each port's storage is checked). Body: empty."),
    (
        "reload",
        "Reloads the mesh folder now; the last good state of each product stays if its new manifests are refused. Body: empty.",
    ),
];

/// Whether the caller may see a port's exact row count: not when a row filter or a mask would
/// hide rows or values from it (a count is then information the rows would not give).
pub type ShowsCounts<'a> = &'a (dyn Fn(&Product, &Arc<Port>) -> bool + Sync);

/// Runs action `name` with `body`; returns the result body.
/// `visible` says which products the caller may learn of; `may_admin` whether it may reload;
/// `counts` whether it may see a port's row count.
pub async fn run(
    catalog: &Arc<Catalog>,
    name: &str,
    body: &[u8],
    visible: Visibility<'_>,
    counts: ShowsCounts<'_>,
    may_admin: bool,
) -> Result<Vec<u8>> {
    let value = match name {
        "describe" => describe(catalog, body, visible, counts)?,
        "health" => health(catalog, visible).await,
        "reload" if may_admin => {
            serde_json::to_value(catalog.reload().await?).map_err(|e| Error::Internal(e.to_string()))?
        }
        "reload" => return Err(Error::Denied { product: "the gateway (reload)".into(), policy_ids: vec![] }),
        other => {
            let known: Vec<&str> = ACTIONS.iter().map(|(n, _)| *n).collect();
            return Err(Error::BadAction(format!(
                "no action `{}`; actions: {}",
                crate::text::clip(other),
                known.join(", ")
            )));
        }
    };
    serde_json::to_vec_pretty(&value).map_err(|e| Error::Internal(e.to_string()))
}

/// Parses a `describe` body into (domain, product, port).
fn target(body: &[u8]) -> Result<(String, String, Option<String>)> {
    let bad = || {
        Error::BadAction(
            "describe needs a product: send `{\"product\": \"<domain>/<product>\"}` or the text `<domain>/<product>`"
                .into(),
        )
    };
    let text = std::str::from_utf8(body).map_err(|_| bad())?.trim();
    let (address, port) = if text.starts_with('{') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::BadAction(format!("describe body is not valid JSON: {e}")))?;
        let product = v.get("product").and_then(Value::as_str).ok_or_else(bad)?.to_string();
        (product, v.get("port").and_then(Value::as_str).map(str::to_string))
    } else {
        (text.to_string(), None)
    };
    let parts: Vec<&str> = address.split('/').collect();
    match parts.as_slice() {
        [d, p] => Ok((d.to_string(), p.to_string(), port)),
        [d, p, x] if port.is_none() => Ok((d.to_string(), p.to_string(), Some(x.to_string()))),
        _ => Err(bad()),
    }
}

fn describe(catalog: &Catalog, body: &[u8], visible: Visibility<'_>, counts: ShowsCounts<'_>) -> Result<Value> {
    let (domain, name, port) = target(body)?;
    let snapshot = catalog.snapshot();
    match snapshot.resolve_visible(&domain, &name, port.as_deref(), visible) {
        Ok((p, port)) => {
            let problems = snapshot.entries.get(&(domain, name)).map(|e| e.problems.clone()).unwrap_or_default();
            Ok(json!({
                "product": product_json(&p, counts),
                "port": port.name,
                "contract": contract_json(&port),
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

fn product_json(p: &Product, counts: ShowsCounts<'_>) -> Value {
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
            "total_records": if counts(p, x) { x.total_records } else { -1 },
        })).collect::<Vec<_>>(),
        "odps": public_document(&p.document),
    })
}

fn contract_json(port: &Port) -> Value {
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
                "description": c.description,
            })
        })
        .collect();
    json!({
        "id": port.contract.id,
        "version": port.contract.version,
        "status": port.contract.status,
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

async fn health(catalog: &Catalog, visible: Visibility<'_>) -> Value {
    let snapshot = catalog.snapshot();
    let mut products = Vec::new();
    let mut degraded = false;
    for ((domain, name), entry) in &snapshot.entries {
        if !visible(domain, name, entry.product.as_deref()) {
            continue;
        }
        let mut ports = Vec::new();
        if let Some(p) = &entry.product {
            for port in &p.ports {
                let ctx = catalog.open_context(&port.product_dir);
                let h = catalog.registry().health(&port.binding, &port.table, &ctx).await;
                degraded |= h != Health::Ok;
                ports.push(json!({"port": port.name, "health": h}));
            }
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
    fn describe_targets() {
        assert_eq!(target(b"sales/orders").unwrap(), ("sales".into(), "orders".into(), None));
        assert_eq!(target(br#"{"product":"sales/orders","port":"v2"}"#).unwrap().2.as_deref(), Some("v2"));
        assert!(target(b"sales").is_err());
        assert!(target(br#"{"x":1}"#).is_err());
    }

    #[test]
    fn settings_are_not_published() {
        let doc = json!({"id": "x", "customProperties": [{"property": "meshgate.binding", "value": {"location": "/srv"}}, {"property": "team.slack", "value": "#x"}]});
        let out = public_document(&doc);
        assert_eq!(out["customProperties"].as_array().unwrap().len(), 1);
        assert!(!out.to_string().contains("/srv"));
    }
}
