//! Bounds on one SQL statement, on top of the gateway-wide ones (read slots, the engine's
//! memory pool): memory, time and result rows. A statement past a bound fails with an error
//! naming the bound and the setting that raises it; other reads are unaffected.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};
use futures::{Stream, StreamExt};

use super::error::Error;

/// Bounds on one SQL statement; `None` means unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementLimits {
    /// Bytes the statement's operators (sorts, joins, aggregations) may hold.
    pub memory_bytes: usize,
    /// How long the statement may run, from the start of its execution to its last batch.
    pub timeout: Option<Duration>,
    /// Rows the statement may return.
    pub max_rows: Option<u64>,
}

impl StatementLimits {
    /// No bounds (product reads: their size is the product's, read as a stream).
    pub const UNBOUNDED: Self = Self { memory_bytes: usize::MAX, timeout: None, max_rows: None };
}

impl Default for StatementLimits {
    fn default() -> Self {
        Self { memory_bytes: 1 << 30, timeout: Some(Duration::from_secs(300)), max_rows: None }
    }
}

/// A memory pool for one statement: grants up to its own limit, and only what the gateway-wide
/// pool (which it draws from) grants as well.
#[derive(Debug)]
pub(crate) struct StatementPool {
    shared: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
}

impl StatementPool {
    /// A pool of `limit` bytes drawing from `shared`.
    pub(crate) fn new(shared: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self { shared, limit, used: AtomicUsize::new(0) }
    }
}

impl fmt::Display for StatementPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "statement pool of {} bytes over {}", self.limit, self.shared)
    }
}

impl MemoryPool for StatementPool {
    fn name(&self) -> &str {
        "statement"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.shared.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.shared.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> datafusion::error::Result<()> {
        let limit = self.limit;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(additional).filter(|n| *n <= limit)
            })
            .map_err(|used| {
                DataFusionError::ResourcesExhausted(format!(
                    "the statement's operators need more than its limit of {} MiB (holding {} MiB, asking {} MiB more; --statement-memory-mb)",
                    limit >> 20,
                    used >> 20,
                    additional.div_ceil(1 << 20)
                ))
            })?;
        if let Err(e) = self.shared.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

/// `batches` ending with an error once the statement runs past `limits.timeout` or returns
/// more than `limits.max_rows` rows.
pub(crate) fn bounded(
    batches: impl Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static,
    limits: StatementLimits,
) -> impl Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static {
    let deadline = limits.timeout.map(|t| (tokio::time::Instant::now() + t, t));
    let fail = |e: Error| DataFusionError::External(Box::new(e));
    futures::stream::unfold(Some((Box::pin(batches), 0u64)), move |state| async move {
        let (mut batches, rows) = state?;
        let next = match deadline {
            Some((at, limit)) => match tokio::time::timeout_at(at, batches.next()).await {
                Ok(next) => next,
                Err(_) => return Some((Err(fail(Error::Deadline { limit })), None)),
            },
            None => batches.next().await,
        };
        match next {
            Some(Ok(b)) => {
                let rows = rows + b.num_rows() as u64;
                match limits.max_rows {
                    Some(limit) if rows > limit => Some((Err(fail(Error::TooManyRows { limit })), None)),
                    _ => Some((Ok(b), Some((batches, rows)))),
                }
            }
            Some(Err(e)) => Some((Err(e), None)),
            None => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    fn batch(n: usize) -> RecordBatch {
        RecordBatch::try_from_iter([("a", Arc::new(Int64Array::from(vec![1; n])) as _)]).unwrap()
    }

    #[test]
    fn a_statement_pool_stops_at_its_own_limit_and_at_the_shared_one() {
        let shared: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(10 << 20));
        let pool: Arc<dyn MemoryPool> = Arc::new(StatementPool::new(Arc::clone(&shared), 4 << 20));
        let r = MemoryConsumer::new("sort").register(&pool);
        r.try_grow(3 << 20).unwrap();
        let e = r.try_grow(2 << 20).unwrap_err().to_string();
        assert!(e.contains("--statement-memory-mb"), "{e}");
        assert_eq!((pool.reserved(), shared.reserved()), (3 << 20, 3 << 20));
        drop(r);
        assert_eq!((pool.reserved(), shared.reserved()), (0, 0));
        let other = MemoryConsumer::new("other").register(&shared);
        other.try_grow(9 << 20).unwrap();
        let r = MemoryConsumer::new("sort").register(&pool);
        assert!(r.try_grow(2 << 20).is_err(), "the shared pool is full");
        assert_eq!(pool.reserved(), 0, "a refused grow is not counted");
    }

    #[tokio::test]
    async fn rows_and_time_are_bounded() {
        let three = futures::stream::iter([Ok(batch(2)), Ok(batch(2)), Ok(batch(2))]);
        let limits = StatementLimits { max_rows: Some(4), ..Default::default() };
        let out: Vec<_> = bounded(three, limits).collect().await;
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[2], Err(DataFusionError::External(e)) if e.to_string().contains("more than 4 rows")));

        let stuck = futures::stream::pending::<Result<RecordBatch, DataFusionError>>();
        let limits = StatementLimits { timeout: Some(Duration::from_millis(10)), ..Default::default() };
        let out: Vec<_> = bounded(stuck, limits).collect().await;
        assert!(matches!(&out[0], Err(DataFusionError::External(e)) if e.to_string().contains("--statement-timeout")));
    }
}
