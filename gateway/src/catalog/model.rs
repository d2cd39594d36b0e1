//! What the catalog holds once manifests are loaded and validated.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::execution::session_state::SessionState;
use meshgate_adapters::{Binding, Health, StorageHandle};
use serde::Serialize;

use super::manifest::Property;

/// One validation problem: which file, which field, what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// File, relative to the mesh folder.
    pub file: String,
    /// Field inside the file (`outputPorts[0].contractId`), empty for the whole file.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.file, self.field, self.message)
        }
    }
}

/// A loaded, servable product.
#[derive(Debug)]
pub struct Product {
    /// Owning domain (the folder name).
    pub domain: String,
    /// Product name inside the domain (the folder name).
    pub name: String,
    /// ODPS `id`.
    pub id: String,
    /// ODPS `name`, the human title.
    pub title: String,
    /// ODPS `status`.
    pub status: String,
    /// Description text.
    pub description: String,
    /// Owning team's name.
    pub owner: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Sensitivity for policies (`meshgate.sensitivity`: public, internal, confidential,
    /// restricted; default internal).
    pub sensitivity: String,
    /// Contract ids of the product's input ports (its upstream), in manifest order.
    pub inputs: Vec<String>,
    /// Output ports, in manifest order.
    pub ports: Vec<Arc<Port>>,
    /// Index into `ports` of the port served when a path names none.
    pub default_port: usize,
    /// The ODPS document as JSON, for `describe`.
    pub document: serde_json::Value,
    /// Digest of the manifests it was loaded from: a reload re-opens the product only when it
    /// changes (or when the product was refused).
    pub fingerprint: [u8; 32],
}

impl Product {
    /// `domain/name`, the product's address in messages.
    pub fn address(&self) -> String {
        format!("{}/{}", self.domain, self.name)
    }
}

/// One output port of a product: its contract, binding and opened table.
#[derive(Debug)]
pub struct Port {
    /// Port name.
    pub name: String,
    /// Port version, if the manifest gives one.
    pub version: Option<String>,
    /// The contract describing the port.
    pub contract: Contract,
    /// Where the data is.
    pub binding: Binding,
    /// The adapter's table (all data columns; the contract's are selected when planning).
    pub table: Arc<dyn TableProvider>,
    /// Served schema: the contract's columns in contract order, with contract metadata.
    pub schema: SchemaRef,
    /// Row count of the whole port, -1 when not known without reading the data.
    pub total_records: i64,
    /// Size in bytes of the whole port in Arrow, -1 when not known.
    pub total_bytes: i64,
    /// The storage's health probe and lifecycle; closed when the port is dropped.
    pub storage: Arc<dyn StorageHandle>,
    /// The storage's versions, where it keeps them (Delta): pinned reads, history, publishing.
    pub versions: Option<Arc<dyn meshgate_adapters::Versioned>>,
    /// The in-memory copy `table` serves from, when the contract declares one.
    pub acceleration: Option<Arc<super::accel::Accelerated>>,
    /// The last probe's answer.
    pub(crate) health: HealthCache,
}

/// How long a health answer is reused: `health` asks each store at most this often.
pub const HEALTH_TTL: Duration = Duration::from_secs(10);
/// How long a health probe may take before the store is reported unavailable.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The last health answer of a port, and when it was taken.
#[derive(Debug, Default)]
pub(crate) struct HealthCache(Mutex<Option<(Instant, Health)>>);

impl Port {
    /// Whether the port's storage can be read now: one probe per [`HEALTH_TTL`], bounded by
    /// [`HEALTH_TIMEOUT`], so a hung store costs the caller seconds, not a hang.
    pub async fn health(&self, state: &SessionState) -> Health {
        let cached = self.health.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((_, h)) = cached.filter(|(at, _)| at.elapsed() < HEALTH_TTL) {
            return h;
        }
        let h = match tokio::time::timeout(HEALTH_TIMEOUT, self.storage.health(state)).await {
            Ok(h) => h,
            Err(_) => Health::Unavailable {
                reason: format!("the store did not answer a probe within {}s", HEALTH_TIMEOUT.as_secs()),
            },
        };
        *self.health.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), h.clone()));
        h
    }
}

impl Drop for Port {
    /// The product version this port belonged to is gone: its storage releases what it holds.
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let storage = Arc::clone(&self.storage);
            rt.spawn(async move { storage.close().await });
        }
    }
}

/// A validated ODCS contract.
#[derive(Debug)]
pub struct Contract {
    /// Contract id.
    pub id: String,
    /// Contract version.
    pub version: String,
    /// Contract status.
    pub status: String,
    /// Columns, in order.
    pub properties: Vec<Property>,
    /// The ODCS document as JSON, for `describe`.
    pub document: serde_json::Value,
    /// Quality rules (on the schema object and its properties), parsed and checked at load.
    pub rules: Vec<crate::quality::Rule>,
    /// How old the data may be, from the SLA (`freshness`, `latency` or `frequency`).
    pub age_limit: Option<crate::quality::AgeLimit>,
}

/// A product folder's state in the catalog.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The version being served; `None` when the product never loaded.
    pub product: Option<Arc<Product>>,
    /// Why the product (or its newest manifests) could not be loaded; empty when healthy.
    pub problems: Vec<Problem>,
}

/// Key of an entry: (domain, product).
pub type ProductKey = (String, String);

/// Every product folder of the mesh, at one point in time.
#[derive(Debug, Default)]
pub struct CatalogState {
    /// Entries by (domain, product).
    pub entries: BTreeMap<ProductKey, Entry>,
}
