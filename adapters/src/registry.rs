//! The registry: from a binding to its adapter.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::files::FilesAdapter;
use crate::flight::FlightAdapter;
use crate::memory::MemoryAdapter;
use crate::postgres::PostgresAdapter;
use crate::{Adapter, Binding, Error, OpenContext, Opened, Result};

/// Adapters by kind.
#[derive(Debug, Clone, Default)]
pub struct AdapterRegistry {
    adapters: BTreeMap<&'static str, Arc<dyn Adapter>>,
}

impl AdapterRegistry {
    /// A registry with every adapter this crate provides; `memory` serves `memory`.
    pub fn with_defaults(memory: MemoryAdapter) -> Self {
        Self::default()
            .with_adapter(Arc::new(FilesAdapter))
            .with_adapter(Arc::new(crate::delta::DeltaAdapter))
            .with_adapter(Arc::new(memory))
            .with_adapter(Arc::new(PostgresAdapter))
            .with_adapter(Arc::new(FlightAdapter))
    }

    /// Adds (or replaces) the adapter for its kind.
    pub fn with_adapter(mut self, adapter: Arc<dyn Adapter>) -> Self {
        self.adapters.insert(adapter.kind(), adapter);
        self
    }

    fn get(&self, kind: &str) -> Result<&Arc<dyn Adapter>> {
        self.adapters.get(kind).ok_or_else(|| Error::UnknownAdapter {
            kind: kind.to_string(),
            available: self.adapters.keys().copied().collect::<Vec<_>>().join(", "),
        })
    }

    /// Opens a binding with the adapter of its kind.
    pub async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Opened> {
        self.get(binding.kind())?.open(binding, ctx).await
    }
}
