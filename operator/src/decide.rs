//! What one reconcile of one set decides, as pure functions of what it read: [`evaluate`] the
//! spec (before anything is written: the revision object must exist before an entry names it),
//! then [`decide`] the rest from the caches — node writes, the status and its Events, newly
//! failed nodes, when to look again, and which revisions to keep. The controller only reads
//! the [`Snapshot`] and carries out the [`Decision`].
//!
//! Matched nodes, the rollout settings and the set's history are computed once here and handed
//! to every rule that needs them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use staticpodset_api::validation;
use staticpodset_api::{
    NodeStaticPods, SetKey, StaticPodRevision, StaticPodSet, StaticPodSetStatus,
};

use crate::conditions::{
    Invalid, RollbackProblem, REASON_INVALID_NODE_SELECTOR, REASON_INVALID_TEMPLATE,
    REASON_INVALID_UPDATE_STRATEGY, REASON_TEMPLATE_TOO_LARGE,
};
use crate::config;
use crate::node_match::NodeSelector;
use crate::planner::{self, MatchedNode, NodeWrite, SetOnNodes};
use crate::render::{render, RenderError, Rendered};
use crate::revision_size;
use crate::revisions;
use crate::rollout::{plan_rollout, NodeFacts, NodeFailure, RolloutInput, Strategy};
use crate::rollout_state::{self, strategy_of};
use crate::status::{self, NodeState, Notice, Observed};
use crate::taints;

/// The shortest wait before a rollout's clock is looked at again.
const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// What [`evaluate`] makes of a set's spec.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The compiled node selector; `None` when it is unusable.
    pub selector: Option<NodeSelector>,
    /// The rollout settings, defaults filled in (the defaults when they are unusable: the spec
    /// is then invalid and nothing is rolled out).
    pub strategy: Strategy,
    /// The rendered static pod, or why the spec is not distributed.
    pub rendered: Result<Rendered, Invalid>,
}

/// Validates and renders the set: the compiled selector (if usable), the rollout settings and
/// the rendered pod or why the spec is invalid.
///
/// The rules for what a static pod may contain live in the API crate
/// (`staticpodset_api::validation`), shared with the CRD's CEL rules: a set that reached the
/// cluster without them (an older CRD, one applied by hand) is reported here instead of being
/// written to nodes whose kubelet would refuse it. A name breaking the naming rule is reported
/// with the template's problems, under the same reason. A pod too large to be stored as a
/// revision ([`revision_size`]) is refused here too, so that nothing is written for it.
pub fn evaluate(
    set: &StaticPodSet,
    namespace: &str,
    name: &str,
    config: &Result<Option<config::Resolved>, config::ConfigProblem>,
) -> Evaluation {
    let selector = NodeSelector::compile(set.spec.node_selector.as_ref());
    let mut template_problems = validation::set_name_problems(name);
    match &set.spec.template.spec {
        Some(spec) => template_problems.extend(validation::template_problems(spec)),
        None => template_problems.push(RenderError::MissingSpec.to_string()),
    }
    template_problems.extend(validation::surge_problems(&set.spec));
    let strategy = strategy_of(&set.spec);
    let strategy_problem = strategy
        .as_ref()
        .err()
        .map(|e| format!("spec.updateStrategy.rollingUpdate.{e}"));
    let rendered = if let (true, Some(problem)) = (template_problems.is_empty(), strategy_problem) {
        Err(Invalid {
            reason: REASON_INVALID_UPDATE_STRATEGY,
            problems: vec![problem],
        })
    } else if !template_problems.is_empty() {
        let mut problems = template_problems;
        if let Err(selector_problems) = &selector {
            problems.extend(selector_problems.iter().cloned());
        }
        Err(Invalid {
            reason: REASON_INVALID_TEMPLATE,
            problems,
        })
    } else if let Err(problems) = &selector {
        Err(Invalid {
            reason: REASON_INVALID_NODE_SELECTOR,
            problems: problems.clone(),
        })
    } else {
        match config {
            Err(problem) => Err(Invalid {
                reason: problem.reason,
                problems: problem.problems.clone(),
            }),
            Ok(resolved) => render(
                namespace,
                name,
                &config::localize(&set.spec.template, namespace, name, resolved.as_ref()),
            )
            .map_err(|e| Invalid {
                reason: REASON_INVALID_TEMPLATE,
                problems: vec![e.to_string()],
            })
            .and_then(|rendered| {
                revision_size::check(&rendered.manifest, &set.spec.template)
                    .map(|()| rendered)
                    .map_err(|e| Invalid {
                        reason: REASON_TEMPLATE_TOO_LARGE,
                        problems: vec![e.to_string()],
                    })
            }),
        }
    };
    Evaluation {
        selector: selector.ok(),
        strategy: strategy.unwrap_or_default(),
        rendered,
    }
}

/// Everything [`decide`] looks at: the set, its evaluation, and the caches as one reconcile
/// read them.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// The set as the controller's cache has it.
    pub set: &'a StaticPodSet,
    /// Its namespace and name.
    pub key: &'a SetKey,
    /// [`evaluate`]'s result for it.
    pub evaluation: &'a Evaluation,
    /// The number of the StaticPodRevision of the rendered revision, once it exists; `None`
    /// while the spec is invalid.
    pub revision_number: Option<i64>,
    /// A `staticpods.dev/rollback-to` this reconcile refused.
    pub rollback_failed: Option<&'a RollbackProblem>,
    /// Every Node (trimmed).
    pub nodes: &'a [Arc<Node>],
    /// Every node object, by name.
    pub objects: &'a BTreeMap<String, Arc<NodeStaticPods>>,
    /// The set's StaticPodRevisions (its history, see [`revisions::history_of`]).
    pub history: &'a [Arc<StaticPodRevision>],
    /// The time of this reconcile.
    pub now: Timestamp,
    /// The longest a set waits between reconciles.
    pub resync: Duration,
}

/// What one reconcile does.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Node-object writes, sorted by node; none while the spec is invalid.
    pub writes: Vec<NodeWrite>,
    /// Nodes that failed a revision just now, by its progress deadline or by falling back
    /// (each gets a Warning Event of [`crate::conditions::failure_reason`]).
    pub newly_failed: Vec<NodeFailure>,
    /// The status the set should show.
    pub status: StaticPodSetStatus,
    /// `status` differs from what the set shows: it must be written.
    pub status_changed: bool,
    /// The Events the change of status deserves; published only once the status is written.
    pub notices: Vec<Notice>,
    /// When to reconcile again without any event: the next rollout clock, or the resync.
    pub requeue: Duration,
    /// Revisions (hashes) the history must keep, and the revisions beyond the history limit to
    /// delete; `None` while the spec is invalid (nothing is pruned).
    pub history: Option<HistoryDecision>,
}

/// Which revisions of the history stay and which go.
#[derive(Clone, Debug)]
pub struct HistoryDecision {
    /// What the set asks for, what it last fully ran, and what any node is assigned or runs.
    pub keep: BTreeSet<String>,
    /// Old revisions beyond `spec.revisionHistoryLimit`, none of them in `keep`.
    pub prune: Vec<StaticPodRevision>,
}

/// Decides one reconcile of a set (not being deleted) from `snapshot`. See the module docs.
pub fn decide(snapshot: &Snapshot<'_>) -> Decision {
    let Snapshot {
        set,
        key,
        evaluation,
        nodes,
        objects,
        now,
        ..
    } = *snapshot;
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let previous = set.status.as_ref();
    let strategy = &evaluation.strategy;

    // While the spec is invalid the nodes keep what they run: the last valid revision.
    let (revision, revision_number) = match &evaluation.rendered {
        Ok(r) => (Some(r.revision.clone()), snapshot.revision_number),
        Err(_) => (
            previous.and_then(|s| s.update_revision.clone()),
            previous.and_then(|s| s.update_revision_number),
        ),
    };
    let nodes_by_name: BTreeMap<&str, &Node> = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
        .collect();
    let on_nodes = SetOnNodes::new(objects, namespace, name);
    let mut matched = match &evaluation.selector {
        // With surge the longer of the set's two mirror pod names must fit.
        Some(selector) if validation::surges(&set.spec) => planner::matched(
            &staticpodset_api::keys::slot_pod_name(name, staticpodset_api::keys::Slot::Surge),
            selector,
            nodes,
        ),
        Some(selector) => planner::matched(name, selector, nodes),
        // Without a usable selector, the nodes that carry the set are the ones it is on.
        None => on_nodes
            .iter()
            .filter(|(_, on)| on.entry.is_some())
            .map(|(node, _)| MatchedNode {
                name: node.to_string(),
                name_problem: None,
            })
            .collect(),
    };
    // Taints leave selected nodes out, as for a DaemonSet; with no usable selector the nodes
    // already carrying the set are kept as they are.
    let mut excluded: Vec<(String, String)> = Vec::new();
    if evaluation.selector.is_some() {
        let tolerations = taints::daemon_tolerations(set.spec.template.spec.as_ref());
        matched.retain(|m| {
            let Some(node) = nodes_by_name.get(m.name.as_str()) else {
                return true;
            };
            let running = on_nodes.entry(&m.name).is_some();
            let left = taints::untolerated(&tolerations, node, running);
            if left.is_empty() {
                return true;
            }
            let described: Vec<String> = left.into_iter().map(taints::describe).collect();
            excluded.push((m.name.clone(), described.join(", ")));
            false
        });
    }
    let facts: Vec<NodeFacts> = matched
        .iter()
        .filter(|m| m.name_problem.is_none())
        .map(|m| {
            rollout_state::node_facts(
                &m.name,
                nodes_by_name.get(m.name.as_str()).copied(),
                on_nodes.entry(&m.name),
                on_nodes.report(&m.name),
                now,
            )
        })
        .collect();
    let input = revision.as_ref().map(|update| RolloutInput {
        update_revision: update.clone(),
        last_healthy_revision: previous.and_then(|s| s.current_revision.clone()),
        revision_numbers: snapshot
            .history
            .iter()
            .map(|r| (r.spec.hash.clone(), r.spec.revision))
            .collect(),
        strategy: strategy.clone(),
        nodes: facts,
        now,
    });
    let rollout = input.as_ref().map(plan_rollout);
    let writes = match (&evaluation.selector, &evaluation.rendered, &rollout) {
        (Some(_), Ok(rendered), Some(rollout)) => {
            let current = on_nodes.entries();
            let digests = rollout_state::revision_digests(snapshot.history, rendered, &current);
            let wanted = rollout_state::desired_entries(
                rollout,
                namespace,
                name,
                &current,
                &digests,
                rollout_state::agent_settings_of(&set.spec),
                now,
            );
            planner::writes(&matched, &wanted, nodes, &current)
        }
        _ => Vec::new(),
    };
    // A rollout's clocks (progress deadline, minReadySeconds) run out without any event.
    let requeue = rollout
        .as_ref()
        .zip(input.as_ref())
        .and_then(|(r, input)| rollout_state::next_check(r, &input.nodes, strategy))
        .and_then(|at| Duration::try_from(at.duration_since(now)).ok())
        .map_or(snapshot.resync, |wait| {
            wait.clamp(MIN_REQUEUE, snapshot.resync.max(MIN_REQUEUE))
        });
    let newly_failed = rollout
        .as_ref()
        .map(|r| r.newly_failed.clone())
        .unwrap_or_default();

    let observed = Observed {
        generation: set.metadata.generation,
        revision: revision.as_deref(),
        revision_number,
        invalid: evaluation.rendered.as_ref().err().cloned(),
        rollback_failed: snapshot.rollback_failed.cloned(),
        excluded: &excluded,
        nodes: matched
            .iter()
            .map(|m| NodeState {
                node: &m.name,
                report: on_nodes.report(&m.name),
                name_problem: m.name_problem.as_deref(),
            })
            .collect(),
        rollout,
    };
    let status = status::aggregate(previous, &observed, &Time(now));
    let status_changed = previous != Some(&status);
    let notices = if status_changed {
        status::notices(previous, &status)
    } else {
        Vec::new()
    };
    let history = evaluation.rendered.as_ref().ok().map(|rendered| {
        let mut keep = revisions::in_use(&on_nodes);
        keep.insert(rendered.revision.clone());
        keep.extend(status.current_revision.clone());
        let prune = revisions::prune(snapshot.history, &keep, revisions::history_limit(set))
            .into_iter()
            .cloned()
            .collect();
        HistoryDecision { keep, prune }
    });
    Decision {
        writes,
        newly_failed,
        status,
        status_changed,
        notices,
        requeue,
        history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::*;
    use crate::planner::tests::object;
    use crate::rollout::FailureCause;
    use k8s_openapi::api::core::v1::{
        Container, NodeCondition, NodeStatus, PodSpec, PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };
    use staticpodset_api::AssignedPod;
    use staticpodset_api::{
        FallbackReport, ManifestPhase, MirrorPodReport, NodeStaticPodsStatus, PodReport,
        StaticPodSetSpec, DEFAULT_FALLBACK_DEADLINE_SECONDS,
    };

    fn set(spec: Option<PodSpec>, selector: Option<LabelSelector>) -> StaticPodSet {
        let mut s = StaticPodSet::new(
            "vip",
            StaticPodSetSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec,
                },
                node_selector: selector,
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s
    }

    fn pod_spec() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some("img".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn broken_selector() -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "In".into(),
                values: None,
            }]),
        }
    }

    #[test]
    fn evaluation_of_specs() {
        let Evaluation {
            selector, rendered, ..
        } = evaluate(&set(Some(pod_spec()), None), "ns", "vip", &Ok(None));
        assert!(selector.is_some());
        assert_eq!(rendered.unwrap().manifest["metadata"]["name"], "vip");

        let Evaluation { rendered, .. } = evaluate(&set(None, None), "ns", "vip", &Ok(None));
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert_eq!(invalid.problems, ["spec.template.spec: required"]);

        let Evaluation {
            selector, rendered, ..
        } = evaluate(
            &set(Some(pod_spec()), Some(broken_selector())),
            "ns",
            "vip",
            &Ok(None),
        );
        assert!(selector.is_none());
        assert_eq!(rendered.unwrap_err().reason, REASON_INVALID_NODE_SELECTOR);

        // The API crate's rules apply: a Secret volume, and the set name rule.
        let mut secret = pod_spec();
        secret.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
            name: "s".into(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                items: Some(vec![]),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        let Evaluation { rendered, .. } =
            evaluate(&set(Some(secret), None), "ns", "vip", &Ok(None));
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert!(
            invalid.problems[0].contains("volumes[0]"),
            "{:?}",
            invalid.problems
        );
        let long = "x".repeat(41);
        let Evaluation { rendered, .. } =
            evaluate(&set(Some(pod_spec()), None), "ns", &long, &Ok(None));
        assert!(rendered.unwrap_err().problems[0].starts_with("metadata.name"));

        // Both broken: the template reason wins and every problem is listed.
        let Evaluation { rendered, .. } = evaluate(
            &set(Some(PodSpec::default()), Some(broken_selector())),
            "ns",
            "vip",
            &Ok(None),
        );
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert_eq!(invalid.problems.len(), 2);

        // A valid template with a missing ConfigMap: the config's reason, nothing rendered.
        let missing = Err(config::ConfigProblem {
            reason: REASON_CONFIG_NOT_FOUND,
            problems: vec!["spec.template.spec.volumes[0].configMap: not found".into()],
        });
        let Evaluation { rendered, .. } =
            evaluate(&set(Some(pod_spec()), None), "ns", "vip", &missing);
        assert_eq!(rendered.unwrap_err().reason, REASON_CONFIG_NOT_FOUND);
        // A broken template still reports the template first.
        let Evaluation { rendered, .. } = evaluate(
            &set(Some(PodSpec::default()), Some(broken_selector())),
            "ns",
            "vip",
            &missing,
        );
        let invalid = rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_INVALID_TEMPLATE);
        assert_eq!(invalid.problems.len(), 2);
    }

    const RESYNC: Duration = Duration::from_secs(300);

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    /// A Ready Node, Ready for long.
    fn ready_node(name: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(Timestamp::from_second(1).unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// A node object whose agent runs `entry` Ready (and wrote it), as after a finished rollout.
    fn running(node: &str, mut entry: AssignedPod) -> Arc<NodeStaticPods> {
        entry.assigned_time = Some(Time(Timestamp::from_second(1).unwrap()));
        let mut o = (*object(node, vec![entry.clone()])).clone();
        o.status = Some(NodeStaticPodsStatus {
            pods: vec![PodReport {
                set_namespace: entry.set_namespace.clone(),
                set_name: entry.set_name.clone(),
                phase: ManifestPhase::Written,
                written_revision: Some(entry.revision.clone()),
                mirror_pod: Some(MirrorPodReport {
                    name: format!("{}-{node}", entry.set_name),
                    uid: format!("uid-{node}"),
                    revision: Some(entry.revision.clone()),
                    up_to_date: true,
                    ready: true,
                    ready_since: Some(Time(Timestamp::from_second(2).unwrap())),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        Arc::new(o)
    }

    fn named_set(image: &str) -> StaticPodSet {
        let mut s = StaticPodSet::new(
            "vip",
            StaticPodSetSpec {
                template: crate::fixtures::template(image),
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some("set-uid".into());
        s.metadata.generation = Some(1);
        s
    }

    fn decide_for(
        set: &StaticPodSet,
        nodes: &[Arc<Node>],
        objects: &BTreeMap<String, Arc<NodeStaticPods>>,
    ) -> (Evaluation, Decision) {
        let key = SetKey::new("ns", "vip");
        let evaluation = evaluate(set, "ns", "vip", &Ok(None));
        let decision = decide(&Snapshot {
            set,
            key: &key,
            evaluation: &evaluation,
            revision_number: evaluation.rendered.is_ok().then_some(2),
            rollback_failed: None,
            nodes,
            objects,
            history: &[],
            now: now(),
            resync: RESYNC,
        });
        (evaluation, decision)
    }

    fn condition<'a>(status: &'a StaticPodSetStatus, type_: &str) -> &'a str {
        &find_condition(Some(status), type_).unwrap().reason
    }

    #[test]
    fn a_new_set_is_handed_to_every_new_node_at_once() {
        let nodes = vec![ready_node("a"), ready_node("b")];
        let set = named_set("img:1");
        let (evaluation, d) = decide_for(&set, &nodes, &BTreeMap::new());
        let revision = evaluation.rendered.unwrap().revision;
        let written: Vec<(&str, &str)> = d
            .writes
            .iter()
            .map(|w| (w.node.as_str(), w.entry.as_ref().unwrap().revision.as_str()))
            .collect();
        assert_eq!(
            written,
            [("a", revision.as_str()), ("b", revision.as_str())]
        );
        assert!(d.status_changed);
        assert_eq!(d.status.desired_number_scheduled, 2);
        assert_eq!(d.status.update_revision.as_deref(), Some(revision.as_str()));
        assert_eq!(d.status.update_revision_number, Some(2));
        assert_eq!(condition(&d.status, PROGRESSING), REASON_ROLLING_UPDATE);
        assert_eq!(condition(&d.status, VALID), REASON_VALID);
        let reasons: Vec<&str> = d.notices.iter().map(|n| n.reason.as_str()).collect();
        assert!(reasons.contains(&EVENT_ROLLOUT_STARTED), "{reasons:?}");
        let history = d.history.unwrap();
        assert!(history.keep.contains(&revision) && history.prune.is_empty());
        // No rollout clock runs for nodes that have no pod yet: the resync is the safety net.
        assert!(d.requeue <= RESYNC);
        assert!(d.newly_failed.is_empty());
    }

    #[test]
    fn a_template_change_rolls_one_node_at_a_time() {
        let nodes = vec![ready_node("a"), ready_node("b")];
        let old = named_set("img:1");
        let old_revision = evaluate(&old, "ns", "vip", &Ok(None)).rendered.unwrap();
        let objects: BTreeMap<String, Arc<NodeStaticPods>> = ["a", "b"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    running(n, old_revision.assigned_pod("ns", "vip")),
                )
            })
            .collect();
        let mut set = named_set("img:2");
        set.status = Some(StaticPodSetStatus {
            current_revision: Some(old_revision.revision.clone()),
            ..Default::default()
        });
        let (evaluation, d) = decide_for(&set, &nodes, &objects);
        let new_revision = evaluation.rendered.unwrap().revision;
        assert_ne!(new_revision, old_revision.revision);
        // maxUnavailable 1 by default: the first node by name, the other waits.
        assert_eq!(d.writes.len(), 1, "{:?}", d.writes);
        assert_eq!(d.writes[0].node, "a");
        assert_eq!(
            d.writes[0].entry.as_ref().unwrap().revision,
            new_revision.as_str()
        );
        assert_eq!(d.status.number_available, 1);
        assert_eq!(d.status.updated_number_scheduled, 0);
        // Both revisions stay: one is asked for, the other runs.
        let keep = d.history.unwrap().keep;
        assert!(keep.contains(&new_revision) && keep.contains(&old_revision.revision));
    }

    #[test]
    fn an_unchanged_world_writes_nothing() {
        let nodes = vec![ready_node("a")];
        let set = named_set("img:1");
        let rendered = evaluate(&set, "ns", "vip", &Ok(None)).rendered.unwrap();
        let objects = BTreeMap::from([(
            "a".to_string(),
            running("a", rendered.assigned_pod("ns", "vip")),
        )]);
        let (_, first) = decide_for(&set, &nodes, &objects);
        assert!(first.writes.is_empty());
        assert_eq!(
            condition(&first.status, PROGRESSING),
            REASON_ROLLOUT_COMPLETE
        );
        let mut settled = set.clone();
        settled.status = Some(first.status.clone());
        let (_, again) = decide_for(&settled, &nodes, &objects);
        assert!(!again.status_changed && again.notices.is_empty() && again.writes.is_empty());
        assert_eq!(again.status, first.status);
    }

    #[test]
    fn an_invalid_spec_writes_nowhere_and_says_why() {
        let nodes = vec![ready_node("a")];
        let mut set = named_set("img:1");
        set.spec.template.spec = None;
        let (_, d) = decide_for(&set, &nodes, &BTreeMap::new());
        assert!(d.writes.is_empty() && d.history.is_none());
        assert_eq!(condition(&d.status, VALID), REASON_INVALID_TEMPLATE);
        assert_eq!(condition(&d.status, PROGRESSING), REASON_INVALID_TEMPLATE);
        assert!(d
            .notices
            .iter()
            .any(|n| n.warning && n.reason == REASON_INVALID_TEMPLATE));
        assert_eq!(d.requeue, RESYNC);
    }

    #[test]
    fn a_template_too_large_for_a_revision_is_refused_before_anything_is_written() {
        let nodes = vec![ready_node("a")];
        let mut set = named_set("img:1");
        let big = "x".repeat(crate::revision_size::MAX_REVISION_CONTENT_BYTES / 2);
        set.spec.template.spec.as_mut().unwrap().containers[0].args = Some(vec![big]);
        let (evaluation, d) = decide_for(&set, &nodes, &BTreeMap::new());
        let invalid = evaluation.rendered.unwrap_err();
        assert_eq!(invalid.reason, REASON_TEMPLATE_TOO_LARGE);
        assert!(
            invalid.problems[0].contains(&format!(
                "over the {} bytes",
                crate::revision_size::MAX_REVISION_CONTENT_BYTES
            )),
            "{:?}",
            invalid.problems
        );
        assert!(d.writes.is_empty() && d.history.is_none());
        assert_eq!(condition(&d.status, VALID), REASON_TEMPLATE_TOO_LARGE);
        let warnings: Vec<&str> = d
            .notices
            .iter()
            .filter(|n| n.warning)
            .map(|n| n.reason.as_str())
            .collect();
        assert_eq!(warnings, [REASON_TEMPLATE_TOO_LARGE]);
        // The next reconcile of the same spec says nothing new.
        let mut seen = set.clone();
        seen.status = Some(d.status.clone());
        let (_, again) = decide_for(&seen, &nodes, &BTreeMap::new());
        assert!(!again.status_changed && again.notices.is_empty());

        // Just under the bound it is distributed.
        let fits = "x".repeat(crate::revision_size::MAX_REVISION_CONTENT_BYTES / 2 - 4096);
        set.spec.template.spec.as_mut().unwrap().containers[0].args = Some(vec![fits]);
        let (evaluation, d) = decide_for(&set, &nodes, &BTreeMap::new());
        assert!(evaluation.rendered.is_ok() && d.writes.len() == 1);
    }

    fn with_fallback(mut set: StaticPodSet, deadline: Option<i32>) -> StaticPodSet {
        set.spec.node_fallback = Some(staticpodset_api::NodeFallback {
            enabled: true,
            deadline_seconds: deadline,
        });
        set
    }

    #[test]
    fn the_fallback_deadline_reaches_every_entry_without_a_new_revision() {
        let nodes = vec![ready_node("a"), ready_node("b")];
        let plain = named_set("img:1");
        let rendered = evaluate(&plain, "ns", "vip", &Ok(None)).rendered.unwrap();
        let objects: BTreeMap<String, Arc<NodeStaticPods>> = ["a", "b"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    running(n, rendered.assigned_pod("ns", "vip")),
                )
            })
            .collect();
        let (_, d) = decide_for(&plain, &nodes, &objects);
        assert!(d.writes.is_empty());

        for (deadline, expected) in [(None, DEFAULT_FALLBACK_DEADLINE_SECONDS), (Some(30), 30)] {
            let set = with_fallback(named_set("img:1"), deadline);
            let (evaluation, d) = decide_for(&set, &nodes, &objects);
            assert_eq!(evaluation.rendered.unwrap().revision, rendered.revision);
            assert_eq!(d.writes.len(), 2, "both entries are rewritten");
            for write in &d.writes {
                let entry = write.entry.as_ref().unwrap();
                assert_eq!(entry.revision, rendered.revision);
                assert_eq!(entry.fallback_deadline_seconds, Some(expected));
                assert_eq!(
                    entry.assigned_time,
                    Some(Time(Timestamp::from_second(1).unwrap())),
                    "the same revision keeps its clock"
                );
                assert!(!write.repair, "bookkeeping, not an edit");
            }
            assert_eq!(condition(&d.status, PROGRESSING), REASON_ROLLOUT_COMPLETE);
        }
    }

    /// Nodes a and b ran `old` under a set with node-local fallback on; a was handed `new`, and
    /// its agent put `old` back.
    fn after_fallback(old: &Rendered, new: &Rendered) -> BTreeMap<String, Arc<NodeStaticPods>> {
        let entry = |r: &Rendered| AssignedPod {
            fallback_deadline_seconds: Some(DEFAULT_FALLBACK_DEADLINE_SECONDS),
            ..r.assigned_pod("ns", "vip")
        };
        let mut a = (*running("a", entry(old))).clone();
        a.spec.pods[0] = AssignedPod {
            assigned_time: Some(Time(Timestamp::from_second(999_900).unwrap())),
            ..entry(new)
        };
        a.status.as_mut().unwrap().pods[0].fallback = Some(FallbackReport {
            from_revision: new.revision.clone(),
            to_revision: old.revision.clone(),
            time: Time(Timestamp::from_second(999_960).unwrap()),
            message: "container c: CrashLoopBackOff".into(),
        });
        BTreeMap::from([
            ("a".to_string(), Arc::new(a)),
            ("b".to_string(), running("b", entry(old))),
        ])
    }

    #[test]
    fn a_node_that_fell_back_fails_the_revision_and_halts_the_rollout() {
        let nodes = vec![ready_node("a"), ready_node("b")];
        let old = evaluate(&named_set("img:1"), "ns", "vip", &Ok(None))
            .rendered
            .unwrap();
        let mut set = with_fallback(named_set("img:2"), None);
        set.status = Some(StaticPodSetStatus {
            current_revision: Some(old.revision.clone()),
            ..Default::default()
        });
        let new = evaluate(&set, "ns", "vip", &Ok(None)).rendered.unwrap();
        let objects = after_fallback(&old, &new);
        let (_, d) = decide_for(&set, &nodes, &objects);

        assert_eq!(d.newly_failed.len(), 1);
        assert_eq!(
            (d.newly_failed[0].node.as_str(), d.newly_failed[0].cause),
            ("a", FailureCause::NodeFallback)
        );
        // Only a's entry is written (its failure); b is not handed the revision.
        assert_eq!(d.writes.len(), 1, "{:?}", d.writes);
        let entry = d.writes[0].entry.as_ref().unwrap();
        assert_eq!(entry.revision, new.revision);
        let failure = entry.last_failure.as_ref().unwrap();
        assert_eq!(
            (failure.revision.as_str(), failure.reason.as_str()),
            (new.revision.as_str(), REASON_NODE_FALLBACK)
        );
        assert_eq!(
            condition(&d.status, PROGRESSING),
            REASON_PROGRESS_DEADLINE_EXCEEDED
        );
        let degraded = find_condition(Some(&d.status), DEGRADED).unwrap();
        assert_eq!(degraded.reason, REASON_REVISION_FAILED);
        assert!(
            degraded.message.contains(&format!(
                "a (its agent fell back to revision {})",
                old.revision
            )),
            "{}",
            degraded.message
        );

        // Once recorded, the same report fails nothing again.
        let mut recorded = (*objects["a"]).clone();
        recorded.spec.pods[0] = entry.clone();
        let mut objects = objects;
        objects.insert("a".into(), Arc::new(recorded));
        let (_, again) = decide_for(&set, &nodes, &objects);
        assert!(again.newly_failed.is_empty() && again.writes.is_empty());
    }

    #[test]
    fn with_auto_rollback_the_fallen_back_node_is_returned_to_the_healthy_revision() {
        let nodes = vec![ready_node("a"), ready_node("b")];
        let old = evaluate(&named_set("img:1"), "ns", "vip", &Ok(None))
            .rendered
            .unwrap();
        let mut set = with_fallback(named_set("img:2"), None);
        set.spec.update_strategy = Some(staticpodset_api::UpdateStrategy {
            rolling_update: Some(staticpodset_api::RollingUpdate {
                auto_rollback: true,
                ..Default::default()
            }),
        });
        set.status = Some(StaticPodSetStatus {
            current_revision: Some(old.revision.clone()),
            ..Default::default()
        });
        let new = evaluate(&set, "ns", "vip", &Ok(None)).rendered.unwrap();
        let (_, d) = decide_for(&set, &nodes, &after_fallback(&old, &new));
        assert_eq!(d.newly_failed.len(), 1);
        assert_eq!(d.writes.len(), 1, "{:?}", d.writes);
        let entry = d.writes[0].entry.as_ref().unwrap();
        assert_eq!(
            (d.writes[0].node.as_str(), entry.revision.as_str()),
            ("a", old.revision.as_str())
        );
        assert_eq!(
            entry.last_failure.as_ref().map(|f| f.reason.as_str()),
            Some(REASON_NODE_FALLBACK)
        );
    }

    #[test]
    fn a_fallback_report_for_an_older_revision_is_ignored() {
        let nodes = vec![ready_node("a"), ready_node("b")];
        let old = evaluate(&named_set("img:1"), "ns", "vip", &Ok(None))
            .rendered
            .unwrap();
        let given_up = evaluate(&named_set("img:2"), "ns", "vip", &Ok(None))
            .rendered
            .unwrap();
        // The template moved on to img:3 and a's entry with it; the report is about img:2.
        let mut set = with_fallback(named_set("img:3"), None);
        set.status = Some(StaticPodSetStatus {
            current_revision: Some(old.revision.clone()),
            ..Default::default()
        });
        let new = evaluate(&set, "ns", "vip", &Ok(None)).rendered.unwrap();
        let mut objects = after_fallback(&old, &given_up);
        let mut a = (*objects["a"]).clone();
        a.spec.pods[0].revision = new.revision.clone();
        a.spec.pods[0].revision_name = new.assigned_pod("ns", "vip").revision_name;
        objects.insert("a".into(), Arc::new(a));
        let (_, d) = decide_for(&set, &nodes, &objects);
        assert!(d.newly_failed.is_empty());
        assert_eq!(condition(&d.status, PROGRESSING), REASON_ROLLING_UPDATE);
        assert!(d
            .writes
            .iter()
            .all(|w| w.entry.as_ref().is_some_and(|e| e.last_failure.is_none())));
    }

    #[test]
    fn nodes_that_stop_matching_lose_the_entry() {
        let nodes = vec![ready_node("a"), ready_node("b")];
        let mut set = named_set("img:1");
        set.spec.node_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("role".into(), "edge".into())])),
            match_expressions: None,
        });
        let rendered = evaluate(&set, "ns", "vip", &Ok(None)).rendered.unwrap();
        let objects = BTreeMap::from([(
            "a".to_string(),
            running("a", rendered.assigned_pod("ns", "vip")),
        )]);
        let (_, d) = decide_for(&set, &nodes, &objects);
        assert_eq!(d.writes.len(), 1);
        assert_eq!(
            (d.writes[0].node.as_str(), d.writes[0].entry.is_none()),
            ("a", true)
        );
        assert_eq!(d.status.desired_number_scheduled, 0);
    }

    fn tainted(name: &str, key: &str, effect: &str) -> Arc<Node> {
        let mut node = (*ready_node(name)).clone();
        node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![k8s_openapi::api::core::v1::Taint {
                key: key.into(),
                effect: effect.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(node)
    }

    #[test]
    fn taints_leave_nodes_out_as_for_a_daemonset() {
        let cp = "node-role.kubernetes.io/control-plane";
        let nodes = vec![
            ready_node("a"),
            tainted("b", cp, "NoSchedule"),
            tainted("c", "dedicated", "NoExecute"),
        ];
        let set = named_set("img:1");
        let (_, d) = decide_for(&set, &nodes, &BTreeMap::new());
        let written: Vec<&str> = d.writes.iter().map(|w| w.node.as_str()).collect();
        assert_eq!(written, ["a"]);
        assert_eq!(d.status.desired_number_scheduled, 1);
        assert_eq!(d.status.number_excluded_by_taints, 2);
        let excluded = find_condition(Some(&d.status), NODES_EXCLUDED).unwrap();
        assert_eq!(excluded.reason, REASON_UNTOLERATED_TAINTS);
        assert!(
            excluded
                .message
                .contains("b (node-role.kubernetes.io/control-plane:NoSchedule)")
                && excluded.message.contains("c (dedicated:NoExecute)"),
            "{}",
            excluded.message
        );

        // Already running on b and c: NoSchedule keeps it, NoExecute takes it away.
        let rendered = evaluate(&set, "ns", "vip", &Ok(None)).rendered.unwrap();
        let objects: BTreeMap<String, Arc<NodeStaticPods>> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    running(n, rendered.assigned_pod("ns", "vip")),
                )
            })
            .collect();
        let (_, d) = decide_for(&set, &nodes, &objects);
        let removed: Vec<&str> = d
            .writes
            .iter()
            .filter(|w| w.entry.is_none())
            .map(|w| w.node.as_str())
            .collect();
        assert_eq!(removed, ["c"]);
        assert_eq!(d.status.desired_number_scheduled, 2);

        // A toleration lets the set onto the control-plane node.
        let mut tolerating = named_set("img:1");
        tolerating.spec.template.spec.as_mut().unwrap().tolerations =
            Some(vec![k8s_openapi::api::core::v1::Toleration {
                key: Some(cp.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]);
        let (_, d) = decide_for(&tolerating, &nodes, &BTreeMap::new());
        let written: Vec<&str> = d.writes.iter().map(|w| w.node.as_str()).collect();
        assert_eq!(written, ["a", "b"]);
        assert_eq!(d.status.number_excluded_by_taints, 1);
    }
}
