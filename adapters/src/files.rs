//! The `files` adapter: Parquet, CSV, newline-delimited JSON and Arrow IPC files, one file or a
//! folder of them (hive-style `key=value/` partition folders recognised), read through DataFusion
//! listing tables over `object_store`.
//!
//! Locations are paths relative to the product's folder (they may not leave it), absolute paths,
//! or URLs: `file://`, and `s3://`, `gs://`, `az://`, `http(s)://` in a store the operator
//! configured and opened to the product's domain ([`crate::stores`]). Listings of remote
//! locations are cached (see [`crate::stores::RemoteListings`]) and dropped when the product is
//! re-opened.
//!
//! Projection, filter and limit pushdown come from the listing table: Parquet prunes row groups
//! and pages with statistics, every format reads only the projected columns it can and stops at
//! the limit.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Statistics, TableReference};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use serde::Deserialize;

use crate::{Adapter, Binding, Error, Health, OpenContext, Opened, Result, StorageHandle};

/// Binding of the `files` adapter.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilesBinding {
    /// A file or folder: relative to the product folder, absolute, or a URL.
    pub location: String,
    /// How the files are encoded.
    pub format: FileFormatKind,
    /// Only files ending with this are read; defaults to the format's usual extension.
    #[serde(default)]
    pub file_extension: Option<String>,
    /// Options for `format: csv`.
    #[serde(default)]
    pub csv: Option<CsvOptions>,
    /// Hive partition columns (`key=value/` folders) with their types. When absent they are
    /// discovered from the folder names and typed as strings.
    #[serde(default)]
    pub partition_columns: Option<Vec<PartitionColumn>>,
}

/// File encodings the adapter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormatKind {
    /// Apache Parquet.
    Parquet,
    /// Comma- (or otherwise) separated values.
    Csv,
    /// Newline-delimited JSON, one object per line.
    #[serde(alias = "ndjson", alias = "jsonl")]
    Json,
    /// Arrow IPC file format (Feather v2).
    #[serde(alias = "ipc", alias = "feather")]
    Arrow,
}

/// CSV options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CsvOptions {
    /// Whether the first line holds column names (default true).
    #[serde(default = "yes")]
    pub has_header: bool,
    /// Field delimiter, one ASCII character (default `,`).
    #[serde(default = "comma")]
    pub delimiter: char,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self { has_header: true, delimiter: ',' }
    }
}

fn yes() -> bool {
    true
}
fn comma() -> char {
    ','
}

/// A hive partition column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionColumn {
    /// Column name, as in `name=value/` folders.
    pub name: String,
    /// Type of its values.
    #[serde(rename = "type")]
    pub kind: PartitionType,
}

/// Types a partition value may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionType {
    /// UTF-8 text.
    String,
    /// 64-bit integer.
    Integer,
    /// Calendar date (`YYYY-MM-DD`).
    Date,
}

impl PartitionType {
    fn data_type(self) -> DataType {
        match self {
            PartitionType::String => DataType::Utf8,
            PartitionType::Integer => DataType::Int64,
            PartitionType::Date => DataType::Date32,
        }
    }
}

impl FilesBinding {
    /// The file format, starting from the session's table options so session-wide settings
    /// (e.g. reading Parquet strings as `Utf8`, not `Utf8View`) apply to every product.
    fn format(&self, state: &SessionState) -> Result<Arc<dyn FileFormat>> {
        let options = state.default_table_options();
        Ok(match self.format {
            FileFormatKind::Parquet => Arc::new(ParquetFormat::default().with_options(options.parquet)),
            FileFormatKind::Csv => {
                let o = self.csv.clone().unwrap_or_default();
                if !o.delimiter.is_ascii() {
                    return Err(Error::InvalidBinding(format!(
                        "csv.delimiter `{}` is not one ASCII character; use e.g. `,`, `;` or `\\t`",
                        o.delimiter
                    )));
                }
                Arc::new(
                    CsvFormat::default()
                        .with_options(options.csv)
                        .with_has_header(o.has_header)
                        .with_delimiter(o.delimiter as u8),
                )
            }
            FileFormatKind::Json => Arc::new(JsonFormat::default().with_options(options.json)),
            FileFormatKind::Arrow => Arc::new(crate::ipc::BlockwiseArrowFormat),
        })
    }

    fn extension(&self) -> String {
        if let Some(e) = &self.file_extension {
            return e.clone();
        }
        match self.format {
            FileFormatKind::Parquet => ".parquet",
            FileFormatKind::Csv => ".csv",
            FileFormatKind::Json => ".json",
            FileFormatKind::Arrow => ".arrow",
        }
        .to_string()
    }
}

/// Resolves a binding's location to a listing URL. Relative paths are joined to the product
/// folder and may not climb out of it; local paths (relative, absolute or `file://`) must lie
/// inside the product folder or a configured storage root ([`OpenContext::allows`]).
pub fn resolve_location(location: &str, ctx: &OpenContext) -> Result<ListingTableUrl> {
    if location.trim().is_empty() {
        return Err(Error::InvalidBinding(
            "location is empty; give a file or folder relative to the product folder, e.g. `data/`".into(),
        ));
    }
    let outside = || {
        Error::InvalidBinding(format!(
            "location `{location}` is outside the product folder and the storage roots the operator \
             allows (--storage-root); keep the data in the product folder or ask the operator to add its folder"
        ))
    };
    if location.contains("://") {
        let url = ListingTableUrl::parse(location)?;
        if url.scheme() == "file" {
            let path = url::Url::parse(location)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| Error::InvalidBinding(format!("location `{location}` is not a valid file URL")))?;
            if path.components().any(|c| c == Component::ParentDir) || !ctx.allows(&path) {
                return Err(outside());
            }
            return Ok(url);
        }
        ctx.stores.check(url.get_url(), &ctx.domain)?;
        // Naming the table makes its listing cacheable (remote listings only).
        let name = TableReference::bare(url.as_str());
        return Ok(url.with_table_ref(name));
    }
    let rel = Path::new(location);
    if rel.components().any(|c| c == Component::ParentDir) {
        return Err(Error::InvalidBinding(format!("location `{location}` contains `..`; write the path without it")));
    }
    let path: PathBuf = if rel.is_absolute() { rel.to_path_buf() } else { ctx.product_dir.join(rel) };
    if !ctx.allows(&path) {
        return Err(outside());
    }
    let mut s = path.to_string_lossy().into_owned();
    if (location.ends_with('/') || path.is_dir()) && !s.ends_with('/') {
        s.push('/');
    }
    Ok(ListingTableUrl::parse(s)?)
}

/// The `files` adapter.
#[derive(Debug, Default, Clone, Copy)]
pub struct FilesAdapter;

#[async_trait]
impl Adapter for FilesAdapter {
    fn kind(&self) -> &'static str {
        "files"
    }

    async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Opened> {
        let Binding::Files(b) = binding else {
            return Err(Error::InvalidBinding(format!("files adapter given a {} binding", binding.kind())));
        };
        let url = resolve_location(&b.location, ctx)?;
        if let (Some(name), Some(cache)) =
            (url.get_table_ref(), ctx.state.runtime_env().cache_manager.get_list_files_cache())
        {
            // Re-opening a product lists its files afresh.
            cache.drop_table_entries(name)?;
        }
        let extension = b.extension();
        let mut options = ListingOptions::new(b.format(&ctx.state)?).with_file_extension(extension.clone());
        let table = FilesTable { inner: None, url: url.clone(), extension, location: b.location.clone() };
        table.check_present(&ctx.state).await?;
        let partitions = match &b.partition_columns {
            Some(cols) => cols.iter().map(|c| (c.name.clone(), c.kind.data_type())).collect(),
            None => options
                .infer_partitions(&ctx.state, &url)
                .await?
                .into_iter()
                .map(|name| (name, DataType::Utf8))
                .collect::<Vec<_>>(),
        };
        options = options.with_table_partition_cols(partitions);
        let mut config = ListingTableConfig::new(url).with_listing_options(options).infer_schema(&ctx.state).await?;
        // Every reader produces the declared types itself (Parquet decodes straight into them,
        // the IPC reader casts each batch), so filters still reach the scan.
        if let Some(served) = config.file_schema.as_deref().and_then(|s| ctx.string_types.apply(s)) {
            config = config.with_schema(served);
        }
        let inner = ListingTable::try_new(config)?;
        let table = Arc::new(FilesTable { inner: Some(inner), ..table });
        Ok(Opened { table: Arc::clone(&table) as Arc<dyn TableProvider>, storage: table, versions: None })
    }
}

#[async_trait]
impl StorageHandle for FilesTable {
    /// One listing of the location (cached for remote stores).
    async fn health(&self, state: &SessionState) -> Health {
        match self.check_present(state).await {
            Ok(()) => Health::Ok,
            Err(e) => Health::Unavailable { reason: e.to_string() },
        }
    }
}

/// A listing table that first checks its files are still there, so data that disappears at run
/// time is reported as [`Error::Unavailable`] rather than read as an empty table.
#[derive(Debug)]
pub struct FilesTable {
    inner: Option<ListingTable>,
    url: ListingTableUrl,
    extension: String,
    location: String,
}

impl FilesTable {
    fn inner(&self) -> &ListingTable {
        self.inner.as_ref().expect("FilesTable is only handed out once opened")
    }

    async fn check_present(&self, state: &dyn Session) -> Result<()> {
        let unavailable = |why: &str| Error::Unavailable(format!("location `{}` {why}", self.location));
        let store = state
            .runtime_env()
            .object_store(&self.url)
            .map_err(|_| unavailable("uses a scheme with no object store registered"))?;
        let failed = |e: datafusion::error::DataFusionError| {
            tracing::warn!(location = %self.location, error = %e, "listing failed");
            unavailable(listing_failure(&e))
        };
        let mut files = self.url.list_all_files(state, store.as_ref(), &self.extension).await.map_err(failed)?;
        match files.next().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(failed(e)),
            None => Err(unavailable(&format!("holds no `*{}` files", self.extension))),
        }
    }
}

/// Why a listing failed, in words safe for clients (no store internals, no credentials).
///
/// `object_store` reports most HTTP failures of cloud stores as `Generic` with the status only in
/// its message (its retry error type is private), so the status is read from there.
fn listing_failure(e: &datafusion::error::DataFusionError) -> &'static str {
    const MISSING: &str = "cannot be listed: the bucket or path does not exist";
    const REFUSED: &str = "cannot be listed: the store refused the gateway's credentials";
    const DENIED: &str = "cannot be listed: the gateway's credentials may not read it";
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(os) = err.downcast_ref::<object_store::Error>() {
            return match os {
                object_store::Error::NotFound { .. } => MISSING,
                object_store::Error::Unauthenticated { .. } => REFUSED,
                object_store::Error::PermissionDenied { .. } => DENIED,
                other => {
                    let text = other.to_string();
                    if text.contains("status code: 404") {
                        MISSING
                    } else if text.contains("status code: 401") || text.contains("status code: 403") {
                        REFUSED
                    } else {
                        "cannot be listed: the store failed or did not answer in time"
                    }
                }
            };
        }
        cur = err.source();
    }
    "cannot be listed"
}

#[async_trait]
impl TableProvider for FilesTable {
    fn schema(&self) -> SchemaRef {
        self.inner().schema()
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
        self.check_present(state).await.map_err(Error::into_datafusion)?;
        self.inner().scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner().supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner().statistics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_stay_inside_the_product_or_a_storage_root() {
        let mesh = tempfile::tempdir().unwrap();
        let dir = mesh.path().join("sales/orders");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let root = tempfile::tempdir().unwrap();
        let state = datafusion::prelude::SessionContext::new().state();
        let ctx = OpenContext::new(dir.clone(), state);
        for bad in ["../customers/data", "data/../../x", ""] {
            assert!(matches!(resolve_location(bad, &ctx), Err(Error::InvalidBinding(_))), "{bad}");
        }
        let u = resolve_location("data/", &ctx).unwrap();
        assert!(u.as_str().ends_with("/sales/orders/data/"), "{}", u.as_str());
        let elsewhere = root.path().join("x.parquet");
        let file_url = format!("file://{}", elsewhere.display());
        for outside in [elsewhere.to_str().unwrap(), file_url.as_str(), "/etc/passwd", "file:///etc/passwd"] {
            let e = resolve_location(outside, &ctx).unwrap_err();
            assert!(e.to_string().contains("--storage-root"), "{outside}: {e}");
        }
        // A symbolic link inside the product folder pointing outside it is outside.
        std::os::unix::fs::symlink(root.path(), dir.join("link")).unwrap();
        assert!(resolve_location("link/x.parquet", &ctx).is_err());
        let roots: Arc<[PathBuf]> = Arc::from(vec![std::fs::canonicalize(root.path()).unwrap()]);
        let ctx = ctx.with_storage_roots(roots);
        assert!(resolve_location(elsewhere.to_str().unwrap(), &ctx).is_ok());
        assert!(resolve_location(&file_url, &ctx).is_ok());
        assert!(resolve_location("link/x.parquet", &ctx).is_ok());
        assert!(resolve_location("/etc/passwd", &ctx).is_err());
        let sneaky = format!("{}/link/../x.parquet", dir.display());
        assert!(resolve_location(&sneaky, &ctx).is_err(), "`..` after a link is refused");
    }
}
