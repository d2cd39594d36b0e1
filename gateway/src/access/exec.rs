//! Where plans run: a runtime of their own, off the one that accepts and answers gRPC calls.
//!
//! Planning and execution are CPU work that can take seconds (a large sort, a Parquet decode);
//! on the accept runtime they would delay every other caller's Handshake and GetFlightInfo. The
//! [`Executor`] runs them on its own threads and hands batches back through a channel of two,
//! so a slow client holds at most a couple of batches in it (backpressure reaches the scan).

use std::future::Future;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::DataFrame;
use futures::{Stream, StreamExt};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::OwnedSemaphorePermit;

use super::error::{Error, Result};
use crate::audit::AuditToken;
use crate::governance::{check_guarded, columns_read};
use crate::metrics::StreamMetrics;

/// Batches in flight between the execution runtime and the stream sent to the client.
const CHANNEL_BATCHES: usize = 2;

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
    ) -> Result<(impl Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static, Vec<(String, Vec<String>)>)>
    {
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_BATCHES);
        let (ready, started) = tokio::sync::oneshot::channel::<Result<Vec<(String, Vec<String>)>>>();
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
            let mut batches = match datafusion::physical_plan::execute_stream(plan, std::sync::Arc::new(task)) {
                Ok(s) => s,
                Err(e) => return drop(ready.send(Err(Error::execution(label, e)))),
            };
            if ready.send(Ok(read)).is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    // The reader went away: stop reading storage.
                    () = tx.closed() => return,
                    next = batches.next() => next,
                };
                match next {
                    Some(b) => {
                        if tx.send(b).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
        match started.await {
            Ok(Ok(read)) => Ok((tokio_stream::wrappers::ReceiverStream::new(rx), read)),
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
