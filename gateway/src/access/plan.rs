//! What a caller asks to read, and the plan the core authorized for it.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::prelude::DataFrame;
use meshgate_proto::v1::ticket_claims::Read;
use meshgate_proto::v1::{PinnedFile, ProductRead, ResourceRead, SqlStatement, TicketClaims};
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::mesh::Resolved;
use super::params;
use crate::audit;
use crate::auth::Principal;
use crate::query::{Compression, ReadSpec};

/// A read request, from any front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRequest {
    /// One product port: `SELECT <columns> FROM mesh.<domain>.<product> WHERE <filter> LIMIT <n>`.
    Product(ReadSpec),
    /// A read-only SQL statement over the catalog `mesh`.
    Sql(SqlRead),
}

/// A read-only SQL statement over the catalog `mesh`, with what its session and binding add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqlRead {
    /// The statement's text.
    pub query: String,
    /// Values of its positional parameters (`$1`, `$2`, ... or `?`, in order). `None` only
    /// while a prepared statement is created: it is planned with its placeholders unbound.
    pub params: Option<Vec<ScalarValue>>,
    /// Schema (domain) unqualified table names resolve in.
    pub default_schema: Option<String>,
    /// Stream view types (`Utf8View`, `BinaryView`) as they are; otherwise as `Utf8`/`Binary`.
    pub view_types: bool,
}

impl SqlRead {
    /// `query` with no parameters, no default schema, classic types.
    pub fn new(query: impl Into<String>) -> Self {
        Self { query: query.into(), params: Some(Vec::new()), ..Default::default() }
    }
}

impl ReadRequest {
    /// The whole default (or named) port of a product, from a PATH descriptor.
    pub fn from_path(path: &[String]) -> Result<Self> {
        Ok(Self::Product(ReadSpec::from_path(path)?))
    }

    /// A JSON query (`{"product": "<domain>/<product>", "columns": [...], ...}`).
    pub fn from_json(cmd: &[u8]) -> Result<Self> {
        Ok(Self::Product(ReadSpec::from_json(cmd)?))
    }

    /// The request a ticket's claims carry (exactly one: a handle with several bound
    /// parameter rows is not a ticket).
    pub(crate) fn from_claims(claims: &TicketClaims) -> Result<Self> {
        let mut requests = Self::all_from_claims(claims)?;
        match (requests.pop(), requests.is_empty()) {
            (Some(one), true) => Ok(one),
            _ => Err(Error::Parameters(
                "a handle with several parameter rows is not a ticket; call GetFlightInfo with it".into(),
            )),
        }
    }

    /// The requests signed claims carry: one, or one per parameter row bound to a prepared
    /// statement's handle.
    pub(crate) fn all_from_claims(claims: &TicketClaims) -> Result<Vec<Self>> {
        match &claims.read {
            Some(Read::Product(r)) => Ok(vec![Self::Product(ReadSpec {
                domain: r.domain.clone(),
                product: r.product.clone(),
                port: Some(r.port.clone()).filter(|p| !p.is_empty()),
                columns: r.columns.clone(),
                filter: Some(r.filter.clone()).filter(|f| !f.is_empty()),
                limit: r.limit,
                shards: None,
                shuffle_seed: None,
                // Written by this gateway from a parsed name: a name it no longer knows is none.
                compression: Compression::parse(&claims.compression).ok().flatten(),
                // Checked when the ticket was issued.
                max_staleness: None,
                version: r.version.map(meshgate_adapters::VersionPin::Version),
            })]),
            Some(Read::Sql(s)) => {
                let mut rows = params::decode_rows(&s.parameters)?;
                if rows.is_empty() {
                    rows.push(Vec::new());
                }
                let read = |row| SqlRead {
                    query: s.query.clone(),
                    params: Some(row),
                    default_schema: Some(s.default_schema.clone()).filter(|d| !d.is_empty()),
                    view_types: s.view_types,
                };
                Ok(rows.into_iter().map(|row| Self::Sql(read(row))).collect())
            }
            None => Err(Error::Ticket(crate::ticket::Error::Malformed)),
        }
    }

    /// The claims' `read` for this request. A product read names the port it resolved to, so
    /// the ticket reads the port the plan was made for even if the default port changes.
    /// A pinned read carries the version number it resolved to (`data_version`).
    fn to_claims(&self, reads: &[Resolved], data_version: Option<u64>) -> Result<Read> {
        Ok(match self {
            Self::Product(s) => Read::Product(ProductRead {
                domain: s.domain.clone(),
                product: s.product.clone(),
                port: reads.first().map(|r| r.port.name.clone()).or_else(|| s.port.clone()).unwrap_or_default(),
                columns: s.columns.clone(),
                filter: s.filter.clone().unwrap_or_default(),
                limit: s.limit,
                version: data_version,
            }),
            Self::Sql(q) => Read::Sql(SqlStatement {
                query: q.query.clone(),
                parameters: params::encode_row(q.params.as_deref().unwrap_or_default())?,
                default_schema: q.default_schema.clone().unwrap_or_default(),
                view_types: q.view_types,
            }),
        })
    }
}

/// How an endpoint's share of a read is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Assignment {
    /// The whole read (one endpoint).
    Whole,
    /// The files and byte ranges GetFlightInfo assigned the shard.
    Files(Vec<PinnedFile>),
    /// The rows whose key (these columns) hashes to the shard.
    Key(Vec<String>),
}

impl Assignment {
    /// The assignment a ticket's claims carry.
    pub(crate) fn of(claims: &TicketClaims) -> Self {
        if !claims.shard_key.is_empty() {
            Self::Key(claims.shard_key.clone())
        } else if claims.files_assigned {
            Self::Files(claims.shard_files.clone())
        } else {
            Self::Whole
        }
    }
}

/// Which part of a read one endpoint serves: `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: u32,
    /// How many shards the read is split into.
    pub count: u32,
}

impl Shard {
    /// The whole read.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Refuses a shard this gateway cannot honour: every read is served as one endpoint today,
    /// so anything but the whole read would be served whole, i.e. more than once.
    pub(crate) fn check(self) -> Result<()> {
        if self == Self::WHOLE { Ok(()) } else { Err(Error::Shard { index: self.index, count: self.count }) }
    }
}

/// A read decided and planned for one principal: the plan reads only governed tables.
#[derive(Debug)]
pub struct AuthorizedPlan {
    pub(crate) request: ReadRequest,
    pub(crate) principal: Principal,
    pub(crate) df: DataFrame,
    pub(crate) schema: SchemaRef,
    pub(crate) parameters: SchemaRef,
    pub(crate) reads: Vec<Resolved>,
    pub(crate) generation: u64,
    /// The data version a pinned product read reads (`None`: the latest, when streamed).
    pub(crate) data_version: Option<u64>,
}

impl AuthorizedPlan {
    /// What is announced and streamed.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The statement's positional parameters (`$1` first), with the types planning inferred;
    /// empty for product reads and statements without placeholders.
    pub fn parameters(&self) -> &SchemaRef {
        &self.parameters
    }

    /// Every product port the plan reads.
    pub fn reads(&self) -> &[Resolved] {
        &self.reads
    }

    /// Whether a row filter applies to any read (then counts of the whole port are information
    /// the rows would not give).
    fn row_filtered(&self) -> bool {
        self.reads.iter().any(|r| r.grant.as_ref().is_some_and(|g| !g.row_filters.is_empty()))
    }

    /// Whether any read is filtered or masked for this caller (then sizes of the whole port are
    /// information the rows would not give).
    fn restricted(&self) -> bool {
        self.row_filtered() || self.reads.iter().any(|r| r.grant.as_ref().is_some_and(|g| !g.masks.is_empty()))
    }

    /// The key by which a product read that is not stored as files is split into shards: its
    /// contract's `primaryKey` columns, in declaration order. Refused when the contract
    /// declares none, or when the caller cannot read one of them.
    pub(crate) fn shard_key(&self) -> Result<Vec<String>> {
        let Some((_, r)) = self.single() else {
            return Err(Error::BadOption("only a product read can be split into shards".into()));
        };
        let key: Vec<String> =
            r.port.contract.properties.iter().filter(|p| p.primary_key).map(|p| p.name.clone()).collect();
        if key.is_empty() {
            return Err(Error::Unshardable(r.product.address()));
        }
        let visible = match r.grant.as_ref().and_then(|g| g.table.as_ref()) {
            Some(t) => datafusion::catalog::TableProvider::schema(t.as_ref()),
            None => Arc::clone(&r.port.schema),
        };
        crate::query::check_key_readable(&r.product, &key, |c| visible.index_of(c).is_ok())?;
        Ok(key)
    }

    /// The product a product read reads (`None`: a statement).
    pub fn product(&self) -> Option<&crate::catalog::Product> {
        self.single().map(|(_, r)| r.product.as_ref())
    }

    fn single(&self) -> Option<(&ReadSpec, &Resolved)> {
        match (&self.request, self.reads.as_slice()) {
            (ReadRequest::Product(s), [r]) => Some((s, r)),
            _ => None,
        }
    }

    /// Rows the read returns, -1 when not known without reading.
    pub fn total_records(&self) -> i64 {
        let Some((spec, r)) = self.single() else { return -1 };
        match (spec.filter.is_some() || self.row_filtered(), spec.limit, r.port.total_records) {
            (false, Some(n), total) if total >= 0 => total.min(i64::try_from(n).unwrap_or(i64::MAX)),
            (false, None, total) => total,
            _ => -1,
        }
    }

    /// Bytes the read returns in Arrow, -1 when not known without reading.
    pub fn total_bytes(&self) -> i64 {
        match self.single() {
            Some((spec, r))
                if !self.restricted() && spec.filter.is_none() && spec.columns.is_empty() && spec.limit.is_none() =>
            {
                r.port.total_bytes
            }
            _ => -1,
        }
    }

    /// What a client may want to know about the read besides its schema (product, owner,
    /// contract), as JSON.
    pub fn description(&self) -> Value {
        let products = |r: &Resolved| {
            json!({
                "product": r.product.address(),
                "id": r.product.id,
                "title": r.product.title,
                "status": r.product.status,
                "owner": r.product.owner,
                "tags": r.product.tags,
                "description": r.product.description,
                "port": r.port.name,
                "port_version": r.port.version,
                "contract_id": r.port.contract.id,
                "contract_version": r.port.contract.version,
            })
        };
        match self.single() {
            Some((_, r)) => {
                let mut out = products(r);
                if let Some(v) = self.data_version {
                    out["data_version"] = json!(v);
                }
                out
            }
            None => json!({"products": self.reads.iter().map(products).collect::<Vec<_>>()}),
        }
    }

    /// A label for messages: the product read, or the products a statement reads.
    pub(crate) fn label(&self) -> String {
        match self.reads.as_slice() {
            [] => "the statement".into(),
            reads => reads.iter().map(|r| r.product.address()).collect::<Vec<_>>().join(", "),
        }
    }

    /// The claims of a ticket for `shard` of this plan (signed by the core).
    pub(crate) fn claims(&self, shard: Shard) -> Result<TicketClaims> {
        Ok(TicketClaims {
            read: Some(self.request.to_claims(&self.reads, self.data_version)?),
            compression: match &self.request {
                ReadRequest::Product(spec) => spec.compression.map(|c| c.name().to_string()).unwrap_or_default(),
                ReadRequest::Sql(_) => String::new(),
            },
            resources: self.resource_reads(),
            generation: self.generation,
            shard_index: shard.index,
            shard_count: shard.count,
            subject: self.principal.subject.clone(),
            issuer: self.principal.issuer.clone(),
            ..Default::default()
        })
    }

    fn resource_reads(&self) -> Vec<ResourceRead> {
        self.reads
            .iter()
            .map(|r| ResourceRead {
                domain: r.product.domain.clone(),
                product: r.product.name.clone(),
                port: r.port.name.clone(),
                contract_version: r.port.contract.version.clone(),
            })
            .collect()
    }

    /// Refuses the plan when a contract it reads changed since `ticket` was issued.
    pub(crate) fn check_fresh(&self, ticket: &[ResourceRead]) -> Result<()> {
        for now in &self.reads {
            let then = ticket
                .iter()
                .find(|t| t.domain == now.product.domain && t.product == now.product.name && t.port == now.port.name);
            let issued = then.map(|t| t.contract_version.as_str()).unwrap_or("(none)");
            if issued != now.port.contract.version {
                return Err(Error::StaleTicket {
                    product: now.product.address(),
                    ticket: issued.to_string(),
                    current: now.port.contract.version.clone(),
                });
            }
        }
        Ok(())
    }

    /// What the audit record says is read, one entry per port.
    pub(crate) fn audit_resources(&self) -> Vec<audit::Resource> {
        let columns: Vec<String> = self.schema.fields().iter().map(|f| f.name().clone()).collect();
        self.reads
            .iter()
            .map(|r| audit::Resource {
                domain: r.product.domain.clone(),
                product: r.product.name.clone(),
                port: r.port.name.clone(),
                contract_id: r.port.contract.id.clone(),
                contract_version: r.port.contract.version.clone(),
                columns: columns.clone(),
            })
            .collect()
    }

    /// The products the plan reads, as lineage datasets (the columns used are filled in when
    /// the read starts).
    pub(crate) fn lineage_datasets(&self) -> Vec<crate::lineage::Dataset> {
        self.reads.iter().map(|r| lineage_dataset(r, self.data_version)).collect()
    }

    /// The decision the audit record holds: every policy, mask and row filter applied.
    pub(crate) fn audit_decision(&self) -> Option<audit::Decision> {
        let grants: Vec<_> = self.reads.iter().filter_map(|r| r.grant.as_ref()).collect();
        if grants.is_empty() {
            return None;
        }
        let mut d = audit::Decision { effect: "allow".into(), ..Default::default() };
        for g in grants {
            d.policy_ids.extend(g.verdict.policy_ids.iter().cloned());
            d.masks.extend(g.masks.iter().map(|(c, s)| format!("{c}: {}", s.name())));
            d.row_filters.extend(g.row_filters.iter().cloned());
        }
        d.policy_ids.dedup();
        Some(d)
    }
}

/// `r` as an OpenLineage dataset: the contract's columns, the owner and classification, and the
/// decision it was read (or written) under.
pub(crate) fn lineage_dataset(r: &Resolved, version: Option<u64>) -> crate::lineage::Dataset {
    let grant = r.grant.as_deref();
    crate::lineage::Dataset {
        domain: r.product.domain.clone(),
        product: r.product.name.clone(),
        port: r.port.name.clone(),
        contract: (r.port.contract.id.clone(), r.port.contract.version.clone()),
        fields: r.port.schema.fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect(),
        columns: Vec::new(),
        version,
        owner: r.product.owner.clone(),
        classification: r.product.sensitivity.clone(),
        policies: grant.map(|g| g.verdict.policy_ids.clone()).unwrap_or_default(),
        masks: grant
            .map(|g| g.masks.iter().map(|(c, s)| (c.clone(), s.name().to_string())).collect())
            .unwrap_or_default(),
        row_filters: grant.map(|g| g.row_filters.clone()).unwrap_or_default(),
    }
}
