//! When a set being deleted may let go of its finalizer. Pure.
//!
//! The finalizer exists so a deleted set's static pods leave the nodes before the set is gone
//! from the API: the operator removes the set's entries, then waits until no agent reports the
//! set any more. But a node that is gone, or whose agent is gone, would hold the deletion forever,
//! so such nodes are skipped (and named in a Warning Event). Their agent removes the file on its
//! own when it comes back, because the entry is gone from its node object.
//!
//! An agent that is alive lets go within seconds of its entry's removal, so the deletion's own age
//! tells a silent agent apart: agents write no heartbeat (a quiet fleet writes nothing), and the
//! node's liveness is the kubelet's, seen as the Node's `Ready`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use staticpodset_api::NodeStaticPods;

use crate::conditions::MAX_NODES_IN_MESSAGE;
use crate::node_match::node_ready;
use crate::planner::{entry_of, report_of};

/// Why a node that still holds the set was not waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The Node object no longer exists.
    NodeGone,
    /// The Node's `Ready` condition is not `True`.
    NodeNotReady,
    /// The node's agent has not let go of the set within the node-gone timeout of the deletion.
    AgentSilent,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NodeGone => "node deleted",
            SkipReason::NodeNotReady => "node not ready",
            SkipReason::AgentSilent => "agent did not let go in time",
        })
    }
}

/// The outcome of [`cleanup_decision`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupDecision {
    /// Nodes that still hold the set and are alive: the finalizer must wait for them.
    pub waiting: Vec<String>,
    /// Nodes that still hold the set but are not waited for, and why.
    pub skipped: Vec<(String, SkipReason)>,
}

impl CleanupDecision {
    /// Whether the finalizer may be removed.
    pub fn done(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The nodes waited for, as the error message names them.
    pub fn waiting_list(&self) -> String {
        list(self.waiting.iter().map(String::as_str))
    }

    /// The Warning Event's note when nodes were let go without confirmation; `None` when none
    /// was.
    pub fn skipped_note(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .map(|(node, reason)| format!("{node} ({reason})"))
            .collect();
        Some(format!(
            "released without confirmation from {} node(s): {}; their agents remove the pod when they return",
            skipped.len(),
            list(skipped.iter().map(String::as_str))
        ))
    }
}

/// Node names for a message, bounded: a deletion may wait for thousands of nodes.
fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    let shown = items.len().min(MAX_NODES_IN_MESSAGE * 4);
    let mut text = items[..shown].join(", ");
    if items.len() > shown {
        text.push_str(&format!(" and {} more", items.len() - shown));
    }
    text
}

/// Decides, for set `namespace/name` being deleted, which nodes still hold it (an entry in the
/// spec not yet removed, or a report the agent has not dropped yet) and whether to wait for them.
///
/// A node is skipped when its Node is gone or not Ready, or, once the set has been deleting for
/// longer than `node_gone_timeout` (since `deleted_at`, its deletionTimestamp), when it still
/// holds the set: its agent is not answering.
pub fn cleanup_decision(
    namespace: &str,
    name: &str,
    objects: &BTreeMap<String, Arc<NodeStaticPods>>,
    nodes: &BTreeMap<String, Arc<Node>>,
    deleted_at: Timestamp,
    now: Timestamp,
    node_gone_timeout: Duration,
) -> CleanupDecision {
    let age = now.duration_since(deleted_at);
    // A deletion time in the future (clock skew) is a deletion that just started.
    let timed_out = !age.is_negative() && age.unsigned_abs() > node_gone_timeout;
    let mut decision = CleanupDecision::default();
    for (node_name, obj) in objects {
        let holds =
            entry_of(obj, namespace, name).is_some() || report_of(obj, namespace, name).is_some();
        if !holds {
            continue;
        }
        let skip = match nodes.get(node_name) {
            None => Some(SkipReason::NodeGone),
            Some(node) if !node_ready(node) => Some(SkipReason::NodeNotReady),
            Some(_) => timed_out.then_some(SkipReason::AgentSilent),
        };
        match skip {
            Some(reason) => decision.skipped.push((node_name.clone(), reason)),
            None => decision.waiting.push(node_name.clone()),
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_bounded() {
        let names: Vec<String> = (0..30).map(|i| format!("n{i}")).collect();
        let text = list(names.iter().map(String::as_str));
        assert!(text.ends_with(" and 10 more"), "{text}");
    }
    use crate::planner::tests::{node, object};
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use kube::ResourceExt;
    use staticpodset_api::{AssignedPod, ManifestPhase, NodeStaticPodsStatus, PodReport};

    const TIMEOUT: Duration = Duration::from_secs(300);

    fn now() -> Timestamp {
        Timestamp::from_second(10_000).unwrap()
    }

    fn ready_node(name: &str, ready: &str) -> Arc<Node> {
        let mut n = (*node(name, &[])).clone();
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(n)
    }

    fn entry(set: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: set.into(),
            revision: "r".into(),
            revision_name: format!("{set}-r"),
            file_name: format!("staticpodset_ns_{set}.yaml"),
            ..Default::default()
        }
    }

    /// A node object whose agent reports `set` (or not).
    fn reporting(node: &str, set: Option<&str>) -> Arc<NodeStaticPods> {
        let mut obj = (*object(node, vec![])).clone();
        obj.status = Some(NodeStaticPodsStatus {
            pods: set
                .map(|s| PodReport {
                    set_namespace: "ns".into(),
                    set_name: s.into(),
                    phase: ManifestPhase::Removing,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        Arc::new(obj)
    }

    /// The deletion began `secs` before `now()`.
    fn deleted(secs: i64) -> Timestamp {
        Timestamp::from_second(now().as_second() - secs).unwrap()
    }

    fn map<T: kube::Resource>(list: Vec<Arc<T>>) -> BTreeMap<String, Arc<T>> {
        list.into_iter().map(|o| (o.name_any(), o)).collect()
    }

    #[test]
    fn waits_for_live_nodes_and_skips_dead_ones() {
        let objects = map(vec![
            reporting("live", Some("set")),
            reporting("gone", Some("set")),
            reporting("notready", Some("set")),
            reporting("clean", Some("other")),
        ]);
        let nodes = map(vec![
            ready_node("live", "True"),
            ready_node("notready", "Unknown"),
            ready_node("clean", "True"),
        ]);
        let d = cleanup_decision("ns", "set", &objects, &nodes, deleted(10), now(), TIMEOUT);
        assert_eq!(d.waiting, ["live"]);
        assert_eq!(
            d.skipped,
            [
                ("gone".to_string(), SkipReason::NodeGone),
                ("notready".to_string(), SkipReason::NodeNotReady),
            ]
        );
        assert!(!d.done());
        // Past the timeout, a Ready node that still holds the set has a silent agent.
        let d = cleanup_decision("ns", "set", &objects, &nodes, deleted(301), now(), TIMEOUT);
        assert!(d.done());
        assert_eq!(
            d.skipped,
            [
                ("gone".to_string(), SkipReason::NodeGone),
                ("live".to_string(), SkipReason::AgentSilent),
                ("notready".to_string(), SkipReason::NodeNotReady),
            ]
        );
    }

    #[test]
    fn exactly_at_the_timeout_still_waits() {
        let objects = map(vec![reporting("a", Some("set"))]);
        let nodes = map(vec![ready_node("a", "True")]);
        let d = cleanup_decision("ns", "set", &objects, &nodes, deleted(300), now(), TIMEOUT);
        assert_eq!(d.waiting, ["a"]);
        // A deletion time ahead of the operator's clock is a deletion that just began.
        let d = cleanup_decision("ns", "set", &objects, &nodes, deleted(-600), now(), TIMEOUT);
        assert_eq!(d.waiting, ["a"]);
    }

    #[test]
    fn an_entry_not_yet_removed_counts_as_held() {
        let mut obj = (*reporting("a", None)).clone();
        obj.spec.pods.push(entry("set"));
        let objects = map(vec![Arc::new(obj)]);
        let nodes = map(vec![ready_node("a", "True")]);
        let d = cleanup_decision("ns", "set", &objects, &nodes, deleted(1), now(), TIMEOUT);
        assert_eq!(d.waiting, ["a"]);
    }

    #[test]
    fn done_when_no_node_holds_the_set() {
        let objects = map(vec![reporting("a", Some("other")), reporting("b", None)]);
        let nodes = map(vec![ready_node("a", "True")]);
        let d = cleanup_decision("ns", "set", &objects, &nodes, deleted(1), now(), TIMEOUT);
        assert!(d.done());
        assert!(d.skipped.is_empty());
        // Only skipped nodes left: done too, and they are named.
        let objects = map(vec![reporting("gone", Some("set"))]);
        let d = cleanup_decision(
            "ns",
            "set",
            &objects,
            &BTreeMap::new(),
            deleted(1),
            now(),
            TIMEOUT,
        );
        assert!(d.done());
        assert_eq!(d.skipped.len(), 1);
    }
}
