//! Configuration files on the node, the pure part: the data of a set's ConfigMap and Secret
//! volumes as the operator's bundle Secret carries it, where a manifest expects it, and which
//! directories nothing needs any more (see `staticpodset_api::config_files`). The directory
//! itself is [`crate::resources_dir`]; reading bundles and writing them is [`crate::config_bundles`].
//!
//! Directories are pruned only inside a set directory carrying the owner marker, and only names
//! that are config hashes, never one that an assigned, written, served or running pod names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use staticpodset_api::config_files::{
    is_config_hash, is_safe_file_name, split_data_key, volume_path, Layout, ANNOTATION_VOLUMES,
    CONFIG_HASH, DEFAULT_RESOURCES_ROOT,
};
use staticpodset_api::SetKey;

use crate::dir_plan::{owner, Assignment, Unavailable};
use crate::manifest_dir::DirScan;
use crate::served_pods::ServedPods;

/// A bundle Secret that is not what the manifest needs.
#[derive(Debug, thiserror::Error)]
#[error("bundle {bundle}: {problem}")]
pub struct BundleError {
    /// The bundle Secret's name.
    pub bundle: String,
    /// What is wrong with it.
    pub problem: String,
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
pub fn files_of(bundle: &Secret, hash: &str) -> Result<Files, BundleError> {
    let name = bundle.metadata.name.clone().unwrap_or_default();
    let fail = |problem: String| BundleError {
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

/// A set's configuration files at one config hash: `(set, hash)`.
pub type ConfigKey = (SetKey, String);

/// Whether the configuration files of each [`ConfigKey`] a manifest needs are in place this sync
/// (written, or already on disk); `Err` says why not.
pub type ConfigReadiness = BTreeMap<ConfigKey, Result<(), String>>;

/// The configuration files the available manifests of `assigned` need, each once.
pub fn needed(assigned: &[Assignment]) -> BTreeSet<ConfigKey> {
    assigned
        .iter()
        .filter_map(|a| {
            let hash = config_hash(a.manifest.as_ref().ok()?)?;
            Some((SetKey::of(&a.entry), hash.to_owned()))
        })
        .collect()
}

/// The configuration-files gate: a manifest with configuration files is pointed at them when they
/// are in place ([`localize`]); when they are not, the assignment becomes unavailable with the
/// reason, so its set keeps what it runs (nothing written, nothing removed) until they are.
/// `host_root` is the resources directory as the kubelet sees it.
pub fn gate(
    assigned: Vec<Assignment>,
    ready: &ConfigReadiness,
    host_root: &str,
) -> Vec<Assignment> {
    assigned
        .into_iter()
        .map(|mut assignment| {
            let Ok(manifest) = &assignment.manifest else {
                return assignment;
            };
            let Some(hash) = config_hash(manifest) else {
                return assignment;
            };
            let set = SetKey::of(&assignment.entry);
            let localized = match ready.get(&(set.clone(), hash.to_owned())) {
                Some(Ok(())) => Ok(Arc::new(localize(manifest, &set, hash, host_root))),
                Some(Err(why)) => Err(Unavailable::Waiting(why.clone())),
                // Every needed key is prepared before the gate; a missing one is not in place.
                None => Err(Unavailable::Waiting(format!(
                    "the configuration files of set {set} at {hash} are not prepared yet"
                ))),
            };
            assignment.manifest = localized;
            assignment
        })
        .collect()
}

/// Per set, the config hashes something on the node names, for [`cleanup`]: the assigned
/// manifests (`assigned`, after [`gate`]; an unavailable one makes its set unknown, `None`), the
/// served ones, the running (mirror) pods as `(set, hash)` and the owned manifests on disk.
pub fn referenced<'a>(
    assigned: &[Assignment],
    served: &ServedPods,
    running: impl IntoIterator<Item = (SetKey, Option<&'a str>)>,
    on_disk: &DirScan,
) -> BTreeMap<SetKey, Option<BTreeSet<String>>> {
    let mut referenced: BTreeMap<SetKey, Option<BTreeSet<String>>> = BTreeMap::new();
    let mut name = |set: SetKey, hash: Option<&str>| {
        let entry = referenced
            .entry(set)
            .or_insert_with(|| Some(BTreeSet::new()));
        if let (Some(known), Some(hash)) = (entry.as_mut(), hash) {
            known.insert(hash.to_string());
        }
    };
    let mut unknown = Vec::new();
    for a in assigned {
        match &a.manifest {
            Ok(m) => name(SetKey::of(&a.entry), config_hash(m)),
            Err(_) => unknown.push(SetKey::of(&a.entry)),
        }
    }
    for (set, s) in served {
        name(set.clone(), config_hash(&s.manifest));
    }
    for (set, hash) in running {
        name(set, hash);
    }
    for file in &on_disk.files {
        if let Some(set) = owner(file) {
            name(set, file.info.config_hash.as_deref());
        }
    }
    // Whatever else names its files, a set whose manifest the agent does not have may need any.
    for set in unknown {
        referenced.insert(set, None);
    }
    referenced
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::ByteString;
    use serde_json::json;
    use staticpodset_api::config_files::{ConfigKind, VolumeLayout};

    pub(crate) fn key(set: &str) -> SetKey {
        SetKey::new("ns", set)
    }

    /// A bundle of set `ns/web` at `hash`: volume `conf` (ConfigMap, `index.html`) and `tls`
    /// (Secret, `tls.key`).
    pub(crate) fn bundle(hash: &str) -> Secret {
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
}
