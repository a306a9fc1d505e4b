//! Configuration files: the contract between the operator and the agent for ConfigMap and Secret
//! volumes of a set's template.
//!
//! Static pods cannot reference ConfigMaps or Secrets, so a set's `configMap` and `secret`
//! volumes never reach the kubelet as such. The operator reads their data, hashes it into a
//! *config hash*, copies it into one immutable **bundle** Secret per set and hash in the
//! operator's own namespace, and renders each such volume as a `hostPath` volume at
//! `<resources root>/<namespace>/<set>/<config hash>/<volume>`. Since the path holds the hash,
//! changed data is a changed manifest, so a new revision that rolls out like any template change.
//! The agent reads the bundle and writes the files before it writes the manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the operator's rendered manifests put configuration files, and the default of the
/// agent's `--resources-dir`. An agent whose node keeps them elsewhere (`--resources-host-dir`)
/// moves the paths of the volumes that StaticPodSet generated, and only those, when it writes the
/// manifest.
pub const DEFAULT_RESOURCES_ROOT: &str = "/etc/kubernetes/static-pod-resources";

/// Annotation on a rendered manifest (and so on its mirror pod) whose template has ConfigMap or
/// Secret volumes: the config hash. Also a label on the StaticPodRevision and on the bundle.
pub const CONFIG_HASH: &str = "staticpods.dev/config-hash";

/// Label on a bundle Secret: the namespace of the set it belongs to (the bundle lives in the
/// operator's namespace). The set's name is in `staticpods.dev/set-name`.
pub const LABEL_SET_NAMESPACE: &str = "staticpods.dev/set-namespace";

/// Annotation on a bundle Secret: a JSON object mapping each volume to its [`VolumeLayout`].
pub const ANNOTATION_VOLUMES: &str = "staticpods.dev/config-volumes";

/// File in `<resources root>/<namespace>/<set>/` that marks the directory as the agent's: the
/// agent prunes and removes only directories that carry it.
pub const OWNER_MARKER: &str = ".staticpodset";

/// Where a ConfigMap or Secret volume's files come from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigKind {
    /// A ConfigMap of the set's namespace.
    ConfigMap,
    /// A Secret of the set's namespace.
    Secret,
}

/// How one volume's files are laid out on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeLayout {
    /// Whether the data came from a ConfigMap or a Secret.
    pub kind: ConfigKind,
    /// The name of the ConfigMap or Secret.
    pub source: String,
    /// Permission bits of every file (the volume's `defaultMode`; 0644 for a ConfigMap, 0600 for
    /// a Secret). Files are owned by root; the directory is 0755, or 0700 for a Secret.
    pub mode: u32,
}

/// The mode of a volume's files when the template sets no `defaultMode`: Secrets are readable by
/// root only (the upstream default of 0644 suits a tmpfs inside a pod, not a node's disk).
pub fn default_mode(kind: ConfigKind) -> u32 {
    match kind {
        ConfigKind::ConfigMap => 0o644,
        ConfigKind::Secret => 0o600,
    }
}

/// The name of the bundle Secret of set `namespace/set` at config hash `hash`. Namespaces and set
/// names are DNS labels, so the dots make the name unambiguous.
pub fn bundle_name(namespace: &str, set: &str, hash: &str) -> String {
    format!("staticpodset.{namespace}.{set}.{hash}")
}

/// The directory holding every config hash of set `namespace/set` under `root`.
pub fn set_dir(root: &str, namespace: &str, set: &str) -> String {
    format!("{}/{namespace}/{set}", root.trim_end_matches('/'))
}

/// The directory of one volume at one config hash: the `hostPath` the rendered pod mounts.
pub fn volume_path(root: &str, namespace: &str, set: &str, hash: &str, volume: &str) -> String {
    format!("{}/{hash}/{volume}", set_dir(root, namespace, set))
}

/// The key in the bundle's data of file `key` of volume `volume`. Volume names are DNS labels (no
/// dots), so the first dot separates the two.
pub fn data_key(volume: &str, key: &str) -> String {
    format!("{volume}.{key}")
}

/// Splits a bundle data key into `(volume, file)`.
pub fn split_data_key(data_key: &str) -> Option<(&str, &str)> {
    let (volume, key) = data_key.split_once('.')?;
    (!volume.is_empty() && !key.is_empty()).then_some((volume, key))
}

/// Whether `name` is a file name the agent may create in a volume directory: what a ConfigMap or
/// Secret key may be (`[-._a-zA-Z0-9]+`, not `.` or `..`), so nothing escapes the directory.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `name` looks like a config hash (the directory names the agent may prune).
pub fn is_config_hash(name: &str) -> bool {
    name.len() == 10 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The volumes of a bundle, by volume name, from its [`ANNOTATION_VOLUMES`] annotation.
pub type Layout = BTreeMap<String, VolumeLayout>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_split_at_the_first_dot() {
        let k = data_key("conf", "app.yaml");
        assert_eq!(split_data_key(&k), Some(("conf", "app.yaml")));
        assert_eq!(split_data_key("nodot"), None);
        assert_eq!(split_data_key(".x"), None);
        assert_eq!(split_data_key("v."), None);
    }

    #[test]
    fn paths_and_names() {
        assert_eq!(
            volume_path(
                "/etc/kubernetes/static-pod-resources/",
                "ns",
                "web",
                "0123456789",
                "conf"
            ),
            "/etc/kubernetes/static-pod-resources/ns/web/0123456789/conf"
        );
        assert_eq!(
            bundle_name("ns", "web", "0123456789"),
            "staticpodset.ns.web.0123456789"
        );
    }

    #[test]
    fn file_names_cannot_escape() {
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(!is_safe_file_name(bad), "{bad:?}");
        }
        for good in ["app.yaml", "..data", "tls.crt", "A_b-c"] {
            assert!(is_safe_file_name(good), "{good:?}");
        }
        assert!(is_config_hash("0123456789"));
        assert!(!is_config_hash("012345678g"));
        assert!(!is_config_hash(".0123456789.tmp"));
    }
}
