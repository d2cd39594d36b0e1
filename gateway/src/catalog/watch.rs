//! Reloads the catalog when files under the mesh folder change.

use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::RecursiveMode;
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

use super::Catalog;

/// Watches the mesh folder while alive; dropping it stops the watching.
pub struct CatalogWatcher {
    _debouncer: Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for CatalogWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogWatcher").finish_non_exhaustive()
    }
}

impl CatalogWatcher {
    /// Starts watching. Changes are debounced by `debounce`, so a team copying a folder of
    /// files causes one reload, not hundreds.
    pub fn start(catalog: Arc<Catalog>, debounce: Duration) -> Result<Self, notify_debouncer_mini::notify::Error> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut debouncer = new_debouncer(debounce, move |res: DebounceEventResult| match res {
            // A full channel means a reload is already pending, which will see this change too.
            Ok(_) => drop(tx.try_send(())),
            Err(e) => tracing::warn!(error = %e, "watching the mesh folder failed"),
        })?;
        debouncer.watcher().watch(catalog.mesh_dir(), RecursiveMode::Recursive)?;
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                if let Err(e) = catalog.reload().await {
                    tracing::warn!(error = %e, "reload after a change failed; the last good catalog stays");
                }
            }
        });
        Ok(Self { _debouncer: debouncer, task })
    }
}

impl Drop for CatalogWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
