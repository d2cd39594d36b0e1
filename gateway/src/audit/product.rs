//! The audit log as a product: `_governance/audit`, read through the same governed path as any
//! other product (the sample policies let only auditors discover or read it).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

use super::segments::{self, Segment};
use crate::catalog::Product;
use crate::catalog::builtin::{self, Builtin};

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn list(name: &str) -> Field {
    Field::new(name, DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true)
}

fn record(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

/// The audit product's domain.
pub const DOMAIN: &str = "_governance";

/// The audit product's name.
pub const NAME: &str = "audit";

/// The Arrow schema of audit records.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, true),
        text("time"),
        text("started"),
        text("kind"),
        // The data version a publish committed or a pinned read read.
        Field::new("version", DataType::Int64, true),
        text("rpc"),
        text("event_id"),
        text("request_id"),
        text("ticket_id"),
        text("replica"),
        record("client", vec![text("address"), text("user_agent"), text("on_behalf_of")]),
        record("actor", vec![text("sub"), text("iss"), text("auth_method"), list("roles"), text("purpose")]),
        record(
            "resource",
            vec![
                text("domain"),
                text("product"),
                text("port"),
                text("contract_id"),
                text("contract_version"),
                list("columns"),
            ],
        ),
        record("decision", vec![text("effect"), list("policy_ids"), list("masks"), list("row_filters")]),
        record(
            "outcome",
            vec![
                text("status"),
                text("message"),
                Field::new("rows", DataType::Int64, true),
                Field::new("bytes", DataType::Int64, true),
                Field::new("duration_us", DataType::Int64, true),
            ],
        ),
        record("suppressed", vec![Field::new("total", DataType::Int64, true), list("sources")]),
        text("prev_hash"),
        text("hash"),
    ]))
}

/// The log read as a table: segments streamed one after another in chunks (never the whole log
/// in memory), skipping the segments a filter on `seq` or `time` excludes (by their names) when
/// such a filter reaches the scan.
#[derive(Debug)]
pub struct AuditTable {
    dir: PathBuf,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for AuditTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to skip segments only; every row is still filtered above.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let dir = self.dir.clone();
        let mut segments = tokio::task::spawn_blocking(move || segments::list(&dir))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| {
                tracing::warn!(error = %e, "listing the audit segments failed");
                meshgate_adapters::Error::Unavailable("the audit log cannot be read now".into()).into_datafusion()
            })?;
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
            let pruning = state
                .create_physical_expr(predicate, &df_schema)
                .ok()
                .and_then(|e| PruningPredicateBuilder::new().with_file_schema(Arc::clone(&self.schema)).build(e));
            // A predicate that cannot prune reads every segment: filtering happens above anyway.
            if let Some(pruning) = pruning {
                let keep = pruning.prune(&SegmentBounds(&segments))?;
                let mut k = keep.into_iter();
                segments.retain(|_| k.next().unwrap_or(true));
            }
        }
        let stream = Arc::new(SegmentStream { schema: Arc::clone(&self.schema), segments });
        Ok(Arc::new(StreamingTableExec::try_new(
            Arc::clone(&self.schema),
            vec![stream],
            projection,
            Vec::<LexOrdering>::new(),
            false,
            limit,
        )?))
    }
}

/// Each segment's `seq` and `time` bounds, from the names: a segment's records lie between its
/// own first record and the next segment's (the writer keeps `time` non-decreasing).
struct SegmentBounds<'a>(&'a [Segment]);

impl SegmentBounds<'_> {
    fn bounds(&self, column: &Column, max: bool) -> Option<ArrayRef> {
        let s = self.0;
        match column.name.as_str() {
            "seq" => Some(Arc::new(Int64Array::from_iter((0..s.len()).map(|i| {
                let v = if max { s.get(i + 1).map(|n| n.first_seq.saturating_sub(1)) } else { Some(s[i].first_seq) };
                v.and_then(|v| i64::try_from(v).ok())
            })))),
            "time" => Some(Arc::new(StringArray::from_iter((0..s.len()).map(|i| {
                if max { s.get(i + 1).map(|n| n.first_time.clone()) } else { Some(s[i].first_time.clone()) }
            })))),
            _ => None,
        }
    }
}

impl PruningStatistics for SegmentBounds<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, false)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, true)
    }

    fn num_containers(&self) -> usize {
        self.0.len()
    }

    fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// Streams the chosen segments, oldest first, a chunk at a time; a last line still being
/// written is left for the next scan.
#[derive(Debug)]
struct SegmentStream {
    schema: SchemaRef,
    segments: Vec<Segment>,
}

/// Bytes read from a segment at a time.
const CHUNK: usize = 1 << 20;

impl PartitionStream for SegmentStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = Arc::clone(&self.schema);
        let decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema)).build_decoder();
        let reading = decoder.map(|decoder| Reading {
            paths: self.segments.iter().map(|s| s.path.clone()).collect(),
            file: None,
            decoder,
            carry: Vec::new(),
        });
        let batches = futures::stream::once(async move { reading.map_err(DataFusionError::from) })
            .map_ok(|reading| futures::stream::try_unfold(reading, Reading::next_chunk))
            .try_flatten()
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

/// Where a scan of the segments stands.
struct Reading {
    paths: std::collections::VecDeque<PathBuf>,
    file: Option<tokio::fs::File>,
    decoder: arrow::json::reader::Decoder,
    /// Bytes read and not yet decoded: the start of a line whose end is still to be read.
    carry: Vec<u8>,
}

impl Reading {
    /// Decodes the next chunk's whole lines; `None` after the last segment. A last line still
    /// being written is left for the next scan.
    async fn next_chunk(mut self) -> Result<Option<(Vec<RecordBatch>, Self)>> {
        let unreadable = |e: std::io::Error| {
            tracing::warn!(error = %e, "reading an audit segment failed");
            meshgate_adapters::Error::Unavailable("the audit log cannot be read now".into()).into_datafusion()
        };
        loop {
            let file = match self.file.as_mut() {
                Some(f) => f,
                None => {
                    let Some(path) = self.paths.pop_front() else { return Ok(None) };
                    self.carry.clear();
                    self.file.insert(tokio::fs::File::open(&path).await.map_err(unreadable)?)
                }
            };
            let read = file.take(CHUNK as u64).read_to_end(&mut self.carry).await.map_err(unreadable)?;
            if read == 0 {
                self.file = None;
                continue;
            }
            let Some(end) = self.carry.iter().rposition(|b| *b == b'\n').map(|i| i + 1) else { continue };
            let mut batches = Vec::new();
            let mut fed = 0;
            while fed < end {
                fed += self.decoder.decode(&self.carry[fed..end])?;
                batches.extend(self.decoder.flush()?);
            }
            self.carry.drain(..end);
            if !batches.is_empty() {
                return Ok(Some((batches, self)));
            }
        }
    }
}

/// The product serving the log in the folder `dir`.
pub fn product(dir: &Path) -> Product {
    builtin::product(Builtin {
        name: NAME,
        title: "Gateway audit log",
        description: "Every read, denial and authentication failure recorded by the gateway, hash-chained.",
        tags: &["governance", "audit"],
        table: Arc::new(AuditTable { dir: dir.to_path_buf(), schema: schema() }),
        key: Some("seq"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditOptions, Client};
    use crate::auth::Principal;

    #[tokio::test]
    async fn scans_skip_the_segments_a_filter_on_seq_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            AuditLog::open(dir.path(), AuditOptions { segment_bytes: 2_000, ..AuditOptions::default() }).await.unwrap();
        let p = Principal::anonymous();
        for _ in 0..40 {
            log.begin("DoGet", Client::default(), &p).unwrap().ok().await.unwrap();
        }
        log.close().await;
        let segs = segments::list(dir.path()).unwrap();
        assert!(segs.len() > 4);
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("audit", Arc::new(AuditTable { dir: dir.path().to_path_buf(), schema: schema() })).unwrap();
        let count = |sql: String| {
            let ctx = ctx.clone();
            async move {
                let batches = ctx.sql(&sql).await?.collect().await?;
                Ok::<i64, DataFusionError>(
                    arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(batches[0].column(0)).value(0),
                )
            }
        };
        assert_eq!(count("SELECT count(*) FROM audit".into()).await.unwrap(), 40);
        // The oldest segment becomes unreadable: a scan that needs it fails, one whose filter
        // excludes it never opens it.
        std::fs::write(&segs[0].path, "not json\n").unwrap();
        assert!(count("SELECT count(*) FROM audit".into()).await.is_err());
        let from = segs[1].first_seq;
        let sql = format!("SELECT count(*) FROM audit WHERE seq >= {from}");
        assert_eq!(count(sql).await.unwrap(), 40 - from as i64);
    }

    #[tokio::test]
    async fn records_spanning_read_chunks_are_all_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::default()).await.unwrap();
        let p = Principal::anonymous();
        // Concurrent calls share syncs; together well over one read chunk.
        let calls: Vec<_> = (0..4000)
            .map(|_| {
                let t = log.begin("DoGet", Client::default(), &p).unwrap();
                tokio::spawn(t.ok())
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        log.close().await;
        let [seg] = &segments::list(dir.path()).unwrap()[..] else { panic!("one segment") };
        assert!(std::fs::metadata(&seg.path).unwrap().len() > 2 * CHUNK as u64);
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_table("audit", Arc::new(AuditTable { dir: dir.path().to_path_buf(), schema: schema() })).unwrap();
        let batches = ctx
            .sql("SELECT count(*), count(DISTINCT seq), max(seq) FROM audit")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let out = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        let row: Vec<&str> = out.lines().nth(3).unwrap().split('|').map(str::trim).collect();
        assert_eq!(row[1..4], ["4000", "4000", "3999"], "{out}");
    }
}
