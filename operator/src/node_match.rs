//! Which nodes a set selects, and the slice of a Node the operator keeps in memory.
//!
//! Pure functions only: the controller feeds them Nodes from its reflector store.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

/// A `metav1.LabelSelector` checked once and ready to match label maps.
///
/// `matchLabels` and `matchExpressions` are ANDed, as in every Kubernetes selector. An absent or
/// empty selector selects everything, like a DaemonSet without a node selector does. Matching is
/// kube-core's [`Selector`]; what this type adds is the API server's validation, with the field
/// path of every problem, for a set that reached the cluster without it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSelector {
    selector: Selector,
}

impl NodeSelector {
    /// Compiles a selector, or returns every problem with it (a set with a broken selector
    /// selects no node rather than guessing).
    pub fn compile(selector: Option<&LabelSelector>) -> Result<Self, Vec<String>> {
        let Some(selector) = selector else {
            return Ok(Self::default());
        };
        let mut problems = Vec::new();
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let path = format!("spec.nodeSelector.matchExpressions[{i}]");
            let has_values = expr.values.as_ref().is_some_and(|v| !v.is_empty());
            if expr.key.is_empty() {
                problems.push(format!("{path}.key: must not be empty"));
                continue;
            }
            // The API server's selector validation has the same rules; repeating them here keeps
            // a set from silently selecting the wrong nodes if validation was skipped.
            match expr.operator.as_str() {
                "In" | "NotIn" if !has_values => problems.push(format!(
                    "{path}.values: must be non-empty for operator {}",
                    expr.operator
                )),
                "Exists" | "DoesNotExist" if has_values => problems.push(format!(
                    "{path}.values: must be empty for operator {}",
                    expr.operator
                )),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => problems.push(format!(
                    "{path}.operator: unknown operator {other:?} (want In, NotIn, Exists or DoesNotExist)"
                )),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Selector::try_from(selector.clone())
            .map(|selector| Self { selector })
            .map_err(|e| vec![format!("spec.nodeSelector: {e}")])
    }

    /// Whether a node with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }

    /// Whether this node is selected.
    pub fn matches_node(&self, node: &Node) -> bool {
        match &node.metadata.labels {
            Some(labels) => self.matches(labels),
            None => self.matches(&BTreeMap::new()),
        }
    }
}

/// Whether the node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    ready_condition(node).is_some_and(|c| c.status == "True")
}

pub(crate) fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Drops everything of a Node the operator does not use before it enters the store.
///
/// Kept: name, UID, labels, resourceVersion, deletionTimestamp, taints (without their time), and
/// the `Ready` condition's status.
/// A busy node's object is 10–30 KB (images, managed fields, addresses); at 5,000 nodes that is
/// over 100 MB of cache for nothing, while the kept slice is a few hundred bytes.
pub fn trim_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    // Taints decide which selected nodes a set targets; the rest of the spec is not used.
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .map(|mut taints| {
            for taint in &mut taints {
                taint.time_added = None;
            }
            taints
        });
    node.spec = taints.map(|taints| NodeSpec {
        taints: Some(taints),
        ..Default::default()
    });
    let ready = ready_condition(node).map(|c| NodeCondition {
        type_: c.type_.clone(),
        status: c.status.clone(),
        // Kept: the start of a rollout's progress deadline for a node that was down.
        last_transition_time: c.last_transition_time.clone(),
        ..Default::default()
    });
    node.status = Some(NodeStatus {
        conditions: ready.map(|c| vec![c]),
        ..Default::default()
    });
}

/// A hash of what makes a node event matter to sets: identity, labels, taints, readiness. Heartbeats and
/// image lists change far more often and never change which sets select the node.
pub fn node_trigger_key(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.uid.hash(&mut h);
    node.metadata.labels.hash(&mut h);
    node_ready(node).hash(&mut h);
    for taint in node.spec.iter().flat_map(|s| s.taints.iter().flatten()) {
        (&taint.key, &taint.value, &taint.effect).hash(&mut h);
    }
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| v.to_string()).collect())
            },
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        exprs: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: if match_labels.is_empty() {
                None
            } else {
                Some(labels(match_labels))
            },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        }
    }

    fn compile(s: &LabelSelector) -> NodeSelector {
        NodeSelector::compile(Some(s)).expect("valid selector")
    }

    #[test]
    fn absent_and_empty_select_everything() {
        let absent = NodeSelector::compile(None).unwrap();
        assert!(absent.matches(&labels(&[])));
        assert!(absent.matches(&labels(&[("a", "b")])));
        let empty = compile(&LabelSelector::default());
        assert!(empty.matches(&labels(&[])));
        let empty_lists = compile(&LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(vec![]),
        });
        assert!(empty_lists.matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = compile(&selector(&[("role", "edge"), ("zone", "a")], vec![]));
        assert!(s.matches(&labels(&[("role", "edge"), ("zone", "a"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("role", "edge")])));
        assert!(!s.matches(&labels(&[("role", "edge"), ("zone", "b")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn in_and_not_in() {
        let s = compile(&selector(&[], vec![expr("zone", "In", &["a", "b"])]));
        assert!(s.matches(&labels(&[("zone", "a")])));
        assert!(s.matches(&labels(&[("zone", "b")])));
        assert!(!s.matches(&labels(&[("zone", "c")])));
        assert!(!s.matches(&labels(&[])), "In needs the key");

        let s = compile(&selector(&[], vec![expr("zone", "NotIn", &["a"])]));
        assert!(!s.matches(&labels(&[("zone", "a")])));
        assert!(s.matches(&labels(&[("zone", "b")])));
        assert!(
            s.matches(&labels(&[])),
            "NotIn matches nodes without the key"
        );
    }

    #[test]
    fn exists_and_does_not_exist() {
        let s = compile(&selector(&[], vec![expr("gpu", "Exists", &[])]));
        assert!(s.matches(&labels(&[("gpu", "")])));
        assert!(!s.matches(&labels(&[("cpu", "x")])));
        let s = compile(&selector(&[], vec![expr("gpu", "DoesNotExist", &[])]));
        assert!(!s.matches(&labels(&[("gpu", "yes")])));
        assert!(s.matches(&labels(&[])));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = compile(&selector(
            &[("role", "edge")],
            vec![
                expr("zone", "In", &["a"]),
                expr("maintenance", "DoesNotExist", &[]),
            ],
        ));
        assert!(s.matches(&labels(&[("role", "edge"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[
            ("role", "edge"),
            ("zone", "a"),
            ("maintenance", "")
        ])));
        assert!(!s.matches(&labels(&[("role", "core"), ("zone", "a")])));
    }

    #[test]
    fn invalid_selectors_report_every_problem() {
        let err = NodeSelector::compile(Some(&selector(
            &[],
            vec![
                expr("a", "In", &[]),
                expr("b", "Exists", &["x"]),
                expr("c", "Gt", &["1"]),
                expr("", "Exists", &[]),
                expr("d", "NotIn", &[]),
                expr("e", "DoesNotExist", &["y"]),
            ],
        )))
        .unwrap_err();
        assert_eq!(err.len(), 6, "{err:?}");
        assert!(err[0].contains("matchExpressions[0].values"));
        assert!(err[2].contains("unknown operator \"Gt\""));
        assert!(err[3].contains("key: must not be empty"));
    }

    fn node(name: &str, node_labels: &[(&str, &str)], ready: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(labels(node_labels)),
                annotations: Some(labels(&[("big", "annotation")])),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(NodeStatus {
                conditions: ready.map(|s| {
                    vec![
                        NodeCondition {
                            type_: "MemoryPressure".into(),
                            status: "False".into(),
                            ..Default::default()
                        },
                        NodeCondition {
                            type_: "Ready".into(),
                            status: s.into(),
                            message: Some("kubelet is posting ready status".into()),
                            ..Default::default()
                        },
                    ]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn matches_node_without_labels() {
        let mut n = node("n1", &[], None);
        n.metadata.labels = None;
        assert!(NodeSelector::default().matches_node(&n));
        let s = compile(&selector(&[], vec![expr("x", "DoesNotExist", &[])]));
        assert!(s.matches_node(&n));
        let s = compile(&selector(&[("x", "y")], vec![]));
        assert!(!s.matches_node(&n));
    }

    #[test]
    fn readiness() {
        assert!(node_ready(&node("a", &[], Some("True"))));
        assert!(!node_ready(&node("a", &[], Some("Unknown"))));
        assert!(!node_ready(&node("a", &[], Some("False"))));
        assert!(!node_ready(&node("a", &[], None)));
    }

    #[test]
    fn trimming_keeps_what_matters() {
        let mut n = node("a", &[("zone", "x")], Some("True"));
        let key = node_trigger_key(&n);
        trim_node(&mut n);
        assert_eq!(n.metadata.name.as_deref(), Some("a"));
        assert_eq!(n.metadata.uid.as_deref(), Some("uid-a"));
        assert_eq!(n.metadata.labels, Some(labels(&[("zone", "x")])));
        assert!(n.metadata.annotations.is_none());
        assert!(n.spec.is_none());
        let conditions = n.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].message, None);
        assert!(node_ready(&n));
        assert_eq!(node_trigger_key(&n), key, "trimming keeps the trigger key");

        let mut no_status = node("b", &[], None);
        trim_node(&mut no_status);
        assert!(!node_ready(&no_status));
    }

    #[test]
    fn trimming_keeps_taints_and_taints_change_the_trigger_key() {
        use k8s_openapi::api::core::v1::Taint;
        let mut n = node("a", &[], Some("True"));
        let untainted = node_trigger_key(&n);
        n.spec = Some(NodeSpec {
            pod_cidr: Some("10.0.0.0/24".into()),
            taints: Some(vec![Taint {
                key: "dedicated".into(),
                value: Some("db".into()),
                effect: "NoExecute".into(),
                time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(5).unwrap(),
                )),
            }]),
            ..Default::default()
        });
        let tainted = node_trigger_key(&n);
        assert_ne!(tainted, untainted);
        trim_node(&mut n);
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.pod_cidr, None);
        let taints = spec.taints.as_ref().unwrap();
        assert_eq!(
            (taints[0].key.as_str(), taints[0].time_added.as_ref()),
            ("dedicated", None)
        );
        assert_eq!(node_trigger_key(&n), tainted);
    }

    #[test]
    fn trigger_key_changes_with_labels_and_readiness_only() {
        let base = node("a", &[("zone", "x")], Some("True"));
        let mut heartbeat = base.clone();
        heartbeat
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[1]
            .message = Some("other".into());
        assert_eq!(node_trigger_key(&base), node_trigger_key(&heartbeat));
        assert_ne!(
            node_trigger_key(&base),
            node_trigger_key(&node("a", &[("zone", "y")], Some("True")))
        );
        assert_ne!(
            node_trigger_key(&base),
            node_trigger_key(&node("a", &[("zone", "x")], Some("False")))
        );
    }
}
