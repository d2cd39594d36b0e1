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
//! to the caller, so any replica can execute it and closing it releases nothing.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, Command, ProstMessageExt,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use futures::StreamExt;
use prost::Message;

use super::sql_meta;
use crate::access::{AccessCore, AuthorizedPlan, Call, Error, ReadRequest, ReadStream, Result, Shard};

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
    }))
}

/// Plans the statement a Flight SQL command asks for.
pub(crate) async fn plan(core: &Arc<AccessCore>, call: &Call, command: Command) -> Result<AuthorizedPlan> {
    match command {
        Command::CommandStatementQuery(q) => core.authorize(call, ReadRequest::Sql(q.query)).await,
        Command::CommandPreparedStatementQuery(p) => core.replan(call, &p.prepared_statement_handle).await,
        other => Err(Error::Unsupported(unsupported(other.type_url()))),
    }
}

/// The Flight SQL actions this front answers.
const ACTIONS: &[&str] = &["CreatePreparedStatement", "ClosePreparedStatement"];

/// Whether `name` is one of the Flight SQL actions this front answers.
pub(crate) fn is_action(name: &str) -> bool {
    ACTIONS.contains(&name)
}

/// Runs the Flight SQL action `name`; returns the result body.
pub(crate) async fn action(core: &Arc<AccessCore>, call: &Call, name: &str, body: &[u8]) -> Result<Vec<u8>> {
    match name {
        "CreatePreparedStatement" => create_prepared(core, call, body).await,
        "ClosePreparedStatement" => unpack::<ActionClosePreparedStatementRequest>(body).map(|_| Vec::new()),
        other => Err(Error::BadAction(format!("no Flight SQL action `{}`", crate::text::clip(other)))),
    }
}

async fn create_prepared(core: &Arc<AccessCore>, call: &Call, body: &[u8]) -> Result<Vec<u8>> {
    let request: ActionCreatePreparedStatementRequest = unpack(body)?;
    let plan = core.authorize(call, ReadRequest::Sql(request.query)).await?;
    let handle = core.ticket(&plan, Shard::WHOLE).ticket;
    let result = ActionCreatePreparedStatementResult {
        prepared_statement_handle: handle.into(),
        dataset_schema: ipc_schema(&plan)?,
        parameter_schema: Default::default(),
    };
    Ok(result.as_any().encode_to_vec())
}

/// A plan's schema as an encapsulated IPC message, as Flight SQL carries schemas.
fn ipc_schema(plan: &AuthorizedPlan) -> Result<bytes::Bytes> {
    let message: IpcMessage = SchemaAsIpc::new(plan.schema(), &IpcWriteOptions::default())
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
        Some("CommandStatementUpdate") | Some("CommandPreparedStatementUpdate") | Some("CommandStatementIngest") => {
            "Flight SQL updates and ingest are not supported: meshgate serves read-only output ports"
        }
        _ => "this Flight SQL command is not supported; send a statement, a prepared statement or a metadata command",
    }
}
