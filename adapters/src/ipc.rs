//! Arrow IPC files read one record batch at a time.
//!
//! DataFusion's own IPC source fetches every byte range of its partition in one request before it
//! decodes the first batch: a 1 GB file split four ways holds 250 MB per stream in memory and
//! makes the client wait for all of it. [`BlockwiseArrowFormat`] reads the footer, then each
//! record batch's block on its own, when the next batch is asked for, so the first batch leaves
//! after one block's read and a stream holds one block at a time. It works over
//! any `object_store`, and decodes each file's columns by name into the table's declared types
//! (view columns cast to classic ones when the table says so), so a table may declare the types
//! its clients read whatever the files store.
//!
//! Files in the IPC *stream* format (no footer) cannot be split or read by block: they are read
//! whole and decoded in order, as DataFusion does.
//!
//! ## Validation, once
//! A domain's files are input like any other: every value is validated before anything reads it.
//! Arrow's decoder validates a view column string by string, and the cast to a classic column
//! then copies it string by string again. Here the decoder hands over the columns unvalidated
//! (the one `unsafe` call in meshgate, [`unvalidated`]), and [`conform`] validates every column
//! before use: view columns are copied into classic ones with every view's bounds checked and
//! the result validated as a whole by the classic array's constructor (one pass over contiguous
//! bytes); every other column is validated fully by Arrow. A batch whose layout is so broken that
//! Arrow's constructors panic is reported as a corrupt file.

use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryViewArray, GenericByteViewArray, RecordBatch, RecordBatchOptions, StringArray,
    StringViewArray,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{ByteViewType, DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::Block;
use arrow::ipc::reader::{FileDecoder, StreamReader, read_footer_length};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, GetExt, Statistics};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::arrow::ArrowFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileOpenFuture, FileOpener, FileScanConfig, FileSource};
use datafusion::datasource::projection::{ProjectionOpener, SplitProjection};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{ExecutionPlan, apply_expression_roots};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt};

/// Blocks fetched at once per stream: one, so a stream that is not asked for its next batch
/// (its client is slow, its budget spent) holds no block beyond the batch it gave; the
/// partitions of a read fetch in parallel.
const READ_AHEAD: usize = 1;

/// Bytes at the end of an IPC file: footer length (4) and the magic `ARROW1` (6).
const TRAILER: u64 = 10;

/// The Arrow IPC file format, read block by block (see the module documentation). Schema
/// inference is DataFusion's.
#[derive(Debug, Default)]
pub struct BlockwiseArrowFormat;

#[async_trait]
impl FileFormat for BlockwiseArrowFormat {
    fn get_ext(&self) -> String {
        ArrowFormat.get_ext()
    }

    fn get_ext_with_compression(&self, compression: &FileCompressionType) -> Result<String> {
        ArrowFormat.get_ext_with_compression(compression)
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        None
    }

    async fn infer_schema(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        objects: &[object_store::ObjectMeta],
    ) -> Result<SchemaRef> {
        ArrowFormat.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn Session,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &object_store::ObjectMeta,
    ) -> Result<Statistics> {
        ArrowFormat.infer_stats(state, store, table_schema, object).await
    }

    async fn create_physical_plan(&self, _state: &dyn Session, conf: FileScanConfig) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(DataSourceExec::from_data_source(conf))
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        Arc::new(BlockwiseSource::new(table_schema))
    }
}

impl GetExt for BlockwiseArrowFormat {
    fn get_ext(&self) -> String {
        FileFormat::get_ext(self)
    }
}

/// The [`FileSource`] behind [`BlockwiseArrowFormat`].
#[derive(Clone)]
struct BlockwiseSource {
    table_schema: TableSchema,
    projection: SplitProjection,
    metrics: ExecutionPlanMetricsSet,
}

impl BlockwiseSource {
    fn new(table_schema: TableSchema) -> Self {
        let projection = SplitProjection::unprojected(&table_schema);
        Self { table_schema, projection, metrics: ExecutionPlanMetricsSet::new() }
    }
}

impl FileSource for BlockwiseSource {
    fn create_file_opener(
        &self,
        store: Arc<dyn ObjectStore>,
        _config: &FileScanConfig,
        _partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        let file_schema = self.table_schema.file_schema();
        let want = Arc::new(file_schema.project(&self.projection.file_indices)?);
        ProjectionOpener::try_new(self.projection.clone(), Arc::new(BlockOpener { store, want }), file_schema)
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, _batch_size: usize) -> Arc<dyn FileSource> {
        // Batches are served as the file holds them; the gateway cuts messages by bytes.
        Arc::new(self.clone())
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn try_pushdown_projection(&self, projection: &ProjectionExprs) -> Result<Option<Arc<dyn FileSource>>> {
        let merged = self.projection.source.try_merge(projection)?;
        let mut source = self.clone();
        source.projection = SplitProjection::new(self.table_schema.file_schema(), &merged);
        Ok(Some(Arc::new(source)))
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        apply_expression_roots(self.projection.source.iter(), f)
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        "arrow"
    }
}

/// Opens one file (or the byte range of it a partition owns) and yields its batches with the
/// columns of `want`, in `want`'s types.
struct BlockOpener {
    store: Arc<dyn ObjectStore>,
    want: SchemaRef,
}

impl FileOpener for BlockOpener {
    fn open(&self, file: PartitionedFile) -> Result<FileOpenFuture> {
        let store = Arc::clone(&self.store);
        let want = Arc::clone(&self.want);
        Ok(Box::pin(async move {
            let location = file.object_meta.location.clone();
            let size = file.object_meta.size;
            let range = file.range.as_ref().map(|r| r.start as u64..r.end as u64);
            let tail =
                if size >= TRAILER { Some(fetch(&store, &location, Some(size - TRAILER..size)).await?) } else { None };
            match tail {
                Some(tail) if tail.ends_with(b"ARROW1") => open_file(store, location, size, &tail, range, want).await,
                _ => open_stream(store, location, want).await,
            }
        }))
    }
}

/// The blocks of an IPC file (footer format) streamed one by one.
async fn open_file(
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
    tail: &Bytes,
    range: Option<Range<u64>>,
    want: SchemaRef,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    let trailer: [u8; 10] = tail[..].try_into().map_err(|_| corrupt(&location, "its trailer is short"))?;
    let footer_len = read_footer_length(trailer).map_err(|e| corrupt(&location, &e.to_string()))? as u64;
    if footer_len + TRAILER > size {
        return Err(corrupt(&location, "its footer is longer than the file"));
    }
    let footer_bytes = fetch(&store, &location, Some(size - TRAILER - footer_len..size - TRAILER)).await?;
    let footer =
        arrow::ipc::root_as_footer(&footer_bytes).map_err(|e| corrupt(&location, &format!("its footer: {e}")))?;
    let stored = arrow::ipc::convert::fb_to_schema(footer.schema().ok_or_else(|| corrupt(&location, "no schema"))?);
    let columns = columns_by_name(&stored, &want, &location)?;
    let mut decoder = unvalidated(FileDecoder::new(Arc::new(stored), footer.version()).with_projection(columns));
    for block in footer.dictionaries().iter().flatten() {
        let buffer = fetch_block(&store, &location, block).await?;
        decoder.read_dictionary(block, &buffer).map_err(|e| corrupt(&location, &e.to_string()))?;
    }
    let blocks: Vec<Block> = footer
        .recordBatches()
        .iter()
        .flatten()
        .filter(|b| range.as_ref().is_none_or(|r| r.contains(&(b.offset() as u64))))
        .copied()
        .collect();
    let name = location_name(&location);
    let reads = futures::stream::iter(blocks).map(move |block| {
        let store = Arc::clone(&store);
        let location = location.clone();
        async move { fetch_block(&store, &location, &block).await.map(|buffer| (block, buffer)) }
    });
    Ok(reads
        .buffered(READ_AHEAD)
        .try_filter_map(move |(block, buffer)| {
            let decoded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.read_record_batch(&block, &buffer)));
            let batch = match decoded {
                Ok(Ok(Some(b))) => conform(b, &want).map(Some).map_err(|e| corrupt_named(&name, &e.to_string())),
                Ok(Ok(None)) => Ok(None),
                Ok(Err(e)) => Err(corrupt_named(&name, &e.to_string())),
                Err(_) => Err(corrupt_named(&name, "a record batch does not match its own layout")),
            };
            futures::future::ready(batch)
        })
        .boxed())
}

/// A file in the IPC stream format (no footer), read whole and decoded in order.
async fn open_stream(
    store: Arc<dyn ObjectStore>,
    location: Path,
    want: SchemaRef,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    let bytes = fetch(&store, &location, None).await?;
    let reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| corrupt(&location, &e.to_string()))?;
    let columns = columns_by_name(&reader.schema(), &want, &location)?;
    // The stream reader validates as it decodes; `conform` validates again, cheaply next to the
    // copy it saves for view columns.
    let batches = reader.map(move |b| conform(b?.project(&columns)?, &want).map_err(DataFusionError::from));
    Ok(futures::stream::iter(batches).boxed())
}

/// Where each column of `want` is in a file's `stored` schema.
fn columns_by_name(stored: &Schema, want: &Schema, location: &Path) -> Result<Vec<usize>> {
    want.fields()
        .iter()
        .map(|f| {
            stored.index_of(f.name()).map_err(|_| {
                DataFusionError::Execution(format!(
                    "file `{}` has no column `{}`; every file of a product must hold its columns",
                    file_name(location),
                    f.name()
                ))
            })
        })
        .collect()
}

/// `decoder` set not to validate what it decodes: every batch it yields must go through
/// [`conform`] before any value in it is read.
#[allow(unsafe_code)]
fn unvalidated(decoder: FileDecoder) -> FileDecoder {
    // SAFETY: batches from this decoder are only ever passed to `conform` (see `open_file`), which
    // validates every column (fully, or by rebuilding it through validating constructors) before
    // returning it, and reads nothing from a column before validating it, except the raw views and
    // buffers of view columns, which it reads with bounds checks.
    unsafe { decoder.with_skip_validation(true) }
}

/// `batch` (columns in `want`'s order), validated, with each column cast to `want`'s type where
/// the file stores another (view types read as classic ones). See the module documentation.
fn conform(batch: RecordBatch, want: &SchemaRef) -> std::result::Result<RecordBatch, ArrowError> {
    let rows = batch.num_rows();
    let columns = batch
        .columns()
        .iter()
        .zip(want.fields())
        .map(|(c, f)| {
            if c.len() != rows {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "column `{}` holds {} values in a batch of {rows} rows",
                    f.name(),
                    c.len()
                )));
            }
            match (c.data_type(), f.data_type()) {
                (DataType::Utf8View, DataType::Utf8) => {
                    let (offsets, values, nulls) =
                        view_parts(c.as_any().downcast_ref::<StringViewArray>().expect("Utf8View"))?;
                    Ok(Arc::new(StringArray::try_new(offsets, values, nulls)?) as ArrayRef)
                }
                (DataType::BinaryView, DataType::Binary) => {
                    let (offsets, values, nulls) =
                        view_parts(c.as_any().downcast_ref::<BinaryViewArray>().expect("BinaryView"))?;
                    Ok(Arc::new(BinaryArray::try_new(offsets, values, nulls)?) as ArrayRef)
                }
                (stored, wanted) => {
                    c.to_data().validate_full()?;
                    if stored == wanted { Ok(Arc::clone(c)) } else { arrow::compute::cast(c, wanted) }
                }
            }
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(Arc::clone(want), columns, &options)
}

/// The offsets, values and nulls of the classic array holding `array`'s values, read from its raw
/// views with every view's bounds checked. The caller's validating constructor checks the rest
/// (UTF-8 for strings, over the whole value buffer at once).
fn view_parts<T: ByteViewType + ?Sized>(
    array: &GenericByteViewArray<T>,
) -> std::result::Result<(OffsetBuffer<i32>, Buffer, Option<arrow::buffer::NullBuffer>), ArrowError> {
    let data = array.to_data();
    data.validate()?;
    data.validate_nulls()?;
    let nulls = array.nulls();
    let buffers = array.data_buffers();
    let mut offsets = Vec::with_capacity(array.len() + 1);
    offsets.push(0i32);
    let inline: usize = array.views().iter().map(|v| (*v as u32 as usize).min(12)).sum();
    let mut values: Vec<u8> = Vec::with_capacity(inline + buffers.iter().map(|b| b.len()).sum::<usize>());
    let out_of_bounds =
        |i: usize| ArrowError::InvalidArgumentError(format!("view {i} points outside its data buffers"));
    for (i, view) in array.views().iter().enumerate() {
        if nulls.is_none_or(|n| n.is_valid(i)) {
            let len = *view as u32 as usize;
            if len <= 12 {
                values.extend_from_slice(&view.to_le_bytes()[4..4 + len]);
            } else {
                let buffer = buffers.get((*view >> 64) as u32 as usize).ok_or_else(|| out_of_bounds(i))?;
                let start = (*view >> 96) as u32 as usize;
                values.extend_from_slice(buffer.get(start..start + len).ok_or_else(|| out_of_bounds(i))?);
            }
        }
        let end = i32::try_from(values.len())
            .map_err(|_| ArrowError::InvalidArgumentError("a batch holds over 2 GiB of text in one column".into()))?;
        offsets.push(end);
    }
    Ok((OffsetBuffer::new(offsets.into()), Buffer::from_vec(values), nulls.cloned()))
}

/// The bytes of a block: its message header and body.
fn span(block: &Block) -> Range<u64> {
    let start = block.offset() as u64;
    start..start + block.metaDataLength() as u64 + block.bodyLength() as u64
}

/// `range` of the object at `location` (all of it when `None`). A store's errors name server
/// paths: they are logged, and the caller is told only the file's name.
async fn fetch(store: &Arc<dyn ObjectStore>, location: &Path, range: Option<Range<u64>>) -> Result<Bytes> {
    let read = match range {
        Some(range) => store.get_range(location, range).await,
        None => match store.get(location).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        },
    };
    read.map_err(|e| {
        tracing::warn!(%location, error = %e, "reading an Arrow IPC file failed");
        DataFusionError::Execution(format!("file `{}` cannot be read now", file_name(location)))
    })
}

/// Alignment of a block's body in memory: Arrow lays out buffers at multiples of 8 or 64 bytes
/// from the body's start, so a body starting at a multiple of 64 lets the decoder use every
/// buffer where it lies (a misaligned one, e.g. of 16-byte decimals, is copied).
const BODY_ALIGNMENT: usize = 64;

/// A block (message header and body) of the file at `location`. Local files are read straight
/// into a buffer whose body is [`BODY_ALIGNMENT`]-aligned, without zeroing it first; other stores'
/// bytes are used as they arrive.
async fn fetch_block(store: &Arc<dyn ObjectStore>, location: &Path, block: &Block) -> Result<Buffer> {
    let range = span(block);
    let header = block.metaDataLength() as usize;
    let failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(%location, error = %e, "reading an Arrow IPC file failed");
        DataFusionError::Execution(format!("file `{}` cannot be read now", file_name(location)))
    };
    let options = GetOptions { range: Some(GetRange::Bounded(range.clone())), ..Default::default() };
    let got = store.get_opts(location, options).await.map_err(|e| failed(&e))?;
    match got.payload {
        GetResultPayload::File(file, _) => {
            let read = tokio::task::spawn_blocking(move || read_aligned(&file, range, header)).await;
            match read {
                Ok(Ok(buffer)) => Ok(buffer),
                Ok(Err(e)) => Err(failed(&e)),
                Err(e) => Err(failed(&e)),
            }
        }
        GetResultPayload::Stream(_) => Ok(Buffer::from(got.bytes().await.map_err(|e| failed(&e))?)),
    }
}

/// `range` of `file`, placed so that the byte at `range.start + header` is
/// [`BODY_ALIGNMENT`]-aligned.
fn read_aligned(file: &std::fs::File, range: Range<u64>, header: usize) -> std::io::Result<Buffer> {
    use std::io::{Read, Seek, SeekFrom};
    let len = (range.end - range.start) as usize;
    let mut bytes: Vec<u8> = Vec::with_capacity(len + BODY_ALIGNMENT);
    let misalignment = (bytes.as_ptr() as usize + header) % BODY_ALIGNMENT;
    let pad = (BODY_ALIGNMENT - misalignment) % BODY_ALIGNMENT;
    bytes.resize(pad, 0);
    let mut file = file;
    file.seek(SeekFrom::Start(range.start))?;
    // `read_to_end` fills the spare capacity without zeroing it first.
    let read = file.take(len as u64).read_to_end(&mut bytes)?;
    if read != len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ends inside a block"));
    }
    Ok(Buffer::from_vec(bytes).slice(pad))
}

fn file_name(location: &Path) -> &str {
    location.filename().unwrap_or("?")
}

fn location_name(location: &Path) -> String {
    file_name(location).to_string()
}

fn corrupt(location: &Path, why: &str) -> DataFusionError {
    corrupt_named(file_name(location), why)
}

fn corrupt_named(name: &str, why: &str) -> DataFusionError {
    DataFusionError::Execution(format!("file `{name}` is not a readable Arrow IPC file: {why}"))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringViewArray};
    use arrow::datatypes::{DataType, Field};
    use arrow::ipc::writer::{FileWriter, StreamWriter};
    use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn batches(n: usize) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8View, true),
        ]));
        (0..n)
            .map(|i| {
                let ids = Int64Array::from_iter_values((0..1000).map(|j| (i * 1000 + j) as i64));
                let names =
                    StringViewArray::from_iter((0..1000).map(|j| Some(format!("a fairly long name number {j}"))));
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ids), Arc::new(names)]).unwrap()
            })
            .collect()
    }

    async fn table(dir: &std::path::Path, declared: Option<SchemaRef>) -> (SessionContext, Arc<ListingTable>) {
        let ctx = SessionContext::new();
        let url = ListingTableUrl::parse(format!("{}/", dir.display())).unwrap();
        let options = ListingOptions::new(Arc::new(BlockwiseArrowFormat)).with_file_extension(".arrow");
        let mut config =
            ListingTableConfig::new(url).with_listing_options(options).infer_schema(&ctx.state()).await.unwrap();
        if let Some(s) = declared {
            config = config.with_schema(s);
        }
        (ctx, Arc::new(ListingTable::try_new(config).unwrap()))
    }

    /// Writes `batches` as an Arrow IPC file at `path`.
    fn write_file(path: &std::path::Path, batches: &[RecordBatch]) {
        let mut w = FileWriter::try_new(std::fs::File::create(path).unwrap(), &batches[0].schema()).unwrap();
        batches.iter().for_each(|b| w.write(b).unwrap());
        w.finish().unwrap();
    }

    #[tokio::test]
    async fn reads_every_block_of_split_files_into_declared_types() {
        let dir = tempfile::tempdir().unwrap();
        let data = batches(40);
        write_file(&dir.path().join("a.arrow"), &data);
        let mut w =
            StreamWriter::try_new(std::fs::File::create(dir.path().join("b.arrow")).unwrap(), &data[0].schema())
                .unwrap();
        data[..3].iter().for_each(|b| w.write(b).unwrap());
        w.finish().unwrap();

        let declared = crate::StringTypes::Classic.apply(&data[0].schema());
        let (ctx, t) = table(dir.path(), declared).await;
        // Small files are split into byte ranges too: every block is read exactly once.
        let ctx = SessionContext::new_with_config(
            ctx.copied_config().with_target_partitions(4).with_repartition_file_min_size(1),
        );
        ctx.register_table("t", t).unwrap();
        let df =
            ctx.sql("SELECT count(*), count(DISTINCT id), max(name), min(arrow_typeof(name)) FROM t").await.unwrap();
        let out = arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap()).unwrap().to_string();
        assert!(out.contains("| 43000    | 40000"), "{out}");
        assert!(out.contains("| Utf8 "), "{out}");
        let plan = ctx.sql("EXPLAIN SELECT * FROM t").await.unwrap().collect().await.unwrap();
        let plan = arrow::util::pretty::pretty_format_batches(&plan).unwrap().to_string();
        assert!(plan.contains("file_groups={4 groups"), "{plan}");
    }

    #[tokio::test]
    async fn a_file_without_a_declared_column_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = batches(1);
        write_file(&dir.path().join("a.arrow"), &data);
        let declared = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("x", DataType::Utf8, true),
        ]));
        let (ctx, t) = table(dir.path(), Some(declared)).await;
        ctx.register_table("t", t).unwrap();
        let e = ctx.sql("SELECT x FROM t").await.unwrap().collect().await.unwrap_err().to_string();
        assert!(e.contains("file `a.arrow` has no column `x`"), "{e}");
        assert!(!e.contains(&dir.path().display().to_string()), "no server paths: {e}");
    }

    #[tokio::test]
    async fn a_truncated_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let data = batches(2);
        let path = dir.path().join("a.arrow");
        write_file(&path, &data);
        let (ctx, t) = table(dir.path(), None).await;
        ctx.register_table("t", t).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // Keep the trailer, break the footer length.
        let n = bytes.len();
        bytes[n - 10..n - 6].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let e = ctx.sql("SELECT * FROM t").await.unwrap().collect().await.unwrap_err().to_string();
        assert!(e.contains("a.arrow"), "{e}");
    }

    /// A file whose bytes were tampered with: one long string made invalid UTF-8, or its view
    /// pointed outside the data. Neither may be served, in classic or view types.
    #[tokio::test]
    async fn tampered_text_is_refused_not_served() {
        let long = "Z".repeat(20);
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8View, false)]));
        let column = StringViewArray::from_iter_values(["short", long.as_str(), "x"]);
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(column)]).unwrap();
        let mut view = [0u8; 16];
        view[..4].copy_from_slice(&20u32.to_le_bytes());
        view[4..8].copy_from_slice(b"ZZZZ");
        for tamper in ["utf8", "bounds"] {
            for declared in [crate::StringTypes::Classic.apply(&schema), None] {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("a.arrow");
                write_file(&path, std::slice::from_ref(&batch));
                let mut bytes = std::fs::read(&path).unwrap();
                let find = |bytes: &[u8], what: &[u8]| bytes.windows(what.len()).position(|w| w == what).unwrap();
                match tamper {
                    "utf8" => {
                        let at = find(&bytes, long.as_bytes());
                        bytes[at + 10] = 0xff;
                    }
                    _ => {
                        let at = find(&bytes, &view[..12]);
                        bytes[at + 12..at + 16].copy_from_slice(&1000u32.to_le_bytes());
                    }
                }
                std::fs::write(&path, &bytes).unwrap();
                let classic = declared.is_some();
                let (ctx, t) = table(dir.path(), declared).await;
                ctx.register_table("t", t).unwrap();
                let e = ctx.sql("SELECT s FROM t").await.unwrap().collect().await.unwrap_err().to_string();
                assert!(
                    e.contains("a.arrow") && e.contains("not a readable Arrow IPC file"),
                    "{tamper} {classic}: {e}"
                );
            }
        }
    }
}
