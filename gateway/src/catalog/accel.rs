//! In-memory acceleration: a port whose contract declares `meshgate.acceleration` is served from
//! an Arrow copy of its data held in memory, refreshed on a schedule.
//!
//! ```yaml
//! customProperties:
//!   - property: meshgate.acceleration
//!     value: {engine: memory, refresh: 10m, maxBytes: 2GiB}
//! ```
//!
//! The copy sits *below* governance: [`Accelerated`] replaces the adapter's table in the port,
//! so masks, row filters and policies apply to it exactly as to a direct read. A refresh reads
//! the adapter's table whole (stopping at `maxBytes`) and swaps the new copy in atomically: a
//! scan takes the copy current when it starts and reads only that one, so no reader sees half
//! of one refresh and half of another. Until the first refresh succeeds, and whenever the copy
//! is missing, reads go to the storage. A failed refresh keeps serving the last good copy and is
//! reported ([`Accelerated::status`]) in `describe`, `FlightInfo` and health.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

/// The contract property declaring an acceleration.
pub const PROPERTY: &str = "meshgate.acceleration";

/// What a contract declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceleration {
    /// How often the copy is rebuilt.
    pub refresh: Duration,
    /// Arrow bytes the copy may hold; a larger one is not kept (reads go to storage).
    pub max_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Declared {
    engine: String,
    refresh: String,
    max_bytes: String,
}

impl Acceleration {
    /// Parses the property's value; the error says what to write.
    pub fn parse(value: &serde_yaml::Value) -> Result<Self, String> {
        let d: Declared = serde_yaml::from_value(value.clone())
            .map_err(|e| format!("{e}; write {{engine: memory, refresh: 10m, maxBytes: 2GiB}}"))?;
        if d.engine != "memory" {
            return Err(format!("engine `{}` is not offered; use `memory`", crate::text::clip(&d.engine)));
        }
        let refresh = humantime::parse_duration(d.refresh.trim())
            .ok()
            .filter(|r| *r >= Duration::from_millis(100))
            .ok_or_else(|| format!("refresh `{}` is not a duration of at least 100ms (e.g. 10m)", d.refresh))?;
        let max_bytes = crate::config::parse_size(&d.max_bytes)
            .map_err(|e| format!("maxBytes: {e}"))
            .and_then(|b| if b == 0 { Err("maxBytes must be more than 0".to_string()) } else { Ok(b as u64) })?;
        Ok(Self { refresh, max_bytes })
    }
}

/// One copy of the data, as the table scans read (built once per refresh, not per scan).
#[derive(Debug)]
struct Copy {
    table: MemTable,
    rows: u64,
    bytes: u64,
    refreshed: SystemTime,
}

/// A port's table served from memory when a copy is loaded, from storage otherwise.
#[derive(Debug)]
pub struct Accelerated {
    /// `domain/product/port`, for logs.
    label: String,
    inner: Arc<dyn TableProvider>,
    spec: Acceleration,
    copy: ArcSwapOption<Copy>,
    /// Why the last refresh failed, and when; cleared by a successful one.
    failure: Mutex<Option<(SystemTime, String)>>,
    /// The storage's data version last observed ([`Accelerated::observe`]); `None` before the
    /// first observation.
    seen: Mutex<Option<Option<String>>>,
}

impl Accelerated {
    /// Wraps `inner` (the adapter's table) and starts refreshing it every `spec.refresh` on the
    /// current runtime, first at once; the task ends when the table is dropped.
    pub fn start(label: String, inner: Arc<dyn TableProvider>, spec: Acceleration, state: SessionState) -> Arc<Self> {
        let table = Arc::new(Self::new(label, inner, spec));
        let weak: Weak<Self> = Arc::downgrade(&table);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                loop {
                    let Some(table) = weak.upgrade() else { return };
                    table.refresh(&state).await;
                    let every = table.spec.refresh;
                    drop(table);
                    tokio::time::sleep(every).await;
                }
            });
        }
        table
    }

    /// Wraps `inner` without refreshing it.
    fn new(label: String, inner: Arc<dyn TableProvider>, spec: Acceleration) -> Self {
        Self { label, inner, spec, copy: ArcSwapOption::empty(), failure: Mutex::new(None), seen: Mutex::new(None) }
    }

    /// Rebuilds the copy from storage and swaps it in; on failure the last good copy stays.
    pub async fn refresh(&self, state: &SessionState) {
        match self.load(state).await {
            Ok(copy) => {
                tracing::info!(port = %self.label, rows = copy.rows, bytes = copy.bytes, "acceleration refreshed");
                self.copy.store(Some(Arc::new(copy)));
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(why) => {
                tracing::warn!(port = %self.label, reason = %why, "acceleration refresh failed; the last good copy keeps serving");
                *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some((SystemTime::now(), why));
            }
        }
    }

    async fn load(&self, state: &SessionState) -> Result<Copy, String> {
        // The status is shown to callers: the detail (it may name locations) goes to the log.
        let label = &self.label;
        let failed = |e: datafusion::error::DataFusionError| {
            tracing::warn!(port = %label, error = %e, "reading the storage for the in-memory copy failed");
            "the storage could not be read; the gateway's log has the detail".to_string()
        };
        let plan = self.inner.scan(state, None, &[], None).await.map_err(failed)?;
        let plan = datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(plan);
        let mut stream = datafusion::physical_plan::execute_stream(Arc::new(plan), state.task_ctx()).map_err(failed)?;
        let (mut batches, mut rows, mut bytes) = (Vec::new(), 0u64, 0u64);
        while let Some(batch) = stream.try_next().await.map_err(failed)? {
            bytes += batch.get_array_memory_size() as u64;
            if bytes > self.spec.max_bytes {
                return Err(format!(
                    "the data is larger than maxBytes ({} bytes); reads go to storage until it fits",
                    self.spec.max_bytes
                ));
            }
            rows += batch.num_rows() as u64;
            batches.push(batch);
        }
        let table = MemTable::try_new(self.inner.schema(), vec![batches]).map_err(failed)?;
        Ok(Copy { table, rows, bytes, refreshed: SystemTime::now() })
    }

    /// Refreshes at once when the storage's data version (a listing fingerprint, a commit; `None`
    /// when the storage cannot be listed) differs from the one observed last; the first
    /// observation only records it.
    pub async fn observe(&self, version: Option<&str>, state: &SessionState) {
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let now = version.map(str::to_string);
            let changed = seen.as_ref().is_some_and(|s| *s != now);
            *seen = Some(now);
            changed
        };
        if changed {
            self.refresh(state).await;
        }
    }

    /// `{"engine", "refresh", "max_bytes", "loaded", "refreshed", "rows", "bytes", "last_error"}`.
    pub fn status(&self) -> Value {
        let copy = self.copy.load_full();
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({
            "engine": "memory",
            "refresh": humantime::format_duration(self.spec.refresh).to_string(),
            "max_bytes": self.spec.max_bytes,
            "loaded": copy.is_some(),
            "refreshed": copy.as_ref().map(|c| crate::quality::rfc3339(c.refreshed)),
            "rows": copy.as_ref().map(|c| c.rows),
            "bytes": copy.as_ref().map(|c| c.bytes),
            "last_error": failure.map(|(at, why)| json!({"time": crate::quality::rfc3339(at), "message": why})),
        })
    }

    /// The storage's table the copy is made from.
    pub fn storage(&self) -> &Arc<dyn TableProvider> {
        &self.inner
    }

    /// Rows and bytes of the copy in memory (0 and 0 when none is kept).
    pub fn rows_and_bytes(&self) -> (u64, u64) {
        self.copy.load().as_ref().map_or((0, 0), |c| (c.rows, c.bytes))
    }

    /// Why the port is degraded: the last refresh failed (the last good copy, if any, serves).
    pub fn problem(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, why)| why.clone())
    }
}

#[async_trait]
impl TableProvider for Accelerated {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Either source is filtered again above.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // One copy for the whole scan, whatever a refresh swaps in meanwhile.
        match self.copy.load_full() {
            Some(copy) => copy.table.scan(state, projection, filters, limit).await,
            None => self.inner.scan(state, projection, filters, limit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    fn table(n: i64) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batches: Vec<RecordBatch> = (0..4)
            .map(|_| {
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(vec![n; 1000]))]).unwrap()
            })
            .collect();
        Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())
    }

    #[test]
    fn declarations_are_checked() {
        let v = |s: &str| serde_yaml::from_str::<serde_yaml::Value>(s).unwrap();
        let a = Acceleration::parse(&v("{engine: memory, refresh: 10m, maxBytes: 2GiB}")).unwrap();
        assert_eq!((a.refresh, a.max_bytes), (Duration::from_secs(600), 2 << 30));
        assert!(
            Acceleration::parse(&v("{engine: disk, refresh: 10m, maxBytes: 1MiB}")).unwrap_err().contains("memory")
        );
        assert!(Acceleration::parse(&v("{engine: memory, refresh: soon, maxBytes: 1MiB}")).is_err());
        assert!(Acceleration::parse(&v("{engine: memory, refresh: 1m}")).unwrap_err().contains("maxBytes"));
    }

    #[tokio::test]
    async fn a_scan_reads_one_whole_copy_while_refreshes_swap() {
        let ctx = SessionContext::new();
        let spec = Acceleration { refresh: Duration::from_secs(3600), max_bytes: 1 << 30 };
        let accel = Arc::new(Accelerated::new("t".into(), table(1), spec));
        accel.refresh(&ctx.state()).await;
        let plan = accel.scan(&ctx.state(), None, &[], None).await.unwrap();
        // A refresh from changed storage lands between planning and reading.
        let changed = Accelerated::new("t".into(), table(2), accel.spec.clone());
        changed.refresh(&ctx.state()).await;
        accel.copy.store(changed.copy.load_full());
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await.unwrap();
        let values: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
            .collect();
        assert_eq!(values, vec![1; 4000], "the scan kept the copy it started with");
        let again = accel.scan(&ctx.state(), None, &[], None).await.unwrap();
        let batches = datafusion::physical_plan::collect(again, ctx.task_ctx()).await.unwrap();
        assert!(batches.iter().all(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0) == 2));
    }

    #[tokio::test]
    async fn a_copy_over_its_bound_is_not_kept_and_the_last_good_one_serves() {
        let ctx = SessionContext::new();
        let accel = Accelerated::new(
            "t".into(),
            table(1),
            Acceleration { refresh: Duration::from_secs(3600), max_bytes: 1 << 30 },
        );
        accel.refresh(&ctx.state()).await;
        assert_eq!(accel.status()["rows"], 4000);
        let small =
            Accelerated::new("t".into(), table(1), Acceleration { refresh: Duration::from_secs(3600), max_bytes: 100 });
        small.copy.store(accel.copy.load_full());
        small.refresh(&ctx.state()).await;
        assert!(small.problem().unwrap().contains("larger than maxBytes"));
        assert_eq!(small.status()["rows"], 4000, "the last good copy stays");
    }
}
