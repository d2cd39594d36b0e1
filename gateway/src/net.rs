//! Accepting connections: socket options tonic does not set on its own, and the status of
//! requests that do not decode.
//!
//! tonic applies `tcp_nodelay` and `tcp_keepalive` only to listeners it binds itself; the gateway
//! binds first (so tests can read the port back) and hands tonic a stream of accepted sockets,
//! so those settings are ignored there. Without `TCP_NODELAY`, Nagle's algorithm holds back the
//! last small segment of every unary response until the client's delayed ACK arrives: each
//! `GetFlightInfo`, `GetSchema` or `ListActions` then takes ~40 ms instead of well under one.
//! [`accept`] sets both options on every accepted socket, TLS and plain alike (TLS wraps the
//! socket afterwards).

use std::io;
use std::time::Duration;

use http::HeaderValue;

use futures::{Stream, StreamExt};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;

/// Idle time before the first keep-alive probe, and the interval between probes. A peer that
/// vanished (a killed worker, a dropped NAT mapping) is noticed within about a minute and a half.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Makes ring the process's TLS crypto provider (the one tonic's TLS is built with). rustls
/// picks one on its own only when exactly one is compiled in, and the Delta Lake crates bring a
/// second; every TLS client and server of the gateway is built after this. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sets `TCP_NODELAY` and TCP keep-alive on `stream`.
pub fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive =
        TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_RETRIES);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// The connections accepted on `listener`, each [`configure`]d. A socket that cannot be
/// configured is still served (the options are about latency and dead peers, not correctness);
/// the failure is logged.
pub fn accept(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> + Send + 'static {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = configure(stream) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY/keep-alive on an accepted socket");
            }
        })
    })
}

/// Turns tonic's answer to a request message that does not decode (invalid protobuf, a
/// `string` field holding invalid UTF-8), which it reports as `INTERNAL`, into the client error it
/// is: `INVALID_ARGUMENT`, saying what to fix. Use with `tower::util::MapResponseLayer`.
pub fn undecodable_is_invalid_argument<B>(mut response: http::Response<B>) -> http::Response<B> {
    const INTERNAL: &str = "13";
    let headers = response.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|s| s == INTERNAL)
        && headers.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
            m.starts_with("failed%20to%20decode%20Protobuf") || m.starts_with("failed to decode Protobuf")
        });
    if undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "the%20request%20message%20is%20not%20valid%20protobuf%20for%20this%20call%20(text%20fields%20must%20be%20UTF-8)",
            ),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(accept(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY on the accepted socket");
        let sock = SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE on the accepted socket");
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_RETRIES);
    }
}
