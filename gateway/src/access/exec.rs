//! Where plans run: a runtime of their own, off the one that accepts and answers gRPC calls.
//!
//! Planning and execution are CPU work that can take seconds (a large sort, a Parquet decode);
//! on the accept runtime they would delay every other caller's Handshake and GetFlightInfo. The
//! [`Executor`] runs them on its own threads and hands batches back to the stream sent to the
//! client.
//!
//! ## Memory: a budget per stream and one for all
//! What a read holds is bounded however slow its client ([`Budget`]). Each output partition of
//! the plan is pumped by its own task; before it reads the next batch from storage, the task
//! takes room for it (the size of its previous batch; for the first, a guess from the plan's
//! columns, [`first_guess`]) from the stream's budget
//! (`--stream-budget`) and from the budget all streams share (`--streams-budget`), and waits
//! while either is spent. The room travels with the batch and is given back when the stream
//! asks for the next one: by then every message of the batch has been handed to the connection
//! (whose send queue, holding at most one message beyond the flow-control window, may still
//! reference it until written). A batch is charged what it pins: every distinct buffer it
//! references, whole (a column sliced from a larger read buffer keeps all of it alive). A task
//! waits only while it holds nothing, so streams never wait on each other in a cycle; when a
//! batch turns out larger than the room taken it takes the rest if free and is otherwise let
//! through (bounded by one batch per partition).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use arrow::array::{ArrayData, RecordBatch};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlanProperties;
use datafusion::prelude::DataFrame;
use futures::{Stream, StreamExt};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{Error, Result};
use crate::audit::AuditToken;
use crate::governance::{check_guarded, columns_read};
use crate::metrics::StreamMetrics;

/// Default `--stream-budget`: what one stream's batches may pin between storage and the network.
pub(crate) const DEFAULT_STREAM_BUDGET: usize = 64 << 20;

/// Default `--streams-budget`: what the batches of every stream together may pin.
pub(crate) const DEFAULT_STREAMS_BUDGET: usize = 512 << 20;

/// Bytes a value of a variable-width column (a string, a binary) is guessed to take, with its
/// offset or view, when a partition's first batch is sized before it is read ([`first_guess`]).
const VARIABLE_WIDTH_GUESS: usize = 32;

/// Budgets are counted in KiB (a semaphore's permits).
const UNIT: usize = 1024;

/// Memory the batches of reads may pin between storage and the network: per stream, and for
/// all streams together.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    per_stream: usize,
    shared: Arc<Semaphore>,
    shared_bytes: usize,
}

impl Budget {
    /// `per_stream` bytes for each stream, `shared` bytes for all.
    pub(crate) fn new(per_stream: usize, shared: usize) -> Self {
        let shared_units = (shared / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            per_stream: per_stream.max(UNIT),
            shared: Arc::new(Semaphore::new(shared_units)),
            shared_bytes: shared_units * UNIT,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(DEFAULT_STREAM_BUDGET, DEFAULT_STREAMS_BUDGET)
    }
}

/// The bytes `batch` keeps alive: every distinct buffer it references, at its capacity.
pub(crate) fn pinned_bytes(batch: &RecordBatch) -> usize {
    fn walk(data: &ArrayData, seen: &mut HashSet<(usize, usize)>, total: &mut usize) {
        let buffers = data.buffers().iter().chain(data.nulls().map(|n| n.buffer()));
        for b in buffers {
            if seen.insert((b.data_ptr().as_ptr() as usize, b.capacity())) {
                *total += b.capacity();
            }
        }
        for child in data.child_data() {
            walk(child, seen, total);
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for c in batch.columns() {
        walk(&c.to_data(), &mut seen, &mut total);
    }
    total
}

/// Room to take for a partition's first batch, before its size is known: `batch_rows` rows of
/// `schema`, fixed-width columns at their width and variable-width ones at
/// [`VARIABLE_WIDTH_GUESS`] a value. Enough for the batches of a plain scan, so that many
/// streams starting at once do not each read a batch the shared budget has no room for; small
/// for an aggregation's few columns, so its long first poll does not hold room it will not use.
pub(crate) fn first_guess(schema: &arrow::datatypes::Schema, batch_rows: usize) -> usize {
    fn width(t: &arrow::datatypes::DataType) -> usize {
        use arrow::datatypes::DataType as T;
        match t {
            T::Null => 0,
            T::Boolean => 1,
            T::Dictionary(key, _) => width(key),
            T::Struct(fields) => fields.iter().map(|f| width(f.data_type())).sum(),
            T::FixedSizeList(f, n) => width(f.data_type()) * (*n).max(0) as usize,
            T::FixedSizeBinary(n) => (*n).max(0) as usize,
            t => t.primitive_width().unwrap_or(VARIABLE_WIDTH_GUESS),
        }
    }
    schema.fields().iter().map(|f| width(f.data_type())).sum::<usize>().max(1).saturating_mul(batch_rows)
}

/// Room taken from a stream's budget and the shared one for one batch.
#[derive(Debug)]
struct Room {
    stream: Option<OwnedSemaphorePermit>,
    shared: Option<OwnedSemaphorePermit>,
}

impl Room {
    /// Waits for `units` from both budgets (taking none while waiting for the other).
    async fn take(stream: &Arc<Semaphore>, shared: &Arc<Semaphore>, units: u32) -> Option<Self> {
        let stream = Arc::clone(stream).acquire_many_owned(units).await.ok()?;
        let shared = Arc::clone(shared).acquire_many_owned(units).await.ok()?;
        Some(Self { stream: Some(stream), shared: Some(shared) })
    }

    /// Fits the room to `units`: gives back what the batch does not need, and takes what it
    /// needs beyond the room where the budgets have it free now (a batch is never held back
    /// for it).
    fn fit(&mut self, stream: &Arc<Semaphore>, shared: &Arc<Semaphore>, units: u32) {
        for (held, from) in [(&mut self.stream, stream), (&mut self.shared, shared)] {
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
            if units < have {
                if let Some(p) = held.as_mut() {
                    drop(p.split((have - units) as usize));
                }
            } else if units > have
                && let Ok(more) = Arc::clone(from).try_acquire_many_owned(units - have)
            {
                match held {
                    Some(p) => p.merge(more),
                    None => *held = Some(more),
                }
            }
        }
    }
}

/// Merges `partitions` into one stream, each pumped by its own task on `handle` within
/// `budget`, taking `first` bytes of room for each partition's first batch ([`first_guess`]).
/// Dropping the stream stops the tasks.
pub(crate) fn budgeted(
    handle: &Handle,
    partitions: Vec<SendableRecordBatchStream>,
    budget: &Budget,
    first: usize,
) -> impl Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static + use<> {
    let count = partitions.len().max(1);
    // Each partition may hold its share of the stream's budget, so partitions of one stream
    // never wait on each other; one batch larger than a share is charged the share.
    let per_stream = budget.per_stream.min(budget.shared_bytes);
    let cap = ((per_stream / count) / UNIT).max(1) as u32;
    let stream_units = Arc::new(Semaphore::new((per_stream / UNIT).max(count)));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Result<RecordBatch, DataFusionError>, Room)>();
    for mut partition in partitions {
        let (tx, stream_units, shared) = (tx.clone(), Arc::clone(&stream_units), Arc::clone(&budget.shared));
        handle.spawn(async move {
            let mut guess = (first.div_ceil(UNIT).min(u32::MAX as usize) as u32).clamp(1, cap);
            loop {
                let room = tokio::select! {
                    // The reader went away: stop reading storage.
                    () = tx.closed() => return,
                    room = Room::take(&stream_units, &shared, guess) => room,
                };
                let Some(mut room) = room else { return };
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = partition.next() => next,
                };
                match next {
                    Some(Ok(batch)) => {
                        let units = (pinned_bytes(&batch).div_ceil(UNIT) as u32).clamp(1, cap);
                        room.fit(&stream_units, &shared, units);
                        guess = units;
                        if tx.send((Ok(batch), room)).is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send((Err(e), room));
                        return;
                    }
                    None => return,
                }
            }
        });
    }
    // The room of the batch last handed out is given back when the next one is asked for:
    // by then the encoder has sent every message of it.
    futures::stream::unfold((rx, None::<Room>), |(mut rx, last)| async move {
        drop(last);
        let (item, room) = rx.recv().await?;
        Some((item, (rx, Some(room))))
    })
}

/// A multi-threaded runtime for planning and executing reads.
#[derive(Debug)]
pub(crate) struct Executor {
    handle: Handle,
    runtime: Option<Runtime>,
}

impl Executor {
    /// A runtime with `threads` workers (0: one per core).
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.thread_name("meshgate-exec").enable_all();
        if threads > 0 {
            builder.worker_threads(threads);
        }
        let runtime = builder.build()?;
        Ok(Self { handle: runtime.handle().clone(), runtime: Some(runtime) })
    }

    /// Runs `work` on the execution runtime and waits for it.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        match self.handle.spawn(work).await {
            Ok(out) => out,
            Err(e) => Err(Error::Internal(format!("a planning task failed: {e}"))),
        }
    }

    /// Builds the physical plan of `df` (checking, when `guarded`, that every scan kept its
    /// governance guard) and starts it; batches arrive through the returned stream, with the
    /// columns the plan reads from each product. Dropping the stream stops the execution.
    pub(crate) async fn start(
        &self,
        df: DataFrame,
        guarded: bool,
        label: String,
        pinned: Option<Vec<meshgate_proto::v1::PinnedFile>>,
        budget: &Budget,
    ) -> Result<(impl Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static, Vec<(String, Vec<String>)>)>
    {
        let (ready, started) = tokio::sync::oneshot::channel::<
            Result<(Vec<SendableRecordBatchStream>, Vec<(String, Vec<String>)>, usize)>,
        >();
        self.handle.spawn(async move {
            let task = df.task_ctx();
            let plan = match df.create_physical_plan().await {
                Ok(p) => p,
                Err(e) => return drop(ready.send(Err(Error::execution(label, e)))),
            };
            // A shard reads exactly the files its ticket pins.
            let plan = match pinned {
                Some(files) => match super::shard::pin(plan, &files, &label) {
                    Ok(p) => p,
                    Err(e) => return drop(ready.send(Err(e))),
                },
                None => plan,
            };
            if guarded && let Err(e) = check_guarded(&plan) {
                tracing::error!(error = %e, read = %label, "a plan was refused: a scan is not under a governance guard");
                return drop(ready.send(Err(Error::Internal("the plan could not be verified as governed".into()))));
            }
            let read = columns_read(&plan);
            let first = first_guess(&plan.schema(), task.session_config().batch_size());
            let task = Arc::new(task);
            let partitions = (0..plan.output_partitioning().partition_count())
                .map(|p| plan.execute(p, Arc::clone(&task)))
                .collect::<datafusion::error::Result<Vec<_>>>();
            drop(ready.send(match partitions {
                Ok(p) => Ok((p, read, first)),
                Err(e) => Err(Error::execution(label, e)),
            }));
        });
        match started.await {
            Ok(Ok((partitions, read, first))) => Ok((budgeted(&self.handle, partitions, budget, first), read)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Internal("the execution task ended before the read started".into())),
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids; running reads are ended.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Counts what a read delivers and records its outcome, durably, before the stream ends: the
/// client sees the end of a stream only once its record is on disk, and a record that cannot
/// be written ends the stream with `UNAVAILABLE` instead. When the gateway stops, the stream
/// ends with `UNAVAILABLE` and that outcome is recorded. A stream dropped by its client is
/// recorded as cancelled by the token. The read slot (`permit`) is held until the stream ends
/// or is dropped.
pub(crate) fn audited(
    inner: impl Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static,
    token: Option<AuditToken>,
    lineage: Option<crate::lineage::Run>,
    served: Option<StreamMetrics>,
    label: String,
    stop: tokio::sync::watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<RecordBatch>> + Send + 'static {
    struct Reading<S> {
        inner: std::pin::Pin<Box<S>>,
        token: Option<AuditToken>,
        /// Ends with the stream: COMPLETE, FAIL, or ABORT when dropped mid-stream.
        lineage: Option<crate::lineage::Run>,
        delivered: crate::lineage::Delivered,
        served: Option<StreamMetrics>,
        label: String,
        stop: tokio::sync::watch::Receiver<bool>,
        _permit: OwnedSemaphorePermit,
    }
    async fn finish(token: Option<AuditToken>, status: Option<&tonic::Status>) -> Result<()> {
        match (token, status) {
            (None, _) => Ok(()),
            (Some(t), None) => Ok(t.ok().await?),
            (Some(t), Some(s)) => Ok(t.fail(s).await?),
        }
    }
    async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
        if stop.wait_for(|s| *s).await.is_err() {
            // The gateway was dropped without a shutdown: nothing will ever stop this stream.
            std::future::pending::<()>().await;
        }
    }
    let state = Some(Reading {
        inner: Box::pin(inner),
        token,
        lineage,
        delivered: Default::default(),
        served,
        label,
        stop,
        _permit: permit,
    });
    futures::stream::unfold(state, |state| async move {
        let mut r = state?;
        let next = tokio::select! {
            biased;
            () = stopped(&mut r.stop) => {
                let e = Error::ShuttingDown;
                let status = tonic::Status::unavailable(e.to_string());
                if let Some(run) = r.lineage.take() {
                    run.fail(status.message());
                }
                let _ = finish(r.token.take(), Some(&status)).await;
                return Some((Err(e), None));
            }
            next = r.inner.next() => next,
        };
        match next {
            Some(Ok(b)) => {
                let (rows, bytes) = (b.num_rows() as u64, b.get_array_memory_size() as u64);
                if let Some(t) = r.token.as_mut() {
                    t.add(rows, bytes);
                }
                if let Some(m) = &r.served {
                    m.add(rows, bytes);
                }
                r.delivered.rows += rows;
                r.delivered.bytes += bytes;
                Some((Ok(b), Some(r)))
            }
            Some(Err(e)) => {
                let e = Error::execution(r.label.clone(), e);
                let status = tonic::Status::aborted("the read failed");
                if let Some(run) = r.lineage.take() {
                    run.fail(super::error::to_status(&e).message());
                }
                let _ = finish(r.token.take(), Some(&status)).await;
                Some((Err(e), None))
            }
            None => {
                if let Some(run) = r.lineage.take() {
                    run.complete(r.delivered);
                }
                match finish(r.token.take(), None).await {
                    Ok(()) => None,
                    Err(e) => Some((Err(e), None)),
                }
            }
        }
    })
}

/// `batches` without their first `offset` rows (a resumed read: skipped before the audit
/// counts rows, so the record says what was delivered).
pub(crate) fn skip<S, E>(batches: S, offset: u64) -> impl Stream<Item = Result<RecordBatch, E>> + Send + 'static
where
    S: Stream<Item = Result<RecordBatch, E>> + Send + 'static,
    E: Send + 'static,
{
    let mut left = offset;
    batches.filter_map(move |b| {
        let out = match b {
            Ok(b) if left >= b.num_rows() as u64 => {
                left -= b.num_rows() as u64;
                None
            }
            Ok(b) if left > 0 => {
                let from = left as usize;
                left = 0;
                Some(Ok(b.slice(from, b.num_rows() - from)))
            }
            other => Some(other),
        };
        futures::future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::ArrayRef;
    use futures::{TryStreamExt, stream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A partition of `batches` batches of 1 MiB each, counting the batches it has produced.
    fn counted(batches: usize, produced: Arc<AtomicUsize>) -> SendableRecordBatchStream {
        use arrow::array::UInt8Array;
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "b",
            arrow::datatypes::DataType::UInt8,
            false,
        )]));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(UInt8Array::from(vec![0u8; 1 << 20])) as ArrayRef])
                .unwrap();
        let items = stream::iter(0..batches).map(move |_| {
            produced.fetch_add(1, Ordering::SeqCst);
            Ok(batch.clone())
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, items))
    }

    /// Lets the pump tasks run until they all wait.
    async fn settle() {
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn a_batch_is_charged_what_it_pins() {
        use arrow::array::Int64Array;
        let big = Int64Array::from_iter_values(0..100_000);
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(big.slice(0, 10)) as ArrayRef),
            ("b", Arc::new(big.slice(10, 10)) as ArrayRef),
        ])
        .unwrap();
        // Two ten-row slices keep the whole 800 kB buffer alive, once.
        let pinned = pinned_bytes(&batch);
        assert!((800_000..900_000).contains(&pinned), "{pinned}");
    }

    #[test]
    fn a_first_batch_is_guessed_from_the_columns() {
        use arrow::datatypes::{DataType, Field, Schema};
        let scan = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("price", DataType::Decimal128(15, 2), false),
            Field::new("comment", DataType::Utf8, false),
        ]);
        assert_eq!(first_guess(&scan, 65_536), (8 + 16 + VARIABLE_WIDTH_GUESS) * 65_536);
        let aggregate = Schema::new(vec![Field::new("n", DataType::Int64, false)]);
        assert_eq!(first_guess(&aggregate, 8_192), 8 * 8_192);
        assert_eq!(first_guess(&Schema::empty(), 10), 10, "never nothing");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_reader_stops_storage_at_its_budget_and_all_rows_arrive() {
        let produced = Arc::new(AtomicUsize::new(0));
        let budget = Budget::new(8 << 20, 1 << 30);
        let parts = vec![counted(100, Arc::clone(&produced)), counted(100, Arc::clone(&produced))];
        let mut out = Box::pin(budgeted(&Handle::current(), parts, &budget, 1 << 20));
        // Nobody reads: each partition stops once its share (4 MiB) is held, plus the batch it
        // took room for.
        settle().await;
        let held = produced.load(Ordering::SeqCst);
        assert!((2..=10).contains(&held), "{held} batches of 1 MiB read for an 8 MiB budget");
        // Reading one lets one more in; reading all gets every batch, each once.
        out.next().await.unwrap().unwrap();
        settle().await;
        assert!(produced.load(Ordering::SeqCst) <= held + 1);
        let mut n = 1;
        while let Some(b) = out.next().await {
            b.unwrap();
            n += 1;
        }
        assert_eq!(n, 200);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn streams_share_one_budget_and_none_waits_for_ever() {
        let produced = Arc::new(AtomicUsize::new(0));
        let budget = Budget::new(64 << 20, 6 << 20);
        let mut streams: Vec<_> = (0..4)
            .map(|_| Box::pin(budgeted(&Handle::current(), vec![counted(50, Arc::clone(&produced))], &budget, 1 << 20)))
            .collect();
        settle().await;
        let held = produced.load(Ordering::SeqCst);
        assert!(held <= 10, "{held} batches of 1 MiB read for a 6 MiB shared budget");
        // Four readers at once: every one of them gets all its batches.
        let readers: Vec<_> = streams
            .drain(..)
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(b) = s.next().await {
                        b.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.await.unwrap(), 50);
        }
    }

    #[tokio::test]
    async fn a_resumed_stream_starts_at_its_offset() {
        use arrow::array::Int64Array;
        let batch = |r: std::ops::Range<i64>| {
            RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from_iter_values(r)) as ArrayRef)]).unwrap()
        };
        for offset in [0u64, 3, 10, 12, 25, 40] {
            let input = stream::iter([batch(0..10), batch(10..15), batch(15..30)].map(Ok::<_, DataFusionError>));
            let out: Vec<RecordBatch> = skip(input, offset).try_collect().await.unwrap();
            let rows: Vec<i64> = out
                .iter()
                .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
                .collect();
            assert_eq!(rows, (offset.min(30) as i64..30).collect::<Vec<_>>(), "offset {offset}");
        }
    }
}
