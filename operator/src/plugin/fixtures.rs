//! Small constructors of the objects the plugin's pure modules read, shared by their tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use staticpodset_api::{
    AssignedPod, ManifestSource, MirrorPodReport, NodeStaticPods, NodeStaticPodsSpec,
    NodeStaticPodsStatus, PodReport, RevisionFailure, StaticPodRevision, StaticPodRevisionSpec,
    StaticPodSet, StaticPodSetSpec, StaticPodSetStatus,
};

/// A point in time, `secs` after the epoch.
pub fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

/// Set `ns/web` at `generation`, its status observed at `observed`, `updated` of `desired` nodes
/// available at revision `rev-new`, with these conditions.
pub fn mk_set(
    generation: i64,
    observed: i64,
    (updated, desired): (i32, i32),
    conditions: Vec<Condition>,
) -> StaticPodSet {
    let mut set = StaticPodSet::new("web", StaticPodSetSpec::default());
    set.metadata.namespace = Some("ns".into());
    set.metadata.generation = Some(generation);
    set.status = Some(StaticPodSetStatus {
        observed_generation: Some(observed),
        desired_number_scheduled: desired,
        updated_number_scheduled: updated,
        update_revision: Some("rev-new".into()),
        update_revision_number: Some(3),
        conditions,
        ..Default::default()
    });
    set
}

/// A condition of `type_`, written for `generation`.
pub fn mk_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation),
        last_transition_time: at(0),
    }
}

/// Node `name`'s object with the entry of `ns/web` at `target` and, when `running` is given, a
/// report whose mirror pod runs that revision, Ready or not.
pub fn mk_node(name: &str, target: &str, running: Option<(&str, bool)>) -> NodeStaticPods {
    let mut object = NodeStaticPods::new(
        name,
        NodeStaticPodsSpec {
            pods: vec![AssignedPod {
                set_namespace: "ns".into(),
                set_name: "web".into(),
                revision: target.into(),
                revision_name: format!("web-{target}"),
                file_name: "staticpodset_ns_web.yaml".into(),
                ..Default::default()
            }],
        },
    );
    object.status = running.map(|(revision, ready)| NodeStaticPodsStatus {
        pods: vec![PodReport {
            set_namespace: "ns".into(),
            set_name: "web".into(),
            source: Some(ManifestSource::File),
            mirror_pod: Some(MirrorPodReport {
                name: format!("web-{name}"),
                revision: Some(revision.into()),
                ready,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    object
}

/// `object` with a failure of `revision` recorded on its entry of `ns/web`.
pub fn with_failure(mut object: NodeStaticPods, revision: &str, reason: &str) -> NodeStaticPods {
    object.spec.pods[0].last_failure = Some(RevisionFailure {
        revision: revision.into(),
        reason: reason.into(),
        message: "not Ready in time".into(),
        time: at(0),
    });
    object
}

/// Revision number `number` of `ns/web` with hash `hash`, created at `created` seconds, whose
/// template carries these annotations.
pub fn mk_revision(
    number: i64,
    hash: &str,
    created: i64,
    template_annotations: serde_json::Value,
) -> StaticPodRevision {
    StaticPodRevision {
        metadata: ObjectMeta {
            name: Some(format!("web-{hash}")),
            namespace: Some("ns".into()),
            creation_timestamp: Some(at(created)),
            ..Default::default()
        },
        spec: StaticPodRevisionSpec {
            set_name: "web".into(),
            revision: number,
            hash: hash.into(),
            template: serde_json::json!({
                "metadata": {"annotations": template_annotations},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            }),
            manifest: serde_json::json!({}),
            digest: None,
        },
    }
}
