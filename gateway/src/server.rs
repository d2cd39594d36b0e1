//! Binding, serving and shutting down.
//!
//! [`Gateway::bind`] binds first and returns a value with [`Gateway::local_addr`], so tests bind
//! port 0 and read the address back. Shutdown stops accepting connections, lets running streams
//! finish for the configured grace period, then cuts them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use meshgate_adapters::memory::MemoryAdapter;
use meshgate_adapters::stores::RemoteListings;
use meshgate_adapters::{AdapterRegistry, ObjectStores};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::access::{AccessCore, CoreOptions};
use crate::audit::{AuditLog, AuditOptions};
use crate::auth::layer::{AuthLayer, AuthMode, FailureSink};
use crate::auth::{AuthConfig, Authenticator};
use crate::catalog::{Catalog, CatalogWatcher, RetryTimer};
use crate::config::GatewayConfig;
use crate::flight::MeshFlightService;
use crate::flight::nodes::Nodes;
use crate::http::{HttpOptions, HttpServer};
use crate::metrics::Metrics;
use crate::metrics::rpc::RpcLayer;
use crate::ticket::TicketSigner;

/// Result with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the gateway could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable; the message says which setting and how to fix it.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mesh could not be loaded at all.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::Error),
    /// The access core could not start (governance files refused, no execution runtime).
    #[error(transparent)]
    Core(#[from] crate::access::Error),
    /// The gRPC server failed.
    #[error("serving failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Authentication could not be set up.
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::Error),
    /// Lineage emission could not be set up.
    #[error(transparent)]
    Lineage(#[from] crate::lineage::Error),
}

/// How long calls that finished get to hand over their records at shutdown.
const ENDING: std::time::Duration = std::time::Duration::from_secs(5);

/// How long streams told to end at shutdown get to record that themselves.
const ENDED_STREAMS: std::time::Duration = std::time::Duration::from_secs(1);

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    core: Arc<AccessCore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    grace: std::time::Duration,
    audit: Option<Arc<AuditLog>>,
    lineage: Option<Arc<crate::lineage::Lineage>>,
    /// Ends running streams at shutdown, after the grace period.
    stop: tokio::sync::watch::Sender<bool>,
    _watcher: Option<CatalogWatcher>,
    _retry: Option<RetryTimer>,
    _quality: Option<RetryTimer>,
    http: Option<HttpServer>,
}

/// Memory for cached listings of remote locations.
const LISTING_CACHE_BYTES: usize = 16 << 20;

/// The session every request plans in and the catalog of `mesh`, with the object stores of
/// `config` registered (`serve` and `check` open the mesh the same way).
pub fn open_catalog(config: &GatewayConfig, mesh: &Path, memory: MemoryAdapter) -> Result<(SessionContext, Catalog)> {
    let ctx = session_context(config)?;
    let stores = match &config.stores {
        Some(path) => ObjectStores::load(path).map_err(|e| Error::Config(e.to_string()))?,
        None => ObjectStores::default(),
    };
    stores.register_in(ctx.runtime_env().as_ref());
    let registry = AdapterRegistry::with_defaults(memory);
    let catalog = Catalog::open(mesh, registry, ctx.state(), &config.storage_roots)?.with_stores(Arc::new(stores));
    Ok((ctx, catalog))
}

/// The DataFusion session every request plans in.
fn session_context(config: &GatewayConfig) -> Result<SessionContext> {
    let mut session = SessionConfig::new().with_batch_size(config.batch_size).with_information_schema(false);
    if config.no_storage_pushdown {
        session = session.with_extension(Arc::new(crate::governance::StoragePushdownOff));
    }
    let options = session.options_mut();
    // Older Flight SQL / JDBC clients cannot read view types: unless asked, every adapter serves
    // plain Utf8/Binary (`StringTypes::of_session` reads this switch), whatever the files hold.
    options.execution.parquet.schema_force_view_types = config.view_types;
    options.sql_parser.map_string_types_to_utf8view = config.view_types;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(config.memory_limit_mb.saturating_mul(1 << 20), 1.0)
        // Only remote listings are cached (for --listing-ttl): files that appear or disappear in
        // a local folder are seen on the next read.
        .with_cache_manager(
            CacheManagerConfig::default()
                .with_list_files_cache(Some(Arc::new(RemoteListings::new(LISTING_CACHE_BYTES, config.listing_ttl))))
                .with_list_files_cache_limit(LISTING_CACHE_BYTES),
        )
        .build_arc()
        .map_err(|e| Error::Config(format!("query engine runtime: {e}")))?;
    let ctx = SessionContext::new_with_config_rt(session, runtime);
    crate::capped::register(&ctx, config.memory_limit_mb.saturating_mul(1 << 20));
    Ok(ctx)
}

impl Gateway {
    /// Loads the mesh, binds the listener and starts serving. `memory` provides the datasets
    /// of `memory` bindings.
    pub async fn bind(config: GatewayConfig, memory: MemoryAdapter) -> Result<Self> {
        crate::net::install_crypto_provider();
        let mesh = config.mesh.clone().ok_or_else(|| Error::Config("no mesh folder given (--mesh)".into()))?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path, what: &str| {
                    std::fs::read(p).map_err(|e| Error::Config(format!("cannot read TLS {what} {}: {e}", p.display())))
                };
                let mut tls =
                    ServerTlsConfig::new().identity(Identity::from_pem(read(cert, "certificate")?, read(key, "key")?));
                if let Some(ca) = &config.tls_client_ca {
                    tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?)).client_auth_optional(true);
                }
                Some(tls)
            }
            (None, None) => None,
            _ => return Err(Error::Config("give both --tls-cert and --tls-key, or neither".into())),
        };
        if tls.is_none() && !config.listen.ip().is_loopback() && !config.allow_plaintext {
            return Err(Error::Config(format!(
                "refusing plain TCP on non-loopback address {}: configure --tls-cert/--tls-key, or pass --allow-plaintext if a proxy terminates TLS",
                config.listen
            )));
        }
        let nodes = {
            let tls = config.tls_cert.is_some();
            let nodes = Nodes::new(config.advertise.clone(), tls).map_err(Error::Config)?;
            match &config.nodes {
                Some(path) => nodes.with_file(path, tls).map_err(Error::Config)?,
                None => nodes,
            }
        };
        // An empty value (e.g. an unset variable passed through by compose) means no key.
        let signer = match config.ticket_key.as_deref().filter(|k| !k.trim().is_empty()) {
            Some(k) => TicketSigner::try_new(
                TicketSigner::decode_key(k).map_err(|e| Error::Config(e.to_string()))?,
                config.ticket_ttl,
            )
            .map_err(|e| Error::Config(e.to_string()))?,
            None => {
                tracing::warn!(
                    "no ticket key configured (MESHGATE_TICKET_KEY); using a random one: tickets are valid on this process only"
                );
                TicketSigner::random(config.ticket_ttl)
            }
        };
        let authenticator = match (&config.auth, config.insecure_no_auth) {
            (Some(path), _) => Some(Arc::new(Authenticator::from_config(&AuthConfig::load(path)?).await?)),
            (None, true) if config.listen.ip().is_loopback() => {
                tracing::warn!("authentication is OFF (--insecure-no-auth): every local caller reads everything");
                None
            }
            (None, true) => {
                return Err(Error::Config("--insecure-no-auth is only allowed on a loopback address".into()));
            }
            (None, false) => {
                return Err(Error::Config("configure authentication with --auth FILE (docs/security.md), or pass --insecure-no-auth for a local experiment".into()));
            }
        };
        let audit = match (&config.audit_log, &authenticator) {
            (Some(dir), _) => Some(
                AuditLog::open(
                    dir,
                    AuditOptions {
                        fail_open: config.audit_fail_open,
                        replica: config.replica.clone(),
                        segment_bytes: config.audit_segment_size as u64,
                        wait: config.audit_wait,
                        ..AuditOptions::default()
                    },
                )
                .await?,
            ),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(Error::Config(
                    "with authentication on, give the audit log's folder with --audit-log".into(),
                ));
            }
        };
        if let Some(at) = config.http_listen.0
            && !at.ip().is_loopback()
        {
            if authenticator.is_none() {
                return Err(Error::Config(format!(
                    "--insecure-no-auth serves the HTTP port on loopback only, not {at}: configure --auth, or --http-listen 127.0.0.1:8816"
                )));
            }
            if !config.allow_plaintext {
                return Err(Error::Config(format!(
                    "refusing the HTTP port on non-loopback address {at} without TLS (sign-in sends passwords): put a TLS-terminating proxy in front and pass --allow-plaintext --http-cookie-secure, or --http-listen off"
                )));
            }
        }
        let metrics = Arc::new(Metrics::new(config.metrics_max_consumers));
        let (ctx, catalog) = open_catalog(&config, &mesh, memory)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let quality = Arc::new(
            crate::quality::Quality::open(config.quality_log.clone())
                .map_err(|source| Error::Io { context: "opening the quality log (--quality-log)".into(), source })?,
        );
        let mut core = AccessCore::builder(catalog, ctx, signer)
            .with_options(CoreOptions {
                governed: authenticator.is_some(),
                exec_threads: config.exec_threads,
                max_reads: config.max_concurrent_reads,
                statements: crate::access::StatementLimits {
                    memory_bytes: config.statement_memory_mb.saturating_mul(1 << 20),
                    timeout: Some(config.statement_timeout).filter(|t| !t.is_zero()),
                    max_rows: Some(config.statement_max_rows).filter(|n| *n > 0),
                },
                max_publish_bytes: config.max_publish_bytes,
                stream_budget: config.stream_budget,
                streams_budget: config.streams_budget,
            })
            .with_stop(stopped)
            .with_metrics(Arc::clone(&metrics))
            .with_quality(Arc::clone(&quality));
        let lineage = crate::lineage::Lineage::start(crate::lineage::LineageOptions {
            url: config.lineage_url.clone(),
            api_key: config.lineage_api_key.clone(),
            file: config.lineage_file.clone(),
            namespace: config.lineage_namespace.clone(),
            queue: config.lineage_queue,
            timeout: std::time::Duration::from_secs(5),
        })
        .await?;
        if let Some(l) = &lineage {
            core = core.with_lineage(Arc::clone(l));
        }
        // The governance records are products where governance runs (with authentication).
        if let Some(log) = &audit {
            core = core
                .with_audit(Arc::clone(log))
                .with_builtin(crate::audit::product::product(log.dir()))
                .with_builtin(crate::quality::product::product(quality));
        }
        let core = core.build().await?;
        let watcher = if config.no_watch {
            None
        } else {
            let watched = Arc::clone(&core);
            let reload = move || {
                let core = Arc::clone(&watched);
                async move {
                    if let Err(e) = core.reload().await {
                        tracing::warn!(error = %e, "reload after a change failed; the last good catalog stays");
                    }
                }
            };
            match CatalogWatcher::start(core.mesh_dir(), std::time::Duration::from_millis(300), reload) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the mesh folder; use the `reload` action after changes");
                    None
                }
            }
        };
        let retry = (!config.retry_interval.is_zero()).then(|| {
            let core = Arc::clone(&core);
            RetryTimer::start(config.retry_interval, move || {
                let core = Arc::clone(&core);
                async move {
                    if core.snapshot().catalog.problems().is_empty() {
                        return;
                    }
                    if let Err(e) = core.reload().await {
                        tracing::warn!(error = %e, "retrying refused products failed; the catalog in force stays");
                    }
                }
            })
        });
        // Quality rules: a look every few seconds at what is due (a data change, the interval,
        // a rule's cron schedule) that also observes each port's data version for freshness; a
        // slow check delays the next look instead of overlapping it.
        let quality = (!config.quality_interval.is_zero()).then(|| {
            let core = Arc::clone(&core);
            let every = config.quality_interval;
            let look = every.min(std::time::Duration::from_secs(5));
            RetryTimer::start(look, move || {
                let core = Arc::clone(&core);
                async move {
                    if let Err(e) = core.check_due_quality(every).await {
                        tracing::warn!(error = %e, "scheduled quality checks failed");
                    }
                }
            })
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Io { context: format!("cannot listen on {}", config.listen), source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Io { context: "reading the bound address".into(), source })?;
        let mut flight = MeshFlightService::new(Arc::clone(&core))
            .with_wire(crate::flight::wire::WireOptions {
                max_message_bytes: config.max_message_size,
                compression: None,
                keepalive: None,
            })
            .with_view_types(config.view_types)
            .with_nodes(nodes);
        let mode = match &authenticator {
            Some(a) => {
                flight = flight.with_auth(Arc::clone(a));
                AuthMode::Required(Arc::clone(a))
            }
            None => AuthMode::Off,
        };
        let on_failure = audit.clone().map(|log| -> FailureSink {
            Arc::new(move |parts: &http::request::Parts, e: &crate::auth::Error| {
                let address = parts
                    .extensions
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|i| i.remote_addr())
                    .or_else(|| {
                        parts
                            .extensions
                            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
                            .and_then(|i| i.get_ref().remote_addr())
                    });
                let client = crate::audit::Client {
                    address: address.map(|a| a.to_string()),
                    user_agent: parts.headers.get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_string),
                    on_behalf_of: None,
                };
                log.auth_failure(parts.uri.path(), client, &e.to_string());
            })
        });
        let doget = crate::flight::doget::DoGetLayer::new(flight.clone());
        let service =
            FlightServiceServer::new(flight).max_decoding_message_size(16 << 20).max_encoding_message_size(usize::MAX);
        let mut builder = Server::builder();
        if !config.http2_keepalive.is_zero() {
            builder = builder
                .http2_keepalive_interval(Some(config.http2_keepalive))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
        }
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let (tx, rx) = oneshot::channel::<()>();
        let router = builder
            .layer(RpcLayer::new(Arc::clone(&metrics)))
            .layer(tower::util::MapResponseLayer::new(crate::net::undecodable_is_invalid_argument))
            .layer(AuthLayer::new(mode, on_failure))
            .layer(doget)
            .add_service(service);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(crate::net::accept(listener), async {
            let _ = rx.await;
        }));
        let http = match config.http_listen.0 {
            Some(at) => {
                let listener = TcpListener::bind(at).await.map_err(|source| Error::Io {
                    context: format!("cannot listen on {at} (--http-listen)"),
                    source,
                })?;
                let scheme = if config.tls_cert.is_some() { "grpc+tls" } else { "grpc" };
                let options = HttpOptions {
                    metrics_auth: config.metrics_auth,
                    secure_cookies: config.http_cookie_secure,
                    flight_url: config.flight_url.clone().unwrap_or_else(|| format!("{scheme}://{addr}")),
                };
                Some(
                    HttpServer::start(
                        listener,
                        Arc::clone(&core),
                        authenticator.clone(),
                        audit.clone(),
                        metrics,
                        options,
                    )
                    .map_err(|source| Error::Io { context: "starting the HTTP port".into(), source })?,
                )
            }
            None => None,
        };
        let http_addr = http.as_ref().map(|h| h.local_addr().to_string()).unwrap_or_default();
        tracing::info!(%addr, %http_addr, tls = config.tls_cert.is_some(), mesh = %core.mesh_dir().display(), "listening");
        Ok(Self {
            addr,
            core,
            shutdown: Some(tx),
            task,
            grace: config.shutdown_grace,
            audit,
            lineage,
            stop,
            _watcher: watcher,
            _retry: retry,
            _quality: quality,
            http,
        })
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTP side port, when open.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// The access core serving the mesh.
    pub fn core(&self) -> &Arc<AccessCore> {
        &self.core
    }

    /// The audit log, when auditing.
    pub fn audit(&self) -> Option<&Arc<AuditLog>> {
        self.audit.as_ref()
    }

    /// Stops in order: stop accepting; let running streams finish within the grace period; end
    /// the rest (`UNAVAILABLE`, outcome recorded) and wait for their records; then commit and
    /// close the audit log.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = tokio::time::timeout(self.grace, &mut self.task).await;
        let overran = served.is_err();
        if overran {
            tracing::warn!(grace = ?self.grace, "streams still running after the grace period; ending them");
            // Streams being polled end with UNAVAILABLE and record that themselves.
            let _ = self.stop.send(true);
        }
        if let Some(log) = &self.audit {
            let settle = if overran { ENDED_STREAMS } else { ENDING };
            if !log.drained(settle).await {
                // Streams nobody polls (a client that stopped reading) are ended in the log.
                log.end_open_calls().await;
            }
            log.close().await;
        }
        if let Some(lineage) = &self.lineage {
            lineage.close(ENDING).await;
        }
        if overran {
            self.task.abort();
        }
        match served {
            Ok(Ok(served)) => served.map_err(Error::from),
            Ok(Err(join)) => Err(Error::Config(format!("server task failed: {join}"))),
            Err(_) => Ok(()),
        }
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<()> {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|source| Error::Io { context: "installing the SIGTERM handler".into(), source })?;
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}
