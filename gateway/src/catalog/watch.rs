//! Reloads when files under the mesh folder change.
//!
//! Only changes of manifests and governance files count (create, modify, remove, rename of
//! `*.yaml`, `*.cedar`, ... and of folders): reads are reported by the OS too, and reacting to them
//! would reload forever; data files are listed afresh by every scan and need no reload.
//!
//! [`RetryTimer`] reloads periodically while some product is refused, so a product whose
//! storage was down when it was opened is served once the storage is back.

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

/// Whether a changed path can change the catalog: a manifest or governance file, or a folder
/// (a product or domain added or removed; removed paths cannot be asked whether they were one).
fn concerns_catalog(path: &Path) -> bool {
    super::is_manifest(path) || path.extension().is_none()
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
            Ok(event) if is_change(&event.kind) && event.paths.iter().any(|p| concerns_catalog(p)) => {
                let _ = tx.try_send(());
            }
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

/// Runs a retry every `interval` while alive (the first one `interval` after start).
#[derive(Debug)]
pub struct RetryTimer {
    task: tokio::task::JoinHandle<()>,
}

impl RetryTimer {
    /// Calls `retry` every `interval`; a retry that is still running when the next is due
    /// delays it rather than overlapping it.
    pub fn start<F, Fut>(interval: Duration, retry: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                retry().await;
            }
        });
        Self { task }
    }
}

impl Drop for RetryTimer {
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

    #[test]
    fn data_files_do_not_concern_the_catalog() {
        assert!(concerns_catalog(Path::new("/m/sales/orders/v1.odcs.yaml")));
        assert!(concerns_catalog(Path::new("/m/_governance/policies.cedar")));
        assert!(concerns_catalog(Path::new("/m/sales/new_product")));
        assert!(!concerns_catalog(Path::new("/m/sales/orders/data/part-0.parquet")));
        assert!(!concerns_catalog(Path::new("/m/sales/orders/data/x.csv")));
    }

    #[tokio::test]
    async fn retries_run_every_interval_until_dropped() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let timer = RetryTimer::start(Duration::from_millis(5), move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
            }
        });
        for _ in 0..3 {
            rx.recv().await.expect("a retry");
        }
        drop(timer);
        assert!(rx.recv().await.is_none(), "no retry after the timer is dropped");
    }
}
