//! The pure heart of the agent: what the directory must look like, given what the API assigns and
//! what the scan found. No I/O here, so every ownership and conflict rule is a plain unit test.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use staticpodset_api::keys::{
    manifest_file_name, slot_file_name, slot_pod_name, Slot, ANNOTATION_REVISION, ANNOTATION_SET,
};
use staticpodset_api::{AssignedPod, ManifestPhase, SetKey};

use crate::manifest_dir::{is_owned_file_name, Action, DirScan, PodKey, ScannedFile};
use crate::manifest_yaml::to_yaml;

/// One spec entry with the manifest of the StaticPodRevision it names, as far as the agent has it
/// (see [`crate::revisions`]). The agent's own type: the operator's `Assignment` (the revision a
/// node was handed, and since when) is another thing in another crate.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The entry from `NodeStaticPods.spec.pods`.
    pub entry: AssignedPod,
    /// The revision's manifest, or why the agent does not have it.
    pub manifest: Result<Arc<Value>, Unavailable>,
}

impl Assignment {
    /// An entry whose manifest is at hand.
    pub fn available(entry: AssignedPod, manifest: Value) -> Self {
        Self {
            entry,
            manifest: Ok(Arc::new(manifest)),
        }
    }
}

/// Why an assignment has no manifest to hand to the kubelet this sync. Either way nothing is
/// written, served or removed for its set: the node keeps what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Not there yet: the revision is not read (or not readable) yet, or a gate holds it until
    /// something is in place. Reported as phase Pending, with the text.
    Waiting(String),
    /// The agent read the revision and refuses it: it is not what the entry asks for (another
    /// content digest, say), so not the pod the operator rendered. Reported as phase Error,
    /// with the text.
    Refused(String),
}

impl Unavailable {
    /// The text for the set's report.
    pub fn message(&self) -> &str {
        match self {
            Unavailable::Waiting(m) | Unavailable::Refused(m) => m,
        }
    }

    /// The phase the set's report shows meanwhile.
    pub fn phase(&self) -> ManifestPhase {
        match self {
            Unavailable::Waiting(_) => ManifestPhase::Pending,
            Unavailable::Refused(_) => ManifestPhase::Error,
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl From<String> for Unavailable {
    fn from(message: String) -> Self {
        Unavailable::Waiting(message)
    }
}

impl From<&str> for Unavailable {
    fn from(message: &str) -> Self {
        Unavailable::Waiting(message.to_string())
    }
}

/// Where one assigned set stands after planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetState {
    /// The file already holds exactly the assigned content; `since` is its modification time.
    Current {
        /// When the file was last written.
        since: Option<SystemTime>,
    },
    /// The plan writes the file (its action is in [`DirPlan::actions`]).
    Write,
    /// Another file stands in the way; nothing is written. The text says which and why.
    Conflict(String),
    /// The assignment itself cannot be written (bad file name, malformed manifest).
    Invalid(String),
    /// The agent does not have the manifest of the assigned revision (not readable yet, or held
    /// by a gate): nothing is written or removed for the set. The text says why.
    Unavailable(String),
    /// The agent read the assigned revision and refused it ([`Unavailable::Refused`]): nothing
    /// is written or removed for the set. The text names the revision and what is wrong.
    Refused(String),
    /// The write would change the set's revision, and waits until the node's container runtime
    /// has the new pod's images (see [`crate::prepull`]); nothing is written yet. The text says
    /// which images.
    WaitingForImages(String),
    /// The write changes the revision of a running pod: the old manifest is removed first and
    /// the new one written once the kubelet has stopped the old pod (see
    /// [`crate::stop_first`]). The text says how far along.
    StoppingOldPod(String),
}

/// The decision for one assigned set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecision {
    /// The set.
    pub set: SetKey,
    /// The file name from the spec (validated unless `state` is `Invalid`).
    pub file_name: String,
    /// The assigned revision.
    pub revision: String,
    /// The static pod the manifest defines, when the manifest is valid.
    pub pod: Option<PodKey>,
    /// The revision of the owned file found on disk, if any.
    pub on_disk_revision: Option<String>,
    /// What happens to it.
    pub state: SetState,
    /// During a surge update, the set's manifest under its other pod name, which keeps running
    /// until the new pod is available (see [`crate::surge`]).
    pub previous: Option<PreviousPod>,
}

/// The manifest a surge update keeps beside the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousPod {
    /// Its file.
    pub file_name: String,
    /// Its exact content, so that its removal never clobbers a change.
    pub content: Vec<u8>,
    /// The revision it carries.
    pub revision: Option<String>,
    /// The static pod it defines.
    pub pod: Option<PodKey>,
    /// How long the new pod must have been Ready before this one goes (the set's
    /// minReadySeconds).
    pub min_ready: std::time::Duration,
}

/// An owned manifest whose set is no longer assigned; its `Remove` action is in [`DirPlan::actions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The set the file belonged to.
    pub set: SetKey,
    /// The file.
    pub file_name: String,
}

/// Everything one sync does to the directory, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirPlan {
    /// Removals first, then writes: a pod that moves between files never runs twice.
    pub actions: Vec<Action>,
    /// One entry per assigned set, in spec order (duplicates reported as invalid).
    pub sets: Vec<SetDecision>,
    /// Owned files being removed.
    pub removals: Vec<Removal>,
    /// The pods defined by files the agent does not own, with their file names (for the URL
    /// source's conflict check: the kubelet keys static pods by namespace/name across sources).
    pub foreign_pods: Vec<(String, PodKey)>,
}

impl DirPlan {
    /// Adds removals a gate decided ahead of the writes, keeping the plan's order: removals
    /// first, so that a pod that moves between files never runs twice.
    pub fn insert_removals(&mut self, removals: Vec<Action>) {
        let writes = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Write { .. }))
            .unwrap_or(self.actions.len());
        self.actions.splice(writes..writes, removals);
    }
}

/// The set that owns `file`, if any: its name must be in our format and its content must carry the
/// set annotation naming the same set. Anything else is foreign and never modified or deleted.
pub fn owner(file: &ScannedFile) -> Option<SetKey> {
    if !file.regular || !is_owned_file_name(&file.name) {
        return None;
    }
    let (namespace, name) = staticpodset_api::keys::parse_manifest_file_name(&file.name)?;
    let key = SetKey::new(namespace, name);
    (file.info.set.as_deref() == Some(key.to_string().as_str())).then_some(key)
}

/// Decides the actions that bring the directory to the assigned state.
///
/// `assigned` is `None` while the agent has no complete view of its NodeStaticPods (initial list not
/// done, or the object does not exist): then nothing is planned, so running static pods keep running
/// whatever happens to the API server. An assigned set whose manifest is unavailable keeps whatever
/// file it has: it is listed, so never removed, and without a manifest nothing is written.
pub fn plan_dir(assigned: Option<&[Assignment]>, scan: &DirScan) -> DirPlan {
    let Some(assigned) = assigned else {
        return DirPlan::default();
    };
    let mut out = DirPlan::default();

    let listed: BTreeSet<SetKey> = assigned.iter().map(|a| SetKey::of(&a.entry)).collect();
    let by_name: HashMap<&str, &ScannedFile> =
        scan.files.iter().map(|f| (f.name.as_str(), f)).collect();

    for file in &scan.files {
        let Some(set) = owner(file) else { continue };
        if listed.contains(&set) {
            continue;
        }
        // An owned file always has content: ownership is read from it.
        let Some(content) = &file.content else {
            continue;
        };
        out.actions.push(Action::Remove {
            file_name: file.name.clone(),
            expected: content.clone(),
        });
        out.removals.push(Removal {
            set,
            file_name: file.name.clone(),
        });
    }

    let mut seen = BTreeSet::new();
    let mut writes = Vec::new();
    // A set whose second name is another assigned set's first name updates in place: the kubelet
    // would run only one pod of that name.
    let names: BTreeSet<(&str, &str)> = assigned
        .iter()
        .map(|a| (a.entry.set_namespace.as_str(), a.entry.set_name.as_str()))
        .collect();
    for assignment in assigned {
        let pod = &assignment.entry;
        let set = SetKey::of(pod);
        let owned_in = |slot: Slot| {
            by_name
                .get(slot_file_name(&pod.set_namespace, &pod.set_name, slot).as_str())
                .copied()
                .filter(|f| owner(f).as_ref() == Some(&set))
        };
        let second = slot_pod_name(&pod.set_name, Slot::Surge);
        let surge = pod
            .surge_min_ready_seconds
            .filter(|_| !names.contains(&(pod.set_namespace.as_str(), second.as_str())))
            .map(|s| std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0)));
        let slot = choose_slot(
            &pod.revision,
            surge.is_some(),
            owned_in(Slot::Primary),
            owned_in(Slot::Surge),
        );
        let other = owned_in(slot.other());
        let file_name = if slot == Slot::Primary {
            pod.file_name.clone()
        } else {
            slot_file_name(&pod.set_namespace, &pod.set_name, slot)
        };
        let mut decision = SetDecision {
            set: set.clone(),
            file_name: file_name.clone(),
            revision: pod.revision.clone(),
            pod: None,
            on_disk_revision: None,
            state: SetState::Write,
            previous: None,
        };
        if !seen.insert(set.clone()) {
            decision.state = SetState::Invalid(format!(
                "set {set} is assigned more than once; only the first entry is written"
            ));
            out.sets.push(decision);
            continue;
        }
        let existing = by_name.get(file_name.as_str()).copied();
        if let Some(file) = existing.filter(|f| owner(f).as_ref() == Some(&set)) {
            decision.on_disk_revision = file.info.revision.clone();
        }
        let manifest = match &assignment.manifest {
            Ok(manifest) => manifest,
            Err(why) => {
                decision.state = match why {
                    Unavailable::Waiting(m) => SetState::Unavailable(m.clone()),
                    Unavailable::Refused(m) => SetState::Refused(m.clone()),
                };
                out.sets.push(decision);
                continue;
            }
        };
        let rendered = match render_manifest(pod, manifest, slot) {
            Ok(r) => r,
            Err(message) => {
                decision.state = SetState::Invalid(message);
                out.sets.push(decision);
                continue;
            }
        };
        decision.pod = Some(rendered.pod.clone());
        decision.state = decide(&set, &file_name, &rendered, existing, scan);
        let proceeds = matches!(decision.state, SetState::Write | SetState::Current { .. });
        if let Some(other) = other.filter(|_| proceeds) {
            // An owned file always has content: ownership is read from it.
            let content = other.content.clone().unwrap_or_default();
            match surge {
                Some(min_ready) => {
                    decision.previous = Some(PreviousPod {
                        file_name: other.name.clone(),
                        content,
                        revision: other.info.revision.clone(),
                        pod: other.info.pod.clone(),
                        min_ready,
                    })
                }
                // Without surge the set runs one pod: the other name goes at once.
                None => out.actions.push(Action::Remove {
                    file_name: other.name.clone(),
                    expected: content,
                }),
            }
        }
        if decision.state == SetState::Write {
            writes.push(Action::Write {
                file_name,
                content: rendered.content,
                expected: existing.and_then(|f| f.content.clone()),
            });
        }
        out.sets.push(decision);
    }
    out.actions.extend(writes);
    out.foreign_pods = scan
        .files
        .iter()
        .filter(|f| owner(f).is_none())
        .filter_map(|f| Some((f.name.clone(), f.info.pod.clone()?)))
        .collect();
    out
}

/// Which of its two names a set's manifest goes under this sync. The name that already holds the
/// assigned revision keeps it (a surge whose new pod runs, or a rollback to the pod that still
/// serves); otherwise a surge update writes the name the running pod does not use, and an
/// in-place update rewrites the name in use. With both names in use and neither at the assigned
/// revision, a surge overwrites the newer file: the older one is the pod that serves.
pub fn choose_slot(
    revision: &str,
    surge: bool,
    primary: Option<&ScannedFile>,
    surge_file: Option<&ScannedFile>,
) -> Slot {
    let holds =
        |f: Option<&ScannedFile>| f.is_some_and(|f| f.info.revision.as_deref() == Some(revision));
    if holds(primary) {
        return Slot::Primary;
    }
    if holds(surge_file) {
        return Slot::Surge;
    }
    match (primary, surge_file) {
        (Some(_), None) if surge => Slot::Surge,
        (None, Some(_)) if !surge => Slot::Surge,
        (Some(p), Some(s)) if surge && s.modified < p.modified => Slot::Primary,
        (Some(_), Some(_)) if surge => Slot::Surge,
        _ => Slot::Primary,
    }
}

fn decide(
    set: &SetKey,
    file_name: &str,
    rendered: &Rendered,
    existing: Option<&ScannedFile>,
    scan: &DirScan,
) -> SetState {
    if let Some(file) = existing {
        if owner(file).as_ref() != Some(set) {
            return SetState::Conflict(format!(
                "{file_name} already exists and is not managed by StaticPodSet (it lacks the \
                 annotation {ANNOTATION_SET}: {set}); the agent does not overwrite it. Move it \
                 away to let the agent write the manifest"
            ));
        }
    }
    let shadowing = scan
        .files
        .iter()
        .filter(|f| f.name != file_name && owner(f).is_none())
        .find(|f| f.info.pod.as_ref() == Some(&rendered.pod));
    if let Some(file) = shadowing {
        return SetState::Conflict(format!(
            "{} in the manifest directory already defines pod {} and is not managed by \
             StaticPodSet; the kubelet keys static pods by namespace/name, so only one of them \
             could run. Rename the set's pod or remove the other manifest",
            file.name, rendered.pod
        ));
    }
    match existing {
        Some(file) if file.content.as_deref() == Some(rendered.content.as_slice()) => {
            SetState::Current {
                since: file.modified,
            }
        }
        _ => SetState::Write,
    }
}

/// A validated assignment rendered to the exact bytes of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The pod the manifest defines.
    pub pod: PodKey,
    /// The file content.
    pub content: Vec<u8>,
}

/// Validates an assignment and renders `manifest`, the manifest of the revision it names, as YAML.
///
/// The annotations are checked rather than added: they are how the agent recognises its own files
/// and how the mirror pod proves its revision, so a manifest without them would be disowned by the
/// agent's next scan or never report up to date. In the surge slot the pod gets the set's second
/// name, `<name>-surge`: the only change the agent makes to a verified manifest.
pub fn render_manifest(
    pod: &AssignedPod,
    manifest: &Value,
    slot: Slot,
) -> Result<Rendered, String> {
    let set = SetKey::of(pod);
    if !is_dns_name(&pod.set_namespace) || !is_dns_name(&pod.set_name) {
        return Err(format!(
            "set {set} does not have a valid namespace and name; nothing is written"
        ));
    }
    let expected_file = manifest_file_name(&pod.set_namespace, &pod.set_name);
    if pod.file_name != expected_file || !is_owned_file_name(&pod.file_name) {
        return Err(format!(
            "file name {:?} is not {expected_file:?}; the agent only writes files named after \
             their set, inside the manifest directory",
            pod.file_name
        ));
    }
    let document = manifest;
    let manifest = manifest
        .as_object()
        .ok_or("the manifest is not a JSON object")?;
    if let Some(kind) = manifest.get("kind") {
        if kind != "Pod" {
            return Err(format!("the manifest's kind is {kind}, not Pod"));
        }
    }
    let metadata = manifest.get("metadata").and_then(Value::as_object);
    let text = |key: &str| {
        metadata
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = text("name").ok_or("the manifest has no metadata.name")?;
    let namespace = text("namespace").unwrap_or("default");
    let annotation = |key: &str| {
        metadata
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
    };
    if annotation(ANNOTATION_SET) != Some(set.to_string().as_str()) {
        return Err(format!(
            "the manifest lacks the annotation {ANNOTATION_SET}: {set}, without which the agent \
             would not recognise the file as its own"
        ));
    }
    if annotation(ANNOTATION_REVISION) != Some(pod.revision.as_str()) {
        return Err(format!(
            "the manifest's annotation {ANNOTATION_REVISION} is not the assigned revision {}",
            pod.revision
        ));
    }
    let name = slot_pod_name(name, slot);
    let renamed;
    let document = if slot == Slot::Primary {
        document
    } else {
        let mut copy = document.clone();
        copy["metadata"]["name"] = Value::String(name.clone());
        renamed = copy;
        &renamed
    };
    let yaml = to_yaml(document);
    let content = format!(
        "# Managed by StaticPodSet {set} through the staticpodset node agent.\n\
         # Local edits are reverted; change the StaticPodSet instead.\n{yaml}"
    );
    Ok(Rendered {
        pod: PodKey {
            namespace: namespace.to_owned(),
            name,
        },
        content: content.into_bytes(),
    })
}

/// An RFC 1123 subdomain, the shape of namespace and StaticPodSet names. Rejecting anything else
/// keeps path tricks out of file names whatever the spec says.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest_dir::parse_manifest;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    /// An assignment as these tests build it: the entry's fields and its revision's manifest.
    #[derive(Clone)]
    struct Pod {
        set_namespace: String,
        set_name: String,
        revision: String,
        file_name: String,
        manifest: Value,
    }

    impl Pod {
        fn entry(&self) -> AssignedPod {
            AssignedPod {
                set_namespace: self.set_namespace.clone(),
                set_name: self.set_name.clone(),
                revision: self.revision.clone(),
                revision_name: format!("{}-{}", self.set_name, self.revision),
                file_name: self.file_name.clone(),
                ..Default::default()
            }
        }

        fn assignment(&self) -> Assignment {
            Assignment::available(self.entry(), self.manifest.clone())
        }
    }

    fn plan_pods(pods: Option<&[Pod]>, scan: &DirScan) -> DirPlan {
        let assigned: Option<Vec<Assignment>> =
            pods.map(|p| p.iter().map(Pod::assignment).collect());
        plan_dir(assigned.as_deref(), scan)
    }

    fn assigned(ns: &str, set: &str, rev: &str) -> Pod {
        Pod {
            set_namespace: ns.into(),
            set_name: set.into(),
            revision: rev.into(),
            file_name: manifest_file_name(ns, set),
            manifest: json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": set,
                    "namespace": ns,
                    "annotations": {
                        ANNOTATION_SET: format!("{ns}/{set}"),
                        ANNOTATION_REVISION: rev,
                    },
                    "labels": {"staticpods.dev/set-name": set},
                },
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
            }),
        }
    }

    fn file(name: &str, content: &[u8]) -> ScannedFile {
        ScannedFile {
            name: name.into(),
            regular: true,
            content: Some(content.to_vec()),
            modified: Some(UNIX_EPOCH + Duration::from_secs(1000)),
            info: parse_manifest(content),
        }
    }

    fn rendered(pod: &Pod) -> Vec<u8> {
        render_manifest(&pod.entry(), &pod.manifest, Slot::Primary)
            .expect("valid")
            .content
    }

    fn scan(files: Vec<ScannedFile>) -> DirScan {
        DirScan { files }
    }

    const KUBE_APISERVER: &[u8] =
        b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n";

    #[test]
    fn no_api_data_means_no_actions() {
        let ours = assigned("ns", "a", "r1");
        let dir = scan(vec![file(&ours.file_name, &rendered(&ours))]);
        assert_eq!(plan_pods(None, &dir), DirPlan::default());
    }

    #[test]
    fn writes_a_missing_manifest() {
        let a = assigned("ns", "a", "r1");
        let p = plan_pods(
            Some(std::slice::from_ref(&a)),
            &scan(vec![file("kube-apiserver.yaml", KUBE_APISERVER)]),
        );
        assert_eq!(
            p.actions,
            vec![Action::Write {
                file_name: a.file_name.clone(),
                content: rendered(&a),
                expected: None
            }]
        );
        assert_eq!(p.sets[0].state, SetState::Write);
        assert_eq!(
            p.sets[0].pod.as_ref().map(ToString::to_string),
            Some("ns/a".into())
        );
    }

    #[test]
    fn identical_content_is_left_untouched() {
        let a = assigned("ns", "a", "r1");
        let on_disk = file(&a.file_name, &rendered(&a));
        let p = plan_pods(Some(&[a]), &scan(vec![on_disk.clone()]));
        assert!(p.actions.is_empty());
        assert_eq!(
            p.sets[0].state,
            SetState::Current {
                since: on_disk.modified
            }
        );
        assert_eq!(p.sets[0].on_disk_revision.as_deref(), Some("r1"));
    }

    #[test]
    fn owned_drift_and_new_revisions_are_rewritten() {
        let old = assigned("ns", "a", "r1");
        let new = assigned("ns", "a", "r2");
        let old_bytes = rendered(&old);
        let p = plan_pods(
            Some(std::slice::from_ref(&new)),
            &scan(vec![file(&old.file_name, &old_bytes)]),
        );
        assert_eq!(
            p.actions,
            vec![Action::Write {
                file_name: new.file_name.clone(),
                content: rendered(&new),
                expected: Some(old_bytes)
            }]
        );
        assert_eq!(p.sets[0].on_disk_revision.as_deref(), Some("r1"));
    }

    /// Plans `pods` as entries of sets that update with surge.
    fn plan_surge(pods: &[Pod], scan: &DirScan) -> DirPlan {
        let assigned: Vec<Assignment> = pods
            .iter()
            .map(|p| {
                let mut a = p.assignment();
                a.entry.surge_min_ready_seconds = Some(5);
                a
            })
            .collect();
        plan_dir(Some(&assigned), scan)
    }

    fn rendered_in(pod: &Pod, slot: Slot) -> Vec<u8> {
        render_manifest(&pod.entry(), &pod.manifest, slot)
            .expect("valid")
            .content
    }

    const SURGE_FILE: &str = "staticpodset_ns_a_surge.yaml";

    #[test]
    fn a_surge_writes_the_new_revision_under_the_other_name_and_keeps_the_old() {
        let old = assigned("ns", "a", "r1");
        let new = assigned("ns", "a", "r2");
        let old_bytes = rendered(&old);
        let p = plan_surge(
            std::slice::from_ref(&new),
            &scan(vec![file(&old.file_name, &old_bytes)]),
        );
        let content = rendered_in(&new, Slot::Surge);
        assert!(String::from_utf8_lossy(&content).contains("name: a-surge"));
        assert_eq!(
            p.actions,
            vec![Action::Write {
                file_name: SURGE_FILE.into(),
                content,
                expected: None,
            }]
        );
        let d = &p.sets[0];
        assert_eq!(d.file_name, SURGE_FILE);
        assert_eq!(
            d.pod.as_ref().map(ToString::to_string),
            Some("ns/a-surge".into())
        );
        let previous = d.previous.as_ref().expect("the old pod is kept");
        assert_eq!(previous.file_name, old.file_name);
        assert_eq!(previous.revision.as_deref(), Some("r1"));
        assert_eq!(previous.min_ready, Duration::from_secs(5));

        // The next update goes back to the first name.
        let third = assigned("ns", "a", "r3");
        let p = plan_surge(
            std::slice::from_ref(&third),
            &scan(vec![file(SURGE_FILE, &rendered_in(&new, Slot::Surge))]),
        );
        assert_eq!(p.sets[0].file_name, third.file_name);
        assert_eq!(
            p.sets[0].previous.as_ref().map(|p| p.file_name.as_str()),
            Some(SURGE_FILE)
        );
    }

    #[test]
    fn a_rollback_during_a_surge_keeps_the_serving_pod_and_drops_the_new_one_once_ready() {
        let old = assigned("ns", "a", "r1");
        let new = assigned("ns", "a", "r2");
        let dir = scan(vec![
            file(&old.file_name, &rendered(&old)),
            file(SURGE_FILE, &rendered_in(&new, Slot::Surge)),
        ]);
        let p = plan_surge(std::slice::from_ref(&old), &dir);
        assert!(p.actions.is_empty(), "{:?}", p.actions);
        assert!(matches!(p.sets[0].state, SetState::Current { .. }));
        assert_eq!(p.sets[0].file_name, old.file_name);
        assert_eq!(
            p.sets[0].previous.as_ref().map(|p| p.file_name.as_str()),
            Some(SURGE_FILE)
        );
    }

    #[test]
    fn without_surge_the_other_name_goes_at_once() {
        let old = assigned("ns", "a", "r1");
        let new = assigned("ns", "a", "r2");
        let surge_bytes = rendered_in(&new, Slot::Surge);
        let dir = scan(vec![
            file(&old.file_name, &rendered(&old)),
            file(SURGE_FILE, &surge_bytes),
        ]);
        // r2 runs under the surge name: it keeps that name, and the old pod goes.
        let p = plan_pods(Some(std::slice::from_ref(&new)), &dir);
        assert_eq!(
            p.actions,
            vec![Action::Remove {
                file_name: old.file_name.clone(),
                expected: rendered(&old),
            }]
        );
        assert_eq!(p.sets[0].file_name, SURGE_FILE);
        assert_eq!(p.sets[0].previous, None);
        // Both files of a set that is no longer assigned go.
        let p = plan_pods(Some(&[]), &dir);
        assert_eq!(p.actions.len(), 2);
    }

    #[test]
    fn a_set_does_not_surge_into_another_sets_name() {
        let old = assigned("ns", "a", "r1");
        let new = assigned("ns", "a", "r2");
        let other = assigned("ns", "a-surge", "r1");
        let dir = scan(vec![file(&old.file_name, &rendered(&old))]);
        let p = plan_surge(&[new.clone(), other], &dir);
        assert_eq!(p.sets[0].file_name, new.file_name, "updated in place");
        assert_eq!(p.sets[0].previous, None);
    }

    #[test]
    fn with_both_names_in_use_a_surge_overwrites_the_newer_file() {
        let r1 = assigned("ns", "a", "r1");
        let r2 = assigned("ns", "a", "r2");
        let r3 = assigned("ns", "a", "r3");
        let mut newer = file(SURGE_FILE, &rendered_in(&r2, Slot::Surge));
        newer.modified = Some(UNIX_EPOCH + Duration::from_secs(2000));
        let dir = scan(vec![file(&r1.file_name, &rendered(&r1)), newer]);
        let p = plan_surge(std::slice::from_ref(&r3), &dir);
        assert_eq!(p.sets[0].file_name, SURGE_FILE);
        assert_eq!(
            p.sets[0].previous.as_ref().map(|p| p.revision.as_deref()),
            Some(Some("r1"))
        );
    }

    #[test]
    fn removes_only_owned_files_no_longer_assigned() {
        let kept = assigned("ns", "kept", "r1");
        let gone = assigned("ns", "gone", "r1");
        let gone_bytes = rendered(&gone);
        // Named like ours but without our annotation: foreign.
        let impostor = file("staticpodset_ns_other.yaml", KUBE_APISERVER);
        // Named like ours, annotated for a different set: foreign.
        let mismatched = file("staticpodset_ns_third.yaml", &gone_bytes);
        let dir = scan(vec![
            file("kube-apiserver.yaml", KUBE_APISERVER),
            file(&kept.file_name, &rendered(&kept)),
            file(&gone.file_name, &gone_bytes),
            impostor,
            mismatched,
        ]);
        let p = plan_pods(Some(&[kept]), &dir);
        assert_eq!(
            p.actions,
            vec![Action::Remove {
                file_name: gone.file_name.clone(),
                expected: gone_bytes
            }]
        );
        assert_eq!(
            p.removals,
            vec![Removal {
                set: SetKey::of(&gone.entry()),
                file_name: gone.file_name
            }]
        );
    }

    #[test]
    fn an_empty_spec_removes_every_owned_file_and_nothing_else() {
        let a = assigned("ns", "a", "r1");
        let mut symlink = file(&a.file_name, &rendered(&a));
        symlink.regular = false;
        let dir = scan(vec![file("kube-apiserver.yaml", KUBE_APISERVER), symlink]);
        assert!(plan_pods(Some(&[]), &dir).actions.is_empty());
        let dir = scan(vec![file(&a.file_name, &rendered(&a))]);
        assert_eq!(plan_pods(Some(&[]), &dir).actions.len(), 1);
    }

    #[test]
    fn a_foreign_file_with_our_name_is_a_conflict() {
        let a = assigned("ns", "a", "r1");
        let p = plan_pods(
            Some(std::slice::from_ref(&a)),
            &scan(vec![file(&a.file_name, KUBE_APISERVER)]),
        );
        assert!(p.actions.is_empty());
        let SetState::Conflict(message) = &p.sets[0].state else {
            panic!("{:?}", p.sets[0].state)
        };
        assert!(message.contains(&a.file_name), "{message}");
        assert!(message.contains(ANNOTATION_SET), "{message}");
        assert_eq!(p.sets[0].on_disk_revision, None);
    }

    #[test]
    fn an_unreadable_file_with_our_name_is_a_conflict() {
        let a = assigned("ns", "a", "r1");
        let mut unreadable = file(&a.file_name, b"");
        unreadable.content = None;
        let p = plan_pods(Some(&[a]), &scan(vec![unreadable]));
        assert!(p.actions.is_empty());
        assert!(matches!(p.sets[0].state, SetState::Conflict(_)));
    }

    #[test]
    fn a_foreign_manifest_defining_the_same_pod_is_a_conflict() {
        let a = assigned("kube-system", "kube-apiserver", "r1");
        let p = plan_pods(
            Some(&[a]),
            &scan(vec![file("kube-apiserver.yaml", KUBE_APISERVER)]),
        );
        assert!(p.actions.is_empty());
        let SetState::Conflict(message) = &p.sets[0].state else {
            panic!("{:?}", p.sets[0].state)
        };
        assert!(message.contains("kube-apiserver.yaml"), "{message}");
        assert!(message.contains("kube-system/kube-apiserver"), "{message}");
    }

    #[test]
    fn a_conflict_never_removes_our_existing_file() {
        let a = assigned("kube-system", "kube-apiserver", "r2");
        let ours = file(
            &a.file_name,
            &rendered(&assigned("kube-system", "kube-apiserver", "r1")),
        );
        let p = plan_pods(
            Some(&[a]),
            &scan(vec![file("kube-apiserver.yaml", KUBE_APISERVER), ours]),
        );
        assert!(p.actions.is_empty());
        assert!(matches!(p.sets[0].state, SetState::Conflict(_)));
    }

    #[test]
    fn same_pod_name_in_another_namespace_is_no_conflict() {
        let a = assigned("default", "kube-apiserver", "r1");
        let p = plan_pods(
            Some(&[a]),
            &scan(vec![file("kube-apiserver.yaml", KUBE_APISERVER)]),
        );
        assert_eq!(p.sets[0].state, SetState::Write);
    }

    #[test]
    fn bad_file_names_are_rejected_and_nothing_is_written() {
        for bad in [
            "../etc/passwd",
            "/etc/kubernetes/manifests/staticpodset_ns_a.yaml",
            "staticpodset_ns_b.yaml",
            "staticpodset_ns_a.yml",
            ".staticpodset_ns_a.yaml",
            "kube-apiserver.yaml",
            "",
        ] {
            let mut a = assigned("ns", "a", "r1");
            a.file_name = bad.into();
            let p = plan_pods(Some(&[a]), &DirScan::default());
            assert!(p.actions.is_empty(), "{bad}");
            assert!(matches!(p.sets[0].state, SetState::Invalid(_)), "{bad}");
        }
    }

    #[test]
    fn bad_set_names_are_rejected() {
        for (ns, set) in [
            ("ns", "a/../../b"),
            ("..", "a"),
            ("ns", "A"),
            ("ns", "a_b"),
            ("", "a"),
        ] {
            let mut a = assigned("ns", "a", "r1");
            a.set_namespace = ns.into();
            a.set_name = set.into();
            a.file_name = format!("staticpodset_{ns}_{set}.yaml");
            let p = plan_pods(Some(&[a]), &DirScan::default());
            assert!(p.actions.is_empty(), "{ns}/{set}");
            assert!(
                matches!(p.sets[0].state, SetState::Invalid(_)),
                "{ns}/{set}"
            );
        }
    }

    #[test]
    fn malformed_manifests_are_rejected() {
        type Mutation = Box<dyn Fn(&mut Pod)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|a| a.manifest = json!("not an object")),
            Box::new(|a| a.manifest["kind"] = json!("Deployment")),
            Box::new(|a| a.manifest["metadata"]["name"] = json!("")),
            Box::new(|a| a.manifest["metadata"]["annotations"] = json!({})),
            Box::new(|a| a.manifest["metadata"]["annotations"][ANNOTATION_SET] = json!("ns/other")),
            Box::new(|a| a.revision = "r2".into()),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut a = assigned("ns", "a", "r1");
            mutate(&mut a);
            let p = plan_pods(Some(&[a]), &DirScan::default());
            assert!(p.actions.is_empty(), "case {i}");
            assert!(matches!(p.sets[0].state, SetState::Invalid(_)), "case {i}");
        }
    }

    #[test]
    fn an_invalid_assignment_keeps_its_existing_file() {
        let good = assigned("ns", "a", "r1");
        let mut bad = assigned("ns", "a", "r2");
        bad.manifest = json!({});
        let p = plan_pods(
            Some(&[bad]),
            &scan(vec![file(&good.file_name, &rendered(&good))]),
        );
        assert!(p.actions.is_empty());
    }

    #[test]
    fn duplicate_assignments_write_once() {
        let a = assigned("ns", "a", "r1");
        let p = plan_pods(Some(&[a.clone(), a]), &DirScan::default());
        assert_eq!(p.actions.len(), 1);
        assert!(matches!(p.sets[1].state, SetState::Invalid(_)));
    }

    #[test]
    fn rendering_round_trips_and_is_stable() {
        let a = assigned("ns", "a", "r1");
        let bytes = rendered(&a);
        assert_eq!(bytes, rendered(&a));
        let info = parse_manifest(&bytes);
        assert_eq!(info.set.as_deref(), Some("ns/a"));
        assert_eq!(info.revision.as_deref(), Some("r1"));
        let back: Value = serde_yaml::from_slice(&bytes).expect("yaml");
        assert_eq!(back, a.manifest);
    }

    #[test]
    fn strings_that_look_like_other_types_stay_strings() {
        let mut a = assigned("ns", "a", "r1");
        let tricky = json!([
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "true",
            "null",
            "~",
            "0755",
            "0x1f",
            "1e3",
            "1_000",
            ".5",
            "12:30",
            "2024-01-01",
            "",
            " x",
            "a: b",
            "- c",
            "#d"
        ]);
        a.manifest["spec"]["containers"][0]["args"] = tricky.clone();
        let bytes = rendered(&a);
        let back: Value = serde_yaml::from_slice(&bytes).expect("yaml");
        assert_eq!(back["spec"]["containers"][0]["args"], tricky);
        // The kubelet's YAML reader follows YAML 1.1, where yes/no/on/off/y/n are booleans and
        // 0755 is octal, so they must be quoted whatever our own parser thinks.
        let text = String::from_utf8(bytes).expect("utf-8");
        for word in ["yes", "no", "on", "off", "y", "n", "0755", "12:30", "1_000"] {
            assert!(
                text.contains(&format!("'{word}'")) || text.contains(&format!("\"{word}\"")),
                "{word} unquoted in:\n{text}"
            );
        }
    }

    #[test]
    fn an_unavailable_revision_keeps_the_file_on_disk() {
        let on_disk = assigned("ns", "a", "r1");
        let bytes = rendered(&on_disk);
        let wanted = assigned("ns", "a", "r2");
        let unavailable = Assignment {
            entry: wanted.entry(),
            manifest: Err("cannot read StaticPodRevision ns/a-r2: 503".into()),
        };
        let p = plan_dir(
            Some(&[unavailable]),
            &scan(vec![file(&on_disk.file_name, &bytes)]),
        );
        // Neither rewritten nor removed.
        assert!(p.actions.is_empty());
        assert!(p.removals.is_empty());
        assert_eq!(
            p.sets[0].state,
            SetState::Unavailable("cannot read StaticPodRevision ns/a-r2: 503".into())
        );
        assert_eq!(p.sets[0].on_disk_revision.as_deref(), Some("r1"));
        assert_eq!(p.sets[0].revision, "r2");
    }

    #[test]
    fn an_unavailable_revision_writes_nothing_and_other_sets_go_on() {
        let a = assigned("ns", "a", "r1");
        let b = assigned("ns", "b", "r1");
        let p = plan_dir(
            Some(&[
                Assignment {
                    entry: a.entry(),
                    manifest: Err("not there yet".into()),
                },
                b.assignment(),
            ]),
            &DirScan::default(),
        );
        assert_eq!(
            p.actions,
            vec![Action::Write {
                file_name: b.file_name.clone(),
                content: rendered(&b),
                expected: None
            }]
        );
        assert!(matches!(p.sets[0].state, SetState::Unavailable(_)));
        assert_eq!(p.sets[0].on_disk_revision, None);
        assert_eq!(p.sets[1].state, SetState::Write);
    }
}
