//! Errors of every call through the access core, and the one table that maps them to gRPC
//! status codes (every front answers in gRPC codes or their HTTP equivalents).
//!
//! Client faults (bad input, unknown names, refused tickets) are logged at `info`, server faults
//! at `warn` with their full detail; the client gets a message that says what to fix and, for
//! server faults, a request id to quote, never a server path or a stack trace.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tonic::{Code, Status};

use crate::text::clip_message;
use crate::{audit, auth, catalog, governance, query, ticket};

/// Result with the access core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Finding the product failed.
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    /// The read request is invalid.
    #[error(transparent)]
    Query(#[from] query::Error),
    /// The ticket was refused.
    #[error(transparent)]
    Ticket(#[from] ticket::Error),
    /// The ticket names a contract version the product no longer serves.
    #[error(
        "the ticket was issued for contract {ticket} of `{product}`, which now serves {current}; call GetFlightInfo again"
    )]
    StaleTicket {
        /// `domain/product`.
        product: String,
        /// Contract version in the ticket.
        ticket: String,
        /// Contract version served now.
        current: String,
    },
    /// A descriptor of a kind or shape the gateway does not take.
    #[error("{0}")]
    BadDescriptor(String),
    /// An action's name or body is invalid.
    #[error("{0}")]
    BadAction(String),
    /// A request option (a header) has a value the gateway does not take.
    #[error("{0}")]
    BadOption(String),
    /// The call is not something the gateway offers; the text says what is not supported and
    /// why (or what to use instead).
    #[error("{0}")]
    Unsupported(&'static str),
    /// Running a plan failed; classified by its root cause.
    #[error("reading `{product}` failed: {source}")]
    Execution {
        /// `domain/product`.
        product: String,
        /// What DataFusion reported.
        source: Box<DataFusionError>,
    },
    /// The caller is not authenticated.
    #[error(transparent)]
    Auth(#[from] auth::Error),
    /// Policy denies the read.
    #[error("you may not read `{product}`; ask its owning team for access")]
    Denied {
        /// `domain/product`.
        product: String,
        /// Policies that denied (for the log and the audit record, not the caller).
        policy_ids: Vec<String>,
    },
    /// The ticket belongs to another principal.
    #[error("this ticket was issued to another principal; call GetFlightInfo with your own credentials")]
    ForeignTicket,
    /// The audit log cannot record the call.
    #[error(transparent)]
    Audit(#[from] audit::Error),
    /// Governance rules could not be applied; the call fails closed.
    #[error(transparent)]
    Governance(#[from] governance::Error),
    /// The gateway is stopping; the read was ended.
    #[error("the gateway is shutting down; read again (from another replica, or after the restart)")]
    ShuttingDown,
    /// The mesh's governance files cannot be put in force at startup.
    #[error("the governance files cannot be put in force: {0}")]
    GovernanceRefused(String),
    /// A SQL statement that is not a query.
    #[error(
        "only queries (SELECT ...) are served: meshgate's output ports are read-only; a domain publishes data through its own pipeline into the product's storage"
    )]
    NotAQuery,
    /// Every read slot is taken (admission control).
    #[error(
        "the gateway is serving its limit of {limit} concurrent reads (--max-concurrent-reads); retry shortly, or read from another replica"
    )]
    Busy {
        /// The configured limit.
        limit: usize,
    },
    /// The ticket asks for a shard of a read this gateway serves whole.
    #[error(
        "the ticket asks for shard {index} of {count}, which this read cannot be split into; call GetFlightInfo and read the endpoints it returns"
    )]
    Shard {
        /// Shard asked for (0-based).
        index: u32,
        /// Number of shards asked for.
        count: u32,
    },
    /// The read cannot be split into shards: its storage is not files and its contract
    /// declares no key to split its rows by. Holds `domain/product`.
    #[error(
        "`{0}` cannot be split into shards: it is not stored as files (Parquet, CSV, JSON, Arrow IPC) and its contract declares no primary key (`primaryKey: true` on its key columns) to split its rows by; read it as one stream"
    )]
    Unshardable(String),
    /// A file a shard was assigned changed or left the listing since `GetFlightInfo`.
    #[error(
        "the data of `{product}` changed since this shard was assigned (a file it reads was replaced or removed); call GetFlightInfo again"
    )]
    ShardChanged {
        /// `domain/product`.
        product: String,
    },
    /// The data is older than the read's `max_staleness` allows (or its age is not measured);
    /// the text names the product, its age and its SLA.
    #[error("{0}")]
    Stale(String),
    /// A SQL statement calls a table function.
    #[error(
        "`{0}(...)` is a table function: statements read the products of the mesh only (catalog `mesh`), not files or generated tables; a domain publishes data through its own pipeline into its product's storage"
    )]
    TableFunction(String),
    /// A SQL statement's text is longer than accepted.
    #[error("the statement is {bytes} bytes long; at most {limit} bytes of SQL are accepted")]
    StatementTooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A SQL statement ran past its time limit.
    #[error(
        "the statement ran past the gateway's limit of {} s (--statement-timeout); add filters or a LIMIT, or ask the operators to raise the limit", limit.as_secs_f64()
    )]
    Deadline {
        /// The limit.
        limit: std::time::Duration,
    },
    /// A SQL statement returns more rows than allowed.
    #[error(
        "the statement returns more than {limit} rows, the gateway's limit (--statement-max-rows); add filters, aggregate or add a LIMIT, or read the product whole over plain Flight"
    )]
    TooManyRows {
        /// The limit.
        limit: u64,
    },
    /// A statement's parameters are missing, too many, or of the wrong type.
    #[error("{0}")]
    Parameters(String),
    /// A read pins a data version of a product whose storage keeps none.
    #[error(
        "`{product}` keeps no versions of its data (its storage is `{adapter}`); leave out the pinned version to read the current data"
    )]
    NotVersioned {
        /// `domain/product`.
        product: String,
        /// The storage kind.
        adapter: String,
    },
    /// The pinned data version does not exist (or is no longer kept).
    #[error("`{product}`: {message}; the `describe` action lists the versions kept")]
    NoVersion {
        /// `domain/product`.
        product: String,
        /// What was not found.
        message: String,
    },
    /// A publish was refused or failed; nothing was written.
    #[error(transparent)]
    Publish(#[from] super::publish::PublishError),
    /// A fault of the gateway itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps a DataFusion error raised while planning or reading `product`; one of the core's
    /// own errors raised inside the engine (a limit) comes back as itself.
    pub fn execution(product: impl Into<String>, e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(core) => *core,
                Err(other) => {
                    Self::Execution { product: product.into(), source: Box::new(DataFusionError::External(other)) }
                }
            },
            e => Self::Execution { product: product.into(), source: Box::new(e) },
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let status = to_status(&e);
        let detail = clip_message(e.to_string());
        let reply = clip_message(status.message().to_string());
        if client_fault(status.code()) {
            tracing::info!(code = ?status.code(), error = %detail, "request refused");
        } else {
            // The reply of an internal fault carries the error id the log line is found by.
            tracing::warn!(code = ?status.code(), error = %detail, %reply, "request failed");
        }
        Status::new(status.code(), reply)
    }
}

fn client_fault(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::NotFound | Code::Unauthenticated | Code::PermissionDenied | Code::Unimplemented
    )
}

/// The mapping table. No catch-all arm: a new variant must be placed here on purpose. Pure: the
/// audit log takes a failure's code from it without logging the failure twice.
pub(crate) fn to_status(e: &Error) -> Status {
    use catalog::Error as C;
    use query::Error as Q;
    use ticket::Error as T;
    let msg = e.to_string();
    match e {
        Error::Catalog(c) => match c {
            C::InvalidName { .. } => Status::invalid_argument(msg),
            C::NoDomain { .. } | C::NoProduct { .. } | C::NoPort { .. } => Status::not_found(msg),
            C::Unavailable { .. } => Status::unavailable(msg),
            C::MeshUnreadable(_) => internal("the mesh folder cannot be read"),
        },
        Error::Query(q) => match q {
            Q::BadPath(_)
            | Q::BadVersion(_)
            | Q::NotUtf8(_)
            | Q::BadQuery(_)
            | Q::BadProduct(_)
            | Q::UnknownColumn { .. }
            | Q::BadColumns(_)
            | Q::BadFilter { .. }
            | Q::FilterNotAllowed(_)
            | Q::FilterNotBoolean(_)
            | Q::TooLarge { .. }
            | Q::Unreadable { .. } => Status::invalid_argument(msg),
            Q::Plan(df) => datafusion_status("the query", df),
        },
        Error::Ticket(t) => match t {
            T::Malformed | T::UnsupportedVersion(_) => Status::invalid_argument(msg),
            T::BadSignature | T::Expired => Status::unauthenticated(msg),
            T::WeakKey(_) => internal("the ticket key is misconfigured"),
        },
        Error::StaleTicket { .. } | Error::ShardChanged { .. } | Error::Stale(_) => Status::failed_precondition(msg),
        Error::Unshardable(_) | Error::NotVersioned { .. } => Status::invalid_argument(msg),
        Error::NoVersion { .. } => Status::not_found(msg),
        Error::BadDescriptor(_) | Error::BadAction(_) | Error::BadOption(_) => Status::invalid_argument(msg),
        Error::Unsupported(_) => Status::new(Code::Unimplemented, msg),
        Error::Execution { product, source } if product.contains('/') => {
            datafusion_status(&format!("`{product}`"), source)
        }
        Error::Execution { product, source } => datafusion_status(product, source),
        Error::Auth(a) => Status::from(a.clone()),
        Error::Denied { .. } | Error::ForeignTicket => Status::permission_denied(msg),
        Error::Audit(a) => match a {
            audit::Error::Unavailable => Status::unavailable(msg),
            audit::Error::Broken { .. } | audit::Error::Start(_) => internal("the audit log is not usable"),
        },
        Error::Governance(_) => internal("governance rules could not be applied"),
        Error::ShuttingDown => Status::unavailable(msg),
        Error::GovernanceRefused(_) => internal("the governance files cannot be loaded"),
        Error::NotAQuery => Status::invalid_argument(msg),
        Error::Busy { .. } => Status::resource_exhausted(msg),
        Error::Shard { .. } | Error::Parameters(_) | Error::StatementTooLong { .. } | Error::TableFunction(_) => {
            Status::invalid_argument(msg)
        }
        Error::Deadline { .. } => Status::deadline_exceeded(msg),
        Error::TooManyRows { .. } => Status::resource_exhausted(msg),
        Error::Publish(p) => {
            use super::publish::PublishError as P;
            match p {
                P::NotPublishable { .. } => Status::failed_precondition(msg),
                P::Denied { .. } => Status::permission_denied(msg),
                P::Schema { .. } | P::Required { .. } | P::Rules { .. } | P::Decode(_) => Status::invalid_argument(msg),
                P::TooLarge { .. } => Status::resource_exhausted(msg),
                P::Commit { .. } => Status::unavailable(msg),
            }
        }
        Error::Internal(what) => internal(what),
    }
}

/// Classifies a DataFusion error by its root cause. Storage faults become `UNAVAILABLE` without
/// their detail (it names server paths); faults caused by the request keep their message.
fn datafusion_status(what: &str, e: &DataFusionError) -> Status {
    let root = e.find_root();
    let unavailable = || {
        Status::unavailable(format!(
            "the data of {what} cannot be read right now; try again later, and tell the owning team if it persists"
        ))
    };
    match root {
        DataFusionError::External(inner) => match meshgate_adapters::Error::find_in(inner.as_ref()) {
            Some(meshgate_adapters::Error::NotPublished) => Status::unavailable(format!(
                "{what} has no published version yet; its owning team publishes one (DoPut on its path, or Flight SQL ingest)"
            )),
            Some(_) => unavailable(),
            None => internal("an external component failed"),
        },
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) | DataFusionError::ParquetError(_) => {
            unavailable()
        }
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::IoError(..) | ArrowError::ExternalError(_) | ArrowError::ParquetError(_) => unavailable(),
            ArrowError::MemoryError(_) => Status::resource_exhausted(
                "the query needs more memory than the gateway allows; add a filter or a limit",
            ),
            other => Status::invalid_argument(format!("{what} failed: {other}")),
        },
        DataFusionError::ResourcesExhausted(m) => Status::resource_exhausted(format!(
            "the query needs more memory than the gateway allows ({m}); add a filter or a limit"
        )),
        DataFusionError::Plan(m) | DataFusionError::NotImplemented(m) => {
            Status::invalid_argument(format!("{what} cannot be planned: {m}"))
        }
        DataFusionError::SchemaError(s, _) => Status::invalid_argument(format!("{what} cannot be planned: {s}")),
        DataFusionError::SQL(p, _) => Status::invalid_argument(format!("{what} does not parse: {p}")),
        DataFusionError::Internal(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Context(..)
        | DataFusionError::Substrait(_)
        | DataFusionError::Diagnostic(..)
        | DataFusionError::Collection(_)
        | DataFusionError::Shared(_)
        | DataFusionError::Ffi(_) => internal("the query engine failed"),
    }
}

/// An `INTERNAL` status carrying only an error id; the detail is in the gateway's log line that
/// quotes the same reply.
fn internal(what: &str) -> Status {
    let id = uuid::Uuid::new_v4();
    Status::internal(format!("{what}; quote error id {id} to the gateway operators"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: Error) -> Code {
        Status::from(e).code()
    }

    /// The table, row by row.
    #[test]
    fn status_table() {
        let c = |e: catalog::Error| code(Error::Catalog(e));
        assert_eq!(c(catalog::Error::InvalidName { what: "domain", value: "..".into() }), Code::InvalidArgument);
        assert_eq!(c(catalog::Error::NoDomain { domain: "x".into(), known: "y".into() }), Code::NotFound);
        assert_eq!(
            c(catalog::Error::NoProduct { domain: "x".into(), product: "p".into(), known: "y".into() }),
            Code::NotFound
        );
        assert_eq!(
            c(catalog::Error::NoPort { product: "x".into(), port: "p".into(), known: "y".into() }),
            Code::NotFound
        );
        assert_eq!(c(catalog::Error::Unavailable { product: "x".into(), reason: "r".into() }), Code::Unavailable);
        assert_eq!(c(catalog::Error::MeshUnreadable("x".into())), Code::Internal);
        let q = |e: query::Error| code(Error::Query(e));
        assert_eq!(q(query::Error::BadPath(1)), Code::InvalidArgument);
        assert_eq!(q(query::Error::BadVersion("x".into())), Code::InvalidArgument);
        assert_eq!(q(query::Error::BadQuery("x".into())), Code::InvalidArgument);
        assert_eq!(q(query::Error::FilterNotAllowed("subqueries")), Code::InvalidArgument);
        assert_eq!(q(query::Error::FilterNotBoolean(arrow::datatypes::DataType::Int64)), Code::InvalidArgument);
        let too_large = query::Error::TooLarge { what: "f", unit: "bytes", found: 2, limit: 1, hint: "h" };
        assert_eq!(q(too_large), Code::InvalidArgument);
        assert_eq!(q(query::Error::Unreadable { what: "f", message: "m".into() }), Code::InvalidArgument);
        assert_eq!(q(query::Error::Plan(Box::new(DataFusionError::Plan("x".into())))), Code::InvalidArgument);
        let t = |e: ticket::Error| code(Error::Ticket(e));
        assert_eq!(t(ticket::Error::Malformed), Code::InvalidArgument);
        assert_eq!(t(ticket::Error::BadSignature), Code::Unauthenticated);
        assert_eq!(t(ticket::Error::Expired), Code::Unauthenticated);
        assert_eq!(t(ticket::Error::UnsupportedVersion(9)), Code::InvalidArgument);
        assert_eq!(
            code(Error::StaleTicket { product: "a".into(), ticket: "1".into(), current: "2".into() }),
            Code::FailedPrecondition
        );
        assert_eq!(code(Error::BadDescriptor("x".into())), Code::InvalidArgument);
        assert_eq!(code(Error::BadOption("x".into())), Code::InvalidArgument);
        assert_eq!(code(Error::Unsupported("DoPut is not supported")), Code::Unimplemented);
        assert_eq!(code(Error::Internal("x".into())), Code::Internal);
        assert_eq!(code(Error::Auth(auth::Error::Expired)), Code::Unauthenticated);
        assert_eq!(code(Error::Denied { product: "a/b".into(), policy_ids: vec![] }), Code::PermissionDenied);
        assert_eq!(code(Error::ForeignTicket), Code::PermissionDenied);
        assert_eq!(code(Error::Audit(audit::Error::Unavailable)), Code::Unavailable);
        assert_eq!(code(Error::ShuttingDown), Code::Unavailable);
        assert_eq!(code(Error::Busy { limit: 1 }), Code::ResourceExhausted);
        assert_eq!(code(Error::NotAQuery), Code::InvalidArgument);
        assert_eq!(code(Error::GovernanceRefused("x".into())), Code::Internal);
        assert_eq!(code(Error::Shard { index: 1, count: 2 }), Code::InvalidArgument);
        assert_eq!(code(Error::Unshardable("x".into())), Code::InvalidArgument);
        assert_eq!(code(Error::NotVersioned { product: "a/b".into(), adapter: "files".into() }), Code::InvalidArgument);
        assert_eq!(code(Error::NoVersion { product: "a/b".into(), message: "x".into() }), Code::NotFound);
        assert_eq!(code(Error::ShardChanged { product: "a/b".into() }), Code::FailedPrecondition);
        assert_eq!(code(Error::Stale("x".into())), Code::FailedPrecondition);
        assert_eq!(code(Error::Parameters("x".into())), Code::InvalidArgument);
        assert_eq!(code(Error::StatementTooLong { bytes: 2, limit: 1 }), Code::InvalidArgument);
        assert_eq!(code(Error::TableFunction("read_csv".into())), Code::InvalidArgument);
        assert_eq!(code(Error::Deadline { limit: std::time::Duration::from_secs(1) }), Code::DeadlineExceeded);
        assert_eq!(code(Error::TooManyRows { limit: 1 }), Code::ResourceExhausted);
        let raised = Error::execution("a/b", DataFusionError::External(Box::new(Error::TooManyRows { limit: 1 })));
        assert!(matches!(raised, Error::TooManyRows { limit: 1 }), "the core's own error comes back as itself");
        let g = governance::Error::Config { file: "x".into(), message: "y".into() };
        assert_eq!(code(Error::Governance(g)), Code::Internal);
        use super::super::publish::PublishError as P;
        let p = |e: P| code(Error::Publish(e));
        assert_eq!(p(P::NotPublishable { product: "a/b".into(), kind: "files" }), Code::FailedPrecondition);
        assert_eq!(p(P::Denied { product: "a/b".into(), policy_ids: vec![] }), Code::PermissionDenied);
        assert_eq!(p(P::Schema { product: "a/b".into(), message: "m".into() }), Code::InvalidArgument);
        let required = P::Required { product: "a/b".into(), column: "c".into(), count: 1, rows: "0".into() };
        assert_eq!(p(required), Code::InvalidArgument);
        assert_eq!(p(P::Rules { product: "a/b".into(), failures: "f".into() }), Code::InvalidArgument);
        assert_eq!(p(P::Decode("x".into())), Code::InvalidArgument);
        assert_eq!(p(P::TooLarge { limit: 1 }), Code::ResourceExhausted);
        assert_eq!(p(P::Commit { product: "a/b".into(), reason: "r".into() }), Code::Unavailable);
    }

    #[test]
    fn execution_errors_by_root_cause() {
        let x = |e: DataFusionError| code(Error::execution("sales/orders", e));
        let gone = meshgate_adapters::Error::Unavailable("location `data/` holds no files".into()).into_datafusion();
        assert_eq!(x(gone.context("scanning")), Code::Unavailable);
        let empty =
            Status::from(Error::execution("sales/targets", meshgate_adapters::Error::NotPublished.into_datafusion()));
        assert_eq!(empty.code(), Code::Unavailable);
        assert!(empty.message().contains("`sales/targets` has no published version yet"), "{}", empty.message());
        let io = DataFusionError::IoError(std::io::Error::new(std::io::ErrorKind::NotFound, "/srv/secret/path"));
        let s = Status::from(Error::execution("sales/orders", io));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("/srv"), "leaked a path: {}", s.message());
        assert_eq!(x(DataFusionError::ResourcesExhausted("m".into())), Code::ResourceExhausted);
        assert_eq!(x(DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None)), Code::InvalidArgument);
        let s = Status::from(Error::execution("a/b", DataFusionError::Internal("/srv/x panicked".into())));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("/srv"));
    }
}
