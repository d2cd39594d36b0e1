//! meshgate: the output port of a data mesh, over Arrow Flight.
//!
//! Domain teams describe each data product with an ODPS manifest and one ODCS contract per
//! output port; meshgate loads them into a [`catalog`], opens each port's storage through an
//! adapter (`meshgate-adapters`), and serves every product over Arrow Flight: discoverable
//! (`ListFlights`, `describe`), addressable (`["<domain>", "<product>"]`), self-describing (the
//! contract travels in the Arrow schema's metadata) and streamed without collecting.
//!
//! Parts:
//! - [`access`]: the access core below every front: one snapshot of products and rules,
//!   discovery, decisions, plans over governed tables, tickets, execution and audit.
//! - [`config`]: settings (flags and `MESHGATE_*` variables).
//! - [`auth`]: who is calling (JWT, Basic via Handshake), as a tower layer on every call.
//! - [`governance`]: Cedar policies, masks, row filters and the governed table.
//! - [`audit`]: the hash-chained audit log.
//! - [`lineage`]: OpenLineage run events of every read and publish (HTTP, JSON lines).
//! - [`catalog`]: manifests, validation, reload on change.
//! - [`capped`]: functions that allocate by argument, capped by the memory limit.
//! - [`query`]: read requests (path, JSON query, ticket) and their DataFusion plans.
//! - [`ticket`]: HMAC-signed stateless tickets.
//! - [`flight`]: the Flight front (decode → core → encode) and its wire encoding.
//! - [`server`]: bind, serve, TLS, graceful shutdown.
//! - [`http`]: the HTTP side port: probes, Prometheus metrics, the catalog's JSON API and pages.
//! - [`metrics`]: what is counted (calls, rows and bytes served, caches, health) and the RPC
//!   layer that counts, times and traces every call.
//! - [`telemetry`]: logs, and OpenTelemetry export of each call's span over OTLP.
//! - [`text`]: bounding values echoed in errors and logs.
//! - [`net`]: socket options on accepted connections (`TCP_NODELAY`, keep-alive) and the TLS
//!   crypto provider.
//! - [`sample`]: the bundled sample mesh and its data generator.
//!
//! The design is in `docs/architecture.md`.

pub mod access;
pub mod audit;
pub mod auth;
pub mod capped;
pub mod catalog;
pub mod config;
pub mod flight;
pub mod governance;
pub mod http;
pub mod lineage;
pub mod metrics;
pub mod net;
pub mod quality;
pub mod query;
pub mod sample;
pub mod server;
pub mod telemetry;
pub mod text;
pub mod ticket;

pub use config::GatewayConfig;
pub use server::Gateway;
