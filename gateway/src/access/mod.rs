//! The access core: one home for "who may see and read what", below every front.
//!
//! ```text
//!   Flight front     Flight SQL front     HTTP catalog     producer path
//!        └────────────────┴─────────┬────────┴──────────────────┘
//!                      decode → AccessCore → encode
//!   discover · describe · health · authorize(principal, request) → AuthorizedPlan
//!   ticket(plan, shard) · read_ticket / execute(plan, shard) → ReadStream · reload
//!                                   │
//!        MeshSnapshot (one ArcSwap: catalog state + rules + generation)
//!        PrincipalView → catalog `mesh`: schema per domain, governed table per product
//!        Executor (own runtime) · read slots (semaphore) · audit token per call
//!                                   │
//!                     adapters' TableProviders (only through governed tables)
//! ```
//!
//! - [`snapshot`]: the snapshot in force and how a reload builds the next one.
//! - [`mesh`]: the catalog `mesh` as one principal sees it (naming: `mesh.<domain>.<product>`,
//!   `mesh.<domain>.<product>__<port>`).
//! - [`listing`]: the tables a principal can name, with keys, and the `_mesh` system tables.
//! - [`plan`]: read requests, shards and the authorized plan.
//! - `params`: statement parameters (`$1`, `?`), bound values and how tickets carry them.
//! - `exec`: the execution runtime and the audited stream.
//! - [`limits`]: per-statement memory, time and row bounds.
//! - `describe`: `describe` and `health` documents.
//! - [`error`]: every call's errors and the table mapping them to gRPC codes.
//!
//! Nothing else reaches an adapter: fronts hold the core, and the core hands out plans over
//! governed tables only, checks after physical planning that every scan kept its guard, and
//! records every outcome in the audit log.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use futures::StreamExt;
use futures::stream::BoxStream;
use meshgate_adapters::VersionPin;
use meshgate_adapters::flight::Caller;
use meshgate_proto::v1::TicketClaims;
use meshgate_proto::v1::ticket_claims::Read;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

mod describe;
pub mod error;
mod exec;
pub mod limits;
pub mod listing;
pub mod mesh;
mod params;
pub mod plan;
pub mod publish;
mod shard;
pub mod snapshot;
mod trust;
mod usage;

pub use crate::audit::Client;
pub use error::{Error, Result};
pub use limits::StatementLimits;
pub use listing::{ForeignKey, SYSTEM_SCHEMA, TableEntry, TableKind};
pub use mesh::{CATALOG, PORT_SEPARATOR, Resolved};
pub use params::MAX_BYTES as MAX_PARAMETER_BYTES;
use plan::Assignment;
pub use plan::{AuthorizedPlan, ReadRequest, Shard, SqlRead};
pub use publish::{Incoming, PublishError, Published};
pub(crate) use shard::listed_files;
pub use snapshot::{MeshSnapshot, ReloadReport};
pub use usage::UsageDay;

use crate::audit::{self, AuditLog, AuditToken};
use crate::auth::Principal;
use crate::catalog::{Catalog, Product};
use crate::query::{self, ReadSpec};
use crate::ticket::TicketSigner;
use exec::Executor;
use mesh::{Decisions, MeshCatalog, PrincipalView};

/// Who is calling, from where, through which call (`GetFlightInfo`, `DoGet`, ...): what every
/// core method that records an outcome needs.
#[derive(Debug, Clone)]
pub struct Call {
    /// The call's name, as the audit log records it.
    pub rpc: String,
    /// Who is calling.
    pub principal: Principal,
    /// Where the call came from.
    pub client: Client,
}

/// A signed ticket for one endpoint of a plan.
#[derive(Debug, Clone)]
pub struct IssuedTicket {
    /// The bytes to put in a Flight `Ticket`.
    pub ticket: Vec<u8>,
    /// When the ticket stops being accepted.
    pub expires: SystemTime,
}

/// A running read: its schema and its batches, counted and audited.
pub struct ReadStream {
    /// What is streamed (the schema announced for the plan).
    pub schema: SchemaRef,
    /// The products read, for messages.
    pub label: String,
    /// The batches; the stream ends only once the read's outcome is durable.
    pub batches: BoxStream<'static, Result<RecordBatch>>,
    /// The message body compression the read asked for (`lz4`, `zstd`), if any.
    pub compression: Option<crate::query::Compression>,
}

impl std::fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadStream").field("label", &self.label).finish_non_exhaustive()
    }
}

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// Whether policies, masks and row filters are read and enforced.
    pub governed: bool,
    /// Worker threads of the execution runtime (0: one per core).
    pub exec_threads: usize,
    /// Reads that may stream at once; one more is refused with `RESOURCE_EXHAUSTED`.
    pub max_reads: usize,
    /// Bounds on each SQL statement.
    pub statements: StatementLimits,
    /// Most Arrow bytes one publish stages before its rules are checked and it is committed.
    pub max_publish_bytes: u64,
    /// Bytes one stream's batches may pin between storage and the network; past it the
    /// stream reads storage only as fast as its client takes the data.
    pub stream_budget: usize,
    /// Bytes the batches of all streams together may pin.
    pub streams_budget: usize,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self {
            governed: false,
            exec_threads: 0,
            max_reads: DEFAULT_MAX_READS,
            statements: StatementLimits::default(),
            max_publish_bytes: publish::DEFAULT_MAX_PUBLISH_BYTES,
            stream_budget: exec::DEFAULT_STREAM_BUDGET,
            streams_budget: exec::DEFAULT_STREAMS_BUDGET,
        }
    }
}

/// Longest SQL statement text accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// The DoGet header with which a reader resumes a shard: the rows it already has.
pub const RESUME_HEADER: &str = "x-meshgate-offset";

/// Reads streaming at once by default.
pub const DEFAULT_MAX_READS: usize = 256;

/// The access core. Share it behind an `Arc`.
pub struct AccessCore {
    catalog: Catalog,
    state: ArcSwap<MeshSnapshot>,
    options: CoreOptions,
    builtins: Vec<Arc<Product>>,
    reload_lock: tokio::sync::Mutex<()>,
    generation: tokio::sync::watch::Sender<u64>,
    decisions: Arc<Decisions>,
    ctx: SessionContext,
    signer: TicketSigner,
    now: fn() -> SystemTime,
    audit: Option<Arc<AuditLog>>,
    exec: Executor,
    /// What the batches of running reads may pin ([`exec::Budget`]).
    budget: exec::Budget,
    reads: Arc<Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    reloads: crate::metrics::ReloadStats,
    usage: Arc<usage::UsageCache>,
    quality: Arc<crate::quality::Quality>,
    lineage: Option<Arc<crate::lineage::Lineage>>,
    /// One lock per port published to, held from a publish's checks to its commit.
    publishing: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for AccessCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessCore")
            .field("mesh", &self.catalog.mesh_dir())
            .field("generation", &self.state.load().generation)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AccessCore`].
pub struct CoreBuilder {
    catalog: Catalog,
    ctx: SessionContext,
    signer: TicketSigner,
    options: CoreOptions,
    builtins: Vec<Arc<Product>>,
    now: fn() -> SystemTime,
    audit: Option<Arc<AuditLog>>,
    stop: tokio::sync::watch::Receiver<bool>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    quality: Arc<crate::quality::Quality>,
    lineage: Option<Arc<crate::lineage::Lineage>>,
}

impl std::fmt::Debug for CoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreBuilder")
            .field("mesh", &self.catalog.mesh_dir())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl CoreBuilder {
    /// Uses `options`.
    pub fn with_options(mut self, options: CoreOptions) -> Self {
        self.options = options;
        self
    }

    /// Serves `product` (one of the gateway's own, like `_governance/audit`) in every snapshot.
    pub fn with_builtin(mut self, product: Product) -> Self {
        self.builtins.push(Arc::new(product));
        self
    }

    /// Records every outcome in `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Ends running streams (with `UNAVAILABLE`, their outcome recorded) when `stop` turns true.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// Counts what reads deliver in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Keeps quality outcomes in `quality` (serve them as `_governance/quality` with
    /// [`with_builtin`](Self::with_builtin) where governance runs).
    pub fn with_quality(mut self, quality: Arc<crate::quality::Quality>) -> Self {
        self.quality = quality;
        self
    }

    /// Emits an OpenLineage run for every read that starts streaming and every publish.
    pub fn with_lineage(mut self, lineage: Arc<crate::lineage::Lineage>) -> Self {
        self.lineage = Some(lineage);
        self
    }

    /// Uses `now` as the clock for tickets (tests).
    pub fn with_clock(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self
    }

    /// Starts the execution runtime and loads the mesh. Fails when the governance files cannot
    /// be put in force (at startup there are no rules that worked before to fall back on).
    pub async fn build(self) -> Result<Arc<AccessCore>> {
        let exec = Executor::new(self.options.exec_threads)
            .map_err(|e| Error::Internal(format!("cannot start the execution runtime: {e}")))?;
        let core = Arc::new(AccessCore {
            state: ArcSwap::from_pointee(MeshSnapshot::default()),
            reload_lock: tokio::sync::Mutex::new(()),
            generation: tokio::sync::watch::Sender::new(0),
            decisions: Arc::new(Decisions::new(self.ctx.state())),
            reads: Arc::new(Semaphore::new(self.options.max_reads)),
            budget: exec::Budget::new(self.options.stream_budget, self.options.streams_budget),
            catalog: self.catalog,
            options: self.options,
            builtins: self.builtins,
            ctx: self.ctx,
            signer: self.signer,
            now: self.now,
            audit: self.audit,
            exec,
            stop: self.stop,
            metrics: self.metrics,
            reloads: Default::default(),
            usage: Default::default(),
            quality: self.quality,
            lineage: self.lineage,
            publishing: Default::default(),
        });
        let report = core.reload().await?;
        if let Some(problem) = report.governance_problem {
            return Err(Error::GovernanceRefused(problem));
        }
        Ok(core)
    }
}

impl AccessCore {
    /// A core over `catalog`, planning in `ctx` and signing tickets with `signer`.
    pub fn builder(catalog: Catalog, ctx: SessionContext, signer: TicketSigner) -> CoreBuilder {
        CoreBuilder {
            catalog,
            ctx,
            signer,
            options: CoreOptions::default(),
            builtins: Vec::new(),
            now: SystemTime::now,
            audit: None,
            stop: tokio::sync::watch::channel(false).1,
            metrics: None,
            quality: Default::default(),
            lineage: None,
        }
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.state.load_full()
    }

    /// Notified with the new generation after every reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The mesh folder (canonical).
    pub fn mesh_dir(&self) -> &Path {
        self.catalog.mesh_dir()
    }

    /// Reads the mesh folder again and puts products and rules in force together. On failure
    /// to read the folder, the snapshot in force stays.
    pub async fn reload(&self) -> Result<ReloadReport> {
        let _guard = self.reload_lock.lock().await;
        let old = self.snapshot();
        let state = self.ctx.state();
        let (next, report) =
            match snapshot::next(&self.catalog, &state, &old, self.options.governed, &self.builtins).await {
                Ok(x) => x,
                Err(e) => {
                    self.reloads.failed();
                    return Err(e);
                }
            };
        self.reloads.ok(report.problems.len());
        self.state.store(Arc::new(next));
        self.decisions.clear();
        self.generation.send_replace(report.generation);
        tracing::info!(
            generation = report.generation,
            available = report.available,
            refused = report.problems.len(),
            governance_refused = report.governance_problem.is_some(),
            "mesh loaded"
        );
        Ok(report)
    }

    /// [`AccessCore::reload`] on behalf of `p`, who must be allowed to operate the gateway.
    pub async fn reload_as(&self, p: &Principal) -> Result<ReloadReport> {
        if !self.snapshot().may_admin(p) {
            return Err(Error::Denied { product: "the gateway (reload)".into(), policy_ids: vec![] });
        }
        self.reload().await
    }

    /// Every product port `p` may discover and read, matching `criteria` (`tag:x`, or a
    /// case-insensitive substring of address, title or description; empty for all), each as a
    /// plan of its whole port. Products `p` may discover but not read are left out.
    pub async fn discover(self: &Arc<Self>, p: &Principal, criteria: &[u8]) -> Result<Vec<AuthorizedPlan>> {
        let criteria =
            std::str::from_utf8(criteria).map_err(|_| query::Error::NotUtf8("the criteria"))?.trim().to_lowercase();
        let (core, p) = (Arc::clone(self), p.clone());
        self.exec.run(async move { core.discover_now(&p, &criteria).await }).await
    }

    async fn discover_now(&self, p: &Principal, criteria: &str) -> Result<Vec<AuthorizedPlan>> {
        let snapshot = self.snapshot();
        let mut out = Vec::new();
        for product in snapshot.catalog.products().filter(|x| snapshot.visible(p, Some(x.as_ref()))) {
            let hit = match criteria.strip_prefix("tag:") {
                Some(tag) => product.tags.iter().any(|t| t.to_lowercase() == tag.trim()),
                None => [product.address(), product.title.clone(), product.description.clone()]
                    .iter()
                    .any(|s| s.to_lowercase().contains(criteria)),
            };
            if !hit {
                continue;
            }
            for port in &product.ports {
                let spec = ReadSpec {
                    domain: product.domain.clone(),
                    product: product.name.clone(),
                    port: Some(port.name.clone()),
                    ..ReadSpec::default()
                };
                match self.plan_in(&snapshot, p.clone(), ReadRequest::Product(spec), None).await {
                    Ok(plan) => out.push(plan),
                    // Discoverable but not readable: listed nowhere a ticket would be useless.
                    Err(Error::Denied { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// The product `domain/name` (its port `port`, or the default one) as `p` sees it: manifest,
    /// contract, status and problems. A product `p` may not discover does not exist.
    pub fn describe(&self, p: &Principal, (domain, name, port): (String, String, Option<String>)) -> Result<Value> {
        let snapshot = self.snapshot();
        let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(p, prod);
        let access = |product: &Product, port: &Arc<crate::catalog::Port>| match self
            .decisions
            .grant(&snapshot, p, product, port)
        {
            Ok(None) => describe::PortAccess { readable: true, ..Default::default() },
            Ok(Some(g)) => describe::PortAccess {
                readable: g.table.is_some(),
                masks: g.masks.iter().map(|(c, s)| (c.clone(), s.name().to_string())).collect(),
                filtered: !g.row_filters.is_empty(),
            },
            Err(_) => describe::PortAccess::default(),
        };
        describe::describe(&snapshot, (domain, name, port), &visible, &access)
    }

    /// [`describe`](Self::describe) with what is measured now beside the contract: the last
    /// quality check and the freshness of the port's data.
    pub async fn describe_live(
        &self,
        p: &Principal,
        (domain, name, port): (String, String, Option<String>),
    ) -> Result<Value> {
        let mut out = self.describe(p, (domain.clone(), name.clone(), port.clone()))?;
        let snapshot = self.snapshot();
        let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(p, prod);
        let Ok((product, port)) = snapshot.catalog.resolve_visible(&domain, &name, port.as_deref(), &visible) else {
            return Ok(out);
        };
        if let Value::Object(t) = self.trust_json(&product, &port).await
            && let Some(Value::Object(contract)) = out.get_mut("contract")
        {
            contract.extend(t);
        }
        // Versions are shown to those who may read them (a pinned read names one); row counts
        // only to those who see every row.
        let grant = self.decisions.grant(&snapshot, p, &product, &port).ok().flatten();
        let readable = grant.as_ref().is_none_or(|g| g.table.is_some());
        if let (Some(versions), true) = (&port.versions, readable) {
            let all_rows = grant.as_ref().is_none_or(|g| g.row_filters.is_empty());
            out["versions"] = match versions.history(DESCRIBED_VERSIONS).await {
                Ok(list) => Value::Array(list.iter().map(|v| version_json(v, all_rows)).collect()),
                Err(e) => {
                    tracing::info!(product = %product.address(), error = %e, "versions could not be listed");
                    json!({"error": "the versions cannot be listed right now"})
                }
            };
        }
        Ok(out)
    }

    /// `(domain, name)` of every product `p` may discover, loaded or refused.
    pub fn product_keys(&self, p: &Principal) -> Vec<(String, String)> {
        let snapshot = self.snapshot();
        snapshot
            .catalog
            .entries
            .iter()
            .filter(|(_, e)| snapshot.visible(p, e.product.as_deref()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Daily use of the product `domain/name` over the last `days` days (see [`UsageDay`]), from
    /// the audit log; `None` when the gateway keeps no audit log. A product `p` may not discover
    /// does not exist.
    pub async fn usage(
        &self,
        p: &Principal,
        (domain, name): (String, String),
        days: u32,
    ) -> Result<Option<Vec<UsageDay>>> {
        self.describe(p, (domain.clone(), name.clone(), None))?;
        let Some(audit) = self
            .builtins
            .iter()
            .find(|b| b.domain == crate::audit::product::DOMAIN && b.name == crate::audit::product::NAME)
        else {
            return Ok(None);
        };
        let table = Arc::clone(&audit.ports[0].table);
        let cache = Arc::clone(&self.usage);
        let today = chrono::Utc::now().date_naive();
        self.exec.run(async move { cache.of(table, (&domain, &name), days, today).await }).await.map(Some)
    }

    /// `(product, port, adapter, healthy)` for every port of the catalog in force (probes cached
    /// and bounded as for `health`): for metrics and readiness, never shown to callers.
    pub async fn port_health(&self) -> Vec<(String, String, String, bool)> {
        let snapshot = self.snapshot();
        let ports: Vec<_> = snapshot
            .catalog
            .products()
            .flat_map(|p| p.ports.iter().map(move |port| (p.address(), Arc::clone(port))))
            .collect();
        let state = self.catalog.state();
        futures::future::join_all(ports.into_iter().map(|(address, port)| async move {
            let up = port.health(state).await == meshgate_adapters::Health::Ok;
            (address, port.name.clone(), port.binding.kind().to_string(), up)
        }))
        .await
    }

    /// `(product, port, rows, bytes)` of every port served from an in-memory copy.
    pub fn accelerations(&self) -> Vec<(String, String, u64, u64)> {
        let snapshot = self.snapshot();
        snapshot
            .catalog
            .products()
            .flat_map(|p| {
                p.ports.iter().filter_map(move |port| {
                    let (rows, bytes) = port.acceleration.as_ref()?.rows_and_bytes();
                    Some((p.address(), port.name.clone(), rows, bytes))
                })
            })
            .collect()
    }

    /// Reloads that put a catalog in force, reloads that failed, products the last one refused.
    pub fn reload_stats(&self) -> (u64, u64, u64) {
        self.reloads.get()
    }

    /// Lineage events `(sent, dropped, failed)`, when lineage is reported.
    pub fn lineage_counts(&self) -> Option<(u64, u64, u64)> {
        self.lineage.as_ref().map(|l| l.counts())
    }

    /// Hits and misses of the policy-decision cache.
    pub fn grant_cache_stats(&self) -> (u64, u64) {
        self.decisions.stats.get()
    }

    /// Bytes reserved in the query engine's memory pool, and its limit (0: none).
    pub fn memory_pool(&self) -> (u64, u64) {
        let pool = &self.ctx.runtime_env().memory_pool;
        let limit = match pool.memory_limit() {
            datafusion::execution::memory_pool::MemoryLimit::Finite(n) => n as u64,
            _ => 0,
        };
        (pool.reserved() as u64, limit)
    }

    /// Gateway and product health, for the products `p` may discover.
    pub async fn health(&self, p: &Principal) -> Value {
        let snapshot = self.snapshot();
        let visible = |_: &str, _: &str, prod: Option<&Product>| snapshot.visible(p, prod);
        let trust = self.port_trust(&snapshot, &visible).await;
        describe::health(&self.catalog, &snapshot, &visible, &trust).await
    }

    /// Every table of the catalog `mesh` that `p` can name (see [`TableEntry`]).
    pub fn tables(&self, p: &Principal) -> Vec<TableEntry> {
        PrincipalView::new(self.snapshot(), p.clone(), Arc::clone(&self.decisions)).tables()
    }

    /// The schemas of the catalog `mesh` that `p` sees: its domains, then `_mesh`.
    pub fn schemas(&self, p: &Principal) -> Vec<String> {
        let mut out = PrincipalView::new(self.snapshot(), p.clone(), Arc::clone(&self.decisions)).domains();
        out.push(SYSTEM_SCHEMA.into());
        out
    }

    /// Every scalar SQL function statements may call, sorted, each with the section of the
    /// function reference it belongs to (`Math Functions`, `String Functions`, ...).
    pub fn sql_functions(&self) -> Vec<(String, String)> {
        let state = self.ctx.state();
        let mut out: Vec<(String, String)> = state
            .scalar_functions()
            .values()
            .map(|f| {
                let section = f.documentation().map(|d| d.doc_section.label).unwrap_or("Other Functions");
                (f.name().to_string(), section.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Decides and plans `request` for the caller. A product the caller may not discover is
    /// missing; one it may discover but not read is refused, and the refusal is recorded.
    pub async fn authorize(self: &Arc<Self>, call: &Call, request: ReadRequest) -> Result<AuthorizedPlan> {
        let max_staleness = match &request {
            ReadRequest::Product(spec) => spec.max_staleness,
            ReadRequest::Sql(_) => None,
        };
        let mut out = self.plan(call.principal.clone(), request).await;
        if let (Ok(plan), Some(max)) = (&out, max_staleness)
            && let Err(e) = self.check_staleness(plan, max).await
        {
            out = Err(e);
        }
        if let Ok(plan) = &out {
            trace_reads(plan);
        }
        if let (Err(Error::Denied { product, policy_ids }), Some(log)) = (&out, &self.audit) {
            let mut token = log.begin(&call.rpc, call.client.clone(), &call.principal)?;
            let (domain, name) = product.split_once('/').unwrap_or((product.as_str(), ""));
            token.resources(&[audit::Resource { domain: domain.into(), product: name.into(), ..Default::default() }]);
            token.decision(&audit::Decision {
                effect: "deny".into(),
                policy_ids: policy_ids.clone(),
                ..Default::default()
            });
            token.fail(&tonic::Status::permission_denied("denied by policy")).await?;
        }
        out
    }

    /// A signed ticket for `shard` of `plan`, bound to the principal it was planned for.
    pub fn ticket(&self, plan: &AuthorizedPlan, shard: Shard) -> Result<IssuedTicket> {
        Ok(self.issue(plan.claims(shard)?))
    }

    fn issue(&self, claims: TicketClaims) -> IssuedTicket {
        let now = (self.now)();
        IssuedTicket { ticket: self.signer.sign(claims, now), expires: now + self.signer.ttl() }
    }

    /// The tickets of `plan`'s endpoints: one, or one per shard when the read asks for
    /// `shards`, each pinning the files it reads, or for storage that is not files, the key
    /// by whose hash it takes its rows ([`shard`]).
    pub async fn tickets(&self, plan: &AuthorizedPlan) -> Result<Vec<IssuedTicket>> {
        let (count, seed) = match &plan.request {
            ReadRequest::Product(spec) => (spec.shards.unwrap_or(1), spec.shuffle_seed),
            ReadRequest::Sql(_) => (1, None),
        };
        if count <= 1 && seed.is_none() {
            return Ok(vec![self.ticket(plan, Shard::WHOLE)?]);
        }
        let (df, label) = (plan.df.clone(), plan.label());
        let assigned = self
            .exec
            .run(async move {
                let physical = df.create_physical_plan().await.map_err(|e| Error::execution(&label, e))?;
                shard::assign(&physical, count, &label)
            })
            .await;
        let mut tickets = Vec::with_capacity(count as usize);
        match assigned {
            Ok(mut shards) => {
                if let Some(seed) = seed {
                    shard::shuffle(&mut shards, seed);
                }
                for (index, files) in shards.into_iter().enumerate() {
                    let mut claims = plan.claims(Shard { index: index as u32, count })?;
                    claims.shard_files = files;
                    claims.files_assigned = true;
                    tickets.push(self.issue(claims));
                }
            }
            // Not files: split by the hash of the contract's key.
            Err(Error::Unshardable(_)) => {
                let key = plan.shard_key()?;
                for index in shard::key_order(count, seed) {
                    let mut claims = plan.claims(Shard { index, count })?;
                    claims.shard_key.clone_from(&key);
                    tickets.push(self.issue(claims));
                }
            }
            Err(e) => return Err(e),
        }
        Ok(tickets)
    }

    /// The claims of a ticket (or prepared statement handle) of this gateway, verified, and
    /// issued to the caller.
    fn own_claims(&self, call: &Call, ticket: &[u8]) -> Result<TicketClaims> {
        let claims = self.signer.verify(ticket, (self.now)())?;
        if claims.subject != call.principal.subject || claims.issuer != call.principal.issuer {
            return Err(Error::ForeignTicket);
        }
        Ok(claims)
    }

    /// Checks that `ticket` is a ticket of this gateway issued to the caller (expired or not:
    /// an expired ticket can no longer start anything).
    pub fn check_ticket(&self, call: &Call, ticket: &[u8]) -> Result<()> {
        match self.own_claims(call, ticket) {
            Err(Error::Ticket(crate::ticket::Error::Expired)) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The same read as `ticket` (valid, the caller's), signed again with a fresh expiry.
    pub fn renew_ticket(&self, call: &Call, ticket: &[u8]) -> Result<IssuedTicket> {
        let now = (self.now)();
        let mut claims = self.own_claims(call, ticket)?;
        claims.ticket_id.clear();
        Ok(IssuedTicket { ticket: self.signer.sign(claims, now), expires: now + self.signer.ttl() })
    }

    /// Signs a Flight SQL session's options (the session cookie's content).
    pub fn seal_session(&self, claims: &meshgate_proto::v1::SessionClaims) -> Vec<u8> {
        self.signer.sign_session(claims)
    }

    /// Verifies a session cookie's content; the caller checks whose session it is.
    pub fn open_session(&self, sealed: &[u8]) -> Result<meshgate_proto::v1::SessionClaims> {
        Ok(self.signer.verify_session(sealed)?)
    }

    /// Binds parameter rows to a prepared statement's handle: a new signed handle carrying the
    /// statement and the rows (each row one execution), bound to the same caller.
    pub fn bind(&self, call: &Call, handle: &[u8], rows: &[RecordBatch]) -> Result<Vec<u8>> {
        let mut claims = self.own_claims(call, handle)?;
        let Some(Read::Sql(statement)) = claims.read.as_mut() else {
            return Err(Error::Parameters("only a prepared SQL statement takes parameters".into()));
        };
        statement.parameters = params::encode_batches(rows)?;
        claims.ticket_id.clear();
        Ok(self.signer.sign(claims, (self.now)()))
    }

    /// Plans a prepared statement's handle for the caller it was issued to: one plan per bound
    /// parameter row (one when none are bound), each to be read through its own ticket.
    pub async fn prepared(self: &Arc<Self>, call: &Call, handle: &[u8]) -> Result<Vec<AuthorizedPlan>> {
        let claims = self.own_claims(call, handle)?;
        let requests = ReadRequest::all_from_claims(&claims)?;
        let mut plans = Vec::with_capacity(requests.len());
        for request in requests {
            let plan = self.authorize(call, request).await?;
            plan.check_fresh(&claims.resources)?;
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Redeems a ticket: verifies it (signature, expiry, the caller is its subject), decides and
    /// plans its read again (the rules may have changed), refuses it when a contract it was
    /// planned against changed, and executes it. With `offset`, a shard's stream resumes after
    /// that many rows (only shards come in a fixed order; any other read is refused).
    pub async fn read_ticket(self: &Arc<Self>, call: &Call, ticket: &[u8], offset: Option<u64>) -> Result<ReadStream> {
        let mut token = self.begin(call)?;
        match self.redeem(call, ticket, token.as_mut()).await {
            Ok((plan, shard, assignment)) => self.run(call, plan, shard, assignment, offset, token).await,
            Err(e) => Err(fail(token, e).await),
        }
    }

    /// Executes `shard` of `plan` for the caller it was planned for.
    pub async fn execute(self: &Arc<Self>, call: &Call, plan: AuthorizedPlan, shard: Shard) -> Result<ReadStream> {
        let mut token = self.begin(call)?;
        if plan.principal.subject != call.principal.subject || plan.principal.issuer != call.principal.issuer {
            return Err(fail(token, Error::ForeignTicket).await);
        }
        if let Some(t) = token.as_mut() {
            note(t, &plan, None);
        }
        self.run(call, plan, shard, Assignment::Whole, None, token).await
    }

    /// Runs `work` for the caller and records its outcome durably before returning it.
    pub async fn recorded<T>(&self, call: &Call, work: impl Future<Output = Result<T>>) -> Result<T> {
        let token = self.begin(call)?;
        let out = work.await;
        if let Some(t) = token {
            // No result leaves unrecorded.
            match &out {
                Ok(_) => t.ok().await?,
                Err(e) => t.fail(&error::to_status(e)).await?,
            }
        }
        out
    }

    /// Records a successful sign-in, durably, before its token is handed out.
    pub async fn login(&self, client: Client, p: &Principal) -> Result<()> {
        match &self.audit {
            Some(log) => Ok(log.login(client, p).await?),
            None => Ok(()),
        }
    }

    /// Records a failed sign-in (rate-limited per source; never blocks).
    pub fn auth_failure(&self, rpc: &str, client: Client, reason: &str) {
        if let Some(log) = &self.audit {
            log.auth_failure(rpc, client, reason);
        }
    }

    fn begin(&self, call: &Call) -> Result<Option<AuditToken>> {
        match &self.audit {
            Some(log) => Ok(Some(log.begin(&call.rpc, call.client.clone(), &call.principal)?)),
            None => Ok(None),
        }
    }

    async fn redeem(
        self: &Arc<Self>,
        call: &Call,
        ticket: &[u8],
        token: Option<&mut AuditToken>,
    ) -> Result<(AuthorizedPlan, Shard, Assignment)> {
        let claims = self.own_claims(call, ticket)?;
        let request = ReadRequest::from_claims(&claims)?;
        let shard = Shard { index: claims.shard_index, count: claims.shard_count };
        let assignment = Assignment::of(&claims);
        let key_shard = match &assignment {
            Assignment::Key(key) => {
                Some(query::KeyShard { key: key.clone(), filter: shard::key_filter(key, shard.index, shard.count) })
            }
            _ => None,
        };
        let plan = self.plan_sharded(call.principal.clone(), request, key_shard).await?;
        if let Some(t) = token {
            note(t, &plan, Some(&hex::encode(&claims.ticket_id)));
        }
        plan.check_fresh(&claims.resources)?;
        Ok((plan, shard, assignment))
    }

    /// Takes a read slot, starts the plan on the execution runtime, records that data is about
    /// to leave, and returns the audited stream.
    async fn run(
        &self,
        call: &Call,
        plan: AuthorizedPlan,
        shard: Shard,
        assignment: Assignment,
        offset: Option<u64>,
        mut token: Option<AuditToken>,
    ) -> Result<ReadStream> {
        trace_reads(&plan);
        let compression = match &plan.request {
            ReadRequest::Product(spec) => spec.compression,
            ReadRequest::Sql(_) => None,
        };
        let label = plan.label();
        let statement = matches!(plan.request, ReadRequest::Sql(_));
        let mut resources = plan.audit_resources();
        let mut inputs = self.lineage.as_ref().map(|_| plan.lineage_datasets());
        let sql = match (&plan.request, &self.lineage) {
            (ReadRequest::Sql(read), Some(_)) => Some(read.query.clone()),
            _ => None,
        };
        let served = self.metrics.as_ref().map(|m| {
            let products: Vec<String> = resources.iter().map(|r| format!("{}/{}", r.domain, r.product)).collect();
            m.stream(&products, &plan.principal.subject)
        });
        let AuthorizedPlan { df, schema, .. } = plan;
        let started = async {
            match (&assignment, offset) {
                (Assignment::Files(_), _) | (_, None) => {}
                (Assignment::Key(_), Some(_)) => {
                    return Err(Error::BadOption(format!(
                        "{RESUME_HEADER} cannot resume this shard: `{label}` is not stored as files, so the rows of a shard split by its key come in no fixed order; read the shard again from the start"
                    )));
                }
                (Assignment::Whole, Some(_)) => {
                    return Err(Error::BadOption(format!(
                        "{RESUME_HEADER} resumes a shard's stream, whose rows come in a fixed order; ask GetFlightInfo for \"shards\" and resume those endpoints"
                    )));
                }
            }
            match &assignment {
                // Files or a key assigned by GetFlightInfo: this gateway serves exactly them.
                Assignment::Files(_) | Assignment::Key(_) if shard.index < shard.count => {}
                _ => shard.check()?,
            }
            let pinned = match assignment {
                Assignment::Files(files) => Some(files),
                _ => None,
            };
            let permit = Arc::clone(&self.reads)
                .try_acquire_owned()
                .map_err(|_| Error::Busy { limit: self.options.max_reads })?;
            let (batches, read) =
                self.exec.start(df, self.options.governed, label.clone(), pinned, &self.budget).await?;
            let limits = if statement { self.options.statements } else { StatementLimits::UNBOUNDED };
            Ok((permit, limits::bounded(batches, limits), read))
        };
        let (permit, batches, read) = match started.await {
            Ok(x) => x,
            Err(e) => return Err(fail(token, e).await),
        };
        // Data leaves only once the read's start is on disk, naming the columns each product
        // gives to the plan (not only those returned).
        if let Some(t) = token.as_mut() {
            for r in &mut resources {
                let address = format!("{}/{}", r.domain, r.product);
                if let Some((_, columns)) = read.iter().find(|(source, _)| *source == address) {
                    r.columns.clone_from(columns);
                }
            }
            t.resources(&resources);
            t.started().await?;
        }
        let lineage = match (&self.lineage, inputs.as_mut()) {
            (Some(l), Some(inputs)) => {
                for d in inputs.iter_mut() {
                    let address = format!("{}/{}", d.domain, d.product);
                    if let Some((_, columns)) = read.iter().find(|(source, _)| *source == address) {
                        d.columns.clone_from(columns);
                    }
                }
                let job = crate::lineage::Job {
                    kind: "READ",
                    principal: call.principal.clone(),
                    client: call.client.clone(),
                    sql,
                };
                Some(l.begin(job, std::mem::take(inputs), Vec::new()))
            }
            _ => None,
        };
        let batches = match offset {
            Some(n) => exec::skip(batches, n).boxed(),
            None => batches.boxed(),
        };
        let batches = exec::audited(batches, token, lineage, served, label.clone(), self.stop.clone(), permit).boxed();
        Ok(ReadStream { schema, label, batches, compression })
    }

    /// Plans `request` for `p` on the execution runtime.
    async fn plan(self: &Arc<Self>, p: Principal, request: ReadRequest) -> Result<AuthorizedPlan> {
        self.plan_sharded(p, request, None).await
    }

    /// Plans `request` for `p` on the execution runtime, keeping only the rows of `key_shard`
    /// when the read is one shard of a product split by its key.
    async fn plan_sharded(
        self: &Arc<Self>,
        p: Principal,
        request: ReadRequest,
        key_shard: Option<query::KeyShard>,
    ) -> Result<AuthorizedPlan> {
        let core = Arc::clone(self);
        self.exec
            .run(async move {
                let snapshot = core.snapshot();
                core.plan_in(&snapshot, p, request, key_shard).await
            })
            .await
    }

    /// Plans `request` for `p` over the catalog `mesh` as `p` sees it in `snapshot`.
    async fn plan_in(
        &self,
        snapshot: &Arc<MeshSnapshot>,
        p: Principal,
        request: ReadRequest,
        key_shard: Option<query::KeyShard>,
    ) -> Result<AuthorizedPlan> {
        let view = Arc::new(PrincipalView::new(Arc::clone(snapshot), p.clone(), Arc::clone(&self.decisions)));
        let mut data_version = None;
        let (df, schema, parameters) = match &request {
            ReadRequest::Product(spec) => {
                let (mut table, r) = view.resolve(&spec.domain, &spec.product, spec.port.as_deref())?;
                if let Some(pin) = spec.version {
                    let (pinned, version) = at_version(&r, pin).await?;
                    (table, data_version) = (pinned, Some(version));
                }
                let ctx = SessionContext::new_with_state(
                    SessionStateBuilder::new_from_existing(self.ctx.state()).with_config(self.read_config(&p)).build(),
                );
                let planned = query::plan(&ctx, &r.product, &r.port, table, spec, key_shard)?;
                (planned.df, planned.schema, Arc::new(arrow::datatypes::Schema::empty()))
            }
            ReadRequest::Sql(read) => self.plan_sql(&view, read).await?,
        };
        Ok(AuthorizedPlan {
            request,
            principal: p,
            df,
            schema,
            parameters,
            reads: view.take_resolved(),
            generation: snapshot.generation,
            data_version,
        })
    }

    /// Plans a read-only SQL statement in a session whose only catalog is `mesh` as the
    /// principal sees it, without table functions; anything but a query is refused. Bound
    /// parameter values replace the placeholders; view types become classic ones unless asked
    /// for. Returns the frame, its schema and the statement's parameters.
    /// The session settings of one read by `p`: the shared ones, and who the read is for
    /// ([`Caller`], read by adapters that call another gateway).
    fn read_config(&self, p: &Principal) -> datafusion::prelude::SessionConfig {
        let caller = Caller { subject: p.subject.clone(), bearer: p.bearer.clone() };
        self.ctx.copied_config().with_extension(Arc::new(caller))
    }

    async fn plan_sql(&self, view: &Arc<PrincipalView>, read: &SqlRead) -> Result<(DataFrame, SchemaRef, SchemaRef)> {
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog(CATALOG.into(), Arc::new(MeshCatalog(Arc::clone(view))));
        let mut config = self.read_config(view.principal());
        let options = &mut config.options_mut().catalog;
        options.default_catalog = CATALOG.into();
        if let Some(schema) = &read.default_schema {
            options.default_schema = schema.clone();
        }
        options.information_schema = false;
        // Otherwise the builder registers an empty catalog under the default name, over `mesh`.
        options.create_default_catalog_and_schema = false;
        let shared = self.ctx.runtime_env();
        let pool = limits::StatementPool::new(Arc::clone(&shared.memory_pool), self.options.statements.memory_bytes);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::from_runtime_env(&shared)
            .with_memory_pool(Arc::new(pool))
            .build_arc()
            .map_err(|e| Error::Internal(format!("a statement's runtime: {e}")))?;
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_runtime_env(runtime)
            .with_config(config)
            .with_catalog_list(Arc::new(catalogs))
            .with_table_functions(Default::default())
            .build();
        let (plan, explain) = read_only(&state, &read.query).await?;
        let plan = values_as_rows(plan).map_err(|e| planning("the statement", e))?;
        let parameters = params::parameter_schema(&plan)?;
        let plan = match &read.params {
            Some(values) => params::bind(plan, values)?,
            None => plan,
        };
        let bound = read.params.is_some();
        let mut df = DataFrame::new(state, plan);
        if explain {
            df = explained(df, bound).await?;
        }
        if !read.view_types {
            df = classic_types(df).map_err(|e| planning("the statement", e))?;
        }
        let schema = Arc::new(df.schema().as_arrow().clone());
        Ok((df, schema, parameters))
    }
}

/// Versions `describe` lists, newest first.
const DESCRIBED_VERSIONS: usize = 50;

/// One version as `describe` lists it; `rows` only when the caller sees every row.
fn version_json(v: &meshgate_adapters::VersionInfo, rows: bool) -> Value {
    let committed = v
        .committed_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let mut out = json!({
        "version": v.version,
        "committed": committed,
        "operation": v.operation,
        "author": v.author,
        "mode": v.mode,
    });
    if rows {
        out["rows"] = json!(v.rows);
    }
    out
}

/// The table `r` as the caller sees it (the same columns, masks and row filters), over the
/// version of its data `pin` names, and that version's number.
async fn at_version(r: &Resolved, pin: VersionPin) -> Result<(Arc<dyn TableProvider>, u64)> {
    let product = r.product.address();
    let Some(versions) = &r.port.versions else {
        return Err(Error::NotVersioned { product, adapter: r.port.binding.kind().to_string() });
    };
    let (data, version) = versions.at(pin).await.map_err(|e| match e {
        meshgate_adapters::Error::NotFound(message) => Error::NoVersion { product: product.clone(), message },
        other => Error::execution(&product, DataFusionError::External(Box::new(other))),
    })?;
    let table: Arc<dyn TableProvider> = match r.grant.as_ref().map(|g| &g.table) {
        None => data,
        Some(Some(governed)) => Arc::new(governed.over(data).map_err(|e| Error::execution(&product, e))?),
        // Resolving refused it already.
        Some(None) => return Err(Error::Internal("a pinned read of a table the caller may not read".into())),
    };
    Ok((table, version))
}

/// `plan` with each `VALUES` list written as one-row projections joined by `UNION ALL`, so its
/// leaves are the engine's one-row placeholder rather than an in-memory scan, which the guard
/// check cannot tell from an adapter's.
fn values_as_rows(plan: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::LogicalPlanBuilder;
    use datafusion::prelude::{Expr, cast};
    plan.transform_up(|node| {
        let LogicalPlan::Values(values) = node else { return Ok(Transformed::no(node)) };
        let fields = values.schema.fields().clone();
        let mut rows = values.values.into_iter().map(|row| {
            let exprs = row
                .into_iter()
                .zip(fields.iter())
                .map(|(e, f): (Expr, _)| cast(e, f.data_type().clone()).alias(f.name()));
            LogicalPlanBuilder::empty(true).project(exprs.collect::<Vec<_>>())
        });
        let Some(first) = rows.next() else {
            return Ok(Transformed::yes(LogicalPlanBuilder::empty(false).build()?));
        };
        let mut builder = first?;
        for row in rows {
            builder = builder.union(row?.build()?)?;
        }
        Ok(Transformed::yes(builder.build()?))
    })
    .map(|t| t.data)
}

/// The first table function a statement calls (`read_parquet('...')`, `generate_series(1, 9)`).
fn table_function(statement: &SqlStatement) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{TableFactor, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Find;
    impl Visitor for Find {
        type Break = String;
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<String> {
            match t {
                TableFactor::Table { name, args: Some(_), .. } | TableFactor::Function { name, .. } => {
                    ControlFlow::Break(name.to_string())
                }
                TableFactor::TableFunction { expr, .. } => ControlFlow::Break(expr.to_string()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    match statement.visit(&mut Find) {
        ControlFlow::Break(name) => Some(crate::text::clip(&name)),
        ControlFlow::Continue(()) => None,
    }
}

/// Why `EXPLAIN ANALYZE` is refused.
const EXPLAIN_ANALYZE: &str =
    "EXPLAIN ANALYZE is not served: its row counts would describe rows a policy hides; use EXPLAIN";

/// The plan of `df` as rows (`plan_type`, `plan`): the optimized logical plan and the physical
/// plan with what governance hides left out (see [`crate::governance::explain`]). Unbound
/// (a prepared statement being created): no rows, the same schema.
async fn explained(df: DataFrame, bound: bool) -> Result<DataFrame> {
    use arrow::array::StringArray;
    let failed = |e| planning("the statement", e);
    let rows = if bound {
        let logical = df.clone().into_optimized_plan().map_err(failed)?.display_indent().to_string();
        let physical = df.clone().create_physical_plan().await.map_err(failed)?;
        vec![("logical_plan", logical), ("physical_plan", crate::governance::explain(&physical))]
    } else {
        Vec::new()
    };
    let batch = RecordBatch::try_from_iter_with_nullable([
        ("plan_type", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as _, false),
        ("plan", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.as_str()))) as _, false),
    ])
    .map_err(|e| Error::Internal(format!("the plan's rows: {e}")))?;
    let table = listing::computed_table(batch).map_err(failed)?;
    SessionContext::new_with_state(df.into_parts().0).read_table(table).map_err(failed)
}

/// `df` with its view-typed columns (`Utf8View`, `BinaryView`) cast to `Utf8`/`Binary`, for
/// clients that cannot read views; unchanged when it has none.
fn classic_types(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    use arrow::datatypes::DataType;
    use datafusion::prelude::{Expr, cast};
    let classic = |t: &DataType| match t {
        DataType::Utf8View => Some(DataType::Utf8),
        DataType::BinaryView => Some(DataType::Binary),
        _ => None,
    };
    let fields = df.schema().fields().clone();
    if !fields.iter().any(|f| classic(f.data_type()).is_some()) {
        return Ok(df);
    }
    let columns = df.schema().columns();
    let exprs: Vec<_> = fields
        .iter()
        .zip(columns)
        .map(|(f, c)| match classic(f.data_type()) {
            Some(t) => cast(Expr::Column(c), t).alias(f.name()),
            None => Expr::Column(c),
        })
        .collect();
    df.select(exprs)
}

/// A planning error: one the core raised while resolving a table (a denial) comes back as
/// itself; anything else is DataFusion's verdict on the statement.
fn planning(what: &str, e: DataFusionError) -> Error {
    if let DataFusionError::External(inner) = e.find_root()
        && let Some(core) = inner.downcast_ref::<Error>()
    {
        return match core {
            Error::Denied { product, policy_ids } => {
                Error::Denied { product: product.clone(), policy_ids: policy_ids.clone() }
            }
            other => Error::Internal(other.to_string()),
        };
    }
    Error::execution(what, e)
}

/// Notes what a read reads and the decision, in its audit record.
/// Names the products `plan` reads (`meshgate.product`, comma-separated) on the call's span.
fn trace_reads(plan: &AuthorizedPlan) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let products: Vec<String> = plan.audit_resources().iter().map(|r| format!("{}/{}", r.domain, r.product)).collect();
    span.set_attribute("meshgate.product", products.join(","));
}

fn note(t: &mut AuditToken, plan: &AuthorizedPlan, ticket_id: Option<&str>) {
    t.ids(&uuid::Uuid::new_v4().to_string(), ticket_id);
    t.resources(&plan.audit_resources());
    if let Some(d) = plan.audit_decision() {
        t.decision(&d);
    }
    if let Some(v) = plan.data_version {
        t.version(v);
    }
}

/// Records `e` as the call's outcome (durably) and returns it; an audit failure replaces it.
async fn fail(token: Option<AuditToken>, e: Error) -> Error {
    match token {
        Some(t) => match t.fail(&error::to_status(&e)).await {
            Ok(()) => e,
            Err(a) => a.into(),
        },
        None => e,
    }
}

/// Plans `query` as one read-only statement in `state`: a query (optionally under `EXPLAIN`,
/// never `EXPLAIN ANALYZE`), no table functions, no DDL, DML or session statements; `?`
/// placeholders numbered. Returns the plan and whether `EXPLAIN` was asked for.
async fn read_only(
    state: &datafusion::execution::session_state::SessionState,
    query: &str,
) -> Result<(LogicalPlan, bool)> {
    if query.len() > MAX_STATEMENT_BYTES {
        return Err(Error::StatementTooLong { bytes: query.len(), limit: MAX_STATEMENT_BYTES });
    }
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(query, &dialect).map_err(|e| planning("the statement", e))?;
    let explain = match statement {
        DfStatement::Explain(e) if e.options.analyze => return Err(Error::Unsupported(EXPLAIN_ANALYZE)),
        DfStatement::Explain(e) => {
            statement = *e.statement;
            true
        }
        _ => false,
    };
    params::number_question_marks(&mut statement)?;
    match &statement {
        DfStatement::Statement(s) if matches!(**s, SqlStatement::Query(_)) => {
            if let Some(name) = table_function(s) {
                return Err(Error::TableFunction(name));
            }
        }
        _ => return Err(Error::NotAQuery),
    }
    let plan = state.statement_to_plan(statement).await.map_err(|e| planning("the statement", e))?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|_| Error::NotAQuery)?;
    Ok((plan, explain))
}

/// [`read_only`] without `EXPLAIN`: the plan of a query run by the gateway itself over a
/// session it built (quality rules).
pub(crate) async fn read_only_plan(
    state: &datafusion::execution::session_state::SessionState,
    query: &str,
) -> Result<LogicalPlan> {
    match read_only(state, query).await? {
        (_, true) => Err(Error::NotAQuery),
        (plan, false) => Ok(plan),
    }
}

#[cfg(test)]
mod tests;
