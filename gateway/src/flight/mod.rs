//! The Arrow Flight front.
//!
//! ```text
//!  client                         meshgate                                   adapter
//!    │ GetFlightInfo(PATH|CMD)       │                                          │
//!    │──────────────────────────────►│ core.authorize: resolve in mesh.<domain>,│
//!    │                               │ governed table, plan (columns, filter)   │
//!    │ FlightInfo{schema, endpoints} │ core.ticket: sign (HMAC, expiry, subject)│
//!    │◄──────────────────────────────│                                          │
//!    │ DoGet(ticket)                 │                                          │
//!    │──────────────────────────────►│ core.read_ticket: verify, re-plan, guard │
//!    │                               │ check, execute on its own runtime ──────►│ scan()
//!    │ FlightData (schema, batches…) │◄──────────── RecordBatch stream ─────────│
//!    │◄──────────────────────────────│ wire::encode (never collects)            │
//! ```
//!
//! - [`service`]: the `FlightService` implementation; each handler decodes, asks the access
//!   core ([`crate::access`]) and encodes.
//! - [`actions`]: `describe`, `health`, `reload`.
//! - [`nodes`]: the gateway nodes endpoints name (`--advertise`, `--nodes`).
//! - `sql`: Flight SQL commands and actions (statements, prepared statements).
//! - `session`: Flight SQL sessions (current catalog and schema, view types) in a signed
//!   cookie.
//! - `sql_meta`: Flight SQL metadata commands (server info, catalogs, tables, types, keys).
//! - [`publish`]: the producer path: `DoPut` on a product's PATH and Flight SQL ingest.
//! - [`wire`]: cutting batches into Flight messages by the bytes their rows occupy.
//! - [`doget`]: DoGet answered below tonic, writing message bodies to the connection uncopied.
//!
//! Errors are the core's ([`crate::access::Error`]), mapped to gRPC codes by its table.

pub mod actions;
pub mod doget;
pub mod nodes;
pub mod publish;
pub mod service;
mod session;
mod sql;
mod sql_meta;
pub mod wire;

pub use service::MeshFlightService;
