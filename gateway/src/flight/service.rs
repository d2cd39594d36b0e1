//! `FlightService` for PATH and JSON-CMD descriptors, listing, schemas, polling and actions.
//!
//! Every handler decodes the call, asks the access core (which decides, plans, executes and
//! audits) and encodes its answer: PATH/CMD descriptors become [`ReadRequest`]s, authorized
//! plans become `FlightInfo`s with signed tickets, and read streams become Flight data.

use std::pin::Pin;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, BasicAuth, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::error::DataFusionError;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::nodes::Nodes;
use super::session::{self, Session};
use super::wire::{self, WireOptions};
use super::{actions, publish, sql};
use crate::access::{AccessCore, AuthorizedPlan, Call, Client, Error, IssuedTicket, ReadRequest, Result};
use crate::auth::{self, Authenticator, Principal};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The gateway's Flight service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MeshFlightService {
    core: Arc<AccessCore>,
    auth: Option<Arc<Authenticator>>,
    wire: WireOptions,
    view_types: bool,
    nodes: Arc<Nodes>,
}

/// The principal the auth layer attached to a call.
fn principal<T>(req: &Request<T>) -> Result<Principal> {
    req.extensions().get::<Principal>().cloned().ok_or(Error::Auth(auth::Error::Missing))
}

/// Where a call came from, for the audit log.
fn client<T>(req: &Request<T>) -> Client {
    Client {
        address: req.remote_addr().map(|a| a.to_string()),
        user_agent: req.metadata().get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_string),
        on_behalf_of: req
            .metadata()
            .get(meshgate_adapters::flight::ON_BEHALF_OF)
            .and_then(|v| v.to_str().ok())
            .map(crate::text::clip),
    }
}

/// The call as the core needs it: name, principal, origin.
fn call<T>(rpc: &str, req: &Request<T>) -> Result<Call> {
    Ok(Call { rpc: rpc.to_string(), principal: principal(req)?, client: client(req) })
}

impl MeshFlightService {
    /// The compression the client asks for in the [`wire::COMPRESSION_HEADER`] header, if it
    /// sent one (`Some(None)`: none).
    fn compression_header<T>(request: &Request<T>) -> Result<Option<Option<wire::Compression>>> {
        let Some(value) = request.metadata().get(wire::COMPRESSION_HEADER) else {
            return Ok(None);
        };
        let name = value.to_str().map_err(|_| Error::BadOption(format!("{} is not text", wire::COMPRESSION_HEADER)))?;
        wire::Compression::parse(name).map(Some).map_err(Error::BadOption)
    }

    /// DoGet: the read a ticket names, as Flight messages (the schema, then the batches).
    pub(crate) async fn get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<BoxStream<'static, std::result::Result<wire::WireMessage, Status>>, Status> {
        let call = call("DoGet", &request)?;
        let header = Self::compression_header(&request)?;
        let offset = offset_of(&request)?;
        let keepalive = keepalive_of(&request)?;
        let ticket = request.into_inner().ticket;
        // Refused before the catalog answers: a metadata answer is recorded as served.
        if offset.is_some() && sql::is_metadata_ticket(&ticket) {
            return Err(Error::BadOption(format!("{} resumes product shards only", wire::OFFSET_HEADER)).into());
        }
        let read = match sql::metadata_read(&self.core, &call, &ticket).await {
            Some(read) => read?,
            None => self.core.read_ticket(&call, &ticket, offset).await?,
        };
        // The header wins over the read's own `compression` (kept in its ticket).
        let wire = WireOptions { compression: header.unwrap_or(read.compression), keepalive, ..self.wire };
        let label = read.label;
        let batches = read.batches.map_err(|e| FlightError::ExternalError(Box::new(e)));
        Ok(wire::encode(read.schema, batches, wire).map_err(move |e| Status::from(stream_error(&label, e))).boxed())
    }

    /// A service over the access core `core`.
    pub fn new(core: Arc<AccessCore>) -> Self {
        Self { core, auth: None, wire: WireOptions::default(), view_types: false, nodes: Default::default() }
    }

    /// Streams SQL results' view types (`Utf8View`, `BinaryView`) as they are by default;
    /// otherwise as `Utf8`/`Binary` (a session option overrides it).
    pub fn with_view_types(mut self, view_types: bool) -> Self {
        self.view_types = view_types;
        self
    }

    /// How Flight SQL plans for this call: its session (from the cookie) and the defaults.
    fn sql_context<'a, T>(&'a self, call: &'a Call, req: &Request<T>) -> Result<sql::Context<'a>> {
        let session = Session::from_metadata(&self.core, call, req.metadata())?;
        Ok(sql::Context { core: &self.core, call, session, view_types: self.view_types })
    }

    /// Verifies Basic credentials in `Handshake` with `auth`, and issues its tokens.
    pub fn with_auth(mut self, auth: Arc<Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Names `nodes` in the endpoints of product reads.
    pub fn with_nodes(mut self, nodes: Nodes) -> Self {
        self.nodes = Arc::new(nodes);
        self
    }

    /// Lays batches out on the wire with `wire`.
    pub fn with_wire(mut self, wire: WireOptions) -> Self {
        self.wire = wire;
        self
    }

    /// The `FlightInfo` of authorized plans (one, or one per bound parameter row, all with one
    /// schema): the schema, one endpoint per plan with a ticket bound to the caller, and what
    /// a single plan knows of its size.
    async fn flight_info(&self, plans: &[AuthorizedPlan], descriptor: FlightDescriptor) -> Result<FlightInfo> {
        let [first, ..] = plans else { return Err(Error::Internal("no plan to describe".into())) };
        let mut info = FlightInfo::new()
            .try_with_schema(first.schema())
            .map_err(|e| Error::Internal(format!("encoding a schema failed: {e}")))?
            .with_descriptor(descriptor)
            .with_ordered(plans.len() > 1)
            .with_app_metadata(serde_json::to_vec(&self.core.description(first).await).unwrap_or_default());
        for plan in plans {
            let tickets = self.core.tickets(plan).await?;
            let product = plan.product().map(|p| (p.domain.as_str(), p.name.as_str()));
            let locations = self.nodes.locations(product, tickets.len());
            for (ticket, at) in tickets.into_iter().zip(locations) {
                let mut base = FlightEndpoint::new();
                for url in at {
                    base = base.with_location(url);
                }
                info = info.with_endpoint(endpoint(base, ticket));
            }
        }
        if let [plan] = plans {
            info = info.with_total_records(plan.total_records()).with_total_bytes(plan.total_bytes());
        }
        Ok(info)
    }

    /// Plans what a descriptor asks for: a Flight SQL command, or a meshgate PATH / JSON read.
    async fn plan_for<T>(
        &self,
        call: &Call,
        req: &Request<T>,
        descriptor: &FlightDescriptor,
    ) -> Result<Vec<AuthorizedPlan>> {
        if descriptor.r#type == DescriptorType::Cmd as i32
            && let Some(command) = sql::command(descriptor)
        {
            return sql::plan(&self.sql_context(call, req)?, command?).await;
        }
        Ok(vec![self.core.authorize(call, request_of(descriptor)?).await?])
    }

    async fn get_flight_info_for(&self, call: &Call, req: &Request<FlightDescriptor>) -> Result<FlightInfo> {
        let descriptor = req.get_ref();
        if let Some(Ok(command)) = sql::command(descriptor)
            && let Some(info) = sql::metadata_info(&command, descriptor.clone())
        {
            return info;
        }
        let plans = self.plan_for(call, req, descriptor).await?;
        self.flight_info(&plans, descriptor.clone()).await
    }
}

/// The row offset a reader resumes at ([`wire::OFFSET_HEADER`]), if it sent one.
fn offset_of<T>(request: &Request<T>) -> Result<Option<u64>> {
    let Some(value) = request.metadata().get(wire::OFFSET_HEADER) else { return Ok(None) };
    value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).map(Some).ok_or_else(|| {
        Error::BadOption(format!("{} is the number of rows already read (0 or more)", wire::OFFSET_HEADER))
    })
}

/// The quiet period after which a stream sends a keep-alive, when the reader asks for them
/// ([`wire::KEEPALIVE_HEADER`]).
fn keepalive_of<T>(request: &Request<T>) -> Result<Option<std::time::Duration>> {
    let Some(value) = request.metadata().get(wire::KEEPALIVE_HEADER) else { return Ok(None) };
    let bad = || Error::BadOption(format!("{} is a duration such as 15s or 500ms", wire::KEEPALIVE_HEADER));
    let every = humantime::parse_duration(value.to_str().map_err(|_| bad())?.trim()).map_err(|_| bad())?;
    if every.is_zero() { Err(bad()) } else { Ok(Some(every)) }
}

/// `base` (its locations kept) with the ticket `issued` and that ticket's expiry.
pub(crate) fn endpoint(base: FlightEndpoint, issued: IssuedTicket) -> FlightEndpoint {
    let since = issued.expires.duration_since(UNIX_EPOCH).unwrap_or_default();
    FlightEndpoint { ticket: Some(Ticket::new(issued.ticket)), ..base }.with_expiration_time(prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
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
fn request_of(d: &FlightDescriptor) -> Result<ReadRequest> {
    match DescriptorType::try_from(d.r#type) {
        Ok(DescriptorType::Path) => ReadRequest::from_path(&d.path),
        Ok(DescriptorType::Cmd) => ReadRequest::from_json(&d.cmd),
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
                self.core.auth_failure("Handshake", client, &e.to_string());
                return Err(e.into());
            }
        };
        self.core.login(client, &p).await?;
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
        let plans = self.core.discover(&p, &request.into_inner().expression).await?;
        let mut infos = Vec::with_capacity(plans.len());
        for plan in &plans {
            let r = &plan.reads()[0];
            let path = vec![r.product.domain.clone(), r.product.name.clone(), r.port.name.clone()];
            infos.push(Ok(self.flight_info(std::slice::from_ref(plan), FlightDescriptor::new_path(path)).await?));
        }
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let call = call("GetFlightInfo", &request)?;
        Ok(Response::new(self.get_flight_info_for(&call, &request).await?))
    }

    /// Reads are planned before the first answer, so the first poll already returns the
    /// complete info.
    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        let call = call("PollFlightInfo", &request)?;
        let info = self.get_flight_info_for(&call, &request).await?;
        let poll =
            PollInfo::new().with_info(info).try_with_progress(1.0).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Response::new(poll))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let call = call("GetSchema", &request)?;
        let schema = match sql::command(request.get_ref()) {
            Some(Ok(command)) => sql::metadata_schema(&command),
            _ => None,
        };
        let schema = match schema {
            Some(s) => s,
            None => {
                let plans = self.plan_for(&call, &request, request.get_ref()).await?;
                Arc::clone(plans.first().ok_or_else(|| Error::Internal("no plan".into()))?.schema())
            }
        };
        let result = SchemaResult::try_from(SchemaAsIpc::new(&schema, &IpcWriteOptions::default()))
            .map_err(|e| Error::Internal(format!("encoding a schema failed: {e}")))?;
        Ok(Response::new(result))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        // Served by `flight::doget` on a running gateway, which writes the messages' body pieces
        // without joining them; this is the same read for callers of the trait.
        Ok(Response::new(self.get(request).await?.map_ok(FlightData::from).boxed()))
    }

    /// Publishes to a product (PATH descriptor, or Flight SQL ingest), or binds parameters to a
    /// Flight SQL prepared statement.
    async fn do_put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        let call = call("DoPut", &request)?;
        let mode = request.metadata().get(publish::MODE_HEADER).map(|v| v.to_str().unwrap_or("(not text)").to_string());
        let mut incoming = request.into_inner();
        let first = incoming.message().await?.unwrap_or_default();
        let descriptor = first.flight_descriptor.clone().unwrap_or_default();
        let metadata = match (descriptor.r#type(), sql::command(&descriptor)) {
            (DescriptorType::Path, _) => match publish::mode(mode.as_deref()) {
                Ok(mode) => {
                    let batches = publish::incoming(first, incoming);
                    publish::path(&self.core, &call, &descriptor, mode, batches).await?
                }
                Err(e) => self.core.recorded(&call, async { Err::<Vec<u8>, _>(e) }).await?,
            },
            (_, Some(Ok(arrow_flight::sql::Command::CommandStatementIngest(command)))) => {
                publish::ingest(&self.core, &call, command, publish::incoming(first, incoming)).await?
            }
            _ => self.core.recorded(&call, sql::bind(&self.core, &call, &descriptor, first, incoming)).await?,
        };
        let result = PutResult { app_metadata: metadata.into() };
        Ok(Response::new(futures::stream::once(async { Ok(result) }).boxed()))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Error::Unsupported("DoExchange is not supported: read with DoGet, publish with DoPut").into())
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.get_ref();
        let call = call(&format!("DoAction/{}", crate::text::clip(&action.r#type)), &request)?;
        if session::ACTIONS.contains(&action.r#type.as_str()) {
            let reply = self.core.recorded(&call, async {
                let current = Session::from_metadata(&self.core, &call, request.metadata())?;
                session::action(&self.core, &call, current, &action.r#type, &action.body, self.view_types)
            });
            let reply = reply.await?;
            let result = arrow_flight::Result { body: reply.body.into() };
            let mut response =
                Response::new(futures::stream::once(async { Ok(result) }).boxed() as Self::DoActionStream);
            if let Some(cookie) = reply.set_cookie {
                let value =
                    cookie.parse().map_err(|_| Error::Internal("the session cookie is not a header value".into()))?;
                response.metadata_mut().insert("set-cookie", value);
            }
            return Ok(response);
        }
        let body = if actions::FLIGHT_ACTIONS.contains(&action.r#type.as_str()) {
            self.core.recorded(&call, async { actions::flight(&self.core, &call, action) }).await?
        } else if sql::is_action(&action.r#type) {
            let cx = self.sql_context(&call, &request)?;
            self.core.recorded(&call, sql::action(&cx, &action.r#type, &action.body)).await?
        } else {
            self.core.recorded(&call, actions::run(&self.core, &call.principal, action)).await?
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(futures::stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(&self, request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        principal(&request)?;
        // Flight SQL's own actions belong to that protocol, which clients know; the list is
        // meshgate's.
        let types = actions::ACTIONS
            .iter()
            .map(|(name, description)| Ok(ActionType { r#type: (*name).into(), description: (*description).into() }));
        Ok(Response::new(futures::stream::iter(types.collect::<Vec<_>>()).boxed()))
    }
}
