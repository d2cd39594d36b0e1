//! Storage adapters for meshgate.
//!
//! An adapter turns a product's *binding* (where and how its data is stored, as written under
//! `customProperties` in the product's ODCS contract) into a DataFusion [`TableProvider`]. The
//! gateway never sees an adapter type: SQL, projection/filter/limit pushdown and streaming all come
//! from DataFusion through that one seam.
//!
//! - [`Binding`]: the closed, serde-tagged set of storage kinds ([`binding`]).
//! - [`Adapter`]: the behaviour each kind implements (open a table, report health).
//! - [`AdapterRegistry`]: maps a binding to its adapter.
//! - [`files`]: Parquet, CSV, newline-delimited JSON and Arrow IPC through DataFusion listing
//!   tables over `object_store`.
//! - [`memory`]: in-memory record batches, for tests and embedding.
//!
//! Adding a storage kind is one module here, one [`Binding`] variant and one registry line; see
//! the checklist in [`binding`].

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::execution::session_state::SessionState;

pub mod binding;
pub mod error;
pub mod files;
pub mod memory;
mod registry;

pub use binding::Binding;
pub use error::{Error, Result};
pub use registry::AdapterRegistry;

/// What an adapter may use while opening a binding.
#[derive(Debug, Clone)]
pub struct OpenContext {
    /// Folder of the product in the mesh; relative locations resolve against it and may not
    /// leave it.
    pub product_dir: PathBuf,
    /// Session whose runtime (object stores, caches) the table is read with.
    pub state: SessionState,
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

/// One storage kind.
///
/// Implementations are cheap to share (`Arc<dyn Adapter>`) and hold no per-product state: the
/// [`TableProvider`] they return does.
#[async_trait]
pub trait Adapter: Debug + Send + Sync {
    /// Name of the kind, as written in the binding's `adapter` field.
    fn kind(&self) -> &'static str;

    /// Opens `binding` as a table. Called when the catalog loads a product; reading the returned
    /// provider must fail with [`Error::Unavailable`] (wrapped in a DataFusion error) when the data
    /// disappears later, never panic.
    async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Arc<dyn TableProvider>>;

    /// Checks that the data behind an opened table is reachable now.
    async fn health(&self, table: &Arc<dyn TableProvider>, ctx: &OpenContext) -> Health;
}
