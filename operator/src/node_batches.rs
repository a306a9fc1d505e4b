//! Node-object writes batched per node: every set's pending change to one node in one request.
//!
//! With a server-side apply per (set, node), a node that runs 20 sets takes 20 writes of its
//! whole object when the sets change together (created at once, a shared ConfigMap changed, the
//! operator catching up), and each of those writes costs the API server the whole object, managed
//! fields and all. Here a write for a node that already has one in flight waits for it and goes
//! with every other change queued meanwhile, as one JSON patch: `replace`/`remove` at the indices
//! the entries are at, each guarded by `test` operations on the entry's keys, and `add` at the end
//! for new entries (the list-map rejects a duplicate). Agents' status writes never conflict with it
//! (no resourceVersion is involved), and a patch whose guards fail is rebuilt from a fresh read.
//!
//! The first try builds the patch from the cached copy: no read per write. An object that does not
//! exist yet is created by the set's server-side apply, as in `apply` mode.
//!
//! In this mode the entries' fields belong to the operator's field manager
//! ([`OPERATOR_MANAGER`](crate::node_writes::OPERATOR_MANAGER)), not to a manager per set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::core::Status;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use serde_json::{json, Value};
use staticpodset_api::{AssignedPod, NodeStaticPods, SetKey};
use tokio::sync::oneshot;

use crate::node_writes::{self, Sent, CONFLICT_RETRIES};

/// One set's change to a node's entries: the entry to put, or `None` to remove the set's entry.
pub type Changes = BTreeMap<SetKey, Option<AssignedPod>>;

/// The JSON patch operations that turn `current` into `current` with `changes` applied, guarded
/// by the keys of every entry they touch; `None` when nothing changes.
pub fn batch_patch(current: &[AssignedPod], changes: &Changes) -> Option<Value> {
    let position = |set: &SetKey| {
        current
            .iter()
            .position(|p| p.set_namespace == set.namespace && p.set_name == set.name)
    };
    let guard = |i: usize, set: &SetKey| {
        [
            json!({ "op": "test", "path": format!("/spec/pods/{i}/setNamespace"), "value": set.namespace }),
            json!({ "op": "test", "path": format!("/spec/pods/{i}/setName"), "value": set.name }),
        ]
    };
    let mut replaces = Vec::new();
    let mut removals = Vec::new();
    let mut adds = Vec::new();
    for (set, entry) in changes {
        match (position(set), entry) {
            (Some(i), Some(entry)) if current[i] == *entry => {}
            (Some(i), Some(entry)) => {
                replaces.extend(guard(i, set));
                replaces.push(
                    json!({ "op": "replace", "path": format!("/spec/pods/{i}"), "value": entry }),
                );
            }
            (Some(i), None) => removals.push((i, set)),
            (None, Some(entry)) => {
                adds.push(json!({ "op": "add", "path": "/spec/pods/-", "value": entry }));
            }
            (None, None) => {}
        }
    }
    // Replacements keep every index; removals from the highest index down keep the lower ones
    // valid; additions go last, at the end.
    removals.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut ops = replaces;
    for (i, set) in removals {
        ops.extend(guard(i, set));
        ops.push(json!({ "op": "remove", "path": format!("/spec/pods/{i}") }));
    }
    ops.extend(adds);
    (!ops.is_empty()).then_some(Value::Array(ops))
}

/// A change waiting for its node's next write, and who waits for the outcome.
struct Pending {
    entry: Option<AssignedPod>,
    waiters: Vec<oneshot::Sender<Result<(), kube::Error>>>,
}

/// The queue of writes per node. A node is in the map while a task is writing it.
pub struct NodeBatches {
    client: Client,
    objects: Store<NodeStaticPods>,
    pending: Mutex<HashMap<String, BTreeMap<SetKey, Pending>>>,
}

impl NodeBatches {
    /// A writer over the given node-object cache.
    pub fn new(client: Client, objects: Store<NodeStaticPods>) -> Arc<Self> {
        Arc::new(Self {
            client,
            objects,
            pending: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<SetKey, Pending>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts `entry` (or removes the set's entry, for `None`) into node object `node`, with
    /// whatever other changes to the node are waiting; returns when that write is done.
    pub async fn write(
        self: &Arc<Self>,
        set: &SetKey,
        node: &str,
        entry: Option<AssignedPod>,
    ) -> Result<(), kube::Error> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut pending = self.lock();
            let start = !pending.contains_key(node);
            let queue = pending.entry(node.to_owned()).or_default();
            match queue.get_mut(set) {
                // A newer change for the same set supersedes the queued one; both wait for it.
                Some(p) => {
                    p.entry = entry;
                    p.waiters.push(tx);
                }
                None => {
                    queue.insert(
                        set.clone(),
                        Pending {
                            entry,
                            waiters: vec![tx],
                        },
                    );
                }
            }
            start
        };
        if start {
            tokio::spawn(self.clone().drain(node.to_owned()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(internal(&format!(
                "the write of NodeStaticPods {node} was abandoned"
            )))
        })
    }

    /// Writes the node's queued changes, batch after batch, until none is left.
    async fn drain(self: Arc<Self>, node: String) {
        loop {
            let batch = {
                let mut pending = self.lock();
                match pending.get_mut(&node) {
                    Some(queue) if !queue.is_empty() => std::mem::take(queue),
                    _ => {
                        pending.remove(&node);
                        return;
                    }
                }
            };
            let changes: Changes = batch
                .iter()
                .map(|(set, p)| (set.clone(), p.entry.clone()))
                .collect();
            let result = self.send(&node, &changes).await;
            if let Err(error) = &result {
                tracing::debug!(%node, sets = changes.len(), %error, "batched write failed");
            }
            for (_, p) in batch {
                for waiter in p.waiters {
                    let _ = waiter.send(result.as_ref().map(|_| ()).map_err(share));
                }
            }
        }
    }

    async fn send(&self, node: &str, changes: &Changes) -> Result<(), kube::Error> {
        let api: Api<NodeStaticPods> = Api::all(self.client.clone());
        for attempt in 0..CONFLICT_RETRIES {
            let current = if attempt == 0 {
                self.objects.get(&ObjectRef::new(node))
            } else {
                api.get_opt(node).await?.map(Arc::new)
            };
            let Some(current) = current else {
                return self.create(&api, node, changes).await;
            };
            let Some(patch) = batch_patch(&current.spec.pods, changes) else {
                return Ok(());
            };
            match node_writes::guarded_json_patch(&api, node, patch).await {
                Ok(Sent::Done) => return Ok(()),
                Ok(Sent::Retry) => continue,
                // Gone meanwhile: the next read finds no object and creates it.
                Err(e) if crate::error::is_not_found(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(node_writes::conflict_exhausted(node))
    }

    /// No object yet: each set's entry is applied, which creates it (as in `apply` mode).
    async fn create(
        &self,
        api: &Api<NodeStaticPods>,
        node: &str,
        changes: &Changes,
    ) -> Result<(), kube::Error> {
        for (set, entry) in changes {
            if let Some(entry) = entry {
                node_writes::apply(api, &set.namespace, &set.name, node, entry).await?;
            }
        }
        Ok(())
    }
}

/// A copy of `error` for every waiter of a batch.
fn share(error: &kube::Error) -> kube::Error {
    match error {
        kube::Error::Api(status) => kube::Error::Api(status.clone()),
        other => internal(&other.to_string()),
    }
}

fn internal(message: &str) -> kube::Error {
    kube::Error::Api(
        Status::failure(message, "InternalError")
            .with_code(500)
            .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(set: &str, revision: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: set.into(),
            revision: revision.into(),
            ..Default::default()
        }
    }

    fn changes(list: &[(&str, Option<AssignedPod>)]) -> Changes {
        list.iter()
            .map(|(s, e)| (SetKey::new("ns", *s), e.clone()))
            .collect()
    }

    /// What the patch does to `current`, as the API server would apply it.
    fn applied(current: &[AssignedPod], patch: Value) -> Result<Vec<AssignedPod>, String> {
        let mut doc = json!({ "spec": { "pods": current } });
        let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| e.to_string())?;
        json_patch::patch(&mut doc, &patch).map_err(|e| e.to_string())?;
        serde_json::from_value(doc["spec"]["pods"].clone()).map_err(|e| e.to_string())
    }

    #[test]
    fn one_patch_carries_every_sets_change() {
        let current = vec![
            entry("a", "1"),
            entry("b", "1"),
            entry("c", "1"),
            entry("d", "1"),
        ];
        let patch = batch_patch(
            &current,
            &changes(&[
                ("a", None),
                ("b", Some(entry("b", "2"))),
                ("c", None),
                ("d", Some(entry("d", "1"))),
                ("e", Some(entry("e", "1"))),
                ("f", None),
            ]),
        )
        .expect("changes");
        assert_eq!(
            applied(&current, patch).unwrap(),
            vec![entry("b", "2"), entry("d", "1"), entry("e", "1")]
        );
    }

    #[test]
    fn nothing_to_change_is_no_patch() {
        let current = vec![entry("a", "1")];
        assert_eq!(
            batch_patch(
                &current,
                &changes(&[("a", Some(entry("a", "1"))), ("b", None)])
            ),
            None
        );
        assert_eq!(batch_patch(&[], &Changes::new()), None);
    }

    #[test]
    fn a_list_that_moved_fails_the_guards() {
        // Planned from a copy where "b" is at index 1; the live list lost "a" meanwhile.
        let cached = vec![entry("a", "1"), entry("b", "1")];
        let live = vec![entry("b", "1")];
        let replace = batch_patch(&cached, &changes(&[("b", Some(entry("b", "2")))])).unwrap();
        assert!(applied(&live, replace).is_err());
        let remove = batch_patch(&cached, &changes(&[("b", None)])).unwrap();
        assert!(applied(&live, remove).is_err());
    }
}
