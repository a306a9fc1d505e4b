//! The rolling-update planner: which revision each targeted node of one set is handed next, which
//! nodes failed the update revision, and the rollout's counts and conditions. Pure: the caller
//! gathers [`RolloutInput`] from the set, its revisions, the node objects and the Nodes, writes
//! [`RolloutPlan::writes`], records [`RolloutPlan::newly_failed`] and publishes the counts. The
//! plan holds facts only: [`crate::conditions`] tells them as conditions.
//!
//! # Model
//!
//! The kubelet kills the old static pod before it starts the new one (two pods of one name cannot
//! run on one node), so without surge handing a node a new revision is an outage of that node.
//! With `maxSurge` the node's agent starts the new revision under the set's other pod name beside
//! the old pod and removes the old one once the new one is available: the node stays available
//! while its old pod is Ready (its agent reports that pod as the previous mirror pod), and
//! handing it a revision costs one unit of the surge budget instead: at most `maxSurge` nodes run
//! two pods at once. A node that is unavailable anyway is handed the revision at once, as without
//! surge. A node is *available* when its Node is Ready and its mirror pod runs the revision the
//! node is assigned, is Ready, and has been Ready for more than `minReadySeconds` (the test of
//! Kubernetes' `IsPodAvailable`). Everything else is *unavailable*: new nodes without an
//! assignment, nodes whose kubelet has not switched to the assigned revision yet, pods that crash,
//! Nodes that are NotReady or gone. A node is *updated* when it is available at the update
//! revision.
//!
//! At most `maxUnavailable` targeted nodes may be unavailable, counting every unavailable node, so
//! that a node that was down before the rollout is not joined by another. Handing a revision to a
//! node that is unavailable anyway costs nothing; handing it to an available node costs one.
//!
//! # Decisions where Kubernetes has no rule to copy
//!
//! - **maxUnavailable** as a percentage is of the targeted nodes, rounded up; a result of 0 (from
//!   `0` or `0%`) becomes 1 whenever a node is targeted. That is what the DaemonSet controller does
//!   (`updatedDesiredNodeCounts` falls back to 1 when both maxUnavailable and maxSurge are 0; its
//!   API rejects 0 outright, and ours should too).
//! - **New nodes** (no assignment) are handed the update revision at once, whatever the budget,
//!   as a DaemonSet creates pods on new nodes at its update revision: such a node is unavailable
//!   already. It still counts as unavailable until its pod is available, so it slows the update of
//!   the other nodes, as in the DaemonSet controller (which counts a node without pods in
//!   `numUnavailable`). Below the partition, or while the rollout is paused or halted, a new node
//!   is handed the last healthy revision instead; when there is none, below the partition it is
//!   handed the update revision (nothing else exists) and while paused or halted nothing.
//! - **Partition**: nodes below it keep whatever they are assigned, even a newer revision, as a
//!   StatefulSet never reverts pods below its partition.
//! - **NotReady or gone Nodes** count as unavailable and are named in the `Degraded` condition. The
//!   progress deadline does not run while a Node is not Ready: its clock starts at the later of the
//!   handout and the Node's last transition to Ready, so a node that was down never fails a
//!   revision, and a node that comes back gets the full deadline. A NotReady node is handed the
//!   update revision for free (it is down anyway, and starts on the new revision when it returns:
//!   one outage instead of two). A gone node is never written (its node object goes with the Node).
//!   So a dead node never halts or fails the rollout; it does hold one unit of the budget, which is
//!   the point of counting unhealthy nodes (with etcd on three nodes and one dead, taking a second
//!   member down loses quorum), and `Progressing` names it as what the rollout waits for.
//! - **Deadline**: a node handed the update revision fails it when, past the deadline, its pod is
//!   not Ready at that revision. A pod Ready at it but still inside `minReadySeconds` is not failed
//!   (it made it in time). Past the deadline any such node that is not Ready fails, even if it was
//!   Ready before: a pod that crashes during the rollout is the harm to stop. Once the update
//!   revision is the last healthy one (it completed a rollout), the deadline no longer applies: a
//!   later crash is a `Degraded` node, not a failed rollout.
//! - **Failures are sticky**: a node whose record says it failed the update revision keeps the
//!   rollout halted until the update revision changes (a new template, or a restart), even if the
//!   pod comes up later: a human should look at a revision that missed its deadline. Only a rollout
//!   in which every node is updated is no longer halted (there is nothing left to stop). A failure
//!   record of a node that leaves the target set leaves with it.
//! - **autoRollback** returns failed nodes that are unavailable to the last healthy revision (at no
//!   budget cost: they are down). A failed node that has become available is left running: taking
//!   it down would be harm, not safety. No rollback while paused.
//! - **Paused**: no node is handed anything, except new nodes (see above). Failures are still
//!   detected and reported: the kubelet keeps trying while the rollout is paused.
//! - **Node-local fallback**: an agent that gave up the revision its entry names and put back
//!   the one that last ran Ready on the node (it does so only while the API server is
//!   unreachable, for sets that allow it) has failed that revision there, exactly as if the
//!   progress deadline had passed: the failure is recorded, the rollout halts if it is the update
//!   revision, and autoRollback applies. A report of a fallback from a revision the entry no
//!   longer names is history the entry has moved past, and is ignored. A revision the node's
//!   record already says it failed is not failed again, so each node fails each revision once,
//!   whichever way it failed first.
//! - **Conditions**: `Available` means minimum availability as for a Deployment (at most
//!   maxUnavailable nodes unavailable), and at least one node available, so that waiting for
//!   `Available` on a new set waits for a pod. `Progressing` is False with `RolloutComplete` when
//!   every node is updated, False with `PartitionRolledOut` when only the partition holds nodes
//!   back, Unknown with `Paused` (as a paused Deployment), False with `ProgressDeadlineExceeded`
//!   when halted, True with `RollingUpdate` otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// `spec.updateStrategy.rollingUpdate.maxUnavailable`: how many targeted nodes may be unavailable
/// at once, as a count or as a percentage of the targeted nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnavailable {
    /// An absolute number of nodes.
    Count(u32),
    /// A percentage (0 to 100) of the targeted nodes, rounded up.
    Percent(u32),
}

impl Default for MaxUnavailable {
    /// 1, as for a DaemonSet.
    fn default() -> Self {
        MaxUnavailable::Count(1)
    }
}

impl MaxUnavailable {
    /// The number of nodes this allows out of `targeted`: a percentage rounded up, and at least 1
    /// when any node is targeted (see the module docs for why).
    pub fn resolve(self, targeted: usize) -> usize {
        let n = match self {
            MaxUnavailable::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
            MaxUnavailable::Percent(p) => {
                let scaled = (u128::from(p) * targeted as u128).div_ceil(100);
                usize::try_from(scaled).unwrap_or(usize::MAX)
            }
        };
        if targeted > 0 {
            n.max(1)
        } else {
            n
        }
    }

    /// The number of nodes this allows out of `targeted` as a surge: a percentage rounded up,
    /// and 0 when the value is 0 (no surge).
    pub fn resolve_surge(self, targeted: usize) -> usize {
        match self {
            MaxUnavailable::Count(0) | MaxUnavailable::Percent(0) => 0,
            other => other.resolve(targeted),
        }
    }
}

/// A maxUnavailable value that is neither a non-negative integer nor a percentage from 0% to 100%.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("maxUnavailable {value:?}: must be a non-negative integer or a percentage from \"0%\" to \"100%\"")]
pub struct InvalidMaxUnavailable {
    /// The value as written.
    pub value: String,
}

impl FromStr for MaxUnavailable {
    type Err = InvalidMaxUnavailable;

    /// Parses the string form of the IntOrString, which (as for a DaemonSet) must be a percentage:
    /// `"25%"`. A bare number in a string is rejected, as Kubernetes rejects it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMaxUnavailable {
            value: s.to_string(),
        };
        let digits = s.strip_suffix('%').ok_or_else(invalid)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        match digits.parse::<u32>() {
            Ok(p) if p <= 100 => Ok(MaxUnavailable::Percent(p)),
            _ => Err(invalid()),
        }
    }
}

impl TryFrom<&IntOrString> for MaxUnavailable {
    type Error = InvalidMaxUnavailable;

    fn try_from(value: &IntOrString) -> Result<Self, Self::Error> {
        match value {
            IntOrString::Int(i) => {
                u32::try_from(*i)
                    .map(MaxUnavailable::Count)
                    .map_err(|_| InvalidMaxUnavailable {
                        value: i.to_string(),
                    })
            }
            IntOrString::String(s) => s.parse(),
        }
    }
}

/// The rollout settings of a set (`spec.updateStrategy.rollingUpdate`, `spec.minReadySeconds`,
/// `spec.progressDeadlineSeconds`, `spec.paused`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strategy {
    /// How many targeted nodes may be unavailable at once.
    pub max_unavailable: MaxUnavailable,
    /// Only nodes at this position or later in the stable order (by name) are handed the update
    /// revision; `desired - 1` makes the last node a canary.
    pub partition: u32,
    /// How long a pod must have been Ready before its node counts as available.
    pub min_ready_seconds: u32,
    /// How long a node handed the update revision has to become Ready at it before the revision is
    /// marked failed there; `None` never marks a failure.
    pub progress_deadline_seconds: Option<u32>,
    /// Hand nothing out (new nodes excepted, see the module docs).
    pub paused: bool,
    /// Return failed nodes to the last healthy revision.
    pub auto_rollback: bool,
    /// How many available nodes may be updated with surge at once; `None` (or a value that
    /// resolves to 0) updates in place.
    pub max_surge: Option<MaxUnavailable>,
}

impl Default for Strategy {
    /// maxUnavailable 1, no partition, minReadySeconds 0, a 600 s deadline (a Deployment's
    /// default), not paused, no automatic rollback.
    fn default() -> Self {
        Strategy {
            max_unavailable: MaxUnavailable::default(),
            partition: 0,
            min_ready_seconds: 0,
            progress_deadline_seconds: Some(600),
            paused: false,
            auto_rollback: false,
            max_surge: None,
        }
    }
}

/// The revision a node's manifest carries, and when it was handed to the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// Revision name.
    pub revision: String,
    /// When the node was handed this revision: the start of its progress deadline.
    pub since: Timestamp,
}

/// What a node's mirror pod shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorPod {
    /// The revision stamped into the pod the kubelet runs; `None` if the annotation is missing.
    pub revision: Option<String>,
    /// The pod's Ready condition is True.
    pub ready: bool,
    /// Since when the pod has been Ready (the condition's last transition).
    pub ready_since: Option<Timestamp>,
}

/// What a node's agent reported of a node-local fallback: it gave up `from_revision` on its own
/// and wrote back `to_revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// The revision given up.
    pub from_revision: String,
    /// The revision written back: the one that last ran Ready on the node.
    pub to_revision: String,
    /// When the agent fell back.
    pub time: Timestamp,
    /// The agent's words, possibly empty.
    pub message: String,
}

/// The Node's Ready condition, or its absence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    /// Ready is True; `since` is the condition's last transition, if known.
    Ready {
        /// Last transition of the Ready condition.
        since: Option<Timestamp>,
    },
    /// Ready is False or Unknown (the kubelet stopped posting status).
    NotReady {
        /// Last transition of the Ready condition.
        since: Option<Timestamp>,
    },
    /// The Node object does not exist (any more), but the set still targets the node.
    Gone,
}

/// What the planner needs to know about one targeted node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name; unique within one input.
    pub name: String,
    /// The set's entry in the node's object, if any; `None` for a node new to the set.
    pub assignment: Option<Assignment>,
    /// The mirror pod, if the kubelet published one.
    pub mirror_pod: Option<MirrorPod>,
    /// During a surge update, the pod of the revision the node ran before, still running beside
    /// the new one.
    pub previous_pod: Option<MirrorPod>,
    /// The Node's readiness.
    pub health: NodeHealth,
    /// The revision this node last failed, if any (the per-node failure record the caller keeps
    /// from [`RolloutPlan::newly_failed`]).
    pub failed_revision: Option<String>,
    /// The node-local fallback its agent reports, if any.
    pub fallback: Option<Fallback>,
}

/// Everything one planning pass of one set looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutInput {
    /// The revision of the current template: what every node should end up running.
    pub update_revision: String,
    /// The last revision that completed a rollout (every targeted node updated), the target of
    /// automatic rollback; the caller records it when [`RolloutPlan::complete`] is true.
    pub last_healthy_revision: Option<String>,
    /// The number of every revision in the set's history, to find the oldest. A revision not
    /// listed (pruned, or foreign) counts as older than all listed ones.
    pub revision_numbers: BTreeMap<String, i64>,
    /// The rollout settings.
    pub strategy: Strategy,
    /// Every node the set targets, in any order (the planner sorts by name).
    pub nodes: Vec<NodeFacts>,
    /// The time of this pass.
    pub now: Timestamp,
}

/// Why a node is unavailable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The Node object is gone.
    NodeGone,
    /// The Node is not Ready.
    NodeNotReady {
        /// Since when, if known.
        since: Option<Timestamp>,
    },
    /// This plan hands the node a revision; its pod will restart.
    Handed {
        /// The revision handed.
        revision: String,
    },
    /// The node has no revision assigned.
    NotAssigned,
    /// No mirror pod: the kubelet does not run the pod, or has not published it.
    NoMirrorPod,
    /// The mirror pod runs another revision than the assigned one: the switch is under way.
    RunsOtherRevision {
        /// The revision the mirror pod shows, if any.
        running: Option<String>,
    },
    /// The pod is not Ready.
    PodNotReady,
    /// The pod has been Ready for no more than minReadySeconds.
    ReadyTooShort,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NodeGone => write!(f, "Node gone"),
            Unavailable::NodeNotReady { since: Some(t) } => write!(f, "Node NotReady since {t}"),
            Unavailable::NodeNotReady { since: None } => write!(f, "Node NotReady"),
            Unavailable::Handed { revision } => write!(f, "being handed revision {revision}"),
            Unavailable::NotAssigned => write!(f, "no revision assigned"),
            Unavailable::NoMirrorPod => write!(f, "no mirror pod"),
            Unavailable::RunsOtherRevision { running: Some(r) } => {
                write!(f, "mirror pod still runs revision {r}")
            }
            Unavailable::RunsOtherRevision { running: None } => {
                write!(f, "mirror pod shows no revision")
            }
            Unavailable::PodNotReady => write!(f, "pod not Ready"),
            Unavailable::ReadyTooShort => write!(f, "Ready for less than minReadySeconds"),
        }
    }
}

/// The plan for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// Node name.
    pub name: String,
    /// The revision the node's entry must carry after this plan; `None` only for a node that has
    /// no entry and gets none yet (the planner never removes an entry).
    pub revision: Option<String>,
    /// `revision` differs from the current assignment: the entry must be written.
    pub changed: bool,
    /// Why the node is unavailable after this plan; `None` when it is available.
    pub unavailable: Option<Unavailable>,
    /// The Node is Ready and the mirror pod is Ready, at whatever revision.
    pub ready: bool,
    /// The node is available at the update revision and not being handed anything.
    pub updated: bool,
    /// The kubelet runs some revision of the pod (there is a mirror pod).
    pub running: bool,
    /// The node failed the update revision (recorded before, or in this plan).
    pub failed: bool,
    /// The node runs a second pod (surge): its previous pod serves while the assigned revision
    /// is not available yet.
    pub surging: bool,
    /// The revision the node's agent put back after giving up the update revision it is
    /// assigned (node-local fallback); `None` when it did not fall back.
    pub fell_back_to: Option<String>,
}

/// Counts over the targeted nodes, as a DaemonSet's status has them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Targeted nodes (`desiredNumberScheduled`).
    pub desired: usize,
    /// Nodes that run some revision of the pod (`currentNumberScheduled`).
    pub current: usize,
    /// Nodes available at the update revision (`updatedNumberScheduled`).
    pub updated: usize,
    /// Nodes whose pod is Ready, at any revision (`numberReady`).
    pub ready: usize,
    /// Available nodes (`numberAvailable`).
    pub available: usize,
    /// `desired - available` (`numberUnavailable`).
    pub unavailable: usize,
}

/// How a node failed a revision; [`crate::conditions::failure_reason`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// The pod was not Ready at the revision within progressDeadlineSeconds.
    ProgressDeadline,
    /// The node's agent gave the revision up and wrote back the one that last ran Ready there.
    NodeFallback,
}

/// A node that failed a revision in this plan; the caller records it on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    /// Node name.
    pub node: String,
    /// The revision that failed: the update revision, or for a node-local fallback whichever
    /// revision the node's entry names.
    pub revision: String,
    /// How it failed.
    pub cause: FailureCause,
    /// What happened, for a human.
    pub message: String,
}

/// What one planning pass decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutPlan {
    /// maxUnavailable resolved against the targeted nodes.
    pub max_unavailable: usize,
    /// maxSurge resolved against the targeted nodes; 0 without surge.
    pub max_surge: usize,
    /// One entry per targeted node, sorted by name.
    pub nodes: Vec<NodePlan>,
    /// The entries to write: node name to revision, only where the revision changes.
    pub writes: BTreeMap<String, String>,
    /// Status counts, after this plan's writes.
    pub counts: Counts,
    /// Nodes that failed a revision in this pass: the update revision, or (node-local
    /// fallback) the revision their entry names.
    pub newly_failed: Vec<NodeFailure>,
    /// The revision every node should end up running (the input's).
    pub update_revision: String,
    /// The last revision that completed a rollout (the input's).
    pub last_healthy_revision: Option<String>,
    /// The rollout is paused.
    pub paused: bool,
    /// Failed nodes return to the last healthy revision.
    pub auto_rollback: bool,
    /// The partition, bounded by the targeted nodes: `nodes[..partition]` are held back.
    pub partition: usize,
    /// Indices into `nodes` of the candidates the budget held back in this pass.
    pub waiting: Vec<usize>,
    /// A node failed the update revision: no further node is handed it.
    pub halted: bool,
    /// Every targeted node is updated: the update revision is now the last healthy one.
    pub complete: bool,
}

/// Plans one pass of the rollout of one set. See the module docs for the rules.
pub fn plan_rollout(input: &RolloutInput) -> RolloutPlan {
    let update = input.update_revision.as_str();
    let strategy = &input.strategy;
    let healthy = input.last_healthy_revision.as_deref();

    let mut facts: Vec<&NodeFacts> = input.nodes.iter().collect();
    facts.sort_by(|a, b| a.name.cmp(&b.name));
    let desired = facts.len();
    let max_unavailable = strategy.max_unavailable.resolve(desired);
    let partition = usize::try_from(strategy.partition)
        .unwrap_or(usize::MAX)
        .min(desired);

    let observed: Vec<Option<Unavailable>> = facts
        .iter()
        .map(|f| observe(f, strategy.min_ready_seconds, input.now))
        .collect();
    let failures: Vec<Option<NodeFailure>> = facts
        .iter()
        .zip(&observed)
        .map(|(f, o)| fallback_failure(f).or_else(|| deadline_failure(input, f, o.as_ref())))
        .collect();
    let failed: Vec<bool> = facts
        .iter()
        .zip(&failures)
        .map(|(f, new)| {
            new.as_ref().is_some_and(|n| n.revision == update)
                || f.failed_revision.as_deref() == Some(update)
        })
        .collect();
    // Nothing this pass hands out can make an updated node stop being updated, so "every node is
    // updated now" is also the state after the plan.
    let complete = facts
        .iter()
        .zip(&observed)
        .all(|(f, o)| o.is_none() && assigned(f) == Some(update));
    let halted = !complete && failed.iter().any(|&f| f);
    let max_surge = strategy.max_surge.map_or(0, |s| s.resolve_surge(desired));
    // A node whose assigned revision is not available yet but whose previous pod still serves.
    let serving_old: Vec<bool> = facts
        .iter()
        .zip(&observed)
        .map(|(f, o)| o.is_some() && serves_previous(f, max_surge > 0))
        .collect();
    let unavailable_before = observed
        .iter()
        .zip(&serving_old)
        .filter(|(o, old)| o.is_some() && !**old)
        .count();

    let mut targets: Vec<Option<&str>> = facts.iter().map(|f| assigned(f)).collect();
    let gone = |i: usize| facts[i].health == NodeHealth::Gone;
    // Candidates the budget held back, for the Progressing message.
    let mut waiting: Vec<usize> = Vec::new();
    if !strategy.paused {
        if halted {
            if let Some(back) = healthy.filter(|h| strategy.auto_rollback && *h != update) {
                for (i, target) in targets.iter_mut().enumerate() {
                    if failed[i] && observed[i].is_some() && !gone(i) && *target == Some(update) {
                        *target = Some(back);
                    }
                }
            }
        } else {
            let mut budget = max_unavailable.saturating_sub(unavailable_before);
            let mut surge_budget =
                max_surge.saturating_sub(serving_old.iter().filter(|&&s| s).count());
            let mut candidates: Vec<usize> = (partition..desired)
                .filter(|&i| !gone(i) && targets[i] != Some(update))
                .collect();
            // Worst off first, then oldest revision, then the stable order. Only the order among
            // available nodes decides anything (unavailable ones are all handed the revision),
            // but the whole order is kept so the rule reads as the module docs state it.
            candidates.sort_by_key(|&i| {
                let tier = match (&facts[i].health, &observed[i]) {
                    (NodeHealth::Ready { .. }, Some(_)) => 0,
                    (NodeHealth::Ready { .. }, None) => 2,
                    _ => 1,
                };
                let age = targets[i].and_then(|r| input.revision_numbers.get(r));
                (tier, age, i)
            });
            for i in candidates {
                if observed[i].is_some() && !serving_old[i] {
                    targets[i] = Some(update);
                } else if max_surge > 0 {
                    // The agent starts the revision beside the pod that serves.
                    if serving_old[i] || surge_budget > 0 {
                        surge_budget -= usize::from(!serving_old[i]);
                        targets[i] = Some(update);
                    } else {
                        waiting.push(i);
                    }
                } else if budget > 0 {
                    budget -= 1;
                    targets[i] = Some(update);
                } else {
                    waiting.push(i);
                }
            }
        }
    }
    // Nodes still without a revision: new nodes below the partition, or while paused or halted.
    let fallback = healthy.or((!strategy.paused && !halted).then_some(update));
    for (i, target) in targets.iter_mut().enumerate() {
        if target.is_none() && !gone(i) {
            *target = fallback;
        }
    }

    let nodes: Vec<NodePlan> = facts
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let changed = targets[i] != assigned(f);
            // With surge, a node that serves (from its assigned or its previous pod) keeps
            // serving while it is handed a revision.
            let surging = max_surge > 0 && (serving_old[i] || (changed && observed[i].is_none()));
            let unavailable = match (&observed[i], targets[i]) {
                (Some(u @ (Unavailable::NodeGone | Unavailable::NodeNotReady { .. })), _) => {
                    Some(u.clone())
                }
                _ if surging => None,
                (_, Some(revision)) if changed => Some(Unavailable::Handed {
                    revision: revision.to_string(),
                }),
                (other, _) => other.clone(),
            };
            let updated = !changed
                && targets[i] == Some(update)
                && unavailable.is_none()
                && observed[i].is_none();
            let node_ready = matches!(f.health, NodeHealth::Ready { .. });
            let pod_ready = f.mirror_pod.as_ref().is_some_and(|m| m.ready)
                || f.previous_pod.as_ref().is_some_and(|m| m.ready);
            NodePlan {
                name: f.name.clone(),
                revision: targets[i].map(str::to_string),
                changed,
                surging,
                ready: node_ready && pod_ready,
                running: f.health != NodeHealth::Gone
                    && (f.mirror_pod.is_some() || f.previous_pod.is_some()),
                updated,
                unavailable,
                failed: failed[i],
                fell_back_to: fell_back(f)
                    .filter(|fb| fb.from_revision == update)
                    .map(|fb| fb.to_revision.clone()),
            }
        })
        .collect();

    let writes = nodes
        .iter()
        .filter(|n| n.changed)
        .filter_map(|n| Some((n.name.clone(), n.revision.clone()?)))
        .collect();
    let available = nodes.iter().filter(|n| n.unavailable.is_none()).count();
    let counts = Counts {
        desired,
        current: nodes.iter().filter(|n| n.running).count(),
        updated: nodes.iter().filter(|n| n.updated).count(),
        ready: nodes.iter().filter(|n| n.ready).count(),
        available,
        unavailable: desired - available,
    };

    RolloutPlan {
        max_unavailable,
        max_surge,
        writes,
        counts,
        newly_failed: failures.into_iter().flatten().collect(),
        update_revision: input.update_revision.clone(),
        last_healthy_revision: input.last_healthy_revision.clone(),
        paused: strategy.paused,
        auto_rollback: strategy.auto_rollback,
        partition,
        waiting,
        halted,
        complete,
        nodes,
    }
}

fn assigned(f: &NodeFacts) -> Option<&str> {
    f.assignment.as_ref().map(|a| a.revision.as_str())
}

/// Why a node is unavailable at its current assignment, before this plan; `None` if available.
fn observe(f: &NodeFacts, min_ready_seconds: u32, now: Timestamp) -> Option<Unavailable> {
    match f.health {
        NodeHealth::Gone => return Some(Unavailable::NodeGone),
        NodeHealth::NotReady { since } => return Some(Unavailable::NodeNotReady { since }),
        NodeHealth::Ready { .. } => {}
    }
    let Some(assignment) = &f.assignment else {
        return Some(Unavailable::NotAssigned);
    };
    let Some(mirror) = &f.mirror_pod else {
        return Some(Unavailable::NoMirrorPod);
    };
    if mirror.revision.as_deref() != Some(assignment.revision.as_str()) {
        return Some(Unavailable::RunsOtherRevision {
            running: mirror.revision.clone(),
        });
    }
    if !mirror.ready {
        return Some(Unavailable::PodNotReady);
    }
    // IsPodAvailable: Ready strictly longer than minReadySeconds; an unknown start proves nothing.
    let long_enough = min_ready_seconds == 0
        || mirror.ready_since.is_some_and(|since| {
            now.duration_since(since) > SignedDuration::from_secs(i64::from(min_ready_seconds))
        });
    if !long_enough {
        return Some(Unavailable::ReadyTooShort);
    }
    None
}

/// Whether the node's previous pod (kept during a surge update) is Ready on a Ready Node, so the
/// node serves while its assigned revision starts. With surge, a Ready mirror pod at another
/// revision than the assigned one is that previous pod too, as reported before the agent wrote
/// the new revision beside it: the agent never stops it first.
fn serves_previous(f: &NodeFacts, surge: bool) -> bool {
    let old_mirror_serves = || {
        f.mirror_pod
            .as_ref()
            .is_some_and(|m| m.ready && m.revision.as_deref() != assigned(f))
    };
    matches!(f.health, NodeHealth::Ready { .. })
        && (f.previous_pod.as_ref().is_some_and(|p| p.ready) || (surge && old_mirror_serves()))
}

/// The agent's fallback report, if it gave up the revision the node's entry names now.
fn fell_back(f: &NodeFacts) -> Option<&Fallback> {
    f.fallback
        .as_ref()
        .filter(|fb| assigned(f) == Some(fb.from_revision.as_str()))
}

/// The failure of the revision the node's entry names, if the node's agent fell back from it
/// and the node's record does not say so yet.
fn fallback_failure(f: &NodeFacts) -> Option<NodeFailure> {
    let fallback = fell_back(f)?;
    // A gone Node's object is never written, so the failure could never be recorded and would
    // be reported again on every pass.
    if f.health == NodeHealth::Gone {
        return None;
    }
    let given_up = fallback.from_revision.as_str();
    if f.failed_revision.as_deref() == Some(given_up) {
        return None;
    }
    let why = if fallback.message.is_empty() {
        String::new()
    } else {
        format!(": {}", fallback.message)
    };
    Some(NodeFailure {
        node: f.name.clone(),
        revision: given_up.to_string(),
        cause: FailureCause::NodeFallback,
        message: format!(
            "revision {given_up} did not become healthy on node {} and the API server was \
             unreachable, so the node's agent put back revision {} at {}{why}",
            f.name, fallback.to_revision, fallback.time
        ),
    })
}

/// The failure of the update revision on this node, if its deadline passed in this pass.
fn deadline_failure(
    input: &RolloutInput,
    f: &NodeFacts,
    observed: Option<&Unavailable>,
) -> Option<NodeFailure> {
    let update = input.update_revision.as_str();
    let deadline = input.strategy.progress_deadline_seconds?;
    let assignment = f.assignment.as_ref().filter(|a| a.revision == update)?;
    let observed = observed?;
    if f.failed_revision.as_deref() == Some(update)
        || input.last_healthy_revision.as_deref() == Some(update)
    {
        return None;
    }
    // No clock while the Node is down: the revision is not at fault, and a dead node must not
    // halt the rollout.
    let NodeHealth::Ready { since } = f.health else {
        return None;
    };
    // Ready at the revision in time; only minReadySeconds remain.
    if f.mirror_pod
        .as_ref()
        .is_some_and(|m| m.ready && m.revision.as_deref() == Some(update))
    {
        return None;
    }
    let (start, from) = match since {
        Some(ready_at) if ready_at > assignment.since => (ready_at, "the Node became Ready"),
        _ => (assignment.since, "it was handed the revision"),
    };
    if input.now.duration_since(start) <= SignedDuration::from_secs(i64::from(deadline)) {
        return None;
    }
    Some(NodeFailure {
        node: f.name.clone(),
        revision: update.to_string(),
        cause: FailureCause::ProgressDeadline,
        message: format!(
            "revision {update} did not become Ready on node {} within {deadline}s of when {from} \
             ({start}): {observed}",
            f.name
        ),
    })
}

#[cfg(test)]
mod tests;
