//! The HTTP side port: probes, Prometheus metrics, and the catalog as a JSON API and as pages.
//!
//! ```text
//!  /healthz  /readyz          no authentication, reveal nothing about products
//!  /metrics                   OpenMetrics text (--metrics-auth: none | admin)
//!  /api/...                   JSON over the access core: products, usage, audit, session
//!  /, /products/.., /audit    server-rendered pages (templates in `http/templates`)
//!  /login, /logout            sign-in with the Flight credentials; the session is the gateway
//!                             token in an HTTP-only, SameSite=Strict cookie
//! ```
//!
//! It shares the gateway's process, authenticator and access core: a product the caller may not
//! discover does not exist here either, and every read of data (the audit log's pages) is an
//! ordinary governed read through [`AccessCore`], audited like a Flight read.
//!
//! - `session`: who is calling (bearer header or session cookie), sign-in and CSRF.
//! - `api`: the JSON API.
//! - `pages`: the web pages.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

use crate::access::AccessCore;
use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::metrics::{Live, Metrics};

mod api;
mod pages;
mod session;

/// Result with the HTTP port's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an HTTP request failed. Mapped to a status by [`Error::status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No valid credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credentials were refused.
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    /// The access core refused or failed, as Flight clients are told (code and message).
    #[error("{}", .0.message())]
    Core(tonic::Status),
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// A form did not come from this site's own page.
    #[error("the form did not come from this site's page (missing or stale CSRF token): reload the page and try again")]
    Csrf,
    /// The caller may not use this endpoint.
    #[error("{0}")]
    Forbidden(String),
}

impl From<crate::access::Error> for Error {
    fn from(e: crate::access::Error) -> Self {
        Self::Core(tonic::Status::from(e))
    }
}

/// The HTTP status of a gRPC code: the table every core error goes through.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::InvalidArgument | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted => StatusCode::CONFLICT,
        C::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        C::Unknown | C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Auth(e) => http_status(tonic::Status::from(e.clone()).code()),
            Self::Core(s) => http_status(s.code()),
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Csrf | Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "HTTP request failed");
        } else {
            tracing::info!(error = %self, "HTTP request refused");
        }
        (status, axum::Json(json!({"error": self.to_string(), "status": status.as_u16()}))).into_response()
    }
}

/// Who may scrape `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAuth {
    /// Anyone who reaches the port (keep the port private).
    None,
    /// A bearer token of a principal allowed to operate the gateway (the `admin` action).
    Admin,
}

/// What the handlers share.
pub(crate) struct HttpState {
    pub(crate) core: Arc<AccessCore>,
    pub(crate) auth: Option<Arc<Authenticator>>,
    pub(crate) audit: Option<Arc<AuditLog>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) metrics_auth: MetricsAuth,
    /// Cookies carry `Secure` (the port is behind TLS, at a proxy).
    pub(crate) secure_cookies: bool,
    /// Where Flight clients connect, for the snippets (`grpc://host:port`).
    pub(crate) flight_url: String,
    pub(crate) pages: pages::Pages,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").field("flight_url", &self.flight_url).finish_non_exhaustive()
    }
}

/// Settings of the HTTP port.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Who may scrape `/metrics`.
    pub metrics_auth: MetricsAuth,
    /// Mark cookies `Secure` (set when a TLS-terminating proxy fronts the port).
    pub secure_cookies: bool,
    /// The Flight address shown in snippets.
    pub flight_url: String,
}

/// The running HTTP port.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServer {
    /// Serves on `listener`.
    pub fn start(
        listener: TcpListener,
        core: Arc<AccessCore>,
        auth: Option<Arc<Authenticator>>,
        audit: Option<Arc<AuditLog>>,
        metrics: Arc<Metrics>,
        options: HttpOptions,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(HttpState {
            core,
            auth,
            audit,
            metrics,
            metrics_auth: options.metrics_auth,
            secure_cookies: options.secure_cookies,
            flight_url: options.flight_url,
            pages: pages::Pages::new(),
        });
        let app = router(state);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        Ok(Self { addr, shutdown: Some(tx), task })
    }

    /// The address the port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits (briefly) for requests in progress.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/session", post(session::api_login).delete(session::api_logout).get(session::api_me))
        .route("/api/products", get(api::products))
        .route("/api/products/{domain}/{name}", get(api::product))
        .route("/api/products/{domain}/{name}/usage", get(api::usage))
        .route("/api/health", get(api::health))
        .route("/api/audit", get(api::audit))
        .route("/", get(pages::products))
        .route("/products/{domain}/{name}", get(pages::product))
        .route("/audit", get(pages::audit))
        .route("/login", get(pages::login).post(session::page_login))
        .route("/logout", post(session::page_logout))
        .route("/static/style.css", get(pages::style))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every answer carries: no framing, no sniffing, referrers only within the site, scripts and styles from
/// this origin only.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, axum::http::HeaderValue::from_static(v));
    };
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    // `no-referrer` would make browsers send `Origin: null` on form posts, which the CSRF check refuses.
    set(h, "referrer-policy", "same-origin");
    set(
        h,
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    );
    if !h.contains_key("cache-control") {
        set(h, "cache-control", "no-store");
    }
    response
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the catalog is loaded, the audit log is writable, and storage answers for at least
/// one port. One domain's store being down leaves the gateway ready (it serves every other
/// domain); the answer names no product either way.
async fn readyz(axum::extract::State(state): axum::extract::State<Arc<HttpState>>) -> Response {
    let snapshot = state.core.snapshot();
    let mut failing = Vec::new();
    if snapshot.generation == 0 {
        failing.push("the catalog is not loaded");
    }
    if let Some(log) = &state.audit
        && log.check().is_err()
    {
        failing.push("the audit log is not writable");
    }
    let ports = state.core.port_health().await;
    if !ports.is_empty() && ports.iter().all(|(_, _, _, up)| !up) {
        failing.push("no storage answers");
    }
    if failing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", failing.join("; "))).into_response()
    }
}

/// Prometheus metrics, values read at scrape time included.
async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<HttpState>>,
    connect: axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    if state.metrics_auth == MetricsAuth::Admin {
        let p = session::principal(&state, &headers, connect.0).await?;
        if !state.core.snapshot().may_admin(&p) {
            return Err(Error::Forbidden("scraping metrics takes a principal allowed to operate the gateway".into()));
        }
    }
    let (ok, failed, refused) = state.core.reload_stats();
    let mut caches = vec![("grants", state.core.grant_cache_stats())];
    if let Some(a) = &state.auth {
        caches.push(("tokens", a.cache_stats()));
    }
    let live = Live {
        audit_queue: state.audit.as_ref().map_or(0, |a| a.queue_depth() as i64),
        audit_dropped: state.audit.as_ref().map_or(0, |a| a.auth_failures_suppressed()),
        caches: caches.into_iter().map(|(n, (h, m))| (n, h, m)).collect(),
        reloads: (ok, failed),
        generation: state.core.snapshot().generation,
        ports: state.core.port_health().await,
        refused,
        memory: state.core.memory_pool(),
        lineage: state.core.lineage_counts(),
        accelerated: state.core.accelerations(),
    };
    let body = state.metrics.render(live);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_an_http_status() {
        use tonic::Code as C;
        let table = [
            (C::InvalidArgument, 400),
            (C::Unauthenticated, 401),
            (C::PermissionDenied, 403),
            (C::NotFound, 404),
            (C::FailedPrecondition, 412),
            (C::ResourceExhausted, 429),
            (C::Internal, 500),
            (C::Unimplemented, 501),
            (C::Unavailable, 503),
            (C::DeadlineExceeded, 504),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn own_errors_map_to_their_status() {
        assert_eq!(Error::Unauthenticated("x".into()).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Error::Csrf.status(), StatusCode::FORBIDDEN);
        assert_eq!(Error::BadRequest("x".into()).status(), StatusCode::BAD_REQUEST);
        assert_eq!(Error::Auth(crate::auth::Error::Missing).status(), StatusCode::UNAUTHORIZED);
    }
}
