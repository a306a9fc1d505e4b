//! Stop first, then start: how a set changes revision on this node with the shortest outage.
//!
//! The kubelet keys a static pod's UID on its content, so a changed manifest is a REMOVE of the
//! old pod and an ADD of the new one under the same full name. Its pod worker lets the new pod
//! start only once the old one has fully terminated, and re-checks a held pod on a 10 s back-off:
//! replacing the file in place costs the grace period plus about ten seconds of nothing (measured
//! on our cluster: `Killing` → 2 s grace → ~10 s → `SandboxChanged`/`Started`).
//!
//! So a revision change is done in two steps: remove the old manifest, wait until the kubelet has
//! deleted the old pod's mirror pod (it does so only after the pod has terminated), then write the
//! new manifest, which the kubelet starts at once. Bounded: past [`StopFirst::timeout`] the new
//! manifest is written anyway (a kubelet that cannot reach the API server never deletes the
//! mirror pod; it then starts the new pod after its back-off, as before). When there is no mirror
//! pod to watch (none yet, or the API server is unreachable), the file is replaced in place.
//!
//! Runs after [`crate::prepull`]: images are pulled while the old pod still serves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::dir_plan::{DirPlan, SetDecision, SetState};
use crate::manifest_dir::Action;
use staticpodset_api::SetKey;

/// A swap under way: the old manifest was removed for `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Swap {
    revision: String,
    since: Instant,
}

/// The swaps under way, between syncs.
#[derive(Debug)]
pub struct StopFirst {
    timeout: Duration,
    swaps: BTreeMap<SetKey, Swap>,
}

/// What [`StopFirst::gate`] did, for logs and metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Sets whose old manifest this sync removes before writing the new one.
    pub started: Vec<SetKey>,
    /// Sets whose new manifest this sync writes after a swap, with how long the old pod took to
    /// go and whether the wait timed out.
    pub finished: Vec<(SetKey, Duration, bool)>,
}

impl StopFirst {
    /// Waits at most `timeout` for an old pod to go.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            swaps: BTreeMap::new(),
        }
    }

    /// Edits `plan`: a write that changes the revision of a running pod (its mirror pod is there,
    /// by `mirror_present`) becomes a removal of the old manifest, and the new manifest is held
    /// ([`SetState::StoppingOldPod`]) until the mirror pod is gone or the timeout passed.
    pub fn gate(
        &mut self,
        plan: &mut DirPlan,
        mirror_present: impl Fn(&SetDecision) -> bool,
        now: Instant,
    ) -> Stopped {
        let mut out = Stopped::default();
        let mut held: Vec<String> = Vec::new();
        let mut removals: Vec<Action> = Vec::new();
        for decision in &mut plan.sets {
            if decision.state != SetState::Write {
                // The file is back as assigned: nothing to swap. Other states (waiting for a
                // newer revision's images, say) keep the swap until its write or its timeout.
                if matches!(&decision.state, SetState::Current { .. }) {
                    self.swaps.remove(&decision.set);
                }
                continue;
            }
            let present = mirror_present(decision);
            match (&decision.on_disk_revision, self.swaps.get(&decision.set)) {
                // The old manifest is still there and its pod runs: remove it first.
                (Some(on_disk), _) if *on_disk != decision.revision && present => {
                    let Some(expected) = write_expectation(&plan.actions, &decision.file_name)
                    else {
                        continue;
                    };
                    removals.push(Action::Remove {
                        file_name: decision.file_name.clone(),
                        expected,
                    });
                    held.push(decision.file_name.clone());
                    self.swaps.insert(
                        decision.set.clone(),
                        Swap {
                            revision: decision.revision.clone(),
                            since: now,
                        },
                    );
                    decision.state = SetState::StoppingOldPod(stopping_message(on_disk));
                    out.started.push(decision.set.clone());
                }
                // Removed by us: write once the old pod is gone, whatever revision is assigned
                // by now (a newer one supersedes the one the swap began for).
                (None, Some(swap)) => {
                    let waited = now.saturating_duration_since(swap.since);
                    let timed_out = waited >= self.timeout;
                    if present && !timed_out {
                        held.push(decision.file_name.clone());
                        let since = swap.since;
                        self.swaps.insert(
                            decision.set.clone(),
                            Swap {
                                revision: decision.revision.clone(),
                                since,
                            },
                        );
                        decision.state = SetState::StoppingOldPod(format!(
                            "waiting for the kubelet to stop the old pod before writing revision \
                             {} ({}s so far, at most {}s)",
                            decision.revision,
                            waited.as_secs(),
                            self.timeout.as_secs()
                        ));
                    } else {
                        self.swaps.remove(&decision.set);
                        out.finished.push((decision.set.clone(), waited, timed_out));
                    }
                }
                _ => {
                    self.swaps.remove(&decision.set);
                }
            }
        }
        plan.actions.retain(|a| {
            !(matches!(a, Action::Write { .. }) && held.iter().any(|f| f == a.file_name()))
        });
        plan.insert_removals(removals);
        // Forget sets no longer assigned, and swaps past their timeout (so no wake-up lies in
        // the past and the loop never spins).
        let assigned: Vec<&SetKey> = plan.sets.iter().map(|s| &s.set).collect();
        let timeout = self.timeout;
        self.swaps
            .retain(|set, s| assigned.contains(&set) && now < s.since + timeout);
        out
    }

    /// When the loop must look again even without an event: the earliest swap timeout.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.swaps.values().map(|s| s.since + self.timeout).min()
    }
}

fn write_expectation(actions: &[Action], file_name: &str) -> Option<Vec<u8>> {
    actions.iter().find_map(|a| match a {
        Action::Write {
            file_name: f,
            expected,
            ..
        } if f == file_name => expected.clone(),
        _ => None,
    })
}

fn stopping_message(old: &str) -> String {
    format!(
        "stopping the pod of revision {old} first: the kubelet starts the new pod only once the \
         old one is gone"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest_dir::PodKey;

    fn key(name: &str) -> SetKey {
        SetKey::new("ns", name)
    }

    fn file(set: &str) -> String {
        format!("staticpodset_ns_{set}.yaml")
    }

    /// A plan writing `set` at `revision` over a file at `on_disk` (if any).
    fn writing(set: &str, revision: &str, on_disk: Option<&str>) -> DirPlan {
        DirPlan {
            actions: vec![Action::Write {
                file_name: file(set),
                content: format!("rev {revision}").into_bytes(),
                expected: on_disk.map(|r| format!("rev {r}").into_bytes()),
            }],
            sets: vec![SetDecision {
                set: key(set),
                file_name: file(set),
                revision: revision.into(),
                pod: Some(PodKey {
                    namespace: "ns".into(),
                    name: set.into(),
                }),
                on_disk_revision: on_disk.map(str::to_string),
                state: SetState::Write,
                previous: None,
            }],
            removals: vec![],
            foreign_pods: vec![],
        }
    }

    #[test]
    fn a_running_pod_is_stopped_before_its_new_manifest_is_written() {
        let mut gate = StopFirst::new(Duration::from_secs(60));
        let t0 = Instant::now();

        // 1. Old manifest on disk, its mirror pod there: remove, do not write.
        let mut plan = writing("web", "r2", Some("r1"));
        let done = gate.gate(&mut plan, |_| true, t0);
        assert_eq!(done.started, [key("web")]);
        assert_eq!(
            plan.actions,
            [Action::Remove {
                file_name: file("web"),
                expected: b"rev r1".to_vec()
            }]
        );
        assert!(matches!(plan.sets[0].state, SetState::StoppingOldPod(_)));
        assert_eq!(gate.next_wakeup(), Some(t0 + Duration::from_secs(60)));

        // 2. File gone, mirror pod still there: hold.
        let mut plan = writing("web", "r2", None);
        gate.gate(&mut plan, |_| true, t0 + Duration::from_secs(3));
        assert!(plan.actions.is_empty());
        assert!(
            matches!(&plan.sets[0].state, SetState::StoppingOldPod(m) if m.contains("3s so far"))
        );

        // 3. Mirror pod gone: write.
        let mut plan = writing("web", "r2", None);
        let done = gate.gate(&mut plan, |_| false, t0 + Duration::from_secs(5));
        assert_eq!(plan.actions.len(), 1);
        assert!(matches!(plan.actions[0], Action::Write { .. }));
        assert_eq!(plan.sets[0].state, SetState::Write);
        assert_eq!(done.finished, [(key("web"), Duration::from_secs(5), false)]);
        assert_eq!(gate.next_wakeup(), None);
    }

    #[test]
    fn the_wait_is_bounded() {
        let mut gate = StopFirst::new(Duration::from_secs(30));
        let t0 = Instant::now();
        gate.gate(&mut writing("web", "r2", Some("r1")), |_| true, t0);
        let mut plan = writing("web", "r2", None);
        let done = gate.gate(&mut plan, |_| true, t0 + Duration::from_secs(30));
        assert_eq!(
            plan.actions.len(),
            1,
            "written although the mirror pod is still there"
        );
        assert!(done.finished[0].2, "reported as timed out");
    }

    #[test]
    fn without_a_mirror_pod_the_file_is_replaced_in_place() {
        let mut gate = StopFirst::new(Duration::from_secs(30));
        let mut plan = writing("web", "r2", Some("r1"));
        let before = plan.clone();
        let done = gate.gate(&mut plan, |_| false, Instant::now());
        assert_eq!(plan, before);
        assert_eq!(done, Stopped::default());
    }

    #[test]
    fn new_sets_and_restores_are_written_at_once() {
        let mut gate = StopFirst::new(Duration::from_secs(30));
        // No file, no swap of ours under way (a new set, or a deleted file being restored):
        // nothing to wait for, even if a mirror pod is still listed.
        let mut plan = writing("web", "r1", None);
        let before = plan.clone();
        gate.gate(&mut plan, |_| true, Instant::now());
        assert_eq!(plan, before);
    }

    #[test]
    fn a_newer_revision_during_the_wait_still_waits_for_the_old_pod() {
        let mut gate = StopFirst::new(Duration::from_secs(30));
        let t0 = Instant::now();
        gate.gate(&mut writing("web", "r2", Some("r1")), |_| true, t0);
        // r3 arrives while r1's pod is still stopping: it waits too, within the same timeout.
        let mut plan = writing("web", "r3", None);
        gate.gate(&mut plan, |_| true, t0 + Duration::from_secs(1));
        assert!(plan.actions.is_empty());
        assert_eq!(gate.next_wakeup(), Some(t0 + Duration::from_secs(30)));
        let mut plan = writing("web", "r3", None);
        gate.gate(&mut plan, |_| false, t0 + Duration::from_secs(2));
        assert_eq!(plan.actions.len(), 1);
    }

    #[test]
    fn a_swap_that_cannot_finish_expires_without_spinning() {
        let mut gate = StopFirst::new(Duration::from_secs(30));
        let t0 = Instant::now();
        gate.gate(&mut writing("web", "r2", Some("r1")), |_| true, t0);
        // The manifest became unavailable meanwhile: nothing to write, and after the timeout
        // no wake-up remains.
        let mut plan = writing("web", "r2", None);
        plan.sets[0].state = SetState::Unavailable("not read yet".into());
        plan.actions.clear();
        gate.gate(&mut plan, |_| true, t0 + Duration::from_secs(31));
        assert_eq!(gate.next_wakeup(), None);
    }

    #[test]
    fn removals_of_other_sets_stay_first() {
        let mut gate = StopFirst::new(Duration::from_secs(30));
        let mut plan = writing("web", "r2", Some("r1"));
        plan.actions.insert(
            0,
            Action::Remove {
                file_name: file("gone"),
                expected: b"x".to_vec(),
            },
        );
        plan.actions.push(Action::Write {
            file_name: file("other"),
            content: b"y".to_vec(),
            expected: None,
        });
        gate.gate(&mut plan, |s| s.set == key("web"), Instant::now());
        let kinds: Vec<(&str, bool)> = plan
            .actions
            .iter()
            .map(|a| (a.file_name(), matches!(a, Action::Remove { .. })))
            .collect();
        assert_eq!(
            kinds,
            [
                (file("gone").as_str(), true),
                (file("web").as_str(), true),
                (file("other").as_str(), false)
            ]
        );
    }
}
