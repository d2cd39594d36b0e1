//! Flight SQL commands on the Flight front: decoded here, answered by the access core.
//!
//! A CMD descriptor whose bytes are a protobuf `Any` with a Flight SQL type URL is a Flight SQL
//! command; anything else stays a meshgate JSON query. Statements are planned by the core like
//! every other read (catalog `mesh`, the caller's governed tables) and their `FlightInfo`
//! carries the same signed tickets, so `DoGet` has one path.
//!
//! Metadata commands (`GetTables`, `GetSqlInfo`, ...) are answered in `sql_meta`; their ticket
//! is the command itself, answered for whoever redeems it.
//!
//! Prepared statements are stateless: the handle is a ticket of the statement, signed and bound
//! to the caller, so any replica can execute it and closing it releases nothing. Binding
//! parameters (`DoPut` of a batch of rows) returns a new handle carrying the rows; executing it
//! yields one endpoint per row. Statements inherit the caller's session (`session`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, Command, DoPutPreparedStatementResult, ProstMessageExt,
};
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;

use super::session::Session;
use super::sql_meta;
use crate::access::{
    AccessCore, AuthorizedPlan, Call, Error, MAX_PARAMETER_BYTES, ReadRequest, ReadStream, Result, Shard,
};

/// Prefix of every Flight SQL message's type URL.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// The Flight SQL command a descriptor holds, if it holds one.
pub(crate) fn command(d: &FlightDescriptor) -> Option<Result<Command>> {
    decode(d.cmd.as_ref())
}

/// The Flight SQL command `bytes` encode (as a protobuf `Any`), if they encode one.
fn decode(bytes: &[u8]) -> Option<Result<Command>> {
    let any = Any::decode(bytes).ok().filter(|a| a.type_url.starts_with(TYPE_URL_PREFIX))?;
    Some(Command::try_from(any).map_err(|e| Error::BadDescriptor(format!("the Flight SQL command is invalid: {e}"))))
}

/// The `FlightInfo` of a metadata command (its ticket is the command), or `None` when
/// `command` is a statement.
pub(crate) fn metadata_info(command: &Command, descriptor: FlightDescriptor) -> Option<Result<FlightInfo>> {
    let schema = sql_meta::schema(command)?;
    let ticket = Ticket::new(command.clone().into_any().encode_to_vec());
    Some(
        FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Error::Internal(format!("encoding a schema failed: {e}")))
            .map(|info| info.with_descriptor(descriptor).with_endpoint(FlightEndpoint::new().with_ticket(ticket))),
    )
}

/// The schema a metadata command answers with, or `None` when `command` is a statement.
pub(crate) fn metadata_schema(command: &Command) -> Option<SchemaRef> {
    sql_meta::schema(command)
}

/// Whether `ticket` holds a Flight SQL metadata command (answered for whoever redeems it)
/// rather than a signed meshgate ticket.
pub(crate) fn is_metadata_ticket(ticket: &[u8]) -> bool {
    matches!(decode(ticket), Some(Ok(c)) if sql_meta::schema(&c).is_some())
}

/// Answers the metadata command a ticket holds for the caller, or `None` when the ticket is
/// not one (it is then a signed meshgate ticket).
pub(crate) async fn metadata_read(core: &Arc<AccessCore>, call: &Call, ticket: &[u8]) -> Option<Result<ReadStream>> {
    let command = match decode(ticket)? {
        Ok(c) if sql_meta::schema(&c).is_some() => c,
        Ok(other) => {
            return Some(Err(Error::BadDescriptor(format!(
                "a Flight SQL {} is not a ticket; call GetFlightInfo with it and redeem the ticket returned",
                other.type_url().strip_prefix(TYPE_URL_PREFIX).unwrap_or_default()
            ))));
        }
        Err(e) => return Some(Err(e)),
    };
    let answer = core.recorded(call, async { sql_meta::answer(core, &call.principal, command) }).await;
    Some(answer.map(|batch| ReadStream {
        schema: batch.schema(),
        label: "the catalog".into(),
        batches: futures::stream::once(async move { Ok(batch) }).boxed(),
        compression: None,
    }))
}

/// How the Flight SQL front plans statements: the caller's session and the server's default
/// for view types.
pub(crate) struct Context<'a> {
    pub(crate) core: &'a Arc<AccessCore>,
    pub(crate) call: &'a Call,
    pub(crate) session: Session,
    pub(crate) view_types: bool,
}

/// Plans the statement a Flight SQL command asks for: one plan, or one per parameter row bound
/// to a prepared statement.
pub(crate) async fn plan(cx: &Context<'_>, command: Command) -> Result<Vec<AuthorizedPlan>> {
    match command {
        Command::CommandStatementQuery(q) => {
            let read = cx.session.statement(q.query, cx.view_types);
            Ok(vec![cx.core.authorize(cx.call, ReadRequest::Sql(read)).await?])
        }
        Command::CommandPreparedStatementQuery(p) => cx.core.prepared(cx.call, &p.prepared_statement_handle).await,
        other => Err(Error::Unsupported(unsupported(other.type_url()))),
    }
}

/// Binds the parameter rows a `DoPut` streams to the prepared statement its descriptor names;
/// returns the `PutResult` metadata (a `DoPutPreparedStatementResult` with the new handle).
pub(crate) async fn bind(
    core: &AccessCore,
    call: &Call,
    descriptor: &FlightDescriptor,
    first: FlightData,
    rest: impl Stream<Item = Result<FlightData, tonic::Status>> + Send + 'static,
) -> Result<Vec<u8>> {
    let handle = match command(descriptor) {
        Some(Ok(Command::CommandPreparedStatementQuery(p))) => p.prepared_statement_handle,
        Some(Ok(other)) => return Err(Error::Unsupported(unsupported(other.type_url()))),
        Some(Err(e)) => return Err(e),
        None => return Err(Error::Unsupported(NOT_WRITABLE)),
    };
    let data = futures::stream::once(async { Ok(first) }).chain(rest).map_err(|e| FlightError::Tonic(Box::new(e)));
    let mut batches = FlightRecordBatchStream::new_from_flight_data(data);
    // Stop reading early when a client streams far more than can be bound; the exact row and
    // byte limits are checked when the rows are signed into the handle.
    let (mut held, mut bound) = (0usize, Vec::<RecordBatch>::new());
    while let Some(batch) =
        batches.try_next().await.map_err(|e| Error::Parameters(format!("the parameter batches do not decode: {e}")))?
    {
        held += batch.get_array_memory_size();
        if held > 4 * MAX_PARAMETER_BYTES {
            return Err(Error::Parameters(format!(
                "at most {MAX_PARAMETER_BYTES} bytes of parameter values are bound at once; bind them in several batches"
            )));
        }
        bound.push(batch);
    }
    let handle = core.bind(call, &handle, &bound)?;
    Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.into()) }.encode_to_vec())
}

/// Why `DoPut` of anything but a publish, an ingest or parameters is refused.
pub(crate) const NOT_WRITABLE: &str = "DoPut takes a product's PATH descriptor (publish a version), a Flight SQL ingest, or parameters for a prepared statement";

/// The Flight SQL actions this front answers.
const ACTIONS: &[&str] = &["CreatePreparedStatement", "ClosePreparedStatement"];

/// Whether `name` is one of the Flight SQL actions this front answers.
pub(crate) fn is_action(name: &str) -> bool {
    ACTIONS.contains(&name)
}

/// Runs the Flight SQL action `name`; returns the result body.
pub(crate) async fn action(cx: &Context<'_>, name: &str, body: &[u8]) -> Result<Vec<u8>> {
    match name {
        "CreatePreparedStatement" => create_prepared(cx, body).await,
        "ClosePreparedStatement" => unpack::<ActionClosePreparedStatementRequest>(body).map(|_| Vec::new()),
        other => Err(Error::BadAction(format!("no Flight SQL action `{}`", crate::text::clip(other)))),
    }
}

/// Plans the statement with its placeholders unbound; the handle is a ticket of it.
async fn create_prepared(cx: &Context<'_>, body: &[u8]) -> Result<Vec<u8>> {
    let request: ActionCreatePreparedStatementRequest = unpack(body)?;
    let read = crate::access::SqlRead { params: None, ..cx.session.statement(request.query, cx.view_types) };
    let plan = cx.core.authorize(cx.call, ReadRequest::Sql(read)).await?;
    let handle = cx.core.ticket(&plan, Shard::WHOLE)?.ticket;
    let parameters = plan.parameters();
    let result = ActionCreatePreparedStatementResult {
        prepared_statement_handle: handle.into(),
        dataset_schema: ipc_schema(plan.schema())?,
        parameter_schema: if parameters.fields().is_empty() { Default::default() } else { ipc_schema(parameters)? },
    };
    Ok(result.as_any().encode_to_vec())
}

/// A schema as an encapsulated IPC message, as Flight SQL carries schemas.
fn ipc_schema(schema: &SchemaRef) -> Result<bytes::Bytes> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| Error::Internal(format!("encoding a schema failed: {e}")))?;
    Ok(message.0)
}

/// Decodes an action body holding an `Any` of `M`.
fn unpack<M: ProstMessageExt>(body: &[u8]) -> Result<M> {
    let bad = |why: String| Error::BadAction(format!("the action body is not a {}: {why}", M::type_url()));
    let any = Any::decode(body).map_err(|e| bad(e.to_string()))?;
    any.unpack::<M>().map_err(|e| bad(e.to_string()))?.ok_or_else(|| bad(format!("it holds {}", any.type_url)))
}

/// Why a Flight SQL command is not answered, for the error.
fn unsupported(type_url: &str) -> &'static str {
    match type_url.strip_prefix(TYPE_URL_PREFIX) {
        Some("CommandStatementSubstraitPlan") => "Flight SQL Substrait plans are not supported; send SQL text",
        Some("CommandStatementUpdate") | Some("CommandPreparedStatementUpdate") => {
            "Flight SQL updates are not supported: products change only by publishing a new version (DoPut on its path, or Flight SQL ingest)"
        }
        _ => "this Flight SQL command is not supported; send a statement, a prepared statement or a metadata command",
    }
}
