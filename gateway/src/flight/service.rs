//! `FlightService` for PATH and JSON-CMD descriptors, listing, schemas, polling and actions.
//!
//! Every handler starts from the [`Principal`] the auth layer put in the request, resolves the
//! product as that principal may see it (undiscoverable products are missing), asks governance
//! for the read decision and the governed table, and plans over that table only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, BasicAuth, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use meshgate_proto::v1::TicketClaims;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::actions;
use super::error::{Error, Result};
use super::wire::{self, WireOptions};
use crate::audit::{self, AuditLog, AuditToken};
use crate::auth::{self, Authenticator, Principal};
use crate::catalog::{Catalog, Port, Product};
use crate::governance::{Access, Governance, check_guarded};
use crate::query::{self, Planned, ReadSpec};
use crate::ticket::TicketSigner;

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gateway's Flight service. Cheap to clone.
#[derive(Clone)]
pub struct MeshFlightService {
    pub(crate) catalog: Arc<Catalog>,
    signer: TicketSigner,
    ctx: SessionContext,
    now: fn() -> SystemTime,
    auth: Option<Arc<Authenticator>>,
    audit: Option<Arc<AuditLog>>,
    wire: WireOptions,
    /// Turns true when the gateway stops: running streams end, their outcome recorded.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for MeshFlightService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshFlightService")
            .field("catalog", &self.catalog)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// A resolved and authorized read.
struct Read {
    product: Arc<Product>,
    port: Arc<Port>,
    planned: Planned,
    access: Option<Arc<Access>>,
}

/// The principal the auth layer attached to a call.
fn principal<T>(req: &Request<T>) -> Result<Principal> {
    req.extensions().get::<Principal>().cloned().ok_or(Error::Auth(auth::Error::Missing))
}

/// Where a call came from, for the audit log.
fn client<T>(req: &Request<T>) -> audit::Client {
    audit::Client {
        address: req.remote_addr().map(|a| a.to_string()),
        user_agent: req.metadata().get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_string),
    }
}

impl MeshFlightService {
    /// A service over `catalog`, planning with `ctx` and signing with `signer`.
    pub fn new(catalog: Arc<Catalog>, signer: TicketSigner, ctx: SessionContext) -> Self {
        Self {
            catalog,
            signer,
            ctx,
            now: SystemTime::now,
            auth: None,
            audit: None,
            wire: WireOptions::default(),
            stop: tokio::sync::watch::channel(false).1,
        }
    }

    /// Ends running streams (with `UNAVAILABLE`, their outcome recorded) when `stop` turns true.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// Verifies Basic credentials in `Handshake` with `auth`, and issues its tokens.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Records every outcome in `audit`.
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Lays batches out on the wire with `wire`.
    pub fn with_wire(mut self, wire: WireOptions) -> Self {
        self.wire = wire;
        self
    }

    /// Uses `now` as the clock (tests).
    pub fn with_clock(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self
    }

    /// Whether `p` may learn that a product exists (everything, without governance).
    fn visible(gov: Option<&Arc<Governance>>, p: &Principal, product: Option<&Product>) -> bool {
        match (gov, product) {
            (None, _) => true,
            (Some(g), Some(prod)) => g.may_discover(p, prod),
            // A product that did not load has no attributes to decide on: under governance it is
            // shown to no caller; operators see its problems in the log and the reload report.
            (Some(_), None) => false,
        }
    }

    fn authorize(&self, p: &Principal, spec: &ReadSpec) -> Result<Read> {
        let snapshot = self.catalog.snapshot();
        let gov = self.catalog.governance();
        let vis = |_: &str, _: &str, prod: Option<&Product>| Self::visible(gov, p, prod);
        let (product, port) = snapshot.resolve_visible(&spec.domain, &spec.product, spec.port.as_deref(), &vis)?;
        let (table, access): (Arc<dyn TableProvider>, _) = match gov {
            None => (Arc::clone(&port.table), None),
            Some(g) => {
                let a = g.access(&self.ctx, p, &product, &port, snapshot.generation)?;
                match &a.table {
                    Some(t) => (Arc::clone(t) as Arc<dyn TableProvider>, Some(Arc::clone(&a))),
                    None => {
                        return Err(Error::Denied {
                            product: product.address(),
                            policy_ids: a.verdict.policy_ids.clone(),
                        });
                    }
                }
            }
        };
        let planned = query::plan(&self.ctx, &product, &port, table, spec)?;
        Ok(Read { product, port, planned, access })
    }

    /// Passes `out` on; a refusal by policy is written to the audit log (durably) first.
    async fn audited<T>(&self, rpc: &str, client: audit::Client, p: &Principal, out: Result<T>) -> Result<T> {
        if let (Err(Error::Denied { product, policy_ids }), Some(log)) = (&out, &self.audit) {
            let mut token = log.begin(rpc, client, p)?;
            let (domain, name) = product.split_once('/').unwrap_or((product.as_str(), ""));
            token.resource(&audit::Resource { domain: domain.into(), product: name.into(), ..Default::default() });
            token.decision(&audit::Decision {
                effect: "deny".into(),
                policy_ids: policy_ids.clone(),
                ..Default::default()
            });
            token.fail(&Status::permission_denied("denied by policy")).await?;
        }
        out
    }

    /// Builds the `FlightInfo` of a planned read, with one ticket bound to `p`.
    fn flight_info(
        &self,
        p: &Principal,
        read: &Read,
        spec: &ReadSpec,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        let (product, port, schema) = (&read.product, &read.port, &read.planned.schema);
        let claims = TicketClaims {
            domain: product.domain.clone(),
            product: product.name.clone(),
            port: port.name.clone(),
            contract_version: port.contract.version.clone(),
            projection: spec.columns.clone(),
            filter: spec.filter.clone().unwrap_or_default(),
            limit: spec.limit,
            shard_index: 0,
            shard_count: 1,
            subject: p.subject.clone(),
            issuer: p.issuer.clone(),
            ..Default::default()
        };
        let now = (self.now)();
        let ticket = self.signer.sign(claims, now);
        let since = (now + self.signer.ttl()).duration_since(UNIX_EPOCH).unwrap_or_default();
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket)).with_expiration_time(prost_types::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            });
        // Row filters make counts unknowable without reading; so do the caller's filters.
        let filtered = spec.filter.is_some() || read.access.as_ref().is_some_and(|a| !a.row_filters.is_empty());
        let records = match (filtered, spec.limit, port.total_records) {
            (false, Some(n), total) if total >= 0 => total.min(i64::try_from(n).unwrap_or(i64::MAX)),
            (false, None, total) => total,
            _ => -1,
        };
        let masked = read.access.as_ref().is_some_and(|a| !a.masks.is_empty());
        let bytes =
            if !filtered && !masked && spec.columns.is_empty() && spec.limit.is_none() { port.total_bytes } else { -1 };
        let metadata = serde_json::json!({
            "product": product.address(),
            "id": product.id,
            "title": product.title,
            "status": product.status,
            "owner": product.owner,
            "tags": product.tags,
            "description": product.description,
            "port": port.name,
            "port_version": port.version,
            "contract_id": port.contract.id,
            "contract_version": port.contract.version,
        });
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Error::Internal(format!("encoding a schema failed: {e}")))?
            .with_descriptor(descriptor)
            .with_endpoint(endpoint)
            .with_total_records(records)
            .with_total_bytes(bytes)
            .with_ordered(false)
            .with_app_metadata(serde_json::to_vec(&metadata).unwrap_or_default()))
    }

    fn get_flight_info_for(&self, p: &Principal, descriptor: FlightDescriptor) -> Result<FlightInfo> {
        let spec = spec_of(&descriptor)?;
        let read = self.authorize(p, &spec)?;
        self.flight_info(p, &read, &spec, descriptor)
    }

    /// Every product/port `p` may discover and read, matching `criteria` (`tag:x`, or a
    /// case-insensitive substring of address, title or description; empty for all).
    fn list_flights_for(&self, p: &Principal, criteria: &str) -> Result<Vec<FlightInfo>> {
        let criteria = criteria.trim().to_lowercase();
        let snapshot = self.catalog.snapshot();
        let gov = self.catalog.governance();
        let mut out = Vec::new();
        for product in snapshot.products().filter(|x| Self::visible(gov, p, Some(x.as_ref()))) {
            let hit = match criteria.strip_prefix("tag:") {
                Some(tag) => product.tags.iter().any(|t| t.to_lowercase() == tag.trim()),
                None => [product.address(), product.title.clone(), product.description.clone()]
                    .iter()
                    .any(|s| s.to_lowercase().contains(&criteria)),
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
                let read = match self.authorize(p, &spec) {
                    Ok(r) => r,
                    // Discoverable but not readable: listed nowhere a ticket would be useless.
                    Err(Error::Denied { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let descriptor =
                    FlightDescriptor::new_path(vec![product.domain.clone(), product.name.clone(), port.name.clone()]);
                out.push(self.flight_info(p, &read, &spec, descriptor)?);
            }
        }
        Ok(out)
    }

    async fn do_get_ticket(
        &self,
        p: &Principal,
        ticket: &[u8],
        token: Option<&mut AuditToken>,
    ) -> Result<(String, SchemaRef, SendableRecordBatchStream)> {
        let claims = self.signer.verify(ticket, (self.now)())?;
        if claims.subject != p.subject || claims.issuer != p.issuer {
            return Err(Error::ForeignTicket);
        }
        let spec = ReadSpec {
            domain: claims.domain,
            product: claims.product,
            port: Some(claims.port),
            columns: claims.projection,
            filter: Some(claims.filter).filter(|f| !f.is_empty()),
            limit: claims.limit,
        };
        // The policy is checked again: it may have changed since the ticket was issued.
        let read = self.authorize(p, &spec)?;
        if let Some(t) = token {
            t.ids(&uuid::Uuid::new_v4().to_string(), Some(&hex::encode(&claims.ticket_id)));
            t.resource(&audit::Resource {
                domain: read.product.domain.clone(),
                product: read.product.name.clone(),
                port: read.port.name.clone(),
                contract_id: read.port.contract.id.clone(),
                contract_version: read.port.contract.version.clone(),
                columns: read.planned.schema.fields().iter().map(|f| f.name().clone()).collect(),
            });
            if let Some(a) = &read.access {
                t.decision(&audit::Decision {
                    effect: "allow".into(),
                    policy_ids: a.verdict.policy_ids.clone(),
                    masks: a
                        .masks
                        .iter()
                        .map(|(c, s)| {
                            format!("{c}: {}", serde_json::to_value(s).unwrap_or_default().as_str().unwrap_or(""))
                        })
                        .collect(),
                    row_filters: a.row_filters.clone(),
                });
            }
        }
        if read.port.contract.version != claims.contract_version {
            return Err(Error::StaleTicket {
                product: read.product.address(),
                ticket: claims.contract_version,
                current: read.port.contract.version.clone(),
            });
        }
        let address = read.product.address();
        let plan = read.planned.df.create_physical_plan().await.map_err(|e| Error::execution(address.clone(), e))?;
        if read.access.is_some() {
            check_guarded(&plan).map_err(|e| Error::Internal(e.to_string()))?;
        }
        let task = self.ctx.task_ctx();
        let batches =
            datafusion::physical_plan::execute_stream(plan, task).map_err(|e| Error::execution(address.clone(), e))?;
        Ok((address, read.planned.schema, batches))
    }
}

/// Counts what a read delivers and records its outcome, durably, before the stream ends: the
/// client sees the end of a stream only once its record is on disk, and a record that cannot
/// be written ends the stream with `UNAVAILABLE` instead. When the gateway stops, the stream
/// ends with `UNAVAILABLE` and that outcome is recorded. A stream dropped by its client is
/// recorded as cancelled by the token.
fn audited(
    inner: SendableRecordBatchStream,
    token: Option<AuditToken>,
    product: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<RecordBatch>> + Send {
    struct Reading {
        inner: SendableRecordBatchStream,
        token: Option<AuditToken>,
        product: String,
        stop: tokio::sync::watch::Receiver<bool>,
    }
    async fn finish(token: Option<AuditToken>, status: Option<&Status>) -> Result<()> {
        match (token, status) {
            (None, _) => Ok(()),
            (Some(t), None) => Ok(t.ok().await?),
            (Some(t), Some(s)) => Ok(t.fail(s).await?),
        }
    }
    async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
        if stop.wait_for(|s| *s).await.is_err() {
            // The gateway was dropped without a shutdown: nothing will ever stop this stream.
            std::future::pending::<()>().await;
        }
    }
    let state = Some(Reading { inner, token, product, stop });
    futures::stream::unfold(state, |state| async move {
        let mut r = state?;
        let next = tokio::select! {
            biased;
            () = stopped(&mut r.stop) => {
                let e = Error::ShuttingDown;
                let status = Status::unavailable(e.to_string());
                let _ = finish(r.token.take(), Some(&status)).await;
                return Some((Err(e), None));
            }
            next = r.inner.next() => next,
        };
        match next {
            Some(Ok(b)) => {
                if let Some(t) = r.token.as_mut() {
                    t.add(b.num_rows() as u64, b.get_array_memory_size() as u64);
                }
                Some((Ok(b), Some(r)))
            }
            Some(Err(e)) => {
                let e = Error::execution(r.product.clone(), e);
                let status = Status::aborted("the read failed");
                let _ = finish(r.token.take(), Some(&status)).await;
                Some((Err(e), None))
            }
            None => match finish(r.token.take(), None).await {
                Ok(()) => None,
                Err(e) => Some((Err(e), None)),
            },
        }
    })
}

/// Maps an error raised mid-stream back to the gateway's errors.
fn stream_error(product: &str, e: FlightError) -> Error {
    match e {
        FlightError::ExternalError(b) => match b.downcast::<Error>() {
            Ok(e) => *e,
            Err(b) => match b.downcast::<DataFusionError>() {
                Ok(df) => Error::execution(product, *df),
                Err(other) => Error::Internal(other.to_string()),
            },
        },
        FlightError::Arrow(a) => Error::execution(product, DataFusionError::ArrowError(Box::new(a), None)),
        other => Error::Internal(other.to_string()),
    }
}

/// The read a descriptor asks for.
fn spec_of(d: &FlightDescriptor) -> Result<ReadSpec> {
    match DescriptorType::try_from(d.r#type) {
        Ok(DescriptorType::Path) => Ok(ReadSpec::from_path(&d.path)?),
        Ok(DescriptorType::Cmd) => Ok(ReadSpec::from_json(&d.cmd)?),
        Ok(DescriptorType::Unknown) | Err(_) => Err(Error::BadDescriptor(
            "the descriptor's type must be PATH ([\"<domain>\", \"<product>\"]) or CMD (a JSON query)".into(),
        )),
    }
}

/// Basic credentials from the `authorization` header or, for older clients, the first
/// handshake message's `BasicAuth` payload.
fn basic_credentials(headers: &http::HeaderMap, first: &HandshakeRequest) -> Result<Option<(String, String)>> {
    use base64::Engine;
    match auth::layer::credentials(headers)? {
        auth::layer::Credentials::Basic(b64) => {
            let raw = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| auth::Error::BadHeader)?;
            let text = String::from_utf8(raw).map_err(|_| auth::Error::BadHeader)?;
            let (user, pass) = text.split_once(':').ok_or(auth::Error::BadHeader)?;
            Ok(Some((user.to_string(), pass.to_string())))
        }
        auth::layer::Credentials::Bearer(_) => Ok(None),
        auth::layer::Credentials::None => match BasicAuth::decode(first.payload.as_ref()) {
            Ok(b) if !b.username.is_empty() => Ok(Some((b.username, b.password))),
            _ => Err(auth::Error::Missing.into()),
        },
    }
}

#[tonic::async_trait]
impl FlightService for MeshFlightService {
    type HandshakeStream = Stream_<HandshakeResponse>;
    type ListFlightsStream = Stream_<FlightInfo>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = Stream_<PutResult>;
    type DoExchangeStream = Stream_<FlightData>;
    type DoActionStream = Stream_<arrow_flight::Result>;
    type ListActionsStream = Stream_<ActionType>;

    /// Exchanges Basic credentials (header or `BasicAuth` payload) for a gateway bearer token,
    /// returned in the `authorization` response header and as the payload. A caller that
    /// already has a valid bearer token gets a fresh one. Without authentication it only echoes.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let headers = request.metadata().clone().into_headers();
        let already = request.extensions().get::<Principal>().cloned();
        let client = client(&request);
        let source = request.remote_addr().map(|a| a.ip());
        let mut incoming = request.into_inner();
        let first = incoming.message().await?.unwrap_or_default();
        let Some(auth) = &self.auth else {
            let reply = HandshakeResponse { protocol_version: first.protocol_version, payload: first.payload };
            return Ok(Response::new(futures::stream::once(async { Ok(reply) }).boxed()));
        };
        // Basic credentials start a session; a bearer token renews one, never past the
        // credential presented or the session's limit.
        let issued = match basic_credentials(&headers, &first) {
            Ok(Some((user, pass))) => match auth.verify_basic(&user, &pass, source).await {
                Ok(p) => auth.tokens().issue(&p, None).map(|t| (p, t)).map_err(Error::from),
                Err(e) => Err(Error::from(e)),
            },
            Ok(None) => match already {
                Some(p) => auth.renew(&p).map(|t| (p, t)).map_err(Error::from),
                None => Err(Error::Auth(auth::Error::Missing)),
            },
            Err(e) => Err(e),
        };
        let (p, token) = match issued {
            Ok(x) => x,
            Err(e) => {
                if let Some(log) = &self.audit {
                    log.auth_failure("Handshake", client, &e.to_string());
                }
                return Err(e.into());
            }
        };
        if let Some(log) = &self.audit {
            log.login(client, &p).await.map_err(Error::from)?;
        }
        let reply =
            HandshakeResponse { protocol_version: first.protocol_version, payload: token.clone().into_bytes().into() };
        let mut response = Response::new(futures::stream::once(async { Ok(reply) }).boxed() as Self::HandshakeStream);
        let value =
            format!("Bearer {token}").parse().map_err(|_| Error::Internal("token is not a header value".into()))?;
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let p = principal(&request)?;
        let expr = request.into_inner().expression;
        let criteria = std::str::from_utf8(&expr).map_err(|_| Error::from(query::Error::NotUtf8("the criteria")))?;
        let infos = self.list_flights_for(&p, criteria)?;
        Ok(Response::new(futures::stream::iter(infos.into_iter().map(Ok)).boxed()))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let (p, c) = (principal(&request)?, client(&request));
        let info = self.audited("GetFlightInfo", c, &p, self.get_flight_info_for(&p, request.into_inner())).await?;
        Ok(Response::new(info))
    }

    /// Reads are planned synchronously, so the first poll already returns the complete info.
    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        let (p, c) = (principal(&request)?, client(&request));
        let info = self.audited("PollFlightInfo", c, &p, self.get_flight_info_for(&p, request.into_inner())).await?;
        let poll =
            PollInfo::new().with_info(info).try_with_progress(1.0).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Response::new(poll))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let (p, c) = (principal(&request)?, client(&request));
        let spec = spec_of(&request.into_inner())?;
        let read = self.audited("GetSchema", c, &p, self.authorize(&p, &spec)).await?;
        let result = SchemaResult::try_from(SchemaAsIpc::new(&read.planned.schema, &IpcWriteOptions::default()))
            .map_err(|e| Error::Internal(format!("encoding a schema failed: {e}")))?;
        Ok(Response::new(result))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let (p, c) = (principal(&request)?, client(&request));
        let mut token = match &self.audit {
            Some(log) => Some(log.begin("DoGet", c, &p).map_err(Error::from)?),
            None => None,
        };
        let (address, schema, batches) =
            match self.do_get_ticket(&p, &request.into_inner().ticket, token.as_mut()).await {
                Ok(x) => x,
                Err(e) => {
                    let status = Status::from(e);
                    if let Some(t) = token {
                        t.fail(&status).await.map_err(Error::from)?;
                    }
                    return Err(status);
                }
            };
        // Data leaves only once the read's start is on disk.
        if let Some(t) = token.as_mut() {
            t.started().await.map_err(Error::from)?;
        }
        let audited = audited(batches, token, address.clone(), self.stop.clone());
        let flight = wire::encode(schema, audited.map_err(|e| FlightError::ExternalError(Box::new(e))), self.wire)
            .map_err(move |e| Status::from(stream_error(&address, e)));
        Ok(Response::new(flight.boxed()))
    }

    async fn do_put(&self, _request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Error::Unsupported("DoPut").into())
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Error::Unsupported("DoExchange").into())
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let (p, c) = (principal(&request)?, client(&request));
        let action = request.into_inner();
        let rpc = format!("DoAction/{}", crate::text::clip(&action.r#type));
        let token = match &self.audit {
            Some(log) => Some(log.begin(&rpc, c, &p).map_err(Error::from)?),
            None => None,
        };
        let outcome = self.do_action_for(&p, &action).await;
        if let Some(t) = token {
            // No result leaves unrecorded.
            match &outcome {
                Ok(_) => t.ok().await,
                Err(status) => t.fail(status).await,
            }
            .map_err(Error::from)?;
        }
        let body = outcome?;
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(futures::stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        principal(&request)?;
        let types = actions::ACTIONS
            .iter()
            .map(|(name, description)| Ok(ActionType { r#type: (*name).into(), description: (*description).into() }));
        Ok(Response::new(futures::stream::iter(types.collect::<Vec<_>>()).boxed()))
    }
}

impl MeshFlightService {
    /// Runs an action for `p`; the caller records the outcome.
    async fn do_action_for(&self, p: &Principal, action: &Action) -> Result<Vec<u8>, Status> {
        let gov = self.catalog.governance();
        let vis = |_: &str, _: &str, prod: Option<&Product>| Self::visible(gov, p, prod);
        let may_admin = gov.is_none_or(|g| g.may_admin(p));
        let generation = self.catalog.snapshot().generation;
        let counts = |product: &Product, port: &Arc<Port>| match gov {
            None => true,
            Some(g) => g
                .access(&self.ctx, p, product, port, generation)
                .is_ok_and(|a| a.table.is_some() && a.row_filters.is_empty() && a.masks.is_empty()),
        };
        Ok(actions::run(&self.catalog, &action.r#type, &action.body, &vis, &counts, may_admin).await?)
    }
}
