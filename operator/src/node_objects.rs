//! Keeping one NodeStaticPods per Node, and no entries of sets that no longer exist.
//!
//! Every node gets its object even when no set selects it, so its agent always has an object to
//! watch and report into. The object is owned by its Node: the garbage collector deletes it with
//! the Node, and this loop never has to. This loop is the only writer of that owner reference;
//! it also adds it to an object a set's apply created first (a set may reach a brand-new node
//! before this loop does). It only deletes objects the collector cannot: no Node of that name
//! and no owner reference at all.
//!
//! It also removes entries of sets that are gone (a finalizer removed by hand skips the
//! operator's cleanup), but only after seeing the same orphan for a while, since the set and
//! node object caches are fed by different watches and a brand-new set may show up in the node
//! objects first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use staticpodset_api::{NodeStaticPods, SetKey, StaticPodSet};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::node_writer::NodeWriter;
use crate::node_writes::{node_owner_reference, OPERATOR_MANAGER};
use crate::planner::NodeWrite;

/// How long an entry of an unknown set must stay orphaned before it is removed.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// Full pass interval when no event wakes the loop.
const PASS_INTERVAL: Duration = Duration::from_secs(60);
/// Wait after a wake-up, so a burst of node registrations is handled in one pass.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// What one pass does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectsPlan {
    /// `(node, uid)` of Nodes without a node object, or whose object lacks the owner reference
    /// to this Node.
    pub ensure: Vec<(String, String)>,
    /// `(name, uid)` of node objects with no Node and no owner: the garbage collector will never
    /// remove them.
    pub delete: Vec<(String, String)>,
    /// `(node, set)` of entries whose set does not exist.
    pub orphans: Vec<(String, SetKey)>,
}

/// Compares Nodes, node objects and sets. Pure.
pub fn plan_objects(
    nodes: &[Arc<Node>],
    objects: &[Arc<NodeStaticPods>],
    sets: &BTreeSet<SetKey>,
) -> ObjectsPlan {
    let node_names: BTreeMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), &**n)).collect();
    let by_name: BTreeMap<String, &NodeStaticPods> =
        objects.iter().map(|o| (o.name_any(), &**o)).collect();
    let mut plan = ObjectsPlan::default();
    for (name, node) in &node_names {
        // A Node being deleted would take a new object with it right away.
        let (Some(uid), None) = (&node.metadata.uid, &node.metadata.deletion_timestamp) else {
            continue;
        };
        let owned = by_name.get(name).is_some_and(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.kind == "Node" && &r.uid == uid)
        });
        if !owned {
            plan.ensure.push((name.clone(), uid.clone()));
        }
    }
    for obj in objects {
        let name = obj.name_any();
        if !node_names.contains_key(&name)
            && obj.owner_references().is_empty()
            && obj.meta().deletion_timestamp.is_none()
        {
            if let Some(uid) = &obj.metadata.uid {
                plan.delete.push((name.clone(), uid.clone()));
            }
        }
        for entry in &obj.spec.pods {
            let key = SetKey::of(entry);
            if !sets.contains(&key) {
                plan.orphans.push((name.clone(), key));
            }
        }
    }
    plan
}

/// Remembers since when each orphan has been seen; yields those older than the grace.
#[derive(Debug, Default)]
pub struct OrphanClock {
    first_seen: HashMap<(String, SetKey), Instant>,
}

impl OrphanClock {
    /// Feeds this pass's orphans; returns those orphaned for at least `grace`.
    pub fn ripe(
        &mut self,
        orphans: Vec<(String, SetKey)>,
        now: Instant,
        grace: Duration,
    ) -> Vec<(String, SetKey)> {
        let current: BTreeSet<(String, SetKey)> = orphans.into_iter().collect();
        self.first_seen.retain(|k, _| current.contains(k));
        let mut out = Vec::new();
        for key in current {
            let since = *self.first_seen.entry(key.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                out.push(key);
            }
        }
        out
    }
}

/// Runs passes until `stop` resolves: on start (once all caches are synced), whenever `wake` is
/// notified (a node or node object appeared or vanished), and every minute.
pub async fn run(
    client: Client,
    writer: Arc<NodeWriter>,
    nodes: Store<Node>,
    objects: Store<NodeStaticPods>,
    sets: Store<StaticPodSet>,
    metrics: Metrics,
    wake: Arc<Notify>,
) {
    // Against empty caches every node would look objectless and every entry orphaned.
    if nodes.wait_until_ready().await.is_err()
        || objects.wait_until_ready().await.is_err()
        || sets.wait_until_ready().await.is_err()
    {
        return;
    }
    let api: Api<NodeStaticPods> = Api::all(client.clone());
    let mut clock = OrphanClock::default();
    loop {
        let set_keys: BTreeSet<SetKey> = sets
            .state()
            .iter()
            .map(|s| SetKey::new(s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        let plan = plan_objects(&nodes.state(), &objects.state(), &set_keys);
        for (node, uid) in &plan.ensure {
            ensure(&api, node, uid, &metrics).await;
        }
        for (name, uid) in &plan.delete {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {
                    tracing::info!(object = %name, "deleted a NodeStaticPods without Node or owner")
                }
                Err(error) => {
                    tracing::warn!(object = %name, %error, "deleting an ownerless NodeStaticPods")
                }
            }
        }
        for (node, set) in clock.ripe(plan.orphans, Instant::now(), ORPHAN_GRACE) {
            let write = NodeWrite {
                node: node.clone(),
                entry: None,
                repair: false,
            };
            tracing::info!(%node, %set, "removing the entry of a set that no longer exists");
            if let Err(error) = writer.submit(&set, vec![write]) {
                tracing::warn!(%error, "removing an orphaned entry");
            }
        }
        tokio::select! {
            _ = wake.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(PASS_INTERVAL) => {}
        }
    }
}

/// Creates the node object, or adds the owner reference to one that lacks it.
async fn ensure(api: &Api<NodeStaticPods>, node: &str, uid: &str, metrics: &Metrics) {
    // Server-side apply, so an object a set's apply created a moment earlier is merged with, not
    // fought over; the operator's manager owns the owner reference and nothing in the spec.
    // `spec: {}` leaves `pods` to the schema default, owned by nobody.
    let body = json!({
        "apiVersion": NodeStaticPods::api_version(&()),
        "kind": NodeStaticPods::kind(&()),
        "metadata": {
            "name": node,
            "ownerReferences": [node_owner_reference(node, uid)],
        },
        "spec": {},
    });
    match api
        .patch(
            node,
            &PatchParams::apply(OPERATOR_MANAGER),
            &Patch::Apply(body),
        )
        .await
    {
        Ok(_) => {
            metrics.node_objects_ensured.inc();
            tracing::info!(%node, "ensured NodeStaticPods owned by its Node");
        }
        Err(error) => tracing::warn!(%node, %error, "ensuring NodeStaticPods"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::tests::{node, object};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use staticpodset_api::AssignedPod;

    fn key(name: &str) -> SetKey {
        SetKey::new("ns", name)
    }

    fn entry(set: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: set.into(),
            ..Default::default()
        }
    }

    fn owned(name: &str, uid: &str) -> Arc<NodeStaticPods> {
        let mut o = (*object(name, vec![])).clone();
        o.metadata.owner_references = Some(vec![node_owner_reference(name, uid)]);
        Arc::new(o)
    }

    #[test]
    fn ensures_objects_owned_by_their_node() {
        let mut leaving = (*node("leaving", &[])).clone();
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let nodes = vec![
            node("a", &[]),
            node("b", &[]),
            node("c", &[]),
            node("d", &[]),
            Arc::new(leaving),
        ];
        let objects = vec![
            owned("a", "uid-a"),
            // c was created by a set's apply, d belongs to an earlier Node of the same name.
            object("c", vec![]),
            owned("d", "uid-old"),
        ];
        let plan = plan_objects(&nodes, &objects, &BTreeSet::new());
        let names: Vec<&str> = plan.ensure.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
        assert_eq!(plan.ensure[2].1, "uid-d");
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn deletes_only_what_the_garbage_collector_cannot() {
        let mut ownerless = (*object("gone-ownerless", vec![])).clone();
        ownerless.metadata.uid = Some("u1".into());
        let mut owned = (*object("gone-owned", vec![])).clone();
        owned.metadata.uid = Some("u2".into());
        owned.metadata.owner_references = Some(vec![node_owner_reference("gone-owned", "x")]);
        let mut live = (*object("live", vec![])).clone();
        live.metadata.uid = Some("u3".into());
        let plan = plan_objects(
            &[node("live", &[])],
            &[Arc::new(ownerless), Arc::new(owned), Arc::new(live)],
            &BTreeSet::new(),
        );
        assert_eq!(
            plan.delete,
            [("gone-ownerless".to_string(), "u1".to_string())]
        );
    }

    #[test]
    fn finds_entries_of_unknown_sets() {
        let objects = vec![object("a", vec![entry("known"), entry("gone")])];
        let sets = BTreeSet::from([key("known")]);
        let plan = plan_objects(&[node("a", &[])], &objects, &sets);
        assert_eq!(plan.orphans, [("a".to_string(), key("gone"))]);
    }

    #[test]
    fn orphans_ripen_after_the_grace_and_forget_when_resolved() {
        let mut clock = OrphanClock::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let orphan = ("a".to_string(), key("gone"));
        assert!(clock.ripe(vec![orphan.clone()], t0, grace).is_empty());
        assert!(clock
            .ripe(vec![orphan.clone()], t0 + Duration::from_secs(30), grace)
            .is_empty());
        assert_eq!(
            clock.ripe(vec![orphan.clone()], t0 + Duration::from_secs(61), grace),
            std::slice::from_ref(&orphan)
        );
        // It went away (the set appeared): the clock starts over if it comes back.
        assert!(clock
            .ripe(vec![], t0 + Duration::from_secs(62), grace)
            .is_empty());
        assert!(clock
            .ripe(vec![orphan], t0 + Duration::from_secs(63), grace)
            .is_empty());
    }
}
