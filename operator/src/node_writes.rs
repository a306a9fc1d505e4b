//! Writing entries into one node object: the only place the operator writes node objects' specs.
//!
//! All changes to a node's entries, whichever sets they come from, go out as one JSON patch
//! computed from the freshest copy at hand ([`entries_patch`]): an entry that changed is replaced
//! whole at its index, a removed entry is removed there, a new one is appended. Every index the
//! patch touches is guarded by `test` operations on the entry's keys, so the patch either lands
//! on the list it was computed from or fails and is computed again from a fresh read. No
//! resourceVersion is involved, so it never conflicts with the agent's status writes; and one
//! request carries every set's change to the node, which is what keeps the cost of many sets
//! down (see [`crate::node_writer`]).
//!
//! Whole entries are written, so an entry someone edited by hand is put back as a whole, and no
//! field another manager added to it survives. All spec writes are made by one field manager,
//! [`OPERATOR_MANAGER`]: managedFields holds one record for the operator however many sets write
//! to the node.
//!
//! A missing object is created with its entries; owner references are not written here: the
//! node-objects loop owns them ([`node_owner_reference`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::api::{Patch, PatchParams, PostParams};
use kube::core::Status;
use kube::Api;
use serde_json::{json, Value};
use staticpodset_api::{AssignedPod, NodeStaticPods, NodeStaticPodsSpec, SetKey};

use crate::error::{is_already_exists, is_conflict, is_invalid, is_not_found};

/// The field manager of the operator's writes to node objects (and its other writes).
pub const OPERATOR_MANAGER: &str = "staticpodset-operator";

/// How often a write is tried against a fresh read after its guards failed, before giving up
/// until the set's next reconcile.
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

/// What the sets want of one node's entries: per set, the entry to hold, or `None` for no entry.
pub type EntryChanges = BTreeMap<SetKey, Option<AssignedPod>>;

fn key_tests(index: usize, set: &SetKey) -> [Value; 2] {
    [
        json!({ "op": "test", "path": format!("/spec/pods/{index}/setNamespace"), "value": set.namespace }),
        json!({ "op": "test", "path": format!("/spec/pods/{index}/setName"), "value": set.name }),
    ]
}

/// The JSON patch that turns `pods` into what `changes` want, or `None` when they already hold.
/// Replacements come first (they move no index), then removals from the highest index down, then
/// appends; each replaced or removed index is guarded by `test`s on the entry's keys. Pure.
pub fn entries_patch(pods: &[AssignedPod], changes: &EntryChanges) -> Option<Value> {
    let mut replaces = Vec::new();
    let mut removals = Vec::new();
    let mut appends = Vec::new();
    for (set, want) in changes {
        let index = pods.iter().position(|p| SetKey::of(p) == *set);
        match (index, want) {
            (Some(i), Some(entry)) if same_assignment(&pods[i], entry) => {}
            (Some(i), Some(entry)) => {
                replaces.extend(key_tests(i, set));
                replaces.push(
                    json!({ "op": "replace", "path": format!("/spec/pods/{i}"), "value": entry }),
                );
            }
            (Some(i), None) => removals.push((i, set)),
            (None, Some(entry)) => {
                appends.push(json!({ "op": "add", "path": "/spec/pods/-", "value": entry }))
            }
            (None, None) => {}
        }
    }
    removals.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut ops = replaces;
    for (i, set) in removals {
        ops.extend(key_tests(i, set));
        ops.push(json!({ "op": "remove", "path": format!("/spec/pods/{i}") }));
    }
    ops.extend(appends);
    (!ops.is_empty()).then_some(Value::Array(ops))
}

/// The entry without its `assignedTime`: what an assignment is, whenever it was made.
pub fn timeless(entry: &AssignedPod) -> AssignedPod {
    AssignedPod {
        assigned_time: None,
        ..entry.clone()
    }
}

/// Whether `current` already is the assignment `wanted` asks for. Only the time may differ: a set
/// that planned from a cache without its entry (the watch behind the writes) assigns the same
/// revision again with a later time, and that is no reason to write, nor to restart the node's
/// deadlines.
pub fn same_assignment(current: &AssignedPod, wanted: &AssignedPod) -> bool {
    (current.assigned_time.is_some() || wanted.assigned_time.is_none())
        && timeless(current) == timeless(wanted)
}

/// The entries a node object created from scratch holds: those `changes` want, in set order.
pub fn created_entries(changes: &EntryChanges) -> Vec<AssignedPod> {
    changes.values().flatten().cloned().collect()
}

/// Patch parameters of the operator's writes to node objects.
fn operator_params() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR_MANAGER.into()),
        ..Default::default()
    }
}

/// Makes node object `node` hold what `changes` want, in one request when the copy at hand
/// (`cached`, the cache's) is current. When its guards fail (the list moved meanwhile, or the
/// cache had not caught up), the object is read and the patch computed again. A missing object
/// is created, unless only removals were wanted.
pub async fn write_entries(
    api: &Api<NodeStaticPods>,
    node: &str,
    changes: &EntryChanges,
    cached: Option<Arc<NodeStaticPods>>,
) -> Result<(), kube::Error> {
    let mut base = cached;
    let mut last_refusal = None;
    // The resourceVersion of a fresh read whose patch was refused: if the next read shows the
    // same version, nothing moved, and the refusal is the server's answer (admission, schema),
    // not a stale copy's failed guard.
    let mut refused_at: Option<String> = None;
    for _ in 0..CONFLICT_RETRIES {
        let (obj, fresh) = match base.take() {
            Some(obj) => (obj, false),
            None => match api.get_opt(node).await? {
                Some(obj) => (Arc::new(obj), true),
                None => {
                    let pods = created_entries(changes);
                    if pods.is_empty() {
                        return Ok(());
                    }
                    let obj = NodeStaticPods::new(node, NodeStaticPodsSpec { pods });
                    let params = PostParams {
                        field_manager: Some(OPERATOR_MANAGER.into()),
                        ..Default::default()
                    };
                    match api.create(&params, &obj).await {
                        Ok(_) => return Ok(()),
                        // Created meanwhile (the node-objects loop): patch it instead.
                        Err(e) if is_already_exists(&e) => continue,
                        Err(e) => return Err(e),
                    }
                }
            },
        };
        if let (Some(refusal), Some(at)) = (&last_refusal, &refused_at) {
            if obj.metadata.resource_version.as_ref() == Some(at) {
                tracing::debug!(%node, %refusal, "refused against an unchanged object");
                break;
            }
        }
        let Some(patch) = entries_patch(&obj.spec.pods, changes) else {
            return Ok(());
        };
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
        match api
            .patch(node, &operator_params(), &Patch::<()>::Json(patch))
            .await
        {
            Ok(_) => return Ok(()),
            // A failed `test` is reported as invalid, an appended entry already there (the
            // cache lagged) as invalid too (a duplicate key of the list-map): read and redo.
            Err(e) if is_conflict(&e) || is_invalid(&e) => {
                last_refusal = Some(e);
                refused_at = if fresh {
                    obj.metadata.resource_version.clone()
                } else {
                    None
                };
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Err(last_refusal.unwrap_or_else(|| gave_up(node)))
}

fn gave_up(node: &str) -> kube::Error {
    kube::Error::Api(
        Status::failure(
            &format!("NodeStaticPods {node} kept changing; gave up after {CONFLICT_RETRIES} tries"),
            "Conflict",
        )
        .with_code(409)
        .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::entry;

    fn changes(list: &[(&str, Option<AssignedPod>)]) -> EntryChanges {
        list.iter()
            .map(|(set, e)| (SetKey::new("ns", *set), e.clone()))
            .collect()
    }

    fn apply(pods: &[AssignedPod], patch: Value) -> Vec<AssignedPod> {
        let mut doc = json!({ "spec": { "pods": pods } });
        let patch: json_patch::Patch = serde_json::from_value(patch).expect("a valid JSON patch");
        json_patch::patch(&mut doc, &patch).expect("the patch applies");
        serde_json::from_value(doc["spec"]["pods"].clone()).unwrap()
    }

    #[test]
    fn nothing_to_write_when_entries_hold() {
        let pods = vec![entry("a", "1"), entry("b", "1")];
        assert_eq!(entries_patch(&pods, &changes(&[])), None);
        assert_eq!(
            entries_patch(
                &pods,
                &changes(&[("a", Some(entry("a", "1"))), ("c", None)])
            ),
            None
        );
    }

    #[test]
    fn one_patch_replaces_removes_and_appends_for_many_sets() {
        let pods = vec![
            entry("a", "1"),
            entry("b", "1"),
            entry("c", "1"),
            entry("d", "1"),
        ];
        let want = changes(&[
            ("a", None),
            ("b", Some(entry("b", "2"))),
            ("c", None),
            ("e", Some(entry("e", "1"))),
            ("f", Some(entry("f", "1"))),
        ]);
        let patch = entries_patch(&pods, &want).unwrap();
        assert_eq!(
            apply(&pods, patch.clone()),
            vec![
                entry("b", "2"),
                entry("d", "1"),
                entry("e", "1"),
                entry("f", "1")
            ]
        );
        // Every index touched is guarded by its keys, and removals go from the top down.
        let ops = patch.as_array().unwrap();
        let paths: Vec<(&str, &str)> = ops
            .iter()
            .map(|o| (o["op"].as_str().unwrap(), o["path"].as_str().unwrap()))
            .collect();
        assert_eq!(
            paths,
            [
                ("test", "/spec/pods/1/setNamespace"),
                ("test", "/spec/pods/1/setName"),
                ("replace", "/spec/pods/1"),
                ("test", "/spec/pods/2/setNamespace"),
                ("test", "/spec/pods/2/setName"),
                ("remove", "/spec/pods/2"),
                ("test", "/spec/pods/0/setNamespace"),
                ("test", "/spec/pods/0/setName"),
                ("remove", "/spec/pods/0"),
                ("add", "/spec/pods/-"),
                ("add", "/spec/pods/-"),
            ]
        );
    }

    #[test]
    fn a_patch_from_a_stale_copy_fails_its_guards() {
        // Computed while b sat at index 1; a was removed meanwhile.
        let stale = vec![entry("a", "1"), entry("b", "1")];
        let patch = entries_patch(&stale, &changes(&[("b", None)])).unwrap();
        let mut doc = json!({ "spec": { "pods": [entry("b", "1")] } });
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        assert!(json_patch::patch(&mut doc, &patch).is_err());
    }

    #[test]
    fn a_later_time_alone_is_no_change() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |s: i64| Some(Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()));
        let current = AssignedPod {
            assigned_time: at(100),
            ..entry("a", "1")
        };
        let again = AssignedPod {
            assigned_time: at(160),
            ..entry("a", "1")
        };
        let pods = vec![current.clone()];
        assert_eq!(entries_patch(&pods, &changes(&[("a", Some(again))])), None);
        let next = AssignedPod {
            assigned_time: at(160),
            ..entry("a", "2")
        };
        assert!(entries_patch(&pods, &changes(&[("a", Some(next))])).is_some());
        // An entry without a time (edited by hand) gets the planned one.
        let untimed = vec![entry("a", "1")];
        let timed = AssignedPod {
            assigned_time: at(100),
            ..entry("a", "1")
        };
        assert!(entries_patch(&untimed, &changes(&[("a", Some(timed))])).is_some());
    }

    #[test]
    fn same_name_in_another_namespace_is_another_set() {
        let pods = vec![entry("a", "1")];
        let other = BTreeMap::from([(SetKey::new("other", "a"), None)]);
        assert_eq!(entries_patch(&pods, &other), None);
    }

    #[test]
    fn a_created_object_holds_the_wanted_entries_only() {
        let want = changes(&[("b", Some(entry("b", "1"))), ("a", None)]);
        assert_eq!(created_entries(&want), vec![entry("b", "1")]);
    }
}
