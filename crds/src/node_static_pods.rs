//! The `NodeStaticPods` kind: what one node must run, and what its agent observed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The static pods one node must run, written by the operator.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "staticpods.dev",
    version = "v1alpha1",
    kind = "NodeStaticPods",
    plural = "nodestaticpods",
    shortname = "nsp",
    status = "NodeStaticPodsStatus",
    doc = "The static pods one node must run. There is one per node, named after the node; the operator writes its spec and only that node's agent reads it, so each agent receives exactly what concerns its own node. Each entry names a StaticPodRevision, which holds the manifest. The agent reports what it wrote and what the kubelet runs in the status.",
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.summary.assigned"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.summary.ready"}"#,
    printcolumn = r#"{"name":"Problems","type":"integer","jsonPath":".status.summary.problems"}"#,
    printcolumn = r#"{"name":"Last-Report","type":"date","jsonPath":".status.lastSyncTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeStaticPodsSpec {
    /// One entry per StaticPodSet that selects this node.
    // A map keyed by set: the API server rejects a second entry for a set, which is what makes
    // the operator's append of an entry safe when its cache lags behind its own writes.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["setNamespace", "setName"]))]
    pub pods: Vec<AssignedPod>,
}

/// One static pod a node must run: one StaticPodSet at one revision. The manifest itself is in
/// the StaticPodRevision the entry names, so that a node object stays small however many sets
/// select the node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignedPod {
    /// Namespace of the StaticPodSet (and of the static pod, and of its StaticPodRevision).
    pub set_namespace: String,
    /// Name of the StaticPodSet (and of the static pod).
    pub set_name: String,
    /// The revision (content hash) to run: the `hash` of the StaticPodRevision `revisionName`,
    /// also stamped into its manifest as the annotation `staticpods.dev/revision`.
    pub revision: String,
    /// The StaticPodRevision in `setNamespace` whose manifest the node runs
    /// (`<set name>-<revision>`). The agent reads it once and keeps it: revisions never change.
    // Defaulted so that entries written before revisions existed still parse; the agent writes
    // nothing for an entry without it, and the operator rewrites such entries.
    #[serde(default)]
    pub revision_name: String,
    /// The full content digest of the revision's manifest (lowercase hex SHA-256, of which
    /// `revision` is the first 10 characters), from the operator's own rendering or from the
    /// StaticPodRevision it created. The agent writes or serves the manifest only if it has this
    /// digest: whoever can create StaticPodRevisions cannot make the node run a pod the operator
    /// did not render. Absent for revisions from operators that did not record a digest; the
    /// agent then checks the 10-character `revision` only, which a determined forger can match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub digest: Option<String>,
    /// The file name in the kubelet's staticPodPath.
    pub file_name: String,
    /// When the node was handed `revision`: the start of its progress deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_time: Option<Time>,
    /// The last revision of the set this node failed (did not become Ready at within the set's
    /// progressDeadlineSeconds), and why. Kept until the node becomes available at a revision the
    /// set asks for, so a user sees per node what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<RevisionFailure>,
    /// Present when the set turns node-local fallback on (`spec.nodeFallback`): how long (seconds)
    /// after writing `revision` the agent waits for it to become healthy before, with the API
    /// server unreachable, it writes back the revision that last ran Ready on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_deadline_seconds: Option<i32>,
    /// Present when the set updates with surge (`maxSurge`): a new revision is written beside
    /// the running one under the set's other pod name, and the old pod is removed once the new
    /// one has been Ready for this many seconds (the set's minReadySeconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surge_min_ready_seconds: Option<i32>,
}

/// A revision that failed on a node.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionFailure {
    /// The revision (content hash) that failed.
    pub revision: String,
    /// CamelCase reason, e.g. `ProgressDeadlineExceeded`.
    pub reason: String,
    /// What happened, for a human.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the failure was recorded.
    pub time: Time,
}

/// What the node's agent observed, written by the agent only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStaticPodsStatus {
    /// The spec generation the agent last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the agent last wrote a changed report. The agent writes its status only when the
    /// report changes (no heartbeat), so a node that runs steadily keeps an old time; the node's
    /// liveness is its Node's `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// Counts over `pods`, for `kubectl get`.
    #[serde(default)]
    pub summary: NodeSummary,
    /// How the agent hands this node's static pods to the kubelet: `File` (manifests in the
    /// kubelet's staticPodPath), `URL` (served to the kubelet's staticPodURL) or `Both` (each
    /// set through the one its template's `staticpods.dev/manifest-source` annotation names,
    /// files by default). Absent from agents that only write files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_source: Option<ManifestSource>,
    /// One report per assigned pod, and per owned manifest still being removed. Replaced
    /// whole by every report.
    // Atomic: the agent is the list's only writer and always sends all of it, so ownership per
    // field buys nothing, and its managedFields would be a quarter of the object, which every
    // write and watch event of it carries.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub pods: Vec<PodReport>,
}

/// Counts over a node's pod reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Pods assigned to the node.
    #[serde(default)]
    pub assigned: i32,
    /// Pods whose mirror pod runs the assigned revision and is Ready.
    #[serde(default)]
    pub ready: i32,
    /// Pods with a conflict, write error, or missing mirror pod.
    #[serde(default)]
    pub problems: i32,
}

/// The state of one set's static pod on this node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    /// Namespace of the StaticPodSet.
    pub set_namespace: String,
    /// Name of the StaticPodSet.
    pub set_name: String,
    /// Where the manifest stands on disk.
    pub phase: ManifestPhase,
    /// The revision the agent wrote into the kubelet's directory, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_revision: Option<String>,
    /// The mirror pod the kubelet created for the static pod, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_pod: Option<MirrorPodReport>,
    /// During a surge update (`maxSurge`), the mirror pod of the revision the node ran before,
    /// which keeps running beside the new pod until the new one is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_mirror_pod: Option<MirrorPodReport>,
    /// Where the agent hands this pod to the kubelet: `File` or `URL`. Absent while it hands it
    /// over nowhere (pending, conflict) and from agents that only write files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ManifestSource>,
    /// Why the pod is not where it should be, in words for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Set when the agent gave up the entry's revision on its own and wrote back the revision
    /// that last ran Ready here (node-local fallback); kept while the entry names that revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackReport>,
}

/// A node-local fallback: the agent put a revision back without the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackReport {
    /// The revision given up: the one the node's entry names.
    pub from_revision: String,
    /// The revision written back: the one that last ran Ready on this node.
    pub to_revision: String,
    /// When the agent fell back.
    pub time: Time,
    /// Why, for a human: what the container runtime showed of the given-up revision.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Through which kubelet source static pods reach a node.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ManifestSource {
    /// A manifest file in the kubelet's `staticPodPath`.
    File,
    /// The pod list the node agent serves to the kubelet's `staticPodURL`.
    #[serde(rename = "URL")]
    Url,
    /// Both sources; each pod goes through exactly one of them.
    Both,
}

/// Where a manifest stands on the node's disk (or, for the URL source, in what the agent serves).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ManifestPhase {
    /// The manifest is in the directory (or served to the kubelet's URL source) with the
    /// assigned content.
    Written,
    /// Not written yet.
    #[default]
    Pending,
    /// A file or pod the agent does not own has the same file name or pod name; nothing was written.
    Conflict,
    /// Writing or removing failed; see the message.
    Error,
    /// The set no longer selects this node; the manifest is being removed.
    Removing,
}

/// What the mirror pod shows of the static pod the kubelet runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorPodReport {
    /// The mirror pod's name, `<set name>-<node name>` (`<set name>-surge-<node name>` for the
    /// set's surge name).
    pub name: String,
    /// The mirror pod's UID.
    pub uid: String,
    /// The revision annotation on the mirror pod: the revision the kubelet runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The kubelet's `kubernetes.io/config.hash` for the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Whether the mirror pod runs the revision the agent wrote.
    #[serde(default)]
    pub up_to_date: bool,
    /// Whether the pod's Ready condition is True.
    #[serde(default)]
    pub ready: bool,
    /// Since when the pod has been Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Time>,
    /// Container restarts summed over the pod's containers.
    #[serde(default)]
    pub restart_count: i32,
}

/// Schema of an arbitrary JSON object kept as it is (a rendered Pod manifest, a pod template).
pub fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
