//! The one snapshot every decision is made with, and how a reload builds the next one.
//!
//! Products (the catalog) and rules (policies, masks, row filters) are read from the same mesh
//! folder and checked against each other before either is put in force: new rules must fit the
//! new products (their row filters parse against the contracts), and new products may only use
//! the classifications of the rules that will be in force. The result is one [`MeshSnapshot`],
//! swapped in with one store, so a decision never pairs new rules with an old catalog.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::execution::session_state::SessionState;
use serde::Serialize;

use super::error::Result;
use crate::auth::Principal;
use crate::catalog::{Catalog, CatalogState, Problem, Product};
use crate::governance::Rules;

/// Everything in force at one time.
#[derive(Debug, Default)]
pub struct MeshSnapshot {
    /// Every product folder of the mesh.
    pub catalog: CatalogState,
    /// Policies, masks and row filters; `None` when the gateway runs without governance.
    pub rules: Option<Arc<Rules>>,
    /// Increases with every reload.
    pub generation: u64,
}

impl MeshSnapshot {
    /// Whether `p` may learn that a product exists (everything, without governance).
    pub fn visible(&self, p: &Principal, product: Option<&Product>) -> bool {
        match (&self.rules, product) {
            (None, _) => true,
            (Some(rules), Some(prod)) => rules.may_discover(p, prod),
            // A product that did not load has no attributes to decide on: under governance it is
            // shown to no caller; operators see its problems in the log and the reload report.
            (Some(_), None) => false,
        }
    }

    /// Whether `p` may operate the gateway (reload); everyone may without governance.
    pub fn may_admin(&self, p: &Principal) -> bool {
        self.rules.as_ref().is_none_or(|r| r.may_admin(p))
    }
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

/// Reads the mesh folder and builds the snapshot that follows `old`. `governed` says whether
/// rules are read at all; `builtins` are the gateway's own products.
pub(crate) async fn next(
    catalog: &Catalog,
    state: &SessionState,
    old: &MeshSnapshot,
    governed: bool,
    builtins: &[Arc<Product>],
) -> Result<(MeshSnapshot, ReloadReport)> {
    let mut governance_problem = None;
    let prepared = match governed.then(|| Rules::load(catalog.mesh_dir())) {
        Some(Err(e)) => {
            governance_problem = Some(e.to_string());
            None
        }
        Some(Ok(rules)) => Some(rules),
        None => None,
    };
    let loaded = catalog.load_products(&old.catalog).await?;
    // New governance files go in force only if their row filters fit the products.
    let prepared =
        prepared.and_then(|rules| match rules.check(state, loaded.values().filter_map(|p| p.as_deref().ok())) {
            Ok(()) => Some(Arc::new(rules)),
            Err(e) => {
                governance_problem = Some(e.to_string());
                None
            }
        });
    if let Some(problem) = &governance_problem {
        tracing::warn!(error = %problem, "governance refused; the rules in force stay");
    }
    // Products are checked against the rules that will be in force: the new ones, or those
    // that stay.
    let rules = if governed { prepared.or_else(|| old.rules.clone()) } else { None };
    let loaded = match &rules {
        None => loaded,
        Some(r) => loaded.into_iter().map(|(k, p)| (k, p.and_then(|p| check_classifications(r, p)))).collect(),
    };
    let catalog_state = CatalogState::next(&old.catalog, loaded, builtins);
    let generation = old.generation + 1;
    let report = ReloadReport {
        generation,
        available: catalog_state.products().count(),
        problems: catalog_state.problems(),
        governance_problem,
    };
    Ok((MeshSnapshot { catalog: catalog_state, rules, generation }, report))
}

/// Refuses a product whose contracts use classifications the rules do not know.
fn check_classifications(rules: &Rules, product: Arc<Product>) -> Result<Arc<Product>, Vec<Problem>> {
    let unknown = rules.unknown_classifications(&product);
    if unknown.is_empty() {
        return Ok(product);
    }
    let known = rules.vocabulary().join(", ");
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
