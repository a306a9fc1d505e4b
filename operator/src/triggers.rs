//! Turning Node and NodeStaticPods watch events into the few sets they concern. Pure.
//!
//! Both kinds change far more often than sets care about: nodes post status, agents write
//! status. Each event is compared with a fingerprint of the object's previous version, and only
//! sets whose inputs really changed are reconciled. Without this, one agent report on a node that
//! runs 200 sets would reconcile all 200.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use staticpodset_api::{NodeStaticPods, SetKey, StaticPodSet};

use crate::node_match::{node_trigger_key, NodeSelector};

/// One object whose fingerprint changed between two events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<V> {
    /// The object's name.
    pub name: String,
    /// The fingerprint before, if the object was known.
    pub old: Option<V>,
    /// The fingerprint now; `None` when the object was deleted.
    pub new: Option<V>,
}

/// Remembers a fingerprint per object across watch events, including across re-lists.
///
/// A re-list (`Init`, `InitApply`..., `InitDone`) replaces the store only at `InitDone`, and
/// objects deleted while the watch was down get no Delete event. So changes seen during a
/// re-list are held back until `InitDone`, when the store is consistent, and objects the re-list
/// did not return are reported as deleted then.
#[derive(Debug)]
pub struct Tracker<V> {
    current: HashMap<String, V>,
    relist: Option<Relist<V>>,
}

/// A re-list in progress: what it returned so far, and the changes held back until it is done.
type Relist<V> = (HashMap<String, V>, Vec<Change<V>>);

impl<V> Default for Tracker<V> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relist: None,
        }
    }
}

impl<V: Clone + PartialEq> Tracker<V> {
    /// Feeds one watch event; returns the objects whose fingerprint changed.
    pub fn observe<K: Resource>(
        &mut self,
        event: &Event<K>,
        fingerprint: impl Fn(&K) -> V,
    ) -> Vec<Change<V>> {
        match event {
            Event::Init => {
                self.relist = Some((HashMap::new(), Vec::new()));
                Vec::new()
            }
            Event::InitApply(obj) => {
                let name = obj.name_any();
                let new = fingerprint(obj);
                let old = self.current.get(&name).cloned();
                match &mut self.relist {
                    Some((seen, pending)) => {
                        if old.as_ref() != Some(&new) {
                            pending.push(Change {
                                name: name.clone(),
                                old,
                                new: Some(new.clone()),
                            });
                        }
                        seen.insert(name, new);
                        Vec::new()
                    }
                    // InitApply without Init cannot happen; treat it as a plain apply.
                    None => self.apply(name, new),
                }
            }
            Event::InitDone => {
                let Some((seen, mut changes)) = self.relist.take() else {
                    return Vec::new();
                };
                for (name, old) in self.current.drain() {
                    if !seen.contains_key(&name) {
                        changes.push(Change {
                            name,
                            old: Some(old),
                            new: None,
                        });
                    }
                }
                self.current = seen;
                changes
            }
            Event::Apply(obj) => self.apply(obj.name_any(), fingerprint(obj)),
            Event::Delete(obj) => {
                let name = obj.name_any();
                let old = self.current.remove(&name);
                vec![Change {
                    name,
                    old,
                    new: None,
                }]
            }
        }
    }

    fn apply(&mut self, name: String, new: V) -> Vec<Change<V>> {
        let old = self.current.insert(name.clone(), new.clone());
        if old.as_ref() == Some(&new) {
            return Vec::new();
        }
        vec![Change {
            name,
            old,
            new: Some(new),
        }]
    }
}

/// Fingerprint of a node for [`Tracker`]: see [`node_trigger_key`].
pub fn node_fingerprint(node: &Node) -> u64 {
    node_trigger_key(node)
}

/// Fingerprint of a node object for [`Tracker`]: per set, a hash of its spec entry and its
/// report. The agent's lastSyncTime and summary are left out: they change on every agent sync
/// and no set's status depends on them (only deletion does, and it polls).
pub fn node_object_fingerprint(obj: &NodeStaticPods) -> BTreeMap<SetKey, u64> {
    let mut per_set: BTreeMap<SetKey, DefaultHasher> = BTreeMap::new();
    for entry in &obj.spec.pods {
        let h = per_set.entry(SetKey::of(entry)).or_default();
        "entry".hash(h);
        entry.revision.hash(h);
        entry.revision_name.hash(h);
        entry.file_name.hash(h);
    }
    for report in obj.status.iter().flat_map(|s| &s.pods) {
        let h = per_set
            .entry(SetKey::new(
                report.set_namespace.clone(),
                report.set_name.clone(),
            ))
            .or_default();
        "report".hash(h);
        // The report has no Hash; its JSON is a faithful stand-in and reports are small.
        serde_json::to_string(report).unwrap_or_default().hash(h);
    }
    per_set.into_iter().map(|(k, h)| (k, h.finish())).collect()
}

/// The sets whose entry or report differs between two node object fingerprints.
pub fn changed_sets(change: &Change<BTreeMap<SetKey, u64>>) -> BTreeSet<SetKey> {
    let empty = BTreeMap::new();
    let old = change.old.as_ref().unwrap_or(&empty);
    let new = change.new.as_ref().unwrap_or(&empty);
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// The sets a change to node `node` concerns: those whose selector matches its labels (when the
/// node is known), and those that have an entry or report on its node object (so a node that
/// stops matching, or disappears, still reaches the sets that must remove their entry).
pub fn sets_for_node(
    node: Option<&Node>,
    object: Option<&NodeStaticPods>,
    sets: &[Arc<StaticPodSet>],
) -> BTreeSet<SetKey> {
    let mut out: BTreeSet<SetKey> = object
        .map(|o| node_object_fingerprint(o).into_keys().collect())
        .unwrap_or_default();
    if let Some(node) = node {
        for set in sets {
            let selected = NodeSelector::compile(set.spec.node_selector.as_ref())
                .is_ok_and(|s| s.matches_node(node));
            if selected {
                out.insert(SetKey::new(
                    set.namespace().unwrap_or_default(),
                    set.name_any(),
                ));
            }
        }
    }
    out
}

/// The controller's reference to a set.
pub fn set_ref(key: SetKey) -> ObjectRef<StaticPodSet> {
    ObjectRef::new(&key.name).within(&key.namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::entry;
    use crate::planner::tests::{node, object};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use staticpodset_api::{ManifestPhase, NodeStaticPodsStatus, PodReport, StaticPodSetSpec};

    fn names<V>(changes: &[Change<V>]) -> Vec<&str> {
        changes.iter().map(|c| c.name.as_str()).collect()
    }

    fn labelled(name: &str, zone: &str) -> Node {
        (*node(name, &[("zone", zone)])).clone()
    }

    #[test]
    fn tracker_reports_real_changes_only() {
        let mut t = Tracker::default();
        let a = labelled("a", "x");
        assert_eq!(
            names(&t.observe(&Event::Apply(a.clone()), node_fingerprint)),
            ["a"]
        );
        assert!(t
            .observe(&Event::Apply(a.clone()), node_fingerprint)
            .is_empty());
        let moved = labelled("a", "y");
        let changes = t.observe(&Event::Apply(moved), node_fingerprint);
        assert_eq!(names(&changes), ["a"]);
        assert!(changes[0].old.is_some() && changes[0].new.is_some());
        let deleted = t.observe(&Event::Delete(a), node_fingerprint);
        assert_eq!(deleted[0].new, None);
    }

    #[test]
    fn relist_holds_changes_until_done_and_finds_silent_deletions() {
        let mut t = Tracker::default();
        for n in ["a", "b", "c"] {
            t.observe(&Event::Apply(labelled(n, "x")), node_fingerprint);
        }
        assert!(t.observe(&Event::<Node>::Init, node_fingerprint).is_empty());
        // a unchanged, b changed, c gone while the watch was down, d new.
        assert!(t
            .observe(&Event::InitApply(labelled("a", "x")), node_fingerprint)
            .is_empty());
        assert!(t
            .observe(&Event::InitApply(labelled("b", "y")), node_fingerprint)
            .is_empty());
        assert!(t
            .observe(&Event::InitApply(labelled("d", "x")), node_fingerprint)
            .is_empty());
        let mut changes = t.observe(&Event::<Node>::InitDone, node_fingerprint);
        changes.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(names(&changes), ["b", "c", "d"]);
        assert_eq!(changes[1].new, None);
        assert_eq!(changes[2].old, None);
        // The tracker now holds the re-listed world.
        assert!(t
            .observe(&Event::Apply(labelled("d", "x")), node_fingerprint)
            .is_empty());
        assert_eq!(
            names(&t.observe(&Event::Apply(labelled("c", "x")), node_fingerprint)),
            ["c"]
        );
    }

    fn with_reports(
        obj: Arc<NodeStaticPods>,
        reports: &[(&str, ManifestPhase)],
        sync: i64,
    ) -> NodeStaticPods {
        let mut obj = (*obj).clone();
        obj.status = Some(NodeStaticPodsStatus {
            last_sync_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(sync).unwrap(),
            )),
            pods: reports
                .iter()
                .map(|(s, phase)| PodReport {
                    set_namespace: "ns".into(),
                    set_name: s.to_string(),
                    phase: *phase,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        obj
    }

    fn change(old: Option<&NodeStaticPods>, new: Option<&NodeStaticPods>) -> BTreeSet<SetKey> {
        changed_sets(&Change {
            name: "n".into(),
            old: old.map(node_object_fingerprint),
            new: new.map(node_object_fingerprint),
        })
    }

    fn keys(sets: &[&str]) -> BTreeSet<SetKey> {
        sets.iter().map(|s| SetKey::new("ns", *s)).collect()
    }

    #[test]
    fn node_object_changes_reach_only_the_sets_concerned() {
        let base = with_reports(
            object("n", vec![entry("a", "1"), entry("b", "1")]),
            &[("a", ManifestPhase::Written), ("b", ManifestPhase::Written)],
            100,
        );
        // Only the agent's sync time moved: nobody is reconciled.
        let resync = with_reports(
            object("n", vec![entry("a", "1"), entry("b", "1")]),
            &[("a", ManifestPhase::Written), ("b", ManifestPhase::Written)],
            200,
        );
        assert!(change(Some(&base), Some(&resync)).is_empty());
        // b's report changes: only b.
        let b_report = with_reports(
            object("n", vec![entry("a", "1"), entry("b", "1")]),
            &[("a", ManifestPhase::Written), ("b", ManifestPhase::Error)],
            200,
        );
        assert_eq!(change(Some(&base), Some(&b_report)), keys(&["b"]));
        // a's entry changes and c appears: a and c.
        let a_entry = with_reports(
            object("n", vec![entry("a", "2"), entry("b", "1"), entry("c", "1")]),
            &[("a", ManifestPhase::Written), ("b", ManifestPhase::Written)],
            100,
        );
        assert_eq!(change(Some(&base), Some(&a_entry)), keys(&["a", "c"]));
        // Object created and deleted: every set on it.
        assert_eq!(change(None, Some(&base)), keys(&["a", "b"]));
        assert_eq!(change(Some(&base), None), keys(&["a", "b"]));
    }

    fn set(name: &str, selector: Option<LabelSelector>) -> Arc<StaticPodSet> {
        let mut s = StaticPodSet::new(
            name,
            StaticPodSetSpec {
                template: Default::default(),
                node_selector: selector,
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        Arc::new(s)
    }

    #[test]
    fn node_changes_reach_matching_sets_and_sets_on_its_object() {
        let zone_x = LabelSelector {
            match_labels: Some([("zone".to_string(), "x".to_string())].into()),
            match_expressions: None,
        };
        let broken = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![Default::default()]),
        };
        let sets = vec![
            set("all", None),
            set("zone-x", Some(zone_x)),
            set("broken", Some(broken)),
            set("elsewhere", None),
        ];
        let n = labelled("n", "y");
        let obj = object("n", vec![entry("zone-x", "1")]);
        assert_eq!(
            sets_for_node(Some(&n), Some(&obj), &sets),
            keys(&["all", "elsewhere", "zone-x"])
        );
        // A node gone during a re-list: only what its object says.
        assert_eq!(sets_for_node(None, Some(&obj), &sets), keys(&["zone-x"]));
        assert_eq!(sets_for_node(None, None, &sets), keys(&[]));
    }

    #[test]
    fn set_refs() {
        let r = set_ref(SetKey::new("ns", "a"));
        assert_eq!(r.name, "a");
        assert_eq!(r.namespace.as_deref(), Some("ns"));
    }
}
