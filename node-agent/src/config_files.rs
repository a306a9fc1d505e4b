//! Configuration files on the node: the data of a set's ConfigMap and Secret volumes, written from
//! the operator's bundle Secret into `<resources dir>/<namespace>/<set>/<config hash>/<volume>/`
//! before the manifest that mounts it (see `staticpodset_api::config_files`).
//!
//! A hash directory is complete or absent: it is built under a dot name and renamed into place.
//! Directories are pruned only inside a set directory carrying the owner marker, and only names
//! that are config hashes, never one that an assigned, written, served or running pod names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use staticpodset_api::config_files::{
    is_config_hash, is_safe_file_name, set_dir, split_data_key, volume_path, ConfigKind, Layout,
    VolumeLayout, ANNOTATION_VOLUMES, CONFIG_HASH, DEFAULT_RESOURCES_ROOT, OWNER_MARKER,
};

use crate::plan::SetKey;

/// Why configuration files could not be written or cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The bundle is not what the manifest needs.
    #[error("bundle {bundle}: {problem}")]
    Bundle {
        /// The bundle Secret's name.
        bundle: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ConfigError + 'a {
    move |source| ConfigError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The config hash a manifest's files live under, if it has configuration files.
pub fn config_hash(manifest: &Value) -> Option<&str> {
    manifest
        .pointer("/metadata/annotations")?
        .get(CONFIG_HASH)?
        .as_str()
        .filter(|h| is_config_hash(h))
}

/// Moves the hostPath volumes StaticPodSet generated for set `set` at `hash` from the operator's
/// default root to `host_root`, the directory as the kubelet sees it. Volumes a user wrote
/// themselves are left alone, even under the same root.
pub fn localize(manifest: &Value, set: &SetKey, hash: &str, host_root: &str) -> Value {
    let mut out = manifest.clone();
    if host_root.trim_end_matches('/') == DEFAULT_RESOURCES_ROOT {
        return out;
    }
    if let Some(volumes) = out
        .pointer_mut("/spec/volumes")
        .and_then(Value::as_array_mut)
    {
        for v in volumes {
            let Some(name) = v.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let generated = volume_path(
                DEFAULT_RESOURCES_ROOT,
                &set.namespace,
                &set.name,
                hash,
                &name,
            );
            if let Some(path) = v.pointer_mut("/hostPath/path") {
                if path.as_str() == Some(&generated) {
                    *path = Value::String(volume_path(
                        host_root,
                        &set.namespace,
                        &set.name,
                        hash,
                        &name,
                    ));
                }
            }
        }
    }
    out
}

/// A bundle Secret's content as the agent writes it: per volume, its layout and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// Each volume's kind, source and mode.
    pub layout: Layout,
    /// Each volume's files, by file name.
    pub files: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Reads a bundle Secret; refuses one whose hash label, layout or keys do not fit.
pub fn files_of(bundle: &Secret, hash: &str) -> Result<Files, ConfigError> {
    let name = bundle.metadata.name.clone().unwrap_or_default();
    let fail = |problem: String| ConfigError::Bundle {
        bundle: name.clone(),
        problem,
    };
    let labelled = bundle
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONFIG_HASH));
    if labelled.map(String::as_str) != Some(hash) {
        return Err(fail(format!("its {CONFIG_HASH} label is not {hash}")));
    }
    let layout: Layout = bundle
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_VOLUMES))
        .ok_or_else(|| fail(format!("no {ANNOTATION_VOLUMES} annotation")))
        .and_then(|text| {
            serde_json::from_str(text).map_err(|e| fail(format!("{ANNOTATION_VOLUMES}: {e}")))
        })?;
    if let Some(bad) = layout
        .keys()
        .find(|v| !is_safe_file_name(v) || v.contains('.'))
    {
        return Err(fail(format!(
            "volume name {bad:?} cannot be a directory name"
        )));
    }
    let mut files: BTreeMap<String, BTreeMap<String, Vec<u8>>> = layout
        .keys()
        .map(|v| (v.clone(), BTreeMap::new()))
        .collect();
    for (key, bytes) in bundle.data.iter().flatten() {
        let (volume, file) = split_data_key(key)
            .filter(|(_, f)| is_safe_file_name(f))
            .ok_or_else(|| fail(format!("key {key:?} is not <volume>.<file name>")))?;
        files
            .get_mut(volume)
            .ok_or_else(|| fail(format!("key {key:?} names no volume of the layout")))?
            .insert(file.to_string(), bytes.0.clone());
    }
    Ok(Files { layout, files })
}

/// The agent's resources directory.
#[derive(Debug, Clone)]
pub struct ResourcesDir {
    /// Where the agent reads and writes it.
    pub local: PathBuf,
    /// Where the kubelet finds it on the node (differs when the agent's mount is elsewhere).
    pub host: String,
}

/// What to do with one set's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// Remove these hash directories.
    Prune(SetKey, Vec<String>),
    /// Nothing on the node needs the set's files any more: remove its directory.
    RemoveSet(SetKey),
}

/// Decides the cleanup. `on_disk`: the set directories carrying the marker, with their hash
/// directories. `referenced`: per set, the hashes something on the node names (assigned, written,
/// served or running), or `None` when that is not known (a revision the agent could not read),
/// which keeps everything of the set.
pub fn cleanup(
    on_disk: &BTreeMap<SetKey, BTreeSet<String>>,
    referenced: &BTreeMap<SetKey, Option<BTreeSet<String>>>,
) -> Vec<Cleanup> {
    let mut out = Vec::new();
    for (set, hashes) in on_disk {
        match referenced.get(set) {
            Some(None) => {}
            Some(Some(keep)) if !keep.is_empty() => {
                let stale: Vec<String> = hashes.difference(keep).cloned().collect();
                if !stale.is_empty() {
                    out.push(Cleanup::Prune(set.clone(), stale));
                }
            }
            _ => out.push(Cleanup::RemoveSet(set.clone())),
        }
    }
    out
}

impl ResourcesDir {
    /// A directory the kubelet sees at `host` and the agent at `local`.
    pub fn new(local: impl Into<PathBuf>, host: impl Into<String>) -> Self {
        Self {
            local: local.into(),
            host: host.into(),
        }
    }

    fn set_path(&self, set: &SetKey) -> PathBuf {
        PathBuf::from(set_dir(
            &self.local.to_string_lossy(),
            &set.namespace,
            &set.name,
        ))
    }

    /// Whether the files of `set` at `hash` are in place.
    pub fn has(&self, set: &SetKey, hash: &str) -> bool {
        self.set_path(set).join(hash).is_dir()
    }

    /// Writes the files of `set` at `hash`: built under a dot name, then renamed into place.
    pub fn write(&self, set: &SetKey, hash: &str, files: &Files) -> Result<(), ConfigError> {
        let set_path = self.set_path(set);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&set_path)
            .map_err(io_err("creating", &set_path))?;
        let marker = set_path.join(OWNER_MARKER);
        if !marker.exists() {
            fs::write(&marker, b"Written by the StaticPodSet node agent; it removes this directory when the set leaves the node.\n")
                .map_err(io_err("writing", &marker))?;
        }
        let target = set_path.join(hash);
        let staging = set_path.join(format!(".{hash}.tmp"));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err("removing", &staging))?;
        }
        DirBuilder::new()
            .mode(0o755)
            .create(&staging)
            .map_err(io_err("creating", &staging))?;
        for (volume, layout) in &files.layout {
            let dir = staging.join(volume);
            make_dir(&dir, dir_mode(layout.mode))?;
            for (name, bytes) in files.files.get(volume).into_iter().flatten() {
                write_file(&dir, name, bytes, layout, false)?;
            }
        }
        match fs::rename(&staging, &target) {
            Ok(()) => {}
            // Another writer finished first: its directory is the same content.
            Err(_) if target.is_dir() => {
                fs::remove_dir_all(&staging).map_err(io_err("removing", &staging))?;
            }
            Err(e) => return Err(io_err("renaming into place", &target)(e)),
        }
        fs::File::open(&set_path)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &set_path))
    }

    /// Makes the files of `set` at `hash`, already on disk, exactly `files` again: a file edited,
    /// removed or with another mode is rewritten, one that is not in the bundle is removed. In
    /// place (a dot-named file renamed over the old one inside the volume directory), since a
    /// running pod's hostPath mount holds the directory itself. Returns what was put right.
    pub fn repair(
        &self,
        set: &SetKey,
        hash: &str,
        files: &Files,
    ) -> Result<Vec<String>, ConfigError> {
        let base = self.set_path(set).join(hash);
        let mut repaired = Vec::new();
        for extra in entries(&base)?
            .into_iter()
            .filter(|name| !files.layout.contains_key(name))
        {
            remove_any(&base.join(&extra))?;
            repaired.push(extra);
        }
        for (volume, layout) in &files.layout {
            let dir = base.join(volume);
            let mode = dir_mode(layout.mode);
            let right = fs::symlink_metadata(&dir)
                .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o777 == mode);
            if !right {
                if fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
                    remove_any(&dir)?;
                }
                make_dir(&dir, mode)?;
                repaired.push(volume.clone());
            }
            let want = files.files.get(volume);
            for extra in entries(&dir)?
                .into_iter()
                .filter(|name| !want.is_some_and(|w| w.contains_key(name)))
            {
                remove_any(&dir.join(&extra))?;
                repaired.push(format!("{volume}/{extra}"));
            }
            for (name, bytes) in want.into_iter().flatten() {
                let path = dir.join(name);
                let intact = fs::symlink_metadata(&path).is_ok_and(|m| {
                    m.is_file()
                        && m.permissions().mode() & 0o777 == layout.mode
                        && (layout.kind != ConfigKind::Secret || m.uid() == 0)
                }) && fs::read(&path).is_ok_and(|content| &content == bytes);
                if !intact {
                    write_file(&dir, name, bytes, layout, true)?;
                    repaired.push(format!("{volume}/{name}"));
                }
            }
        }
        Ok(repaired)
    }

    /// The set directories that carry the owner marker, with their hash directories.
    pub fn on_disk(&self) -> Result<BTreeMap<SetKey, BTreeSet<String>>, ConfigError> {
        let mut out = BTreeMap::new();
        let namespaces = match fs::read_dir(&self.local) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("reading", &self.local)(e)),
        };
        for ns in namespaces.flatten() {
            let Ok(sets) = fs::read_dir(ns.path()) else {
                continue;
            };
            for set in sets.flatten() {
                let path = set.path();
                if !path.join(OWNER_MARKER).is_file() {
                    continue;
                }
                let key = SetKey {
                    namespace: ns.file_name().to_string_lossy().into_owned(),
                    name: set.file_name().to_string_lossy().into_owned(),
                };
                let hashes = fs::read_dir(&path)
                    .map_err(io_err("reading", &path))?
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| is_config_hash(n))
                    .collect();
                out.insert(key, hashes);
            }
        }
        Ok(out)
    }

    /// Carries out one cleanup decision.
    pub fn apply(&self, cleanup: &Cleanup) -> Result<(), ConfigError> {
        match cleanup {
            Cleanup::Prune(set, hashes) => {
                for hash in hashes.iter().filter(|h| is_config_hash(h)) {
                    let path = self.set_path(set).join(hash);
                    fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
                }
                Ok(())
            }
            Cleanup::RemoveSet(set) => {
                let path = self.set_path(set);
                if !path.join(OWNER_MARKER).is_file() {
                    return Ok(());
                }
                fs::remove_dir_all(&path).map_err(io_err("removing", &path))?;
                // The namespace directory goes too once empty; someone else's files keep it.
                if let Some(parent) = path.parent() {
                    let _ = fs::remove_dir(parent);
                }
                Ok(())
            }
        }
    }
}

/// Files that only root may read sit in a directory only root may enter.
fn dir_mode(file_mode: u32) -> u32 {
    if file_mode & 0o044 == 0 {
        0o700
    } else {
        0o755
    }
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), ConfigError> {
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating", dir)(e)),
    }
    // The umask may have narrowed the mode.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", dir))
}

/// Writes one file with the layout's mode (and root as owner for a Secret); with `replace`,
/// through a dot-named temporary file renamed over the old one.
fn write_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    layout: &VolumeLayout,
    replace: bool,
) -> Result<(), ConfigError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.staticpodset-tmp"));
    let target = if replace { &temp } else { &path };
    if replace {
        let _ = fs::remove_file(&temp);
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(layout.mode)
        .open(target)
        .map_err(io_err("creating", target))?;
    file.write_all(bytes).map_err(io_err("writing", target))?;
    file.set_permissions(fs::Permissions::from_mode(layout.mode))
        .map_err(io_err("setting the mode of", target))?;
    file.sync_all().map_err(io_err("syncing", target))?;
    if layout.kind == ConfigKind::Secret {
        std::os::unix::fs::chown(target, Some(0), Some(0))
            .map_err(io_err("changing the owner of", target))?;
    }
    if replace {
        fs::rename(&temp, &path).map_err(io_err("renaming into place", &path))?;
    }
    Ok(())
}

/// The names in a directory.
fn entries(dir: &Path) -> Result<Vec<String>, ConfigError> {
    Ok(fs::read_dir(dir)
        .map_err(io_err("reading", dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

fn remove_any(path: &Path) -> Result<(), ConfigError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io_err("removing", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn key(set: &str) -> SetKey {
        SetKey {
            namespace: "ns".into(),
            name: set.into(),
        }
    }

    fn bundle(hash: &str) -> Secret {
        let layout = Layout::from([
            (
                "conf".to_string(),
                VolumeLayout {
                    kind: ConfigKind::ConfigMap,
                    source: "web-conf".into(),
                    mode: 0o644,
                },
            ),
            (
                "tls".to_string(),
                VolumeLayout {
                    kind: ConfigKind::Secret,
                    source: "web-tls".into(),
                    mode: 0o600,
                },
            ),
        ]);
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("staticpodset.ns.web.{hash}")),
                labels: Some(BTreeMap::from([(
                    CONFIG_HASH.to_string(),
                    hash.to_string(),
                )])),
                annotations: Some(BTreeMap::from([(
                    ANNOTATION_VOLUMES.to_string(),
                    serde_json::to_string(&layout).unwrap(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("conf.index.html".to_string(), ByteString(b"hello".to_vec())),
                ("tls.tls.key".to_string(), ByteString(b"secret".to_vec())),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn bundles_become_files_by_volume() {
        let files = files_of(&bundle("0123456789"), "0123456789").unwrap();
        assert_eq!(files.files["conf"]["index.html"], b"hello");
        assert_eq!(files.files["tls"]["tls.key"], b"secret");
        assert!(files_of(&bundle("0123456789"), "9876543210").is_err());
        let mut bad = bundle("0123456789");
        bad.data
            .as_mut()
            .unwrap()
            .insert("other.x".into(), ByteString(vec![]));
        assert!(files_of(&bad, "0123456789").is_err());
    }

    #[test]
    fn only_generated_volumes_move_to_the_node_root() {
        let generated = volume_path(DEFAULT_RESOURCES_ROOT, "ns", "web", "0123456789", "conf");
        let users = format!("{DEFAULT_RESOURCES_ROOT}/mine");
        let m = json!({"metadata": {"annotations": {CONFIG_HASH: "0123456789"}},
        "spec": {"volumes": [
            {"name": "conf", "hostPath": {"path": generated, "type": "Directory"}},
            {"name": "own", "hostPath": {"path": users}},
        ]}});
        assert_eq!(config_hash(&m), Some("0123456789"));
        let moved = localize(&m, &key("web"), "0123456789", "/var/lib/node-a/res");
        assert_eq!(
            moved["spec"]["volumes"][0]["hostPath"]["path"],
            "/var/lib/node-a/res/ns/web/0123456789/conf"
        );
        assert_eq!(
            moved["spec"]["volumes"][1]["hostPath"]["path"],
            json!(users)
        );
        assert_eq!(
            localize(&m, &key("web"), "0123456789", DEFAULT_RESOURCES_ROOT),
            m
        );
    }

    #[test]
    fn cleanup_keeps_what_is_named_and_what_is_unknown() {
        let on_disk = BTreeMap::from([
            (
                key("a"),
                BTreeSet::from(["1111111111".to_string(), "2222222222".to_string()]),
            ),
            (key("b"), BTreeSet::from(["3333333333".to_string()])),
            (key("gone"), BTreeSet::from(["4444444444".to_string()])),
            (key("plain"), BTreeSet::new()),
        ]);
        let referenced = BTreeMap::from([
            (key("a"), Some(BTreeSet::from(["2222222222".to_string()]))),
            (key("b"), None),
            (key("plain"), Some(BTreeSet::new())),
        ]);
        assert_eq!(
            cleanup(&on_disk, &referenced),
            [
                Cleanup::Prune(key("a"), vec!["1111111111".into()]),
                Cleanup::RemoveSet(key("gone")),
                Cleanup::RemoveSet(key("plain")),
            ]
        );
    }

    #[test]
    fn edits_on_the_node_are_put_right_in_place() {
        let root = tempfile::tempdir().unwrap();
        let dir = ResourcesDir::new(root.path(), DEFAULT_RESOURCES_ROOT);
        let set = key("web");
        let files = files_of(&bundle("0123456789"), "0123456789").unwrap();
        dir.write(&set, "0123456789", &files).unwrap();
        assert_eq!(
            dir.repair(&set, "0123456789", &files).unwrap(),
            Vec::<String>::new()
        );
        let base = root.path().join("ns/web/0123456789");
        // What a running pod's mount holds: the volume directory's inode.
        let conf_inode = fs::metadata(base.join("conf")).unwrap().ino();
        fs::write(base.join("conf/index.html"), b"edited").unwrap();
        fs::write(base.join("conf/extra"), b"x").unwrap();
        fs::remove_file(base.join("tls/tls.key")).unwrap();
        fs::set_permissions(base.join("tls"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(base.join("stray")).unwrap();
        let mut repaired = dir.repair(&set, "0123456789", &files).unwrap();
        repaired.sort();
        assert_eq!(
            repaired,
            [
                "conf/extra",
                "conf/index.html",
                "stray",
                "tls",
                "tls/tls.key"
            ]
        );
        assert_eq!(fs::read(base.join("conf/index.html")).unwrap(), b"hello");
        assert_eq!(fs::read(base.join("tls/tls.key")).unwrap(), b"secret");
        assert_eq!(
            fs::metadata(base.join("tls/tls.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(fs::metadata(base.join("conf")).unwrap().ino(), conf_inode);
        assert!(!base.join("conf/extra").exists() && !base.join("stray").exists());
        assert_eq!(
            dir.repair(&set, "0123456789", &files).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn files_are_written_whole_with_modes_and_cleaned_up() {
        let root = tempfile::tempdir().unwrap();
        let dir = ResourcesDir::new(root.path(), DEFAULT_RESOURCES_ROOT);
        let set = key("web");
        let files = files_of(&bundle("0123456789"), "0123456789").unwrap();
        assert!(!dir.has(&set, "0123456789"));
        dir.write(&set, "0123456789", &files).unwrap();
        assert!(dir.has(&set, "0123456789"));
        let base = root.path().join("ns/web/0123456789");
        assert_eq!(fs::read(base.join("conf/index.html")).unwrap(), b"hello");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&base.join("conf/index.html")), 0o644);
        assert_eq!(mode(&base.join("tls/tls.key")), 0o600);
        assert_eq!(mode(&base.join("tls")), 0o700);
        // Writing again (another writer won the race) is harmless.
        dir.write(&set, "0123456789", &files).unwrap();
        dir.write(
            &set,
            "1111111111",
            &files_of(&bundle("1111111111"), "1111111111").unwrap(),
        )
        .unwrap();
        // A directory without the marker is never touched.
        fs::create_dir_all(root.path().join("ns/foreign/2222222222")).unwrap();
        let found = dir.on_disk().unwrap();
        assert_eq!(
            found,
            BTreeMap::from([(
                set.clone(),
                BTreeSet::from(["0123456789".to_string(), "1111111111".to_string()])
            )])
        );
        dir.apply(&Cleanup::Prune(set.clone(), vec!["0123456789".into()]))
            .unwrap();
        assert!(!base.exists() && dir.has(&set, "1111111111"));
        dir.apply(&Cleanup::RemoveSet(set.clone())).unwrap();
        assert!(!root.path().join("ns/web").exists());
        assert!(root.path().join("ns/foreign/2222222222").exists());
        dir.apply(&Cleanup::RemoveSet(key("foreign"))).unwrap();
        assert!(root.path().join("ns/foreign/2222222222").exists());
    }
}
