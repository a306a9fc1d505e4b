//! Image pre-pull, the pure part: which images a write needs, and whether a write that changes a
//! set's revision may happen yet. The pulls themselves are I/O at the edge ([`crate::cri`]).
//!
//! The kubelet stops a static pod before it starts the pod of a changed manifest, so every image
//! it has to pull for the new pod lengthens the node's outage. The agent therefore holds back a
//! write that changes a set's revision (or creates its manifest) until the node's container runtime
//! has every image of the new pod, or until the pre-pull timeout has passed since the agent first
//! held it — a registry that is down must not stop a rollout for good. Meanwhile the old pod keeps
//! running and the report says what the set waits for (phase Pending). A write after the timeout
//! carries a note in the report until the kubelet runs the new revision — except for a revision the
//! rollout has already declared failed on this node (the entry's `lastFailure`): the running pod
//! is kept, since writing it would take a serving pod down for one that cannot start.
//!
//! Each set waits on its own: a slow pull of one set never holds back another set's write. A
//! rewrite at the revision already on disk (an edited or deleted file being restored) is never held.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use staticpodset_api::ManifestPhase;

use crate::dir_plan::{Assignment, DirPlan, SetState};
use crate::manifest_dir::Action;
use crate::report::SetOutcome;
use staticpodset_api::SetKey;

/// When the kubelet pulls a container's image (`imagePullPolicy` and its defaulting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PullPolicy {
    /// `Never`: the image must already be on the node; nothing to pre-pull.
    Never,
    /// `IfNotPresent`: pulled only when the runtime does not have it.
    IfNotPresent,
    /// `Always`: the kubelet resolves the tag on every start; pre-pulling fetches the layers, so
    /// the kubelet's own pull finds them local.
    Always,
}

/// An image the new pod needs, with the strongest pull policy any of its containers gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedImage {
    /// The image reference as the pod spec writes it.
    pub image: String,
    /// How the kubelet will treat it.
    pub policy: PullPolicy,
}

/// The images of a manifest's `initContainers` and `containers`, each once (init containers
/// first, then in spec order). `Never` images are included (they need no pull).
pub fn images_of(manifest: &Value) -> Vec<WantedImage> {
    let mut out: Vec<WantedImage> = Vec::new();
    for field in ["initContainers", "containers"] {
        let containers = manifest
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array);
        for container in containers.into_iter().flatten() {
            let Some(image) = container
                .get("image")
                .and_then(Value::as_str)
                .filter(|i| !i.is_empty())
            else {
                continue;
            };
            let policy = match container.get("imagePullPolicy").and_then(Value::as_str) {
                Some("Always") => PullPolicy::Always,
                Some("Never") => PullPolicy::Never,
                Some("IfNotPresent") => PullPolicy::IfNotPresent,
                _ => default_policy(image),
            };
            match out.iter_mut().find(|w| w.image == image) {
                Some(seen) => seen.policy = seen.policy.max(policy),
                None => out.push(WantedImage {
                    image: image.to_owned(),
                    policy,
                }),
            }
        }
    }
    out
}

/// The API server's default: `Always` for an image without tag or with tag `latest` (and no
/// digest), `IfNotPresent` otherwise.
pub fn default_policy(image: &str) -> PullPolicy {
    if image.contains('@') {
        return PullPolicy::IfNotPresent;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => PullPolicy::IfNotPresent,
        _ => PullPolicy::Always,
    }
}

/// A pull for the edge to run: ask the runtime whether it has `image` (unless `always`), and
/// pull it if not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullJob {
    /// The image reference.
    pub image: String,
    /// Pull even if the runtime has the image (policy `Always`).
    pub always: bool,
}

/// A write released in this sync after the set waited for its images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The set.
    pub set: SetKey,
    /// The revision now written.
    pub revision: String,
    /// How long the write waited.
    pub waited: Duration,
    /// `None` when every image was there; otherwise why the write goes ahead without them.
    pub deadline_passed: Option<String>,
}

/// What [`PrePull::gate`] decided beyond the plan it edited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gate {
    /// Pulls to start now (none is already in flight).
    pub pulls: Vec<PullJob>,
    /// Sets whose write this sync held for the first time, with their revision.
    pub held: Vec<(SetKey, String)>,
    /// Writes that waited (were held in an earlier sync) and go ahead in this sync.
    pub released: Vec<Released>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ImageState {
    /// The runtime has it (as of the last check, made for the current wait).
    Present,
    /// A check or pull is in flight.
    Pulling,
    /// The last check or pull failed; try again at `retry_at`.
    Failed { message: String, retry_at: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Wait {
    revision: String,
    since: Instant,
    /// Set once the write of `revision` went ahead: `Some(note)` if it went ahead without its
    /// images. Kept while the set stays at this revision, so a restored file is not held again
    /// and the note stays in the report.
    done: Option<Option<String>>,
    /// Past the timeout but held anyway: the revision failed on this node, so the running pod
    /// is kept until its images are here (or the set is handed another revision).
    kept: bool,
}

/// The pre-pull state of one node: which writes wait since when, and what the runtime has.
#[derive(Debug)]
pub struct PrePull {
    timeout: Duration,
    retry: Duration,
    waits: BTreeMap<SetKey, Wait>,
    images: BTreeMap<String, ImageState>,
}

impl PrePull {
    /// Holds writes for at most `timeout`; a failed pull is retried after `retry`.
    pub fn new(timeout: Duration, retry: Duration) -> Self {
        Self {
            timeout,
            retry,
            waits: BTreeMap::new(),
            images: BTreeMap::new(),
        }
    }

    /// Edits `plan` (made from `assigned`): every write that changes its set's revision waits,
    /// as [`SetState::WaitingForImages`] with its action removed, until the images of the
    /// revision's pod are on the node or the timeout has passed. Returns the pulls to start.
    pub fn gate(&mut self, plan: &mut DirPlan, assigned: &[Assignment], now: Instant) -> Gate {
        let mut gate = Gate::default();
        let mut held_images: BTreeSet<String> = BTreeSet::new();
        let mut waiting: BTreeSet<SetKey> = BTreeSet::new();
        let mut held_files: Vec<String> = Vec::new();
        for decision in &mut plan.sets {
            if decision.state != SetState::Write
                || decision.on_disk_revision.as_deref() == Some(decision.revision.as_str())
            {
                continue;
            }
            let Some((entry, manifest)) = assigned
                .iter()
                .find(|a| SetKey::of(&a.entry) == decision.set)
                .and_then(|a| Some((&a.entry, a.manifest.as_ref().ok()?)))
            else {
                continue;
            };
            // The rollout already declared this revision failed on this node (its progress
            // deadline passed): writing it at the timeout would only take the serving pod down
            // for a pod that cannot start.
            let failed_here = decision.on_disk_revision.is_some()
                && entry
                    .last_failure
                    .as_ref()
                    .is_some_and(|f| f.revision == decision.revision);
            let is_new = self
                .waits
                .get(&decision.set)
                .is_none_or(|w| w.revision != decision.revision);
            if is_new {
                self.waits.insert(
                    decision.set.clone(),
                    Wait {
                        revision: decision.revision.clone(),
                        since: now,
                        done: None,
                        kept: false,
                    },
                );
            }
            let Some(wait) = self.waits.get_mut(&decision.set) else {
                continue;
            };
            if wait.done.is_some() {
                continue;
            }
            let missing: Vec<WantedImage> = images_of(manifest)
                .into_iter()
                .filter(|w| w.policy != PullPolicy::Never)
                .filter(|w| self.images.get(&w.image) != Some(&ImageState::Present))
                .collect();
            let waited = now.saturating_duration_since(wait.since);
            let timed_out = waited >= self.timeout;
            wait.kept = timed_out && failed_here;
            if missing.is_empty() || (timed_out && !failed_here) {
                let note = (!missing.is_empty())
                    .then(|| timeout_note(&self.images, self.timeout, &missing));
                wait.done = Some(note.clone());
                // A write that never had to wait is no news.
                if !is_new {
                    gate.released.push(Released {
                        set: decision.set.clone(),
                        revision: decision.revision.clone(),
                        waited,
                        deadline_passed: note,
                    });
                }
                continue;
            }
            for w in &missing {
                held_images.insert(w.image.clone());
                let due = match self.images.get(&w.image) {
                    None => true,
                    Some(ImageState::Failed { retry_at, .. }) => *retry_at <= now,
                    Some(_) => false,
                };
                if due {
                    self.images.insert(w.image.clone(), ImageState::Pulling);
                    gate.pulls.push(PullJob {
                        image: w.image.clone(),
                        always: w.policy == PullPolicy::Always,
                    });
                }
            }
            decision.state = SetState::WaitingForImages(if wait.kept {
                kept_message(&self.images, &missing, &decision.revision)
            } else {
                waiting_message(
                    &self.images,
                    self.timeout,
                    &missing,
                    &decision.revision,
                    decision.on_disk_revision.is_some(),
                )
            });
            if is_new {
                gate.held
                    .push((decision.set.clone(), decision.revision.clone()));
            }
            waiting.insert(decision.set.clone());
            held_files.push(decision.file_name.clone());
        }
        plan.actions.retain(|a| {
            !(matches!(a, Action::Write { .. }) && held_files.iter().any(|f| f == a.file_name()))
        });
        // Forget what no longer matters: sets no longer assigned, waits that ended without a
        // write (the set went back to the revision on disk), and what was learnt about images
        // nothing waits for (it would be stale by the next wait). In-flight pulls stay recorded,
        // so they are not started twice.
        let assigned_sets: BTreeSet<&SetKey> = plan.sets.iter().map(|s| &s.set).collect();
        self.waits.retain(|set, w| {
            assigned_sets.contains(set) && (w.done.is_some() || waiting.contains(set))
        });
        self.images
            .retain(|image, state| held_images.contains(image) || *state == ImageState::Pulling);
        gate
    }

    /// Takes the result of a pull job: `Ok` when the runtime has the image now.
    pub fn record(&mut self, image: &str, result: Result<(), String>, now: Instant) {
        let state = match result {
            Ok(()) => ImageState::Present,
            Err(message) => ImageState::Failed {
                message,
                retry_at: now + self.retry,
            },
        };
        self.images.insert(image.to_owned(), state);
    }

    /// When a held write will be released by its timeout, or a failed pull is due again.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let deadlines = self
            .waits
            .values()
            .filter(|w| w.done.is_none() && !w.kept)
            .map(|w| w.since + self.timeout);
        let retries = self.images.values().filter_map(|s| match s {
            ImageState::Failed { retry_at, .. } => Some(*retry_at),
            _ => None,
        });
        deadlines.chain(retries).min()
    }

    /// Adds the timeout note to each written set whose write went ahead without its images, until
    /// the set leaves that revision (the report drops it once the mirror pod runs the revision Ready).
    pub fn annotate(&self, outcomes: &mut [SetOutcome]) {
        for outcome in outcomes {
            let Some(wait) = self.waits.get(&outcome.set) else {
                continue;
            };
            if let (ManifestPhase::Written, None, Some(Some(note))) =
                (outcome.phase, &outcome.message, &wait.done)
            {
                if outcome.written_revision.as_deref() == Some(wait.revision.as_str()) {
                    outcome.message = Some(note.clone());
                }
            }
        }
    }

    /// Sets waiting for images right now.
    pub fn waiting(&self) -> usize {
        self.waits.values().filter(|w| w.done.is_none()).count()
    }
}

fn waiting_message(
    images: &BTreeMap<String, ImageState>,
    timeout: Duration,
    missing: &[WantedImage],
    revision: &str,
    replaces: bool,
) -> String {
    let images: Vec<String> = missing
        .iter()
        .map(|w| match images.get(&w.image) {
            Some(ImageState::Failed { message, .. }) => {
                format!("{} (last attempt failed: {message}; retrying)", w.image)
            }
            _ => w.image.clone(),
        })
        .collect();
    let keeps = if replaces {
        "; the running pod keeps running meanwhile"
    } else {
        ""
    };
    format!(
        "pre-pulling {} before writing revision {revision}{keeps}; the manifest is written \
             anyway {}s after the pull started",
        images.join(", "),
        timeout.as_secs()
    )
}

fn kept_message(
    images: &BTreeMap<String, ImageState>,
    missing: &[WantedImage],
    revision: &str,
) -> String {
    format!(
        "revision {revision} failed on this node and its images are not here: {}; the running pod \
         is kept, and the pulls are retried",
        missing_images(images, missing)
    )
}

fn timeout_note(
    images: &BTreeMap<String, ImageState>,
    timeout: Duration,
    missing: &[WantedImage],
) -> String {
    format!(
        "pre-pull did not get {} within {}s; the manifest was written anyway and the kubelet \
             pulls the image itself",
        missing_images(images, missing),
        timeout.as_secs()
    )
}

/// The missing images with what became of their pulls: `image (error)` or `image (still pulling)`.
fn missing_images(images: &BTreeMap<String, ImageState>, missing: &[WantedImage]) -> String {
    let described: Vec<String> = missing
        .iter()
        .map(|w| match images.get(&w.image) {
            Some(ImageState::Failed { message, .. }) => format!("{} ({message})", w.image),
            _ => format!("{} (still pulling)", w.image),
        })
        .collect();
    described.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dir_plan::{plan_dir, render_manifest};
    use crate::manifest_dir::{parse_manifest, DirScan, ScannedFile};
    use serde_json::json;
    use std::time::{SystemTime, UNIX_EPOCH};

    const TIMEOUT: Duration = Duration::from_secs(120);
    const RETRY: Duration = Duration::from_secs(5);

    use crate::revisions::tests::{entry, manifest_with as manifest};

    fn web(set: &str, rev: &str, image: &str) -> Assignment {
        Assignment::available(
            entry(set, rev),
            manifest(set, rev, json!([{"name": "c", "image": image}])),
        )
    }

    fn on_disk(a: &Assignment) -> ScannedFile {
        let content = render_manifest(
            &a.entry,
            a.manifest.as_ref().expect("manifest"),
            staticpodset_api::keys::Slot::Primary,
        )
        .expect("valid")
        .content;
        ScannedFile {
            name: a.entry.file_name.clone(),
            regular: true,
            modified: Some(UNIX_EPOCH),
            info: parse_manifest(&content),
            content: Some(content),
        }
    }

    fn planned(assigned: &[Assignment], files: Vec<ScannedFile>) -> DirPlan {
        plan_dir(Some(assigned), &DirScan { files })
    }

    fn writes(p: &DirPlan) -> Vec<&str> {
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::Write { .. }))
            .map(Action::file_name)
            .collect()
    }

    fn images(list: &[&str]) -> Vec<PullJob> {
        list.iter()
            .map(|i| PullJob {
                image: (*i).to_owned(),
                always: false,
            })
            .collect()
    }

    #[test]
    fn images_of_containers_and_init_containers_once_each_with_the_strongest_policy() {
        let m = json!({"spec": {
            "initContainers": [{"name": "i", "image": "reg/init:1"}],
            "containers": [
                {"name": "a", "image": "reg/app:1", "imagePullPolicy": "Never"},
                {"name": "b", "image": "reg/app:1", "imagePullPolicy": "IfNotPresent"},
                {"name": "c", "image": "reg/init:1"},
                {"name": "d", "image": "busybox"},
                {"name": "e", "image": "reg/tool:latest", "imagePullPolicy": "Never"},
                {"name": "f"},
            ],
        }});
        assert_eq!(
            images_of(&m),
            vec![
                WantedImage {
                    image: "reg/init:1".into(),
                    policy: PullPolicy::IfNotPresent
                },
                WantedImage {
                    image: "reg/app:1".into(),
                    policy: PullPolicy::IfNotPresent
                },
                WantedImage {
                    image: "busybox".into(),
                    policy: PullPolicy::Always
                },
                WantedImage {
                    image: "reg/tool:latest".into(),
                    policy: PullPolicy::Never
                },
            ]
        );
        assert!(images_of(&json!({"spec": {}})).is_empty());
    }

    #[test]
    fn default_pull_policy_follows_the_api_server() {
        assert_eq!(default_policy("busybox"), PullPolicy::Always);
        assert_eq!(default_policy("busybox:latest"), PullPolicy::Always);
        assert_eq!(default_policy("reg:5000/busybox"), PullPolicy::Always);
        assert_eq!(
            default_policy("reg:5000/busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            default_policy("reg/busybox@sha256:0123"),
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn a_revision_change_waits_for_its_images_then_writes() {
        let old = web("a", "r1", "reg/app:1");
        let new = web("a", "r2", "reg/app:2");
        let assigned = [new.clone()];
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let t0 = Instant::now();

        let mut p = planned(&assigned, vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, &assigned, t0);
        assert!(writes(&p).is_empty(), "held back");
        assert_eq!(gate.pulls, images(&["reg/app:2"]));
        assert_eq!(gate.held, vec![(SetKey::of(&new.entry), "r2".to_owned())]);
        let SetState::WaitingForImages(message) = &p.sets[0].state else {
            panic!("{:?}", p.sets[0].state)
        };
        assert!(message.contains("reg/app:2"), "{message}");
        assert!(message.contains("keeps running"), "{message}");
        assert_eq!(pp.waiting(), 1);
        assert_eq!(pp.next_wakeup(), Some(t0 + TIMEOUT));

        // The next sync, pull still in flight: still held, no second pull.
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, &assigned, t0 + Duration::from_secs(1));
        assert!(writes(&p).is_empty());
        assert!(gate.pulls.is_empty());
        assert!(gate.held.is_empty());

        pp.record("reg/app:2", Ok(()), t0 + Duration::from_secs(2));
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, &assigned, t0 + Duration::from_secs(3));
        assert_eq!(writes(&p), vec![new.entry.file_name.as_str()]);
        assert_eq!(p.sets[0].state, SetState::Write);
        assert_eq!(
            gate.released,
            vec![Released {
                set: SetKey::of(&new.entry),
                revision: "r2".into(),
                waited: Duration::from_secs(3),
                deadline_passed: None,
            }]
        );
        assert_eq!(pp.waiting(), 0);
        assert_eq!(pp.next_wakeup(), None);
    }

    #[test]
    fn a_new_manifest_waits_too() {
        let new = web("a", "r1", "reg/app:1");
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let mut p = planned(std::slice::from_ref(&new), vec![]);
        let gate = pp.gate(&mut p, std::slice::from_ref(&new), Instant::now());
        assert!(writes(&p).is_empty());
        assert_eq!(gate.pulls, images(&["reg/app:1"]));
        let SetState::WaitingForImages(message) = &p.sets[0].state else {
            panic!("{:?}", p.sets[0].state)
        };
        assert!(!message.contains("keeps running"), "{message}");
    }

    #[test]
    fn restoring_the_revision_on_disk_and_current_files_are_never_held() {
        let a = web("a", "r1", "reg/app:1");
        let mut edited = on_disk(&a);
        edited
            .content
            .as_mut()
            .expect("content")
            .extend_from_slice(b"# edited\n");
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let mut p = planned(std::slice::from_ref(&a), vec![edited]);
        assert_eq!(writes(&p).len(), 1, "drift is rewritten");
        let gate = pp.gate(&mut p, std::slice::from_ref(&a), Instant::now());
        assert_eq!(writes(&p).len(), 1, "and not held");
        assert_eq!(gate, Gate::default());

        let mut p = planned(std::slice::from_ref(&a), vec![on_disk(&a)]);
        assert_eq!(
            pp.gate(&mut p, std::slice::from_ref(&a), Instant::now()),
            Gate::default()
        );
    }

    #[test]
    fn one_sets_pull_does_not_hold_another_sets_write() {
        let slow = web("slow", "r2", "reg/big:2");
        let fast = web("fast", "r2", "reg/small:2");
        let never = Assignment::available(
            entry("never", "r2"),
            manifest(
                "never",
                "r2",
                json!([{"name": "c", "image": "local:1", "imagePullPolicy": "Never"}]),
            ),
        );
        let assigned = [slow.clone(), fast.clone(), never.clone()];
        let olds = vec![
            on_disk(&web("slow", "r1", "reg/big:1")),
            on_disk(&web("fast", "r1", "reg/small:1")),
            on_disk(&web("never", "r1", "local:0")),
        ];
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let t0 = Instant::now();
        let mut p = planned(&assigned, olds.clone());
        let gate = pp.gate(&mut p, &assigned, t0);
        // An image the kubelet never pulls is nothing to wait for, and no news.
        assert_eq!(writes(&p), vec![never.entry.file_name.as_str()]);
        assert!(gate.released.is_empty());
        assert_eq!(gate.held.len(), 2);
        assert_eq!(gate.pulls, images(&["reg/big:2", "reg/small:2"]));

        pp.record("reg/small:2", Ok(()), t0);
        let mut p = planned(&assigned, olds);
        pp.gate(&mut p, &assigned, t0 + Duration::from_millis(10));
        assert_eq!(
            writes(&p),
            vec![
                fast.entry.file_name.as_str(),
                never.entry.file_name.as_str()
            ]
        );
        assert!(matches!(p.sets[0].state, SetState::WaitingForImages(_)));
    }

    #[test]
    fn a_revision_failed_on_this_node_never_replaces_the_running_pod() {
        let old = web("a", "r1", "reg/app:1");
        let mut new = web("a", "r2", "reg/app:2");
        new.entry.last_failure = Some(staticpodset_api::RevisionFailure {
            revision: "r2".into(),
            reason: "ProgressDeadlineExceeded".into(),
            message: "not Ready in time".into(),
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
            ),
        });
        let assigned = [new.clone()];
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let t0 = Instant::now();
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        pp.gate(&mut p, &assigned, t0);
        pp.record("reg/app:2", Err("not found".into()), t0);
        // Past the timeout: still held, the old pod runs, and no busy wake-up for the timeout.
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, &assigned, t0 + TIMEOUT + RETRY);
        assert!(writes(&p).is_empty(), "the failed revision was written");
        assert!(gate.released.is_empty());
        let SetState::WaitingForImages(message) = &p.sets[0].state else {
            panic!("{:?}", p.sets[0].state)
        };
        assert!(
            message.contains("failed on this node") && message.contains("kept"),
            "{message}"
        );
        assert_eq!(
            gate.pulls,
            images(&["reg/app:2"]),
            "pulls are still retried"
        );
        pp.record("reg/app:2", Err("not found".into()), t0 + TIMEOUT + RETRY);
        assert_eq!(pp.next_wakeup(), Some(t0 + TIMEOUT + RETRY + RETRY));
        // The images arrive after all: written.
        pp.record("reg/app:2", Ok(()), t0 + TIMEOUT + RETRY + RETRY);
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        pp.gate(&mut p, &assigned, t0 + TIMEOUT + RETRY + RETRY);
        assert_eq!(writes(&p).len(), 1);
        // A new set (nothing running) with a failed revision is written at the timeout as before.
        let mut fresh = PrePull::new(TIMEOUT, RETRY);
        let mut p = planned(&assigned, vec![]);
        fresh.gate(&mut p, &assigned, t0);
        let mut p = planned(&assigned, vec![]);
        fresh.gate(&mut p, &assigned, t0 + TIMEOUT);
        assert_eq!(writes(&p).len(), 1);
    }

    #[test]
    fn a_failed_pull_is_retried_and_the_timeout_writes_anyway_with_a_note() {
        let old = web("a", "r1", "reg/app:1");
        let new = web("a", "r2", "reg/app:2");
        let assigned = [new.clone()];
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let t0 = Instant::now();
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        pp.gate(&mut p, &assigned, t0);
        pp.record("reg/app:2", Err("not found".into()), t0);
        assert_eq!(pp.next_wakeup(), Some(t0 + RETRY));

        // Before the retry is due: held, no pull, the message names the failure.
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, &assigned, t0 + Duration::from_secs(1));
        assert!(gate.pulls.is_empty());
        let SetState::WaitingForImages(message) = &p.sets[0].state else {
            panic!("{:?}", p.sets[0].state)
        };
        assert!(message.contains("not found"), "{message}");
        // Due: pulled again.
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, &assigned, t0 + RETRY);
        assert_eq!(gate.pulls, images(&["reg/app:2"]));
        pp.record("reg/app:2", Err("not found".into()), t0 + RETRY);

        // The timeout: written anyway.
        let mut p = planned(&assigned, vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, &assigned, t0 + TIMEOUT);
        assert_eq!(writes(&p).len(), 1);
        let note = gate.released[0].deadline_passed.clone().expect("a note");
        assert!(note.contains("reg/app:2 (not found)"), "{note}");
        assert!(note.contains("within 120s"), "{note}");

        // The report carries the note while the set is at that revision...
        let mut outcomes = vec![SetOutcome {
            set: SetKey::of(&new.entry),
            phase: ManifestPhase::Written,
            written_revision: Some("r2".into()),
            written_at: Some(SystemTime::now()),
            pod: None,
            message: None,
            source: None,
            previous_pod: None,
        }];
        pp.annotate(&mut outcomes);
        assert_eq!(outcomes[0].message.as_deref(), Some(note.as_str()));
        // ...and a restored file at that revision is not held again.
        let mut p = planned(&assigned, vec![]);
        let gate = pp.gate(&mut p, &assigned, t0 + TIMEOUT + Duration::from_secs(1));
        assert_eq!(writes(&p).len(), 1);
        assert!(gate.pulls.is_empty() && gate.released.is_empty());

        // A newer revision starts a new wait, and the note goes.
        let newer = web("a", "r3", "reg/app:3");
        let mut p = planned(std::slice::from_ref(&newer), vec![on_disk(&new)]);
        let gate = pp.gate(&mut p, std::slice::from_ref(&newer), t0 + TIMEOUT * 2);
        assert_eq!(gate.pulls, images(&["reg/app:3"]));
        pp.annotate(&mut outcomes);
        outcomes[0].message = None;
        pp.annotate(&mut outcomes);
        assert_eq!(outcomes[0].message, None);
    }

    #[test]
    fn always_images_are_pulled_even_if_present_and_state_is_forgotten_between_waits() {
        let old = web("a", "r1", "reg/app:1");
        let new = web("a", "r2", "reg/app:latest");
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let t0 = Instant::now();
        let mut p = planned(std::slice::from_ref(&new), vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, std::slice::from_ref(&new), t0);
        assert_eq!(
            gate.pulls,
            vec![PullJob {
                image: "reg/app:latest".into(),
                always: true
            }]
        );
        pp.record("reg/app:latest", Ok(()), t0);
        let mut p = planned(std::slice::from_ref(&new), vec![on_disk(&old)]);
        pp.gate(&mut p, std::slice::from_ref(&new), t0);
        assert_eq!(writes(&p).len(), 1);

        // Rolling back to r1 later checks r1's image again: the kubelet may have removed it.
        let mut p = planned(std::slice::from_ref(&old), vec![on_disk(&new)]);
        let gate = pp.gate(&mut p, std::slice::from_ref(&old), t0);
        assert_eq!(gate.pulls, images(&["reg/app:1"]));
    }

    #[test]
    fn a_wait_ends_when_the_set_goes_back_or_leaves() {
        let old = web("a", "r1", "reg/app:1");
        let new = web("a", "r2", "reg/app:2");
        let mut pp = PrePull::new(TIMEOUT, RETRY);
        let t0 = Instant::now();
        let mut p = planned(std::slice::from_ref(&new), vec![on_disk(&old)]);
        pp.gate(&mut p, std::slice::from_ref(&new), t0);
        assert_eq!(pp.waiting(), 1);
        // Back to the revision on disk: nothing waits; the in-flight pull stays recorded.
        let mut p = planned(std::slice::from_ref(&old), vec![on_disk(&old)]);
        pp.gate(&mut p, std::slice::from_ref(&old), t0);
        assert_eq!(pp.waiting(), 0);
        assert_eq!(pp.next_wakeup(), None);
        // r2 again later: a fresh wait with a fresh clock, no duplicate pull while in flight.
        let later = t0 + Duration::from_secs(60);
        let mut p = planned(std::slice::from_ref(&new), vec![on_disk(&old)]);
        let gate = pp.gate(&mut p, std::slice::from_ref(&new), later);
        assert!(gate.pulls.is_empty());
        assert_eq!(pp.next_wakeup(), Some(later + TIMEOUT));
        // The set leaves the node.
        let mut p = planned(&[], vec![on_disk(&old)]);
        pp.gate(&mut p, &[], later);
        assert_eq!(pp.waiting(), 0);
    }
}
