//! Flight SQL commands on the Flight front: decoded here, answered by the access core.
//!
//! A CMD descriptor whose bytes are a protobuf `Any` with a Flight SQL type URL is a Flight SQL
//! command; anything else stays a meshgate JSON query. Statements are planned by the core like
//! every other read (catalog `mesh`, the caller's governed tables) and their `FlightInfo`
//! carries the same signed tickets, so `DoGet` has one path.
//!
//! Prepared statements are stateless: the handle is a ticket of the statement, signed and bound
//! to the caller, so any replica can execute it and closing it releases nothing.

use std::sync::Arc;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, Command, ProstMessageExt,
};
use arrow_flight::{FlightDescriptor, IpcMessage, SchemaAsIpc};
use prost::Message;

use crate::access::{AccessCore, AuthorizedPlan, Call, Error, ReadRequest, Result, Shard};

/// Prefix of every Flight SQL message's type URL.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// The Flight SQL command a descriptor holds, if it holds one.
pub(crate) fn command(d: &FlightDescriptor) -> Option<Result<Command>> {
    let any = Any::decode(d.cmd.as_ref()).ok().filter(|a| a.type_url.starts_with(TYPE_URL_PREFIX))?;
    Some(Command::try_from(any).map_err(|e| Error::BadDescriptor(format!("the Flight SQL command is invalid: {e}"))))
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
        _ => {
            "this Flight SQL command is not answered yet: statements and prepared statements are; \
             catalog metadata (GetTables, GetSqlInfo, ...) is being added"
        }
    }
}
