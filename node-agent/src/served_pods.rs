//! The kubelet's URL source (`staticPodURL`) as plain data: which source each assigned set goes
//! through on this node, and what the agent serves to the kubelet. Pure; the HTTP side is
//! [`crate::url_source`].
//!
//! The kubelet polls the URL (every 20 s by default) and treats the answer as the complete set of
//! its URL pods: a 200 with a Pod or a PodList *replaces* them all (an empty list removes them
//! all), while any error status keeps what it runs. One pod it cannot use makes it refuse the
//! whole list and keep the previous one. So:
//!
//! - until the agent knows its node's assignments (and its mode) it answers an error, never an
//!   empty list;
//! - it serves only manifests it has validated, and keeps serving the last good manifest of a set
//!   whose new revision it cannot read (as a file stays on disk);
//! - if it would have to leave out a set the kubelet may be running from the URL, because it never
//!   had that set's manifest (an agent restarted while a revision cannot be read), the answer is
//!   incomplete and it answers an error rather than stop that pod;
//! - the body is the same bytes for the same state, so the kubelet skips unchanged polls, and a
//!   pod's content (hence its `kubernetes.io/config.hash`) changes only with its revision: a
//!   re-poll restarts nothing.
//!
//! Modes, per node (see [`effective_mode`]): `File` writes files only; `URL` serves every set and
//! removes the files the agent owns; `Both` serves the sets whose template annotation
//! `staticpods.dev/manifest-source` is `url` and writes files for the others. In every mode a set
//! goes through exactly one source: a set is moved only once the agent has its manifest, so a
//! set whose manifest is unavailable stays where it is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;
use staticpodset_api::keys::{Slot, MANIFEST_SOURCE};
use staticpodset_api::{ManifestPhase, ManifestSource};

use crate::dir_plan::{render_manifest, Assignment, Unavailable};
use crate::manifest_dir::{PodKey, MAX_MANIFEST_BYTES};
use crate::report::SetOutcome;
use staticpodset_api::SetKey;

/// Parses a mode as written in the node label or the agent flag: `file`, `url` or `both`.
pub fn parse_source(text: &str) -> Option<ManifestSource> {
    match text {
        "file" => Some(ManifestSource::File),
        "url" => Some(ManifestSource::Url),
        "both" => Some(ManifestSource::Both),
        _ => None,
    }
}

/// The mode in the words of the label and flag.
pub fn source_text(source: ManifestSource) -> &'static str {
    match source {
        ManifestSource::File => "file",
        ManifestSource::Url => "url",
        ManifestSource::Both => "both",
    }
}

/// The node's mode and, when it is not what was asked for, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    /// The mode the agent acts in.
    pub source: ManifestSource,
    /// Why the label was not followed, for the log.
    pub warning: Option<String>,
}

/// The mode of this node: the Node's label `staticpods.dev/manifest-source` if it has a valid
/// one, else the agent's default (`--manifest-source`). Without a URL endpoint
/// (`url_enabled == false`) it is always `File`: a node told to use the URL while nothing serves
/// it would lose its files and get nothing in their place.
pub fn effective_mode(default: ManifestSource, label: Option<&str>, url_enabled: bool) -> Mode {
    let (asked, mut warning) = match label.map(|l| (l, parse_source(l))) {
        None => (default, None),
        Some((_, Some(source))) => (source, None),
        Some((text, None)) => (
            default,
            Some(format!(
                "the Node's label {MANIFEST_SOURCE}={text:?} is not file, url or both; using the \
                 agent's default {}",
                source_text(default)
            )),
        ),
    };
    if asked != ManifestSource::File && !url_enabled {
        warning = Some(format!(
            "manifest source {} asked for, but this agent serves no URL (--static-pod-url-addr \
             is not set); writing files",
            source_text(asked)
        ));
        return Mode {
            source: ManifestSource::File,
            warning,
        };
    }
    Mode {
        source: asked,
        warning,
    }
}

/// Where one assignment goes this sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A file in the manifest directory.
    File,
    /// The list served to the kubelet's URL source.
    Url,
    /// The manifest is unavailable: the set stays wherever it is (its file is kept, or the
    /// agent keeps serving what it served); nothing new is written or served for it.
    Keep,
}

/// Where `assignment` goes on a node in `mode`.
pub fn place(mode: ManifestSource, assignment: &Assignment) -> Placement {
    let Ok(manifest) = &assignment.manifest else {
        return Placement::Keep;
    };
    match mode {
        ManifestSource::File => Placement::File,
        ManifestSource::Url => Placement::Url,
        ManifestSource::Both => {
            let asked = manifest
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(MANIFEST_SOURCE))
                .and_then(Value::as_str);
            if asked == Some("url") {
                Placement::Url
            } else {
                Placement::File
            }
        }
    }
}

/// The assignments for the directory and for the URL, in spec order. An unavailable one is in
/// both lists, so that neither removes what it has of it.
pub fn split(mode: ManifestSource, assigned: &[Assignment]) -> (Vec<Assignment>, Vec<Assignment>) {
    let mut files = Vec::new();
    let mut url = Vec::new();
    for a in assigned {
        match place(mode, a) {
            Placement::File => files.push(a.clone()),
            Placement::Url => url.push(a.clone()),
            Placement::Keep => {
                files.push(a.clone());
                url.push(a.clone());
            }
        }
    }
    (files, url)
}

/// Holds the file write of sets that move from the URL source to a file on this node until the
/// kubelet has stopped the pod it runs from the URL: the kubelet runs one pod of a name per node,
/// and a file pod added while the URL pod of the same name still exists is never started (seen
/// on our kubelet: not within 120 s). `url_pod` says whether the kubelet still runs a set's pod
/// from the URL (the set is still served, or its mirror pod says `config.source: http`);
/// `waiting` remembers since when each set waits, and a set waits at most `timeout`.
pub fn hold_for_url_pods(
    file_assigned: Vec<Assignment>,
    url_pod: impl Fn(&SetKey) -> bool,
    waiting: &mut BTreeMap<SetKey, std::time::Instant>,
    now: std::time::Instant,
    timeout: std::time::Duration,
) -> Vec<Assignment> {
    let mut still = BTreeMap::new();
    let out = file_assigned
        .into_iter()
        .map(|mut a| {
            let key = SetKey::of(&a.entry);
            if a.manifest.is_ok() && url_pod(&key) {
                let since = *waiting.get(&key).unwrap_or(&now);
                if now.saturating_duration_since(since) < timeout {
                    still.insert(key, since);
                    a.manifest = Err(Unavailable::Waiting(
                        "moving from the URL source to a file: waiting for the kubelet to stop \
                         the pod it runs from the URL (one pod of a name per node)"
                            .to_string(),
                    ));
                }
            }
            a
        })
        .collect();
    *waiting = still;
    out
}

/// A manifest the endpoint serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// Its revision.
    pub revision: String,
    /// The manifest, as the StaticPodRevision holds it.
    pub manifest: Arc<Value>,
    /// When the agent started serving this revision.
    pub since: SystemTime,
}

/// What the endpoint serves, by set: the agent's memory between syncs.
pub type ServedPods = BTreeMap<SetKey, Served>;

/// The decision for the URL source in one sync.
#[derive(Debug, Clone, PartialEq)]
pub struct UrlDecision {
    /// What to serve from now on.
    pub served: ServedPods,
    /// One outcome per set listed for the URL (duplicates reported as errors).
    pub outcomes: Vec<SetOutcome>,
    /// Why the list would not be complete, if it would not: then the endpoint answers an error
    /// and the kubelet keeps what it runs.
    pub incomplete: Option<String>,
}

/// Plans the URL source.
///
/// - `listed`: the assignments [`split`] gave the URL.
/// - `previous`: what the endpoint served so far.
/// - `foreign_pods`: pods defined by files in the manifest directory the agent does not own,
///   with their file names: the kubelet keys static pods by namespace/name across sources, so a
///   set defining one of them is a conflict and is not served.
/// - `may_run_from_url`: whether the kubelet may run the set's pod from the URL source (its
///   mirror pod says `kubernetes.io/config.source: http`, or the agent cannot tell).
pub fn plan_url(
    listed: &[Assignment],
    previous: &ServedPods,
    foreign_pods: &[(String, PodKey)],
    may_run_from_url: impl Fn(&SetKey) -> bool,
    now: SystemTime,
) -> UrlDecision {
    let mut out = UrlDecision {
        served: ServedPods::new(),
        outcomes: Vec::new(),
        incomplete: None,
    };
    let mut seen = BTreeSet::new();
    for assignment in listed {
        let entry = &assignment.entry;
        let set = SetKey::of(entry);
        let previous = previous.get(&set);
        // What the set had: kept whenever nothing better can be served.
        let keep = |out: &mut UrlDecision, phase: ManifestPhase, message: String| {
            if let Some(p) = previous {
                out.served.insert(set.clone(), p.clone());
            }
            out.outcomes.push(SetOutcome {
                set: set.clone(),
                phase,
                written_revision: previous.map(|p| p.revision.clone()),
                written_at: previous.map(|p| p.since),
                pod: None,
                message: Some(message),
                source: previous.map(|_| ManifestSource::Url),
                previous_pod: None,
            });
        };
        if !seen.insert(set.clone()) {
            out.outcomes.push(SetOutcome {
                set: set.clone(),
                phase: ManifestPhase::Error,
                written_revision: None,
                written_at: None,
                pod: None,
                message: Some(format!(
                    "set {set} is assigned more than once; only the first entry is served"
                )),
                source: None,
                previous_pod: None,
            });
            continue;
        }
        let manifest = match &assignment.manifest {
            Ok(m) => m,
            Err(why) => {
                if previous.is_none() && may_run_from_url(&set) && out.incomplete.is_none() {
                    out.incomplete = Some(format!(
                        "the kubelet may run set {set} from this URL, but the agent does not \
                         have its manifest ({why}); answering an error so the kubelet keeps \
                         its pods"
                    ));
                }
                keep(&mut out, why.phase(), why.message().to_string());
                continue;
            }
        };
        let rendered = match render_manifest(entry, manifest, Slot::Primary) {
            Ok(r) => r,
            Err(message) => {
                keep(&mut out, ManifestPhase::Error, message);
                continue;
            }
        };
        if let Some((file, pod)) = foreign_pods.iter().find(|(_, p)| *p == rendered.pod) {
            let message = format!(
                "{file} in the manifest directory already defines pod {pod} and is not managed \
                 by StaticPodSet; the kubelet keys static pods by namespace/name across its \
                 sources, so only one of them could run. Rename the set's pod or remove the \
                 other manifest"
            );
            keep(&mut out, ManifestPhase::Conflict, message);
            continue;
        }
        let since = previous
            .filter(|p| p.revision == entry.revision)
            .map_or(now, |p| p.since);
        out.served.insert(
            set.clone(),
            Served {
                revision: entry.revision.clone(),
                manifest: manifest.clone(),
                since,
            },
        );
        out.outcomes.push(SetOutcome {
            set,
            phase: ManifestPhase::Written,
            written_revision: Some(entry.revision.clone()),
            written_at: Some(since),
            pod: Some(rendered.pod),
            message: None,
            source: Some(ManifestSource::Url),
            previous_pod: None,
        });
    }
    out
}

/// The body the kubelet gets: a `v1` PodList of the served manifests, ordered by set, as compact
/// JSON. The same state always gives the same bytes. `Err` when it is larger than the kubelet
/// reads (10 MB): the kubelet would fail on it, so the agent answers an error instead.
pub fn pod_list_body(served: &ServedPods) -> Result<Vec<u8>, String> {
    let items: Vec<&Value> = served.values().map(|s| s.manifest.as_ref()).collect();
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {},
        "items": items,
    });
    let body = list.to_string().into_bytes();
    if u64::try_from(body.len()).unwrap_or(u64::MAX) > MAX_MANIFEST_BYTES {
        return Err(format!(
            "the pod list is {} bytes, more than the {MAX_MANIFEST_BYTES} the kubelet reads; \
             answering an error so the kubelet keeps its pods",
            body.len()
        ));
    }
    Ok(body)
}

/// One outcome per set from the directory's and the URL's: a set listed in both (its manifest is
/// unavailable) is reported from the source that holds it.
pub fn merge_outcomes(files: Vec<SetOutcome>, url: Vec<SetOutcome>) -> Vec<SetOutcome> {
    let mut merged = files;
    for outcome in url {
        match merged.iter_mut().find(|o| o.set == outcome.set) {
            Some(existing) => {
                if existing.written_revision.is_none() && outcome.written_revision.is_some() {
                    *existing = outcome;
                }
            }
            None => merged.push(outcome),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revisions::tests::{entry, manifest};
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn available(set: &str, rev: &str) -> Assignment {
        Assignment::available(entry(set, rev), manifest(set, rev))
    }

    fn unavailable(set: &str, rev: &str) -> Assignment {
        Assignment {
            entry: entry(set, rev),
            manifest: Err(format!("cannot read StaticPodRevision ns/{set}-{rev}: 503").into()),
        }
    }

    fn asking(set: &str, rev: &str, source: &str) -> Assignment {
        let mut m = manifest(set, rev);
        m["metadata"]["annotations"][MANIFEST_SOURCE] = source.into();
        Assignment::available(entry(set, rev), m)
    }

    fn key(set: &str) -> SetKey {
        SetKey::new("ns", set)
    }

    fn served(set: &str, rev: &str, since: u64) -> (SetKey, Served) {
        (
            key(set),
            Served {
                revision: rev.into(),
                manifest: Arc::new(manifest(set, rev)),
                since: t(since),
            },
        )
    }

    #[test]
    fn a_set_leaving_the_url_waits_for_its_url_pod_then_for_no_longer_than_the_timeout() {
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let timeout = Duration::from_secs(60);
        let mut waiting = BTreeMap::new();
        let assigned = vec![available("moved", "r1"), available("other", "r1")];
        let url_pod = |k: &SetKey| k.name == "moved";
        let held = hold_for_url_pods(assigned.clone(), url_pod, &mut waiting, start, timeout);
        assert!(held[0]
            .manifest
            .as_ref()
            .unwrap_err()
            .message()
            .contains("URL"));
        assert!(held[1].manifest.is_ok());
        // Still running from the URL later: the wait started at the first sync.
        let later = start + Duration::from_secs(30);
        let held = hold_for_url_pods(assigned.clone(), url_pod, &mut waiting, later, timeout);
        assert!(held[0].manifest.is_err());
        assert_eq!(waiting[&key("moved")], start);
        // The kubelet stopped it: written, and forgotten.
        let held = hold_for_url_pods(assigned.clone(), |_| false, &mut waiting, later, timeout);
        assert!(held.iter().all(|a| a.manifest.is_ok()));
        assert!(waiting.is_empty());
        // Never stopped: written once the timeout has passed.
        hold_for_url_pods(assigned.clone(), url_pod, &mut waiting, start, timeout);
        let held = hold_for_url_pods(assigned, url_pod, &mut waiting, start + timeout, timeout);
        assert!(held[0].manifest.is_ok());
    }

    fn sets(list: &[Assignment]) -> Vec<String> {
        list.iter().map(|a| a.entry.set_name.clone()).collect()
    }

    #[test]
    fn the_label_overrides_the_default_and_bad_labels_are_ignored() {
        use ManifestSource::*;
        let mode = |default, label, url| effective_mode(default, label, url).source;
        assert_eq!(mode(File, None, true), File);
        assert_eq!(mode(Url, None, true), Url);
        assert_eq!(mode(File, Some("url"), true), Url);
        assert_eq!(mode(Url, Some("file"), true), File);
        assert_eq!(mode(File, Some("both"), true), Both);
        let bad = effective_mode(Url, Some("URL"), true);
        assert_eq!(bad.source, Url);
        assert!(bad.warning.unwrap().contains("not file, url or both"));
        assert_eq!(effective_mode(File, Some("url"), true).warning, None);
    }

    #[test]
    fn without_an_endpoint_the_mode_is_always_file() {
        use ManifestSource::*;
        for (default, label) in [(Url, None), (File, Some("url")), (File, Some("both"))] {
            let mode = effective_mode(default, label, false);
            assert_eq!(mode.source, File, "{default:?} {label:?}");
            assert!(mode.warning.unwrap().contains("--static-pod-url-addr"));
        }
        assert_eq!(effective_mode(File, None, false).warning, None);
    }

    #[test]
    fn each_available_set_goes_through_exactly_one_source() {
        let assigned = vec![
            available("a", "r1"),
            asking("b", "r1", "url"),
            asking("c", "r1", "file"),
        ];
        let (files, url) = split(ManifestSource::File, &assigned);
        assert_eq!(
            (sets(&files), sets(&url)),
            (
                vec!["a", "b", "c"].into_iter().map(String::from).collect(),
                vec![]
            )
        );
        let (files, url) = split(ManifestSource::Url, &assigned);
        assert_eq!(sets(&files), Vec::<String>::new());
        assert_eq!(sets(&url), vec!["a", "b", "c"]);
        let (files, url) = split(ManifestSource::Both, &assigned);
        assert_eq!(sets(&files), vec!["a", "c"]);
        assert_eq!(sets(&url), vec!["b"]);
    }

    #[test]
    fn an_unavailable_set_stays_where_it_is() {
        for mode in [
            ManifestSource::File,
            ManifestSource::Url,
            ManifestSource::Both,
        ] {
            let (files, url) = split(mode, &[unavailable("a", "r2")]);
            assert_eq!(sets(&files), vec!["a"], "{mode:?}");
            assert_eq!(sets(&url), vec!["a"], "{mode:?}");
        }
    }

    #[test]
    fn serves_the_available_sets_and_reports_them_written() {
        let plan = plan_url(
            &[available("a", "r1"), available("b", "r1")],
            &ServedPods::new(),
            &[],
            |_| true,
            t(100),
        );
        assert_eq!(plan.incomplete, None);
        assert_eq!(plan.served.len(), 2);
        let a = &plan.outcomes[0];
        assert_eq!(a.phase, ManifestPhase::Written);
        assert_eq!(a.written_revision.as_deref(), Some("r1"));
        assert_eq!(a.written_at, Some(t(100)));
        assert_eq!(a.source, Some(ManifestSource::Url));
        assert_eq!(
            a.pod.as_ref().map(ToString::to_string).as_deref(),
            Some("ns/a")
        );
    }

    #[test]
    fn a_served_revision_keeps_its_start_time_and_a_new_one_restarts_it() {
        let previous = ServedPods::from([served("a", "r1", 50), served("b", "r1", 50)]);
        let plan = plan_url(
            &[available("a", "r1"), available("b", "r2")],
            &previous,
            &[],
            |_| true,
            t(100),
        );
        assert_eq!(plan.served[&key("a")].since, t(50));
        assert_eq!(plan.served[&key("b")].since, t(100));
        assert_eq!(plan.served[&key("b")].revision, "r2");
    }

    #[test]
    fn sets_no_longer_listed_are_no_longer_served() {
        let previous = ServedPods::from([served("a", "r1", 50), served("gone", "r1", 50)]);
        let plan = plan_url(&[available("a", "r1")], &previous, &[], |_| true, t(100));
        assert_eq!(plan.served.keys().collect::<Vec<_>>(), vec![&key("a")]);
        assert_eq!(plan.incomplete, None);
        // An empty list is a complete answer too: the kubelet removes every URL pod.
        let plan = plan_url(&[], &previous, &[], |_| true, t(100));
        assert!(plan.served.is_empty());
        assert_eq!(plan.incomplete, None);
        assert_eq!(
            pod_list_body(&plan.served).unwrap(),
            br#"{"apiVersion":"v1","items":[],"kind":"PodList","metadata":{}}"#
        );
    }

    #[test]
    fn an_unavailable_revision_keeps_serving_the_previous_one() {
        let previous = ServedPods::from([served("a", "r1", 50)]);
        let plan = plan_url(&[unavailable("a", "r2")], &previous, &[], |_| true, t(100));
        assert_eq!(plan.incomplete, None);
        assert_eq!(plan.served, previous);
        let a = &plan.outcomes[0];
        assert_eq!(a.phase, ManifestPhase::Pending);
        assert_eq!(a.written_revision.as_deref(), Some("r1"));
        assert_eq!(a.source, Some(ManifestSource::Url));
        assert!(a.message.as_deref().unwrap().contains("503"));
    }

    #[test]
    fn a_set_the_kubelet_may_run_but_the_agent_never_had_makes_the_answer_an_error() {
        let plan = plan_url(
            &[available("a", "r1"), unavailable("b", "r1")],
            &ServedPods::new(),
            &[],
            |set| set.name == "b",
            t(100),
        );
        let why = plan.incomplete.expect("incomplete");
        assert!(why.contains("ns/b"), "{why}");
        // A set the kubelet does not run from the URL is simply not served yet.
        let plan = plan_url(
            &[available("a", "r1"), unavailable("b", "r1")],
            &ServedPods::new(),
            &[],
            |_| false,
            t(100),
        );
        assert_eq!(plan.incomplete, None);
        assert_eq!(plan.served.len(), 1);
        assert_eq!(plan.outcomes[1].phase, ManifestPhase::Pending);
        assert_eq!(plan.outcomes[1].written_revision, None);
    }

    #[test]
    fn invalid_manifests_are_never_served() {
        let mut bad = available("a", "r2");
        bad.manifest = Ok(Arc::new(serde_json::json!({"kind": "Pod"})));
        let plan = plan_url(&[bad.clone()], &ServedPods::new(), &[], |_| true, t(1));
        assert!(plan.served.is_empty());
        assert_eq!(plan.outcomes[0].phase, ManifestPhase::Error);
        // The last good revision stays, as a file would.
        let previous = ServedPods::from([served("a", "r1", 0)]);
        let plan = plan_url(&[bad], &previous, &[], |_| true, t(1));
        assert_eq!(plan.served, previous);
    }

    #[test]
    fn a_foreign_file_defining_the_same_pod_is_a_conflict() {
        let foreign = vec![(
            "a.yaml".to_owned(),
            PodKey {
                namespace: "ns".into(),
                name: "a".into(),
            },
        )];
        let plan = plan_url(
            &[available("a", "r1")],
            &ServedPods::new(),
            &foreign,
            |_| true,
            t(1),
        );
        assert!(plan.served.is_empty());
        assert_eq!(plan.outcomes[0].phase, ManifestPhase::Conflict);
        assert!(plan.outcomes[0]
            .message
            .as_deref()
            .unwrap()
            .contains("a.yaml"));
    }

    #[test]
    fn duplicate_entries_are_served_once() {
        let plan = plan_url(
            &[available("a", "r1"), available("a", "r1")],
            &ServedPods::new(),
            &[],
            |_| true,
            t(1),
        );
        assert_eq!(plan.served.len(), 1);
        assert_eq!(plan.outcomes[1].phase, ManifestPhase::Error);
    }

    #[test]
    fn the_body_is_a_stable_pod_list_ordered_by_set() {
        let served = ServedPods::from([served("b", "r1", 0), served("a", "r1", 0)]);
        let body = pod_list_body(&served).unwrap();
        assert_eq!(body, pod_list_body(&served.clone()).unwrap());
        let list: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["items"][0]["metadata"]["name"], "a");
        assert_eq!(list["items"][1], manifest("b", "r1"));
    }

    #[test]
    fn a_body_too_large_for_the_kubelet_is_an_error() {
        let mut big = manifest("a", "r1");
        big["metadata"]["annotations"]["x"] = "y".repeat(11 * 1024 * 1024).into();
        let served = ServedPods::from([(
            key("a"),
            Served {
                revision: "r1".into(),
                manifest: Arc::new(big),
                since: t(0),
            },
        )]);
        assert!(pod_list_body(&served).unwrap_err().contains("10485760"));
    }

    #[test]
    fn outcomes_of_a_set_in_both_lists_come_from_the_source_that_holds_it() {
        let o = |set: &str, written: Option<&str>, source| SetOutcome {
            set: key(set),
            phase: ManifestPhase::Pending,
            written_revision: written.map(String::from),
            written_at: None,
            pod: None,
            message: Some("unavailable".into()),
            source,
            previous_pod: None,
        };
        let merged = merge_outcomes(
            vec![
                o("a", None, None),
                o("b", Some("r1"), Some(ManifestSource::File)),
            ],
            vec![
                o("a", Some("r1"), Some(ManifestSource::Url)),
                o("b", None, None),
                o("c", None, None),
            ],
        );
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].source, Some(ManifestSource::Url));
        assert_eq!(merged[1].source, Some(ManifestSource::File));
        assert_eq!(merged[2].set, key("c"));
    }
}
