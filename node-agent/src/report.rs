//! Builds the NodeStaticPods status from what one sync decided and did, and decides whether it is
//! worth an API write. Pure: at 5,000 nodes every avoided status write counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use staticpodset_api::{
    ManifestPhase, ManifestSource, NodeStaticPodsStatus, NodeSummary, PodReport,
};

use crate::dir_plan::{DirPlan, SetState};
use crate::manifest_dir::{DirError, PodKey};
use crate::mirror_pods::{mirror_pod_key, mirror_report};
use staticpodset_api::SetKey;

/// How long the kubelet gets to publish the mirror pod of a freshly written manifest before the
/// report calls it a problem. The kubelet re-lists every 20s and usually reacts to inotify at once.
pub const MIRROR_GRACE: Duration = Duration::from_secs(60);

/// What happened to one assigned set in one sync.
#[derive(Debug, Clone, PartialEq)]
pub struct SetOutcome {
    /// The set.
    pub set: SetKey,
    /// Where its manifest stands.
    pub phase: ManifestPhase,
    /// The revision now in the directory for this set, if any.
    pub written_revision: Option<String>,
    /// When that revision was written (the file's mtime, or now).
    pub written_at: Option<SystemTime>,
    /// The static pod the manifest defines.
    pub pod: Option<PodKey>,
    /// Why it is not simply written.
    pub message: Option<String>,
    /// Where the kubelet gets the pod from: the file, or the URL the agent serves; `None` while
    /// neither holds it.
    pub source: Option<ManifestSource>,
    /// During a surge update, the static pod of the revision that keeps serving beside the new
    /// one.
    pub previous_pod: Option<PodKey>,
}

/// How many of the sets `assigned` (set → the revision the node is assigned) have no report of a
/// mirror pod running that revision.
pub fn not_current(reports: &[PodReport], assigned: &BTreeMap<SetKey, String>) -> usize {
    assigned
        .iter()
        .filter(|(set, revision)| {
            !reports.iter().any(|r| {
                r.set_namespace == set.namespace
                    && r.set_name == set.name
                    && r.mirror_pod
                        .as_ref()
                        .is_some_and(|m| m.revision.as_deref() == Some(revision.as_str()))
            })
        })
        .count()
}

/// Joins the plan with the results of its actions (`results[i]` belongs to `plan.actions[i]`).
/// Returns one outcome per assigned set, and a report for each owned file that could not be removed.
pub fn outcomes(
    plan: &DirPlan,
    results: &[Result<(), DirError>],
    now: SystemTime,
) -> (Vec<SetOutcome>, Vec<PodReport>) {
    let result_for = |file_name: &str| {
        plan.actions
            .iter()
            .zip(results)
            .find(|(action, _)| action.file_name() == file_name)
            .map(|(_, result)| result)
    };
    let sets = plan
        .sets
        .iter()
        .map(|p| {
            let on_disk = p.on_disk_revision.clone();
            let (phase, written_revision, written_at, message) = match &p.state {
                SetState::Current { since } => (
                    ManifestPhase::Written,
                    Some(p.revision.clone()),
                    *since,
                    None,
                ),
                SetState::Write => match result_for(&p.file_name) {
                    Some(Ok(())) => (
                        ManifestPhase::Written,
                        Some(p.revision.clone()),
                        Some(now),
                        None,
                    ),
                    Some(Err(e @ DirError::Changed { .. })) => {
                        (ManifestPhase::Pending, on_disk, None, Some(e.to_string()))
                    }
                    Some(Err(e)) => (ManifestPhase::Error, on_disk, None, Some(e.to_string())),
                    None => (ManifestPhase::Pending, on_disk, None, None),
                },
                SetState::Conflict(m) => (ManifestPhase::Conflict, on_disk, None, Some(m.clone())),
                SetState::Invalid(m) | SetState::Refused(m) => {
                    (ManifestPhase::Error, on_disk, None, Some(m.clone()))
                }
                SetState::Unavailable(m)
                | SetState::WaitingForImages(m)
                | SetState::StoppingOldPod(m) => {
                    (ManifestPhase::Pending, on_disk, None, Some(m.clone()))
                }
            };
            let previous_pod = p.previous.as_ref().and_then(|prev| prev.pod.clone());
            SetOutcome {
                set: p.set.clone(),
                phase,
                source: written_revision.as_ref().map(|_| ManifestSource::File),
                written_revision,
                written_at,
                pod: p.pod.clone(),
                message,
                previous_pod,
            }
        })
        .collect();
    let removals = plan
        .removals
        .iter()
        .filter_map(|r| match result_for(&r.file_name) {
            Some(Err(e)) => Some(PodReport {
                set_namespace: r.set.namespace.clone(),
                set_name: r.set.name.clone(),
                phase: ManifestPhase::Removing,
                message: Some(e.to_string()),
                ..PodReport::default()
            }),
            _ => None,
        })
        .collect();
    (sets, removals)
}

/// Outcomes for every assigned set when the directory could not even be read.
pub fn unreadable_dir(plan_sets: &[SetKey], error: &DirError) -> Vec<SetOutcome> {
    plan_sets
        .iter()
        .map(|set| SetOutcome {
            set: set.clone(),
            phase: ManifestPhase::Error,
            written_revision: None,
            written_at: None,
            pod: None,
            message: Some(error.to_string()),
            source: None,
            previous_pod: None,
        })
        .collect()
}

/// The status to publish, and when it would change by itself (a mirror pod's grace running out).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The full status, `last_sync_time` = now.
    pub status: NodeStaticPodsStatus,
    /// When to look again even if nothing else happens.
    pub recheck_at: Option<SystemTime>,
}

/// Builds the status from the sets' outcomes and their mirror pods.
/// `find_pod` looks a pod up by namespace/name among the pods bound to this node.
pub fn build(
    node: &str,
    generation: Option<i64>,
    sets: &[SetOutcome],
    removals: &[PodReport],
    find_pod: impl Fn(&PodKey) -> Option<Arc<Pod>>,
    now: SystemTime,
) -> Report {
    let mut summary = NodeSummary::default();
    let mut recheck_at: Option<SystemTime> = None;
    let mut pods = Vec::with_capacity(sets.len() + removals.len());
    for outcome in sets {
        let static_pod = outcome.pod.clone().unwrap_or_else(|| PodKey {
            namespace: outcome.set.namespace.clone(),
            name: outcome.set.name.clone(),
        });
        let mirror_key = mirror_pod_key(&static_pod, node);
        let holder = find_pod(&mirror_key);
        let mirror = holder.as_ref().and_then(|p| {
            mirror_report(
                p,
                &outcome.set.to_string(),
                outcome.written_revision.as_deref(),
            )
        });
        let mut message = outcome.message.clone();
        let mut problem = matches!(
            outcome.phase,
            ManifestPhase::Conflict | ManifestPhase::Error | ManifestPhase::Removing
        );
        let up_to_date = mirror.as_ref().is_some_and(|m| m.up_to_date);
        // A note on a written manifest (a pre-pull that did not finish) is moot once the kubelet
        // runs the revision and it is Ready (the image was pulled after all).
        if outcome.phase == ManifestPhase::Written
            && mirror.as_ref().is_some_and(|m| m.up_to_date && m.ready)
        {
            message = None;
        }
        if outcome.phase == ManifestPhase::Written && !up_to_date {
            let deadline = outcome.written_at.map(|t| t + MIRROR_GRACE);
            if let Some(d) = deadline.filter(|d| *d > now) {
                recheck_at = Some(recheck_at.map_or(d, |r| r.min(d)));
            } else {
                let revision = outcome.written_revision.as_deref().unwrap_or("?");
                message = Some(match &mirror {
                    None if holder.is_some() => {
                        problem = true;
                        format!(
                            "pod {mirror_key} exists but is not the mirror pod of this set, so                              the kubelet cannot publish the static pod under that name; delete                              that pod or rename the set"
                        )
                    }
                    None => {
                        problem = true;
                        format!(
                            "the kubelet has not created mirror pod {mirror_key} within {}s of \
                             writing revision {revision} (check the kubelet log: a manifest the \
                             kubelet cannot parse or NodeRestriction admission rejects runs no \
                             mirror pod)",
                            MIRROR_GRACE.as_secs()
                        )
                    }
                    Some(m) => format!(
                        "mirror pod {mirror_key} still shows revision {}, not revision {revision} \
                         written over {}s ago (check the kubelet log)",
                        m.revision.as_deref().unwrap_or("<none>"),
                        MIRROR_GRACE.as_secs()
                    ),
                });
            }
        }
        summary.assigned += 1;
        if mirror.as_ref().is_some_and(|m| m.up_to_date && m.ready) {
            summary.ready += 1;
        }
        if problem {
            summary.problems += 1;
        }
        let previous_mirror_pod = outcome.previous_pod.as_ref().and_then(|prev| {
            let pod = find_pod(&mirror_pod_key(prev, node))?;
            mirror_report(&pod, &outcome.set.to_string(), None)
        });
        pods.push(PodReport {
            set_namespace: outcome.set.namespace.clone(),
            set_name: outcome.set.name.clone(),
            phase: outcome.phase,
            written_revision: outcome.written_revision.clone(),
            mirror_pod: mirror,
            previous_mirror_pod,
            message,
            source: outcome.source,
            // Filled in by the loop, which keeps fallback's memory.
            fallback: None,
        });
    }
    summary.problems += i32::try_from(removals.len()).unwrap_or(i32::MAX);
    pods.extend(removals.iter().cloned());
    Report {
        status: NodeStaticPodsStatus {
            observed_generation: generation,
            last_sync_time: Some(to_time(now)),
            summary,
            pods,
            manifest_source: None,
        },
        recheck_at,
    }
}

/// A status the agent patched, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct LastPatch {
    /// What was sent.
    pub status: NodeStaticPodsStatus,
    /// When.
    pub at: SystemTime,
}

/// Whether `desired` is worth a status write: only when its content (everything but
/// `lastSyncTime`) differs from the API's copy. There is no heartbeat: an unchanged report is never
/// written again, so a quiet fleet makes no status writes at all. Node liveness is the kubelet's
/// (its node Lease, seen as the Node's `Ready`), and the one decision that needed agent liveness, a
/// deleted set waiting for nodes, is bounded by the deletion's own age instead.
///
/// `observed` is the status in the agent's watch cache, `last` what the agent itself wrote last.
/// The cache may not show that write yet, so for `settle` after it the write counts as the API's
/// copy; after that the cache is the truth again, and a copy that still differs (the object was
/// recreated, someone else wrote the status) is written again.
pub fn should_patch(
    observed: Option<&NodeStaticPodsStatus>,
    last: Option<&LastPatch>,
    desired: &NodeStaticPodsStatus,
    now: SystemTime,
    settle: Duration,
) -> bool {
    let timeless = |s: &NodeStaticPodsStatus| NodeStaticPodsStatus {
        last_sync_time: None,
        ..s.clone()
    };
    let desired_content = timeless(desired);
    if observed.is_some_and(|s| timeless(s) == desired_content) {
        return false;
    }
    let just_written = last.is_some_and(|l| {
        timeless(&l.status) == desired_content
            && now.duration_since(l.at).unwrap_or_default() < settle
    });
    !just_written
}

/// A Kubernetes timestamp, whole seconds as the API server stores them.
pub fn to_time(t: SystemTime) -> Time {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Time(Timestamp::from_second(i64::try_from(secs).unwrap_or(0)).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir_plan::{Removal, SetDecision};
    use crate::manifest_dir::Action;
    use serde_json::json;
    use std::collections::HashMap;
    use std::path::PathBuf;

    const NODE: &str = "node-1";

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn set(name: &str) -> SetKey {
        SetKey::new("kube-system", name)
    }

    fn pod_key(name: &str) -> PodKey {
        PodKey {
            namespace: "kube-system".into(),
            name: name.into(),
        }
    }

    fn decision(name: &str, state: SetState) -> SetDecision {
        SetDecision {
            set: set(name),
            file_name: format!("staticpodset_kube-system_{name}.yaml"),
            revision: "r2".into(),
            pod: Some(pod_key(name)),
            on_disk_revision: Some("r1".into()),
            state,
            previous: None,
        }
    }

    fn written(name: &str, at: u64) -> SetOutcome {
        SetOutcome {
            set: set(name),
            phase: ManifestPhase::Written,
            written_revision: Some("r2".into()),
            written_at: Some(t(at)),
            pod: Some(pod_key(name)),
            message: None,
            source: Some(ManifestSource::File),
            previous_pod: None,
        }
    }

    fn mirror(name: &str, revision: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("{name}-{NODE}"), "namespace": "kube-system", "uid": "u",
                    "annotations": {"kubernetes.io/config.mirror": "h", "staticpods.dev/revision": revision,
                                    "staticpods.dev/set": format!("kube-system/{name}")},
                },
                "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
            }))
            .expect("pod"),
        )
    }

    fn pods(list: Vec<Arc<Pod>>) -> impl Fn(&PodKey) -> Option<Arc<Pod>> {
        let map: HashMap<PodKey, Arc<Pod>> = list
            .into_iter()
            .map(|p| {
                let key = PodKey {
                    namespace: p.metadata.namespace.clone().unwrap_or_default(),
                    name: p.metadata.name.clone().unwrap_or_default(),
                };
                (key, p)
            })
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn outcomes_follow_plan_and_results() {
        let plan = DirPlan {
            actions: vec![
                Action::Remove {
                    file_name: "staticpodset_kube-system_old.yaml".into(),
                    expected: vec![],
                },
                Action::Write {
                    file_name: "staticpodset_kube-system_ok.yaml".into(),
                    content: vec![],
                    expected: None,
                },
                Action::Write {
                    file_name: "staticpodset_kube-system_fail.yaml".into(),
                    content: vec![],
                    expected: None,
                },
                Action::Write {
                    file_name: "staticpodset_kube-system_raced.yaml".into(),
                    content: vec![],
                    expected: None,
                },
            ],
            sets: vec![
                decision("ok", SetState::Write),
                decision("fail", SetState::Write),
                decision("raced", SetState::Write),
                decision("same", SetState::Current { since: Some(t(5)) }),
                decision("conflict", SetState::Conflict("taken".into())),
                decision("invalid", SetState::Invalid("bad".into())),
                decision("unavailable", SetState::Unavailable("not read yet".into())),
                decision("pulling", SetState::WaitingForImages("pre-pulling".into())),
            ],
            removals: vec![Removal {
                set: set("old"),
                file_name: "staticpodset_kube-system_old.yaml".into(),
            }],
            foreign_pods: vec![],
        };
        let io_error = || DirError::Io {
            op: "remove",
            path: PathBuf::from("/m/x"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let results = vec![
            Err(io_error()),
            Ok(()),
            Err(io_error()),
            Err(DirError::Changed {
                path: PathBuf::from("/m/raced"),
            }),
        ];
        let (sets, removals) = outcomes(&plan, &results, t(100));
        let phases: Vec<_> = sets.iter().map(|s| s.phase).collect();
        assert_eq!(
            phases,
            vec![
                ManifestPhase::Written,
                ManifestPhase::Error,
                ManifestPhase::Pending,
                ManifestPhase::Written,
                ManifestPhase::Conflict,
                ManifestPhase::Error,
                ManifestPhase::Pending,
                ManifestPhase::Pending,
            ]
        );
        // Waiting for images, like unavailable: what is on disk stays, and the report says why.
        assert_eq!(sets[7].written_revision.as_deref(), Some("r1"));
        assert_eq!(sets[7].message.as_deref(), Some("pre-pulling"));
        // Unavailable: what is on disk stays, and the report says so.
        assert_eq!(sets[6].written_revision.as_deref(), Some("r1"));
        assert_eq!(sets[6].message.as_deref(), Some("not read yet"));
        assert_eq!(sets[0].written_revision.as_deref(), Some("r2"));
        assert_eq!(sets[0].written_at, Some(t(100)));
        assert_eq!(sets[1].written_revision.as_deref(), Some("r1"));
        assert!(sets[1]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("/m/x")));
        assert_eq!(sets[3].written_at, Some(t(5)));
        assert_eq!(sets[4].message.as_deref(), Some("taken"));
        assert_eq!(removals.len(), 1);
        assert_eq!(removals[0].phase, ManifestPhase::Removing);
        assert_eq!(removals[0].set_name, "old");
    }

    #[test]
    fn a_ready_up_to_date_mirror_counts_as_ready() {
        let r = build(
            NODE,
            Some(3),
            &[written("vip", 0)],
            &[],
            pods(vec![mirror("vip", "r2", true)]),
            t(10),
        );
        assert_eq!(r.status.observed_generation, Some(3));
        assert_eq!(
            r.status.summary,
            NodeSummary {
                assigned: 1,
                ready: 1,
                problems: 0
            }
        );
        let m = r.status.pods[0].mirror_pod.as_ref().expect("mirror");
        assert!(m.up_to_date && m.ready);
        assert_eq!(r.status.pods[0].message, None);
        assert_eq!(r.recheck_at, None);
    }

    #[test]
    fn a_pre_pull_note_stays_until_the_new_pod_is_ready() {
        let mut noted = written("vip", 0);
        noted.message = Some("pre-pull did not get reg/vip:2 within 120s".into());
        let pulling = build(
            NODE,
            None,
            std::slice::from_ref(&noted),
            &[],
            pods(vec![mirror("vip", "r2", false)]),
            t(10),
        );
        assert_eq!(pulling.status.pods[0].message, noted.message);
        assert_eq!(pulling.status.summary.problems, 0);
        let ready = build(
            NODE,
            None,
            &[noted],
            &[],
            pods(vec![mirror("vip", "r2", true)]),
            t(10),
        );
        assert_eq!(ready.status.pods[0].message, None);
    }

    #[test]
    fn a_missing_mirror_is_fine_within_grace_then_a_problem() {
        let early = build(
            NODE,
            None,
            &[written("vip", 100)],
            &[],
            pods(vec![]),
            t(130),
        );
        assert_eq!(early.status.pods[0].message, None);
        assert_eq!(early.status.summary.problems, 0);
        assert_eq!(early.recheck_at, Some(t(160)));

        let late = build(
            NODE,
            None,
            &[written("vip", 100)],
            &[],
            pods(vec![]),
            t(160),
        );
        let message = late.status.pods[0].message.clone().expect("message");
        assert!(message.contains("kube-system/vip-node-1"), "{message}");
        assert!(message.contains("kubelet log"), "{message}");
        assert_eq!(late.status.summary.problems, 1);
        assert_eq!(late.recheck_at, None);
        // The message does not tick with time, or every sync would write the status.
        let later = build(
            NODE,
            None,
            &[written("vip", 100)],
            &[],
            pods(vec![]),
            t(999),
        );
        assert_eq!(later.status.pods, late.status.pods);
    }

    #[test]
    fn a_pod_squatting_the_mirror_name_is_named() {
        let mut squatter = (*mirror("vip", "r2", true)).clone();
        squatter.metadata.annotations = None;
        let r = build(
            NODE,
            None,
            &[written("vip", 0)],
            &[],
            pods(vec![Arc::new(squatter)]),
            t(100),
        );
        assert_eq!(r.status.pods[0].mirror_pod, None);
        assert!(r.status.pods[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("is not the mirror pod")));
        assert_eq!(r.status.summary.problems, 1);
    }

    #[test]
    fn an_outdated_mirror_is_reported_but_not_counted_as_a_problem() {
        let r = build(
            NODE,
            None,
            &[written("vip", 0)],
            &[],
            pods(vec![mirror("vip", "r1", true)]),
            t(100),
        );
        assert!(r.status.pods[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("still shows revision r1")));
        assert_eq!(r.status.summary.ready, 0);
        assert_eq!(r.status.summary.problems, 0);
    }

    #[test]
    fn conflicts_errors_and_failed_removals_are_problems() {
        let mut conflict = written("a", 0);
        conflict.phase = ManifestPhase::Conflict;
        conflict.message = Some("taken".into());
        let mut error = written("b", 0);
        error.phase = ManifestPhase::Error;
        let removal = PodReport {
            set_namespace: "kube-system".into(),
            set_name: "old".into(),
            phase: ManifestPhase::Removing,
            ..PodReport::default()
        };
        let r = build(
            NODE,
            None,
            &[conflict, error],
            &[removal],
            pods(vec![]),
            t(0),
        );
        assert_eq!(r.status.summary.assigned, 2);
        assert_eq!(r.status.summary.problems, 3);
        assert_eq!(r.status.pods.len(), 3);
        assert_eq!(r.status.pods[0].message.as_deref(), Some("taken"));
    }

    #[test]
    fn status_writes_only_on_change() {
        let settle = Duration::from_secs(30);
        let status = |ready: i32, at: u64| NodeStaticPodsStatus {
            last_sync_time: Some(to_time(t(at))),
            summary: NodeSummary {
                ready,
                ..NodeSummary::default()
            },
            ..NodeStaticPodsStatus::default()
        };
        // Never written: write.
        assert!(should_patch(None, None, &status(0, 100), t(100), settle));
        // Same content, whatever the age of the API's copy: never written again.
        for age in [10, 3_600, 86_400] {
            assert!(!should_patch(
                Some(&status(0, 100)),
                None,
                &status(0, 100 + age),
                t(100 + age),
                settle
            ));
        }
        // Changed content: write at once.
        assert!(should_patch(
            Some(&status(0, 90)),
            None,
            &status(1, 100),
            t(100),
            settle
        ));
        // Our own write is not in the cache yet: do not repeat it...
        let last = LastPatch {
            status: status(1, 95),
            at: t(95),
        };
        assert!(!should_patch(
            Some(&status(0, 60)),
            Some(&last),
            &status(1, 100),
            t(100),
            settle
        ));
        // ...unless the API's copy still differs once the cache had time to show it (the object
        // was recreated with an empty status, or someone else wrote it).
        assert!(should_patch(
            Some(&status(0, 60)),
            Some(&last),
            &status(1, 125),
            t(125),
            settle
        ));
        assert!(should_patch(
            None,
            Some(&last),
            &status(1, 125),
            t(125),
            settle
        ));
        // The cache shows the write: quiet from then on.
        assert!(!should_patch(
            Some(&status(1, 95)),
            Some(&last),
            &status(1, 4_000),
            t(4_000),
            settle
        ));
    }

    #[test]
    fn sets_not_at_their_assigned_revision_are_counted() {
        let report = |set: &str, running: Option<&str>| PodReport {
            set_namespace: "ns".into(),
            set_name: set.into(),
            mirror_pod: running.map(|r| staticpodset_api::MirrorPodReport {
                revision: Some(r.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let assigned: BTreeMap<SetKey, String> = [("a", "r2"), ("b", "r1"), ("c", "r1")]
            .iter()
            .map(|(s, r)| (SetKey::new("ns", *s), r.to_string()))
            .collect();
        // a runs its old revision, b its assigned one, c has no mirror pod.
        let reports = [
            report("a", Some("r1")),
            report("b", Some("r1")),
            report("c", None),
        ];
        assert_eq!(not_current(&reports, &assigned), 2);
        assert_eq!(not_current(&reports, &BTreeMap::new()), 0);
    }
}
