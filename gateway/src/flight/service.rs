//! `FlightService` for PATH and JSON-CMD descriptors, listing, schemas, polling and actions.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use meshgate_proto::v1::TicketClaims;
use tonic::{Request, Response, Status, Streaming};

use super::actions;
use super::error::{Error, Result};
use crate::catalog::{Catalog, Port, Product};
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
}

impl std::fmt::Debug for MeshFlightService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshFlightService")
            .field("catalog", &self.catalog)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl MeshFlightService {
    /// A service over `catalog`, planning with `ctx` and signing with `signer`.
    pub fn new(catalog: Arc<Catalog>, signer: TicketSigner, ctx: SessionContext) -> Self {
        Self { catalog, signer, ctx, now: SystemTime::now }
    }

    /// Uses `now` as the clock (tests).
    pub fn with_clock(mut self, now: fn() -> SystemTime) -> Self {
        self.now = now;
        self
    }

    fn resolve(&self, spec: &ReadSpec) -> Result<(Arc<Product>, Arc<Port>, Planned)> {
        let (product, port) = self.catalog.snapshot().resolve(&spec.domain, &spec.product, spec.port.as_deref())?;
        let planned = query::plan(&self.ctx, &product, &port, spec)?;
        Ok((product, port, planned))
    }

    /// Builds the `FlightInfo` of a planned read, with one signed ticket.
    fn flight_info(
        &self,
        product: &Product,
        port: &Port,
        spec: &ReadSpec,
        schema: &SchemaRef,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
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
            ..Default::default()
        };
        let now = (self.now)();
        let ticket = self.signer.sign(claims, now);
        let expires = now + self.signer.ttl();
        let since = expires.duration_since(UNIX_EPOCH).unwrap_or_default();
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket)).with_expiration_time(prost_types::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
            });
        let whole = spec.filter.is_none() && spec.columns.is_empty();
        let records = match (spec.filter.is_none(), spec.limit, port.total_records) {
            (true, Some(n), total) if total >= 0 => total.min(i64::try_from(n).unwrap_or(i64::MAX)),
            (true, None, total) => total,
            _ => -1,
        };
        let bytes = if whole && spec.limit.is_none() { port.total_bytes } else { -1 };
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

    fn get_flight_info_for(&self, descriptor: FlightDescriptor) -> Result<FlightInfo> {
        let spec = spec_of(&descriptor)?;
        let (product, port, planned) = self.resolve(&spec)?;
        self.flight_info(&product, &port, &spec, &planned.schema, descriptor)
    }

    /// Every servable product/port matching `criteria` (`tag:x`, or a case-insensitive
    /// substring of address, title or description; empty for all).
    fn list_flights_for(&self, criteria: &str) -> Result<Vec<FlightInfo>> {
        let criteria = criteria.trim().to_lowercase();
        let snapshot = self.catalog.snapshot();
        let mut out = Vec::new();
        for product in snapshot.products() {
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
                let planned = query::plan(&self.ctx, product, port, &spec)?;
                let descriptor =
                    FlightDescriptor::new_path(vec![product.domain.clone(), product.name.clone(), port.name.clone()]);
                out.push(self.flight_info(product, port, &spec, &planned.schema, descriptor)?);
            }
        }
        Ok(out)
    }

    async fn do_get_ticket(&self, ticket: &[u8]) -> Result<BoxStream<'static, Result<FlightData, Status>>> {
        let claims = self.signer.verify(ticket, (self.now)())?;
        let spec = ReadSpec {
            domain: claims.domain,
            product: claims.product,
            port: Some(claims.port),
            columns: claims.projection,
            filter: Some(claims.filter).filter(|f| !f.is_empty()),
            limit: claims.limit,
        };
        let (product, port, planned) = self.resolve(&spec)?;
        if port.contract.version != claims.contract_version {
            return Err(Error::StaleTicket {
                product: product.address(),
                ticket: claims.contract_version,
                current: port.contract.version.clone(),
            });
        }
        let address = product.address();
        let batches = planned.df.execute_stream().await.map_err(|e| Error::execution(address.clone(), e))?;
        tracing::debug!(product = %address, "streaming");
        let flight = FlightDataEncoderBuilder::new()
            .with_schema(planned.schema)
            .build(batches.map_err(|e| FlightError::ExternalError(Box::new(e))))
            .map_err(move |e| Status::from(stream_error(&address, e)));
        Ok(flight.boxed())
    }
}

/// Maps an error raised mid-stream back to the gateway's errors.
fn stream_error(product: &str, e: FlightError) -> Error {
    match e {
        FlightError::ExternalError(b) => match b.downcast::<DataFusionError>() {
            Ok(df) => Error::execution(product, *df),
            Err(other) => Error::Internal(other.to_string()),
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

#[tonic::async_trait]
impl FlightService for MeshFlightService {
    type HandshakeStream = Stream_<HandshakeResponse>;
    type ListFlightsStream = Stream_<FlightInfo>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = Stream_<PutResult>;
    type DoExchangeStream = Stream_<FlightData>;
    type DoActionStream = Stream_<arrow_flight::Result>;
    type ListActionsStream = Stream_<ActionType>;

    /// Without authentication configured the handshake only echoes, so clients that always
    /// handshake first keep working.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let mut incoming = request.into_inner();
        let first = incoming.message().await?.unwrap_or_default();
        let reply = HandshakeResponse { protocol_version: first.protocol_version, payload: first.payload };
        Ok(Response::new(futures::stream::once(async { Ok(reply) }).boxed()))
    }

    async fn list_flights(&self, request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        let expr = request.into_inner().expression;
        let criteria = std::str::from_utf8(&expr).map_err(|_| Error::from(query::Error::NotUtf8("the criteria")))?;
        let infos = self.list_flights_for(criteria)?;
        Ok(Response::new(futures::stream::iter(infos.into_iter().map(Ok)).boxed()))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        Ok(Response::new(self.get_flight_info_for(request.into_inner())?))
    }

    /// Reads are planned synchronously, so the first poll already returns the complete info.
    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        let info = self.get_flight_info_for(request.into_inner())?;
        let poll =
            PollInfo::new().with_info(info).try_with_progress(1.0).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Response::new(poll))
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let spec = spec_of(&request.into_inner())?;
        let (_, _, planned) = self.resolve(&spec)?;
        let result = SchemaResult::try_from(SchemaAsIpc::new(&planned.schema, &IpcWriteOptions::default()))
            .map_err(|e| Error::Internal(format!("encoding a schema failed: {e}")))?;
        Ok(Response::new(result))
    }

    async fn do_get(&self, request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Ok(Response::new(self.do_get_ticket(&request.into_inner().ticket).await?))
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
        let action = request.into_inner();
        let body = actions::run(&self.catalog, &action.r#type, &action.body).await?;
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(futures::stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(&self, _request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let types = actions::ACTIONS
            .iter()
            .map(|(name, description)| Ok(ActionType { r#type: (*name).into(), description: (*description).into() }));
        Ok(Response::new(futures::stream::iter(types.collect::<Vec<_>>()).boxed()))
    }
}
