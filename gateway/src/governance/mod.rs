//! Federated computational governance: global and domain policies, masks, row filters.
//!
//! - [`policy`]: Cedar policies (global in `<mesh>/_governance/policies/`, per domain in
//!   `<mesh>/<domain>/_policies/`) deciding `discover`, `read` and `read_unmasked`.
//! - [`mask`]: typed mask strategies, selected per column classification.
//! - [`table`]: the governed table and its guard, the one enforcement point for every read.
//!
//! Masks and row filters are data, in `<mesh>/_governance/governance.yaml` (global) and
//! `<mesh>/<domain>/_governance.yaml` (domain):
//!
//! ```yaml
//! classifications: [public, internal, pii, confidential, restricted]  # the vocabulary (global only)
//! masks: {pii: redact, confidential: "null"}     # classification -> strategy (global only)
//! hash_salt_env: MESHGATE_MASK_SALT              # salt of the `hash` strategy (global only)
//! row_filters:
//!   - product: orders                            # `domain/product` in the global file
//!     except_roles: [sales_admin, auditor]       # or `roles: [...]`: who the filter applies to
//!     filter: "region = principal.region"        # SQL over the product's columns
//! ```
//!
//! Classifications are matched exactly (case-sensitive). A contract may use only the vocabulary:
//! the built-in `public` and `internal`, the `classifications` listed and the keys of `masks`;
//! anything else refuses the product at load. Every classified column asks the policy for
//! `read_unmasked`; a caller without it gets the classification's mask, or, when none is set, no
//! column at all (`deny_column`): masking fails closed. Row filters are parsed and type-checked
//! against their products before new governance files are put in force.
//!
//! `principal.<attr>` in a filter is replaced, in the parsed syntax tree, by a literal of the
//! caller's attribute (`subject`, `domain`, `purpose`, `clearance` or a mapped claim); a missing
//! attribute becomes NULL, which keeps no rows.
//!
//! Governance holds no state of its own: [`Rules`] is a value, loaded by [`Rules::load`], checked
//! against the products it governs by [`Rules::check`], and put in force by whoever owns the
//! snapshot (the access core swaps rules and catalog together). Decisions are pure functions of
//! the rules, the principal and the product ([`Rules::grant`]); caching them is the caller's.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable, col};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value as SqlValue, visit_expressions_mut};
use serde::Deserialize;

pub mod mask;
pub mod policy;
pub mod table;

pub use mask::MaskStrategy;
pub use policy::{Action, Policies, ProductAttrs, Resource, Verdict};
pub use table::{GovernedTable, OutputColumn, StoragePushdownOff, check_guarded, columns_read, explain};

use crate::auth::Principal;
use crate::catalog::{Port, Product};

/// Result with the governance [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why governance could not load or decide.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy file is invalid.
    #[error(transparent)]
    Policy(#[from] policy::Error),
    /// A governance file is invalid.
    #[error("{file}: {message}")]
    Config {
        /// File relative to the mesh.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A row filter does not fit its product.
    #[error("{file}: row filter `{filter}` of `{product}` is invalid: {message}")]
    RowFilter {
        /// The governance file holding it.
        file: String,
        /// Product.
        product: String,
        /// The filter.
        filter: String,
        /// Why.
        message: String,
    },
    /// Building the governed plan failed.
    #[error("building the governed table failed: {0}")]
    Plan(#[from] datafusion::error::DataFusionError),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GovernanceFile {
    #[serde(default)]
    classifications: Vec<String>,
    #[serde(default)]
    masks: BTreeMap<String, MaskStrategy>,
    #[serde(default)]
    hash_salt_env: Option<String>,
    #[serde(default)]
    row_filters: Vec<RowFilterRule>,
}

/// A row filter and whom it applies to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilterRule {
    /// Product (`name` in a domain file, `domain/name` in the global file).
    pub product: String,
    /// Applies only to principals with one of these roles (empty: everyone).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Does not apply to principals with one of these roles.
    #[serde(default)]
    pub except_roles: Vec<String>,
    /// SQL boolean expression over the product's columns and `principal.<attr>`.
    pub filter: String,
    /// The governance file the rule is written in, relative to the mesh.
    #[serde(skip)]
    pub file: String,
}

impl RowFilterRule {
    fn applies(&self, p: &Principal) -> bool {
        let has = |roles: &[String]| roles.iter().any(|r| p.roles.contains(r));
        (self.roles.is_empty() || has(&self.roles)) && !has(&self.except_roles)
    }
}

/// Classifications every mesh knows without declaring them: no mask is needed for them by
/// default, but they still ask `read_unmasked` like any other.
pub const BUILTIN_CLASSIFICATIONS: &[&str] = &["public", "internal"];

/// Everything in force at one time: policies, the classification vocabulary, masks, the hash
/// salt and row filters, loaded together ([`Rules::load`]) and checked against the products
/// before they are put in force ([`Rules::check`]).
#[derive(Debug)]
pub struct Rules {
    policies: Policies,
    /// Classifications contracts may use: the built-in ones, `classifications` and the keys of
    /// `masks` in the global file. Matched exactly (case-sensitive).
    vocabulary: std::collections::BTreeSet<String>,
    masks: BTreeMap<String, MaskStrategy>,
    salt: String,
    /// Row filters by `domain/product`.
    row_filters: BTreeMap<String, Vec<RowFilterRule>>,
}

/// What one principal may do with one port.
#[derive(Debug)]
pub struct Grant {
    /// The read decision.
    pub verdict: Verdict,
    /// `(column, strategy)` for every masked column.
    pub masks: Vec<(String, MaskStrategy)>,
    /// Row filters applied.
    pub row_filters: Vec<String>,
    /// The product as the principal sees it (when allowed).
    pub table: Option<Arc<GovernedTable>>,
}

fn read_file(path: &Path, rel: &str) -> Result<GovernanceFile> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_yaml::from_str(&t).map_err(|e| Error::Config { file: rel.into(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GovernanceFile::default()),
        Err(e) => Err(Error::Config { file: rel.into(), message: format!("cannot be read ({})", e.kind()) }),
    }
}

const GLOBAL_FILE: &str = "_governance/governance.yaml";

/// Parses a row filter and binds `principal.<attr>` to `p`'s attributes, typed against `contract`.
fn row_filter_expr(state: &SessionState, rule: &RowFilterRule, p: &Principal, contract: &DFSchema) -> Result<Expr> {
    let bad = |message: String| Error::RowFilter {
        file: rule.file.clone(),
        product: rule.product.clone(),
        filter: crate::text::clip(&rule.filter),
        message,
    };
    crate::query::EXPRESSION_LIMITS.check("the row filter", &rule.filter).map_err(|e| bad(e.to_string()))?;
    let dialect = state.config().options().sql_parser.dialect;
    let mut parsed = state.sql_to_expr_with_alias(&rule.filter, &dialect).map_err(|e| bad(e.to_string()))?;
    bind_principal(&mut parsed.expr, p);
    let expr = state.create_logical_expr_from_sql_expr(parsed, contract).map_err(|e| bad(e.to_string()))?;
    match expr.get_type(contract).map_err(|e| bad(e.to_string()))? {
        DataType::Boolean | DataType::Null => Ok(expr),
        other => Err(bad(format!("it is of type {other}; a row filter is a boolean expression"))),
    }
}

/// Replaces `principal.<attr>` with the caller's attribute, in the syntax tree.
fn bind_principal(expr: &mut SqlExpr, p: &Principal) {
    let _ = visit_expressions_mut(expr, |e| {
        if let SqlExpr::CompoundIdentifier(parts) = e
            && parts.len() == 2
            && parts[0].value.eq_ignore_ascii_case("principal")
        {
            let value = match parts[1].value.as_str() {
                "subject" => Some(p.subject.clone()),
                "domain" => p.domain.clone(),
                "purpose" => p.purpose.clone(),
                "clearance" => p.clearance.clone(),
                other => p.attributes.get(other).cloned(),
            };
            *e = SqlExpr::value(value.map_or(SqlValue::Null, SqlValue::SingleQuotedString));
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Policy attributes of a product.
pub fn attrs(product: &Product) -> ProductAttrs {
    ProductAttrs {
        domain: product.domain.clone(),
        name: product.name.clone(),
        owner: product.owner.clone().unwrap_or_default(),
        sensitivity: product.sensitivity.clone(),
        status: product.status.clone(),
        tags: product.tags.clone(),
    }
}

impl Rules {
    /// Reads the policies and governance files of the mesh in `mesh`.
    pub fn load(mesh: &Path) -> Result<Self> {
        let policies = Policies::load(mesh)?;
        let global = read_file(&mesh.join(GLOBAL_FILE), GLOBAL_FILE)?;
        let config = |message: String| Error::Config { file: GLOBAL_FILE.into(), message };
        let salt = match &global.hash_salt_env {
            Some(var) => std::env::var(var).map_err(|_| config(format!("hash_salt_env: variable {var} is not set")))?,
            None => String::new(),
        };
        if salt.is_empty() && global.masks.values().any(|m| *m == MaskStrategy::Hash) {
            return Err(config(
                "the `hash` mask needs a secret salt (unsalted hashes of names and emails are reversed by a dictionary): \
                 set `hash_salt_env` to a variable holding one"
                    .into(),
            ));
        }
        let mut vocabulary: std::collections::BTreeSet<String> =
            BUILTIN_CLASSIFICATIONS.iter().map(|c| c.to_string()).collect();
        vocabulary.extend(global.classifications.iter().cloned());
        vocabulary.extend(global.masks.keys().cloned());
        let mut row_filters: BTreeMap<String, Vec<RowFilterRule>> = BTreeMap::new();
        for mut r in global.row_filters {
            r.file = GLOBAL_FILE.into();
            row_filters.entry(r.product.clone()).or_default().push(r);
        }
        for d in std::fs::read_dir(mesh).into_iter().flatten().flatten() {
            let domain = d.file_name().to_string_lossy().into_owned();
            if domain.starts_with(['_', '.']) || !d.path().is_dir() {
                continue;
            }
            let rel = format!("{domain}/_governance.yaml");
            let f = read_file(&d.path().join("_governance.yaml"), &rel)?;
            if !f.masks.is_empty() || f.hash_salt_env.is_some() {
                return Err(Error::Config {
                    file: rel,
                    message: "masks are set globally; a domain file holds only row_filters".into(),
                });
            }
            for mut r in f.row_filters {
                r.file = rel.clone();
                row_filters.entry(format!("{domain}/{}", r.product)).or_default().push(r);
            }
        }
        Ok(Rules { policies, vocabulary, masks: global.masks, salt, row_filters })
    }

    /// Checks the rules against the products they govern: every row filter parses, names only
    /// columns of its product's contracts and is boolean. A product that is not loaded is not
    /// checked (its filters are checked when it appears).
    pub fn check<'a>(&self, state: &SessionState, products: impl IntoIterator<Item = &'a Product>) -> Result<()> {
        let probe = Principal::anonymous();
        for product in products {
            for rule in self.row_filters.get(&product.address()).into_iter().flatten() {
                for port in &product.ports {
                    let contract = DFSchema::try_from(Arc::clone(&port.schema))?;
                    row_filter_expr(state, rule, &probe, &contract)?;
                }
            }
        }
        Ok(())
    }

    /// The classifications used by `product`'s contracts that the rules do not know, as
    /// `(port, column, classification)`.
    pub fn unknown_classifications(&self, product: &Product) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for port in &product.ports {
            for field in port.schema.fields() {
                if let Some(c) = field.metadata().get("meshgate.classification")
                    && !self.vocabulary.contains(c)
                {
                    out.push((port.name.clone(), field.name().clone(), c.clone()));
                }
            }
        }
        out
    }

    /// The classification vocabulary, sorted.
    pub fn vocabulary(&self) -> Vec<String> {
        self.vocabulary.iter().cloned().collect()
    }

    /// Version of the policies (a digest of their files).
    pub fn version(&self) -> &str {
        &self.policies.version
    }

    /// Whether `p` may learn that `product` exists.
    pub fn may_discover(&self, p: &Principal, product: &Product) -> bool {
        let attrs = attrs(product);
        self.policies.decide(p, Action::Discover, &Resource::Product(&attrs)).map(|v| v.allowed).unwrap_or(false)
    }

    /// Whether `p` may operate the gateway: `admin` on the product `_governance/gateway`.
    pub fn may_admin(&self, p: &Principal) -> bool {
        let attrs = ProductAttrs {
            domain: "_governance".into(),
            name: "gateway".into(),
            sensitivity: "restricted".into(),
            status: "active".into(),
            ..Default::default()
        };
        self.policies.decide(p, Action::Admin, &Resource::Product(&attrs)).map(|v| v.allowed).unwrap_or(false)
    }

    /// Whether `p` may publish a new version of `product` (the policies' `write` action).
    pub fn write_verdict(&self, p: &Principal, product: &Product) -> Result<Verdict> {
        Ok(self.policies.decide(p, Action::Write, &Resource::Product(&attrs(product)))?)
    }

    /// Decides what `p` may read of `port`, building the governed table when allowed.
    pub fn grant(&self, state: &SessionState, p: &Principal, product: &Product, port: &Port) -> Result<Grant> {
        let attrs = attrs(product);
        let verdict = self.policies.decide(p, Action::Read, &Resource::Product(&attrs))?;
        if !verdict.allowed {
            return Ok(Grant { verdict, masks: vec![], row_filters: vec![], table: None });
        }
        let mut masks = Vec::new();
        let mut columns = Vec::new();
        for field in port.schema.fields() {
            // Every classified column asks the policy. Without `read_unmasked`, the column is
            // masked by its classification's strategy, or not served when there is none: a
            // classification is never a reason to serve in clear.
            let strategy = match field.metadata().get("meshgate.classification") {
                None => None,
                Some(classification) => {
                    let unmasked = self.policies.decide(
                        p,
                        Action::ReadUnmasked,
                        &Resource::Column(&attrs, field.name(), classification),
                    )?;
                    match unmasked.allowed {
                        true => None,
                        false => Some(self.masks.get(classification).copied().unwrap_or(MaskStrategy::DenyColumn)),
                    }
                }
            };
            let expr = match strategy {
                None => Some(col(datafusion::common::Column::new_unqualified(field.name()))),
                Some(s) => {
                    masks.push((field.name().clone(), s));
                    s.expr(field.name(), field.data_type(), &self.salt)
                }
            };
            if let Some(expr) = expr {
                columns.push(OutputColumn { name: field.name().clone(), expr });
            }
        }
        let mut applied = Vec::new();
        let mut filter: Option<Expr> = None;
        let contract = DFSchema::try_from(Arc::clone(&port.schema))?;
        for rule in self.row_filters.get(&product.address()).into_iter().flatten().filter(|r| r.applies(p)) {
            let expr = row_filter_expr(state, rule, p, &contract)?;
            applied.push(rule.filter.clone());
            filter = Some(match filter {
                None => expr,
                Some(f) => f.and(expr),
            });
        }
        let table = GovernedTable::try_new(Arc::clone(&port.table), columns, filter, &port.schema)?
            .with_source(product.address());
        Ok(Grant { verdict, masks, row_filters: applied, table: Some(Arc::new(table)) })
    }
}
