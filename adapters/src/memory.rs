//! The `memory` adapter: named sets of record batches held in memory, for tests and for
//! embedding meshgate in another program.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{MemTable, TableProvider};
use serde::Deserialize;

use crate::{Adapter, Binding, Error, InMemoryStorage, OpenContext, Opened, Result};

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

    async fn open(&self, binding: &Binding, ctx: &OpenContext) -> Result<Opened> {
        let Binding::Memory(b) = binding else {
            return Err(Error::InvalidBinding(format!("memory adapter given a {} binding", binding.kind())));
        };
        let table = self.datasets.read().expect("memory adapter lock poisoned").get(&b.dataset).cloned();
        let Some(table) = table else {
            return Err(Error::Unavailable(format!("no in-memory dataset named `{}` is registered", b.dataset)));
        };
        let table: Arc<dyn TableProvider> = match ctx.string_types.apply(&table.schema()) {
            None => table,
            Some(served) => {
                // Datasets are small and registered once: cast a copy when opened.
                let mut parts = Vec::new();
                for partition in &table.batches {
                    let mut batches = Vec::new();
                    for b in partition.read().await.iter() {
                        batches.push(cast_batch(b, &served)?);
                    }
                    parts.push(batches);
                }
                Arc::new(MemTable::try_new(served, parts)?)
            }
        };
        Ok(Opened { table, storage: Arc::new(InMemoryStorage), versions: None })
    }
}

/// `batch` with its columns cast to `schema`'s types.
fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidBinding(format!("cannot serve the dataset with classic string types: {e}")))?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| Error::InvalidBinding(e.to_string()))
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
        let ctx = OpenContext::new("/".into(), SessionContext::new().state());
        let t = a.open(&Binding::Memory(MemoryBinding { dataset: "t".into() }), &ctx).await.unwrap();
        assert_eq!(t.table.schema(), schema);
        assert_eq!(t.storage.health(&ctx.state).await, crate::Health::Ok);
        let missing = a.open(&Binding::Memory(MemoryBinding { dataset: "u".into() }), &ctx).await;
        assert!(matches!(missing, Err(Error::Unavailable(_))));
    }
}
