//! The Arrow Flight front.
//!
//! ```text
//!  client                         meshgate                                   adapter
//!    │ GetFlightInfo(PATH|CMD)       │                                          │
//!    │──────────────────────────────►│ resolve product/port in catalog snapshot │
//!    │                               │ plan (contract columns, filter, limit)   │
//!    │ FlightInfo{schema, endpoints} │ sign ticket (HMAC, expiry)               │
//!    │◄──────────────────────────────│                                          │
//!    │ DoGet(ticket)                 │                                          │
//!    │──────────────────────────────►│ verify ticket, re-plan, execute_stream ─►│ scan()
//!    │ FlightData (schema, batches…) │◄──────────── RecordBatch stream ─────────│
//!    │◄──────────────────────────────│ FlightDataEncoder (never collects)       │
//! ```
//!
//! - [`service`]: the `FlightService` implementation; each handler delegates.
//! - [`actions`]: `describe`, `health`, `reload`.
//! - [`error`]: errors and the table mapping them to gRPC codes.
//! - [`wire`]: cutting batches into Flight messages by the bytes their rows occupy.

pub mod actions;
pub mod error;
pub mod service;
pub mod wire;

pub use error::{Error, Result};
pub use service::MeshFlightService;
