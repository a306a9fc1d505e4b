//! The kubelet's manifest directory at the edge: a scan into plain data, and the execution of the
//! actions the planner decided on.
//!
//! The kubelet parses every file in the directory whose name does not start with a dot, whatever its
//! extension, and re-reads a file on every write event. So every byte the agent puts there must go
//! through a dot-prefixed temp file that is renamed into place only once it is complete and on disk.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use staticpodset_api::keys::{
    parse_manifest_file_name, ANNOTATION_REVISION, ANNOTATION_SET, FILE_PREFIX,
};

/// Files larger than this are not read: the kubelet rejects them too (its `maxConfigLength`).
pub const MAX_MANIFEST_BYTES: u64 = 10 * 1024 * 1024;

/// Temp files are `.<file name>.<random>.tmp`: the leading dot hides them from the kubelet, and the
/// prefix and suffix let a restarted agent find the ones a crash left behind.
const TEMP_SUFFIX: &str = ".tmp";

/// An I/O failure in the manifest directory, with the operation and the path it concerned.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A file system call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What the agent was doing, e.g. "read" or "rename into".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Someone changed the file between the scan and the action; the next sync decides again.
    #[error("{} changed since the directory was scanned; left as it is until the next sync", path.display())]
    Changed {
        /// The file concerned.
        path: PathBuf,
    },
    /// The action named a file the agent may never touch. The planner never produces one; this is
    /// a second line of defence against writing outside the directory or over foreign files.
    #[error("refusing to touch {name:?}: not a StaticPodSet manifest file name")]
    ForbiddenName {
        /// The rejected name.
        name: String,
    },
}

impl DirError {
    fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> DirError {
        let path = path.into();
        move |source| DirError::Io { op, path, source }
    }
}

/// A pod's identity as the kubelet keys it: two files defining the same key shadow each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// `metadata.namespace`, `default` when absent (as the kubelet defaults it).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the agent needs to know of a manifest's content, parsed best-effort.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    /// The pod the file defines, if it parses and has a name.
    pub pod: Option<PodKey>,
    /// The value of the `staticpods.dev/set` annotation.
    pub set: Option<String>,
    /// The value of the `staticpods.dev/revision` annotation.
    pub revision: Option<String>,
    /// The value of the `staticpods.dev/config-hash` annotation: the configuration files the pod
    /// mounts.
    pub config_hash: Option<String>,
}

/// Parses a manifest the way the kubelet would find its pod: YAML or JSON (JSON is YAML), first
/// document only. Anything unparseable yields an empty [`ManifestInfo`] rather than an error,
/// because foreign files are none of our business beyond the pod they define.
pub fn parse_manifest(bytes: &[u8]) -> ManifestInfo {
    let Some(document) = serde_yaml::Deserializer::from_slice(bytes).next() else {
        return ManifestInfo::default();
    };
    let Ok(value) = serde_yaml::Value::deserialize(document) else {
        return ManifestInfo::default();
    };
    let Some(metadata) = value.get("metadata") else {
        return ManifestInfo::default();
    };
    let text = |v: Option<&serde_yaml::Value>| {
        v.and_then(serde_yaml::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let annotation = |key: &str| text(metadata.get("annotations").and_then(|a| a.get(key)));
    let pod = text(metadata.get("name")).map(|name| PodKey {
        namespace: text(metadata.get("namespace")).unwrap_or_else(|| "default".to_owned()),
        name,
    });
    ManifestInfo {
        pod,
        set: annotation(ANNOTATION_SET),
        revision: annotation(ANNOTATION_REVISION),
        config_hash: annotation(staticpodset_api::config_files::CONFIG_HASH),
    }
}

/// One file the kubelet would read (its name does not start with a dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    /// The file name within the directory.
    pub name: String,
    /// A regular file with a UTF-8 name: the only kind the agent may own. Symlinks and the like
    /// are always foreign, since the agent only ever creates regular files.
    pub regular: bool,
    /// The bytes, or `None` when the file could not be read or is too large.
    pub content: Option<Vec<u8>>,
    /// The modification time: for an owned manifest, when the agent last wrote it.
    pub modified: Option<SystemTime>,
    /// The parsed content.
    pub info: ManifestInfo,
}

/// The directory's files as plain data, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirScan {
    /// Every non-dot entry that is not a directory.
    pub files: Vec<ScannedFile>,
}

/// A change to the directory the planner decided on. Each carries what the file held at scan time,
/// and is skipped if that no longer holds, so a concurrent edit is never clobbered blindly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Atomically replace (or create) `file_name` with `content`.
    Write {
        /// The owned file name.
        file_name: String,
        /// The complete manifest.
        content: Vec<u8>,
        /// The content at scan time, `None` if the file did not exist.
        expected: Option<Vec<u8>>,
    },
    /// Delete an owned manifest that is no longer assigned.
    Remove {
        /// The owned file name.
        file_name: String,
        /// The content at scan time.
        expected: Vec<u8>,
    },
}

impl Action {
    /// The file the action concerns.
    pub fn file_name(&self) -> &str {
        match self {
            Action::Write { file_name, .. } | Action::Remove { file_name, .. } => file_name,
        }
    }
}

/// The kubelet's static pod directory.
#[derive(Debug, Clone)]
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    /// A handle on `path`; nothing is touched until a method is called.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every file the kubelet would read. A file that cannot be read is still listed (with
    /// no content) so that its name counts as taken.
    pub fn scan(&self) -> Result<DirScan, DirError> {
        let entries = fs::read_dir(&self.path).map_err(DirError::io("list", &self.path))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(DirError::io("list", &self.path))?;
            let os_name = entry.file_name();
            let utf8 = os_name.to_str().is_some();
            let name = os_name.to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Not following symlinks here: a symlink is never ours, even if it points at our content.
            let Ok(link_meta) = fs::symlink_metadata(&path) else {
                continue; // vanished since the listing
            };
            if link_meta.is_dir() {
                continue; // the kubelet does not recurse either
            }
            let content = read_limited(&path).ok().flatten();
            let info = content.as_deref().map(parse_manifest).unwrap_or_default();
            files.push(ScannedFile {
                name,
                regular: utf8 && link_meta.file_type().is_file(),
                content,
                modified: link_meta.modified().ok(),
                info,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(DirScan { files })
    }

    /// Removes temp files a crashed agent left behind. Only dot-files named like our temp files are
    /// touched; the kubelet ignores them anyway, so this is tidiness, not correctness.
    pub fn remove_stale_temp_files(&self) -> Result<Vec<String>, DirError> {
        let entries = fs::read_dir(&self.path).map_err(DirError::io("list", &self.path))?;
        let temp_prefix = format!(".{FILE_PREFIX}");
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(DirError::io("list", &self.path))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !(name.starts_with(&temp_prefix) && name.ends_with(TEMP_SUFFIX)) {
                continue;
            }
            let path = entry.path();
            let is_file = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
            if !is_file {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed.push(name),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(DirError::io("remove stale temp file", path)(e)),
            }
        }
        if !removed.is_empty() {
            self.sync()?;
        }
        Ok(removed)
    }

    /// Executes `actions` in order. One failure does not stop the others: each set stands alone.
    pub fn execute(&self, actions: &[Action]) -> Vec<Result<(), DirError>> {
        actions.iter().map(|a| self.execute_one(a)).collect()
    }

    fn execute_one(&self, action: &Action) -> Result<(), DirError> {
        let name = action.file_name();
        if !is_owned_file_name(name) {
            return Err(DirError::ForbiddenName {
                name: name.to_owned(),
            });
        }
        let path = self.path.join(name);
        match action {
            Action::Write {
                content, expected, ..
            } => {
                self.check_unchanged(&path, expected.as_deref())?;
                self.write_atomically(name, content)
            }
            Action::Remove { expected, .. } => {
                self.check_unchanged(&path, Some(expected))?;
                fs::remove_file(&path).map_err(DirError::io("remove", &path))?;
                self.sync()
            }
        }
    }

    fn check_unchanged(&self, path: &Path, expected: Option<&[u8]>) -> Result<(), DirError> {
        let current = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(DirError::io("inspect", path)(e)),
            Ok(meta) if !meta.file_type().is_file() => {
                return Err(DirError::Changed { path: path.into() })
            }
            Ok(_) => read_limited(path).map_err(DirError::io("read", path))?,
        };
        if current.as_deref() == expected {
            Ok(())
        } else {
            Err(DirError::Changed { path: path.into() })
        }
    }

    /// Writes a dot-prefixed temp file, syncs it, renames it over `name` and syncs the directory, so
    /// the kubelet sees either the old file or the complete new one, even across a power loss.
    fn write_atomically(&self, name: &str, content: &[u8]) -> Result<(), DirError> {
        let mut temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(TEMP_SUFFIX)
            .tempfile_in(&self.path)
            .map_err(DirError::io("create a temp file in", &self.path))?;
        let temp_path = temp.path().to_owned();
        temp.write_all(content)
            .map_err(DirError::io("write", &temp_path))?;
        temp.as_file()
            .sync_all()
            .map_err(DirError::io("fsync", &temp_path))?;
        let target = self.path.join(name);
        // On failure the NamedTempFile inside the error is dropped, which deletes the temp file.
        temp.persist(&target)
            .map_err(|e| DirError::io("rename a temp file onto", &target)(e.error))?;
        self.sync()
    }

    /// Makes renames and deletions durable: they live in the directory, not in the files.
    fn sync(&self) -> Result<(), DirError> {
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(DirError::io("fsync directory", &self.path))
    }
}

/// Whether `name` is a plain file name the agent could own: no path separators, no dot-files, and
/// in the exact `manifest_file_name` format.
pub fn is_owned_file_name(name: &str) -> bool {
    !name.contains('/') && !name.contains('\0') && parse_manifest_file_name(name).is_some()
}

/// Reads a file unless it exceeds [`MAX_MANIFEST_BYTES`] (then `Ok(None)`); `Ok(None)` too if it
/// vanished in between.
fn read_limited(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Ok(None);
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_and_json_best_effort() {
        let yaml = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n";
        assert_eq!(
            parse_manifest(yaml).pod,
            Some(PodKey {
                namespace: "kube-system".into(),
                name: "kube-apiserver".into()
            })
        );
        let json = br#"{"metadata":{"name":"x","annotations":{"staticpods.dev/set":"a/b","staticpods.dev/revision":"r1"}}}"#;
        let info = parse_manifest(json);
        assert_eq!(
            info.pod.as_ref().map(|p| p.namespace.as_str()),
            Some("default")
        );
        assert_eq!(info.set.as_deref(), Some("a/b"));
        assert_eq!(info.revision.as_deref(), Some("r1"));
        let multi = b"metadata:\n  name: first\n---\nmetadata:\n  name: second\n";
        assert_eq!(
            parse_manifest(multi).pod.map(|p| p.name),
            Some("first".into())
        );
        for junk in [&b""[..], b"\x00\xff", b"- a\n- b\n", b"metadata: 3", b"{{{"] {
            assert_eq!(parse_manifest(junk), ManifestInfo::default());
        }
    }

    #[test]
    fn owned_file_names_are_plain() {
        assert!(is_owned_file_name("staticpodset_ns_set.yaml"));
        for bad in [
            "../staticpodset_ns_set.yaml",
            "staticpodset_ns_a/b.yaml",
            "staticpodset_ns_..yaml/x",
            ".staticpodset_ns_set.yaml",
            "kube-apiserver.yaml",
        ] {
            assert!(!is_owned_file_name(bad), "{bad}");
        }
    }
}
