//! Flight actions: `describe`, `health`, `reload`, decoded here and answered by the access core.
//!
//! Each returns one result whose body is a JSON document.

use std::sync::Arc;

use arrow_flight::Action;
use serde_json::Value;

use crate::access::{AccessCore, Error, Result};
use crate::auth::Principal;

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

/// Runs `action` for `p`; returns the result body.
pub async fn run(core: &Arc<AccessCore>, p: &Principal, action: &Action) -> Result<Vec<u8>> {
    let value = match action.r#type.as_str() {
        "describe" => core.describe(p, target(&action.body)?)?,
        "health" => core.health(p).await,
        "reload" => serde_json::to_value(core.reload_as(p).await?).map_err(|e| Error::Internal(e.to_string()))?,
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
}
