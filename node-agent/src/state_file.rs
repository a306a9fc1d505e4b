//! The state file on the node: `<state dir>/<node>.json`, in a directory of the agent's own that
//! the kubelet never reads. I/O only; what is in it is [`crate::last_known`].
//!
//! Written like a manifest: a dot-named temporary file in the same directory, synced, renamed over
//! the old file, and the directory synced, so a crash or power loss leaves the old state or the
//! new one, never a mix. One file per node keeps agents of several nodes sharing a host directory
//! (test clusters) apart.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::blocking;
use crate::last_known::{self, LastKnown};
use crate::metrics::Metrics;
use staticpodset_api::ManifestSource;

/// The largest state file read: far above any real node's state, and small enough that a bogus
/// file cannot exhaust the agent's memory.
const MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// What loading the state file found.
#[derive(Debug)]
pub enum Loaded {
    /// A whole state of this node.
    State(Box<LastKnown>),
    /// No state file (a new node, or state off).
    Missing,
    /// A file that cannot be used, and why.
    Invalid(String),
}

/// A failure writing the state file.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}: {source}")]
pub struct SaveError {
    /// What the agent was doing.
    op: &'static str,
    /// The file or directory.
    path: PathBuf,
    /// The I/O error.
    #[source]
    source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SaveError + 'a {
    move |source| SaveError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The state file of one node.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    node: String,
}

impl StateFile {
    /// The state of node `node` in directory `dir`.
    pub fn new(dir: impl Into<PathBuf>, node: &str) -> Self {
        Self {
            dir: dir.into(),
            node: node.to_owned(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.node))
    }

    fn temp_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.json.tmp", self.node))
    }

    /// Reads and checks the state file.
    pub fn load(&self) -> Loaded {
        let path = self.path();
        let bytes = match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Invalid(format!("cannot read {}: {e}", path.display())),
            Ok(meta) if meta.len() > MAX_STATE_BYTES => {
                return Loaded::Invalid(format!(
                    "{} is {} bytes, more than the {MAX_STATE_BYTES} a state can be",
                    path.display(),
                    meta.len()
                ))
            }
            Ok(_) => match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => return Loaded::Invalid(format!("cannot read {}: {e}", path.display())),
            },
        };
        match last_known::decode(&bytes, &self.node) {
            Ok(state) => Loaded::State(Box::new(state)),
            Err(e) => Loaded::Invalid(format!("{}: {e}", path.display())),
        }
    }

    /// Writes `bytes` as the state file, atomically and durably. The directory is created (mode
    /// 0700: manifests may carry what only root on the node should read) when missing.
    pub fn save(&self, bytes: &[u8]) -> Result<(), SaveError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(err("create directory", &self.dir))?;
        let temp = self.temp_path();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(err("create", &temp))?;
        file.write_all(bytes).map_err(err("write", &temp))?;
        file.sync_all().map_err(err("fsync", &temp))?;
        drop(file);
        let path = self.path();
        fs::rename(&temp, &path).map_err(err("rename into place", &path))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync directory", &self.dir))
    }
}

/// The node's state file as the loop uses it: loaded once on start, saved when it changed, with
/// what came of each in the log and the metrics.
pub struct StateStore {
    file: Option<StateFile>,
    metrics: Metrics,
    /// What was saved last, so that only a change is written.
    last_saved: Option<LastKnown>,
}

impl StateStore {
    /// The store of `file` (`None`: no state is kept).
    pub fn new(file: Option<StateFile>, metrics: Metrics) -> Self {
        Self {
            file,
            metrics,
            last_saved: None,
        }
    }

    /// The manifest source of the last state saved, if any.
    pub fn last_mode(&self) -> Option<ManifestSource> {
        self.last_saved.as_ref().map(|s| s.mode)
    }

    /// Loads the node's last-known state, reporting what was found. A state that cannot be used
    /// is no state: the agent then waits for the API server and leaves the directory as it is.
    pub async fn load(&self) -> Option<Box<LastKnown>> {
        let file = self.file.clone()?;
        let path = file.path();
        let loaded = tokio::task::spawn_blocking(move || file.load())
            .await
            .unwrap_or_else(|e| Loaded::Invalid(format!("the load did not complete: {e}")));
        let (result, state) = match loaded {
            Loaded::State(state) => {
                let tampered = state.tampered_revisions();
                info!(path = %path.display(), saved_at = %state.saved_at_text(),
                      pods = state.pods.len(), revisions = state.revisions.len(),
                      "loaded the last-known state");
                if !tampered.is_empty() {
                    warn!(path = %path.display(), ?tampered,
                          "last-known state: these revisions do not hash to their digest and are not used");
                }
                ("loaded", Some(state))
            }
            Loaded::Missing => {
                info!(path = %path.display(), "no last-known state; the agent waits for the API server");
                ("missing", None)
            }
            Loaded::Invalid(why) => {
                warn!(path = %path.display(), error = %why,
                      "last-known state unusable: treated as no state (nothing is removed); the \
                       agent waits for the API server");
                ("invalid", None)
            }
        };
        self.metrics.state_loads.with_label_values(&[result]).inc();
        state
    }

    /// Saves `current` when it differs from what was saved last. A failure is logged and retried
    /// on the next sync; the node's pods do not depend on it while the API server answers.
    pub async fn save(&mut self, current: LastKnown) {
        let Some(file) = self.file.clone() else {
            return;
        };
        if self
            .last_saved
            .as_ref()
            .is_some_and(|last| last.same_as(&current))
        {
            return;
        }
        let bytes = match last_known::encode(&current) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(error = %e, "cannot encode the last-known state");
                self.metrics
                    .state_saves
                    .with_label_values(&["failed"])
                    .inc();
                return;
            }
        };
        let failure = match blocking::in_span(move || file.save(&bytes)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("the save did not complete: {e}")),
        };
        match failure {
            None => {
                self.metrics.state_saves.with_label_values(&["ok"]).inc();
                debug!(
                    pods = current.pods.len(),
                    revisions = current.revisions.len(),
                    "saved the last-known state"
                );
                self.last_saved = Some(current);
            }
            Some(why) => {
                warn!(error = %why, "cannot save the last-known state; retrying on the next sync");
                self.metrics
                    .state_saves
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn missing_corrupt_and_foreign_files_are_told_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(dir.path().join("state"), "node-a");
        assert!(matches!(file.load(), Loaded::Missing));
        file.save(b"not a state").expect("save");
        match file.load() {
            Loaded::Invalid(why) => {
                assert!(why.contains("no staticpodset-agent-state header"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let mode = fs::metadata(dir.path().join("state"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = fs::metadata(file.path())
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!file.temp_path().exists(), "the temp file was renamed");
    }
}
