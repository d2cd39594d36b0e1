//! Storage adapters for meshgate.
//!
//! An adapter turns a product's *binding* (where and how its data is stored, as written under
//! `customProperties` in the product's ODCS contract) into a DataFusion [`TableProvider`]. The
//! gateway never sees an adapter type: SQL, projection/filter/limit pushdown and streaming all come
//! from DataFusion through that one seam.
//!
//! - [`Binding`]: the closed, serde-tagged set of storage kinds ([`binding`]).
//! - [`Adapter`]: the behaviour each kind implements: open a binding as an [`Opened`] table,
//!   whose [`StorageHandle`] reports health and is closed when the product goes away.
//! - [`AdapterRegistry`]: maps a binding to its adapter.
//! - [`delta`]: Delta Lake tables, read at their latest commit or a pinned version, and the
//!   storage products published through the gateway are written to ([`Versioned`]).
//! - [`files`]: Parquet, CSV, newline-delimited JSON and Arrow IPC through DataFusion listing
//!   tables over `object_store`.
//! - [`flight`]: a product of another gateway, any Flight server's path, or a Flight SQL
//!   query (federation); [`flight::Caller`] is who a read is for.
//! - [`ipc`]: Arrow IPC files read block by block (the `files` adapter's IPC reader).
//! - [`memory`]: in-memory record batches, for tests and embedding.
//! - [`postgres`]: a PostgreSQL table, view or read-only query, with predicates PostgreSQL
//!   evaluates identically sent in its `WHERE`, optionally read in parallel ranges.
//! - [`pushdown`]: which predicates SQL-speaking sources are sent, and batches conformed to the
//!   announced schema.
//! - [`stores`]: object stores (S3, GCS, Azure, HTTP) and PostgreSQL databases from the
//!   operator's configuration, and the listing cache for remote locations.
//! - [`secret`]: credentials named by reference, never written in clear.
//!
//! Adding a storage kind is one module here, one [`Binding`] variant and one registry line; see
//! the checklist in [`binding`].

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef, Fields, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::execution::session_state::SessionState;

pub mod binding;
pub mod delta;
pub mod error;
pub mod files;
pub mod flight;
pub mod ipc;
pub mod memory;
pub mod postgres;
pub mod pushdown;
mod registry;
pub mod secret;
pub mod stores;

pub use binding::Binding;
pub use error::{Error, Result};
pub use registry::AdapterRegistry;
pub use stores::ObjectStores;

/// What an adapter may use while opening a binding.
#[derive(Debug, Clone)]
pub struct OpenContext {
    /// Folder of the product in the mesh; relative locations resolve against it and may not
    /// leave it.
    pub product_dir: PathBuf,
    /// Session whose runtime (object stores, caches) the table is read with.
    pub state: SessionState,
    /// How string and binary columns are typed in the table's schema.
    pub string_types: StringTypes,
    /// Folders (canonical) outside the product folder that local bindings may read; see
    /// [`OpenContext::allows`].
    pub storage_roots: Arc<[PathBuf]>,
    /// The remote stores bindings may read ([`ObjectStores::check`]).
    pub stores: Arc<ObjectStores>,
    /// The product's domain: the name of the folder holding the product folder.
    pub domain: String,
    /// The schema the contract declares, when every column's type can be taken from it: what
    /// storage that does not exist yet (a product never published) is served with.
    pub declared: Option<SchemaRef>,
}

impl OpenContext {
    /// The context for a product in `product_dir`, read with `state`, allowed to read local
    /// files only inside `product_dir`.
    pub fn new(product_dir: PathBuf, state: SessionState) -> Self {
        let string_types = StringTypes::of_session(&state);
        let domain = product_dir
            .parent()
            .and_then(|d| d.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self {
            product_dir,
            state,
            string_types,
            storage_roots: Arc::from(Vec::new()),
            stores: Arc::new(ObjectStores::default()),
            domain,
            declared: None,
        }
    }

    /// Serves storage that does not exist yet with `schema` (the contract's).
    pub fn with_declared(mut self, schema: Option<SchemaRef>) -> Self {
        self.declared = schema;
        self
    }

    /// Also allows the remote locations of `stores`.
    pub fn with_stores(mut self, stores: Arc<ObjectStores>) -> Self {
        self.stores = stores;
        self
    }

    /// Also allows local files inside `roots` (canonical paths).
    pub fn with_storage_roots(mut self, roots: Arc<[PathBuf]>) -> Self {
        self.storage_roots = roots;
        self
    }

    /// Whether a local `path` may be read: it lies (after resolving `..` and symbolic links)
    /// inside the product folder or one of the storage roots. A domain team's binding can thus
    /// never name the gateway's own secrets, users file or audit log.
    pub fn allows(&self, path: &std::path::Path) -> bool {
        let resolved = resolve(path);
        std::iter::once(&self.product_dir)
            .chain(self.storage_roots.iter())
            .any(|root| resolved.starts_with(resolve(root)))
    }
}

/// `path` with `..` and symbolic links resolved as far as it exists; the part that does not
/// exist yet is appended as written (normalized).
fn resolve(path: &std::path::Path) -> PathBuf {
    let path = normalize(path);
    let mut existing = path.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let rest = path.strip_prefix(existing).unwrap_or(std::path::Path::new(""));
            return real.join(rest);
        }
        match existing.parent() {
            Some(parent) => existing = parent,
            None => return path,
        }
    }
}

/// `path` with `.` and `..` removed lexically.
fn normalize(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// How string and binary columns are typed for clients, whatever the storage holds.
///
/// Files written by Arrow-native tools often carry `Utf8View`/`BinaryView` columns (a Parquet
/// file embeds its writer's Arrow schema; an IPC file stores it). Many clients cannot read view
/// types (older JDBC and SQLAlchemy drivers), and a slice of a view array drags its whole shared
/// data buffers onto the wire, so by default every adapter announces and streams the classic
/// types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringTypes {
    /// `Utf8` and `Binary` (and the classic forms inside lists, structs and maps).
    #[default]
    Classic,
    /// Whatever the storage yields, view types included.
    AsStored,
}

impl StringTypes {
    /// The setting a session was configured with: DataFusion's one switch for view types,
    /// `datafusion.execution.parquet.schema_force_view_types`, decides for every format.
    pub fn of_session(state: &SessionState) -> Self {
        if state.config().options().execution.parquet.schema_force_view_types {
            StringTypes::AsStored
        } else {
            StringTypes::Classic
        }
    }

    /// `schema` with its columns typed as this setting says; `None` when nothing changes.
    pub fn apply(self, schema: &Schema) -> Option<SchemaRef> {
        if self == StringTypes::AsStored {
            return None;
        }
        let fields: Vec<FieldRef> = schema.fields().iter().map(classic_field).collect();
        if fields.iter().zip(schema.fields()).all(|(a, b)| a == b) {
            return None;
        }
        Some(Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
    }
}

fn classic_field(f: &FieldRef) -> FieldRef {
    let t = classic_type(f.data_type());
    if &t == f.data_type() { Arc::clone(f) } else { Arc::new(f.as_ref().clone().with_data_type(t)) }
}

/// `t` with view types replaced by their classic equivalents, at any depth.
pub fn classic_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::ListView(f) | DataType::List(f) => DataType::List(classic_field(f)),
        DataType::LargeListView(f) | DataType::LargeList(f) => DataType::LargeList(classic_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(classic_field(f), *n),
        DataType::Struct(fs) => DataType::Struct(fs.iter().map(classic_field).collect::<Fields>()),
        DataType::Map(f, sorted) => DataType::Map(classic_field(f), *sorted),
        DataType::Dictionary(k, v) => DataType::Dictionary(k.clone(), Box::new(classic_type(v))),
        other => other.clone(),
    }
}

#[cfg(test)]
mod string_type_tests {
    use arrow::datatypes::Field;

    use super::*;

    #[test]
    fn view_types_become_classic_at_any_depth() {
        let item = Arc::new(Field::new("item", DataType::Utf8View, true));
        let schema = Schema::new(vec![
            Field::new("a", DataType::Utf8View, false),
            Field::new("b", DataType::BinaryView, true),
            Field::new("c", DataType::List(item), true),
            Field::new("d", DataType::Int64, false),
        ]);
        let out = StringTypes::Classic.apply(&schema).unwrap();
        assert_eq!(out.field(0), &Field::new("a", DataType::Utf8, false));
        assert_eq!(out.field(1).data_type(), &DataType::Binary);
        assert_eq!(out.field(2).data_type(), &DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))));
        assert_eq!(out.field(3).data_type(), &DataType::Int64);
        assert!(StringTypes::AsStored.apply(&schema).is_none());
        assert!(StringTypes::Classic.apply(&out).is_none(), "nothing to change");
    }
}

/// Whether a product's storage can currently be read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    /// The data is reachable.
    Ok,
    /// The data cannot be read now; `reason` is safe to show to clients (no server paths).
    Unavailable {
        /// Why, for people.
        reason: String,
    },
}

/// What the gateway asks of an opened table's storage besides reading it.
#[async_trait]
pub trait StorageHandle: Debug + Send + Sync {
    /// One cheap probe that the data can be read now (a listing, a `SELECT 1`). The gateway
    /// bounds it with a timeout and caches the answer; it must not read the data.
    async fn health(&self, state: &SessionState) -> Health;

    /// Releases what the storage holds (pools, connections) once the product it serves has gone
    /// away: re-opened with new manifests or removed, and no read uses it any more.
    async fn close(&self) {}
}

/// Storage that is always readable and holds nothing to release (data in memory).
#[derive(Debug, Default, Clone, Copy)]
pub struct InMemoryStorage;

#[async_trait]
impl StorageHandle for InMemoryStorage {
    async fn health(&self, _state: &SessionState) -> Health {
        Health::Ok
    }
}

/// A binding opened by its adapter.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The data, for DataFusion.
    pub table: Arc<dyn TableProvider>,
    /// Its storage's health and lifecycle.
    pub storage: Arc<dyn StorageHandle>,
    /// Versions of the data, and new ones written, where the storage keeps them (Delta).
    pub versions: Option<Arc<dyn Versioned>>,
}

/// How a publish changes a product's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// The new rows are added to the current version's.
    Append,
    /// The new rows are the whole new version.
    Replace,
}

impl WriteMode {
    /// The mode's name, as requests spell it.
    pub fn name(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Replace => "replace",
        }
    }
}

/// One committed version of a product's data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionInfo {
    /// The storage's version number (Delta: the commit number, from 0).
    pub version: u64,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub committed_ms: Option<i64>,
    /// The operation (`WRITE`, `CREATE TABLE`, ...), as the storage names it.
    pub operation: Option<String>,
    /// Who published it, when published through the gateway.
    pub author: Option<String>,
    /// `append` or `replace`, when published through the gateway.
    pub mode: Option<String>,
    /// Rows the commit added.
    pub rows: Option<u64>,
}

/// Which version of a product's data a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionPin {
    /// Exactly this version.
    Version(u64),
    /// The last version committed at or before this time (milliseconds since the Unix epoch).
    AsOf(i64),
}

/// What a publish records with its commit.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitNote {
    /// The principal who published.
    pub author: String,
    /// Append or replace.
    pub mode: WriteMode,
    /// Rows written.
    pub rows: u64,
    /// The version the publish was checked against: the commit becomes the version after it,
    /// or fails ([`Error::Write`]) when another commit got there first. `None`: on top of
    /// whatever is latest.
    pub base: Option<u64>,
}

/// Storage that keeps versions of a product's data and accepts new ones.
#[async_trait]
pub trait Versioned: Debug + Send + Sync {
    /// The latest committed version, or `None` when nothing was committed yet.
    async fn latest(&self) -> Result<Option<VersionInfo>>;

    /// Up to `limit` versions, newest first.
    async fn history(&self, limit: usize) -> Result<Vec<VersionInfo>>;

    /// The data as it was at `pin`, with the same schema as the opened table; a version that
    /// does not exist (or is no longer kept) is [`Error::NotFound`].
    async fn at(&self, pin: VersionPin) -> Result<(Arc<dyn TableProvider>, u64)>;

    /// Commits `batches` (already conformed to the table's schema and checked) as one new
    /// version, atomically: readers see all of it or none. Returns the new version.
    async fn commit(&self, batches: Vec<arrow::array::RecordBatch>, note: CommitNote) -> Result<u64>;
}

/// One storage kind.
///
/// Implementations are cheap to share (`Arc<dyn Adapter>`) and hold no per-product state: the
/// [`Opened`] table they return does.
#[async_trait]
pub trait Adapter: Debug + Send + Sync {
    /// Name of the kind, as written in the binding's `adapter` field.
    fn kind(&self) -> &'static str;

    /// Opens `binding` as a table. Called when the catalog loads a product; reading the returned
    /// provider must fail with [`Error::Unavailable`] (wrapped in a DataFusion error) when the data
    /// disappears later, never panic.
    async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Opened>;
}
