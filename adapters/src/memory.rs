//! The `memory` adapter: named sets of record batches held in memory, for tests and for
//! embedding meshgate in another program.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{MemTable, TableProvider};
use serde::Deserialize;

use crate::{Adapter, Binding, Error, Health, OpenContext, Result};

/// Binding of the `memory` adapter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBinding {
    /// Name the dataset was registered under with [`MemoryAdapter::register`].
    pub dataset: String,
}

/// Datasets held in memory. Clones share the same datasets.
#[derive(Debug, Clone, Default)]
pub struct MemoryAdapter {
    datasets: Arc<RwLock<HashMap<String, Arc<MemTable>>>>,
}

impl MemoryAdapter {
    /// Registers (or replaces) a dataset; every batch must have `schema`.
    pub fn register(&self, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<()> {
        let table = MemTable::try_new(schema, vec![batches])?;
        self.datasets.write().expect("memory adapter lock poisoned").insert(name.to_string(), Arc::new(table));
        Ok(())
    }

    /// Removes a dataset; products bound to it become unavailable at their next load.
    pub fn remove(&self, name: &str) {
        self.datasets.write().expect("memory adapter lock poisoned").remove(name);
    }
}

#[async_trait]
impl Adapter for MemoryAdapter {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn open(&self, binding: &Binding, _ctx: &OpenContext) -> Result<Arc<dyn TableProvider>> {
        let Binding::Memory(b) = binding else {
            return Err(Error::InvalidBinding(format!("memory adapter given a {} binding", binding.kind())));
        };
        let sets = self.datasets.read().expect("memory adapter lock poisoned");
        match sets.get(&b.dataset) {
            Some(t) => Ok(Arc::clone(t) as Arc<dyn TableProvider>),
            None => Err(Error::Unavailable(format!("no in-memory dataset named `{}` is registered", b.dataset))),
        }
    }

    async fn health(&self, _table: &Arc<dyn TableProvider>, _ctx: &OpenContext) -> Health {
        Health::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn registered_dataset_opens() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let a = MemoryAdapter::default();
        a.register("t", Arc::clone(&schema), vec![batch]).unwrap();
        let ctx = OpenContext { product_dir: "/".into(), state: SessionContext::new().state() };
        let t = a.open(&Binding::Memory(MemoryBinding { dataset: "t".into() }), &ctx).await.unwrap();
        assert_eq!(t.schema(), schema);
        let missing = a.open(&Binding::Memory(MemoryBinding { dataset: "u".into() }), &ctx).await;
        assert!(matches!(missing, Err(Error::Unavailable(_))));
    }
}
