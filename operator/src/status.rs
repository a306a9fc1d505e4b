//! Summing node reports into a StaticPodSet's status, and the Events worth telling a user.
//!
//! Pure: the controller gathers the reports from its NodeStaticPods store and passes them in.
//! The conditions' words come from [`crate::conditions`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use staticpodset_api::{ManifestPhase, PodReport, StaticPodSetStatus};

use crate::conditions::{
    find_condition, plural, set_conditions, Invalid, RollbackProblem, SetFacts, AVAILABLE,
    DEGRADED, EVENT_AVAILABLE, EVENT_RECOVERED, EVENT_ROLLOUT_STARTED, VALID,
};
use crate::rollout::{Counts, RolloutPlan};

/// Agent messages are quoted up to this many characters.
const MAX_AGENT_MESSAGE: usize = 200;

/// What the operator knows about one selected node for one set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeState<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The agent's report for this set, if the agent wrote one.
    pub report: Option<&'a PodReport>,
    /// Set when the set cannot run on this node at all (see `render::name_problem`).
    pub name_problem: Option<&'a str>,
}

/// Everything [`aggregate`] needs besides the previous status.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed<'a> {
    /// `metadata.generation` of the set.
    pub generation: Option<i64>,
    /// The revision the nodes should run: the freshly rendered one, or while the spec is invalid
    /// the last one that was valid (the nodes keep running it).
    pub revision: Option<&'a str>,
    /// The number of the StaticPodRevision of `revision`, when known.
    pub revision_number: Option<i64>,
    /// A rollback this reconcile refused.
    pub rollback_failed: Option<RollbackProblem>,
    /// Set when the spec is invalid and nothing is distributed.
    pub invalid: Option<Invalid>,
    /// `(node, its untolerated taints)` for every selected node the taints leave out, by name.
    pub excluded: &'a [(String, String)],
    /// Every node the selector matches and the taints let in, in a stable order (by name).
    pub nodes: Vec<NodeState<'a>>,
    /// The rollout planner's view of the targeted nodes; `None` when there is no revision to
    /// roll out (the spec was never valid).
    pub rollout: Option<RolloutPlan>,
}

/// The problem a node has with its static pod, if any: a name that cannot work, a file or pod
/// the agent does not own in the way (Conflict), a failed write (Error), or a written manifest
/// without mirror pod that the agent flagged with a message (the agent only adds a message to a
/// written pod when something is wrong, e.g. the kubelet rejected the manifest or admission
/// rejected the mirror pod; a mirror pod that is merely not there *yet* carries no message).
pub fn node_problem(state: &NodeState<'_>) -> Option<String> {
    if let Some(problem) = state.name_problem {
        return Some(problem.to_string());
    }
    let report = state.report?;
    let message = report.message.as_deref().map(shorten);
    match report.phase {
        ManifestPhase::Conflict => Some(format!(
            "Conflict: {}",
            message
                .unwrap_or_else(|| "a file or pod StaticPodSet does not own is in the way".into())
        )),
        ManifestPhase::Error => Some(format!(
            "Error: {}",
            message.unwrap_or_else(|| "the agent failed to write the manifest".into())
        )),
        ManifestPhase::Written if report.mirror_pod.is_none() => {
            message.map(|m| format!("no mirror pod: {m}"))
        }
        _ => None,
    }
}

fn shorten(message: &str) -> String {
    if message.chars().count() <= MAX_AGENT_MESSAGE {
        return message.to_string();
    }
    let mut short: String = message.chars().take(MAX_AGENT_MESSAGE).collect();
    short.push('…');
    short
}

/// Computes the status of a set from what its nodes report and what the rollout planner found.
///
/// The DaemonSet-like counts are the planner's (see [`crate::rollout`]); `numberWritten` and
/// `numberMisscheduled` count, per selected node, the agent having written the update revision
/// and [`node_problem`] finding a problem. The conditions are [`set_conditions`]'. Without a plan
/// (the spec was never valid) nothing runs and nothing is available. An unchanged world yields
/// an identical status and no write.
pub fn aggregate(
    previous: Option<&StaticPodSetStatus>,
    observed: &Observed<'_>,
    now: &Time,
) -> StaticPodSetStatus {
    let revision = observed.revision;
    let at_revision = |r: Option<&str>| revision.is_some() && r == revision;

    let mut written = 0;
    let mut problems: Vec<(&str, String)> = Vec::new();
    for state in &observed.nodes {
        if state.report.is_some_and(|r| {
            r.phase == ManifestPhase::Written && at_revision(r.written_revision.as_deref())
        }) {
            written += 1;
        }
        if let Some(problem) = node_problem(state) {
            problems.push((state.node, problem));
        }
    }
    let desired = observed.nodes.len();
    let plan = observed.rollout.as_ref();
    let counts = plan.map(|p| p.counts).unwrap_or(Counts {
        desired,
        unavailable: desired,
        ..Counts::default()
    });
    // What every node ran when the set was last fully up to date. Before this field existed, a
    // status whose counts said "all updated" described the same thing.
    let current_revision = if revision.is_some() && plan.is_some_and(|p| p.complete) {
        revision.map(str::to_string)
    } else {
        previous.and_then(|p| {
            p.current_revision.clone().or_else(|| {
                (p.updated_number_scheduled == p.desired_number_scheduled)
                    .then(|| p.update_revision.clone())
                    .flatten()
            })
        })
    };
    let conditions = set_conditions(
        previous,
        &SetFacts {
            generation: observed.generation,
            rollout: plan,
            desired,
            invalid: observed.invalid.as_ref(),
            problems: &problems,
            rollback_failed: observed.rollback_failed.as_ref(),
            excluded: observed.excluded,
        },
        now,
    );

    StaticPodSetStatus {
        observed_generation: observed.generation,
        desired_number_scheduled: count(counts.desired),
        current_number_scheduled: count(counts.current),
        number_written: count(written),
        number_ready: count(counts.ready),
        updated_number_scheduled: count(counts.updated),
        number_available: count(counts.available),
        number_unavailable: count(counts.unavailable),
        number_misscheduled: count(problems.len()),
        number_excluded_by_taints: count(observed.excluded.len()),
        update_revision: revision.map(str::to_string),
        update_revision_number: observed.revision_number,
        current_revision,
        conditions,
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// An Event to publish on the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

/// The Events a status change deserves: a spec turning invalid, nodes reporting new problems,
/// recovery, a new revision being rolled out, and the set becoming available.
pub fn notices(previous: Option<&StaticPodSetStatus>, next: &StaticPodSetStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    let changed = |type_: &str| -> Option<(&Condition, Option<&Condition>)> {
        let new = find_condition(Some(next), type_)?;
        let old = find_condition(previous, type_);
        let same = old.is_some_and(|o| o.status == new.status && o.message == new.message);
        (!same).then_some((new, old))
    };
    if let Some((valid, _)) = changed(VALID) {
        if valid.status == "False" {
            out.push(Notice {
                warning: true,
                reason: valid.reason.clone(),
                note: valid.message.clone(),
            });
        }
    }
    if let Some(revision) = &next.update_revision {
        if previous.and_then(|p| p.update_revision.as_ref()) != Some(revision) {
            let named = match next.update_revision_number {
                Some(number) => format!("revision {number} ({revision})"),
                None => format!("revision {revision}"),
            };
            out.push(Notice {
                warning: false,
                reason: EVENT_ROLLOUT_STARTED.into(),
                note: format!(
                    "rolling out {named} to {}",
                    plural(next.desired_number_scheduled.max(0) as usize, "node")
                ),
            });
        }
    }
    if let Some((degraded, old)) = changed(DEGRADED) {
        if degraded.status == "True" {
            out.push(Notice {
                warning: true,
                reason: degraded.reason.clone(),
                note: degraded.message.clone(),
            });
        } else if old.is_some_and(|o| o.status == "True") {
            out.push(Notice {
                warning: false,
                reason: EVENT_RECOVERED.into(),
                note: "no node reports a problem any more".into(),
            });
        }
    }
    if let Some((available, old)) = changed(AVAILABLE) {
        let was_available = old.is_some_and(|o| o.status == "True");
        if available.status == "True" && !was_available && next.desired_number_scheduled > 0 {
            out.push(Notice {
                warning: false,
                reason: EVENT_AVAILABLE.into(),
                note: available.message.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::*;
    use k8s_openapi::jiff::Timestamp;
    use staticpodset_api::MirrorPodReport;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn report(
        phase: ManifestPhase,
        written: Option<&str>,
        mirror: Option<(&str, bool)>,
    ) -> PodReport {
        PodReport {
            set_namespace: "ns".into(),
            set_name: "set".into(),
            phase,
            written_revision: written.map(str::to_string),
            mirror_pod: mirror.map(|(rev, ready)| MirrorPodReport {
                name: "set-node".into(),
                uid: "uid".into(),
                revision: Some(rev.to_string()),
                up_to_date: true,
                ready,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn state<'a>(node: &'a str, report: Option<&'a PodReport>) -> NodeState<'a> {
        NodeState {
            node,
            report,
            name_problem: None,
        }
    }

    fn observed<'a>(nodes: Vec<NodeState<'a>>) -> Observed<'a> {
        Observed {
            generation: Some(3),
            revision: Some("r2"),
            revision_number: Some(2),
            invalid: None,
            rollback_failed: None,
            excluded: &[],
            nodes,
            rollout: None,
        }
    }

    /// What the rollout planner makes of the reports: every node with a report is assigned the
    /// observed revision (the agent acted on it), every Node is Ready.
    fn plan_for(obs: &Observed<'_>) -> Option<RolloutPlan> {
        use crate::rollout::{
            plan_rollout, Assignment, MirrorPod, NodeFacts, NodeHealth, RolloutInput, Strategy,
        };
        let update = obs.revision?;
        let nodes = obs
            .nodes
            .iter()
            .filter(|n| n.name_problem.is_none())
            .map(|n| NodeFacts {
                name: n.node.to_string(),
                assignment: n.report.map(|_| Assignment {
                    revision: update.to_string(),
                    since: Timestamp::from_second(0).unwrap(),
                }),
                mirror_pod: n
                    .report
                    .and_then(|r| r.mirror_pod.as_ref())
                    .map(|m| MirrorPod {
                        revision: m.revision.clone(),
                        ready: m.ready,
                        ready_since: None,
                    }),
                health: NodeHealth::Ready { since: None },
                failed_revision: None,
                fallback: None,
                previous_pod: None,
            })
            .collect();
        Some(plan_rollout(&RolloutInput {
            update_revision: update.to_string(),
            last_healthy_revision: None,
            revision_numbers: Default::default(),
            strategy: Strategy::default(),
            nodes,
            now: Timestamp::from_second(10).unwrap(),
        }))
    }

    /// [`aggregate`] with the plan the reports imply.
    fn run(
        previous: Option<&StaticPodSetStatus>,
        obs: &Observed<'_>,
        now: &Time,
    ) -> StaticPodSetStatus {
        let obs = Observed {
            rollout: plan_for(obs),
            ..obs.clone()
        };
        aggregate(previous, &obs, now)
    }

    fn cond<'a>(s: &'a StaticPodSetStatus, t: &str) -> &'a Condition {
        find_condition(Some(s), t).unwrap()
    }

    #[test]
    fn counts_per_node_state() {
        let ready = report(ManifestPhase::Written, Some("r2"), Some(("r2", true)));
        let starting = report(ManifestPhase::Written, Some("r2"), Some(("r2", false)));
        let old_mirror = report(ManifestPhase::Written, Some("r2"), Some(("r1", true)));
        let pending = report(ManifestPhase::Pending, Some("r1"), Some(("r1", true)));
        let conflict = report(ManifestPhase::Conflict, None, None);
        let nodes = vec![
            state("a", Some(&ready)),
            state("b", Some(&starting)),
            state("c", Some(&old_mirror)),
            state("d", Some(&pending)),
            state("e", Some(&conflict)),
            state("f", None),
        ];
        let s = run(None, &observed(nodes), &time(100));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.desired_number_scheduled, 6);
        assert_eq!(s.number_written, 3);
        // Only a runs r2 Ready: updated and available. a, b, c, d have a mirror pod; a, c, d
        // are Ready (at some revision).
        assert_eq!(s.updated_number_scheduled, 1);
        assert_eq!(s.number_available, 1);
        assert_eq!(s.number_unavailable, 5);
        assert_eq!(s.current_number_scheduled, 4);
        assert_eq!(s.number_ready, 3);
        assert_eq!(s.number_misscheduled, 1);
        assert_eq!(s.update_revision.as_deref(), Some("r2"));

        let available = cond(&s, AVAILABLE);
        assert_eq!(
            (available.status.as_str(), available.reason.as_str()),
            ("False", "NodesUnavailable")
        );
        assert!(
            available
                .message
                .starts_with("1/6 nodes available, maxUnavailable is 1; unavailable: b ("),
            "{}",
            available.message
        );
        let progressing = cond(&s, PROGRESSING);
        assert_eq!(
            (progressing.status.as_str(), progressing.reason.as_str()),
            ("True", "RollingUpdate")
        );
        let degraded = cond(&s, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert!(
            degraded.message.contains("e: Conflict: "),
            "{}",
            degraded.message
        );
        assert_eq!(cond(&s, VALID).status, "True");
        for c in &s.conditions {
            assert_eq!(c.observed_generation, Some(3));
            assert_eq!(c.last_transition_time, time(100));
        }
    }

    #[test]
    fn all_ready() {
        let ready = report(ManifestPhase::Written, Some("r2"), Some(("r2", true)));
        let s = run(
            None,
            &observed(vec![state("a", Some(&ready)), state("b", Some(&ready))]),
            &time(1),
        );
        assert_eq!(s.number_ready, 2);
        let a = cond(&s, AVAILABLE);
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("True", "AllNodesAvailable")
        );
        assert_eq!(a.message, "2/2 nodes available");
        let p = cond(&s, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("False", "RolloutComplete")
        );
        assert_eq!(cond(&s, DEGRADED).status, "False");
    }

    #[test]
    fn no_nodes_selected_is_available() {
        let s = run(None, &observed(vec![]), &time(1));
        assert_eq!(s.desired_number_scheduled, 0);
        let a = cond(&s, AVAILABLE);
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("True", "NoNodesSelected")
        );
        assert_eq!(cond(&s, PROGRESSING).status, "False");
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let ready = report(ManifestPhase::Written, Some("r2"), Some(("r2", true)));
        let starting = report(ManifestPhase::Written, Some("r2"), Some(("r2", false)));
        let first = run(
            None,
            &observed(vec![state("a", Some(&starting))]),
            &time(10),
        );
        // Same world later: identical status, so the controller writes nothing.
        let again = run(
            Some(&first),
            &observed(vec![state("a", Some(&starting))]),
            &time(20),
        );
        assert_eq!(first, again);
        // The node becomes ready: Available flips and gets the new time; Degraded does not.
        let later = run(
            Some(&first),
            &observed(vec![state("a", Some(&ready))]),
            &time(30),
        );
        assert_eq!(cond(&later, AVAILABLE).last_transition_time, time(30));
        assert_eq!(cond(&later, DEGRADED).last_transition_time, time(10));
        assert_eq!(cond(&later, VALID).last_transition_time, time(10));
    }

    #[test]
    fn message_lists_at_most_five_nodes() {
        let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        let nodes = names.iter().map(|n| state(n, None)).collect();
        let s = run(None, &observed(nodes), &time(1));
        let message = &cond(&s, AVAILABLE).message;
        assert!(
            message.contains("n4 (") && message.ends_with(" and 3 more"),
            "{message}"
        );
        assert!(!message.contains("n5"), "{message}");
    }

    #[test]
    fn problems_and_their_messages() {
        let mut error = report(ManifestPhase::Error, None, None);
        error.message = Some("permission denied".into());
        let mut no_mirror = report(ManifestPhase::Written, Some("r2"), None);
        no_mirror.message = Some("mirror pod missing for 5m: admission rejected it".into());
        let young = report(ManifestPhase::Written, Some("r2"), None);
        let removing = report(ManifestPhase::Removing, Some("r1"), None);
        let too_long = "mirror pod name would be 70 characters";
        let nodes = vec![
            state("a", Some(&error)),
            state("b", Some(&no_mirror)),
            state("c", Some(&young)),
            state("d", Some(&removing)),
            NodeState {
                node: "e",
                report: None,
                name_problem: Some(too_long),
            },
        ];
        let s = run(None, &observed(nodes), &time(1));
        assert_eq!(s.number_misscheduled, 3);
        assert_eq!(s.number_written, 2);
        let d = cond(&s, DEGRADED);
        assert_eq!(
            d.message,
            "3 nodes with problems: a: Error: permission denied; \
             b: no mirror pod: mirror pod missing for 5m: admission rejected it; \
             e: mirror pod name would be 70 characters"
        );
    }

    #[test]
    fn long_agent_messages_are_shortened() {
        let mut error = report(ManifestPhase::Error, None, None);
        error.message = Some("x".repeat(1000));
        let problem = node_problem(&state("a", Some(&error))).unwrap();
        assert!(problem.chars().count() < 220, "{}", problem.len());
        assert!(problem.ends_with('…'));
    }

    #[test]
    fn invalid_spec() {
        let previous_ready = report(ManifestPhase::Written, Some("r1"), Some(("r1", true)));
        let obs = Observed {
            generation: Some(4),
            revision: Some("r1"),
            revision_number: Some(1),
            rollback_failed: None,
            invalid: Some(Invalid {
                reason: REASON_INVALID_TEMPLATE,
                problems: vec!["a: bad".into(), "b: worse".into()],
            }),
            excluded: &[],
            nodes: vec![state("a", Some(&previous_ready))],
            rollout: None,
        };
        let s = run(None, &obs, &time(1));
        let v = cond(&s, VALID);
        assert_eq!(
            (v.status.as_str(), v.reason.as_str(), v.message.as_str()),
            ("False", "InvalidTemplate", "a: bad; b: worse")
        );
        let p = cond(&s, PROGRESSING);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("False", "InvalidTemplate")
        );
        // The nodes still run the last valid revision, and the counts say so.
        assert_eq!(s.number_ready, 1);
        assert_eq!(cond(&s, AVAILABLE).status, "True");
    }

    #[test]
    fn never_valid_has_no_revision() {
        let obs = Observed {
            generation: Some(1),
            revision: None,
            revision_number: None,
            rollback_failed: None,
            invalid: Some(Invalid {
                reason: REASON_INVALID_NODE_SELECTOR,
                problems: vec!["x".into()],
            }),
            excluded: &[],
            nodes: vec![],
            rollout: None,
        };
        let s = run(None, &obs, &time(1));
        assert_eq!(s.update_revision, None);
        assert_eq!(cond(&s, VALID).reason, "InvalidNodeSelector");
    }

    #[test]
    fn notices_on_transitions_only() {
        let ready = report(ManifestPhase::Written, Some("r2"), Some(("r2", true)));
        let conflict = report(ManifestPhase::Conflict, None, None);

        let first = run(None, &observed(vec![state("a", Some(&conflict))]), &time(1));
        let n = notices(None, &first);
        let reasons: Vec<&str> = n.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(reasons, ["RolloutStarted", "NodeProblems"]);
        assert!(n[1].warning && n[1].note.contains("a: Conflict"));

        // Nothing changed: nothing to say.
        let same = run(
            Some(&first),
            &observed(vec![state("a", Some(&conflict))]),
            &time(2),
        );
        assert!(notices(Some(&first), &same).is_empty());

        // Recovery and availability.
        let fixed = run(
            Some(&same),
            &observed(vec![state("a", Some(&ready))]),
            &time(3),
        );
        let reasons: Vec<String> = notices(Some(&same), &fixed)
            .into_iter()
            .map(|n| n.reason)
            .collect();
        assert_eq!(reasons, ["Recovered", "Available"]);

        // The spec turns invalid.
        let obs = Observed {
            invalid: Some(Invalid {
                reason: REASON_INVALID_TEMPLATE,
                problems: vec!["bad".into()],
            }),
            ..observed(vec![state("a", Some(&ready))])
        };
        let invalid = run(Some(&fixed), &obs, &time(4));
        let n = notices(Some(&fixed), &invalid);
        assert_eq!(n.len(), 1);
        assert!(n[0].warning);
        assert_eq!(
            (n[0].reason.as_str(), n[0].note.as_str()),
            ("InvalidTemplate", "bad")
        );

        // A new revision.
        let mut obs = observed(vec![state("a", Some(&ready))]);
        obs.revision = Some("r3");
        let rolled = run(Some(&fixed), &obs, &time(5));
        let reasons: Vec<String> = notices(Some(&fixed), &rolled)
            .into_iter()
            .map(|n| n.reason)
            .collect();
        assert_eq!(reasons, ["RolloutStarted"]);
    }

    #[test]
    fn current_revision_moves_only_once_every_node_runs_the_update() {
        let old = report(ManifestPhase::Written, Some("r1"), Some(("r1", true)));
        let new = report(ManifestPhase::Written, Some("r2"), Some(("r2", true)));
        let mut obs = observed(vec![state("a", Some(&old))]);
        obs.revision = Some("r1");
        obs.revision_number = Some(1);
        let at_r1 = run(None, &obs, &time(1));
        assert_eq!(at_r1.current_revision.as_deref(), Some("r1"));
        assert_eq!(at_r1.update_revision_number, Some(1));

        // r2 is asked for; one node has it, the other not yet: current stays r1.
        let halfway = run(
            Some(&at_r1),
            &observed(vec![state("a", Some(&new)), state("b", Some(&old))]),
            &time(2),
        );
        assert_eq!(halfway.update_revision.as_deref(), Some("r2"));
        assert_eq!(halfway.update_revision_number, Some(2));
        assert_eq!(halfway.current_revision.as_deref(), Some("r1"));

        let done = run(
            Some(&halfway),
            &observed(vec![state("a", Some(&new)), state("b", Some(&new))]),
            &time(3),
        );
        assert_eq!(done.current_revision.as_deref(), Some("r2"));

        // A brand-new set rolling out for the first time has no current revision yet.
        let first = run(None, &observed(vec![state("a", None)]), &time(1));
        assert_eq!(first.current_revision, None);
        // A status written before the field existed, with every node updated, counts as current.
        let legacy = StaticPodSetStatus {
            desired_number_scheduled: 1,
            updated_number_scheduled: 1,
            update_revision: Some("r1".into()),
            ..Default::default()
        };
        let s = run(
            Some(&legacy),
            &observed(vec![state("a", Some(&old))]),
            &time(4),
        );
        assert_eq!(s.current_revision.as_deref(), Some("r1"));
    }

    #[test]
    fn a_refused_rollback_shows_until_the_spec_changes() {
        let ready = report(ManifestPhase::Written, Some("r2"), Some(("r2", true)));
        let mut obs = observed(vec![state("a", Some(&ready))]);
        obs.rollback_failed = Some(RollbackProblem {
            reason: "RollbackRevisionNotFound",
            message: "cannot roll back to revision 9".into(),
        });
        let refused = run(None, &obs, &time(1));
        let c = cond(&refused, ROLLBACK_FAILED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RollbackRevisionNotFound")
        );
        assert_eq!(c.message, "cannot roll back to revision 9");
        // Other conditions are untouched by it.
        assert_eq!(cond(&refused, AVAILABLE).status, "True");

        // Later reconciles of the same generation keep it, unchanged.
        let again = run(
            Some(&refused),
            &observed(vec![state("a", Some(&ready))]),
            &time(2),
        );
        assert_eq!(again, refused);

        // A new generation drops it.
        let mut next = observed(vec![state("a", Some(&ready))]);
        next.generation = Some(4);
        let changed = run(Some(&again), &next, &time(3));
        assert!(find_condition(Some(&changed), ROLLBACK_FAILED).is_none());
    }

    #[test]
    fn rollout_notice_names_the_revision_number() {
        let ready = report(ManifestPhase::Written, Some("r2"), Some(("r2", true)));
        let s = run(None, &observed(vec![state("a", Some(&ready))]), &time(1));
        let n = notices(None, &s);
        assert_eq!(n[0].reason, "RolloutStarted");
        assert_eq!(n[0].note, "rolling out revision 2 (r2) to 1 node");
    }
}
