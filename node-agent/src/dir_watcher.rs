//! inotify on the manifest directory, so that a deleted or edited manifest is restored at once
//! rather than at the next periodic resync.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Watches one directory and wakes the sync loop on changes that matter.
pub struct DirWatcher {
    // Kept only to keep the watch alive; dropping it stops the inotify thread.
    _watcher: RecommendedWatcher,
    broken: Arc<AtomicBool>,
}

impl DirWatcher {
    /// Starts watching `dir` (not recursively) and calls `wake.notify_one()` on relevant events.
    pub fn start(dir: &Path, wake: Arc<Notify>) -> Result<Self, notify::Error> {
        let broken = Arc::new(AtomicBool::new(false));
        let watched: PathBuf = dir.to_owned();
        let flag = broken.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<Event>| match res {
                Ok(event) => {
                    if loses_watch(&event, &watched) {
                        flag.store(true, Ordering::Relaxed);
                    }
                    if is_relevant(&event) {
                        wake.notify_one();
                    }
                }
                // Queue overflows and the like: events may be lost, so look at the directory.
                Err(e) => {
                    tracing::warn!(error = %e, "inotify error on the manifest directory");
                    wake.notify_one();
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Self {
            _watcher: watcher,
            broken,
        })
    }

    /// Whether the watched directory itself went away, so the watch must be set up again.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }
}

/// Whether an event can change what a sync decides. Reads (ours, the kubelet's) and changes to
/// dot-files (our own temp files) cannot, and reacting to our own scans would loop forever.
pub fn is_relevant(event: &Event) -> bool {
    let kind_matters = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind_matters
        && (event.paths.is_empty()
            || event.paths.iter().any(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_none_or(|n| !n.starts_with('.'))
            }))
}

fn loses_watch(event: &Event, dir: &Path) -> bool {
    matches!(
        event.kind,
        EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_))
    ) && event.paths.iter().any(|p| p == dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn reads_and_dot_files_do_not_wake() {
        assert!(!is_relevant(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/m/a.yaml"
        )));
        assert!(!is_relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/m/a.yaml"
        )));
        assert!(!is_relevant(&event(
            EventKind::Create(CreateKind::File),
            "/m/.staticpodset_a_b.yaml.x.tmp"
        )));
    }

    #[test]
    fn changes_wake() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Any,
        ] {
            assert!(
                is_relevant(&event(kind, "/m/staticpodset_a_b.yaml")),
                "{kind:?}"
            );
        }
        assert!(is_relevant(&Event::new(EventKind::Other)));
    }

    #[test]
    fn losing_the_directory_breaks_the_watch() {
        let dir = Path::new("/m");
        assert!(loses_watch(
            &event(EventKind::Remove(RemoveKind::Folder), "/m"),
            dir
        ));
        assert!(!loses_watch(
            &event(EventKind::Remove(RemoveKind::File), "/m/a.yaml"),
            dir
        ));
    }
}
