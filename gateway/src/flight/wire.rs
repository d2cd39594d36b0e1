//! Cutting record batches into Flight messages.
//!
//! arrow-flight's encoder splits a batch by the memory its arrays *reference*
//! (`get_buffer_memory_size`). A batch read from an Arrow IPC file is a set of slices of one
//! large read buffer, so every column appears to hold that whole buffer: a 65,536-row batch was
//! cut into ~900 messages of ~73 rows. Here batches are cut by the bytes their rows actually
//! occupy (`get_slice_memory_size`), so a message carries up to [`WireOptions::max_message_bytes`]
//! of rows, and the encoder is told never to split again.
//!
//! Slices of view arrays (`Utf8View`, `BinaryView`) still reference every data buffer of the
//! original array, which the IPC writer would send with each slice; they are compacted first.
//!
//! The messages are encoded here rather than by arrow-flight's `FlightDataEncoder`, which copies
//! every array into one body vector (growing it by doubling). arrow-ipc's `StreamEncoder` hands
//! out the body as the arrays' own buffers; a [`WireMessage`] keeps them as pieces, which
//! [`crate::flight::doget`] writes to the connection without joining them. Like arrow-flight's
//! default, dictionary columns are sent as their values (hydrated).
//!
//! Message bodies may be compressed (LZ4 frame or ZSTD, Arrow IPC's own body compression) when
//! the client asks ([`Compression`]); every Arrow reader decompresses them itself. Messages are
//! still cut by uncompressed size, so a message never exceeds the bound either way.

use std::sync::Arc;

pub use crate::query::Compression;
use arrow::array::{Array, ArrayRef, BinaryViewArray, RecordBatch, RecordBatchOptions, StringViewArray};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::ipc::CompressionType;
use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};

/// How batches are laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireOptions {
    /// Upper bound on the Arrow data of one `FlightData` message. Clients built on tonic refuse
    /// messages over 4 MiB unless configured otherwise, so the default stays below that.
    pub max_message_bytes: usize,
    /// Body compression; `None` sends bodies as they are (the default: on a fast network
    /// compressing costs more CPU than the bytes it saves).
    pub compression: Option<Compression>,
    /// A stream that produces no message for this long sends an empty keep-alive message, so
    /// proxies that cut idle streams do not cut a slow query (`None`: never). Only when the
    /// client asks ([`KEEPALIVE_HEADER`]): Arrow C++ readers (pyarrow, ADBC) end `read_all` at
    /// the first message without data, so an unasked keep-alive would truncate their results.
    pub keepalive: Option<std::time::Duration>,
}

/// The request header with which a reader resumes a shard: the rows it already has.
pub use crate::access::RESUME_HEADER as OFFSET_HEADER;

/// The request header with which a client asks for keep-alive messages in a quiet stream, and
/// how quiet (`15s`): for readers that skip messages without data (arrow-rs, Go).
pub const KEEPALIVE_HEADER: &str = "x-meshgate-keepalive";

/// The request header naming the compression a client wants for a stream.
pub const COMPRESSION_HEADER: &str = "x-meshgate-compression";

fn ipc(compression: Compression) -> CompressionType {
    match compression {
        Compression::Lz4 => CompressionType::LZ4_FRAME,
        Compression::Zstd => CompressionType::ZSTD,
    }
}

/// Default [`WireOptions::max_message_bytes`]: 2 MiB, well inside the 4 MiB gRPC default every
/// client accepts.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 2 << 20;

impl Default for WireOptions {
    fn default() -> Self {
        Self { max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES, compression: None, keepalive: None }
    }
}

/// The bytes the rows of `batch` occupy, not counting buffer space beyond its slice.
pub fn sliced_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
}

/// Cuts `batch` into consecutive pieces of at most `max_bytes` each (a single row may exceed it),
/// compacting view arrays so no piece carries another piece's data.
pub fn split(batch: RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes = sliced_bytes(&batch);
    let pieces = bytes.div_ceil(max_bytes.max(1)).max(1);
    if pieces == 1 {
        return vec![compact_views(batch)];
    }
    let per_piece = rows.div_ceil(pieces).max(1);
    (0..rows)
        .step_by(per_piece)
        .map(|offset| compact_views(batch.slice(offset, per_piece.min(rows - offset))))
        .collect()
}

/// Whether `c` is a view column referencing more than twice the bytes its rows use (a slice of
/// a larger array): compacting it is worth a copy, while a column that is already compact is
/// sent as it is.
fn oversized_view(c: &ArrayRef) -> bool {
    let (used, held) = if let Some(a) = c.as_any().downcast_ref::<StringViewArray>() {
        (a.total_buffer_bytes_used(), a.data_buffers().iter().map(|b| b.capacity()).sum::<usize>())
    } else if let Some(a) = c.as_any().downcast_ref::<BinaryViewArray>() {
        (a.total_buffer_bytes_used(), a.data_buffers().iter().map(|b| b.capacity()).sum::<usize>())
    } else {
        return false;
    };
    held > 2 * used
}

/// `batch` with every top-level view column garbage-collected when it references more data
/// buffer space than its rows use.
fn compact_views(batch: RecordBatch) -> RecordBatch {
    if !batch.columns().iter().any(oversized_view) {
        return batch;
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| {
            if !oversized_view(c) {
                Arc::clone(c)
            } else if let Some(a) = c.as_any().downcast_ref::<StringViewArray>() {
                Arc::new(a.gc()) as ArrayRef
            } else if let Some(a) = c.as_any().downcast_ref::<BinaryViewArray>() {
                Arc::new(a.gc()) as ArrayRef
            } else {
                Arc::clone(c)
            }
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).unwrap_or(batch)
}

/// One Flight message as it leaves the gateway: its IPC header, and its body as the buffers it
/// is made of (the arrays' own buffers and the padding between them), not copied into one.
/// [`crate::flight::doget`] writes the pieces to the connection as they are; converting to
/// `FlightData` joins them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireMessage {
    /// `FlightData.data_header`: the IPC `Message` flatbuffer (empty for a keep-alive).
    pub header: Bytes,
    /// `FlightData.data_body`, in pieces, in order.
    pub body: Vec<Bytes>,
}

impl WireMessage {
    /// The length of the body, all pieces together.
    pub fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }
}

impl From<WireMessage> for FlightData {
    fn from(m: WireMessage) -> Self {
        let data_body = match <[Bytes; 1]>::try_from(m.body) {
            Ok([one]) => one,
            Err(pieces) => pieces.concat().into(),
        };
        FlightData { data_header: m.header, data_body, ..Default::default() }
    }
}

impl From<FlightData> for WireMessage {
    fn from(d: FlightData) -> Self {
        let body = if d.data_body.is_empty() { Vec::new() } else { vec![d.data_body] };
        WireMessage { header: d.data_header, body }
    }
}

/// Encodes `batches` (announced as `schema`) into Flight messages cut by [`split`]: the schema
/// first, then one message per piece.
pub fn encode<S>(
    schema: SchemaRef,
    batches: S,
    options: WireOptions,
) -> impl Stream<Item = Result<WireMessage, FlightError>> + Send + 'static
where
    S: Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
{
    let max = options.max_message_bytes;
    let wire_schema = hydrated_schema(&schema);
    let pieces =
        batches.map_ok(move |b| stream::iter(split(b, max).into_iter().map(Ok::<_, FlightError>))).try_flatten();
    let messages = match Encoder::new(&wire_schema, options.compression) {
        Ok(mut encoder) => {
            let head = encoder.schema(&wire_schema);
            let body = pieces.map(move |piece| encoder.batch(&hydrate(piece?, &wire_schema)?));
            stream::once(futures::future::ready(Ok(head))).chain(body).left_stream()
        }
        Err(e) => stream::once(futures::future::ready(Err(FlightError::Arrow(e)))).right_stream(),
    };
    match options.keepalive {
        Some(every) => with_keepalives(messages, every).left_stream(),
        None => messages.right_stream(),
    }
}

/// `messages` with an empty `FlightData` (no IPC message, no body, no metadata) inserted
/// whenever the next one takes longer than `every`; a proxy sees traffic.
fn with_keepalives<S>(messages: S, every: std::time::Duration) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream<Item = Result<WireMessage, FlightError>> + Send + 'static,
{
    stream::unfold(Box::pin(messages), move |mut messages| async move {
        // `next()` can be dropped by the timeout without losing an item.
        match tokio::time::timeout(every, messages.next()).await {
            Ok(Some(message)) => Some((message, messages)),
            Ok(None) => None,
            Err(_) => Some((Ok(WireMessage::default()), messages)),
        }
    })
}

/// One stream's IPC encoder: arrow-ipc's [`StreamEncoder`], which hands out the body as the
/// arrays' own buffers (compressed ones when asked) instead of copying them into one.
struct Encoder {
    options: IpcWriteOptions,
    inner: StreamEncoder,
}

impl Encoder {
    fn new(schema: &Schema, compression: Option<Compression>) -> Result<Self, arrow::error::ArrowError> {
        let options = IpcWriteOptions::default();
        // Compression needs IPC metadata V5, the default: this cannot fail.
        let options = options.clone().try_with_compression(compression.map(ipc)).unwrap_or(options);
        Ok(Self { inner: StreamEncoder::try_new_with_options(schema, options.clone())?, options })
    }

    fn schema(&self, schema: &Schema) -> WireMessage {
        FlightData::from(SchemaAsIpc::new(schema, &self.options)).into()
    }

    /// The message for `batch`, which holds no dictionaries ([`hydrate`]).
    fn batch(&mut self, batch: &RecordBatch) -> Result<WireMessage, FlightError> {
        record_batch_message(self.inner.encode(batch)?)
    }
}

/// The record batch message among the IPC stream messages `buffers` hold (the encoder puts
/// the schema message before the first one; batches are hydrated, so no dictionary message
/// comes with them). The header is copied out (a few hundred bytes); the body's buffers are
/// shared.
fn record_batch_message(buffers: Vec<Buffer>) -> Result<WireMessage, FlightError> {
    let broken = |why: &str| FlightError::ProtocolError(format!("the IPC encoder wrote {why}"));
    let mut rest = Pieces(buffers.into());
    let mut found = None;
    while let Some(prefix) = rest.contiguous(8) {
        let len = i32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if prefix[..4] != [0xff; 4] || len < 0 {
            return Err(broken("a message without its prefix"));
        }
        if len == 0 {
            break;
        }
        let header = rest.contiguous(len as usize).ok_or_else(|| broken("a truncated header"))?;
        let message =
            arrow::ipc::root_as_message(&header).map_err(|e| broken(&format!("an unreadable header: {e}")))?;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| broken("a negative body length"))?;
        let is_batch = message.header_type() == arrow::ipc::MessageHeader::RecordBatch;
        let body = rest.take(body_len).ok_or_else(|| broken("a truncated body"))?;
        if is_batch {
            let body = body.into_iter().filter(|b| !b.is_empty()).map(|b| Bytes::from_owner(Shared(b))).collect();
            found = Some(WireMessage { header: header.into(), body });
        }
    }
    found.ok_or_else(|| broken("no record batch"))
}

/// An Arrow buffer handed to the network as `Bytes`, without a copy.
struct Shared(Buffer);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Buffers taken from the front, whole or sliced.
struct Pieces(std::collections::VecDeque<Buffer>);

impl Pieces {
    /// The next `n` bytes as slices of the buffers holding them; `None` if fewer are left.
    fn take(&mut self, mut n: usize) -> Option<Vec<Buffer>> {
        let mut out = Vec::new();
        while n > 0 {
            let front = self.0.pop_front()?;
            if front.len() <= n {
                n -= front.len();
                out.push(front);
            } else {
                out.push(front.slice_with_length(0, n));
                self.0.push_front(front.slice(n));
                n = 0;
            }
        }
        Some(out)
    }

    /// The next `n` bytes, copied into one vector.
    fn contiguous(&mut self, n: usize) -> Option<Vec<u8>> {
        Some(self.take(n)?.iter().flat_map(|b| b.as_slice().iter().copied()).collect())
    }
}

/// `schema` with every dictionary type replaced by its value type, at any depth.
fn hydrated_schema(schema: &Schema) -> Schema {
    let fields: Vec<FieldRef> = schema.fields().iter().map(hydrated_field).collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

fn hydrated_field(f: &FieldRef) -> FieldRef {
    let t = hydrated_type(f.data_type());
    if &t == f.data_type() { Arc::clone(f) } else { Arc::new(Field::clone(f).with_data_type(t)) }
}

fn hydrated_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => hydrated_type(v),
        DataType::List(f) => DataType::List(hydrated_field(f)),
        DataType::LargeList(f) => DataType::LargeList(hydrated_field(f)),
        DataType::ListView(f) => DataType::ListView(hydrated_field(f)),
        DataType::LargeListView(f) => DataType::LargeListView(hydrated_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(hydrated_field(f), *n),
        DataType::Struct(fs) => DataType::Struct(fs.iter().map(hydrated_field).collect::<Fields>()),
        DataType::Map(f, sorted) => DataType::Map(hydrated_field(f), *sorted),
        other => other.clone(),
    }
}

/// `batch` with its columns cast to `schema`'s (hydrated) types where they differ.
fn hydrate(batch: RecordBatch, schema: &Schema) -> Result<RecordBatch, FlightError> {
    if batch.columns().iter().zip(schema.fields()).all(|(c, f)| c.data_type() == f.data_type()) {
        return Ok(batch);
    }
    let columns =
        batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() { Ok(Arc::clone(c)) } else { arrow::compute::cast(c, f.data_type()) }
            })
            .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(Arc::new(schema.clone()), columns, &options)?)
}

#[cfg(test)]
mod tests {
    use arrow::array::{DictionaryArray, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;
    use arrow_flight::decode::FlightRecordBatchStream;

    use super::*;

    fn batch(rows: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("comment", DataType::Utf8, true),
        ]));
        let ids = Int64Array::from_iter_values(0..rows as i64);
        let comments = StringArray::from_iter_values((0..rows).map(|i| format!("comment number {i:08}")));
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(comments)]).unwrap()
    }

    #[test]
    fn slices_of_a_large_buffer_are_measured_by_their_rows() {
        let big = batch(100_000);
        let slice = big.slice(10_000, 1_000);
        let whole: usize = slice.columns().iter().map(|c| c.get_buffer_memory_size()).sum();
        assert!(sliced_bytes(&slice) * 50 < whole, "{} vs {whole}", sliced_bytes(&slice));
        assert_eq!(split(slice, DEFAULT_MAX_MESSAGE_BYTES).len(), 1, "a small slice is one message");
    }

    #[test]
    fn pieces_respect_the_limit_and_keep_every_row_in_order() {
        let b = batch(100_000);
        let total = sliced_bytes(&b);
        let pieces = split(b.clone(), total / 4);
        assert!((4..=5).contains(&pieces.len()), "{} pieces", pieces.len());
        assert!(pieces.iter().all(|p| sliced_bytes(p) <= total / 4 + 64), "each piece within the limit");
        let joined = arrow::compute::concat_batches(&b.schema(), &pieces).unwrap();
        assert_eq!(joined, b);
    }

    #[test]
    fn view_slices_are_compacted() {
        let long: Vec<String> = (0..10_000).map(|i| format!("a string longer than twelve bytes {i}")).collect();
        // Compacted once, as an array read from a file is: no slack in its buffers.
        let views = StringViewArray::from_iter_values(long.iter()).gc();
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8View, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(views)]).unwrap();
        let whole = split(b.clone(), usize::MAX).remove(0);
        assert!(Arc::ptr_eq(whole.column(0), b.column(0)), "a compact view column is sent as it is, uncopied");
        let piece = split(b.slice(0, 10), DEFAULT_MAX_MESSAGE_BYTES).remove(0);
        assert!(piece.column(0).get_buffer_memory_size() < 4096, "{}", piece.column(0).get_buffer_memory_size());
    }

    #[tokio::test]
    async fn message_bodies_are_the_batches_own_buffers() {
        let b = batch(1_000);
        let messages: Vec<WireMessage> =
            encode(b.schema(), stream::iter([Ok(b.clone())]), WireOptions::default()).try_collect().await.unwrap();
        let ids = b.column(0).to_data().buffers()[0].as_ptr();
        assert!(messages[1].body.iter().any(|piece| piece.as_ptr() == ids), "the id column is sent uncopied");
        let flight = FlightData::from(messages[1].clone());
        assert_eq!(flight.data_body.len(), messages[1].body_len());
    }

    #[tokio::test]
    async fn compressed_streams_round_trip() {
        use arrow::array::Int64Array;
        use arrow_flight::decode::FlightRecordBatchStream;
        let b = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from_iter_values((0..100_000).map(|i| i % 7))) as ArrayRef,
        )])
        .unwrap();
        for compression in [Compression::Lz4, Compression::Zstd] {
            let options = WireOptions { compression: Some(compression), ..WireOptions::default() };
            let messages: Vec<FlightData> = encode(b.schema(), stream::iter([Ok(b.clone())]), options)
                .map_ok(FlightData::from)
                .try_collect()
                .await
                .unwrap();
            let sent: usize = messages.iter().map(|m| m.data_body.len()).sum();
            assert!(sent < b.get_array_memory_size() / 4, "{compression:?} sent {sent} bytes");
            let decoded: Vec<RecordBatch> =
                FlightRecordBatchStream::new_from_flight_data(stream::iter(messages.into_iter().map(Ok)))
                    .try_collect()
                    .await
                    .unwrap();
            assert_eq!(decoded, vec![b.clone()]);
        }
    }

    #[tokio::test]
    async fn encoded_stream_round_trips_with_one_message_per_small_batch() {
        let batches: Vec<RecordBatch> = (0..5).map(|i| batch(1_000 + i)).collect();
        let input = stream::iter(batches.clone().into_iter().map(Ok));
        let messages: Vec<FlightData> = encode(batches[0].schema(), input, WireOptions::default())
            .map_ok(FlightData::from)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(messages.len(), 1 + 5, "the schema, then one message per batch");
        let decoded: Vec<RecordBatch> =
            FlightRecordBatchStream::new_from_flight_data(stream::iter(messages.into_iter().map(Ok)))
                .try_collect()
                .await
                .unwrap();
        assert_eq!(decoded, batches);
    }

    #[tokio::test]
    async fn dictionary_columns_are_sent_as_their_values() {
        let keys: DictionaryArray<Int32Type> = vec!["a", "b", "a", "c"].into_iter().collect();
        let schema = Arc::new(Schema::new(vec![Field::new("d", keys.data_type().clone(), true)]));
        let b = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(keys)]).unwrap();
        let messages: Vec<FlightData> = encode(schema, stream::iter([Ok(b.clone()), Ok(b)]), WireOptions::default())
            .map_ok(FlightData::from)
            .try_collect()
            .await
            .unwrap();
        let decoded: Vec<RecordBatch> =
            FlightRecordBatchStream::new_from_flight_data(stream::iter(messages.into_iter().map(Ok)))
                .try_collect()
                .await
                .unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[1].schema().field(0).data_type(), &DataType::Utf8);
        let values = decoded[1].column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(values.iter().collect::<Vec<_>>(), vec![Some("a"), Some("b"), Some("a"), Some("c")]);
    }
}
