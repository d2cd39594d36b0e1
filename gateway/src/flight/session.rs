//! Flight SQL sessions with no state on any replica: the options travel in a signed cookie.
//!
//! `SetSessionOptions` answers with a `set-cookie` header holding the session's options signed
//! with the ticket key and bound to the caller; clients with cookie support (the ADBC driver
//! with `adbc.flight.sql.rpc.with_cookie_middleware`, JDBC) send it back on every call, so any
//! replica sharing the key reads the same session. Options:
//!
//! | name         | type   | effect                                                    |
//! |--------------|--------|-----------------------------------------------------------|
//! | `catalog`    | string | the current catalog; only `mesh` exists                   |
//! | `schema`     | string | schema (domain) unqualified table names resolve in        |
//! | `view_types` | bool   | stream `Utf8View`/`BinaryView` as they are (else classic) |

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meshgate_proto::flight::session_option_value::OptionValue;
use meshgate_proto::flight::set_session_options_result::{Error as OptionError, ErrorValue};
use meshgate_proto::flight::{
    CloseSessionResult, GetSessionOptionsResult, SessionOptionValue, SetSessionOptionsRequest, SetSessionOptionsResult,
    close_session_result,
};
use meshgate_proto::v1::SessionClaims;
use prost::Message;
use tonic::metadata::MetadataMap;

use crate::access::{AccessCore, CATALOG, Call, Error, Result, SqlRead};

/// Name of the session cookie.
pub(crate) const COOKIE: &str = "meshgate_session";

/// The session actions this front answers.
pub(crate) const ACTIONS: &[&str] = &["SetSessionOptions", "GetSessionOptions", "CloseSession"];

/// A caller's session: what its statements inherit.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Session {
    claims: SessionClaims,
}

impl Session {
    /// The session the request's cookie carries, or a fresh one. A cookie that does not verify
    /// or belongs to another caller is refused rather than ignored: statements would silently
    /// resolve names differently.
    pub(crate) fn from_metadata(core: &AccessCore, call: &Call, metadata: &MetadataMap) -> Result<Self> {
        let Some(value) = cookie(metadata) else { return Ok(Self::default()) };
        let bad = || {
            Error::BadDescriptor(format!(
                "the `{COOKIE}` cookie is not a session of this gateway for you; drop it (reconnect) and set the session options again"
            ))
        };
        let bytes = URL_SAFE_NO_PAD.decode(value).map_err(|_| bad())?;
        let claims = core.open_session(&bytes).map_err(|_| bad())?;
        if claims.subject != call.principal.subject || claims.issuer != call.principal.issuer {
            return Err(bad());
        }
        Ok(Self { claims })
    }

    /// A statement `query` as this session plans it.
    pub(crate) fn statement(&self, query: String, server_view_types: bool) -> SqlRead {
        SqlRead {
            default_schema: Some(self.claims.schema.clone()).filter(|s| !s.is_empty()),
            view_types: self.claims.view_types.unwrap_or(server_view_types),
            ..SqlRead::new(query)
        }
    }
}

/// The value of the session cookie among the request's `cookie` headers.
fn cookie(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// What a session action answers: its result body and the `set-cookie` header to send, if any.
pub(crate) struct Reply {
    /// The encoded result message.
    pub(crate) body: Vec<u8>,
    /// The `set-cookie` header value.
    pub(crate) set_cookie: Option<String>,
}

/// Runs the session action `name` for the caller in `session`.
pub(crate) fn action(
    core: &AccessCore,
    call: &Call,
    session: Session,
    name: &str,
    body: &[u8],
    server_view_types: bool,
) -> Result<Reply> {
    match name {
        "SetSessionOptions" => {
            let request = SetSessionOptionsRequest::decode(body)
                .map_err(|e| Error::BadAction(format!("the body is not a SetSessionOptionsRequest: {e}")))?;
            let (claims, errors) = set(core, call, session.claims, request);
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly", URL_SAFE_NO_PAD.encode(core.seal_session(&claims)));
            Ok(Reply { body: SetSessionOptionsResult { errors }.encode_to_vec(), set_cookie: Some(cookie) })
        }
        "GetSessionOptions" => {
            let mut options = HashMap::new();
            options.insert("catalog".to_string(), string(CATALOG));
            if !session.claims.schema.is_empty() {
                options.insert("schema".to_string(), string(&session.claims.schema));
            }
            let view_types = session.claims.view_types.unwrap_or(server_view_types);
            options.insert(
                "view_types".into(),
                SessionOptionValue { option_value: Some(OptionValue::BoolValue(view_types)) },
            );
            Ok(Reply { body: GetSessionOptionsResult { session_options: options }.encode_to_vec(), set_cookie: None })
        }
        "CloseSession" => Ok(Reply {
            body: CloseSessionResult { status: close_session_result::Status::Closed as i32 }.encode_to_vec(),
            set_cookie: Some(format!("{COOKIE}=; Path=/; Max-Age=0")),
        }),
        other => Err(Error::BadAction(format!("no session action `{}`", crate::text::clip(other)))),
    }
}

fn string(s: &str) -> SessionOptionValue {
    SessionOptionValue { option_value: Some(OptionValue::StringValue(s.to_string())) }
}

/// Applies each requested option to `claims`; returns the new claims and the options refused.
fn set(
    core: &AccessCore,
    call: &Call,
    mut claims: SessionClaims,
    request: SetSessionOptionsRequest,
) -> (SessionClaims, HashMap<String, OptionError>) {
    claims.subject = call.principal.subject.clone();
    claims.issuer = call.principal.issuer.clone();
    let mut errors = HashMap::new();
    let refuse = |e: ErrorValue| OptionError { value: e as i32 };
    for (name, value) in request.session_options {
        let outcome = match (name.as_str(), value.option_value) {
            ("catalog", None) => Ok(()),
            ("catalog", Some(OptionValue::StringValue(c))) if c == CATALOG => Ok(()),
            ("catalog", Some(_)) => Err(ErrorValue::InvalidValue),
            ("schema", None) => {
                claims.schema.clear();
                Ok(())
            }
            ("schema", Some(OptionValue::StringValue(s))) if core.schemas(&call.principal).contains(&s) => {
                claims.schema = s;
                Ok(())
            }
            ("schema", Some(_)) => Err(ErrorValue::InvalidValue),
            ("view_types", None) => {
                claims.view_types = None;
                Ok(())
            }
            ("view_types", Some(OptionValue::BoolValue(b))) => {
                claims.view_types = Some(b);
                Ok(())
            }
            ("view_types", Some(OptionValue::StringValue(s))) if matches!(s.as_str(), "true" | "false") => {
                claims.view_types = Some(s == "true");
                Ok(())
            }
            ("view_types", Some(_)) => Err(ErrorValue::InvalidValue),
            _ => Err(ErrorValue::InvalidName),
        };
        if let Err(e) = outcome {
            tracing::info!(option = %crate::text::clip(&name), error = ?e, "session option refused");
            errors.insert(name, refuse(e));
        }
    }
    (claims, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = MetadataMap::new();
        h.append("cookie", "a=1; meshgate_session=abc_-; b=2".parse().unwrap());
        assert_eq!(cookie(&h), Some("abc_-"));
        let mut two = MetadataMap::new();
        two.append("cookie", "a=1".parse().unwrap());
        two.append("cookie", "meshgate_session=xyz".parse().unwrap());
        assert_eq!(cookie(&two), Some("xyz"));
        assert_eq!(cookie(&MetadataMap::new()), None);
    }
}
