//! A set's history of StaticPodRevisions: which revision object the rendered pod needs (create,
//! reuse, renumber), which old ones may go, and what a rollback restores. Pure: the controller
//! passes in what its caches hold and performs the writes.
//!
//! Numbering follows DaemonSets' ControllerRevisions: a new rendered pod gets one more than the
//! newest number; a rendered pod that an older revision already holds reuses that object (same
//! name, same hash) and takes the next number, so the highest number is always what the set asks
//! for and every number names one revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use staticpodset_api::config_files::CONFIG_HASH;
use staticpodset_api::keys::{revision_object_name, LABEL_SET_NAME};
use staticpodset_api::{
    StaticPodRevision, StaticPodRevisionSpec, StaticPodSet, DEFAULT_REVISION_HISTORY_LIMIT,
};

use crate::conditions::{
    RollbackProblem, REASON_INVALID_ROLLBACK_REVISION, REASON_ROLLBACK_REVISION_NOT_FOUND,
};
use crate::planner::SetOnNodes;
use crate::render::{canonical_json, Rendered};

/// Replaces a cached revision's manifest with its digest ([`cache_digest`]) and drops its
/// template and managedFields: the cache then holds a few hundred bytes per revision. The
/// manifest is only ever compared; the template is read from the API server on rollback.
/// `spec.digest` stays: it is what nodes are handed to check the manifest against.
pub fn trim_revision(revision: &mut StaticPodRevision) {
    revision.metadata.managed_fields = None;
    revision.spec.template = Value::Null;
    if !is_digest(&revision.spec.manifest) {
        revision.spec.manifest = Value::String(cache_digest(&revision.spec.manifest));
    }
}

/// `sha256:<hex>` of the manifest's canonical JSON, revision annotation included: what a trimmed
/// revision keeps of its manifest, to compare whole manifests. Not the content digest nodes check
/// (`staticpodset_api::digest::manifest_digest`, which leaves the annotation out).
pub fn cache_digest(manifest: &Value) -> String {
    let digest = Sha256::digest(canonical_json(manifest).as_bytes());
    let mut out = String::with_capacity(DIGEST_PREFIX.len() + 64);
    out.push_str(DIGEST_PREFIX);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

const DIGEST_PREFIX: &str = "sha256:";

fn is_digest(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with(DIGEST_PREFIX))
}

/// Whether a (possibly trimmed) revision holds exactly `manifest`.
pub fn holds_manifest(revision: &StaticPodRevision, manifest: &Value) -> bool {
    let want = cache_digest(manifest);
    if is_digest(&revision.spec.manifest) {
        revision.spec.manifest.as_str() == Some(want.as_str())
    } else {
        cache_digest(&revision.spec.manifest) == want
    }
}

/// The set's revisions among `all`: in its namespace, for its name, and either controlled by
/// this set (by UID) or by no controller at all (left behind by `kubectl delete --cascade=orphan`;
/// such a revision is adopted when it is reused). Revisions of an earlier set of the same name,
/// waiting for the garbage collector, are not part of the history. Sorted by number, then name.
pub fn history_of(
    all: &[Arc<StaticPodRevision>],
    namespace: &str,
    name: &str,
    set_uid: Option<&str>,
) -> Vec<Arc<StaticPodRevision>> {
    let mut out: Vec<Arc<StaticPodRevision>> = all
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.set_name == name)
        .filter(|r| match controller_uid(r) {
            None => true,
            Some(uid) => Some(uid) == set_uid,
        })
        .cloned()
        .collect();
    out.sort_by_key(|r| (r.spec.revision, r.name_any()));
    out
}

/// The number of every revision in the set's history, by content hash: the rollout updates the
/// nodes at the oldest revision first.
pub fn numbers(
    all: &[Arc<StaticPodRevision>],
    namespace: &str,
    name: &str,
    set_uid: Option<&str>,
) -> BTreeMap<String, i64> {
    history_of(all, namespace, name, set_uid)
        .iter()
        .map(|r| (r.spec.hash.clone(), r.spec.revision))
        .collect()
}

/// The UID of the revision's controller, if it has one.
pub fn controller_uid(revision: &StaticPodRevision) -> Option<&str> {
    revision
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// What the rendered pod needs from the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ensure {
    /// The revision exists and is the newest: nothing to write.
    Current {
        /// Its name.
        name: String,
        /// Its number.
        number: i64,
    },
    /// An older revision holds the pod: give it the next number (and adopt it if it has no
    /// controller).
    Renumber {
        /// Its name.
        name: String,
        /// Its number now.
        from: i64,
        /// Its new number.
        to: i64,
        /// It has no controller and must get this set as its owner.
        adopt: bool,
    },
    /// No revision holds the pod: create it.
    Create {
        /// The name to create.
        name: String,
        /// Its number.
        number: i64,
    },
}

impl Ensure {
    /// The revision object's name.
    pub fn name(&self) -> &str {
        match self {
            Ensure::Current { name, .. }
            | Ensure::Renumber { name, .. }
            | Ensure::Create { name, .. } => name,
        }
    }

    /// The revision's number once the write (if any) is done.
    pub fn number(&self) -> i64 {
        match self {
            Ensure::Current { number, .. } | Ensure::Create { number, .. } => *number,
            Ensure::Renumber { to, .. } => *to,
        }
    }
}

/// Why the history cannot take the rendered pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryProblem {
    /// The object named for the hash holds another manifest, or another digest: created outside
    /// the operator (the hash has 40 bits, so not by chance). Revisions are immutable, so it must
    /// be deleted. No node is handed it meanwhile.
    #[error(
        "StaticPodRevision {name} holds a different manifest or digest than the one its name \
         promises (hash {hash}); it was not created by the operator: delete it and the operator \
         recreates it"
    )]
    ForeignContent {
        /// The object's name.
        name: String,
        /// The hash the set renders to.
        hash: String,
    },
    /// The set has no UID, so no revision can be owned by it (never the case for a set read
    /// from the API server).
    #[error("the StaticPodSet has no metadata.uid; its revisions cannot name it as their owner")]
    NoUid,
    /// The revision to reuse is not in the history the decision was made on.
    #[error("StaticPodRevision {0} to reuse is not in the set's history")]
    NotInHistory(String),
}

/// Decides how the history of set `set_name` (as [`history_of`] returns it) comes to hold
/// `rendered`. `others` are revisions of that name outside the history (another set's, waiting
/// for the garbage collector): an object of the wanted name there is reported as a create, which
/// fails with AlreadyExists until the collector removes it.
pub fn ensure(
    history: &[Arc<StaticPodRevision>],
    set_name: &str,
    rendered: &Rendered,
) -> Result<Ensure, HistoryProblem> {
    let name = revision_object_name(set_name, &rendered.revision);
    let newest = history.iter().map(|r| r.spec.revision).max().unwrap_or(0);
    let Some(existing) = history.iter().find(|r| r.name_any() == name) else {
        return Ok(Ensure::Create {
            name,
            number: newest.saturating_add(1),
        });
    };
    // A digest other than ours would be handed to nodes for this revision if it were ever
    // taken from the object, so it disqualifies the object as much as another manifest does.
    let other_digest = existing
        .spec
        .digest
        .as_ref()
        .is_some_and(|d| *d != rendered.digest);
    if existing.spec.hash != rendered.revision
        || other_digest
        || !holds_manifest(existing, &rendered.manifest)
    {
        return Err(HistoryProblem::ForeignContent {
            name,
            hash: rendered.revision.clone(),
        });
    }
    let number = existing.spec.revision;
    let shared = history.iter().filter(|r| r.spec.revision == number).count() > 1;
    let adopt = controller_uid(existing).is_none();
    if number == newest && !shared && !adopt {
        return Ok(Ensure::Current { name, number });
    }
    if number == newest && !shared {
        // Only adoption is needed; keep the number.
        return Ok(Ensure::Renumber {
            name,
            from: number,
            to: number,
            adopt,
        });
    }
    Ok(Ensure::Renumber {
        name,
        from: number,
        to: newest.saturating_add(1),
        adopt,
    })
}

/// The controller owner reference of a revision to its set. No `blockOwnerDeletion`: that
/// would need update permission on `staticpodsets/finalizers`, and nothing waits for revisions.
pub fn owner_reference(set: &StaticPodSet) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: StaticPodSet::api_version(&()).into_owned(),
        kind: StaticPodSet::kind(&()).into_owned(),
        name: set.name_any(),
        uid: set.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// The labels of a revision object: its set and, when the manifest has configuration files, its
/// config hash (so the bundles still needed are known from the revisions' labels alone).
fn revision_labels(set_name: &str, manifest: &Value) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(LABEL_SET_NAME.to_string(), set_name.to_string())]);
    if let Some(hash) = manifest
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CONFIG_HASH))
        .and_then(Value::as_str)
    {
        labels.insert(CONFIG_HASH.to_string(), hash.to_string());
    }
    labels
}

/// The config hashes that revisions of a set name (see `revision_labels`).
pub fn config_hashes<'a>(
    history: impl IntoIterator<Item = &'a StaticPodRevision>,
) -> BTreeSet<String> {
    history
        .into_iter()
        .filter_map(|r| r.labels().get(CONFIG_HASH).cloned())
        .collect()
}

/// The revision object for `rendered`, numbered `number`, owned by `set`. `None` when the set has
/// no UID (never the case for a set read from the API server).
pub fn revision_object(
    set: &StaticPodSet,
    rendered: &Rendered,
    number: i64,
) -> Option<StaticPodRevision> {
    let set_name = set.name_any();
    let template = serde_json::to_value(&set.spec.template).ok()?;
    Some(StaticPodRevision {
        metadata: ObjectMeta {
            name: Some(revision_object_name(&set_name, &rendered.revision)),
            namespace: set.namespace(),
            labels: Some(revision_labels(&set_name, &rendered.manifest)),
            owner_references: Some(vec![owner_reference(set)?]),
            ..Default::default()
        },
        spec: StaticPodRevisionSpec {
            set_name,
            revision: number,
            hash: rendered.revision.clone(),
            template,
            manifest: rendered.manifest.clone(),
            digest: Some(rendered.digest.clone()),
        },
    })
}

/// The revisions (hashes) of a set that some node still needs: assigned in a node object's spec,
/// or reported in its status as written to disk or run by the mirror pod.
pub fn in_use(on_nodes: &SetOnNodes<'_>) -> BTreeSet<String> {
    // Borrowed until the end: thousands of nodes share a handful of revisions.
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for (_, on) in on_nodes.iter() {
        used.extend(on.entry.map(|e| e.revision.as_str()));
        if let Some(report) = on.report {
            used.extend(report.written_revision.as_deref());
            used.extend(
                report
                    .mirror_pod
                    .iter()
                    .filter_map(|m| m.revision.as_deref()),
            );
        }
    }
    used.into_iter().map(str::to_string).collect()
}

/// The effective `spec.revisionHistoryLimit`: default 10, never negative.
pub fn history_limit(set: &StaticPodSet) -> usize {
    let limit = set
        .spec
        .revision_history_limit
        .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT);
    usize::try_from(limit).unwrap_or(0)
}

/// The revisions to delete: of the old ones — neither a hash in `keep` (what the set asks for,
/// what it last fully ran, what any node is assigned or runs) — all but the `limit` newest.
/// A revision in use is never returned, whatever the limit.
pub fn prune<'a>(
    history: &'a [Arc<StaticPodRevision>],
    keep: &BTreeSet<String>,
    limit: usize,
) -> Vec<&'a StaticPodRevision> {
    let mut old: Vec<&StaticPodRevision> = history
        .iter()
        .map(|r| &**r)
        .filter(|r| !keep.contains(&r.spec.hash))
        .collect();
    // Newest first; the name breaks ties so the choice is stable.
    old.sort_by_key(|r| std::cmp::Reverse((r.spec.revision, r.name_any())));
    old.into_iter().skip(limit).collect()
}

/// The revision `staticpods.dev/rollback-to: "<value>"` names in `history`.
pub fn rollback_target<'a>(
    value: &str,
    history: &'a [Arc<StaticPodRevision>],
) -> Result<&'a StaticPodRevision, RollbackProblem> {
    let known = || {
        let numbers: Vec<String> = history
            .iter()
            .map(|r| r.spec.revision.to_string())
            .collect();
        if numbers.is_empty() {
            "the set has no revisions yet".to_string()
        } else {
            format!("its revisions are {}", numbers.join(", "))
        }
    };
    let number: i64 = match value.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return Err(RollbackProblem {
                reason: REASON_INVALID_ROLLBACK_REVISION,
                message: format!(
                    "rollback-to {value:?} is not a revision number (1, 2, 3...); {}",
                    known()
                ),
            })
        }
    };
    history
        .iter()
        .find(|r| r.spec.revision == number)
        .map(|r| &**r)
        .ok_or_else(|| RollbackProblem {
            reason: REASON_ROLLBACK_REVISION_NOT_FOUND,
            message: format!(
                "cannot roll back to revision {number}: no such revision (pruned, or never \
                 existed); {}",
                known()
            ),
        })
}

/// The JSON patch that restores `template` into the set's `spec.template` — replaced whole, so
/// that fields added since that revision disappear (a merge patch would keep them) — and removes
/// the rollback annotation, provided it still has the value acted on.
pub fn rollback_patch(annotation: &str, value: &str, template: &Value) -> Value {
    let path = format!("/metadata/annotations/{}", escape_pointer(annotation));
    serde_json::json!([
        { "op": "test", "path": path, "value": value },
        { "op": "replace", "path": "/spec/template", "value": template },
        { "op": "remove", "path": path },
    ])
}

/// The JSON patch that only removes the rollback annotation, provided it still has `value`.
pub fn drop_annotation_patch(annotation: &str, value: &str) -> Value {
    let path = format!("/metadata/annotations/{}", escape_pointer(annotation));
    serde_json::json!([
        { "op": "test", "path": path, "value": value },
        { "op": "remove", "path": path },
    ])
}

/// Escapes a key for a JSON pointer (RFC 6901): `~` as `~0`, `/` as `~1`.
fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use staticpodset_api::keys::ANNOTATION_ROLLBACK_TO;
    use staticpodset_api::NodeStaticPods;
    use staticpodset_api::{
        AssignedPod, ManifestPhase, MirrorPodReport, NodeStaticPodsSpec, NodeStaticPodsStatus,
        PodReport, StaticPodSetSpec,
    };

    const UID: &str = "set-uid";

    use crate::fixtures::template;

    fn set(image: &str) -> StaticPodSet {
        let mut s = StaticPodSet::new(
            "vip",
            StaticPodSetSpec {
                template: template(image),
                ..Default::default()
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(UID.into());
        s
    }

    fn rendered(image: &str) -> Rendered {
        crate::render::render("ns", "vip", &template(image)).unwrap()
    }

    /// A revision of `image` numbered `number`, as the operator's cache holds it (trimmed).
    fn revision(image: &str, number: i64) -> Arc<StaticPodRevision> {
        let mut r = revision_object(&set(image), &rendered(image), number).unwrap();
        r.metadata.uid = Some(format!("uid-{image}"));
        r.metadata.resource_version = Some("1".into());
        trim_revision(&mut r);
        Arc::new(r)
    }

    fn numbers(history: &[&StaticPodRevision]) -> Vec<i64> {
        history.iter().map(|r| r.spec.revision).collect()
    }

    #[test]
    fn revision_objects_are_named_labelled_and_owned() {
        let s = set("img:1");
        let r = rendered("img:1");
        let obj = revision_object(&s, &r, 3).unwrap();
        assert_eq!(obj.name_any(), format!("vip-{}", r.revision));
        assert_eq!(obj.namespace().as_deref(), Some("ns"));
        assert_eq!(obj.labels()[LABEL_SET_NAME], "vip");
        let owner = &obj.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("StaticPodSet", "vip", UID)
        );
        assert_eq!(owner.api_version, "staticpods.dev/v1alpha1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, None);
        assert_eq!(obj.spec.set_name, "vip");
        assert_eq!(obj.spec.revision, 3);
        assert_eq!(obj.spec.hash, r.revision);
        assert_eq!(obj.spec.manifest, r.manifest);
        // The template is the set's, exactly, so a rollback restores it as it was.
        let back: PodTemplateSpec = serde_json::from_value(obj.spec.template.clone()).unwrap();
        assert_eq!(back, s.spec.template);
        let mut no_uid = set("img:1");
        no_uid.metadata.uid = None;
        assert!(revision_object(&no_uid, &r, 1).is_none());
    }

    #[test]
    fn the_first_revision_is_number_one() {
        assert_eq!(
            ensure(&[], "vip", &rendered("img:1")),
            Ok(Ensure::Create {
                name: format!("vip-{}", rendered("img:1").revision),
                number: 1
            })
        );
    }

    #[test]
    fn a_new_pod_gets_the_next_number() {
        let history = vec![revision("img:1", 1), revision("img:2", 2)];
        let e = ensure(&history, "vip", &rendered("img:3")).unwrap();
        assert!(matches!(e, Ensure::Create { number: 3, .. }), "{e:?}");
        assert_eq!(e.number(), 3);
    }

    #[test]
    fn the_newest_revision_needs_nothing() {
        let history = vec![revision("img:1", 1), revision("img:2", 2)];
        let e = ensure(&history, "vip", &rendered("img:2")).unwrap();
        assert_eq!(
            e,
            Ensure::Current {
                name: history[1].name_any(),
                number: 2
            }
        );
    }

    #[test]
    fn an_old_pod_reuses_its_revision_with_the_next_number() {
        let history = vec![
            revision("img:1", 1),
            revision("img:2", 2),
            revision("img:3", 3),
        ];
        let e = ensure(&history, "vip", &rendered("img:1")).unwrap();
        assert_eq!(
            e,
            Ensure::Renumber {
                name: history[0].name_any(),
                from: 1,
                to: 4,
                adopt: false
            }
        );
        assert_eq!(e.name(), history[0].name_any());
        assert_eq!(e.number(), 4);
    }

    #[test]
    fn a_number_shared_by_two_revisions_is_made_unique() {
        let history = vec![revision("img:1", 2), revision("img:2", 2)];
        let e = ensure(&history, "vip", &rendered("img:2")).unwrap();
        assert!(
            matches!(e, Ensure::Renumber { from: 2, to: 3, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn an_orphaned_revision_is_adopted_when_reused() {
        let mut orphan = (*revision("img:1", 1)).clone();
        orphan.metadata.owner_references = None;
        let history = vec![Arc::new(orphan)];
        let e = ensure(&history, "vip", &rendered("img:1")).unwrap();
        assert_eq!(
            e,
            Ensure::Renumber {
                name: history[0].name_any(),
                from: 1,
                to: 1,
                adopt: true
            }
        );
    }

    #[test]
    fn an_object_with_another_manifest_under_our_name_is_refused() {
        let mut forged = (*revision("img:1", 1)).clone();
        forged.spec.manifest = Value::String(cache_digest(&serde_json::json!({"kind": "Pod"})));
        let history = vec![Arc::new(forged)];
        assert!(matches!(
            ensure(&history, "vip", &rendered("img:1")),
            Err(HistoryProblem::ForeignContent { .. })
        ));
        let mut wrong_hash = (*revision("img:1", 1)).clone();
        wrong_hash.spec.hash = "0000000000".into();
        assert!(ensure(&[Arc::new(wrong_hash)], "vip", &rendered("img:1")).is_err());
    }

    #[test]
    fn revision_objects_carry_the_digest_and_trimming_keeps_it() {
        let r = rendered("img:1");
        let mut obj = revision_object(&set("img:1"), &r, 1).unwrap();
        assert_eq!(obj.spec.digest.as_deref(), Some(r.digest.as_str()));
        trim_revision(&mut obj);
        assert_eq!(obj.spec.digest.as_deref(), Some(r.digest.as_str()));
    }

    #[test]
    fn an_object_with_our_manifest_but_another_digest_is_refused() {
        let mut forged = (*revision("img:1", 1)).clone();
        forged.spec.digest = Some(rendered("img:2").digest);
        assert!(matches!(
            ensure(&[Arc::new(forged)], "vip", &rendered("img:1")),
            Err(HistoryProblem::ForeignContent { .. })
        ));
        // Revisions from before the digest have none, and stay usable.
        let mut old = (*revision("img:1", 1)).clone();
        old.spec.digest = None;
        let history = vec![Arc::new(old)];
        assert!(matches!(
            ensure(&history, "vip", &rendered("img:1")),
            Ok(Ensure::Current { number: 1, .. })
        ));
    }

    #[test]
    fn history_is_the_sets_own_sorted_by_number() {
        let mut other_set = (*revision("img:9", 1)).clone();
        other_set.spec.set_name = "other".into();
        let mut other_ns = (*revision("img:8", 1)).clone();
        other_ns.metadata.namespace = Some("elsewhere".into());
        let mut previous_incarnation = (*revision("img:7", 1)).clone();
        previous_incarnation
            .metadata
            .owner_references
            .as_mut()
            .unwrap()[0]
            .uid = "old".into();
        let mut orphan = (*revision("img:6", 7)).clone();
        orphan.metadata.owner_references = None;
        let all = vec![
            revision("img:2", 5),
            Arc::new(other_set),
            revision("img:1", 2),
            Arc::new(other_ns),
            Arc::new(previous_incarnation),
            Arc::new(orphan),
        ];
        let history = history_of(&all, "ns", "vip", Some(UID));
        let refs: Vec<&StaticPodRevision> = history.iter().map(|r| &**r).collect();
        assert_eq!(numbers(&refs), [2, 5, 7]);
    }

    #[test]
    fn trimming_keeps_what_is_compared_and_is_idempotent() {
        let full = revision_object(&set("img:1"), &rendered("img:1"), 1).unwrap();
        let mut trimmed = full.clone();
        trim_revision(&mut trimmed);
        assert_eq!(trimmed.spec.template, Value::Null);
        assert!(holds_manifest(&trimmed, &rendered("img:1").manifest));
        assert!(holds_manifest(&full, &rendered("img:1").manifest));
        assert!(!holds_manifest(&trimmed, &rendered("img:2").manifest));
        let once = trimmed.spec.clone();
        trim_revision(&mut trimmed);
        assert_eq!(trimmed.spec, once);
    }

    fn keep(hashes: &[&Arc<StaticPodRevision>]) -> BTreeSet<String> {
        hashes.iter().map(|r| r.spec.hash.clone()).collect()
    }

    #[test]
    fn prune_keeps_the_newest_old_revisions_up_to_the_limit() {
        let history: Vec<_> = (1..=6).map(|n| revision(&format!("img:{n}"), n)).collect();
        // 6 is what the set asks for.
        let keep6 = keep(&[&history[5]]);
        assert_eq!(numbers(&prune(&history, &keep6, 2)), [3, 2, 1]);
        assert_eq!(numbers(&prune(&history, &keep6, 10)), Vec::<i64>::new());
        assert_eq!(numbers(&prune(&history, &keep6, 0)), [5, 4, 3, 2, 1]);
    }

    #[test]
    fn prune_never_deletes_a_revision_in_use() {
        let history: Vec<_> = (1..=6).map(|n| revision(&format!("img:{n}"), n)).collect();
        // Asked for: 6; a node still runs 1 and another is assigned 3.
        let in_use = keep(&[&history[5], &history[0], &history[2]]);
        let pruned = prune(&history, &in_use, 1);
        assert_eq!(numbers(&pruned), [4, 2]);
        // Limit 0 still spares them.
        let pruned = prune(&history, &in_use, 0);
        assert_eq!(numbers(&pruned), [5, 4, 2]);
        for r in pruned {
            assert!(!in_use.contains(&r.spec.hash));
        }
    }

    #[test]
    fn in_use_covers_entries_written_files_and_mirror_pods() {
        let entry = |set: &str, rev: &str| AssignedPod {
            set_namespace: "ns".into(),
            set_name: set.into(),
            revision: rev.into(),
            revision_name: format!("{set}-{rev}"),
            file_name: format!("staticpodset_ns_{set}.yaml"),
            ..Default::default()
        };
        let report = |set: &str, written: Option<&str>, mirror: Option<&str>| PodReport {
            set_namespace: "ns".into(),
            set_name: set.into(),
            phase: ManifestPhase::Written,
            written_revision: written.map(str::to_string),
            mirror_pod: mirror.map(|m| MirrorPodReport {
                revision: Some(m.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let obj = |node: &str, entries: Vec<AssignedPod>, reports: Vec<PodReport>| {
            let mut o = NodeStaticPods::new(node, NodeStaticPodsSpec { pods: entries });
            o.status = Some(NodeStaticPodsStatus {
                pods: reports,
                ..Default::default()
            });
            (node.to_string(), Arc::new(o))
        };
        let objects = BTreeMap::from([
            obj(
                "a",
                vec![entry("vip", "r3"), entry("other", "x1")],
                vec![
                    report("vip", Some("r2"), Some("r1")),
                    report("other", Some("x0"), None),
                ],
            ),
            obj("b", vec![], vec![report("vip", None, Some("r0"))]),
        ]);
        let used = in_use(&SetOnNodes::new(&objects, "ns", "vip"));
        assert_eq!(
            used.into_iter().collect::<Vec<_>>(),
            ["r0", "r1", "r2", "r3"]
        );
        assert!(in_use(&SetOnNodes::new(&objects, "other-ns", "vip")).is_empty());
    }

    #[test]
    fn history_limit_defaults_to_ten() {
        let mut s = set("img:1");
        assert_eq!(history_limit(&s), 10);
        s.spec.revision_history_limit = Some(2);
        assert_eq!(history_limit(&s), 2);
        s.spec.revision_history_limit = Some(-1);
        assert_eq!(history_limit(&s), 0);
    }

    #[test]
    fn rollback_finds_the_numbered_revision() {
        let history = vec![revision("img:1", 1), revision("img:2", 4)];
        assert_eq!(rollback_target("4", &history).unwrap().spec.revision, 4);
        assert_eq!(rollback_target(" 1 ", &history).unwrap().spec.revision, 1);
        let missing = rollback_target("2", &history).unwrap_err();
        assert_eq!(missing.reason, "RollbackRevisionNotFound");
        assert!(
            missing.message.contains("revision 2") && missing.message.contains("1, 4"),
            "{}",
            missing.message
        );
        for bad in ["", "two", "-1", "0", "1.5"] {
            let p = rollback_target(bad, &history).unwrap_err();
            assert_eq!(p.reason, "InvalidRollbackRevision", "{bad}");
        }
        let p = rollback_target("1", &[]).unwrap_err();
        assert!(p.message.contains("no revisions yet"), "{}", p.message);
    }

    #[test]
    fn rollback_patch_replaces_the_template_whole_and_drops_the_annotation() {
        let template = serde_json::to_value(template("img:1")).unwrap();
        let patch = rollback_patch(ANNOTATION_ROLLBACK_TO, "3", &template);
        assert_eq!(
            patch,
            serde_json::json!([
                {"op": "test", "path": "/metadata/annotations/staticpods.dev~1rollback-to", "value": "3"},
                {"op": "replace", "path": "/spec/template", "value": template},
                {"op": "remove", "path": "/metadata/annotations/staticpods.dev~1rollback-to"},
            ])
        );
        let _: json_patch::Patch = serde_json::from_value(patch.clone()).expect("a JSON patch");

        // Applied to a set whose template gained fields since, the result is exactly the old one.
        let mut current = serde_json::to_value(set("img:2")).unwrap();
        current["metadata"]["annotations"] =
            serde_json::json!({ANNOTATION_ROLLBACK_TO: "3", "keep": "me"});
        current["spec"]["template"]["metadata"] = serde_json::json!({"labels": {"new": "x"}});
        current["spec"]["template"]["spec"]["hostNetwork"] = serde_json::json!(true);
        let p: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(&mut current, &p).unwrap();
        assert_eq!(current["spec"]["template"], template);
        assert_eq!(
            current["metadata"]["annotations"],
            serde_json::json!({"keep": "me"})
        );

        // The annotation changed meanwhile: the patch fails as a whole.
        let mut changed = serde_json::to_value(set("img:2")).unwrap();
        changed["metadata"]["annotations"] = serde_json::json!({ANNOTATION_ROLLBACK_TO: "2"});
        let before = changed.clone();
        let p: json_patch::Patch =
            serde_json::from_value(rollback_patch(ANNOTATION_ROLLBACK_TO, "3", &template)).unwrap();
        assert!(json_patch::patch(&mut changed, &p).is_err());
        assert_eq!(changed, before);

        let drop: json_patch::Patch =
            serde_json::from_value(drop_annotation_patch(ANNOTATION_ROLLBACK_TO, "2")).unwrap();
        json_patch::patch(&mut changed, &drop).unwrap();
        assert_eq!(changed["metadata"]["annotations"], serde_json::json!({}));
        assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    }
}
