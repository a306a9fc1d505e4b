//! Names StaticPodSet stamps on the objects and files it owns.
//!
//! They are the contract between the operator, the agent and the kubelet: the kubelet copies manifest
//! annotations and labels to the mirror pod, so what the agent stamps into a manifest comes back on the
//! mirror pod and proves which revision the kubelet runs.

/// The API group of every StaticPodSet kind.
pub const GROUP: &str = "staticpods.dev";

/// Annotation on a manifest (and so on its mirror pod): `<namespace>/<name>` of the owning set.
/// A manifest without it is never modified or deleted by the agent.
pub const ANNOTATION_SET: &str = "staticpods.dev/set";

/// Annotation on a manifest (and so on its mirror pod): the revision (content hash) it was rendered from.
pub const ANNOTATION_REVISION: &str = "staticpods.dev/revision";

/// Label on every static pod StaticPodSet renders: the owning set's name. Selects mirror pods by set.
pub const LABEL_SET_NAME: &str = "staticpods.dev/set-name";

/// Label on a Node (`file`, `url` or `both`) choosing how that node's agent hands static pods to
/// the kubelet, overriding the agent's `--manifest-source`. With `both`, the same key as an
/// annotation on a set's template (`file` or `url`) chooses the source of that set's pod.
pub const MANIFEST_SOURCE: &str = "staticpods.dev/manifest-source";

/// Finalizer the operator puts on a set so its manifests leave every node before the set is gone.
pub const FINALIZER: &str = "staticpods.dev/manifests";

/// Annotation a user puts on a set to roll it back: the value is a revision number (see
/// `kubectl get staticpodrevisions -l staticpods.dev/set-name=<set>`). The operator restores the
/// set's `spec.template` from that revision and removes the annotation.
pub const ANNOTATION_ROLLBACK_TO: &str = "staticpods.dev/rollback-to";

/// Annotation a user may put on a set's *template* (`spec.template.metadata.annotations`) to
/// redeploy an unchanged spec, like `kubectl rollout restart`: any new value is a new template,
/// so a new revision, and every node restarts its static pod. The operator gives it no meaning of
/// its own.
pub const ANNOTATION_RESTARTED_AT: &str = "staticpods.dev/restartedAt";

/// The name of the StaticPodRevision of set `set` with content hash `hash`: `<set>-<hash>`.
/// Set names have at most 40 characters and hashes 10, so the name is a valid object name.
pub fn revision_object_name(set: &str, hash: &str) -> String {
    format!("{set}-{hash}")
}

/// Every manifest file the agent owns starts with this; the rest is `<namespace>_<set>.yaml`.
/// Underscores cannot occur in namespaces or set names, so the name parses back unambiguously.
pub const FILE_PREFIX: &str = "staticpodset_";

/// Annotations the kubelet sets on static and mirror pods.
pub mod kubelet {
    /// The kubelet's hash of the static pod it runs; changes with every content change.
    pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
    /// Present only on mirror pods: the hash of the static pod they mirror.
    pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
    /// `file`, `http` or `api`.
    pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
}

/// The manifest file name for a set: stable for the set's whole life, since the kubelet hashes the
/// path into the pod's identity and a renamed file restarts the pod.
pub fn manifest_file_name(namespace: &str, set: &str) -> String {
    format!("{FILE_PREFIX}{namespace}_{set}.yaml")
}

/// Which of a set's two static pod names a manifest uses. A set updates with surge (`maxSurge`)
/// by starting the new revision under the name the running pod does not use, so the two pods
/// never share a name and the kubelet runs both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// The pod `<set>` in the file [`manifest_file_name`].
    Primary,
    /// The pod `<set>-surge` in the file `staticpodset_<namespace>_<set>_surge.yaml`.
    Surge,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::Primary => Slot::Surge,
            Slot::Surge => Slot::Primary,
        }
    }
}

/// The suffix of the surge slot's pod name and file name.
pub const SURGE_SUFFIX: &str = "surge";

/// The static pod name of set `set` in `slot`: `<set>` or `<set>-surge`.
pub fn slot_pod_name(set: &str, slot: Slot) -> String {
    match slot {
        Slot::Primary => set.to_string(),
        Slot::Surge => format!("{set}-{SURGE_SUFFIX}"),
    }
}

/// The manifest file name of set `set` in `slot`.
pub fn slot_file_name(namespace: &str, set: &str, slot: Slot) -> String {
    match slot {
        Slot::Primary => manifest_file_name(namespace, set),
        Slot::Surge => format!("{FILE_PREFIX}{namespace}_{set}_{SURGE_SUFFIX}.yaml"),
    }
}

/// Parses a file name written by [`slot_file_name`] back into `(namespace, set, slot)`.
/// Returns `None` for any file StaticPodSet does not own by name.
pub fn parse_slot_file_name(file: &str) -> Option<(&str, &str, Slot)> {
    let rest = file.strip_prefix(FILE_PREFIX)?.strip_suffix(".yaml")?;
    let (ns, set) = rest.split_once('_')?;
    let (set, slot) = match set.strip_suffix(SURGE_SUFFIX) {
        Some(set) if set.ends_with('_') => (&set[..set.len() - 1], Slot::Surge),
        _ => (set, Slot::Primary),
    };
    if ns.is_empty() || set.is_empty() || set.contains('_') {
        return None;
    }
    Some((ns, set, slot))
}

/// Parses a file name written by [`manifest_file_name`] or [`slot_file_name`] back into
/// `(namespace, set)`. Returns `None` for any file StaticPodSet does not own by name.
pub fn parse_manifest_file_name(file: &str) -> Option<(&str, &str)> {
    parse_slot_file_name(file).map(|(ns, set, _)| (ns, set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_file_names_round_trip() {
        for slot in [Slot::Primary, Slot::Surge] {
            let f = slot_file_name("kube-system", "vip", slot);
            assert_eq!(parse_slot_file_name(&f), Some(("kube-system", "vip", slot)));
        }
        assert_eq!(
            slot_file_name("ns", "vip", Slot::Surge),
            "staticpodset_ns_vip_surge.yaml"
        );
        assert_eq!(slot_pod_name("vip", Slot::Surge), "vip-surge");
        // A set named "surge" is a primary file, not an empty set's surge file.
        assert_eq!(
            parse_slot_file_name("staticpodset_ns_surge.yaml"),
            Some(("ns", "surge", Slot::Primary))
        );
        assert_eq!(parse_slot_file_name("staticpodset_ns__surge.yaml"), None);
        assert_eq!(parse_slot_file_name("staticpodset_ns_a_b_surge.yaml"), None);
    }

    #[test]
    fn file_names_round_trip() {
        let f = manifest_file_name("kube-system", "vip.manager");
        assert_eq!(f, "staticpodset_kube-system_vip.manager.yaml");
        assert_eq!(
            parse_manifest_file_name(&f),
            Some(("kube-system", "vip.manager"))
        );
    }

    #[test]
    fn revision_object_names() {
        assert_eq!(revision_object_name("vip", "0123456789"), "vip-0123456789");
        assert!(revision_object_name(&"s".repeat(40), "0123456789").len() <= 63);
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for f in [
            "kube-apiserver.yaml",
            ".staticpodset_a_b.yaml.tmp",
            "staticpodset_a_b.yaml.bak",
            "staticpodset__b.yaml",
            "staticpodset_a_.yaml",
            "staticpodset_a_b_c.yaml",
            "staticpodset_ab.yaml",
        ] {
            assert_eq!(parse_manifest_file_name(f), None, "{f}");
        }
    }
}
