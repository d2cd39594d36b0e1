//! Bindings: where a product's data lives and how to read it.
//!
//! A binding is written in a contract's `customProperties` as the value of the property
//! `meshgate.binding`:
//!
//! ```yaml
//! customProperties:
//!   - property: meshgate.binding
//!     value:
//!       adapter: files
//!       location: data/
//!       format: parquet
//! ```
//!
//! The enum is closed and every struct refuses unknown fields, so a typo is an error at load
//! rather than a silently ignored option.
//!
//! # Adding a storage kind
//! 1. Add a module beside [`crate::files`] with a `*Binding` struct (serde, `deny_unknown_fields`)
//!    and a type implementing [`crate::Adapter`].
//! 2. Add a variant to [`Binding`] and its arm in [`Binding::kind`].
//! 3. Add one line to [`crate::AdapterRegistry::with_defaults`].
//! 4. Test it beside the code and through the gateway's integration tests.

use serde::Deserialize;

use crate::delta::DeltaBinding;
use crate::files::FilesBinding;
use crate::flight::FlightBinding;
use crate::memory::MemoryBinding;
use crate::postgres::PostgresBinding;

/// Storage of one output port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "adapter", rename_all = "snake_case")]
pub enum Binding {
    /// A Delta Lake table: read at its latest commit (or a pinned version), written by publishes.
    Delta(DeltaBinding),
    /// Files read through DataFusion listing tables: Parquet, CSV, NDJSON, Arrow IPC.
    Files(FilesBinding),
    /// A remote Flight or Flight SQL server (another gateway, federation).
    Flight(FlightBinding),
    /// Record batches held in memory, registered with the [`crate::memory::MemoryAdapter`].
    Memory(MemoryBinding),
    /// A PostgreSQL table, view or read-only query.
    Postgres(PostgresBinding),
}

impl Binding {
    /// The adapter kind that serves this binding.
    pub fn kind(&self) -> &'static str {
        match self {
            Binding::Delta(_) => "delta",
            Binding::Files(_) => "files",
            Binding::Flight(_) => "flight",
            Binding::Memory(_) => "memory",
            Binding::Postgres(_) => "postgres",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_unknown_fields() {
        let b: Binding = serde_yaml::from_str("adapter: files\nlocation: data/\nformat: parquet\n").unwrap();
        assert_eq!(b.kind(), "files");
        let err = serde_yaml::from_str::<Binding>("adapter: files\nlocation: data/\nformat: parquet\nlocaton: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("locaton"), "{err}");
        let err = serde_yaml::from_str::<Binding>("adapter: ftp\n").unwrap_err().to_string();
        assert!(err.contains("ftp"), "{err}");
    }
}
