//! The tower layer that authenticates every call before any handler runs.
//!
//! It reads `authorization: Bearer <JWT>`, verifies it, and puts the [`Principal`] into the
//! request's extensions, where handlers find it. Without valid credentials it answers
//! `UNAUTHENTICATED` itself, so no handler (and no metadata) is reached. The one exception is
//! `Handshake` carrying Basic credentials: the handshake handler checks those and answers with
//! a gateway token. Without an `authorization` header, a client certificate verified by the TLS
//! handshake (`--tls-client-ca`) is the identity.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Authenticator, Error, Principal};

/// gRPC path of the Flight handshake.
pub const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// What the layer does with calls.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Verify credentials.
    Required(Arc<Authenticator>),
    /// Every caller is the anonymous principal (`--insecure-no-auth`, loopback only).
    Off,
}

/// Reports authentication failures (to the audit log).
pub type FailureSink = Arc<dyn Fn(&http::request::Parts, &Error) + Send + Sync>;

/// Layer adding authentication to a service.
#[derive(Clone)]
pub struct AuthLayer {
    mode: AuthMode,
    on_failure: Option<FailureSink>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// A layer in `mode`; `on_failure` hears of every refused call.
    pub fn new(mode: AuthMode, on_failure: Option<FailureSink>) -> Self {
        Self { mode, on_failure }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, mode: self.mode.clone(), on_failure: self.on_failure.clone() }
    }
}

/// The service [`AuthLayer`] wraps around the gateway.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    mode: AuthMode,
    on_failure: Option<FailureSink>,
}

impl<S> std::fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// Credentials found in a call's headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// `Bearer <token>`.
    Bearer(&'a str),
    /// `Basic <base64(user:password)>`.
    Basic(&'a str),
    /// No `authorization` header.
    None,
}

/// Reads the `authorization` header.
pub fn credentials(headers: &http::HeaderMap) -> Result<Credentials<'_>, Error> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(Credentials::None);
    };
    let value = value.to_str().map_err(|_| Error::BadHeader)?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(Error::BadHeader)?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Ok(Credentials::Bearer(rest.trim())),
        "basic" => Ok(Credentials::Basic(rest.trim())),
        _ => Err(Error::BadHeader),
    }
}

async fn authenticate(mode: &AuthMode, parts: &http::request::Parts) -> Result<Option<Principal>, Error> {
    let auth = match mode {
        AuthMode::Off => return Ok(Some(Principal::anonymous())),
        AuthMode::Required(a) => a,
    };
    let certificate = parts
        .extensions
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .and_then(|certs| certs.first().map(|c| c.to_vec()));
    match credentials(&parts.headers)? {
        Credentials::Bearer(t) => {
            let mut p = auth.verify_bearer(t).await?.as_ref().clone();
            p.bearer = Some(t.to_string().into());
            Ok(Some(p))
        }
        // A client certificate verified by the TLS handshake is an identity.
        Credentials::None if certificate.is_some() => {
            Ok(Some(auth.verify_certificate(&certificate.unwrap_or_default())?))
        }
        // The handshake handler checks Basic credentials itself.
        Credentials::Basic(_) | Credentials::None if parts.uri.path() == HANDSHAKE_PATH => Ok(None),
        Credentials::Basic(_) => Err(Error::BadHeader),
        Credentials::None => Err(Error::Missing),
    }
}

impl<S, B, RB> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone is ready-checked by `poll_ready` on `self.inner`; swap so the ready one runs.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (mode, on_failure) = (self.mode.clone(), self.on_failure.clone());
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            match authenticate(&mode, &parts).await {
                Ok(principal) => {
                    if let Some(p) = principal {
                        // On the call's span (`metrics::rpc`), for traces.
                        tracing::Span::current().set_attribute("enduser.id", p.subject.clone());
                        parts.extensions.insert(p);
                    }
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(e) => {
                    tracing::info!(path = parts.uri.path(), error = %e, "authentication failed");
                    if let Some(sink) = &on_failure {
                        sink(&parts, &e);
                    }
                    Ok(tonic::Status::from(e).into_http::<RB>())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn reads_credentials() {
        assert_eq!(credentials(&headers("Bearer abc")).unwrap(), Credentials::Bearer("abc"));
        assert_eq!(credentials(&headers("basic eA==")).unwrap(), Credentials::Basic("eA=="));
        assert_eq!(credentials(&http::HeaderMap::new()).unwrap(), Credentials::None);
        assert_eq!(credentials(&headers("Token abc")), Err(Error::BadHeader));
        assert_eq!(credentials(&headers("Bearer")), Err(Error::BadHeader));
    }
}
