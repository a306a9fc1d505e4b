//! The `StaticPodSet` kind: a pod template that selected nodes run as static pods.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a StaticPodSet runs and where: the pod template and the nodes that run it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "staticpods.dev",
    version = "v1alpha1",
    kind = "StaticPodSet",
    namespaced,
    shortname = "sps",
    status = "StaticPodSetStatus",
    doc = "A pod that every selected node runs as a kubelet static pod, so it keeps running while the API server is down. The operator renders the template into one manifest per node; each node's agent writes it into the kubelet's staticPodPath; the kubelet runs the pod and publishes it as the mirror pod `<set name>-<node name>` in the set's namespace. The name of a StaticPodSet must be a DNS-1123 label (lowercase letters, digits and '-', no dots) of at most 40 characters: it names the static pod, and the kubelet names the mirror pod `<set name>-<node name>` and uses that name, cut to 63 characters, as the pod's hostname. Every distinct rendered pod is kept as a numbered StaticPodRevision owned by the set (`kubectl get staticpodrevisions -l staticpods.dev/set-name=<set>`); annotating the set with `staticpods.dev/rollback-to: \"<revision number>\"` restores that revision's template. To redeploy an unchanged spec, change an annotation of the template, e.g. `staticpods.dev/restartedAt`. A new revision rolls out node by node within `spec.updateStrategy.rollingUpdate.maxUnavailable`; each node's target, running and last failed revision are in its NodeStaticPods object.",
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredNumberScheduled"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.currentNumberScheduled"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.numberReady"}"#,
    printcolumn = r#"{"name":"Up-to-date","type":"integer","jsonPath":".status.updatedNumberScheduled"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.numberAvailable"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StaticPodSetSpec {
    /// The pod every selected node runs. Its labels and annotations reach the mirror pods, so
    /// selectors work on them. The static pod is named after the set and lives in the set's
    /// namespace; the kubelet appends `-<node name>` for the mirror pod.
    /// Static pods cannot reference other API objects, so a template is rejected that sets
    /// serviceAccountName, automountServiceAccountToken: true, imagePullSecrets,
    /// ephemeralContainers or resourceClaims; that uses persistentVolumeClaim, ephemeral, csi,
    /// glusterfs or azureFile volumes, a secretRef in any volume, or secret, configMap,
    /// serviceAccountToken, clusterTrustBundle or podCertificate projections; or that takes env or
    /// envFrom from a Secret or ConfigMap. Files from the node go in hostPath volumes.
    /// configMap and secret volumes are the exception: they name a ConfigMap or Secret of the
    /// set's namespace whose data the node agent writes as files under
    /// /etc/kubernetes/static-pod-resources/<namespace>/<set>/<config hash>/<volume>/ (every key;
    /// items is not supported; files owned by root, mode defaultMode or 0644, Secrets 0600), and
    /// the static pod mounts that directory as a hostPath. The data is part of the revision: a
    /// change rolls out like a template change. A missing ConfigMap or Secret that is not
    /// optional holds the rollout (condition Valid=False, reason ConfigNotFound).
    /// Lists are bounded: 64 containers per list, 256 volumes, 512 env, 64 envFrom and 256 ports
    /// entries per container, 64 projected sources per volume.
    /// The fields below are those of a Pod: see `kubectl explain pod.spec` for their docs.
    pub template: PodTemplateSpec,

    /// Which nodes run the pod, by the Nodes' labels. Empty or absent selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// How many old revisions to keep for rollback, besides the one the set asks for and any
    /// revision a node is still assigned or still runs (those are never deleted). Default 10.
    /// History: `kubectl get staticpodrevisions -l staticpods.dev/set-name=<set>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: Option<i32>,

    /// How a new revision reaches the nodes: at most `maxUnavailable` targeted nodes unavailable
    /// at once, only nodes from `partition` on, optional automatic rollback of failed nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,

    /// How long (seconds) a node's pod must have been Ready at a revision before the node counts
    /// as available and the rollout moves on. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: Option<i32>,

    /// How long (seconds) a node handed a new revision has to become Ready at it. A node that
    /// misses it fails the revision: the rollout halts (no further node is handed it) and
    /// `Progressing` turns False with reason `ProgressDeadlineExceeded`, until the template
    /// changes. The clock does not run while the Node is NotReady. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i32>,

    /// Stops the rollout where it is: no node is handed another revision (a node new to the set
    /// gets the last healthy one). Failures are still detected and reported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,

    /// Lets each node's agent put the previous revision back on its own when a new revision does
    /// not become healthy on that node while the API server is unreachable: for pods the API
    /// server itself depends on (an etcd or API server proxy, a VIP manager), whose failure keeps
    /// the operator from rolling them back. Off by default. Health is judged from the container
    /// runtime, since mirror pods cannot be seen then; see docs/rollouts.md for the exact rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_fallback: Option<NodeFallback>,
}

/// Node-local fallback of a set: what a node's agent does alone when a new revision fails there
/// while the API server is unreachable.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFallback {
    /// Whether the agent may fall back. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// How long (seconds) after the agent wrote a new revision's manifest the revision has to
    /// become healthy on the node. If it is not healthy then and the API server cannot be
    /// reached, the agent writes back the revision that last ran Ready on the node and reports it
    /// once the API server answers; the operator then counts the node as failed for the new
    /// revision, as for progressDeadlineSeconds. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub deadline_seconds: Option<i32>,
}

/// The node fallback deadline when `spec.nodeFallback.deadlineSeconds` is not set.
pub const DEFAULT_FALLBACK_DEADLINE_SECONDS: i32 = 60;

/// How a new revision of a set is rolled out to its nodes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// Settings of the rolling update, the only strategy. The kubelet runs one pod of a name per
    /// node, so without maxSurge every update of a node is a short outage of that node, and these
    /// settings bound how many nodes are out at once; with maxSurge the new pod starts beside the
    /// old one under a second name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// The rolling update of a set's nodes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// How many targeted nodes may be unavailable at once during an update, counting nodes that
    /// were unavailable before it: an integer of at least 1, or a percentage of the targeted nodes
    /// ("25%", rounded up, at least one node). Default 1. A node is available when its Node is
    /// Ready and its mirror pod runs the node's revision and has been Ready for minReadySeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,

    /// Only nodes at this position or later, in the order of their names, are handed the new
    /// revision; the others keep theirs. With N targeted nodes, N-1 updates one node (a canary);
    /// 0 (the default) updates all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub partition: Option<i32>,

    /// When a node fails a revision (misses progressDeadlineSeconds) and is still not available,
    /// return it to the last revision that was healthy on every node (`status.currentRevision`).
    /// Default false: failed nodes stay as they are for a human to look at.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_rollback: bool,

    /// How many targeted nodes may run a second pod of the set at once during an update: an
    /// integer, or a percentage of the targeted nodes ("10%", rounded up). 0 or absent (the
    /// default) turns surge off. With surge, a node whose pod is available is updated without an
    /// outage: the new revision runs as a second static pod, `<set>-surge` (mirror pod
    /// `<set>-surge-<node>`, file `staticpodset_<namespace>_<set>_surge.yaml`), beside the old
    /// one, and the old pod is removed only once the new one has been Ready for minReadySeconds.
    /// The next update uses the other name again, so the two names alternate. Nodes whose pod is
    /// unavailable anyway are updated in place within maxUnavailable. Two pods of the set then
    /// share the node for a while, so a template with a hostPort (or, with hostNetwork, any
    /// container port, which becomes a hostPort) is refused; a hostNetwork pod must be able to
    /// run twice at once (listening with SO_REUSEPORT, say). Nodes that get the set through the
    /// kubelet's staticPodURL are updated in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
}

/// Old revisions kept when `spec.revisionHistoryLimit` is not set.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// The progress deadline when `spec.progressDeadlineSeconds` is not set (as for a Deployment).
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;

/// The observed state of a StaticPodSet, summed over its nodes. Per-node detail is on each node's
/// NodeStaticPods object (`kubectl get nodestaticpods`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticPodSetStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes the set selects: the nodes that should run the pod.
    #[serde(default)]
    pub desired_number_scheduled: i32,
    /// Selected nodes whose agent has written the current manifest into the kubelet's directory.
    #[serde(default)]
    pub number_written: i32,
    /// Selected nodes where the kubelet runs the pod, at any revision (there is a mirror pod).
    #[serde(default)]
    pub current_number_scheduled: i32,
    /// Selected nodes whose Node is Ready and whose pod is Ready, at any revision.
    #[serde(default)]
    pub number_ready: i32,
    /// Selected nodes that are available at the revision the set asks for (`updateRevision`):
    /// the mirror pod proves the kubelet runs it and has been Ready for minReadySeconds.
    #[serde(default)]
    pub updated_number_scheduled: i32,
    /// Selected nodes that are available: Node Ready, and the mirror pod runs the node's revision
    /// and has been Ready for minReadySeconds.
    #[serde(default)]
    pub number_available: i32,
    /// Selected nodes that are not available (`desiredNumberScheduled - numberAvailable`).
    #[serde(default)]
    pub number_unavailable: i32,
    /// Selected nodes that report a problem (a conflict, a write error, no mirror pod).
    #[serde(default)]
    pub number_misscheduled: i32,
    /// Nodes the selector matches that the set leaves out because the template does not
    /// tolerate their `NoSchedule` or `NoExecute` taints (as a DaemonSet would); not counted in
    /// `desiredNumberScheduled`. The `NodesExcluded` condition names them.
    #[serde(default)]
    pub number_excluded_by_taints: i32,
    /// The revision (a hash of the rendered pod) the set currently asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// The number of the StaticPodRevision `updateRevision` names, as `kubectl get
    /// staticpodrevisions` shows it and `staticpods.dev/rollback-to` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision_number: Option<i64>,
    /// The revision every selected node ran when the set was last fully up to date: equal to
    /// `updateRevision` once every node runs it, the previous revision while a change rolls out.
    /// Absent until the set was up to date once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// `Available`, `Progressing`, `Degraded` and `Valid`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
