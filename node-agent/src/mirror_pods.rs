//! What a mirror pod tells about the static pod the kubelet runs. Pure: Pod in, report out; and
//! [`NodePods`], the node's pods as one sync sees them.
//!
//! The kubelet copies the manifest's annotations onto the mirror pod, so the revision annotation the
//! agent wrote comes back on the mirror pod once the kubelet runs that content.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use staticpodset_api::keys::{kubelet, ANNOTATION_REVISION, ANNOTATION_SET};
use staticpodset_api::{MirrorPodReport, SetKey};

use crate::manifest_dir::PodKey;

/// The mirror pod the kubelet creates for static pod `pod` on `node`: `<name>-<node>`, with the node
/// name lowercased as the kubelet does.
pub fn mirror_pod_key(pod: &PodKey, node: &str) -> PodKey {
    PodKey {
        namespace: pod.namespace.clone(),
        name: format!("{}-{}", pod.name, node.to_lowercase()),
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether `pod` is a mirror pod (an API pod that merely reflects a static pod).
pub fn is_mirror_pod(pod: &Pod) -> bool {
    annotation(pod, kubelet::CONFIG_MIRROR).is_some()
}

/// Whether `pod` is a mirror pod of a StaticPodSet manifest; only those are worth a sync.
pub fn is_ours(pod: &Pod) -> bool {
    is_mirror_pod(pod) && annotation(pod, ANNOTATION_SET).is_some()
}

/// The report for the mirror pod of set `set` (`<namespace>/<name>`), or `None` if `pod` is not
/// one: an ordinary pod that happens to have the name, or the mirror of someone else's static pod
/// (kubeadm's, say), says nothing about ours.
pub fn mirror_report(
    pod: &Pod,
    set: &str,
    written_revision: Option<&str>,
) -> Option<MirrorPodReport> {
    if !is_mirror_pod(pod) || annotation(pod, ANNOTATION_SET) != Some(set) {
        return None;
    }
    let revision = annotation(pod, ANNOTATION_REVISION).map(str::to_owned);
    let status = pod.status.as_ref();
    let ready_condition = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_condition.is_some_and(|c| c.status == "True");
    let restart_count = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    Some(MirrorPodReport {
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        up_to_date: written_revision.is_some() && revision.as_deref() == written_revision,
        revision,
        config_hash: annotation(pod, kubelet::CONFIG_HASH).map(str::to_owned),
        ready,
        ready_since: if ready {
            ready_condition.and_then(|c| c.last_transition_time.clone())
        } else {
            None
        },
        restart_count,
    })
}

/// The pods bound to this node as the watch showed them when a sync began, by namespace/name: the
/// plain data the sync reads mirror pods from.
#[derive(Debug, Clone, Default)]
pub struct NodePods {
    by_key: BTreeMap<PodKey, Arc<Pod>>,
}

impl NodePods {
    /// A snapshot of `pods` (a pod without a name is left out: no mirror pod lacks one).
    pub fn new(pods: impl IntoIterator<Item = Arc<Pod>>) -> Self {
        let by_key = pods
            .into_iter()
            .filter_map(|pod| {
                let key = PodKey {
                    namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                    name: pod.metadata.name.clone()?,
                };
                Some((key, pod))
            })
            .collect();
        Self { by_key }
    }

    /// The pod `key`, if the node has it.
    pub fn get(&self, key: &PodKey) -> Option<Arc<Pod>> {
        self.by_key.get(key).cloned()
    }

    /// Whether the kubelet runs set `set`'s pod from its URL source: one of our mirror pods
    /// names the set and says `kubernetes.io/config.source: http`.
    pub fn runs_from_url(&self, set: &SetKey) -> bool {
        let owner = set.to_string();
        self.by_key.values().any(|pod| {
            is_ours(pod)
                && annotation(pod, ANNOTATION_SET) == Some(owner.as_str())
                && annotation(pod, kubelet::CONFIG_SOURCE) == Some("http")
        })
    }

    /// Whether the pod named like set `set` on `node` (its mirror pod when the set's pod is
    /// named after it) comes from the kubelet's URL source.
    pub fn mirror_from_url(&self, node: &str, set: &SetKey) -> bool {
        let key = mirror_pod_key(
            &PodKey {
                namespace: set.namespace.clone(),
                name: set.name.clone(),
            },
            node,
        );
        self.by_key
            .get(&key)
            .is_some_and(|p| annotation(p, kubelet::CONFIG_SOURCE) == Some("http"))
    }

    /// Whether the kubelet runs static pod `pod` of set `set` on `node`: its mirror pod is there
    /// and names the set.
    pub fn runs(&self, node: &str, set: &SetKey, pod: &PodKey) -> bool {
        self.by_key
            .get(&mirror_pod_key(pod, node))
            .is_some_and(|p| mirror_report(p, &set.to_string(), None).is_some())
    }

    /// The set and config hash each of our mirror pods names (configuration files a running pod
    /// mounts).
    pub fn config_hashes(&self) -> impl Iterator<Item = (SetKey, Option<&str>)> + '_ {
        self.by_key.values().filter(|p| is_ours(p)).filter_map(|p| {
            let set = SetKey::parse(annotation(p, ANNOTATION_SET)?)?;
            Some((
                set,
                annotation(p, staticpodset_api::config_files::CONFIG_HASH),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SET: &str = "kube-system/vip";

    fn mirror(revision: &str, ready: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "vip-node-1",
                "namespace": "kube-system",
                "uid": "u-1",
                "annotations": {
                    "kubernetes.io/config.mirror": "h1",
                    "kubernetes.io/config.hash": "h1",
                    "staticpods.dev/set": "kube-system/vip",
                    "staticpods.dev/revision": revision,
                },
            },
            "status": {
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-02T03:04:05Z"},
                ],
                "containerStatuses": [
                    {"name": "a", "image": "i", "imageID": "", "ready": true, "restartCount": 2},
                    {"name": "b", "image": "i", "imageID": "", "ready": true, "restartCount": 3},
                ],
            },
        }))
        .expect("pod")
    }

    #[test]
    fn mirror_pod_name_follows_the_kubelet() {
        let key = PodKey {
            namespace: "kube-system".into(),
            name: "vip".into(),
        };
        assert_eq!(mirror_pod_key(&key, "Node-1").name, "vip-node-1");
    }

    #[test]
    fn reports_a_ready_up_to_date_mirror() {
        let report = mirror_report(&mirror("r1", "True"), SET, Some("r1")).expect("mirror");
        assert_eq!(report.name, "vip-node-1");
        assert_eq!(report.uid, "u-1");
        assert_eq!(report.revision.as_deref(), Some("r1"));
        assert_eq!(report.config_hash.as_deref(), Some("h1"));
        assert!(report.up_to_date);
        assert!(report.ready);
        assert_eq!(
            report.ready_since.map(|t| t.0.to_string()),
            Some("2026-01-02T03:04:05Z".into())
        );
        assert_eq!(report.restart_count, 5);
    }

    #[test]
    fn an_old_revision_or_unready_pod_says_so() {
        let report = mirror_report(&mirror("r1", "False"), SET, Some("r2")).expect("mirror");
        assert!(!report.up_to_date);
        assert!(!report.ready);
        assert_eq!(report.ready_since, None);
        assert!(
            !mirror_report(&mirror("r1", "True"), SET, None)
                .expect("mirror")
                .up_to_date
        );
    }

    #[test]
    fn an_ordinary_pod_is_no_mirror() {
        let mut pod = mirror("r1", "True");
        pod.metadata.annotations = None;
        assert_eq!(mirror_report(&pod, SET, Some("r1")), None);
        assert!(!is_ours(&pod));
        assert!(is_ours(&mirror("r1", "True")));
    }

    #[test]
    fn another_sets_or_a_foreign_mirror_is_not_ours() {
        assert_eq!(
            mirror_report(&mirror("r1", "True"), "kube-system/other", Some("r1")),
            None
        );
        let mut kubeadm = mirror("r1", "True");
        if let Some(a) = kubeadm.metadata.annotations.as_mut() {
            a.remove(ANNOTATION_SET);
        }
        assert_eq!(mirror_report(&kubeadm, SET, None), None);
    }
}
