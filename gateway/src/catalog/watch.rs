//! Reloads when files under the mesh folder change.
//!
//! Only changes count (create, modify, remove, rename): reads are reported by the OS too, and a
//! reload reads every product, so reacting to reads would reload forever.

use std::path::Path;
use std::time::Duration;

use notify::event::{AccessKind, EventKind, MetadataKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Watches the mesh folder while alive; dropping it stops the watching.
pub struct CatalogWatcher {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for CatalogWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogWatcher").finish_non_exhaustive()
    }
}

/// Whether an event is a change of content or names (not a read or an access-time update).
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(notify::event::AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

impl CatalogWatcher {
    /// Starts watching `dir`, running `reload` after changes. Changes within `debounce` of each
    /// other cause one reload, so a team copying a folder of files causes one reload, not
    /// hundreds.
    pub fn start<F, Fut>(dir: &Path, debounce: Duration, reload: F) -> notify::Result<Self>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            // A full channel means a reload is already pending; it will see this change too.
            Ok(event) if is_change(&event.kind) => drop(tx.try_send(())),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching the mesh folder failed"),
        })?;
        watcher.watch(dir, RecursiveMode::Recursive)?;
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let a burst of changes settle before reading the folder.
                tokio::time::sleep(debounce).await;
                while rx.try_recv().is_ok() {}
                reload().await;
            }
        });
        Ok(Self { _watcher: watcher, task })
    }
}

impl Drop for CatalogWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessMode, CreateKind, DataChange};

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Read))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!is_change(&EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Data(DataChange::Content))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
    }
}
