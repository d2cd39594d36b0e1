//! Flight actions: `describe`, `health`, `reload` (each answering one JSON document), and
//! Flight's own `CancelFlightInfo` and `RenewFlightEndpoint` (protobuf), decoded here and
//! answered by the access core.

use std::sync::Arc;

use arrow_flight::{Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, RenewFlightEndpointRequest};
use prost::Message;
use serde_json::Value;

use crate::access::{AccessCore, Call, Error, Result};
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
    (
        "quality",
        "The port's quality rules with their last outcomes, and its measured freshness against the SLA. Body: as for `describe`.",
    ),
    (
        "lineage",
        "The product's upstream and downstream products (those the caller may discover). Body: as for `describe`.",
    ),
    (
        "check-quality",
        "Runs the contract quality rules now (operators) and returns the outcomes. Body: `<domain>/<product>`, or empty for every product.",
    ),
];

/// Runs `action` for `p`; returns the result body.
pub async fn run(core: &Arc<AccessCore>, p: &Principal, action: &Action) -> Result<Vec<u8>> {
    let value = match action.r#type.as_str() {
        "describe" => core.describe_live(p, target(&action.body)?).await?,
        "health" => core.health(p).await,
        // Parts of `describe`, for clients that want only them.
        "quality" => {
            let d = core.describe_live(p, target(&action.body)?).await?;
            serde_json::json!({
                "product": d["product"]["address"],
                "port": d["port"],
                "quality": d["contract"]["quality"],
                "freshness": d["contract"]["freshness"],
            })
        }
        "lineage" => {
            let d = core.describe(p, target(&action.body)?)?;
            serde_json::json!({"product": d["product"]["address"], "lineage": d["lineage"]})
        }
        "reload" => serde_json::to_value(core.reload_as(p).await?).map_err(|e| Error::Internal(e.to_string()))?,
        "check-quality" => {
            let target = if action.body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                let (domain, name, _) = target(&action.body)?;
                Some((domain, name))
            };
            serde_json::to_value(core.check_quality_as(p, target).await?).map_err(|e| Error::Internal(e.to_string()))?
        }
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

/// Flight's own actions, answered beside meshgate's.
pub(crate) const FLIGHT_ACTIONS: &[&str] = &["CancelFlightInfo", "RenewFlightEndpoint"];

/// Runs one of [`FLIGHT_ACTIONS`]; returns the encoded result.
///
/// `CancelFlightInfo`: nothing runs between `GetFlightInfo` and `DoGet` (each `DoGet` plans and
/// executes its own read, and stops when its client cancels the call), so cancelling is
/// checking that the tickets are the caller's and answering `CANCELLED`.
/// `RenewFlightEndpoint`: the same read, signed again with a fresh expiry, for the same caller.
pub(crate) fn flight(core: &AccessCore, call: &Call, action: &Action) -> Result<Vec<u8>> {
    let bad = |what: &str, e: prost::DecodeError| Error::BadAction(format!("the body is not a {what}: {e}"));
    match action.r#type.as_str() {
        "CancelFlightInfo" => {
            let request =
                CancelFlightInfoRequest::decode(action.body.as_ref()).map_err(|e| bad("CancelFlightInfoRequest", e))?;
            let info = request
                .info
                .ok_or_else(|| Error::BadAction("CancelFlightInfo needs the FlightInfo to cancel".into()))?;
            for endpoint in &info.endpoint {
                if let Some(t) = &endpoint.ticket
                    && !super::sql::is_metadata_ticket(&t.ticket)
                {
                    core.check_ticket(call, &t.ticket)?;
                }
            }
            Ok(CancelFlightInfoResult { status: CancelStatus::Cancelled as i32 }.encode_to_vec())
        }
        "RenewFlightEndpoint" => {
            let request = RenewFlightEndpointRequest::decode(action.body.as_ref())
                .map_err(|e| bad("RenewFlightEndpointRequest", e))?;
            let endpoint =
                request.endpoint.ok_or_else(|| Error::BadAction("RenewFlightEndpoint needs the endpoint".into()))?;
            let ticket = endpoint.ticket.clone().unwrap_or_default();
            let issued = core.renew_ticket(call, &ticket.ticket)?;
            Ok(super::service::endpoint(endpoint, issued).encode_to_vec())
        }
        other => Err(Error::BadAction(format!("no Flight action `{}`", crate::text::clip(other)))),
    }
}

/// Parses a `describe` body into (domain, product, port).
fn target(body: &[u8]) -> Result<(String, String, Option<String>)> {
    let bad = || {
        Error::BadAction(
            "this action needs a product: send `{\"product\": \"<domain>/<product>\"}` or the text `<domain>/<product>`"
                .into(),
        )
    };
    let text = std::str::from_utf8(body).map_err(|_| bad())?.trim();
    let (address, port) = if text.starts_with('{') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::BadAction(format!("the action body is not valid JSON: {e}")))?;
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
