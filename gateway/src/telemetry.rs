//! Logs and traces: the process's `tracing` subscriber, and, when an OTLP endpoint is given,
//! OpenTelemetry export of every RPC's span.
//!
//! ```text
//!  tracing spans and events ──► fmt layer (stderr, text or JSON)
//!                           └─► OpenTelemetry layer ──► batch processor (own thread)
//!                                                       ──► OTLP/gRPC exporter (on the runtime)
//! ```
//!
//! Export is off unless `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names a collector.
//! The span of each call is opened by [`crate::metrics::rpc`]; its parent is the caller's W3C
//! trace context (`traceparent`, `tracestate` in the gRPC metadata) read by [`parent_of`].

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OTLP exporter refused its configuration (endpoint, timeout).
    #[error("cannot export traces to {endpoint}: {reason}; give --otlp-endpoint as http://host:port")]
    Exporter {
        /// The endpoint as given.
        endpoint: String,
        /// What the exporter said.
        reason: String,
    },
    /// A global subscriber was already installed (a second `init` in one process).
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The installed telemetry; [`Telemetry::shutdown`] sends the spans still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the process-wide subscriber: logs to stderr, and spans to `otlp` when given.
///
/// Call inside the Tokio runtime (its handle carries the exporter's connections). The filter is
/// `RUST_LOG`, `info` by default; the service name is `meshgate` unless `OTEL_SERVICE_NAME` says
/// otherwise, and `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*` are honoured.
pub fn init(format: LogFormat, otlp: Option<&str>) -> Result<Telemetry, Error> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let provider = otlp.map(provider).transpose()?;
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("meshgate")));
    let (text, json) = match format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)), None),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .map_err(|_| Error::AlreadySet)?;
    Ok(Telemetry { provider })
}

fn provider(endpoint: &str) -> Result<SdkTracerProvider, Error> {
    use opentelemetry_otlp::WithExportConfig;
    let failed = |e: &dyn std::fmt::Display| Error::Exporter { endpoint: endpoint.to_string(), reason: e.to_string() };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(failed(&"not an http:// or https:// URL"));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| failed(&e))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("meshgate");
    }
    let exporter = OnRuntime { inner: exporter, runtime: tokio::runtime::Handle::current() };
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter. Call outside the runtime's tasks (the
    /// export runs on the runtime while this thread waits).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "traces buffered at shutdown were not all exported");
        }
    }
}

/// An exporter whose exports run on the gateway's runtime.
///
/// The SDK's batch processor exports from its own OS thread, outside any Tokio runtime, and
/// the OTLP/gRPC exporter's connections need one: without this every export panicked that
/// thread ("there is no reactor running") and no span left the process.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let export = self.inner.export(batch);
        if tokio::runtime::Handle::try_current().is_ok() { export.await } else { self.runtime.block_on(export) }
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// gRPC metadata as a propagation carrier.
struct Metadata<'a>(&'a http::HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The caller's trace context from W3C `traceparent`/`tracestate` metadata; an empty context
/// (a new trace) when there is none or it does not parse.
pub fn parent_of(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Metadata(headers))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn the_callers_trace_context_is_read_from_metadata() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        let cx = parent_of(&headers);
        let span = cx.span();
        let parent = span.span_context();
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parent.span_id().to_string(), "b7ad6b7169203331");
    }

    #[test]
    fn bad_or_missing_context_starts_a_new_trace() {
        assert!(!parent_of(&http::HeaderMap::new()).span().span_context().is_valid());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-not-a-trace-01".parse().unwrap());
        assert!(!parent_of(&headers).span().span_context().is_valid());
    }

    #[test]
    fn an_endpoint_must_be_a_url() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _in = rt.enter();
        let e = provider("collector:4317").unwrap_err();
        assert!(e.to_string().contains("http://host:port"), "{e}");
        assert!(provider("http://127.0.0.1:4317").is_ok());
    }
}
