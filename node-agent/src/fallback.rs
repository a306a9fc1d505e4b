//! Node-local fallback, the decisions: when the agent gives up a new revision on its own and
//! puts back the one that last ran Ready on the node. Pure; the loop gathers what the container
//! runtime shows ([`crate::cri::CriRuntime`]) and whether the API server answers.
//!
//! It exists for pods the API server itself depends on (an API server proxy, a VIP manager, an
//! etcd sidecar): when a new revision of such a pod breaks, the API server may be gone with it,
//! and the operator that would roll it back cannot act. A set opts in (`spec.nodeFallback`); its
//! entries then carry a deadline, and the rule is:
//!
//! - the agent wrote revision X for the set (the entry's revision), at time W (the manifest's
//!   mtime, or when the URL source began serving it);
//! - the node ran another revision R Ready before (its mirror pod was Ready at R, as the agent last
//!   saw it), and the agent has R's verified manifest;
//! - at W + deadline or later, X is not healthy by the container runtime: there is no ready pod
//!   sandbox of revision X whose every container's newest attempt runs and has run for at least
//!   [`STABLE`] (mirror pods cannot be seen with the API server down, readiness probes are the
//!   kubelet's and not in the runtime);
//! - and the API server does not answer.
//!
//! Then the agent writes R back in place (no stop-first: X is not serving, and the mirror pod
//! whose deletion stop-first waits for cannot be seen) and keeps R while the entry names X; the
//! report carries the fallback so that the operator, once it hears, fails the node for X. A new
//! revision in the entry ends it. Once X has been seen healthy (by the runtime or by its Ready
//! mirror pod) it is never given up on this node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use staticpodset_api::digest::manifest_digest;
use staticpodset_api::keys::ANNOTATION_REVISION;
use staticpodset_api::{FallbackReport, PodReport, SetKey};

use crate::dir_plan::Assignment;
use crate::last_known::{epoch_seconds, from_epoch_seconds, Fallback, ReadyRevision};

/// How long every container of a new revision must have run, without a restart, for the
/// revision to count as healthy.
pub const STABLE: Duration = Duration::from_secs(10);

/// What the container runtime shows of one pod sandbox of a set's static pod.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxView {
    /// Whether the sandbox is ready (`SANDBOX_READY`).
    pub ready: bool,
    /// The revision annotation the kubelet copied from the manifest onto the sandbox.
    pub revision: Option<String>,
    /// Its containers, every attempt the runtime still has.
    pub containers: Vec<ContainerView>,
}

/// One attempt of one container, as the runtime shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// The container's name in the pod.
    pub name: String,
    /// The kubelet's attempt number: 0 for the first start, one more for every restart.
    pub attempt: u32,
    /// Whether it runs (`CONTAINER_RUNNING`).
    pub running: bool,
    /// When it was created (just before it started).
    pub created: SystemTime,
}

/// Whether revision `revision` runs healthy among `sandboxes` at `now`: `Ok`, or why not.
/// `containers` are the names of the manifest's (non-init) containers.
pub fn health(
    revision: &str,
    containers: &[String],
    sandboxes: &[SandboxView],
    now: SystemTime,
) -> Result<(), String> {
    let of_revision: Vec<&SandboxView> = sandboxes
        .iter()
        .filter(|s| s.revision.as_deref() == Some(revision))
        .collect();
    if of_revision.is_empty() {
        return Err(format!(
            "the container runtime has no pod sandbox of revision {revision}"
        ));
    }
    let Some(sandbox) = of_revision.iter().find(|s| s.ready) else {
        return Err(format!("no pod sandbox of revision {revision} is ready"));
    };
    for name in containers {
        let newest = sandbox
            .containers
            .iter()
            .filter(|c| &c.name == name)
            .max_by_key(|c| c.attempt);
        let Some(newest) = newest else {
            return Err(format!("container {name} has not been created"));
        };
        if !newest.running {
            return Err(format!(
                "container {name} is not running (attempt {})",
                newest.attempt
            ));
        }
        let ran = now.duration_since(newest.created).unwrap_or_default();
        if ran < STABLE {
            return Err(format!(
                "container {name} has run {}s of the {}s it needs (attempt {})",
                ran.as_secs(),
                STABLE.as_secs(),
                newest.attempt
            ));
        }
    }
    Ok(())
}

/// The names of a manifest's containers (not its init containers).
pub fn container_names(manifest: &Value) -> Vec<String> {
    manifest
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A set whose new revision is past its fallback deadline and not known healthy: the loop asks
/// the runtime and the API server, then [`decide`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    /// The set.
    pub set: SetKey,
    /// The revision the entry names, which the agent wrote.
    pub revision: String,
    /// The static pod's name as the kubelet knows it (`<set>-<node>`), as the runtime labels it.
    pub pod_name: String,
    /// The revision's containers.
    pub containers: Vec<String>,
    /// When the agent wrote it.
    pub written_at: SystemTime,
    /// The entry's deadline.
    pub deadline: Duration,
    /// What would be put back.
    pub to: Arc<ReadyRevision>,
}

/// What fallback remembers: per set the revision last Ready, the fallbacks in force, and the
/// revisions seen healthy (never given up).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FallbackMemory {
    /// Per set, the revision that last ran Ready on the node.
    pub last_ready: BTreeMap<SetKey, Arc<ReadyRevision>>,
    /// Fallbacks in force.
    pub fallbacks: BTreeMap<SetKey, Fallback>,
    /// `(set, revision)` seen healthy since the agent started.
    pub passed: BTreeSet<(SetKey, String)>,
}

impl FallbackMemory {
    /// The revisions last Ready, for the saved state.
    pub fn ready_revisions(&self) -> Vec<ReadyRevision> {
        self.last_ready.values().map(|r| (**r).clone()).collect()
    }
}

/// The sets whose fallback deadline has passed at `now` and that may need it, and the earliest
/// deadline still to come. `written` is, per set, the revision the agent last had written and
/// since when.
pub fn due(
    assigned: &[Assignment],
    node: &str,
    written: &BTreeMap<SetKey, (String, SystemTime)>,
    memory: &FallbackMemory,
    now: SystemTime,
) -> (Vec<Due>, Option<SystemTime>) {
    let mut out = Vec::new();
    let mut next: Option<SystemTime> = None;
    for a in assigned {
        let entry = &a.entry;
        let Some(seconds) = entry.fallback_deadline_seconds else {
            continue;
        };
        // A surge update keeps the old pod running until the new one is seen Ready, which
        // cannot happen without the API server: there is nothing to fall back to.
        if entry.surge_min_ready_seconds.is_some() {
            continue;
        }
        let set = SetKey::of(entry);
        let Some((revision, at)) = written.get(&set) else {
            continue;
        };
        let Some(to) = memory.last_ready.get(&set) else {
            continue;
        };
        let Ok(manifest) = &a.manifest else {
            continue;
        };
        if *revision != entry.revision
            || to.revision == entry.revision
            || memory.fallbacks.contains_key(&set)
            || memory
                .passed
                .contains(&(set.clone(), entry.revision.clone()))
        {
            continue;
        }
        let deadline = Duration::from_secs(u64::try_from(seconds.max(0)).unwrap_or(0));
        let at_deadline = *at + deadline;
        if now < at_deadline {
            next = Some(next.map_or(at_deadline, |n| n.min(at_deadline)));
            continue;
        }
        out.push(Due {
            pod_name: format!("{}-{node}", entry.set_name),
            containers: container_names(manifest),
            set,
            revision: entry.revision.clone(),
            written_at: *at,
            deadline,
            to: to.clone(),
        });
    }
    (out, next)
}

/// What to do about a due set, given the runtime's verdict on its revision and whether the API
/// server answered: `Some` fallback to put in force, or `None` (and the revision is marked
/// passed when healthy).
pub fn decide(
    due: &Due,
    health: &Result<(), String>,
    api_reachable: bool,
    memory: &mut FallbackMemory,
    now: SystemTime,
) -> Option<Fallback> {
    match health {
        Ok(()) => {
            memory
                .passed
                .insert((due.set.clone(), due.revision.clone()));
            None
        }
        // The operator's progress deadline judges a revision while it can.
        Err(_) if api_reachable => None,
        Err(why) => {
            let fallback = Fallback {
                set_namespace: due.set.namespace.clone(),
                set_name: due.set.name.clone(),
                from: due.revision.clone(),
                to: due.to.revision.clone(),
                at: epoch_seconds(now),
                message: format!(
                    "revision {} was not healthy {}s after it was written ({why}) and the API \
                     server did not answer, so the node agent put back revision {}, the last \
                     one Ready on this node",
                    due.revision,
                    due.deadline.as_secs(),
                    due.to.revision
                ),
            };
            memory.fallbacks.insert(due.set.clone(), fallback.clone());
            Some(fallback)
        }
    }
}

/// The assignments with every fallback in force applied: the set's entry points at the revision
/// put back, with its manifest. Returns them and the sets whose write goes in place. A fallback
/// whose entry names another revision now is over, and forgotten.
pub fn apply(
    assigned: Vec<Assignment>,
    memory: &mut FallbackMemory,
) -> (Vec<Assignment>, BTreeSet<SetKey>) {
    let current: BTreeMap<SetKey, String> = assigned
        .iter()
        .map(|a| (SetKey::of(&a.entry), a.entry.revision.clone()))
        .collect();
    memory
        .fallbacks
        .retain(|set, f| current.get(set) == Some(&f.from));
    let mut in_place = BTreeSet::new();
    let assigned = assigned
        .into_iter()
        .map(|mut a| {
            let set = SetKey::of(&a.entry);
            let to = memory
                .fallbacks
                .get(&set)
                .and_then(|f| memory.last_ready.get(&set).filter(|r| r.revision == f.to));
            if let Some(to) = to {
                a.entry.revision = to.revision.clone();
                a.entry.digest = Some(to.digest.clone());
                a.manifest = Ok(Arc::new(to.manifest.clone()));
                in_place.insert(set);
            }
            a
        })
        .collect();
    (assigned, in_place)
}

/// Takes in what the report shows: a set whose mirror pod runs its entry's revision Ready makes
/// that revision the one to fall back to (and passes it). Returns whether anything changed.
pub fn observe_ready(
    assigned: &[Assignment],
    reports: &[PodReport],
    memory: &mut FallbackMemory,
) -> bool {
    let mut changed = false;
    for a in assigned {
        let set = SetKey::of(&a.entry);
        if memory.fallbacks.contains_key(&set) {
            continue;
        }
        let Ok(manifest) = &a.manifest else {
            continue;
        };
        let ready = reports.iter().any(|r| {
            r.set_namespace == set.namespace
                && r.set_name == set.name
                && r.mirror_pod.as_ref().is_some_and(|m| {
                    m.ready && m.revision.as_deref() == Some(a.entry.revision.as_str())
                })
        });
        if !ready {
            continue;
        }
        memory
            .passed
            .insert((set.clone(), a.entry.revision.clone()));
        if memory
            .last_ready
            .get(&set)
            .is_some_and(|r| r.revision == a.entry.revision)
        {
            continue;
        }
        let stamped = manifest
            .pointer("/metadata/annotations")
            .and_then(|m| m.get(ANNOTATION_REVISION))
            .and_then(Value::as_str);
        if stamped != Some(a.entry.revision.as_str()) {
            continue;
        }
        memory.last_ready.insert(
            set.clone(),
            Arc::new(ReadyRevision {
                set_namespace: set.namespace.clone(),
                set_name: set.name.clone(),
                revision: a.entry.revision.clone(),
                digest: manifest_digest(manifest),
                manifest: Value::clone(manifest),
            }),
        );
        changed = true;
    }
    let named: BTreeSet<SetKey> = assigned.iter().map(|a| SetKey::of(&a.entry)).collect();
    let before = memory.last_ready.len();
    memory.last_ready.retain(|set, _| named.contains(set));
    changed || memory.last_ready.len() != before
}

/// Marks the reports of sets under a fallback with it.
pub fn annotate(reports: &mut [PodReport], memory: &FallbackMemory) {
    for report in reports {
        let set = SetKey::new(report.set_namespace.clone(), report.set_name.clone());
        report.fallback = memory.fallbacks.get(&set).map(|f| FallbackReport {
            from_revision: f.from.clone(),
            to_revision: f.to.clone(),
            time: to_time(from_epoch_seconds(f.at)),
            message: f.message.clone(),
        });
    }
}

fn to_time(t: SystemTime) -> Time {
    let seconds = i64::try_from(epoch_seconds(t)).unwrap_or(0);
    Time(
        k8s_openapi::jiff::Timestamp::from_second(seconds)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

#[cfg(test)]
mod tests;
