//! Which node objects a set must write, from what the stores hold. Pure.
//!
//! A set writes only where its entry differs from what it wants: a reconcile of an unchanged set
//! over 5,000 nodes costs memory reads, not 5,000 API calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use staticpodset_api::{AssignedPod, NodeStaticPods, PodReport};

use crate::node_match::NodeSelector;
use crate::render::name_problem;

/// One write into one node object, for one set.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeWrite {
    /// Node name, which is also the node object's name.
    pub node: String,
    /// The entry to put; `None` removes the set's entry.
    pub entry: Option<AssignedPod>,
    /// The entry is there at the wanted revision but its content differs: someone edited it.
    /// Every entry is written whole, so this changes only what is logged: the edit is undone.
    pub repair: bool,
}

/// A node the set's selector matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchedNode {
    /// Node name.
    pub name: String,
    /// Why the set cannot run there, if it cannot (the naming rule).
    pub name_problem: Option<String>,
}

/// The set's entry in a node object's spec, if any.
pub fn entry_of<'a>(
    obj: &'a NodeStaticPods,
    namespace: &str,
    name: &str,
) -> Option<&'a AssignedPod> {
    obj.spec
        .pods
        .iter()
        .find(|p| p.set_namespace == namespace && p.set_name == name)
}

/// The agent's report for the set in a node object's status, if any.
pub fn report_of<'a>(
    obj: &'a NodeStaticPods,
    namespace: &str,
    name: &str,
) -> Option<&'a PodReport> {
    obj.status
        .as_ref()?
        .pods
        .iter()
        .find(|p| p.set_namespace == namespace && p.set_name == name)
}

/// Drops what no decision reads from a node object before the operator's cache keeps it:
/// managedFields (larger than the data), and the mirror pods' names, UIDs and configuration
/// hashes (the kubectl plugin and users read those from the API server). At 5,000 nodes with
/// 20 sets each that is 100,000 reports: the strings are megabytes of the operator's memory.
/// The lists give back the spare room decoding left them.
pub fn trim_node_object(object: &mut NodeStaticPods) {
    object.metadata.managed_fields = None;
    // JSON carries no length, so decoding grows each list by doubling: 20 entries and 20 reports
    // came with room for 32 of each, ~9 KB of empty slots per node object kept in the cache.
    object.spec.pods.shrink_to_fit();
    if let Some(owners) = object.metadata.owner_references.as_mut() {
        owners.shrink_to_fit();
    }
    if let Some(status) = object.status.as_mut() {
        status.pods.shrink_to_fit();
    }
    let reports = object.status.iter_mut().flat_map(|s| s.pods.iter_mut());
    for report in reports {
        for mirror in [&mut report.mirror_pod, &mut report.previous_mirror_pod]
            .into_iter()
            .flatten()
        {
            mirror.name = String::new();
            mirror.uid = String::new();
            mirror.config_hash = None;
        }
    }
}

/// One set's entry and agent report on every node object that carries either, by node name.
///
/// Read once per reconcile: each rule of the decision looks a node up here instead of scanning
/// the node object's lists again (at 5,000 nodes with 20 sets each, those scans were most of a
/// reconcile's CPU).
#[derive(Clone, Debug, Default)]
pub struct SetOnNodes<'a> {
    by_node: BTreeMap<&'a str, OnNode<'a>>,
}

/// A set's entry and report on one node object.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnNode<'a> {
    /// The set's entry in the object's spec.
    pub entry: Option<&'a AssignedPod>,
    /// The agent's report for the set in the object's status.
    pub report: Option<&'a PodReport>,
}

impl<'a> SetOnNodes<'a> {
    /// Set `namespace/name` on each of `objects` (by node name).
    pub fn new(
        objects: &'a BTreeMap<String, Arc<NodeStaticPods>>,
        namespace: &str,
        name: &str,
    ) -> Self {
        let by_node = objects
            .iter()
            .filter_map(|(node, object)| {
                let on = OnNode {
                    entry: entry_of(object, namespace, name),
                    report: report_of(object, namespace, name),
                };
                (on.entry.is_some() || on.report.is_some()).then_some((node.as_str(), on))
            })
            .collect();
        SetOnNodes { by_node }
    }

    /// The set's entry on `node`.
    pub fn entry(&self, node: &str) -> Option<&'a AssignedPod> {
        self.by_node.get(node).and_then(|on| on.entry)
    }

    /// The agent's report for the set on `node`.
    pub fn report(&self, node: &str) -> Option<&'a PodReport> {
        self.by_node.get(node).and_then(|on| on.report)
    }

    /// The set's entries, by node name.
    pub fn entries(&self) -> BTreeMap<&'a str, &'a AssignedPod> {
        self.by_node
            .iter()
            .filter_map(|(node, on)| Some((*node, on.entry?)))
            .collect()
    }

    /// The set on each node that carries it, by node name.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, OnNode<'a>)> + '_ {
        self.by_node.iter().map(|(node, on)| (*node, *on))
    }
}

/// The nodes set `name` selects, sorted by name, each with the reason it cannot run there (the
/// naming rule), if any.
pub fn matched(name: &str, selector: &NodeSelector, nodes: &[Arc<Node>]) -> Vec<MatchedNode> {
    let mut matched: Vec<MatchedNode> = nodes
        .iter()
        .filter(|node| selector.matches_node(node))
        .map(|node| {
            let node_name = node.name_any();
            MatchedNode {
                name_problem: name_problem(name, &node_name),
                name: node_name,
            }
        })
        .collect();
    matched.sort_by(|a, b| a.name.cmp(&b.name));
    matched
}

/// The writes a set needs in the node objects as cached, sorted by node name.
///
/// `current` is the set's entries as cached ([`SetOnNodes::entries`]); `matched` is
/// [`matched`]'s result; `wanted` holds the entry each node must carry, as the
/// rollout planner decided, by node name (while the spec is invalid the caller writes nothing
/// anywhere: the nodes keep running what they have). Every node object that carries an entry of
/// the set but should not (the node no longer matches, or the name rule excludes it) gets a
/// removal. A matched node that `wanted` does not name keeps what it has.
pub fn writes<K, W>(
    matched: &[MatchedNode],
    wanted: &BTreeMap<K, W>,
    nodes: &[Arc<Node>],
    current: &BTreeMap<&str, &AssignedPod>,
) -> Vec<NodeWrite>
where
    K: std::borrow::Borrow<str> + Ord,
    W: std::borrow::Borrow<AssignedPod>,
{
    let eligible: std::collections::BTreeSet<&str> = matched
        .iter()
        .filter(|m| m.name_problem.is_none())
        .map(|m| m.name.as_str())
        .collect();
    let mut writes = Vec::new();
    for node_name in nodes.iter().filter_map(|n| n.metadata.name.as_deref()) {
        let current = current.get(node_name).copied();
        let keep = eligible.contains(node_name);
        let want = keep.then(|| wanted.get(node_name)).flatten().map(W::borrow);
        match (want, current) {
            (Some(want), Some(current)) if want == current => {}
            (Some(want), current) => writes.push(NodeWrite {
                node: node_name.to_string(),
                entry: Some(want.clone()),
                repair: current.is_some_and(|c| edited(c, want)),
            }),
            (None, Some(_)) if !keep => writes.push(removal(node_name)),
            (None, _) => {}
        }
    }
    // Node objects of nodes that are gone are left to the garbage collector (they are owned by
    // their Node), so writing to them would only race with it.
    writes.sort_by(|a, b| a.node.cmp(&b.node));
    writes
}

/// The entry is there at the wanted revision but differs in what the set always writes whole,
/// so the difference can only be an edit that did not go through the set. The rollout's
/// bookkeeping (`assignedTime`, `lastFailure`) changes with the set's own writes and is no edit;
/// a `fallbackDeadlineSeconds` the set does not want is one (it would let the agent fall back
/// for a set that has not opted in).
fn edited(current: &AssignedPod, want: &AssignedPod) -> bool {
    current.revision == want.revision
        && current.file_name == want.file_name
        && (current.revision_name != want.revision_name
            || (current.fallback_deadline_seconds.is_some()
                && want.fallback_deadline_seconds.is_none()))
}

/// Removals of set `namespace/name` from every node object that still carries its entry: what a
/// set being deleted must do.
pub fn plan_removal(
    namespace: &str,
    name: &str,
    objects: &BTreeMap<String, Arc<NodeStaticPods>>,
) -> Vec<NodeWrite> {
    objects
        .iter()
        .filter(|(_, obj)| entry_of(obj, namespace, name).is_some())
        .map(|(node, _)| removal(node))
        .collect()
}

fn removal(node: &str) -> NodeWrite {
    NodeWrite {
        node: node.to_string(),
        entry: None,
        repair: false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::render::Rendered;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use staticpodset_api::NodeStaticPodsSpec;

    pub(crate) fn node(name: &str, labels: &[(&str, &str)]) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// A node object as the cache holds it.
    pub(crate) fn object(node: &str, entries: Vec<AssignedPod>) -> Arc<NodeStaticPods> {
        let mut obj = NodeStaticPods::new(node, NodeStaticPodsSpec { pods: entries });
        obj.metadata.resource_version = Some(format!("rv-{node}"));
        Arc::new(obj)
    }

    /// The matched nodes and the writes, as the reconcile computes them.
    struct Planned {
        matched: Vec<MatchedNode>,
        writes: Vec<NodeWrite>,
    }

    fn plan(
        namespace: &str,
        name: &str,
        selector: &NodeSelector,
        wanted: Option<&BTreeMap<String, AssignedPod>>,
        nodes: &[Arc<Node>],
        objects: &BTreeMap<String, Arc<NodeStaticPods>>,
    ) -> Planned {
        let matched = matched(name, selector, nodes);
        let current = SetOnNodes::new(objects, namespace, name).entries();
        let writes =
            wanted.map_or_else(Vec::new, |wanted| writes(&matched, wanted, nodes, &current));
        Planned { matched, writes }
    }

    /// Every node wants `r`'s entry, as when no rollout holds anything back.
    fn everywhere(r: &Rendered, nodes: &[Arc<Node>]) -> BTreeMap<String, AssignedPod> {
        nodes
            .iter()
            .map(|n| (n.name_any(), r.assigned_pod("ns", "set")))
            .collect()
    }

    fn rendered(image: &str) -> Rendered {
        crate::render::render("ns", "set", &crate::fixtures::template(image)).unwrap()
    }

    fn objects(list: Vec<Arc<NodeStaticPods>>) -> BTreeMap<String, Arc<NodeStaticPods>> {
        list.into_iter().map(|o| (o.name_any(), o)).collect()
    }

    fn edge_selector() -> NodeSelector {
        NodeSelector::compile(Some(&LabelSelector {
            match_labels: Some([("role".to_string(), "edge".to_string())].into()),
            match_expressions: None,
        }))
        .unwrap()
    }

    #[test]
    fn the_cache_keeps_what_decisions_read() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        use staticpodset_api::{MirrorPodReport, NodeStaticPodsStatus};
        let mirror = MirrorPodReport {
            name: "vip-n1".into(),
            uid: "u-1".into(),
            revision: Some("r1".into()),
            config_hash: Some("h".into()),
            up_to_date: true,
            ready: true,
            restart_count: 2,
            ..Default::default()
        };
        let mut o = (*object("n1", vec![crate::fixtures::entry("vip", "r1")])).clone();
        o.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        // As decoding leaves them: room for more than they hold.
        o.spec.pods.reserve(31);
        let mut reports = Vec::with_capacity(32);
        reports.push(PodReport {
            set_namespace: "ns".into(),
            set_name: "vip".into(),
            mirror_pod: Some(mirror.clone()),
            previous_mirror_pod: Some(mirror),
            message: Some("kept".into()),
            ..Default::default()
        });
        o.status = Some(NodeStaticPodsStatus {
            pods: reports,
            ..Default::default()
        });
        let entries = o.spec.pods.clone();
        trim_node_object(&mut o);
        assert_eq!(o.metadata.managed_fields, None);
        assert_eq!(o.spec.pods, entries, "entries are kept whole");
        let status = o.status.as_ref().unwrap();
        assert_eq!(
            (o.spec.pods.capacity(), status.pods.capacity()),
            (1, 1),
            "no spare room is kept"
        );
        let report = report_of(&o, "ns", "vip").unwrap();
        assert_eq!(report.message.as_deref(), Some("kept"));
        for m in [&report.mirror_pod, &report.previous_mirror_pod] {
            let m = m.as_ref().unwrap();
            assert_eq!(
                (m.name.as_str(), m.uid.as_str(), m.config_hash.as_deref()),
                ("", "", None)
            );
            assert_eq!(
                (m.revision.as_deref(), m.ready, m.up_to_date),
                (Some("r1"), true, true)
            );
        }
    }

    #[test]
    fn writes_only_where_the_entry_differs() {
        let v1 = rendered("img:1");
        let v2 = rendered("img:2");
        let other = AssignedPod {
            set_name: "other".into(),
            ..v1.assigned_pod("ns", "other")
        };
        let nodes = vec![
            node("a", &[("role", "edge")]),
            node("b", &[("role", "edge")]),
            node("c", &[("role", "edge")]),
            node("d", &[("role", "core")]),
        ];
        let objs = objects(vec![
            object("a", vec![other.clone(), v2.assigned_pod("ns", "set")]),
            object("b", vec![v1.assigned_pod("ns", "set")]),
            // c has no object yet; d carries a stale entry of ours but no longer matches.
            object("d", vec![other, v1.assigned_pod("ns", "set")]),
        ]);
        let p = plan(
            "ns",
            "set",
            &edge_selector(),
            Some(&everywhere(&v2, &nodes)),
            &nodes,
            &objs,
        );
        let names: Vec<&str> = p.matched.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let writes: Vec<(&str, bool)> = p
            .writes
            .iter()
            .map(|w| (w.node.as_str(), w.entry.is_some()))
            .collect();
        assert_eq!(writes, [("b", true), ("c", true), ("d", false)]);
        assert_eq!(p.writes[0].entry.as_ref().unwrap().revision, v2.revision);
        assert!(
            p.writes.iter().all(|w| !w.repair),
            "new revisions and removals are no repairs"
        );
    }

    #[test]
    fn a_fallback_deadline_the_set_does_not_want_is_replaced_whole() {
        let v1 = rendered("img:1");
        let nodes = vec![
            node("a", &[("role", "edge")]),
            node("b", &[("role", "edge")]),
        ];
        let with_deadline = AssignedPod {
            fallback_deadline_seconds: Some(60),
            ..v1.assigned_pod("ns", "set")
        };
        let objs = objects(vec![
            object("a", vec![with_deadline.clone()]),
            object("b", vec![v1.assigned_pod("ns", "set")]),
        ]);
        // Fallback off: a's deadline must go, whoever wrote it.
        let p = plan(
            "ns",
            "set",
            &edge_selector(),
            Some(&everywhere(&v1, &nodes)),
            &nodes,
            &objs,
        );
        let writes: Vec<(&str, bool)> = p
            .writes
            .iter()
            .map(|w| (w.node.as_str(), w.repair))
            .collect();
        assert_eq!(writes, [("a", true)]);
        // Fallback on: b gains the deadline by apply, a is as wanted.
        let wanted: BTreeMap<String, AssignedPod> = ["a", "b"]
            .iter()
            .map(|n| (n.to_string(), with_deadline.clone()))
            .collect();
        let p = plan("ns", "set", &edge_selector(), Some(&wanted), &nodes, &objs);
        let writes: Vec<(&str, bool)> = p
            .writes
            .iter()
            .map(|w| (w.node.as_str(), w.repair))
            .collect();
        assert_eq!(writes, [("b", false)]);
    }

    #[test]
    fn invalid_spec_writes_nothing() {
        let v1 = rendered("img:1");
        let nodes = vec![node("a", &[("role", "edge")]), node("d", &[])];
        let objs = objects(vec![object("d", vec![v1.assigned_pod("ns", "set")])]);
        let p = plan("ns", "set", &edge_selector(), None, &nodes, &objs);
        assert_eq!(p.matched.len(), 1);
        assert!(p.writes.is_empty());
    }

    #[test]
    fn naming_rule_excludes_a_node_and_removes_its_entry() {
        let long_node = "n".repeat(60);
        let v1 = rendered("img:1");
        let nodes = vec![node(&long_node, &[]), node("short", &[])];
        let objs = objects(vec![object(&long_node, vec![v1.assigned_pod("ns", "set")])]);
        let p = plan(
            "ns",
            "set",
            &NodeSelector::default(),
            Some(&everywhere(&v1, &nodes)),
            &nodes,
            &objs,
        );
        assert_eq!(p.matched.len(), 2);
        let long = p.matched.iter().find(|m| m.name == long_node).unwrap();
        assert!(long
            .name_problem
            .as_deref()
            .unwrap()
            .contains("over the limit"));
        let writes: Vec<(&str, bool)> = p
            .writes
            .iter()
            .map(|w| (w.node.as_str(), w.entry.is_some()))
            .collect();
        assert_eq!(writes, [(long_node.as_str(), false), ("short", true)]);
    }

    #[test]
    fn removal_covers_every_object_with_our_entry() {
        let v1 = rendered("img:1");
        let objs = objects(vec![
            object("a", vec![v1.assigned_pod("ns", "set")]),
            object("b", vec![v1.assigned_pod("ns", "other")]),
            object("gone-node", vec![v1.assigned_pod("ns", "set")]),
        ]);
        let writes = plan_removal("ns", "set", &objs);
        let names: Vec<&str> = writes.iter().map(|w| w.node.as_str()).collect();
        assert_eq!(names, ["a", "gone-node"]);
        assert!(writes.iter().all(|w| w.entry.is_none()));
    }

    #[test]
    fn an_entry_edited_by_hand_is_rewritten() {
        let v1 = rendered("img:1");
        let mut edited = v1.assigned_pod("ns", "set");
        edited.revision_name = "set-by-hand".into();
        let nodes = vec![node("a", &[]), node("b", &[])];
        let objs = objects(vec![
            object("a", vec![edited]),
            object("b", vec![v1.assigned_pod("ns", "set")]),
        ]);
        let p = plan(
            "ns",
            "set",
            &NodeSelector::default(),
            Some(&everywhere(&v1, &nodes)),
            &nodes,
            &objs,
        );
        let names: Vec<&str> = p.writes.iter().map(|w| w.node.as_str()).collect();
        assert_eq!(names, ["a"]);
        assert!(p.writes[0].repair);
        assert_eq!(
            p.writes[0].entry.as_ref(),
            Some(&v1.assigned_pod("ns", "set"))
        );
    }

    #[test]
    fn entries_from_before_revisions_are_rewritten() {
        // Written by an operator that embedded manifests: no revision name, same revision.
        let v1 = rendered("img:1");
        let mut old = v1.assigned_pod("ns", "set");
        old.revision_name = String::new();
        let objs = objects(vec![object("a", vec![old])]);
        let p = plan(
            "ns",
            "set",
            &NodeSelector::default(),
            Some(&everywhere(&v1, &[node("a", &[])])),
            &[node("a", &[])],
            &objs,
        );
        assert_eq!(p.writes.len(), 1);
        assert_eq!(
            p.writes[0].entry.as_ref().unwrap().revision_name,
            format!("set-{}", v1.revision)
        );
    }

    #[test]
    fn lookups() {
        let v1 = rendered("img:1");
        let obj = object("a", vec![v1.assigned_pod("ns", "set")]);
        assert!(entry_of(&obj, "ns", "set").is_some());
        assert!(entry_of(&obj, "other-ns", "set").is_none());
        assert!(report_of(&obj, "ns", "set").is_none());
    }
}
