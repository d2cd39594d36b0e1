//! DoGet answered without copying message bodies.
//!
//! tonic encodes every response message through its codec into one buffer: a `FlightData` body
//! (megabytes of Arrow data) is copied there whole, after the IPC encoder has already copied the
//! arrays into that body. For DoGet, the call that moves the data, [`DoGetLayer`] answers instead
//! of tonic: it decodes the `Ticket`, asks [`MeshFlightService::get`] for the read like tonic
//! would, and writes each message as its gRPC frame prefix and protobuf field headers followed by
//! the body's pieces as they are ([`WireMessage`]: the arrays' own buffers). HTTP/2 then sends
//! those pieces to the socket; the only copy left is the kernel's.
//!
//! What a client sees is what tonic would send: the same frames, `grpc-status` and
//! `grpc-message` in the trailers (or a trailers-only response when the call fails before its
//! first message), and the same status for a request that is not a valid `Ticket`. Every other
//! call goes on to tonic; the layer sits inside the authentication layer, so the caller's
//! principal is already on the request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use arrow_flight::Ticket;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use super::service::MeshFlightService;
use super::wire::WireMessage;

/// The HTTP path of DoGet.
pub const DO_GET_PATH: &str = "/arrow.flight.protocol.FlightService/DoGet";

/// The largest DoGet request accepted (a `Ticket`; tickets are a few hundred bytes).
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Body pieces shorter than this are copied into the piece before them rather than sent as a
/// chunk of their own (padding, small validity bitmaps), so HTTP/2 frames stay large.
const COALESCE_BELOW: usize = 16 << 10;

/// Layer answering DoGet itself ([module documentation](self)).
#[derive(Debug, Clone)]
pub struct DoGetLayer {
    flight: MeshFlightService,
}

impl DoGetLayer {
    /// Answers DoGet with `flight`'s reads.
    pub fn new(flight: MeshFlightService) -> Self {
        Self { flight }
    }
}

impl<S> Layer<S> for DoGetLayer {
    type Service = DoGetService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DoGetService { inner, flight: self.flight.clone() }
    }
}

/// The service [`DoGetLayer`] wraps around the gateway.
#[derive(Debug, Clone)]
pub struct DoGetService<S> {
    inner: S,
    flight: MeshFlightService,
}

impl<S> Service<http::Request<Body>> for DoGetService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != DO_GET_PATH {
            return Box::pin(self.inner.call(request));
        }
        let flight = self.flight.clone();
        Box::pin(async move { Ok(answer(&flight, request).await) })
    }
}

/// The whole DoGet call: the response, or the status it failed with.
async fn answer(flight: &MeshFlightService, request: http::Request<Body>) -> http::Response<Body> {
    let (parts, body) = request.into_parts();
    let ticket = match ticket(body).await {
        Ok(t) => t,
        Err(status) => return status.into_http(),
    };
    let request =
        tonic::Request::from_parts(tonic::metadata::MetadataMap::from_headers(parts.headers), parts.extensions, ticket);
    match flight.get(request).await {
        Ok(messages) => {
            let mut response = http::Response::new(Body::new(Frames::new(messages)));
            response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The request's one message, decoded: tonic's checks and statuses for a unary request.
async fn ticket(body: Body) -> Result<Ticket, Status> {
    let bytes = http_body_util::Limited::new(body, MAX_REQUEST_BYTES + 5)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Status::resource_exhausted(format!("a DoGet request is at most {MAX_REQUEST_BYTES} bytes"))
            } else {
                Status::unavailable("the request could not be read")
            }
        })?
        .to_bytes();
    decode_unary(&bytes)
}

/// A unary gRPC request body (one length-prefixed message) as a `Ticket`.
fn decode_unary(bytes: &[u8]) -> Result<Ticket, Status> {
    let Some((head, message)) = bytes.split_first_chunk::<5>() else {
        return Err(Status::invalid_argument("a DoGet request holds one Ticket message; none was sent"));
    };
    if head[0] != 0 {
        return Err(Status::unimplemented("compressed requests are not supported: send the Ticket uncompressed"));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len != message.len() {
        return Err(Status::invalid_argument("a DoGet request holds exactly one Ticket message"));
    }
    Ticket::decode(message).map_err(|_| {
        Status::invalid_argument("the request message is not valid protobuf for this call (text fields must be UTF-8)")
    })
}

/// A DoGet response body: each message's gRPC frame, then the call's status in the trailers.
struct Frames {
    messages: BoxStream<'static, Result<WireMessage, Status>>,
    pending: VecDeque<Bytes>,
    ended: bool,
}

impl Frames {
    fn new(messages: BoxStream<'static, Result<WireMessage, Status>>) -> Self {
        Self { messages, pending: VecDeque::new(), ended: false }
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(self.messages.poll_next_unpin(cx)) {
            Some(Ok(message)) => {
                self.pending = grpc_frame(message);
                let chunk = self.pending.pop_front().unwrap_or_default();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending.is_empty()
    }
}

/// The trailers carrying `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut map = HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert("grpc-status", HeaderValue::from_static("13"));
    }
    map
}

/// Tag of `FlightData.data_header` (field 2, length-delimited).
const HEADER_TAG: u8 = (2 << 3) | 2;
/// Tag of `FlightData.data_body` (field 1000, length-delimited), as its varint.
const BODY_TAG: [u8; 2] = [0xc2, 0x3e];

/// `message` as one gRPC frame (compression flag, length, protobuf `FlightData`), in chunks:
/// the frame's own bytes and small body pieces copied together, large body pieces as they are.
fn grpc_frame(message: WireMessage) -> VecDeque<Bytes> {
    let body_len = message.body_len();
    let mut proto_len = 0;
    if !message.header.is_empty() {
        proto_len += 1 + prost::length_delimiter_len(message.header.len()) + message.header.len();
    }
    if body_len > 0 {
        proto_len += BODY_TAG.len() + prost::length_delimiter_len(body_len) + body_len;
    }
    let mut chunks = VecDeque::with_capacity(message.body.len() + 1);
    let mut head = BytesMut::with_capacity(5 + 16 + message.header.len());
    head.put_u8(0);
    // A message is at most one batch piece (`--max-message-size`), far below 4 GiB.
    head.put_u32(u32::try_from(proto_len).unwrap_or(u32::MAX));
    if !message.header.is_empty() {
        head.put_u8(HEADER_TAG);
        put_varint(&mut head, message.header.len());
        head.put_slice(&message.header);
    }
    if body_len > 0 {
        head.put_slice(&BODY_TAG);
        put_varint(&mut head, body_len);
    }
    for piece in message.body {
        if piece.len() < COALESCE_BELOW {
            head.put_slice(&piece);
        } else {
            if !head.is_empty() {
                chunks.push_back(head.split().freeze());
            }
            chunks.push_back(piece);
        }
    }
    if !head.is_empty() {
        chunks.push_back(head.freeze());
    }
    chunks
}

fn put_varint(buf: &mut BytesMut, value: usize) {
    prost::encoding::encode_varint(value as u64, buf);
}

#[cfg(test)]
mod tests {
    use arrow_flight::FlightData;

    use super::*;

    fn joined(chunks: VecDeque<Bytes>) -> Vec<u8> {
        chunks.into_iter().flat_map(|c| c.to_vec()).collect()
    }

    #[test]
    fn frames_are_what_prost_and_tonic_would_write() {
        let big = Bytes::from(vec![7u8; COALESCE_BELOW * 2]);
        let cases = [
            WireMessage::default(),
            WireMessage { header: Bytes::from_static(b"header bytes"), body: vec![] },
            WireMessage {
                header: Bytes::from(vec![1u8; 300]),
                body: vec![Bytes::from_static(b"ab"), big.clone(), Bytes::from_static(&[0; 6]), big.clone()],
            },
        ];
        for message in cases {
            let expected = FlightData::from(message.clone()).encode_to_vec();
            let chunks = grpc_frame(message.clone());
            let pieces_sent_whole = chunks.iter().filter(|c| c.as_ptr() == big.as_ptr()).count();
            let frame = joined(chunks);
            assert_eq!(frame[0], 0, "uncompressed");
            assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, expected.len());
            assert_eq!(&frame[5..], &expected[..]);
            assert_eq!(pieces_sent_whole, message.body.iter().filter(|b| b.len() >= COALESCE_BELOW).count());
        }
    }

    #[test]
    fn requests_that_are_not_one_ticket_are_refused_clearly() {
        let ticket = Ticket { ticket: Bytes::from_static(b"t") }.encode_to_vec();
        let mut framed = vec![0, 0, 0, 0, ticket.len() as u8];
        framed.extend_from_slice(&ticket);
        assert_eq!(decode_unary(&framed).unwrap().ticket, Bytes::from_static(b"t"));

        let mut compressed = framed.clone();
        compressed[0] = 1;
        let mut two = framed.clone();
        two.extend_from_slice(&framed);
        let not_protobuf = [0, 0, 0, 0, 2, 0xff, 0xff];
        for (bytes, code) in [
            (&[][..], tonic::Code::InvalidArgument),
            (&compressed[..], tonic::Code::Unimplemented),
            (&two[..], tonic::Code::InvalidArgument),
            (&not_protobuf[..], tonic::Code::InvalidArgument),
        ] {
            assert_eq!(decode_unary(bytes).unwrap_err().code(), code, "{bytes:?}");
        }
    }

    #[test]
    fn trailers_carry_the_status() {
        let ok = trailers(&Status::ok(""));
        assert_eq!(ok.get("grpc-status").unwrap(), "0");
        let failed = trailers(&Status::not_found("no product `a/b`"));
        assert_eq!(failed.get("grpc-status").unwrap(), "5");
        assert!(failed.get("grpc-message").is_some());
    }
}
