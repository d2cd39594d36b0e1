//! The product catalog: every product folder of the mesh, loaded, validated and opened.
//!
//! - [`manifest`]: the ODPS / ODCS files as written by domain teams.
//! - [`model`]: what a loaded product looks like ([`Product`], [`Port`], [`Entry`]).
//! - [`sqltype`]: how served columns are described to SQL clients.
//! - `load`: validation and opening, one product at a time.
//! - `standard`: validation against the standards' bundled JSON Schemas (ODPS v1.0.0, ODCS v3.1.0).
//! - [`builtin`]: the shape of the gateway's own products (`_governance/audit`, `_governance/quality`).
//! - `watch`: reloads when files under the mesh folder change.
//!
//! The catalog knows products, not governance: [`Catalog::load_products`] reads every product
//! folder, and [`CatalogState::next`] builds the next state from what loaded and the state
//! before it. A product that fails to load is listed as unavailable with its problems; a
//! product that loaded before and fails on reload keeps serving its last good version, with
//! the new problems reported beside it. The access core owns the state in force and swaps it
//! together with the governance rules, so no decision ever pairs new rules with an old catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::execution::session_state::SessionState;
use futures::StreamExt;
use meshgate_adapters::{AdapterRegistry, ObjectStores};

pub mod accel;
pub mod builtin;
mod load;
pub mod manifest;
pub mod model;
pub mod sqltype;
mod standard;
mod watch;

pub use load::{PRODUCT_FILE, is_valid_name};
pub use model::{CatalogState, Contract, Entry, Port, Problem, Product, ProductKey};
pub use watch::{CatalogWatcher, RetryTimer};

use load::Loader;

/// The domain of the gateway's own products (`_governance/audit`).
pub const RESERVED_DOMAIN: &str = "_governance";

/// Result with the catalog's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a product could not be found or served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A path element is not a valid name.
    #[error("{what} `{value}` is not a valid name: use lowercase letters, digits, `_`, `-` and `.`")]
    InvalidName {
        /// Which element (`domain`, `product`, `port`).
        what: &'static str,
        /// What was given (escaped for display).
        value: String,
    },
    /// No such domain.
    #[error("no domain `{domain}`; domains: {known}")]
    NoDomain {
        /// Domain asked for.
        domain: String,
        /// Domains that exist.
        known: String,
    },
    /// No such product in an existing domain.
    #[error("domain `{domain}` has no product `{product}`; products: {known}")]
    NoProduct {
        /// Domain.
        domain: String,
        /// Product asked for.
        product: String,
        /// Products of the domain.
        known: String,
    },
    /// No such port (or version) on an existing product.
    #[error("product `{product}` has no port or version `{port}`; ports: {known}")]
    NoPort {
        /// `domain/product`.
        product: String,
        /// Port asked for.
        port: String,
        /// Ports of the product.
        known: String,
    },
    /// The product exists but could not be loaded.
    #[error("product `{product}` is unavailable: {reason}")]
    Unavailable {
        /// `domain/product`.
        product: String,
        /// The problems, for the owning team.
        reason: String,
    },
    /// The mesh folder itself cannot be read.
    #[error("the mesh folder cannot be read: {0}")]
    MeshUnreadable(String),
}

/// What one read of the mesh folder found: each product folder's product, or its problems.
pub type Loaded = BTreeMap<ProductKey, Result<Arc<Product>, Vec<Problem>>>;

/// Products opened at once while loading.
const CONCURRENT_LOADS: usize = 8;

/// Reads and opens the products of one mesh folder. Holds no state in force.
#[derive(Debug)]
pub struct Catalog {
    loader: Loader,
}

impl Catalog {
    /// A catalog of the products under `mesh_dir`, opened with `registry` in `state`. Bindings
    /// may read local files in their product folder and in `storage_roots`. Fails only when a
    /// folder cannot be resolved.
    pub fn open(
        mesh_dir: &Path,
        registry: AdapterRegistry,
        state: SessionState,
        storage_roots: &[PathBuf],
    ) -> Result<Self> {
        let mesh_dir = std::fs::canonicalize(mesh_dir)
            .map_err(|e| Error::MeshUnreadable(format!("{} ({})", mesh_dir.display(), e.kind())))?;
        let storage_roots = storage_roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r)
                    .map_err(|e| Error::MeshUnreadable(format!("storage root {} ({})", r.display(), e.kind())))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            loader: Loader {
                mesh_dir,
                registry,
                state,
                storage_roots: Arc::from(storage_roots),
                stores: Arc::new(ObjectStores::default()),
            },
        })
    }

    /// Also lets bindings read the remote locations of `stores`.
    pub fn with_stores(mut self, stores: Arc<ObjectStores>) -> Self {
        self.loader.stores = stores;
        self
    }

    /// The mesh folder (canonical).
    pub fn mesh_dir(&self) -> &Path {
        &self.loader.mesh_dir
    }

    /// The session products are opened (and their storage probed) in.
    pub fn state(&self) -> &SessionState {
        &self.loader.state
    }

    /// Reads every product folder of the mesh, a few at once. A product of `old` that loaded
    /// cleanly and whose manifests are unchanged is kept as it is (its storage stays open, its
    /// schema is not inferred again); the others are opened anew. Fails only when the mesh
    /// folder cannot be read.
    pub async fn load_products(&self, old: &CatalogState) -> Result<Loaded> {
        let loads = product_folders(&self.loader.mesh_dir)?.into_iter().map(|(key, dir)| async move {
            let fingerprint = fingerprint(&dir);
            let unchanged = old
                .entries
                .get(&key)
                .filter(|e| e.problems.is_empty())
                .and_then(|e| e.product.clone())
                .filter(|p| p.fingerprint == fingerprint);
            let product = match unchanged {
                Some(p) => Ok(p),
                None => {
                    self.loader.load_product(&key.0, &key.1, &dir).await.map(|p| Arc::new(Product { fingerprint, ..p }))
                }
            };
            (key, product)
        });
        Ok(futures::stream::iter(loads).buffer_unordered(CONCURRENT_LOADS).collect().await)
    }
}

/// Digest of the manifests (`*.yaml`, `*.yml`) directly in a product folder: names and content.
/// Data files do not count: they are read afresh by every scan.
fn fingerprint(dir: &Path) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_manifest(p) && p.is_file())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        h.update([0]);
        // An unreadable file digests as empty; loading it reports why.
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().into()
}

/// Whether `path` names a manifest or governance file (whose change calls for a reload), as
/// opposed to data.
pub fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "cedar" | "json"))
}

/// `(domain, product) -> folder` for every folder holding a product manifest. Folders starting
/// with `.` or `_` are reserved (governance, hidden) and skipped.
fn product_folders(mesh: &Path) -> Result<BTreeMap<ProductKey, PathBuf>> {
    let unreadable = |e: std::io::Error| Error::MeshUnreadable(e.kind().to_string());
    let mut out = BTreeMap::new();
    for d in std::fs::read_dir(mesh).map_err(unreadable)? {
        let d = d.map_err(unreadable)?;
        let domain = d.file_name().to_string_lossy().into_owned();
        if domain.starts_with(['.', '_']) || !d.path().is_dir() {
            continue;
        }
        for p in std::fs::read_dir(d.path()).map_err(unreadable)? {
            let p = p.map_err(unreadable)?;
            let name = p.file_name().to_string_lossy().into_owned();
            if !name.starts_with(['.', '_']) && p.path().join(PRODUCT_FILE).is_file() {
                out.insert((domain.clone(), name), p.path());
            }
        }
    }
    Ok(out)
}

/// Decides which products a caller may learn of: `(domain, product, loaded product if any)`.
pub type Visibility<'a> = &'a (dyn Fn(&str, &str, Option<&Product>) -> bool + Sync);

impl CatalogState {
    /// The state after `loaded`: each refused product keeps the version `old` served (its
    /// last good one), with the new problems beside it; `builtins` are served as they are.
    pub fn next(old: &CatalogState, loaded: Loaded, builtins: &[Arc<Product>]) -> CatalogState {
        let mut entries = BTreeMap::new();
        for ((domain, name), product) in loaded {
            let entry = match product {
                Ok(p) => Entry { product: Some(p), problems: vec![] },
                Err(problems) => {
                    let before = old.entries.get(&(domain.clone(), name.clone()));
                    let last_good = before.and_then(|e| e.product.clone());
                    // Retries find the same problems again: say them once.
                    if before.is_none_or(|e| e.problems != problems) {
                        for p in &problems {
                            tracing::warn!(product = %format!("{domain}/{name}"), problem = %p, serving_last_good = last_good.is_some(), "product refused");
                        }
                    }
                    Entry { product: last_good, problems }
                }
            };
            entries.insert((domain, name), entry);
        }
        for b in builtins {
            entries
                .insert((b.domain.clone(), b.name.clone()), Entry { product: Some(Arc::clone(b)), problems: vec![] });
        }
        CatalogState { entries }
    }

    /// The problems of every product whose newest manifests were refused, by `domain/product`.
    pub fn problems(&self) -> BTreeMap<String, Vec<Problem>> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.problems.is_empty())
            .map(|((d, p), e)| (format!("{d}/{p}"), e.problems.clone()))
            .collect()
    }

    /// Resolves a product address (domain, product and optionally a port name or version) for a
    /// caller who sees only the products `visible` allows: an invisible product is reported
    /// exactly like a missing one, and lists of what exists name only visible products.
    pub fn resolve_visible(
        &self,
        domain: &str,
        product: &str,
        port: Option<&str>,
        visible: Visibility<'_>,
    ) -> Result<(Arc<Product>, Arc<Port>)> {
        for (what, v) in [("domain", Some(domain)), ("product", Some(product)), ("port", port)] {
            if let Some(v) = v.filter(|v| !is_valid_name(v) && *v != RESERVED_DOMAIN) {
                return Err(Error::InvalidName { what, value: crate::text::clip(v) });
            }
        }
        let seen = |(d, p): &&ProductKey, e: &&Entry| visible(d, p, e.product.as_deref());
        let entry = self
            .entries
            .get(&(domain.to_string(), product.to_string()))
            .filter(|e| visible(domain, product, e.product.as_deref()));
        let entry = match entry {
            Some(e) => e,
            None if self.entries.iter().any(|(k, e)| k.0 == domain && seen(&k, &e)) => {
                return Err(Error::NoProduct {
                    domain: domain.into(),
                    product: product.into(),
                    known: join(
                        self.entries.iter().filter(|(k, e)| k.0 == domain && seen(k, e)).map(|(k, _)| k.1.as_str()),
                    ),
                });
            }
            None => {
                let mut domains: Vec<&str> =
                    self.entries.iter().filter(|(k, e)| seen(k, e)).map(|(k, _)| k.0.as_str()).collect();
                domains.dedup();
                return Err(Error::NoDomain { domain: domain.into(), known: join(domains.into_iter()) });
            }
        };
        let Some(p) = &entry.product else {
            return Err(Error::Unavailable {
                product: format!("{domain}/{product}"),
                reason: entry.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            });
        };
        let port = match port {
            None => Arc::clone(&p.ports[p.default_port]),
            Some(name) => {
                p.ports.iter().find(|x| x.name == name || x.version.as_deref() == Some(name)).cloned().ok_or_else(
                    || Error::NoPort {
                        product: p.address(),
                        port: name.into(),
                        known: join(p.ports.iter().map(|x| match &x.version {
                            Some(v) => format!("{} ({v})", x.name),
                            None => x.name.clone(),
                        })),
                    },
                )?
            }
        };
        Ok((Arc::clone(p), port))
    }

    /// Every servable product.
    pub fn products(&self) -> impl Iterator<Item = &Arc<Product>> {
        self.entries.values().filter_map(|e| e.product.as_ref())
    }
}

fn join<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    let v: Vec<String> = items.map(|s| format!("`{}`", s.as_ref())).collect();
    if v.is_empty() { "(none)".to_string() } else { v.join(", ") }
}
