//! Executing one [`NodeWrite`]: the only place the operator writes node objects' specs.
//!
//! Entries are written one of two ways, chosen with `--node-write-mode`:
//! - `apply` (the design): server-side apply, one field manager per set. `spec.pods` is a
//!   list-map keyed by (setNamespace, setName), so each set owns exactly its own entry and sets
//!   never contend. Requires the list-map markers on the CRD. Applies are not forced, except to
//!   take back fields of the set's own entry that someone else edited.
//! - `update` (fallback for a CRD without them): read the object, replace the set's entry,
//!   write the whole list back conditioned on the resourceVersion, retry on conflict.
//!
//! Removals are the same in both modes: a JSON patch that removes the entry at its index, guarded
//! by `test` operations on the entry's keys. It never creates an object, never conflicts with the
//! agent's status writes (no resourceVersion involved), and leaves no trace of the set's field
//! manager behind: an Apply manager whose last field is removed disappears from managedFields,
//! which would otherwise grow with every set that ever touched the node. (Applying without the
//! entry would also remove it, but on a live API server that left `spec` null when the set was
//! the last writer of the list, which the schema rejects.)
//!
//! Owner references are not written here: the node-objects loop owns them ([`node_owner_reference`]),
//! so a set's manager owns nothing but its entry.

use kube::api::{Patch, PatchParams};
use kube::core::Status;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};
use staticpodset_api::{AssignedPod, NodeStaticPods, SetKey};

use crate::error::{is_conflict, is_invalid, is_not_found};
use crate::planner::NodeWrite;
use crate::render::field_manager;
use crate::Error;

/// How set entries are written into node objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteMode {
    /// Server-side apply with a field manager per set.
    Apply,
    /// Read-modify-write with resourceVersion preconditions.
    Update,
}

/// The field manager of update-mode writes and of node object creation.
pub const OPERATOR_MANAGER: &str = "staticpodset-operator";

/// How often a write is retried after a resourceVersion conflict before giving up for this
/// reconcile (the error policy retries later).
const CONFLICT_RETRIES: usize = 5;

/// The owner reference that ties a node object to its Node, so the garbage collector deletes it
/// with the Node. Not a controller reference and no blockOwnerDeletion: the Node does not wait
/// for it, and setting blockOwnerDeletion would need update permission on nodes/finalizers.
pub fn node_owner_reference(
    node: &str,
    uid: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.into(),
        uid: uid.into(),
        ..Default::default()
    }
}

/// The server-side apply body that puts `entry` into node object `node`: only the name and the
/// single entry, so the set's field manager owns exactly that entry.
pub fn apply_body(node: &str, entry: &AssignedPod) -> Value {
    json!({
        "apiVersion": NodeStaticPods::api_version(&()),
        "kind": NodeStaticPods::kind(&()),
        "metadata": { "name": node },
        "spec": { "pods": [entry] },
    })
}

/// The JSON patch removing the set's entry at `index`, if the entry there is still the set's.
pub fn removal_patch(index: usize, namespace: &str, name: &str) -> Value {
    json!([
        { "op": "test", "path": format!("/spec/pods/{index}/setNamespace"), "value": namespace },
        { "op": "test", "path": format!("/spec/pods/{index}/setName"), "value": name },
        { "op": "remove", "path": format!("/spec/pods/{index}") },
    ])
}

/// `pods` with the set's entry replaced by `entry` (or removed when `None`), keeping the order
/// of the others. `None` when nothing changes.
pub fn replace_entry(
    pods: &[AssignedPod],
    namespace: &str,
    name: &str,
    entry: Option<&AssignedPod>,
) -> Option<Vec<AssignedPod>> {
    let position = pods
        .iter()
        .position(|p| p.set_namespace == namespace && p.set_name == name);
    let mut out = pods.to_vec();
    match (position, entry) {
        (Some(i), Some(entry)) if out[i] == *entry => return None,
        (Some(i), Some(entry)) => out[i] = entry.clone(),
        (Some(i), None) => {
            out.remove(i);
        }
        (None, Some(entry)) => out.push(entry.clone()),
        (None, None) => return None,
    }
    Some(out)
}

/// Performs one write for `set`; `cached` is the node object as the cache holds it, if it does.
pub async fn write(
    client: &Client,
    mode: WriteMode,
    set: &SetKey,
    write: &NodeWrite,
    cached: Option<&NodeStaticPods>,
) -> Result<(), Error> {
    let (namespace, name) = (set.namespace.as_str(), set.name.as_str());
    let api: Api<NodeStaticPods> = Api::all(client.clone());
    let (op, result) = match (&write.entry, mode) {
        (None, _) => (
            "removing",
            remove(&api, namespace, name, &write.node, cached).await,
        ),
        (Some(entry), WriteMode::Apply) if write.repair => (
            "repairing",
            repair(&api, namespace, name, &write.node, entry).await,
        ),
        (Some(entry), WriteMode::Apply) => (
            "applying",
            apply(&api, namespace, name, &write.node, entry).await,
        ),
        (Some(entry), WriteMode::Update) => (
            "updating",
            update(&api, namespace, name, &write.node, entry).await,
        ),
    };
    result.map_err(|source| Error::NodeWrite {
        op,
        set: set.clone(),
        node: write.node.clone(),
        source,
    })
}

async fn apply(
    api: &Api<NodeStaticPods>,
    namespace: &str,
    name: &str,
    node: &str,
    entry: &AssignedPod,
) -> Result<(), kube::Error> {
    let manager = field_manager(namespace, name);
    let body = Patch::Apply(apply_body(node, entry));
    // First unforced: without the list-map, spec.pods is one atomic field, and a forced apply
    // would wipe every other set's entry; unforced, the second set on a node gets a conflict.
    match api.patch(node, &PatchParams::apply(&manager), &body).await {
        Ok(_) => Ok(()),
        // Every conflicting field is inside our own entry (someone edited it): the set is the
        // authority over its entry, so take the fields back.
        Err(kube::Error::Api(status)) if conflicts_only_inside_entries(&status) => {
            let others: Vec<&str> = status
                .details
                .iter()
                .flat_map(|d| &d.causes)
                .map(|c| c.message.as_str())
                .collect();
            tracing::info!(%node, conflicts = ?others, "taking back fields of the set's entry edited by another manager");
            api.patch(node, &PatchParams::apply(&manager).force(), &body)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Whether an apply conflict concerns only fields inside list entries (`.spec.pods[key=...]...`),
/// never the list as a whole (which is what a CRD without the list-map reports).
pub fn conflicts_only_inside_entries(status: &Status) -> bool {
    let causes: Vec<_> = status.details.iter().flat_map(|d| &d.causes).collect();
    status.is_conflict()
        && !causes.is_empty()
        && causes.iter().all(|c| c.field.starts_with(".spec.pods["))
}

/// Removes the set's entry. The first try trusts the index the cached copy shows, guarded by the
/// patch's `test` operations; only when those fail (the list moved meanwhile) is the object read.
async fn remove(
    api: &Api<NodeStaticPods>,
    namespace: &str,
    name: &str,
    node: &str,
    cached: Option<&NodeStaticPods>,
) -> Result<(), kube::Error> {
    let mut hint = cached.and_then(|o| entry_index(o, namespace, name));
    for _ in 0..CONFLICT_RETRIES {
        let index = match hint.take() {
            Some(index) => index,
            None => {
                let Some(obj) = api.get_opt(node).await? else {
                    return Ok(());
                };
                let Some(index) = entry_index(&obj, namespace, name) else {
                    return Ok(());
                };
                index
            }
        };
        match guarded_json_patch(api, node, removal_patch(index, namespace, name)).await {
            Ok(Sent::Done) => return Ok(()),
            Ok(Sent::Retry) => continue,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(conflict_exhausted(node))
}

/// The outcome of a guarded write that may have to be redone on a fresh read.
enum Sent {
    Done,
    /// The object changed under us (a conflict, or a failed `test` operation, which the API
    /// server reports as invalid): read it again and retry.
    Retry,
}

/// Patch parameters of the operator's own (non-apply) writes to node objects.
fn operator_params() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR_MANAGER.into()),
        ..Default::default()
    }
}

/// Where the set's entry stands in the node object's list, if it is there.
fn entry_index(obj: &NodeStaticPods, namespace: &str, name: &str) -> Option<usize> {
    obj.spec
        .pods
        .iter()
        .position(|p| p.set_namespace == namespace && p.set_name == name)
}

/// Sends a JSON patch whose `test` operations guard the index it touches.
async fn guarded_json_patch(
    api: &Api<NodeStaticPods>,
    node: &str,
    patch: Value,
) -> Result<Sent, kube::Error> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    match api
        .patch(node, &operator_params(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(Sent::Done),
        Err(e) if is_conflict(&e) || is_invalid(&e) => Ok(Sent::Retry),
        Err(e) => Err(e),
    }
}

/// Replaces the set's entry as a whole (guarded JSON patch), dropping whatever another manager
/// added to it. Fields it changes become the operator's; the set's next apply takes them back
/// (forced, as conflicts inside its own entry).
async fn repair(
    api: &Api<NodeStaticPods>,
    namespace: &str,
    name: &str,
    node: &str,
    entry: &AssignedPod,
) -> Result<(), kube::Error> {
    for _ in 0..CONFLICT_RETRIES {
        let Some(obj) = api.get_opt(node).await? else {
            return Err(not_found(node));
        };
        let Some(index) = entry_index(&obj, namespace, name) else {
            // Gone meanwhile: put it back the normal way.
            return apply(api, namespace, name, node, entry).await;
        };
        if obj.spec.pods[index] == *entry {
            return Ok(());
        }
        tracing::info!(%node, "replacing the set's entry, edited outside the set");
        match guarded_json_patch(api, node, replace_patch(index, namespace, name, entry)).await? {
            Sent::Done => return Ok(()),
            Sent::Retry => continue,
        }
    }
    Err(conflict_exhausted(node))
}

/// The JSON patch replacing the set's entry at `index`, if the entry there is still the set's.
pub fn replace_patch(index: usize, namespace: &str, name: &str, entry: &AssignedPod) -> Value {
    json!([
        { "op": "test", "path": format!("/spec/pods/{index}/setNamespace"), "value": namespace },
        { "op": "test", "path": format!("/spec/pods/{index}/setName"), "value": name },
        { "op": "replace", "path": format!("/spec/pods/{index}"), "value": entry },
    ])
}

async fn update(
    api: &Api<NodeStaticPods>,
    namespace: &str,
    name: &str,
    node: &str,
    entry: &AssignedPod,
) -> Result<(), kube::Error> {
    let params = operator_params();
    for _ in 0..CONFLICT_RETRIES {
        let Some(obj) = api.get_opt(node).await? else {
            // The node-objects loop creates it; a later reconcile writes.
            return Err(not_found(node));
        };
        let Some(pods) = replace_entry(&obj.spec.pods, namespace, name, Some(entry)) else {
            return Ok(());
        };
        // A merge patch carrying metadata.resourceVersion is rejected with 409 when the object
        // changed since we read it: optimistic concurrency with the patch verb alone.
        let patch = json!({
            "metadata": { "resourceVersion": obj.resource_version() },
            "spec": { "pods": pods },
        });
        match api.patch(node, &params, &Patch::Merge(patch)).await {
            Ok(_) => return Ok(()),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(conflict_exhausted(node))
}

fn conflict_exhausted(node: &str) -> kube::Error {
    kube::Error::Api(
        Status::failure(
            &format!(
                "NodeStaticPods {node} kept changing; gave up after {CONFLICT_RETRIES} conflicts"
            ),
            "Conflict",
        )
        .with_code(409)
        .boxed(),
    )
}

fn not_found(node: &str) -> kube::Error {
    kube::Error::Api(
        Status::failure(
            &format!("NodeStaticPods {node} does not exist yet"),
            "NotFound",
        )
        .with_code(404)
        .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::entry;

    #[test]
    fn apply_body_carries_only_our_entry() {
        let body = apply_body("n1", &entry("a", "r1"));
        assert_eq!(body["apiVersion"], "staticpods.dev/v1alpha1");
        assert_eq!(body["kind"], "NodeStaticPods");
        assert_eq!(body["metadata"], json!({"name": "n1"}));
        assert_eq!(body["spec"]["pods"].as_array().unwrap().len(), 1);
        assert_eq!(body["spec"]["pods"][0]["setName"], "a");
        assert_eq!(body["spec"]["pods"][0]["setNamespace"], "ns");
        assert_eq!(body["spec"]["pods"][0]["revision"], "r1");
    }

    #[test]
    fn removal_patch_tests_the_keys_before_removing() {
        let patch = removal_patch(2, "ns", "a");
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/spec/pods/2/setNamespace", "value": "ns"},
                {"op": "test", "path": "/spec/pods/2/setName", "value": "a"},
                {"op": "remove", "path": "/spec/pods/2"},
            ])
        );
        let _: json_patch::Patch = serde_json::from_value(patch).expect("a valid JSON patch");
    }

    #[test]
    fn replace_patch_tests_the_keys_before_replacing() {
        let patch = replace_patch(1, "ns", "a", &entry("a", "r2"));
        assert_eq!(patch[0]["path"], "/spec/pods/1/setNamespace");
        assert_eq!(patch[1]["path"], "/spec/pods/1/setName");
        assert_eq!(patch[2]["op"], "replace");
        assert_eq!(patch[2]["value"]["revision"], "r2");
        let _: json_patch::Patch = serde_json::from_value(patch).expect("a valid JSON patch");
    }

    fn conflict(fields: &[&str]) -> Status {
        let mut status = Status::failure("Apply failed", "Conflict").with_code(409);
        status.details = Some(kube::core::response::StatusDetails {
            causes: fields
                .iter()
                .map(|f| kube::core::response::StatusCause {
                    reason: "FieldManagerConflict".into(),
                    message: "conflict with \"human\"".into(),
                    field: f.to_string(),
                })
                .collect(),
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            retry_after_seconds: 0,
        });
        status
    }

    #[test]
    fn only_conflicts_inside_our_entry_are_forced() {
        // Someone edited our entry (as a v1.36 API server reports it).
        assert!(conflicts_only_inside_entries(&conflict(&[
            r#".spec.pods[setName="vip",setNamespace="apps"].revisionName"#
        ])));
        // The CRD has no list-map: the whole list is contested; forcing would wipe other sets.
        assert!(!conflicts_only_inside_entries(&conflict(&[".spec.pods"])));
        assert!(!conflicts_only_inside_entries(&conflict(&[
            r#".spec.pods[setName="a",setNamespace="b"].revision"#,
            ".metadata.ownerReferences",
        ])));
        assert!(!conflicts_only_inside_entries(&conflict(&[])));
        let mut not_a_conflict = conflict(&[r#".spec.pods[setName="a",setNamespace="b"]"#]);
        not_a_conflict.code = 422;
        not_a_conflict.reason = "Invalid".into();
        assert!(!conflicts_only_inside_entries(&not_a_conflict));
    }

    #[test]
    fn replacing_entries() {
        let pods = vec![entry("a", "1"), entry("b", "1")];
        assert_eq!(
            replace_entry(&pods, "ns", "a", Some(&entry("a", "1"))),
            None
        );
        assert_eq!(replace_entry(&pods, "ns", "c", None), None);
        assert_eq!(
            replace_entry(&pods, "ns", "a", Some(&entry("a", "2"))),
            Some(vec![entry("a", "2"), entry("b", "1")])
        );
        assert_eq!(
            replace_entry(&pods, "ns", "a", None),
            Some(vec![entry("b", "1")])
        );
        assert_eq!(
            replace_entry(&pods, "ns", "c", Some(&entry("c", "1"))),
            Some(vec![entry("a", "1"), entry("b", "1"), entry("c", "1")])
        );
        // Same name in another namespace is another set.
        assert_eq!(replace_entry(&pods, "other", "a", None), None);
    }
}
