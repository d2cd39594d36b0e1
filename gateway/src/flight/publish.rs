//! The producer path on the Flight front: `DoPut` on a product's PATH, and Flight SQL bulk
//! ingest (`CommandStatementIngest`, what ADBC's `adbc_ingest` sends). Both decode the stream
//! and hand it to [`AccessCore::publish`], which decides, checks, commits and audits.
//!
//! - PATH `["<domain>", "<product>"]` (optionally `"<port>"`), mode in the
//!   [`MODE_HEADER`] header (`append`, the default, or `replace`). The `PutResult` metadata is
//!   the published version as JSON (`{"product", "port", "version", "mode", "rows", ...}`).
//! - Ingest: catalog `mesh` (or none), schema = domain, table = product (`<product>__<port>`
//!   for another port), as Flight SQL lists them. `if_exists: append | replace` choose the mode;
//!   `fail` (the default, ADBC's `create`) publishes only to a product with no version yet.
//!   Tables are never created by ingest: a product is declared by its contract.
//!   The result is a `DoPutUpdateResult` with the rows written.

use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::CommandStatementIngest;
use arrow_flight::sql::DoPutUpdateResult;
use arrow_flight::sql::TableExistsOption;
use arrow_flight::{FlightData, FlightDescriptor};
use futures::{Stream, StreamExt, TryStreamExt};
use meshgate_adapters::WriteMode;
use prost::Message;

use crate::access::{AccessCore, CATALOG, Call, Error, Incoming, Result};
use crate::query::ReadSpec;

/// The `DoPut` header naming how a publish changes the product: `append` (default) or
/// `replace`.
pub const MODE_HEADER: &str = "x-meshgate-mode";

/// The mode a `DoPut` asks for in [`MODE_HEADER`].
pub(crate) fn mode(value: Option<&str>) -> Result<WriteMode> {
    match value.map(str::trim) {
        None | Some("append") => Ok(WriteMode::Append),
        Some("replace") => Ok(WriteMode::Replace),
        Some(other) => Err(Error::BadOption(format!(
            "{MODE_HEADER} is `{}`; use `append` (add rows to the current version) or `replace` (the rows sent are the new version)",
            crate::text::clip(other)
        ))),
    }
}

/// The batches of a `DoPut` stream whose first message (descriptor and schema) was read.
pub(crate) fn incoming(
    first: FlightData,
    rest: impl Stream<Item = Result<FlightData, tonic::Status>> + Send + 'static,
) -> Incoming {
    let data = futures::stream::once(async { Ok(first) }).chain(rest).map_err(|e| FlightError::Tonic(Box::new(e)));
    FlightRecordBatchStream::new_from_flight_data(data).map_err(|e| e.to_string()).boxed()
}

/// Publishes a `DoPut` on a PATH descriptor; returns the `PutResult` metadata (JSON).
pub(crate) async fn path(
    core: &Arc<AccessCore>,
    call: &Call,
    descriptor: &FlightDescriptor,
    mode: WriteMode,
    batches: Incoming,
) -> Result<Vec<u8>> {
    let spec = ReadSpec::from_path(&descriptor.path)?;
    let published = core.publish(call, (spec.domain, spec.product, spec.port), mode, batches).await?;
    serde_json::to_vec(&published).map_err(|e| Error::Internal(format!("encoding the publish result: {e}")))
}

/// Publishes a Flight SQL bulk ingest; returns the `PutResult` metadata (`DoPutUpdateResult`).
pub(crate) async fn ingest(
    core: &Arc<AccessCore>,
    call: &Call,
    command: CommandStatementIngest,
    batches: Incoming,
) -> Result<Vec<u8>> {
    if command.temporary {
        return Err(Error::BadDescriptor(
            "temporary tables are not served: ingest publishes a version of a product of the mesh".into(),
        ));
    }
    if command.transaction_id.is_some() {
        return Err(Error::BadDescriptor(
            "transactions are not served: each ingest is committed as one version on its own".into(),
        ));
    }
    if let Some(catalog) = command.catalog.as_deref().filter(|c| !c.is_empty() && *c != CATALOG) {
        return Err(Error::BadDescriptor(format!(
            "catalog `{}` does not exist; products are in catalog `{CATALOG}`",
            crate::text::clip(catalog)
        )));
    }
    let Some(domain) = command.schema.clone().filter(|s| !s.is_empty()) else {
        return Err(Error::BadDescriptor(
            "name the product's domain as the schema of the target table (`mesh.<domain>.<product>`)".into(),
        ));
    };
    let options = command.table_definition_options.unwrap_or_default();
    let (product, port) = core.split_table(&domain, &command.table);
    let mode = match options.if_exists() {
        TableExistsOption::Append => WriteMode::Append,
        TableExistsOption::Replace => WriteMode::Replace,
        TableExistsOption::Fail | TableExistsOption::Unspecified => {
            if core.has_version(&call.principal, (&domain, &product, port.as_deref())).await {
                return Err(Error::BadDescriptor(format!(
                    "`{domain}.{}` already has a published version; ingest with mode `append` or `replace`",
                    command.table
                )));
            }
            WriteMode::Append
        }
    };
    let published = core.publish(call, (domain, product, port), mode, batches).await?;
    let record_count = i64::try_from(published.rows).unwrap_or(i64::MAX);
    Ok(DoPutUpdateResult { record_count }.encode_to_vec())
}
