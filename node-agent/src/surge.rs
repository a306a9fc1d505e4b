//! Surge: how a set that updates with `maxSurge` changes revision on this node without an
//! outage. Pure.
//!
//! The kubelet runs one pod of a name, so the new revision is written under the set's other
//! name ([`crate::dir_plan::choose_slot`]) and runs beside the old pod. This gate removes the old
//! manifest once the new pod is available: its mirror pod runs the assigned revision and has
//! been Ready for the set's minReadySeconds. Until then the old pod keeps serving, whatever
//! happens to the new one: a new pod that never becomes Ready fails its progress deadline, and a
//! rollback hands the node the revision the old pod runs, which keeps its name while the failed
//! one goes. Without the pod list (the API server unreachable) nothing is known to be available,
//! so both pods keep running.

use std::time::SystemTime;

use crate::dir_plan::{DirPlan, SetState};
use crate::manifest_dir::{Action, PodKey};
use staticpodset_api::SetKey;

/// What [`retire`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Sets whose old manifest this sync removes.
    pub removed: Vec<SetKey>,
    /// When a new pod will have been Ready long enough, if one is waiting for that.
    pub next: Option<SystemTime>,
}

/// Edits `plan`: removes each kept previous manifest whose set's new pod is available.
/// `ready_since` says since when the mirror pod of set `set`'s static pod `pod` has been Ready
/// at `revision`, or `None` if it is not.
pub fn retire(
    plan: &mut DirPlan,
    ready_since: impl Fn(&SetKey, &PodKey, &str) -> Option<SystemTime>,
    now: SystemTime,
) -> Retired {
    let mut out = Retired::default();
    let mut removals = Vec::new();
    for decision in &mut plan.sets {
        if !matches!(decision.state, SetState::Current { .. }) {
            continue;
        }
        let (Some(previous), Some(pod)) = (&decision.previous, &decision.pod) else {
            continue;
        };
        let Some(since) = ready_since(&decision.set, pod, &decision.revision) else {
            continue;
        };
        let due = since + previous.min_ready;
        if due <= now {
            removals.push(Action::Remove {
                file_name: previous.file_name.clone(),
                expected: previous.content.clone(),
            });
            out.removed.push(decision.set.clone());
            decision.previous = None;
        } else {
            out.next = Some(out.next.map_or(due, |n| n.min(due)));
        }
    }
    plan.insert_removals(removals);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir_plan::{PreviousPod, SetDecision};
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn surging(state: SetState, min_ready: u64) -> DirPlan {
        DirPlan {
            sets: vec![SetDecision {
                set: SetKey::new("ns", "vip"),
                file_name: "staticpodset_ns_vip_surge.yaml".into(),
                revision: "r2".into(),
                pod: Some(PodKey {
                    namespace: "ns".into(),
                    name: "vip-surge".into(),
                }),
                on_disk_revision: Some("r2".into()),
                state,
                previous: Some(PreviousPod {
                    file_name: "staticpodset_ns_vip.yaml".into(),
                    content: b"old".to_vec(),
                    revision: Some("r1".into()),
                    pod: Some(PodKey {
                        namespace: "ns".into(),
                        name: "vip".into(),
                    }),
                    min_ready: Duration::from_secs(min_ready),
                }),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_old_pod_goes_once_the_new_one_has_been_ready_for_min_ready_seconds() {
        let current = SetState::Current { since: None };
        let mut plan = surging(current.clone(), 10);
        let ready = |_: &SetKey, pod: &PodKey, rev: &str| {
            (pod.name == "vip-surge" && rev == "r2").then(|| at(100))
        };
        let r = retire(&mut plan, ready, at(105));
        assert_eq!(r.removed, Vec::<SetKey>::new());
        assert_eq!(r.next, Some(at(110)));
        assert!(plan.actions.is_empty());

        let r = retire(&mut plan, ready, at(110));
        assert_eq!(r.removed, vec![SetKey::new("ns", "vip")]);
        assert_eq!(
            plan.actions,
            vec![Action::Remove {
                file_name: "staticpodset_ns_vip.yaml".into(),
                expected: b"old".to_vec(),
            }]
        );
        assert_eq!(plan.sets[0].previous, None);
    }

    #[test]
    fn the_old_pod_stays_while_the_new_one_is_not_ready_written_or_seen() {
        for state in [SetState::Current { since: None }, SetState::Write] {
            let mut plan = surging(state, 0);
            let r = retire(&mut plan, |_, _, _| None, at(1000));
            assert!(r.removed.is_empty() && plan.actions.is_empty());
        }
        // Written just now: not known to run yet, whatever a stale pod list says.
        let mut plan = surging(SetState::Write, 0);
        retire(&mut plan, |_, _, _| Some(at(1)), at(1000));
        assert!(plan.actions.is_empty());
    }
}
