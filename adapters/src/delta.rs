//! The `delta` adapter: Delta Lake tables, the storage of products published through the
//! gateway.
//!
//! A Delta table is a folder of Parquet files plus a transaction log (`_delta_log/`); a version
//! becomes visible only when its commit file is written, atomically, so readers see the last
//! committed version whole and a writer that dies mid-publish leaves nothing behind but
//! unreferenced files. The adapter reads the latest committed version on every scan (one listing
//! of the log finds out whether it changed), a pinned version or the version current at a time
//! ([`Versioned::at`]), and commits new versions for the gateway's publish path
//! ([`Versioned::commit`]) with the author and mode in the commit's information.
//!
//! Locations resolve like the `files` adapter's ([`crate::files::resolve_location`]): relative to
//! the product folder, inside a storage root, or a URL in a store the operator configured. A
//! table that does not exist yet is served with the contract's declared schema
//! ([`crate::OpenContext::declared`]) and reads as unavailable until its first publish.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use deltalake::delta_datafusion::DeltaScanNext as DeltaScan;
use deltalake::kernel::Snapshot;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::logstore::LogStoreRef;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use serde::Deserialize;

use crate::{
    Adapter, Binding, CommitNote, Error, Health, OpenContext, Opened, Result, StorageHandle, VersionInfo, VersionPin,
    Versioned, WriteMode,
};

/// Binding of the `delta` adapter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeltaBinding {
    /// The table's folder: relative to the product folder, absolute, or a URL.
    pub location: String,
}

/// Keys of the commit information the gateway writes with a publish.
const AUTHOR: &str = "meshgate.author";
const MODE: &str = "meshgate.mode";
const ROWS: &str = "meshgate.rows";

/// Attempts of a commit that may land on any version (a replace) when others commit at once.
const COMMIT_RETRIES: usize = 15;

/// The `delta` adapter.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeltaAdapter;

#[async_trait]
impl Adapter for DeltaAdapter {
    fn kind(&self) -> &'static str {
        "delta"
    }

    async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Opened> {
        let Binding::Delta(b) = binding else {
            return Err(Error::InvalidBinding(format!("delta adapter given a {} binding", binding.kind())));
        };
        // A table is a folder.
        let location = if b.location.ends_with('/') { b.location.clone() } else { format!("{}/", b.location) };
        let listing = crate::files::resolve_location(&location, ctx)?;
        let url = listing.get_url().clone();
        let store = ctx
            .state
            .runtime_env()
            .object_store(&listing)
            .map_err(|_| Error::InvalidBinding(format!("location `{}` uses a scheme with no store", b.location)))?;
        register_configured_schemes();
        let log_store = DeltaTableBuilder::from_url(url.clone())
            .map_err(|e| Error::InvalidBinding(format!("location `{}` is not a table URL: {e}", b.location)))?
            .with_storage_backend(store, url)
            .build_storage()
            .map_err(|e| Error::InvalidBinding(format!("location `{}`: {e}", b.location)))?;
        let table = DeltaProductTable {
            location: b.location.clone(),
            log_store,
            schema: Arc::new(Schema::empty()),
            current: tokio::sync::Mutex::new(None),
            commits: tokio::sync::Mutex::new(()),
        };
        let schema = match table.load(None).await? {
            Some((_, scan)) => {
                let stored = scan.schema();
                ctx.string_types.apply(&stored).unwrap_or(stored)
            }
            None => ctx.declared.clone().ok_or_else(|| {
                Error::InvalidBinding(format!(
                    "the Delta table at `{}` does not exist yet, and its schema cannot be taken from the contract: \
                     give every column a logicalType (and a physicalType where the width matters), or publish a first version",
                    b.location
                ))
            })?,
        };
        let table = Arc::new(DeltaProductTable { schema, ..table });
        Ok(Opened {
            table: Arc::clone(&table) as Arc<dyn TableProvider>,
            storage: Arc::clone(&table) as Arc<dyn StorageHandle>,
            versions: Some(table),
        })
    }
}

/// Schemes of the object stores an operator configures (`--stores`). The gateway builds their
/// stores itself (credentials, endpoint, timeouts) and hands them to Delta; Delta only needs to
/// know how to keep a log there: its default protocol, a conditional put of each next log entry
/// (S3, GCS and Azure all refuse a second writer of the same entry).
const CONFIGURED_SCHEMES: [&str; 9] = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "http", "https"];

/// Keeps Delta logs in the configured stores' schemes, once per process.
fn register_configured_schemes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let factories = deltalake::logstore::logstore_factories();
        for scheme in CONFIGURED_SCHEMES {
            if let Ok(url) = url::Url::parse(&format!("{scheme}://"))
                && !factories.contains_key(&url)
            {
                factories.insert(url, Arc::new(ConfiguredStore));
            }
        }
    });
}

/// The log store of a table in one of the gateway's configured stores.
#[derive(Debug)]
struct ConfiguredStore;

impl deltalake::logstore::LogStoreFactory for ConfiguredStore {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &url::Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(prefixed_store, root_store, location, options))
    }
}

/// A Delta table served as a product: always the latest committed version, with the schema
/// announced when it was opened.
#[derive(Debug)]
pub struct DeltaProductTable {
    location: String,
    log_store: LogStoreRef,
    schema: SchemaRef,
    /// The latest version read, reused while no newer commit exists.
    current: tokio::sync::Mutex<Option<(u64, Arc<DeltaScan>)>>,
    /// One commit at a time from this process (the log also refuses concurrent writers').
    commits: tokio::sync::Mutex<()>,
}

impl DeltaProductTable {
    fn unavailable(&self, why: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("the Delta table at `{}` {why}", self.location))
    }

    /// Why a storage call failed, in words that name no server path.
    fn failed(&self, e: &DeltaTableError) -> Error {
        tracing::warn!(location = %self.location, error = %e, "Delta table access failed");
        self.unavailable("cannot be read: its log or files are not reachable")
    }

    /// The scan of `version` (latest when `None`) and its version number; `None` when the
    /// table has no commit yet.
    async fn load(&self, version: Option<u64>) -> Result<Option<(u64, Arc<DeltaScan>)>> {
        let snapshot = match Snapshot::try_new(self.log_store.as_ref(), version).await {
            Ok(s) => s,
            Err(e) => {
                return match classify(&e, version.is_some()) {
                    Found::NotATable => Ok(None),
                    Found::NoVersion => Err(Error::NotFound(match version {
                        Some(v) => format!("version {v} does not exist or is no longer kept"),
                        None => "no version exists".into(),
                    })),
                    Found::Other => Err(self.failed(&e)),
                };
            }
        };
        let v = snapshot.version();
        let scan = DeltaScan::builder()
            .with_log_store(Arc::clone(&self.log_store))
            .with_snapshot(snapshot)
            .build()
            .await
            .map_err(|e| {
                tracing::warn!(location = %self.location, error = %e, "a Delta version could not be planned");
                self.unavailable("cannot be read: its log could not be planned")
            })?;
        Ok(Some((v, Arc::new(scan))))
    }

    /// The latest committed version, reusing the cached scan while no newer commit exists.
    async fn latest_scan(&self) -> Result<Arc<DeltaScan>> {
        let mut current = self.current.lock().await;
        if let Some((version, scan)) = current.as_ref() {
            match self.log_store.get_latest_version(*version).await {
                Ok(v) if v == *version => return Ok(Arc::clone(scan)),
                Ok(_) => {}
                Err(e) => return Err(self.failed(&e)),
            }
        }
        let (version, scan) = self.load(None).await?.ok_or(Error::NotPublished)?;
        *current = Some((version, Arc::clone(&scan)));
        Ok(scan)
    }

    /// `scan` as a provider with the announced schema.
    fn served(&self, scan: Arc<DeltaScan>) -> Arc<dyn TableProvider> {
        Arc::new(Conformed { inner: scan, schema: Arc::clone(&self.schema) })
    }

    /// Up to `limit` versions (all kept when `None`), newest first.
    async fn commits(&self, limit: Option<usize>) -> Result<Vec<VersionInfo>> {
        let table = self.table().await?;
        let Some(latest) = table.version() else {
            return Ok(Vec::new());
        };
        let commits: Vec<_> = table.history(limit).try_collect().await.map_err(|e| self.failed(&e))?;
        // Newest first, one per version from the latest down.
        Ok(commits.iter().enumerate().map(|(i, c)| info(latest.saturating_sub(i as u64), c)).collect())
    }

    async fn table(&self) -> Result<DeltaTable> {
        let mut table = DeltaTable::new(Arc::clone(&self.log_store));
        match table.load().await {
            Ok(()) => Ok(table),
            Err(e) => match classify(&e, false) {
                Found::NotATable => Ok(DeltaTable::new(Arc::clone(&self.log_store))),
                _ => Err(self.failed(&e)),
            },
        }
    }
}

enum Found {
    NotATable,
    NoVersion,
    Other,
}

/// What a failed load means: no table there yet, no such version (when one was asked for), or a
/// storage fault.
fn classify(e: &DeltaTableError, pinned: bool) -> Found {
    match e {
        DeltaTableError::NotATable(_) => Found::NotATable,
        DeltaTableError::InvalidVersion(_) => Found::NoVersion,
        other => {
            let text = other.to_string();
            // The kernel reports a missing folder or log as a location or segment error.
            if ["No files in log segment", "not a Delta table", "Invalid table location", "Path does not exist"]
                .iter()
                .any(|m| text.contains(m))
            {
                Found::NotATable
            } else if pinned && text.to_ascii_lowercase().contains("version") {
                Found::NoVersion
            } else {
                Found::Other
            }
        }
    }
}

fn info(version: u64, c: &deltalake::kernel::CommitInfo) -> VersionInfo {
    let text = |k: &str| c.info.get(k).and_then(|v| v.as_str()).map(str::to_string);
    VersionInfo {
        version,
        committed_ms: c.in_commit_timestamp.or(c.timestamp),
        operation: c.operation.clone(),
        author: text(AUTHOR),
        mode: text(MODE),
        rows: c.info.get(ROWS).and_then(serde_json::Value::as_u64),
    }
}

#[async_trait]
impl Versioned for DeltaProductTable {
    async fn latest(&self) -> Result<Option<VersionInfo>> {
        Ok(self.history(1).await?.into_iter().next())
    }

    async fn history(&self, limit: usize) -> Result<Vec<VersionInfo>> {
        self.commits(Some(limit)).await
    }

    async fn at(&self, pin: VersionPin) -> Result<(Arc<dyn TableProvider>, u64)> {
        let version = match pin {
            VersionPin::Version(v) => v,
            VersionPin::AsOf(ms) => {
                // By the commit times `history` (and so `describe`) shows: the newest version
                // committed at or before `ms`.
                let when = chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_else(|| format!("{ms} ms"));
                let all = self.commits(None).await?;
                if all.is_empty() {
                    return Err(Error::NotFound("no version exists yet".into()));
                }
                all.iter()
                    .find(|v| v.committed_ms.is_some_and(|c| c <= ms))
                    .map(|v| v.version)
                    .ok_or_else(|| Error::NotFound(format!("no version was committed at or before {when}")))?
            }
        };
        // The latest version read is planned already.
        let cached = self.current.lock().await.as_ref().filter(|(v, _)| *v == version).map(|(_, s)| Arc::clone(s));
        if let Some(scan) = cached {
            return Ok((self.served(scan), version));
        }
        let (version, scan) =
            self.load(Some(version)).await?.ok_or_else(|| Error::NotFound("no version exists yet".into()))?;
        Ok((self.served(scan), version))
    }

    async fn commit(&self, batches: Vec<RecordBatch>, note: CommitNote) -> Result<u64> {
        let _one = self.commits.lock().await;
        let table = match note.base {
            Some(base) => {
                let mut t = DeltaTable::new(Arc::clone(&self.log_store));
                t.load_version(base).await.map_err(|e| self.failed(&e))?;
                t
            }
            None => self.table().await?,
        };
        let mode = match note.mode {
            WriteMode::Append => SaveMode::Append,
            WriteMode::Replace => SaveMode::Overwrite,
        };
        // Checked against `base`: committed as the version after it, never rebased onto a newer one.
        let retries = if note.base.is_some() { 0 } else { COMMIT_RETRIES };
        let properties = CommitProperties::default().with_max_retries(retries).with_metadata([
            (AUTHOR.to_string(), serde_json::Value::from(note.author.clone())),
            (MODE.to_string(), serde_json::Value::from(note.mode.name())),
            (ROWS.to_string(), serde_json::Value::from(note.rows)),
        ]);
        let written =
            table.write(batches).with_save_mode(mode).with_commit_properties(properties).await.map_err(|e| {
                tracing::warn!(location = %self.location, error = %e, "a Delta commit failed");
                Error::Write(match e {
                    DeltaTableError::Transaction { .. } | DeltaTableError::VersionAlreadyExists(_) => {
                        "another publish committed first (its rules were checked on an older version); publish again"
                            .into()
                    }
                    _ => "the table's storage refused the write; nothing was committed".into(),
                })
            })?;
        let version = written.version().ok_or_else(|| Error::Write("the commit has no version".into()))?;
        *self.current.lock().await = None;
        Ok(version)
    }
}

#[async_trait]
impl StorageHandle for DeltaProductTable {
    /// One listing of the log: the table has a committed version and it can be read.
    async fn health(&self, _state: &SessionState) -> Health {
        match self.latest_scan().await {
            Ok(_) => Health::Ok,
            Err(e) => Health::Unavailable { reason: e.to_string() },
        }
    }
}

#[async_trait]
impl TableProvider for DeltaProductTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let scan = self.latest_scan().await.map_err(Error::into_datafusion)?;
        self.served(scan).scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune files by their statistics; the engine applies them to the rows again.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// A version's scan, producing the announced schema: columns by name, cast where the stored
/// type differs (view types, timestamp zones); filters are passed down only when the types
/// agree, so a filter never meets a type it was not planned for.
#[derive(Debug)]
struct Conformed {
    inner: Arc<DeltaScan>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for Conformed {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let stored = self.inner.schema();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut inner_projection = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let name = self.schema.field(i).name();
            let j = stored.index_of(name).map_err(|_| {
                Error::Unavailable(format!("the Delta table has no column `{name}` any more")).into_datafusion()
            })?;
            inner_projection.push(j);
        }
        let same = wanted
            .iter()
            .zip(&inner_projection)
            .all(|(&i, &j)| self.schema.field(i).data_type() == stored.field(j).data_type());
        let pushed: &[Expr] = if same { filters } else { &[] };
        let plan = self.inner.scan(state, Some(&inner_projection), pushed, limit).await?;
        if same {
            return Ok(plan);
        }
        let input = plan.schema();
        let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = wanted
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let f = self.schema.field(i);
                let column = Arc::new(Column::new(input.field(k).name(), k));
                let expr: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
                    if input.field(k).data_type() == f.data_type() {
                        column
                    } else {
                        Arc::new(CastExpr::new(column, f.data_type().clone(), None))
                    };
                (expr, f.name().clone())
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use datafusion::prelude::SessionContext;

    use super::*;

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("name", DataType::Utf8, true)]))
    }

    fn batch(ids: &[i64]) -> RecordBatch {
        let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
        RecordBatch::try_new(
            declared(),
            vec![Arc::new(Int64Array::from(ids.to_vec())), Arc::new(StringArray::from(names))],
        )
        .unwrap()
    }

    async fn count(table: Arc<dyn TableProvider>) -> datafusion::error::Result<usize> {
        let ctx = SessionContext::new();
        let batches = ctx.read_table(table)?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    fn note(rows: u64, mode: WriteMode) -> CommitNote {
        CommitNote { author: "sam".into(), mode, rows, base: None }
    }

    #[tokio::test]
    async fn versions_are_committed_whole_and_readable_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let state = SessionContext::new().state();
        let ctx = OpenContext::new(dir.path().to_path_buf(), state).with_declared(Some(declared()));
        let binding = Binding::Delta(DeltaBinding { location: "table".into() });
        let opened = DeltaAdapter.open(&binding, &ctx).await.unwrap();
        assert_eq!(opened.table.schema(), declared(), "a table never published is served as declared");
        let err = count(Arc::clone(&opened.table)).await.unwrap_err().to_string();
        assert!(err.contains("no version has been published yet"), "{err}");
        let versions = opened.versions.clone().unwrap();
        assert_eq!(versions.latest().await.unwrap(), None);

        assert_eq!(versions.commit(vec![batch(&[1, 2, 3])], note(3, WriteMode::Append)).await.unwrap(), 0);
        assert_eq!(versions.commit(vec![batch(&[4])], note(1, WriteMode::Append)).await.unwrap(), 1);
        // A commit checked against version 0 cannot land on top of version 1.
        let stale = CommitNote { base: Some(0), ..note(1, WriteMode::Append) };
        let e = versions.commit(vec![batch(&[5])], stale).await.unwrap_err().to_string();
        assert!(e.contains("another publish committed first"), "{e}");
        assert_eq!(count(Arc::clone(&opened.table)).await.unwrap(), 4);
        assert_eq!(versions.commit(vec![batch(&[9])], note(1, WriteMode::Replace)).await.unwrap(), 2);
        assert_eq!(count(Arc::clone(&opened.table)).await.unwrap(), 1);

        let (v0, n) = versions.at(VersionPin::Version(0)).await.unwrap();
        assert_eq!((count(v0).await.unwrap(), n), (3, 0));
        assert!(matches!(versions.at(VersionPin::Version(7)).await, Err(Error::NotFound(_))));
        let history = versions.history(10).await.unwrap();
        assert_eq!(history.iter().map(|h| h.version).collect::<Vec<_>>(), vec![2, 1, 0]);
        assert_eq!(history[0].author.as_deref(), Some("sam"));
        assert_eq!(history[0].mode.as_deref(), Some("replace"));
        assert_eq!(history[2].rows, Some(3));
        let (now, latest) = versions.at(VersionPin::AsOf(i64::MAX / 1_000_000)).await.unwrap();
        assert_eq!((count(now).await.unwrap(), latest), (1, 2));
        let first = history[2].committed_ms.unwrap();
        assert_eq!(versions.at(VersionPin::AsOf(first)).await.unwrap().1, 0);
        assert!(matches!(versions.at(VersionPin::AsOf(first - 1)).await, Err(Error::NotFound(_))));

        // Files written without a commit (a writer killed before its log entry) are not read.
        let stray = dir.path().join("table/part-stray.parquet");
        let file = std::fs::File::create(&stray).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, declared(), None).unwrap();
        w.write(&batch(&[100, 101])).unwrap();
        w.close().unwrap();
        assert_eq!(count(Arc::clone(&opened.table)).await.unwrap(), 1);

        // A location outside the product folder is refused like the files adapter's.
        let outside = Binding::Delta(DeltaBinding { location: "../elsewhere".into() });
        assert!(matches!(DeltaAdapter.open(&outside, &ctx).await, Err(Error::InvalidBinding(_))));
        // Without a declared schema a table never published cannot be served.
        let bare = OpenContext::new(dir.path().to_path_buf(), SessionContext::new().state());
        let fresh = Binding::Delta(DeltaBinding { location: "other".into() });
        let e = DeltaAdapter.open(&fresh, &bare).await.unwrap_err().to_string();
        assert!(e.contains("logicalType"), "{e}");
    }
}
