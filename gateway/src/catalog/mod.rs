//! The product catalog: every product folder of the mesh, loaded, validated and opened.
//!
//! - [`manifest`]: the ODPS / ODCS files as written by domain teams.
//! - [`model`]: what a loaded product looks like ([`Product`], [`Port`], [`Entry`]).
//! - `load`: validation and opening, one product at a time.
//! - `watch`: reloads when files under the mesh folder change.
//!
//! The catalog is a snapshot swapped atomically ([`arc_swap`]): readers never wait for a
//! reload, and a request keeps the snapshot it started with. A product that fails to load is
//! listed as unavailable with its problems; a product that loaded before and fails on reload
//! keeps serving its last good version, with the new problems reported beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use datafusion::execution::session_state::SessionState;
use meshgate_adapters::AdapterRegistry;
use serde::Serialize;

use crate::governance::{Governance, Rules};

mod load;
pub mod manifest;
pub mod model;
mod watch;

pub use load::{PRODUCT_FILE, is_valid_name};
pub use model::{CatalogState, Contract, Entry, Port, Problem, Product, ProductKey};
pub use watch::CatalogWatcher;

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
    /// The governance files cannot be loaded at start-up.
    #[error("governance: {0}")]
    Governance(String),
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// Generation after the reload.
    pub generation: u64,
    /// Products serving.
    pub available: usize,
    /// Products whose newest manifests were refused (serving the last good version or nothing).
    pub problems: BTreeMap<String, Vec<Problem>>,
    /// Why the newest governance files were refused (the previous rules stay in force).
    pub governance_problem: Option<String>,
}

/// The catalog. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Catalog {
    loader: Loader,
    state: ArcSwap<CatalogState>,
    reload_lock: tokio::sync::Mutex<()>,
    generation: tokio::sync::watch::Sender<u64>,
    governance: Option<Arc<Governance>>,
    builtins: std::sync::Mutex<Vec<Arc<Product>>>,
}

impl Catalog {
    /// Loads every product under `mesh_dir`. Fails only when the folder cannot be read; broken
    /// products are listed as unavailable.
    pub async fn load(mesh_dir: &Path, registry: AdapterRegistry, state: SessionState) -> Result<Self> {
        Self::load_governed(mesh_dir, registry, state, false, &[]).await
    }

    /// Like [`Catalog::load`], also loading the mesh's governance (policies, masks, row
    /// filters) when `governed`; reloads then reload both. Bindings may read local files in
    /// their product folder and in `storage_roots`.
    pub async fn load_governed(
        mesh_dir: &Path,
        registry: AdapterRegistry,
        state: SessionState,
        governed: bool,
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
        let governance = if governed {
            Some(Arc::new(Governance::load(&mesh_dir).map_err(|e| Error::Governance(e.to_string()))?))
        } else {
            None
        };
        let catalog = Self {
            loader: Loader { mesh_dir, registry, state, storage_roots: Arc::from(storage_roots) },
            state: ArcSwap::from_pointee(CatalogState::default()),
            reload_lock: tokio::sync::Mutex::new(()),
            generation: tokio::sync::watch::Sender::new(0),
            governance,
            builtins: std::sync::Mutex::new(Vec::new()),
        };
        let report = catalog.reload().await?;
        if let Some(problem) = report.governance_problem {
            // At startup there are no rules that worked before to fall back on.
            return Err(Error::Governance(problem));
        }
        Ok(catalog)
    }

    /// The mesh folder (canonical).
    pub fn mesh_dir(&self) -> &Path {
        &self.loader.mesh_dir
    }

    /// The adapter registry products are opened with.
    pub fn registry(&self) -> &AdapterRegistry {
        &self.loader.registry
    }

    /// The session state tables were opened with.
    pub fn session_state(&self) -> &SessionState {
        &self.loader.state
    }

    /// What an adapter may use to open (or check) a binding of the product in `product_dir`.
    pub fn open_context(&self, product_dir: &Path) -> meshgate_adapters::OpenContext {
        self.loader.open_context(product_dir)
    }

    /// Adds a product served by the gateway itself (like `_governance/audit`); it stays in every
    /// later snapshot.
    pub fn add_builtin(&self, product: Product) {
        let product = Arc::new(product);
        self.builtins.lock().expect("catalog lock").push(Arc::clone(&product));
        let old = self.snapshot();
        let mut entries = old.entries.clone();
        entries
            .insert((product.domain.clone(), product.name.clone()), Entry { product: Some(product), problems: vec![] });
        self.state.store(Arc::new(CatalogState { entries, generation: old.generation }));
    }

    /// The governance in force, when the catalog is governed.
    pub fn governance(&self) -> Option<&Arc<Governance>> {
        self.governance.as_ref()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        self.state.load_full()
    }

    /// Notified with the new generation after every reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reads the mesh folder again. On failure to read it, the current state stays.
    pub async fn reload(&self) -> Result<ReloadReport> {
        let _guard = self.reload_lock.lock().await;
        let old = self.snapshot();
        let mut governance_problem = None;
        let prepared = match self.governance.as_ref().map(|g| g.prepare()) {
            Some(Err(e)) => {
                governance_problem = Some(e.to_string());
                None
            }
            Some(Ok(rules)) => Some(rules),
            None => None,
        };
        let folders = product_folders(&self.loader.mesh_dir)?;
        let mut loaded = Vec::new();
        for ((domain, name), dir) in folders {
            let product = self.loader.load_product(&domain, &name, &dir).await;
            loaded.push(((domain, name), product));
        }
        // New governance files go in force only if their row filters fit the products.
        let prepared = prepared.and_then(|rules| {
            let products = loaded.iter().filter_map(|(_, p)| p.as_ref().ok());
            match Governance::check(&rules, &self.loader.state, products) {
                Ok(()) => Some(rules),
                Err(e) => {
                    governance_problem = Some(e.to_string());
                    None
                }
            }
        });
        if let Some(problem) = &governance_problem {
            tracing::warn!(error = %problem, "governance refused; the rules in force stay");
        }
        // Products are checked against the rules that will be in force: the new ones, or those
        // that stay.
        let current = if prepared.is_none() { self.governance.as_ref().map(|g| g.rules()) } else { None };
        let in_force: Option<&Rules> = prepared.as_ref().or(current.as_deref());
        let mut entries = BTreeMap::new();
        for ((domain, name), product) in loaded {
            let product = product.and_then(|p| match in_force {
                Some(rules) => check_classifications(rules, p),
                None => Ok(p),
            });
            let entry = match product {
                Ok(p) => Entry { product: Some(Arc::new(p)), problems: vec![] },
                Err(problems) => {
                    let last_good = old.entries.get(&(domain.clone(), name.clone())).and_then(|e| e.product.clone());
                    for p in &problems {
                        tracing::warn!(product = %format!("{domain}/{name}"), problem = %p, serving_last_good = last_good.is_some(), "product refused");
                    }
                    Entry { product: last_good, problems }
                }
            };
            entries.insert((domain, name), entry);
        }
        for b in self.builtins.lock().expect("catalog lock").iter() {
            entries
                .insert((b.domain.clone(), b.name.clone()), Entry { product: Some(Arc::clone(b)), problems: vec![] });
        }
        let generation = old.generation + 1;
        let report = ReloadReport {
            generation,
            available: entries.values().filter(|e| e.product.is_some()).count(),
            governance_problem,
            problems: entries
                .iter()
                .filter(|(_, e)| !e.problems.is_empty())
                .map(|((d, p), e)| (format!("{d}/{p}"), e.problems.clone()))
                .collect(),
        };
        if let (Some(g), Some(rules)) = (&self.governance, prepared) {
            g.install(rules);
        }
        self.state.store(Arc::new(CatalogState { entries, generation }));
        self.generation.send_replace(generation);
        tracing::info!(generation, available = report.available, refused = report.problems.len(), "catalog loaded");
        Ok(report)
    }
}

/// Refuses a product whose contracts use classifications governance does not know.
fn check_classifications(rules: &Rules, product: Product) -> Result<Product, Vec<Problem>> {
    let unknown = Governance::unknown_classifications(rules, &product);
    if unknown.is_empty() {
        return Ok(product);
    }
    let known = Governance::vocabulary(rules).join(", ");
    Err(unknown
        .into_iter()
        .map(|(port, column, classification)| Problem {
            file: format!("{}/{}/{port}.odcs.yaml", product.domain, product.name),
            field: format!("schema[0].properties[{column}].classification"),
            message: format!(
                "classification `{}` is not in the governance vocabulary (matched exactly): {known}; \
                 use one of them, or ask governance to add it to `classifications` in _governance/governance.yaml",
                crate::text::clip(&classification)
            ),
        })
        .collect())
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
    /// Resolves a product address: domain, product and optionally a port name or version.
    pub fn resolve(&self, domain: &str, product: &str, port: Option<&str>) -> Result<(Arc<Product>, Arc<Port>)> {
        self.resolve_visible(domain, product, port, &|_, _, _| true)
    }

    /// Like [`CatalogState::resolve`], for a caller who sees only the products `visible` allows:
    /// an invisible product is reported exactly like a missing one, and lists of what exists
    /// name only visible products.
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
