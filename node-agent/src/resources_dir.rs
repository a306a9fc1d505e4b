//! The resources directory on the node: where configuration files are written, put right and
//! removed (`<resources dir>/<namespace>/<set>/<config hash>/<volume>/`). File system I/O only;
//! what to write and what to remove is decided in [`crate::config_files`].
//!
//! A hash directory is complete or absent: it is built under a dot name and renamed into place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use staticpodset_api::config_files::{
    is_config_hash, set_dir, ConfigKind, VolumeLayout, OWNER_MARKER,
};
use staticpodset_api::SetKey;

use crate::config_files::{Cleanup, Files};

/// A file system operation on the resources directory that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct ResourcesError {
    /// What was being done.
    pub op: &'static str,
    /// On what.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ResourcesError + 'a {
    move |source| ResourcesError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The agent's resources directory.
#[derive(Debug, Clone)]
pub struct ResourcesDir {
    /// Where the agent reads and writes it.
    pub local: PathBuf,
    /// Where the kubelet finds it on the node (differs when the agent's mount is elsewhere).
    pub host: String,
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
    pub fn write(&self, set: &SetKey, hash: &str, files: &Files) -> Result<(), ResourcesError> {
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
    ) -> Result<Vec<String>, ResourcesError> {
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
    pub fn on_disk(&self) -> Result<BTreeMap<SetKey, BTreeSet<String>>, ResourcesError> {
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
                let key = SetKey::new(
                    ns.file_name().to_string_lossy().into_owned(),
                    set.file_name().to_string_lossy().into_owned(),
                );
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
    pub fn apply(&self, cleanup: &Cleanup) -> Result<(), ResourcesError> {
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

fn make_dir(dir: &Path, mode: u32) -> Result<(), ResourcesError> {
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
) -> Result<(), ResourcesError> {
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
fn entries(dir: &Path) -> Result<Vec<String>, ResourcesError> {
    Ok(fs::read_dir(dir)
        .map_err(io_err("reading", dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

fn remove_any(path: &Path) -> Result<(), ResourcesError> {
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
    use crate::config_files::files_of;
    use crate::config_files::tests::{bundle, key};
    use staticpodset_api::config_files::DEFAULT_RESOURCES_ROOT;

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
