//! Admission parity: a set may run only what a Pod in its namespace could. Pure.
//!
//! The kubelet starts a static pod whatever the API server thinks of its mirror pod (a mirror
//! pod that Pod Security or a policy rejects only leaves the pod running unseen), so the
//! operator asks first: before any node is handed a new revision, the mirror pod the kubelet
//! will publish is submitted as a server-side dry-run create, and whatever the cluster's
//! admission chain answers — Pod Security, ValidatingAdmissionPolicies, webhooks, LimitRanger,
//! ResourceQuota, and the API server's full Pod validation — is what the set gets.
//!
//! **Once per revision, not per node.** The mirror pods of one revision differ only in their
//! name (`<set>-<node>`), `spec.nodeName` and owner (the Node). Pod Security, LimitRanger,
//! ResourceQuota and the Pod validation do not look at which node a pod is bound to, and
//! neither do the policies clusters commonly run; checking each of 5,000 nodes would cost
//! 5,000 requests per rollout for the same answer. The dry run names the first selected node
//! (by name). A policy that judges pods by their node name sees only that one.
//!
//! **Verdicts are remembered** per (set, revision, namespace labels) for [`VERDICT_TTL`]: a
//! rollout's many reconciles ask once; a change of the namespace's labels (its Pod Security
//! level) asks again at once; a policy added to the cluster is seen within the TTL.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use serde_json::{json, Value};
use staticpodset_api::keys::kubelet::{CONFIG_HASH, CONFIG_MIRROR, CONFIG_SOURCE};
use staticpodset_api::SetKey;

use crate::node_match::NodeSelector;

/// How long a verdict is reused before the admission chain is asked again.
pub const VERDICT_TTL: Duration = Duration::from_secs(600);
/// The annotation the kubelet stamps with when it first saw the static pod.
const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

/// What the cluster's admission chain says of a set's mirror pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It would be created.
    Admitted,
    /// It would be refused; the API server's own message (it names the policy or field).
    Denied(String),
}

/// The mirror pod the kubelet publishes for `manifest` on `node`: the manifest's metadata and
/// spec, named `<pod>-<node>`, bound to the node, owned by the Node, with the kubelet's
/// `kubernetes.io/config.*` annotations (the hash stands in for the kubelet's own, which only
/// the kubelet computes).
pub fn mirror_pod(manifest: &Value, revision: &str, node: &Node) -> Value {
    let node_name = node.name_any();
    let mut pod = manifest.clone();
    if let Some(object) = pod.as_object_mut() {
        object.remove("status");
    }
    let pod_name = manifest
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    pod["metadata"]["name"] = json!(format!("{pod_name}-{node_name}"));
    let annotations = &mut pod["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[CONFIG_HASH] = json!(revision);
    annotations[CONFIG_MIRROR] = json!(revision);
    annotations[CONFIG_SOURCE] = json!("file");
    annotations[CONFIG_SEEN] = json!("1970-01-01T00:00:00Z");
    let mut owner = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "name": node_name,
        "controller": true,
    });
    if let Some(uid) = &node.metadata.uid {
        owner["uid"] = json!(uid);
    }
    pod["metadata"]["ownerReferences"] = json!([owner]);
    pod["spec"]["nodeName"] = json!(node_name);
    pod
}

/// The node the dry run names: the first by name that the selector matches; `None` when it
/// matches none (then no node is handed anything, and the check waits for one).
pub fn representative_node<'a>(
    selector: &NodeSelector,
    nodes: &'a [std::sync::Arc<Node>],
) -> Option<&'a Node> {
    nodes
        .iter()
        .filter(|n| selector.matches_node(n))
        .min_by_key(|n| n.name_any())
        .map(|n| &**n)
}

/// What the API server's refusal of the dry run means (success is [`Verdict::Admitted`]);
/// `None` when it gives no verdict (the request failed, or the operator may not create pods),
/// which the caller reports as an error.
///
/// Denials come as 400 (an admission webhook), 403 (Pod Security, ResourceQuota — named after
/// the pod), or 422 (validation, ValidatingAdmissionPolicies). A 403 that names no object is
/// RBAC refusing the operator itself, not a verdict on the pod. AlreadyExists means the pod
/// passed admission and only storage refused it (the mirror pod of a running revision has the
/// same name), so it is admitted.
pub fn classify(error: &kube::Error) -> Option<Verdict> {
    let kube::Error::Api(status) = error else {
        return None;
    };
    if status.is_already_exists() {
        return Some(Verdict::Admitted);
    }
    let names_the_pod = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
    match status.code {
        400 | 422 => Some(Verdict::Denied(status.message.clone())),
        403 if names_the_pod => Some(Verdict::Denied(status.message.clone())),
        _ => None,
    }
}

/// A fingerprint of a namespace's labels (its Pod Security level, and what policies select).
pub fn labels_fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    let mut h = DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

/// What a verdict was given for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VerdictKey {
    /// The set.
    pub set: SetKey,
    /// The revision checked.
    pub revision: String,
    /// [`labels_fingerprint`] of the namespace at the time.
    pub namespace_labels: u64,
}

/// Verdicts remembered for [`VERDICT_TTL`].
#[derive(Debug, Default)]
pub struct VerdictCache {
    verdicts: Mutex<HashMap<VerdictKey, (Verdict, Instant)>>,
}

impl VerdictCache {
    /// The verdict for `key`, if given less than [`VERDICT_TTL`] before `now`.
    pub fn get(&self, key: &VerdictKey, now: Instant) -> Option<Verdict> {
        let verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        verdicts
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < VERDICT_TTL)
            .map(|(verdict, _)| verdict.clone())
    }

    /// Remembers a verdict; forgets the expired ones and the set's other verdicts (its older
    /// revisions or namespace labels), so the cache holds about one entry per set.
    pub fn put(&self, key: VerdictKey, verdict: Verdict, now: Instant) {
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        verdicts.retain(|k, (_, at)| {
            k.set != key.set && now.saturating_duration_since(*at) < VERDICT_TTL
        });
        verdicts.insert(key, (verdict, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::core::response::StatusDetails;
    use kube::core::Status;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_mirror_pod_is_what_the_kubelet_publishes() {
        let rendered =
            crate::render::render("ns", "vip", &crate::fixtures::template("img")).unwrap();
        let pod = mirror_pod(&rendered.manifest, &rendered.revision, &node("cp-1"));
        assert_eq!(pod["metadata"]["name"], "vip-cp-1");
        assert_eq!(pod["metadata"]["namespace"], "ns");
        assert_eq!(pod["spec"]["nodeName"], "cp-1");
        assert_eq!(pod["spec"]["containers"][0]["image"], "img");
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations[CONFIG_MIRROR], rendered.revision.as_str());
        assert_eq!(annotations[CONFIG_SOURCE], "file");
        assert_eq!(annotations["staticpods.dev/set"], "ns/vip");
        assert_eq!(
            annotations["staticpods.dev/revision"],
            rendered.revision.as_str()
        );
        assert_eq!(pod["metadata"]["labels"]["staticpods.dev/set-name"], "vip");
        let owner = &pod["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str()),
            (Some("Node"), Some("cp-1"))
        );
        assert_eq!(owner["uid"], "uid-cp-1");
        // It parses as a Pod: what the dry run sends.
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
        assert_eq!(typed.spec.unwrap().node_name.as_deref(), Some("cp-1"));
    }

    fn api_error(code: u16, reason: &str, name: Option<&str>) -> kube::Error {
        let mut status = Status::failure(&format!("{reason} message"), reason);
        status.code = code;
        status.details = name.map(|n| {
            serde_json::from_value::<StatusDetails>(serde_json::json!({"name": n, "kind": "pods"}))
                .unwrap()
        });
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn answers_become_verdicts() {
        assert_eq!(
            classify(&api_error(409, "AlreadyExists", Some("vip-a"))),
            Some(Verdict::Admitted)
        );
        for (code, reason) in [(400, "BadRequest"), (422, "Invalid"), (403, "Forbidden")] {
            assert_eq!(
                classify(&api_error(code, reason, Some("vip-a"))),
                Some(Verdict::Denied(format!("{reason} message"))),
                "{code}"
            );
        }
        // RBAC refusing the operator names no object: no verdict on the pod.
        assert_eq!(classify(&api_error(403, "Forbidden", None)), None);
        assert_eq!(
            classify(&api_error(500, "InternalError", Some("vip-a"))),
            None
        );
        assert_eq!(classify(&api_error(429, "TooManyRequests", None)), None);
    }

    #[test]
    fn the_first_selected_node_by_name_is_named() {
        let nodes: Vec<std::sync::Arc<Node>> = ["c", "a", "b"]
            .iter()
            .map(|n| std::sync::Arc::new(node(n)))
            .collect();
        let all = NodeSelector::default();
        assert_eq!(representative_node(&all, &nodes).unwrap().name_any(), "a");
        assert!(representative_node(&all, &[]).is_none());
    }

    #[test]
    fn verdicts_are_kept_per_revision_and_labels_for_a_while() {
        let cache = VerdictCache::default();
        let key = |revision: &str, labels: u64| VerdictKey {
            set: SetKey::new("ns", "vip"),
            revision: revision.into(),
            namespace_labels: labels,
        };
        let t0 = Instant::now();
        cache.put(key("r1", 1), Verdict::Admitted, t0);
        assert_eq!(cache.get(&key("r1", 1), t0), Some(Verdict::Admitted));
        assert_eq!(cache.get(&key("r1", 2), t0), None, "labels changed");
        assert_eq!(cache.get(&key("r2", 1), t0), None, "another revision");
        assert_eq!(cache.get(&key("r1", 1), t0 + VERDICT_TTL), None, "expired");
        // A new verdict for the set replaces its old ones.
        cache.put(key("r2", 1), Verdict::Denied("no".into()), t0);
        assert_eq!(cache.get(&key("r1", 1), t0), None);
        assert_eq!(
            cache.get(&key("r2", 1), t0),
            Some(Verdict::Denied("no".into()))
        );
        let mut a = BTreeMap::new();
        a.insert(
            "pod-security.kubernetes.io/enforce".to_string(),
            "restricted".to_string(),
        );
        assert_ne!(labels_fingerprint(&a), labels_fingerprint(&BTreeMap::new()));
    }
}
