//! The catalog `mesh` as one principal sees it: one schema per domain, one table per product.
//!
//! Names: `mesh.<domain>.<product>` is the product's default port; `mesh.<domain>.<product>__<port>`
//! names a port by its name or version (`mesh.sales.orders__v2`, `mesh.sales."orders__2.0.0"`;
//! quote names holding `.` or `-`). A product name that itself contains `__` is matched whole
//! first.
//!
//! Resolving a name is the decision: a product the principal may not discover does not exist
//! here (not in listings, not by name), a product it may discover but not read fails with
//! [`Error::Denied`], and every other name resolves to the principal's governed table (masks
//! and row filters below anything the caller writes). Every resolved port is recorded, so the
//! plan knows what it reads (for audit and tickets). PATH/JSON reads and SQL statements both
//! resolve through [`PrincipalView::resolve`]. The schema `_mesh` holds the system tables
//! (see `listing`).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionState;

use super::error::{Error, Result};
use super::listing::{SYSTEM_SCHEMA, SystemSchema};
use super::snapshot::MeshSnapshot;
use crate::auth::Principal;
use crate::catalog::{Port, Product};
use crate::governance::Grant;

/// The name of the catalog in SQL.
pub const CATALOG: &str = "mesh";

/// Separates a product from its port in a table name.
pub const PORT_SEPARATOR: &str = "__";

/// Decisions per principal and port, cached for the generation they were made in.
#[derive(Debug)]
pub(crate) struct Decisions {
    grants: moka::sync::Cache<String, Arc<Grant>>,
    /// Hits and misses of `grants`.
    pub(crate) stats: crate::metrics::CacheStats,
    /// Parses row filters.
    state: SessionState,
}

impl Decisions {
    pub(crate) fn new(state: SessionState) -> Self {
        Self { grants: moka::sync::Cache::new(50_000), stats: Default::default(), state }
    }

    /// What `p` may read of `port` under the rules of `snapshot` (`None` without governance).
    pub(crate) fn grant(
        &self,
        snapshot: &MeshSnapshot,
        p: &Principal,
        product: &Product,
        port: &Port,
    ) -> Result<Option<Arc<Grant>>> {
        let Some(rules) = &snapshot.rules else { return Ok(None) };
        let key = format!(
            "{}|{}|{}|{}",
            serde_json::to_string(p).unwrap_or_default(),
            product.address(),
            port.name,
            snapshot.generation,
        );
        if let Some(g) = self.grants.get(&key) {
            self.stats.hit();
            return Ok(Some(g));
        }
        self.stats.miss();
        let g = Arc::new(rules.grant(&self.state, p, product, port)?);
        self.grants.insert(key, Arc::clone(&g));
        Ok(Some(g))
    }

    /// Forgets every decision (after a reload: they name an older generation).
    pub(crate) fn clear(&self) {
        self.grants.invalidate_all();
    }
}

/// One port a plan reads, with the decision it was read under.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The product.
    pub product: Arc<Product>,
    /// The port.
    pub port: Arc<Port>,
    /// The decision; `None` without governance.
    pub grant: Option<Arc<Grant>>,
}

/// The mesh as one principal sees it, at one snapshot.
#[derive(Debug)]
pub(crate) struct PrincipalView {
    snapshot: Arc<MeshSnapshot>,
    principal: Principal,
    decisions: Arc<Decisions>,
    resolved: Mutex<Vec<Resolved>>,
}

impl PrincipalView {
    pub(crate) fn new(snapshot: Arc<MeshSnapshot>, principal: Principal, decisions: Arc<Decisions>) -> Self {
        Self { snapshot, principal, decisions, resolved: Mutex::new(Vec::new()) }
    }

    /// Resolves a product port to the table the principal reads, and records it.
    pub(crate) fn resolve(
        &self,
        domain: &str,
        product: &str,
        port: Option<&str>,
    ) -> Result<(Arc<dyn TableProvider>, Resolved)> {
        let (snapshot, p) = (&self.snapshot, &self.principal);
        let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(p, prod);
        let (product, port) = snapshot.catalog.resolve_visible(domain, product, port, &visible)?;
        let grant = self.decisions.grant(snapshot, p, &product, &port)?;
        let table: Arc<dyn TableProvider> = match &grant {
            None => Arc::clone(&port.table),
            Some(g) => match &g.table {
                Some(t) => Arc::clone(t) as Arc<dyn TableProvider>,
                None => {
                    return Err(Error::Denied { product: product.address(), policy_ids: g.verdict.policy_ids.clone() });
                }
            },
        };
        let resolved = Resolved { product, port, grant };
        self.resolved.lock().unwrap_or_else(|e| e.into_inner()).push(resolved.clone());
        Ok((table, resolved))
    }

    /// Every port resolved so far, each once, in the order first resolved.
    pub(crate) fn take_resolved(&self) -> Vec<Resolved> {
        let all = std::mem::take(&mut *self.resolved.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out: Vec<Resolved> = Vec::with_capacity(all.len());
        for r in all {
            if !out.iter().any(|o| Arc::ptr_eq(&o.port, &r.port)) {
                out.push(r);
            }
        }
        out
    }

    /// The snapshot the view is of.
    pub(crate) fn snapshot(&self) -> &Arc<MeshSnapshot> {
        &self.snapshot
    }

    /// Whose view it is.
    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The decisions cache the view reads grants from.
    pub(crate) fn decisions(&self) -> &Decisions {
        &self.decisions
    }

    /// The domains with a product the principal may discover, in order.
    pub(crate) fn domains(&self) -> Vec<String> {
        let mut out: Vec<String> = self.visible_products().map(|p| p.domain.clone()).collect();
        out.dedup();
        out
    }

    /// The products the principal may discover, in (domain, product) order.
    pub(crate) fn visible_products(&self) -> impl Iterator<Item = &Arc<Product>> {
        self.snapshot.catalog.products().filter(|p| self.snapshot.visible(&self.principal, Some(p.as_ref())))
    }

    /// Splits a table name into product and port, preferring a product named exactly so.
    fn product_and_port<'a>(&self, domain: &str, name: &'a str) -> (&'a str, Option<&'a str>) {
        let exact = self.snapshot.catalog.entries.contains_key(&(domain.to_string(), name.to_string()));
        match name.rsplit_once(PORT_SEPARATOR) {
            Some((product, port)) if !exact && !product.is_empty() && !port.is_empty() => (product, Some(port)),
            _ => (name, None),
        }
    }
}

/// The catalog `mesh` for one principal.
#[derive(Debug)]
pub(crate) struct MeshCatalog(pub(crate) Arc<PrincipalView>);

impl CatalogProvider for MeshCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut out = self.0.domains();
        out.push(SYSTEM_SCHEMA.into());
        out
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SYSTEM_SCHEMA {
            return Some(Arc::new(SystemSchema(Arc::clone(&self.0))));
        }
        self.0
            .visible_products()
            .any(|p| p.domain == name)
            .then(|| Arc::new(DomainSchema { view: Arc::clone(&self.0), domain: name.to_string() }) as _)
    }
}

/// One domain's products as tables.
#[derive(Debug)]
struct DomainSchema {
    view: Arc<PrincipalView>,
    domain: String,
}

#[async_trait]
impl SchemaProvider for DomainSchema {
    fn table_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.view.visible_products().filter(|p| p.domain == self.domain) {
            out.push(p.name.clone());
            out.extend(p.ports.iter().map(|port| format!("{}{PORT_SEPARATOR}{}", p.name, port.name)));
        }
        out
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let (product, port) = self.view.product_and_port(&self.domain, name);
        match self.view.resolve(&self.domain, product, port) {
            Ok((table, _)) => Ok(Some(table)),
            // Missing and invisible are the same to the caller: no such table.
            Err(Error::Catalog(_)) => Ok(None),
            Err(e) => Err(DataFusionError::External(Box::new(e))),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        let (product, port) = self.view.product_and_port(&self.domain, name);
        let (snapshot, p) = (&self.view.snapshot, &self.view.principal);
        let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(p, prod);
        snapshot.catalog.resolve_visible(&self.domain, product, port, &visible).is_ok()
    }
}
