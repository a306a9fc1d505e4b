//! Every condition a StaticPodSet shows, and every reason it and its Events carry: the one
//! catalogue (what `kubectl describe staticpodset` shows users) and the builders that turn the
//! rollout planner's facts and the nodes' reports into conditions. Pure.
//!
//! The planner ([`crate::rollout`]) and the status ([`crate::status`]) decide *what is*; this
//! module alone decides *how it is told*.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use staticpodset_api::StaticPodSetStatus;

use crate::rollout::{Counts, FailureCause, NodePlan, RolloutPlan, Unavailable};

// --- Condition types ---

/// Condition type: at most maxUnavailable targeted nodes are unavailable, and some node is
/// available (see [`crate::rollout`]).
pub const AVAILABLE: &str = "Available";
/// Condition type: a new revision is being rolled out (True), is rolled out or halted (False),
/// or the rollout is paused (Unknown).
pub const PROGRESSING: &str = "Progressing";
/// Condition type: some node failed a revision, is NotReady, or reports a problem the rollout
/// will not fix by waiting.
pub const DEGRADED: &str = "Degraded";
/// Condition type: the spec can be rendered and distributed.
pub const VALID: &str = "Valid";
/// Condition type, present only after a refused `staticpods.dev/rollback-to`: why it was refused.
/// It stays until the spec changes.
pub const ROLLBACK_FAILED: &str = "RollbackFailed";
/// Condition type, present only while the set's last reconcile failed for a reason it can show
/// (the API server refused an object the set needs, or its history conflicts): the reason names
/// what failed, the message is the error with the API server's words. Gone with the next
/// reconcile that succeeds.
pub const RECONCILE_FAILURE: &str = "ReconcileFailure";
/// Condition type, present only while some selected node is left out because the template does
/// not tolerate its taints: which nodes, and which taints.
pub const NODES_EXCLUDED: &str = "NodesExcluded";

// --- Reasons of Available ---

/// Reason of `Available=True` when the set targets no node.
pub const REASON_NO_NODES_SELECTED: &str = "NoNodesSelected";
/// Reason of `Available=True` when every targeted node is available.
pub const REASON_ALL_NODES_AVAILABLE: &str = "AllNodesAvailable";
/// Reason of `Available=True` when some nodes are unavailable, within maxUnavailable.
pub const REASON_MINIMUM_NODES_AVAILABLE: &str = "MinimumNodesAvailable";
/// Reason of `Available=False`: more nodes unavailable than maxUnavailable, none available, or
/// the spec was never valid.
pub const REASON_NODES_UNAVAILABLE: &str = "NodesUnavailable";

// --- Reasons of Progressing ---

/// Reason of `Progressing=True` while nodes are being updated.
pub const REASON_ROLLING_UPDATE: &str = "RollingUpdate";
/// Reason of `Progressing=Unknown` while `spec.paused` is set.
pub const REASON_PAUSED: &str = "Paused";
/// Reason of `Progressing=False` when a node failed the update revision, however it failed (the
/// rollout halts the same way); also the reason of the failure recorded on a node's entry, and
/// of the Warning Event about it, when its progress deadline passed.
pub const REASON_PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// Reason of `Progressing=False` when every targeted node is updated (or none is targeted).
pub const REASON_ROLLOUT_COMPLETE: &str = "RolloutComplete";
/// Reason of `Progressing=False` when every node at or above the partition is updated and the
/// partition holds the others back.
pub const REASON_PARTITION_ROLLED_OUT: &str = "PartitionRolledOut";

// --- Reasons of Degraded ---

/// Reason of `Degraded=True` when some node failed the update revision and is not available.
pub const REASON_REVISION_FAILED: &str = "RevisionFailed";
/// Reason of `Degraded=True` when some targeted Node is NotReady or gone.
pub const REASON_NODES_NOT_READY: &str = "NodesNotReady";
/// Reason of `Degraded=True` when only nodes' agents report problems (a conflict, a failed
/// write, a manifest the kubelet or admission rejected, a name that cannot work).
pub const REASON_NODE_PROBLEMS: &str = "NodeProblems";
/// Reason of `Degraded=False`.
pub const REASON_AS_EXPECTED: &str = "AsExpected";

// --- Reasons of Valid (False also stops Progressing, with the same reason) ---

/// Reason of `Valid=True`.
pub const REASON_VALID: &str = "Valid";
/// Reason of `Valid=False` when the pod template is unusable.
pub const REASON_INVALID_TEMPLATE: &str = "InvalidTemplate";
/// Reason of `Valid=False` when the rollout settings are unusable (a maxUnavailable the CRD's
/// rule would have refused, with an older CRD installed).
pub const REASON_INVALID_UPDATE_STRATEGY: &str = "InvalidUpdateStrategy";
/// Reason of `Valid=False` when only the node selector is unusable.
pub const REASON_INVALID_NODE_SELECTOR: &str = "InvalidNodeSelector";
/// Reason of `Valid=False` when the cluster's admission chain (Pod Security,
/// ValidatingAdmissionPolicies, webhooks, LimitRanger, ResourceQuota, Pod validation) refuses
/// the set's mirror pod in a server-side dry run; the message is the API server's.
pub const REASON_ADMISSION_DENIED: &str = "AdmissionDenied";
/// Reason of `Valid=False` when the rendered pod and its template are too large to be stored as
/// a StaticPodRevision (see [`crate::revision_size`]).
pub const REASON_TEMPLATE_TOO_LARGE: &str = "TemplateTooLarge";
/// Reason of `Valid=False` when a ConfigMap or Secret a set needs does not exist.
pub const REASON_CONFIG_NOT_FOUND: &str = "ConfigNotFound";
/// Reason of `Valid=False` when a ConfigMap or Secret cannot become files (a key or the total
/// size).
pub const REASON_INVALID_CONFIG: &str = "InvalidConfig";

// --- Reasons of a node's failure record (`lastFailure`) and its Warning Event ---

/// A node's agent gave up the revision its entry names and wrote back the one that last ran
/// Ready on the node, while the API server was unreachable (node-local fallback). The rollout
/// treats it as [`REASON_PROGRESS_DEADLINE_EXCEEDED`].
pub const REASON_NODE_FALLBACK: &str = "NodeFallback";

/// The reason a node's failure is recorded and announced with.
pub fn failure_reason(cause: FailureCause) -> &'static str {
    match cause {
        FailureCause::ProgressDeadline => REASON_PROGRESS_DEADLINE_EXCEEDED,
        FailureCause::NodeFallback => REASON_NODE_FALLBACK,
    }
}

// --- Reasons of NodesExcluded ---

/// Reason of `NodesExcluded=True`: the template does not tolerate a `NoSchedule` taint of a
/// node it does not run on yet, or a `NoExecute` taint.
pub const REASON_UNTOLERATED_TAINTS: &str = "UntoleratedTaints";

// --- Reasons of ReconcileFailure (and of the Warning Event when it appears or changes) ---

/// Writing an entry into a node's NodeStaticPods was refused.
pub const REASON_NODE_WRITE_FAILED: &str = "NodeWriteFailed";
/// Creating, renumbering or listing the set's StaticPodRevisions was refused (a quota, a
/// webhook, RBAC; a revision too large for etcd is refused earlier, as
/// [`REASON_TEMPLATE_TOO_LARGE`]).
pub const REASON_REVISION_WRITE_FAILED: &str = "RevisionWriteFailed";
/// The set's history cannot be trusted: a revision object of the set holds content the operator
/// did not render, or numbers collide.
pub const REASON_REVISION_HISTORY_CONFLICT: &str = "RevisionHistoryConflict";
/// A StaticPodRevision of the name the set needs belongs to another set.
pub const REASON_REVISION_NAME_TAKEN: &str = "RevisionNameTaken";
/// Restoring a template for `staticpods.dev/rollback-to` was refused by the API server.
pub const REASON_ROLLBACK_WRITE_FAILED: &str = "RollbackWriteFailed";
/// Reading the ConfigMaps and Secrets the set's volumes name was refused.
pub const REASON_CONFIG_READ_FAILED: &str = "ConfigReadFailed";
/// Writing the set's configuration bundle was refused.
pub const REASON_BUNDLE_WRITE_FAILED: &str = "BundleWriteFailed";
/// The admission dry run of the set's mirror pod gave no verdict (the operator may not create
/// pods, or the request failed); nothing new is handed out.
pub const REASON_ADMISSION_CHECK_FAILED: &str = "AdmissionCheckFailed";
/// Adding or removing the set's finalizer was refused.
pub const REASON_FINALIZER_WRITE_FAILED: &str = "FinalizerWriteFailed";

// --- Reasons of RollbackFailed (and of the Warning Event of a refused rollback) ---

/// The `staticpods.dev/rollback-to` value is not a revision number.
pub const REASON_INVALID_ROLLBACK_REVISION: &str = "InvalidRollbackRevision";
/// No revision of that number is in the set's history (pruned, or never existed).
pub const REASON_ROLLBACK_REVISION_NOT_FOUND: &str = "RollbackRevisionNotFound";
/// The revision holds no pod template to restore.
pub const REASON_ROLLBACK_REVISION_UNUSABLE: &str = "RollbackRevisionUnusable";
/// The API server rejected the restored template (today's rules refuse the old one).
pub const REASON_ROLLBACK_REJECTED: &str = "RollbackRejected";

// --- Reasons of Events only ---

/// Normal Event: a new update revision is being rolled out.
pub const EVENT_ROLLOUT_STARTED: &str = "RolloutStarted";
/// Normal Event: `Degraded` went back to False.
pub const EVENT_RECOVERED: &str = "Recovered";
/// Normal Event: the set became `Available`.
pub const EVENT_AVAILABLE: &str = "Available";
/// Normal Event: `staticpods.dev/rollback-to` restored an earlier template.
pub const EVENT_ROLLED_BACK: &str = "RolledBack";
/// Warning Event: a deleted set let go of nodes whose agents did not confirm the removal.
pub const EVENT_SKIPPED_NODES: &str = "SkippedNodes";

/// How many node names a condition message lists before it says "and N more": messages must
/// stay readable in `kubectl describe` at 5,000 nodes.
pub const MAX_NODES_IN_MESSAGE: usize = 5;

/// Why a spec is not distributed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// A reason of `Valid=False`, such as [`REASON_INVALID_TEMPLATE`].
    pub reason: &'static str,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Why a rollback cannot be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackProblem {
    /// A reason of `RollbackFailed`, for the Event and the condition.
    pub reason: &'static str,
    /// What the user reads.
    pub message: String,
}

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// "True"
    True,
    /// "False"
    False,
    /// "Unknown"
    Unknown,
}

impl ConditionStatus {
    /// The API string.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// A condition to report on the set; [`set_conditions`] adds generation and transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedCondition {
    /// `Available`, `Progressing` or `Degraded`.
    pub type_: &'static str,
    /// Its status.
    pub status: ConditionStatus,
    /// CamelCase reason, one of the `REASON_*` constants.
    pub reason: &'static str,
    /// For a human; lists at most [`MAX_NODES_IN_MESSAGE`] nodes per group.
    pub message: String,
}

/// The rollout's conditions, `Available`, `Progressing`, `Degraded`, in that order, from what
/// one planning pass found.
pub fn rollout_conditions(plan: &RolloutPlan) -> Vec<PlannedCondition> {
    let view = View { plan };
    vec![
        view.available_condition(),
        view.progressing_condition(),
        view.degraded_condition(),
    ]
}

/// What the status knows besides the rollout, for [`set_conditions`].
#[derive(Clone, Copy, Debug)]
pub struct SetFacts<'a> {
    /// `metadata.generation` of the set.
    pub generation: Option<i64>,
    /// The rollout planner's pass; `None` when the spec was never valid.
    pub rollout: Option<&'a RolloutPlan>,
    /// Selected nodes.
    pub desired: usize,
    /// Set when the spec is invalid and nothing is distributed.
    pub invalid: Option<&'a Invalid>,
    /// `(node, problem)` for every selected node with a problem, by node name.
    pub problems: &'a [(&'a str, String)],
    /// A rollback this reconcile refused.
    pub rollback_failed: Option<&'a RollbackProblem>,
    /// `(node, untolerated taints)` for the selected nodes the taints leave out.
    pub excluded: &'a [(String, String)],
}

/// Every condition of the set's status: the rollout's (or, without one, what an invalid or
/// never-valid spec means), joined with the nodes' problems, `Valid` and `RollbackFailed`.
/// Conditions keep their `lastTransitionTime` while their status does not change, so an unchanged
/// world yields identical conditions.
pub fn set_conditions(
    previous: Option<&StaticPodSetStatus>,
    facts: &SetFacts<'_>,
    now: &Time,
) -> Vec<Condition> {
    let cond = |type_: &str, status: &str, reason: &str, message: String| {
        condition(
            previous,
            facts.generation,
            now,
            type_,
            status,
            reason,
            message,
        )
    };
    let planned_all = facts.rollout.map(rollout_conditions).unwrap_or_default();
    let planned = |type_: &str| {
        planned_all
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| cond(type_, c.status.as_str(), c.reason, c.message.clone()))
    };
    let desired = facts.desired;

    let available = planned(AVAILABLE).unwrap_or_else(|| {
        if desired == 0 {
            cond(
                AVAILABLE,
                "True",
                REASON_NO_NODES_SELECTED,
                "the set targets no node".into(),
            )
        } else {
            cond(
                AVAILABLE,
                "False",
                REASON_NODES_UNAVAILABLE,
                "the spec was never valid: no node runs the pod".into(),
            )
        }
    });

    let progressing = match (facts.invalid, planned(PROGRESSING)) {
        (Some(invalid), _) => cond(
            PROGRESSING,
            "False",
            invalid.reason,
            "nothing is rolled out while the spec is invalid; nodes keep what they run".into(),
        ),
        (None, Some(progressing)) => progressing,
        (None, None) => cond(
            PROGRESSING,
            "False",
            REASON_ROLLOUT_COMPLETE,
            "the set targets no node".into(),
        ),
    };

    let problems = facts.problems;
    let planned_degraded = planned(DEGRADED).filter(|c| c.status == "True");
    let degraded = if problems.is_empty() {
        planned_degraded.unwrap_or_else(|| {
            cond(
                DEGRADED,
                "False",
                REASON_AS_EXPECTED,
                "no node reports a problem".into(),
            )
        })
    } else {
        let shown: Vec<String> = problems
            .iter()
            .take(MAX_NODES_IN_MESSAGE)
            .map(|(node, problem)| format!("{node}: {problem}"))
            .collect();
        let mut message = format!(
            "{} with problems: {}",
            plural(problems.len(), "node"),
            shown.join("; ")
        );
        if problems.len() > shown.len() {
            message.push_str(&format!("; and {} more", problems.len() - shown.len()));
        }
        match planned_degraded {
            Some(rollout) => cond(
                DEGRADED,
                "True",
                &rollout.reason,
                format!("{}; {message}", rollout.message),
            ),
            None => cond(DEGRADED, "True", REASON_NODE_PROBLEMS, message),
        }
    };

    let valid = match facts.invalid {
        Some(invalid) => cond(VALID, "False", invalid.reason, invalid.problems.join("; ")),
        None => cond(VALID, "True", REASON_VALID, "the spec is valid".into()),
    };

    let rollback_failed = match facts.rollback_failed {
        Some(problem) => Some(cond(
            ROLLBACK_FAILED,
            "True",
            problem.reason,
            problem.message.clone(),
        )),
        // Kept until the spec changes: the annotation that caused it is gone.
        None => find_condition(previous, ROLLBACK_FAILED)
            .filter(|c| c.observed_generation == facts.generation)
            .cloned(),
    };
    let excluded = (!facts.excluded.is_empty()).then(|| {
        let shown: Vec<String> = facts
            .excluded
            .iter()
            .take(MAX_NODES_IN_MESSAGE)
            .map(|(node, taints)| format!("{node} ({taints})"))
            .collect();
        let mut message = format!(
            "{} selected but left out for taints the template does not tolerate: {}",
            plural(facts.excluded.len(), "node"),
            shown.join(", ")
        );
        if facts.excluded.len() > shown.len() {
            message.push_str(&format!(" and {} more", facts.excluded.len() - shown.len()));
        }
        cond(NODES_EXCLUDED, "True", REASON_UNTOLERATED_TAINTS, message)
    });
    let mut conditions = vec![available, progressing, degraded, valid];
    conditions.extend(rollback_failed);
    conditions.extend(excluded);
    conditions
}

/// The set's conditions with `ReconcileFailure` set to `reason` and `message` (the others as
/// they are); `None` when the set already shows exactly that, so a failure repeated by every
/// retry is written, and told in an Event, once.
pub fn with_failure(
    previous: Option<&StaticPodSetStatus>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
    now: &Time,
) -> Option<Vec<Condition>> {
    let message = bounded(message);
    if find_condition(previous, RECONCILE_FAILURE)
        .is_some_and(|c| c.status == "True" && c.reason == reason && c.message == message)
    {
        return None;
    }
    let failure = condition(
        previous,
        generation,
        now,
        RECONCILE_FAILURE,
        "True",
        reason,
        message,
    );
    let mut conditions: Vec<Condition> = previous
        .map(|p| p.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != RECONCILE_FAILURE)
        .collect();
    conditions.push(failure);
    Some(conditions)
}

/// Condition messages quote errors up to this many bytes: an API error can quote a whole object.
const MAX_FAILURE_MESSAGE: usize = 1024;

fn bounded(message: &str) -> String {
    if message.len() <= MAX_FAILURE_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_FAILURE_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Builds a condition, keeping the previous `lastTransitionTime` when the status is unchanged.
fn condition(
    previous: Option<&StaticPodSetStatus>,
    generation: Option<i64>,
    now: &Time,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> Condition {
    let status = status.to_string();
    let last_transition_time = find_condition(previous, type_)
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The condition of this type in a status, if any.
pub fn find_condition<'a>(
    status: Option<&'a StaticPodSetStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// What the rollout condition builders look at.
struct View<'a> {
    plan: &'a RolloutPlan,
}

impl View<'_> {
    fn update(&self) -> &str {
        &self.plan.update_revision
    }

    fn updated_summary(&self) -> String {
        format!(
            "{}/{} nodes updated to revision {}",
            self.plan.counts.updated,
            self.plan.counts.desired,
            self.update()
        )
    }

    fn unavailable_list(&self) -> String {
        list(
            self.plan
                .nodes
                .iter()
                .filter_map(|n| Some(format!("{} ({})", n.name, n.unavailable.as_ref()?))),
        )
    }

    fn available_condition(&self) -> PlannedCondition {
        let Counts {
            desired,
            available,
            unavailable,
            ..
        } = self.plan.counts;
        let m = self.plan.max_unavailable;
        let (status, reason, message) = if desired == 0 {
            (
                ConditionStatus::True,
                REASON_NO_NODES_SELECTED,
                "the set targets no node".to_string(),
            )
        } else if unavailable == 0 {
            (
                ConditionStatus::True,
                REASON_ALL_NODES_AVAILABLE,
                format!("{available}/{desired} nodes available"),
            )
        } else if available > 0 && unavailable <= m {
            (
                ConditionStatus::True,
                REASON_MINIMUM_NODES_AVAILABLE,
                format!(
                    "{available}/{desired} nodes available, within maxUnavailable {m}; \
                     unavailable: {}",
                    self.unavailable_list()
                ),
            )
        } else {
            (
                ConditionStatus::False,
                REASON_NODES_UNAVAILABLE,
                format!(
                    "{available}/{desired} nodes available, maxUnavailable is {m}; \
                     unavailable: {}",
                    self.unavailable_list()
                ),
            )
        };
        PlannedCondition {
            type_: AVAILABLE,
            status,
            reason,
            message,
        }
    }

    fn progressing_condition(&self) -> PlannedCondition {
        let update = self.update();
        let (status, reason, message) = if self.plan.halted {
            let failed = list(self.plan.nodes.iter().filter(|n| n.failed).map(failed_node));
            let after = match self.plan.last_healthy_revision.as_deref() {
                _ if !self.plan.auto_rollback => {
                    format!("failed nodes keep revision {update} (autoRollback is off)")
                }
                Some(h) if h != update && self.plan.paused => {
                    format!("failed nodes are not returned to revision {h} while paused")
                }
                Some(h) if h != update => format!("failed nodes are returned to revision {h}"),
                _ => "there is no healthy revision to return failed nodes to".to_string(),
            };
            (
                ConditionStatus::False,
                REASON_PROGRESS_DEADLINE_EXCEEDED,
                format!(
                    "revision {update} failed on {failed}; the rollout is halted and no other \
                     node is handed it; {after}; {}; change the template to roll out a new \
                     revision",
                    self.updated_summary()
                ),
            )
        } else if self.plan.paused {
            (
                ConditionStatus::Unknown,
                REASON_PAUSED,
                format!("the rollout is paused; {}", self.updated_summary()),
            )
        } else if self.plan.complete {
            (
                ConditionStatus::False,
                REASON_ROLLOUT_COMPLETE,
                self.updated_summary(),
            )
        } else if self.plan.nodes[self.plan.partition..]
            .iter()
            .all(|n| n.updated)
        {
            let held = list(
                self.plan.nodes[..self.plan.partition]
                    .iter()
                    .filter(|n| !n.updated)
                    .map(|n| n.name.clone()),
            );
            (
                ConditionStatus::False,
                REASON_PARTITION_ROLLED_OUT,
                format!(
                    "{}; partition {} holds back: {held}",
                    self.updated_summary(),
                    self.plan.partition
                ),
            )
        } else {
            let mut message = self.updated_summary();
            let updating: Vec<String> = self
                .plan
                .nodes
                .iter()
                .filter(|n| !n.updated && n.revision.as_deref() == Some(update))
                .map(|n| match &n.unavailable {
                    Some(u) => format!("{} ({u})", n.name),
                    None if n.surging => {
                        format!("{} (new pod starting beside the old one)", n.name)
                    }
                    None => n.name.clone(),
                })
                .collect();
            if !updating.is_empty() {
                message.push_str(&format!("; updating: {}", list(updating.into_iter())));
            }
            if !self.plan.waiting.is_empty() && self.plan.max_surge > 0 {
                let surging = self.plan.nodes.iter().filter(|n| n.surging).count();
                let running = if surging == 1 {
                    "1 node is".to_string()
                } else {
                    format!("{surging} nodes are")
                };
                message.push_str(&format!(
                    "; {} waiting, as maxSurge is {} and {running} running two pods",
                    plural(self.plan.waiting.len(), "node"),
                    self.plan.max_surge,
                ));
            } else if !self.plan.waiting.is_empty() {
                message.push_str(&format!(
                    "; {} waiting, as maxUnavailable is {} and unavailable are: {}",
                    plural(self.plan.waiting.len(), "node"),
                    self.plan.max_unavailable,
                    self.unavailable_list()
                ));
            }
            // Candidates that were neither handed the revision nor held back: gone Nodes, which
            // are never written. Named so that a rollout that cannot finish says why.
            let left: Vec<String> = self.plan.nodes[self.plan.partition..]
                .iter()
                .filter(|n| !n.updated && n.revision.as_deref() != Some(update))
                .filter(|n| n.unavailable == Some(Unavailable::NodeGone))
                .map(|n| format!("{} (Node gone)", n.name))
                .collect();
            if !left.is_empty() {
                message.push_str(&format!("; not handed: {}", list(left.into_iter())));
            }
            (ConditionStatus::True, REASON_ROLLING_UPDATE, message)
        };
        PlannedCondition {
            type_: PROGRESSING,
            status,
            reason,
            message,
        }
    }

    fn degraded_condition(&self) -> PlannedCondition {
        // A failed node that has since become available is no longer a problem of the fleet (the
        // halt is the Progressing condition's business).
        let failed: Vec<String> = self
            .plan
            .nodes
            .iter()
            .filter(|n| n.failed && n.unavailable.is_some())
            .map(failed_node)
            .collect();
        let down: Vec<String> = self
            .plan
            .nodes
            .iter()
            .filter_map(|n| match &n.unavailable {
                Some(u @ (Unavailable::NodeGone | Unavailable::NodeNotReady { .. })) => {
                    Some(format!("{} ({u})", n.name))
                }
                _ => None,
            })
            .collect();
        let mut parts = Vec::new();
        if !failed.is_empty() {
            parts.push(format!(
                "revision {} failed on {}",
                self.update(),
                list(failed.iter().cloned())
            ));
        }
        if !down.is_empty() {
            parts.push(format!(
                "counted unavailable while their Node is down: {}",
                list(down.iter().cloned())
            ));
        }
        let (status, reason, message) = if !failed.is_empty() {
            (
                ConditionStatus::True,
                REASON_REVISION_FAILED,
                parts.join("; "),
            )
        } else if !down.is_empty() {
            (
                ConditionStatus::True,
                REASON_NODES_NOT_READY,
                parts.join("; "),
            )
        } else {
            (
                ConditionStatus::False,
                REASON_AS_EXPECTED,
                "no node failed the update revision and every targeted Node is Ready".to_string(),
            )
        };
        PlannedCondition {
            type_: DEGRADED,
            status,
            reason,
            message,
        }
    }
}

/// A failed node as condition messages name it: with the revision its agent put back, when it
/// fell back on its own.
fn failed_node(n: &NodePlan) -> String {
    match &n.fell_back_to {
        Some(to) => format!("{} (its agent fell back to revision {to})", n.name),
        None => n.name.clone(),
    }
}

/// "a, b, c, d, e and 3 more": messages stay readable in `kubectl describe` at 5,000 nodes.
pub fn list(items: impl Iterator<Item = String>) -> String {
    let mut shown = Vec::new();
    let mut more = 0usize;
    for item in items {
        if shown.len() < MAX_NODES_IN_MESSAGE {
            shown.push(item);
        } else {
            more += 1;
        }
    }
    let mut text = shown.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn a_failure_is_shown_once_and_keeps_the_other_conditions() {
        let valid = condition(
            None,
            Some(1),
            &at(1),
            VALID,
            "True",
            REASON_VALID,
            "ok".into(),
        );
        let status = StaticPodSetStatus {
            conditions: vec![valid.clone()],
            ..Default::default()
        };
        let shown = with_failure(
            Some(&status),
            Some(1),
            REASON_REVISION_WRITE_FAILED,
            "too large",
            &at(5),
        )
        .unwrap();
        assert_eq!(shown[0], valid, "other conditions stay as they are");
        let failure = &shown[1];
        assert_eq!(
            (
                failure.type_.as_str(),
                failure.status.as_str(),
                failure.reason.as_str()
            ),
            (RECONCILE_FAILURE, "True", REASON_REVISION_WRITE_FAILED)
        );
        assert_eq!(failure.message, "too large");

        // The same failure again: nothing to write, no second Event.
        let failing = StaticPodSetStatus {
            conditions: shown.clone(),
            ..Default::default()
        };
        assert_eq!(
            with_failure(
                Some(&failing),
                Some(1),
                REASON_REVISION_WRITE_FAILED,
                "too large",
                &at(9)
            ),
            None
        );
        // Another failure replaces it and keeps when it started failing.
        let other = with_failure(
            Some(&failing),
            Some(1),
            REASON_BUNDLE_WRITE_FAILED,
            "refused",
            &at(9),
        )
        .unwrap();
        assert_eq!(other.len(), 2);
        assert_eq!(other[1].reason, REASON_BUNDLE_WRITE_FAILED);
        assert_eq!(other[1].last_transition_time, at(5));
        // Long messages are bounded.
        let long = with_failure(
            None,
            None,
            REASON_NODE_WRITE_FAILED,
            &"é".repeat(2000),
            &at(1),
        )
        .unwrap();
        assert!(long[0].message.len() <= MAX_FAILURE_MESSAGE + '…'.len_utf8());
    }

    #[test]
    fn reasons_are_distinct() {
        let reasons = [
            REASON_NODE_WRITE_FAILED,
            REASON_REVISION_WRITE_FAILED,
            REASON_REVISION_HISTORY_CONFLICT,
            REASON_REVISION_NAME_TAKEN,
            REASON_ROLLBACK_WRITE_FAILED,
            REASON_CONFIG_READ_FAILED,
            REASON_BUNDLE_WRITE_FAILED,
            REASON_ADMISSION_CHECK_FAILED,
            REASON_FINALIZER_WRITE_FAILED,
            REASON_ADMISSION_DENIED,
            REASON_INVALID_TEMPLATE,
        ];
        let unique: std::collections::BTreeSet<&str> = reasons.iter().copied().collect();
        assert_eq!(unique.len(), reasons.len());
    }
}
