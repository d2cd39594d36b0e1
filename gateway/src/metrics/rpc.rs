//! The tower layer that times, counts and traces every gRPC call, streams to their last message.
//!
//! Each call is one `rpc` span (OpenTelemetry kind `server`, named like
//! `arrow.flight.protocol.FlightService/DoGet`) whose parent is the caller's W3C trace context.
//! Authentication adds `enduser.id`, the access core `meshgate.product`; the outcome is
//! `rpc.grpc.status_code`, with the span's status `error` for codes that are the server's or the
//! caller's failure. The span closes with the call's last message.
//!
//! A call's outcome is its `grpc-status`: in the response headers when the call failed before
//! any message (a trailers-only response), otherwise in the trailers after the last message. A
//! stream the client drops before its trailers counts as `CANCELLED`. The layer sits outside
//! authentication, so refused calls are counted too.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Metrics;

/// The Flight RPCs, as labels (anything else is `unknown`: label values stay bounded).
const RPCS: [&str; 10] = [
    "Handshake",
    "ListFlights",
    "GetFlightInfo",
    "PollFlightInfo",
    "GetSchema",
    "DoGet",
    "DoPut",
    "DoExchange",
    "DoAction",
    "ListActions",
];

/// The one gRPC service the gateway serves (Flight SQL travels inside it).
const SERVICE: &str = "arrow.flight.protocol.FlightService";

/// The RPC a request path names (`/arrow.flight.protocol.FlightService/DoGet` → `DoGet`).
pub fn rpc_name(path: &str) -> &'static str {
    let method = path.strip_prefix('/').and_then(|p| p.strip_prefix(SERVICE)).and_then(|p| p.strip_prefix('/'));
    method.and_then(|m| RPCS.iter().find(|r| **r == m).copied()).unwrap_or("unknown")
}

/// Layer counting calls in [`Metrics`].
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rpc { inner, metrics: Arc::clone(&self.metrics) }
    }
}

/// The service [`RpcLayer`] wraps around the gateway.
#[derive(Debug, Clone)]
pub struct Rpc<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// What is recorded once a call ends.
#[derive(Debug)]
struct Pending {
    metrics: Arc<Metrics>,
    rpc: &'static str,
    started: Instant,
    span: tracing::Span,
}

impl Pending {
    fn finish(self, code: tonic::Code) {
        self.metrics.call(self.rpc, code, self.started.elapsed());
        self.span.set_attribute("rpc.grpc.status_code", code as i64);
        if code != tonic::Code::Ok {
            self.span.record("otel.status_code", "error");
        }
    }
}

/// The span of one call, joined to the caller's trace.
fn span_of<B>(req: &http::Request<B>, rpc: &'static str) -> tracing::Span {
    // Bounded like the metrics' label: a made-up path is not copied into every span.
    let (service, name) = match rpc {
        "unknown" => ("unknown", "unknown".to_string()),
        known => (SERVICE, format!("{SERVICE}/{known}")),
    };
    let span = tracing::info_span!(
        "rpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc = rpc,
    );
    if span.is_disabled() {
        return span;
    }
    if req.headers().contains_key("traceparent") {
        // Fails only when no OpenTelemetry layer is installed: nothing to join then.
        let _ = span.set_parent(crate::telemetry::parent_of(req.headers()));
    }
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service);
    span.set_attribute("rpc.method", rpc);
    span
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

impl<S, B> Service<http::Request<B>> for Rpc<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let rpc = rpc_name(req.uri().path());
        let span = span_of(&req, rpc);
        let pending = Pending { metrics: Arc::clone(&self.metrics), rpc, started: Instant::now(), span: span.clone() };
        let call = span.in_scope(|| inner.call(req));
        Box::pin(async move {
            let response = call.instrument(span).await?;
            // A trailers-only response (the call failed before any message) carries its status
            // in the headers.
            if let Some(code) = status_of(response.headers()) {
                pending.finish(code);
                return Ok(response);
            }
            let (parts, body) = response.into_parts();
            let body = tonic::body::Body::new(Observed { inner: body, pending: Some(pending) });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body that records the call when its trailers pass, or when it is dropped first.
struct Observed {
    inner: tonic::body::Body,
    pending: Option<Pending>,
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let out = Pin::new(&mut self.inner).poll_frame(cx);
        let code = match &out {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|t| status_of(t).unwrap_or(tonic::Code::Unknown)),
            Poll::Ready(Some(Err(status))) => Some(status.code()),
            // Ended without trailers: gRPC always sends them, so the call did not complete.
            Poll::Ready(None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        // Taken only once the outcome is known: a data frame leaves the call pending.
        if let Some(code) = code
            && let Some(pending) = self.pending.take()
        {
            pending.finish(code);
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_labels_are_bounded() {
        assert_eq!(rpc_name("/arrow.flight.protocol.FlightService/DoGet"), "DoGet");
        assert_eq!(rpc_name("/arrow.flight.protocol.FlightService/GetFlightInfo"), "GetFlightInfo");
        assert_eq!(rpc_name("/x.Y/SomethingAnAttackerMadeUp"), "unknown");
        assert_eq!(rpc_name("/x.Y/DoGet"), "unknown");
        assert_eq!(rpc_name(""), "unknown");
    }

    /// A stream answered by `inner`, read to its end (or dropped after its first message).
    async fn call(status: Option<&'static str>, trailers: Option<&'static str>, read_all: bool) -> String {
        use http_body_util::BodyExt;
        let metrics = Arc::new(Metrics::new(10));
        let inner = tower::service_fn(move |_req: http::Request<()>| async move {
            let frames = vec![Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"x")))].into_iter().chain(
                trailers.map(|t| {
                    let mut h = http::HeaderMap::new();
                    h.insert("grpc-status", t.parse().unwrap());
                    Ok(Frame::trailers(h))
                }),
            );
            let body = tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)));
            let mut r = http::Response::new(body);
            if let Some(s) = status {
                r.headers_mut().insert("grpc-status", s.parse().unwrap());
            }
            Ok::<_, std::convert::Infallible>(r)
        });
        let mut svc = RpcLayer::new(Arc::clone(&metrics)).layer(inner);
        let req = http::Request::builder().uri("/arrow.flight.protocol.FlightService/DoGet").body(()).unwrap();
        let mut body = svc.call(req).await.unwrap().into_body();
        if read_all {
            while body.frame().await.is_some() {}
        } else {
            let _ = body.frame().await;
        }
        drop(body);
        metrics.render(super::super::Live::default())
    }

    #[tokio::test]
    async fn calls_are_counted_by_their_final_status() {
        let text = call(None, Some("0"), true).await;
        assert!(text.contains(r#"meshgate_rpc_requests_total{rpc="DoGet",code="OK"} 1"#), "{text}");
        let text = call(Some("5"), None, true).await;
        assert!(text.contains(r#"meshgate_rpc_requests_total{rpc="DoGet",code="NOT_FOUND"} 1"#), "{text}");
        let text = call(None, Some("0"), false).await;
        assert!(text.contains(r#"meshgate_rpc_requests_total{rpc="DoGet",code="CANCELLED"} 1"#), "{text}");
        assert!(text.contains(r#"meshgate_rpc_duration_seconds_count{rpc="DoGet"} 1"#), "{text}");
    }

    #[test]
    fn status_is_read_from_headers_or_trailers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(status_of(&h), Some(tonic::Code::NotFound));
    }
}
