//! The edges of the rolling-update planner ([`crate::rollout`]): its input gathered from what the
//! caches hold, and its plan turned into node-object entries. Pure.
//!
//! What the planner needs to remember between passes lives in each node's entry of the set, not
//! in the operator's memory, so a new leader continues a rollout where the old one left it:
//! `assignedTime` (when the node was handed its revision: the start of its progress deadline) and
//! `lastFailure` (the revision the node last failed, and why).
//!
//! The entry also carries `fallbackDeadlineSeconds` for sets that turn node-local fallback on:
//! it is read by the agent only, and is not part of the pod, so changing it rewrites entries but
//! never makes a new revision.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use staticpodset_api::digest::is_full_digest;
use staticpodset_api::keys::{manifest_file_name, revision_object_name};
use staticpodset_api::{
    AssignedPod, PodReport, RevisionFailure, StaticPodRevision, StaticPodSetSpec,
    DEFAULT_FALLBACK_DEADLINE_SECONDS, DEFAULT_PROGRESS_DEADLINE_SECONDS,
};

use crate::conditions::failure_reason;
use crate::node_match::ready_condition;
use crate::render::Rendered;
use crate::rollout::{
    Assignment, Fallback, InvalidMaxUnavailable, MaxUnavailable, MirrorPod, NodeFacts, NodeFailure,
    NodeHealth, RolloutPlan, Strategy,
};

/// The rollout settings of a spec, with the defaults filled in.
///
/// Fails only on a maxUnavailable the CRD's rule lets through when that rule is missing (an old
/// CRD, or one installed by hand); the caller reports it as an invalid spec.
pub fn strategy_of(spec: &StaticPodSetSpec) -> Result<Strategy, InvalidMaxUnavailable> {
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let max_unavailable = match rolling.and_then(|r| r.max_unavailable.as_ref()) {
        Some(value) => MaxUnavailable::try_from(value)?,
        None => MaxUnavailable::default(),
    };
    let non_negative = |v: Option<i32>| v.map_or(0, |v| u32::try_from(v).unwrap_or(0));
    Ok(Strategy {
        max_unavailable,
        partition: non_negative(rolling.and_then(|r| r.partition)),
        min_ready_seconds: non_negative(spec.min_ready_seconds),
        progress_deadline_seconds: Some(
            u32::try_from(
                spec.progress_deadline_seconds
                    .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
            )
            .unwrap_or(1)
            .max(1),
        ),
        paused: spec.paused,
        auto_rollback: rolling.is_some_and(|r| r.auto_rollback),
        max_surge: rolling
            .and_then(|r| r.max_surge.as_ref())
            .map(MaxUnavailable::try_from)
            .transpose()
            .map_err(|e| InvalidMaxUnavailable {
                value: format!("{} (maxSurge)", e.value),
            })?,
    })
}

/// What every entry of a set tells the node's agent besides the revision: how it may fall back
/// and whether it updates with surge. Not part of the pod, so a change rewrites entries but
/// never makes a new revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentSettings {
    /// See [`fallback_deadline_of`].
    pub fallback_deadline_seconds: Option<i32>,
    /// The set's minReadySeconds when it updates with surge; `None` without surge.
    pub surge_min_ready_seconds: Option<i32>,
}

/// The [`AgentSettings`] of a spec.
pub fn agent_settings_of(spec: &StaticPodSetSpec) -> AgentSettings {
    AgentSettings {
        fallback_deadline_seconds: fallback_deadline_of(spec),
        surge_min_ready_seconds: staticpodset_api::validation::surges(spec)
            .then(|| spec.min_ready_seconds.unwrap_or(0).max(0)),
    }
}

/// The `fallbackDeadlineSeconds` every entry of a set carries: the set's
/// `spec.nodeFallback.deadlineSeconds` (or the default) when node-local fallback is on, `None`
/// when it is off, which tells the agent never to fall back.
pub fn fallback_deadline_of(spec: &StaticPodSetSpec) -> Option<i32> {
    let fallback = spec.node_fallback.as_ref().filter(|f| f.enabled)?;
    Some(
        fallback
            .deadline_seconds
            .unwrap_or(DEFAULT_FALLBACK_DEADLINE_SECONDS),
    )
}

/// What the planner needs to know about node `node_name` for set `namespace/name`.
///
/// An entry without `assignedTime` (written before the field existed) counts as handed `now`:
/// the node gets a full deadline, and the entry is rewritten with the time.
pub fn node_facts(
    node_name: &str,
    node: Option<&Node>,
    entry: Option<&AssignedPod>,
    report: Option<&PodReport>,
    now: Timestamp,
) -> NodeFacts {
    let health = match node {
        None => NodeHealth::Gone,
        Some(node) => {
            let ready = ready_condition(node);
            let since = ready
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0);
            if ready.is_some_and(|c| c.status == "True") {
                NodeHealth::Ready { since }
            } else {
                NodeHealth::NotReady { since }
            }
        }
    };
    NodeFacts {
        name: node_name.to_string(),
        assignment: entry.map(|e| Assignment {
            revision: e.revision.clone(),
            since: e.assigned_time.as_ref().map_or(now, |t| t.0),
        }),
        mirror_pod: report.and_then(|r| r.mirror_pod.as_ref()).map(mirror_pod),
        previous_pod: report
            .and_then(|r| r.previous_mirror_pod.as_ref())
            .map(mirror_pod),
        health,
        failed_revision: entry
            .and_then(|e| e.last_failure.as_ref())
            .map(|f| f.revision.clone()),
        fallback: report.and_then(|r| r.fallback.as_ref()).map(|f| Fallback {
            from_revision: f.from_revision.clone(),
            to_revision: f.to_revision.clone(),
            time: f.time.0,
            message: f.message.clone(),
        }),
    }
}

fn mirror_pod(m: &staticpodset_api::MirrorPodReport) -> MirrorPod {
    MirrorPod {
        revision: m.revision.clone(),
        ready: m.ready,
        ready_since: m.ready_since.as_ref().map(|t| t.0),
    }
}

/// The full digest nodes are handed with each revision of the set, by revision (hash), from the
/// sources the operator trusts, each overriding the one before:
///
/// 1. the `spec.digest` of the history's revision objects: written by the operator when it
///    created them, but an object deleted and re-created by someone else carries whatever they
///    wrote, so this is only the fallback for revisions no node holds an entry of;
/// 2. the digests in the set's current entries (`current`, by node): node objects' specs are
///    written by the operator alone, so a revision keeps the digest it was first handed with;
/// 3. the rendered revision's own digest.
///
/// Only well-formed digests that begin with their revision are taken (the CRD admits no other);
/// a revision without one is handed out without a digest, and nodes then check its 10-character
/// revision only. So do revision objects from operators that recorded no digest.
pub fn revision_digests(
    history: &[Arc<StaticPodRevision>],
    rendered: &Rendered,
    current: &BTreeMap<&str, &AssignedPod>,
) -> BTreeMap<String, String> {
    let from_history = history
        .iter()
        .filter_map(|r| Some((&r.spec.hash, r.spec.digest.as_ref()?)));
    let from_entries = current
        .values()
        .filter_map(|e| Some((&e.revision, e.digest.as_ref()?)));
    // Borrowed until the end: thousands of entries share a handful of revisions.
    let digests: BTreeMap<&String, &String> = from_history
        .chain(from_entries)
        .chain(std::iter::once((&rendered.revision, &rendered.digest)))
        .filter(|(revision, digest)| {
            is_full_digest(digest) && digest.starts_with(revision.as_str())
        })
        .collect();
    digests
        .into_iter()
        .map(|(revision, digest)| (revision.clone(), digest.clone()))
        .collect()
}

/// The entry each planned node must carry, by node name: the planned revision with its digest
/// from `digests` (see [`revision_digests`]), the time it was handed (kept while the revision
/// stays), and the last failure (a new one from this plan, or the one recorded before: it is
/// history, never cleared), and the set's [`AgentSettings`].
///
/// Nodes the plan leaves without a revision get no entry. A node whose current entry is already
/// the one it must carry gets that entry borrowed, not rebuilt: at 5,000 nodes that was most of
/// a steady reconcile's allocations.
pub fn desired_entries<'a>(
    plan: &'a RolloutPlan,
    namespace: &str,
    name: &str,
    current: &BTreeMap<&str, &'a AssignedPod>,
    digests: &BTreeMap<String, String>,
    settings: AgentSettings,
    now: Timestamp,
) -> BTreeMap<&'a str, Cow<'a, AssignedPod>> {
    let failures: BTreeMap<&str, &NodeFailure> = plan
        .newly_failed
        .iter()
        .map(|f| (f.node.as_str(), f))
        .collect();
    let file_name = manifest_file_name(namespace, name);
    let mut revision_names: BTreeMap<&str, String> = BTreeMap::new();
    plan.nodes
        .iter()
        .filter_map(|node| {
            let revision = node.revision.as_deref()?;
            let revision_name = revision_names
                .entry(revision)
                .or_insert_with(|| revision_object_name(name, revision));
            let digest = digests.get(revision);
            let failure = failures.get(node.name.as_str());
            let old = current.get(node.name.as_str()).copied();
            let wanted = Wanted {
                namespace,
                name,
                revision,
                revision_name,
                digest,
                file_name: &file_name,
                settings,
            };
            if let Some(old) = old.filter(|old| failure.is_none() && wanted.is(old)) {
                return Some((node.name.as_str(), Cow::Borrowed(old)));
            }
            let kept = old.filter(|e| e.revision == revision);
            let assigned_time = kept
                .and_then(|e| e.assigned_time.clone())
                .unwrap_or(Time(now));
            let last_failure = match failure {
                Some(failure) => Some(RevisionFailure {
                    revision: failure.revision.clone(),
                    reason: failure_reason(failure.cause).to_string(),
                    message: failure.message.clone(),
                    time: Time(now),
                }),
                None => old.and_then(|e| e.last_failure.clone()),
            };
            let entry = AssignedPod {
                set_namespace: namespace.to_string(),
                set_name: name.to_string(),
                revision: revision.to_string(),
                revision_name: revision_name.clone(),
                digest: digest.cloned(),
                file_name: file_name.clone(),
                assigned_time: Some(assigned_time),
                last_failure,
                fallback_deadline_seconds: settings.fallback_deadline_seconds,
                surge_min_ready_seconds: settings.surge_min_ready_seconds,
            };
            Some((node.name.as_str(), Cow::Owned(entry)))
        })
        .collect()
}

/// What [`desired_entries`] puts into a node's entry, but its time and its failure.
struct Wanted<'w> {
    namespace: &'w str,
    name: &'w str,
    revision: &'w str,
    revision_name: &'w str,
    digest: Option<&'w String>,
    file_name: &'w str,
    settings: AgentSettings,
}

impl Wanted<'_> {
    /// `old` is exactly the entry that would be built for a node with no new failure: the
    /// revision (so its time is kept, and it has one) and everything the set writes. Every
    /// field is named, so that a field added to entries must be decided here too.
    fn is(&self, old: &AssignedPod) -> bool {
        let AssignedPod {
            set_namespace,
            set_name,
            revision,
            revision_name,
            digest,
            file_name,
            assigned_time,
            last_failure: _,
            fallback_deadline_seconds,
            surge_min_ready_seconds,
        } = old;
        set_namespace == self.namespace
            && set_name == self.name
            && revision == self.revision
            && revision_name == self.revision_name
            && digest.as_ref() == self.digest
            && file_name == self.file_name
            && assigned_time.is_some()
            && *fallback_deadline_seconds == self.settings.fallback_deadline_seconds
            && *surge_min_ready_seconds == self.settings.surge_min_ready_seconds
    }
}

/// When the plan must be looked at again even if nothing changes in the cluster: the earliest
/// moment a node's progress deadline passes or its pod has been Ready for minReadySeconds.
/// `None` when no clock runs.
pub fn next_check(
    plan: &RolloutPlan,
    facts: &[NodeFacts],
    strategy: &Strategy,
) -> Option<Timestamp> {
    let by_name: BTreeMap<&str, &NodeFacts> = facts.iter().map(|f| (f.name.as_str(), f)).collect();
    let seconds = |s: u32| k8s_openapi::jiff::SignedDuration::from_secs(i64::from(s) + 1);
    let mut times = Vec::new();
    for node in &plan.nodes {
        let Some(facts) = by_name.get(node.name.as_str()) else {
            continue;
        };
        // A surging node is available through its old pod, but its new pod has clocks running.
        if (node.unavailable.is_none() && !node.surging) || node.changed {
            continue;
        }
        if let (Some(deadline), Some(assignment)) =
            (strategy.progress_deadline_seconds, &facts.assignment)
        {
            let start = match facts.health {
                NodeHealth::Ready { since: Some(s) } if s > assignment.since => s,
                _ => assignment.since,
            };
            times.extend(start.checked_add(seconds(deadline)).ok());
        }
        if let Some(since) = facts
            .mirror_pod
            .as_ref()
            .filter(|m| m.ready)
            .and_then(|m| m.ready_since)
        {
            if strategy.min_ready_seconds > 0 {
                times.extend(since.checked_add(seconds(strategy.min_ready_seconds)).ok());
            }
        }
    }
    times.into_iter().min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::REASON_NODE_FALLBACK;
    use crate::planner::{entry_of, report_of};
    use crate::rollout::{plan_rollout, RolloutInput};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use staticpodset_api::{
        FallbackReport, MirrorPodReport, NodeFallback, NodeStaticPods, NodeStaticPodsStatus,
        RollingUpdate, UpdateStrategy,
    };

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn defaults_are_a_daemonsets() {
        let s = strategy_of(&StaticPodSetSpec::default()).unwrap();
        assert_eq!(s, Strategy::default());
    }

    #[test]
    fn spec_fields_reach_the_strategy() {
        let spec = StaticPodSetSpec {
            update_strategy: Some(UpdateStrategy {
                rolling_update: Some(RollingUpdate {
                    max_unavailable: Some(IntOrString::String("50%".into())),
                    partition: Some(3),
                    auto_rollback: true,
                    max_surge: None,
                }),
            }),
            min_ready_seconds: Some(5),
            progress_deadline_seconds: Some(30),
            paused: true,
            ..Default::default()
        };
        let s = strategy_of(&spec).unwrap();
        assert_eq!(s.max_unavailable, MaxUnavailable::Percent(50));
        assert_eq!(
            (
                s.partition,
                s.min_ready_seconds,
                s.progress_deadline_seconds
            ),
            (3, 5, Some(30))
        );
        assert!(s.paused && s.auto_rollback);
    }

    #[test]
    fn a_bad_max_unavailable_is_an_error_not_a_default() {
        let spec = StaticPodSetSpec {
            update_strategy: Some(UpdateStrategy {
                rolling_update: Some(RollingUpdate {
                    max_unavailable: Some(IntOrString::String("half".into())),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        assert!(strategy_of(&spec).is_err());
    }

    fn object(entry: Option<AssignedPod>, mirror: Option<(&str, bool, i64)>) -> NodeStaticPods {
        let mut o = NodeStaticPods::new(
            "n1",
            staticpodset_api::NodeStaticPodsSpec {
                pods: entry.into_iter().collect(),
            },
        );
        o.status = Some(NodeStaticPodsStatus {
            pods: vec![PodReport {
                set_namespace: "ns".into(),
                set_name: "set".into(),
                mirror_pod: mirror.map(|(rev, ready, since)| MirrorPodReport {
                    name: "set-n1".into(),
                    uid: "u".into(),
                    revision: Some(rev.into()),
                    ready,
                    ready_since: Some(Time(at(since))),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        o
    }

    fn entry(revision: &str, assigned: Option<i64>, failed: Option<&str>) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: "set".into(),
            revision: revision.into(),
            revision_name: revision_object_name("set", revision),
            digest: None,
            file_name: manifest_file_name("ns", "set"),
            assigned_time: assigned.map(|s| Time(at(s))),
            last_failure: failed.map(|r| RevisionFailure {
                revision: r.into(),
                reason: "ProgressDeadlineExceeded".into(),
                message: String::new(),
                time: Time(at(1)),
            }),
            fallback_deadline_seconds: None,
            surge_min_ready_seconds: None,
        }
    }

    fn ready_node(since: i64) -> Node {
        Node {
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(at(since))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn facts_come_from_entry_report_and_node() {
        let o = object(
            Some(entry("r2", Some(100), Some("r1"))),
            Some(("r1", true, 50)),
        );
        let f = facts("n1", &o, 10, at(200));
        assert_eq!(
            f.assignment,
            Some(Assignment {
                revision: "r2".into(),
                since: at(100)
            })
        );
        assert_eq!(
            f.mirror_pod.as_ref().unwrap().revision.as_deref(),
            Some("r1")
        );
        assert_eq!(f.mirror_pod.as_ref().unwrap().ready_since, Some(at(50)));
        assert_eq!(
            f.health,
            NodeHealth::Ready {
                since: Some(at(10))
            }
        );
        assert_eq!(f.failed_revision.as_deref(), Some("r1"));
    }

    #[test]
    fn an_entry_without_time_counts_as_handed_now_and_is_stamped() {
        let o = object(Some(entry("r2", None, None)), None);
        let now = at(500);
        let f = facts("n1", &o, 10, now);
        assert_eq!(f.assignment.as_ref().unwrap().since, now);
        let plan = plan_rollout(&RolloutInput {
            update_revision: "r2".into(),
            last_healthy_revision: None,
            revision_numbers: BTreeMap::new(),
            strategy: Strategy::default(),
            nodes: vec![f],
            now,
        });
        let on_n1 = entry("r2", None, None);
        let current = BTreeMap::from([("n1", &on_n1)]);
        let desired = desired_entries(
            &plan,
            "ns",
            "set",
            &current,
            &BTreeMap::new(),
            AgentSettings::default(),
            now,
        );
        assert_eq!(desired["n1"].assigned_time, Some(Time(now)));
    }

    #[test]
    fn no_node_object_and_no_node() {
        let f = node_facts("gone", None, None, None, at(1));
        assert_eq!(f.health, NodeHealth::Gone);
        assert_eq!((f.assignment, f.mirror_pod), (None, None));
    }

    /// Node `name`, Ready since `ready_since`, as the planner sees it with set `ns/set` of `o`.
    fn facts(name: &str, o: &NodeStaticPods, ready_since: i64, now: Timestamp) -> NodeFacts {
        let node = ready_node(ready_since);
        let (entry, report) = (entry_of(o, "ns", "set"), report_of(o, "ns", "set"));
        node_facts(name, Some(&node), entry, report, now)
    }

    fn input(nodes: Vec<NodeFacts>, now: i64, strategy: Strategy) -> RolloutInput {
        RolloutInput {
            update_revision: "r2".into(),
            last_healthy_revision: Some("r1".into()),
            revision_numbers: BTreeMap::from([("r1".into(), 1), ("r2".into(), 2)]),
            strategy,
            nodes,
            now: at(now),
        }
    }

    #[test]
    fn an_entry_is_borrowed_exactly_when_it_is_the_one_that_would_be_built() {
        // n1 runs r2 Ready, the update revision: the plan keeps it there.
        let settings = AgentSettings {
            fallback_deadline_seconds: Some(30),
            surge_min_ready_seconds: None,
        };
        let digests = BTreeMap::from([("r2".to_string(), digest_of("r2", '2'))]);
        let mut built = entry("r2", Some(50), Some("r1"));
        built.digest = Some(digest_of("r2", '2'));
        built.fallback_deadline_seconds = Some(30);
        let o = object(Some(built.clone()), Some(("r2", true, 60)));
        let f = facts("n1", &o, 1, at(100));
        let plan = plan_rollout(&input(vec![f], 100, Strategy::default()));
        let desired_for = |old: &AssignedPod| {
            let current = BTreeMap::from([("n1", old)]);
            let desired =
                desired_entries(&plan, "ns", "set", &current, &digests, settings, at(100));
            let borrowed = matches!(desired["n1"], Cow::Borrowed(_));
            (desired["n1"].clone().into_owned(), borrowed)
        };
        assert_eq!(desired_for(&built), (built.clone(), true));
        // Any difference in what the set writes is rebuilt, to the same entry.
        let changes: [fn(&mut AssignedPod); 7] = [
            |e| e.digest = None,
            |e| e.revision_name = "set-old".into(),
            |e| e.file_name = "other.yaml".into(),
            |e| e.set_name = "other".into(),
            |e| e.fallback_deadline_seconds = None,
            |e| e.surge_min_ready_seconds = Some(5),
            |e| e.assigned_time = None,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut old = built.clone();
            change(&mut old);
            let (desired, borrowed) = desired_for(&old);
            assert!(!borrowed, "change {i} is rebuilt");
            let mut expected = built.clone();
            if old.assigned_time.is_none() {
                expected.assigned_time = Some(Time(at(100)));
            }
            assert_eq!(desired, expected, "change {i}");
        }
        // An older failure is history: kept, borrowed.
        let mut failed_before = built.clone();
        failed_before.last_failure.as_mut().unwrap().message = "earlier".into();
        assert_eq!(desired_for(&failed_before), (failed_before.clone(), true));
    }

    #[test]
    fn handing_a_revision_stamps_the_time_and_keeps_history() {
        // n1 runs r1, available; n2 too. maxUnavailable 1: one of them is handed r2.
        let objects: Vec<(String, NodeStaticPods)> = ["n1", "n2"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    object(
                        Some(entry("r1", Some(10), Some("r0"))),
                        Some(("r1", true, 20)),
                    ),
                )
            })
            .collect();
        let facts: Vec<NodeFacts> = objects
            .iter()
            .map(|(n, o)| facts(n, o, 1, at(100)))
            .collect();
        let plan = plan_rollout(&input(facts, 100, Strategy::default()));
        let current: BTreeMap<&str, &AssignedPod> = objects
            .iter()
            .map(|(n, o)| (n.as_str(), &o.spec.pods[0]))
            .collect();
        let desired = desired_entries(
            &plan,
            "ns",
            "set",
            &current,
            &BTreeMap::new(),
            AgentSettings::default(),
            at(100),
        );
        assert_eq!(desired["n1"].revision, "r2");
        assert_eq!(desired["n1"].revision_name, "set-r2");
        assert_eq!(desired["n1"].assigned_time, Some(Time(at(100))));
        assert_eq!(*desired["n2"], *current["n2"], "n2 waits, untouched");
        assert!(
            matches!(desired["n2"], Cow::Borrowed(_)),
            "and is not rebuilt"
        );
        assert_eq!(
            desired["n1"]
                .last_failure
                .as_ref()
                .map(|f| f.revision.as_str()),
            Some("r0"),
            "an old failure is history and stays"
        );
    }

    #[test]
    fn a_surging_node_reports_its_deadline_and_fails_it() {
        let mut o = object(Some(entry("r2", Some(100), None)), Some(("r2", false, 0)));
        let report = &mut o.status.as_mut().unwrap().pods[0];
        report.previous_mirror_pod = Some(MirrorPodReport {
            name: "set-surge-n1".into(),
            revision: Some("r1".into()),
            ready: true,
            ready_since: Some(Time(at(1))),
            ..Default::default()
        });
        let strategy = Strategy {
            progress_deadline_seconds: Some(60),
            max_surge: Some(MaxUnavailable::Count(1)),
            ..Strategy::default()
        };
        let early = facts("n1", &o, 1, at(120));
        assert!(early.previous_pod.is_some());
        let plan = plan_rollout(&input(vec![early.clone()], 120, strategy.clone()));
        assert!(plan.nodes[0].surging && plan.nodes[0].unavailable.is_none());
        assert_eq!(next_check(&plan, &[early], &strategy), Some(at(161)));
        let late = facts("n1", &o, 1, at(161));
        let plan = plan_rollout(&input(vec![late], 161, strategy));
        assert_eq!(plan.newly_failed.len(), 1);
    }

    #[test]
    fn a_missed_deadline_is_recorded_on_the_entry_and_the_clock_is_reported() {
        let o = object(Some(entry("r2", Some(100), None)), Some(("r2", false, 0)));
        let strategy = Strategy {
            progress_deadline_seconds: Some(60),
            ..Strategy::default()
        };
        let early = facts("n1", &o, 1, at(120));
        let plan = plan_rollout(&input(vec![early.clone()], 120, strategy.clone()));
        assert!(plan.newly_failed.is_empty());
        assert_eq!(next_check(&plan, &[early], &strategy), Some(at(161)));

        let late = facts("n1", &o, 1, at(161));
        let plan = plan_rollout(&input(vec![late], 161, strategy));
        let current = BTreeMap::from([("n1", &o.spec.pods[0])]);
        let desired = desired_entries(
            &plan,
            "ns",
            "set",
            &current,
            &BTreeMap::new(),
            AgentSettings::default(),
            at(161),
        );
        let failure = desired["n1"].last_failure.as_ref().unwrap();
        assert_eq!(failure.revision, "r2");
        assert_eq!(failure.reason, "ProgressDeadlineExceeded");
        assert_eq!(failure.time, Time(at(161)));
        assert_eq!(
            desired["n1"].assigned_time,
            Some(Time(at(100))),
            "deadline start kept"
        );
    }

    #[test]
    fn entries_carry_min_ready_seconds_only_with_surge() {
        let spec = |surge: Option<IntOrString>| StaticPodSetSpec {
            min_ready_seconds: Some(7),
            update_strategy: Some(UpdateStrategy {
                rolling_update: Some(RollingUpdate {
                    max_surge: surge,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        assert_eq!(
            agent_settings_of(&spec(Some(IntOrString::Int(1)))).surge_min_ready_seconds,
            Some(7)
        );
        assert_eq!(
            agent_settings_of(&spec(Some(IntOrString::Int(0)))).surge_min_ready_seconds,
            None
        );
        assert_eq!(agent_settings_of(&spec(None)).surge_min_ready_seconds, None);
        assert_eq!(
            strategy_of(&spec(Some(IntOrString::String("10%".into()))))
                .unwrap()
                .max_surge,
            Some(MaxUnavailable::Percent(10))
        );
        assert!(strategy_of(&spec(Some(IntOrString::String("ten".into())))).is_err());
    }

    #[test]
    fn the_fallback_deadline_follows_the_spec() {
        let with = |fallback: Option<NodeFallback>| {
            fallback_deadline_of(&StaticPodSetSpec {
                node_fallback: fallback,
                ..Default::default()
            })
        };
        assert_eq!(with(None), None);
        let off = NodeFallback {
            enabled: false,
            deadline_seconds: Some(30),
        };
        assert_eq!(with(Some(off)), None, "a deadline alone turns nothing on");
        let on = NodeFallback {
            enabled: true,
            deadline_seconds: None,
        };
        assert_eq!(
            with(Some(on.clone())),
            Some(DEFAULT_FALLBACK_DEADLINE_SECONDS)
        );
        let thirty = NodeFallback {
            deadline_seconds: Some(30),
            ..on
        };
        assert_eq!(with(Some(thirty)), Some(30));
    }

    #[test]
    fn a_reported_fallback_is_read_and_recorded_as_node_fallback() {
        let mut o = object(Some(entry("r2", Some(100), None)), Some(("r1", true, 130)));
        o.status.as_mut().unwrap().pods[0].fallback = Some(FallbackReport {
            from_revision: "r2".into(),
            to_revision: "r1".into(),
            time: Time(at(125)),
            message: "container c: CrashLoopBackOff".into(),
        });
        let f = facts("n1", &o, 1, at(140));
        assert_eq!(
            f.fallback,
            Some(Fallback {
                from_revision: "r2".into(),
                to_revision: "r1".into(),
                time: at(125),
                message: "container c: CrashLoopBackOff".into(),
            })
        );
        let plan = plan_rollout(&input(vec![f], 140, Strategy::default()));
        let current = BTreeMap::from([("n1", &o.spec.pods[0])]);
        let desired = desired_entries(
            &plan,
            "ns",
            "set",
            &current,
            &BTreeMap::new(),
            AgentSettings {
                fallback_deadline_seconds: Some(45),
                ..AgentSettings::default()
            },
            at(140),
        );
        let entry = &desired["n1"];
        let failure = entry.last_failure.as_ref().unwrap();
        assert_eq!(
            (failure.revision.as_str(), failure.reason.as_str()),
            ("r2", REASON_NODE_FALLBACK)
        );
        assert!(
            failure.message.contains("put back revision r1"),
            "{}",
            failure.message
        );
        assert_eq!(failure.time, Time(at(140)));
        assert_eq!(entry.fallback_deadline_seconds, Some(45));
        assert_eq!(
            (entry.revision.as_str(), &entry.assigned_time),
            ("r2", &Some(Time(at(100)))),
            "without autoRollback the entry keeps the revision, and its clock"
        );
    }

    /// A digest for revision `revision`: it begins with it, as real ones do.
    fn digest_of(revision: &str, fill: char) -> String {
        let mut d = revision.to_string();
        while d.len() < 64 {
            d.push(fill);
        }
        d
    }

    fn history_revision(hash: &str, digest: Option<String>) -> Arc<StaticPodRevision> {
        Arc::new(StaticPodRevision::new(
            &revision_object_name("set", hash),
            staticpodset_api::StaticPodRevisionSpec {
                set_name: "set".into(),
                revision: 1,
                hash: hash.into(),
                digest,
                ..Default::default()
            },
        ))
    }

    #[test]
    fn digests_come_from_the_render_then_the_entries_then_the_history() {
        let rendered = crate::render::render("ns", "set", &crate::fixtures::template("img:2"))
            .expect("renders");
        let (r2, d2) = (rendered.revision.clone(), rendered.digest.clone());
        let (r1, r0, old) = ("aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc");
        let history = vec![
            // Re-created by someone else with another digest for the revision n1 runs, and for
            // the rendered one: the entries and the render win.
            history_revision(r1, Some(digest_of(r1, 'f'))),
            history_revision(&r2, Some(digest_of(&r2, 'f'))),
            // Only the history knows r0's digest.
            history_revision(r0, Some(digest_of(r0, '0'))),
            // From an operator that recorded none; and a digest that is not r0's at all.
            history_revision(old, None),
            history_revision("dddddddddd", Some(digest_of(r0, '1'))),
        ];
        let mut on_n1 = entry(r1, Some(10), None);
        on_n1.digest = Some(digest_of(r1, '1'));
        let current = BTreeMap::from([("n1", &on_n1)]);
        let digests = revision_digests(&history, &rendered, &current);
        assert_eq!(
            digests,
            BTreeMap::from([
                (r1.to_string(), digest_of(r1, '1')),
                (r0.to_string(), digest_of(r0, '0')),
                (r2.clone(), d2.clone()),
            ])
        );
    }

    #[test]
    fn entries_carry_the_digest_of_their_revision() {
        let o = object(Some(entry("r1", Some(10), None)), Some(("r1", true, 20)));
        let f = facts("n1", &o, 1, at(100));
        let plan = plan_rollout(&input(vec![f], 100, Strategy::default()));
        let current = BTreeMap::from([("n1", &o.spec.pods[0])]);
        let digests = BTreeMap::from([("r2".to_string(), digest_of("r2", '2'))]);
        let desired = desired_entries(
            &plan,
            "ns",
            "set",
            &current,
            &digests,
            AgentSettings::default(),
            at(100),
        );
        assert_eq!(desired["n1"].revision, "r2");
        assert_eq!(desired["n1"].digest, Some(digest_of("r2", '2')));
        // A revision with no known digest is handed out without one.
        let desired = desired_entries(
            &plan,
            "ns",
            "set",
            &current,
            &BTreeMap::new(),
            AgentSettings::default(),
            at(100),
        );
        assert_eq!(desired["n1"].digest, None);
    }

    #[test]
    fn min_ready_seconds_sets_a_clock() {
        let o = object(Some(entry("r2", Some(100), None)), Some(("r2", true, 150)));
        let strategy = Strategy {
            min_ready_seconds: 30,
            progress_deadline_seconds: None,
            ..Strategy::default()
        };
        let f = facts("n1", &o, 1, at(160));
        let plan = plan_rollout(&input(vec![f.clone()], 160, strategy.clone()));
        assert_eq!(next_check(&plan, &[f], &strategy), Some(at(181)));
    }
}
