//! The manifests of the revisions the node's entries name, as the agent has them. Pure: the agent
//! fetches what [`RevisionCache::missing`] lists and feeds the results in.
//!
//! NodeStaticPods entries name a StaticPodRevision instead of carrying the manifest. Revisions never
//! change (the API server rejects any change of their hash or manifest), so a revision is read once
//! by namespace and name and kept in memory while an entry names it: no watch, and a drifted file is
//! restored from memory while the API server is down. Only a revision that matches the entry naming
//! it is kept; one that does not (created by hand in the revision's place, say) is read again on the
//! next sync, so replacing it fixes the node without restarting the agent.
//!
//! An entry whose revision the agent does not have is *unavailable*: nothing is written or removed
//! for its set, whatever is on disk stays, and the report says why (phase Pending).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;
use staticpodset_api::keys::ANNOTATION_REVISION;
use staticpodset_api::{AssignedPod, StaticPodRevision};

use crate::plan::Assignment;

/// A StaticPodRevision by `(namespace, name)`.
pub type RevisionKey = (String, String);

/// The revision an entry names: `(set namespace, revision name)`.
pub fn key_of(entry: &AssignedPod) -> RevisionKey {
    (entry.set_namespace.clone(), entry.revision_name.clone())
}

/// A verified revision: its hash and its manifest.
#[derive(Debug, Clone, PartialEq)]
struct Cached {
    hash: String,
    manifest: Arc<Value>,
}

/// Revisions read so far and still named by an entry.
#[derive(Debug, Default)]
pub struct RevisionCache {
    cached: BTreeMap<RevisionKey, Cached>,
    /// Why the last read of a revision did not yield a usable one; cleared when one is kept.
    failures: BTreeMap<RevisionKey, String>,
}

impl RevisionCache {
    /// The revisions `entries` name that are not kept yet: what to read from the API server.
    /// Entries without a revision name are left out (there is nothing to read).
    pub fn missing(&self, entries: &[AssignedPod]) -> BTreeSet<RevisionKey> {
        entries
            .iter()
            .filter(|e| !e.revision_name.is_empty())
            .map(key_of)
            .filter(|k| !self.cached.contains_key(k))
            .collect()
    }

    /// Takes the result of reading revision `key`: `Ok(None)` when it does not exist, `Err` with
    /// the error's text when the read failed. The revision is kept only if it matches every entry
    /// of `entries` that names it; otherwise the returned text says why not.
    pub fn record(
        &mut self,
        key: RevisionKey,
        result: Result<Option<StaticPodRevision>, String>,
        entries: &[AssignedPod],
    ) -> Result<(), String> {
        let (namespace, name) = &key;
        let outcome = match result {
            Ok(Some(revision)) => entries
                .iter()
                .filter(|e| key_of(e) == key)
                .map(|e| verify(e, &revision))
                .collect::<Result<Vec<()>, String>>()
                .map(|_| Cached {
                    hash: revision.spec.hash.clone(),
                    manifest: Arc::new(revision.spec.manifest),
                }),
            Ok(None) => Err(format!(
                "StaticPodRevision {namespace}/{name} does not exist (yet); the manifest on disk, \
                 if any, is kept"
            )),
            Err(error) => Err(format!(
                "cannot read StaticPodRevision {namespace}/{name}: {error}; the manifest on disk, \
                 if any, is kept"
            )),
        };
        match outcome {
            Ok(cached) => {
                self.failures.remove(&key);
                self.cached.insert(key, cached);
                Ok(())
            }
            Err(message) => {
                self.failures.insert(key, message.clone());
                Err(message)
            }
        }
    }

    /// Pairs every entry with its revision's manifest, or with why the agent does not have it.
    pub fn resolve(&self, entries: &[AssignedPod]) -> Vec<Assignment> {
        entries
            .iter()
            .map(|entry| Assignment {
                entry: entry.clone(),
                manifest: self.manifest_for(entry),
            })
            .collect()
    }

    fn manifest_for(&self, entry: &AssignedPod) -> Result<Arc<Value>, String> {
        if entry.revision_name.is_empty() {
            return Err(format!(
                "the entry names no StaticPodRevision (written by an operator from before \
                 revisions?); the manifest on disk, if any, is kept until it names revision {}",
                entry.revision
            ));
        }
        let key = key_of(entry);
        match self.cached.get(&key) {
            Some(cached) if cached.hash == entry.revision => Ok(cached.manifest.clone()),
            Some(cached) => Err(format!(
                "StaticPodRevision {}/{} is revision {}, but the entry asks for revision {}; \
                 nothing is written",
                key.0, key.1, cached.hash, entry.revision
            )),
            None => Err(self.failures.get(&key).cloned().unwrap_or_else(|| {
                format!(
                    "waiting to read StaticPodRevision {}/{}; the manifest on disk, if any, is kept",
                    key.0, key.1
                )
            })),
        }
    }

    /// Forgets revisions no entry names any more, so memory follows what the node runs.
    pub fn retain(&mut self, entries: &[AssignedPod]) {
        let named: BTreeSet<RevisionKey> = entries.iter().map(key_of).collect();
        self.cached.retain(|k, _| named.contains(k));
        self.failures.retain(|k, _| named.contains(k));
    }

    /// How many revisions are kept.
    pub fn len(&self) -> usize {
        self.cached.len()
    }

    /// Whether no revision is kept.
    pub fn is_empty(&self) -> bool {
        self.cached.is_empty()
    }
}

/// Whether `revision` is what `entry` asks for: the same set, the entry's revision hash, and a
/// manifest stamped with that hash (the stamp is what the mirror pod shows).
pub fn verify(entry: &AssignedPod, revision: &StaticPodRevision) -> Result<(), String> {
    let namespace = revision.metadata.namespace.as_deref().unwrap_or_default();
    let name = revision.metadata.name.as_deref().unwrap_or_default();
    let at = format!("StaticPodRevision {namespace}/{name}");
    if namespace != entry.set_namespace || revision.spec.set_name != entry.set_name {
        return Err(format!(
            "{at} belongs to set {namespace}/{}, not to {}/{}; nothing is written",
            revision.spec.set_name, entry.set_namespace, entry.set_name
        ));
    }
    if revision.spec.hash != entry.revision {
        return Err(format!(
            "{at} has hash {}, but the entry asks for revision {}; nothing is written",
            revision.spec.hash, entry.revision
        ));
    }
    let stamped = revision
        .spec
        .manifest
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_REVISION))
        .and_then(Value::as_str);
    if stamped != Some(entry.revision.as_str()) {
        return Err(format!(
            "the manifest of {at} does not carry the annotation {ANNOTATION_REVISION}: {}; \
             nothing is written",
            entry.revision
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;
    use staticpodset_api::keys::{manifest_file_name, ANNOTATION_SET};
    use staticpodset_api::StaticPodRevisionSpec;

    pub(crate) fn entry(set: &str, rev: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: set.into(),
            revision: rev.into(),
            revision_name: format!("{set}-{rev}"),
            file_name: manifest_file_name("ns", set),
        }
    }

    pub(crate) fn manifest(set: &str, rev: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": set,
                "namespace": "ns",
                "annotations": {ANNOTATION_SET: format!("ns/{set}"), ANNOTATION_REVISION: rev},
            },
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
        })
    }

    fn revision(set: &str, rev: &str) -> StaticPodRevision {
        StaticPodRevision {
            metadata: ObjectMeta {
                name: Some(format!("{set}-{rev}")),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: StaticPodRevisionSpec {
                set_name: set.into(),
                revision: 1,
                hash: rev.into(),
                template: json!({}),
                manifest: manifest(set, rev),
            },
        }
    }

    fn key(set: &str, rev: &str) -> RevisionKey {
        ("ns".into(), format!("{set}-{rev}"))
    }

    #[test]
    fn a_read_revision_is_kept_and_resolves_its_entries() {
        let entries = vec![entry("a", "r1"), entry("b", "r1")];
        let mut cache = RevisionCache::default();
        assert_eq!(
            cache.missing(&entries),
            BTreeSet::from([key("a", "r1"), key("b", "r1")])
        );
        assert_eq!(
            cache.record(key("a", "r1"), Ok(Some(revision("a", "r1"))), &entries),
            Ok(())
        );
        assert_eq!(cache.missing(&entries), BTreeSet::from([key("b", "r1")]));
        let resolved = cache.resolve(&entries);
        assert_eq!(
            *resolved[0].manifest.as_ref().unwrap().as_ref(),
            manifest("a", "r1")
        );
        assert!(resolved[1]
            .manifest
            .as_ref()
            .unwrap_err()
            .contains("waiting to read StaticPodRevision ns/b-r1"));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_missing_revision_or_a_failed_read_leaves_the_entry_unavailable() {
        let entries = vec![entry("a", "r1"), entry("b", "r1")];
        let mut cache = RevisionCache::default();
        assert!(cache.record(key("a", "r1"), Ok(None), &entries).is_err());
        assert!(cache
            .record(key("b", "r1"), Err("connection refused".into()), &entries)
            .is_err());
        let resolved = cache.resolve(&entries);
        let a = resolved[0].manifest.as_ref().unwrap_err();
        assert!(a.contains("ns/a-r1 does not exist"), "{a}");
        assert!(a.contains("kept"), "{a}");
        let b = resolved[1].manifest.as_ref().unwrap_err();
        assert!(b.contains("connection refused"), "{b}");
        // Nothing is kept, so both are read again on the next sync.
        assert_eq!(cache.missing(&entries).len(), 2);
        assert!(cache.is_empty());
        // A later successful read clears the failure.
        assert!(cache
            .record(key("a", "r1"), Ok(Some(revision("a", "r1"))), &entries)
            .is_ok());
        assert!(cache.resolve(&entries)[0].manifest.is_ok());
    }

    #[test]
    fn a_revision_that_does_not_match_its_entry_is_not_kept() {
        let entries = vec![entry("a", "r1")];
        let cases: Vec<(&str, StaticPodRevision)> = vec![
            ("has hash r2", {
                let mut r = revision("a", "r1");
                r.spec.hash = "r2".into();
                r
            }),
            ("belongs to set ns/b", {
                let mut r = revision("a", "r1");
                r.spec.set_name = "b".into();
                r
            }),
            ("does not carry the annotation", {
                let mut r = revision("a", "r1");
                r.spec.manifest = manifest("a", "r0");
                r
            }),
        ];
        for (want, bad) in cases {
            let mut cache = RevisionCache::default();
            assert!(cache
                .record(key("a", "r1"), Ok(Some(bad)), &entries)
                .is_err());
            let message = cache.resolve(&entries)[0].manifest.clone().unwrap_err();
            assert!(message.contains(want), "{want}: {message}");
            assert!(message.contains("nothing is written"), "{message}");
            assert!(cache.is_empty(), "{want}");
            assert_eq!(cache.missing(&entries).len(), 1, "read again: {want}");
        }
    }

    #[test]
    fn an_entry_naming_a_kept_revision_with_another_hash_is_unavailable() {
        let mut cache = RevisionCache::default();
        let good = vec![entry("a", "r1")];
        assert!(cache
            .record(key("a", "r1"), Ok(Some(revision("a", "r1"))), &good)
            .is_ok());
        // Hand-edited entry: same revision name, another hash.
        let mut edited = entry("a", "r2");
        edited.revision_name = "a-r1".into();
        let message = cache.resolve(&[edited])[0].manifest.clone().unwrap_err();
        assert!(message.contains("asks for revision r2"), "{message}");
    }

    #[test]
    fn an_entry_without_a_revision_name_is_unavailable_and_not_read() {
        let mut old = entry("a", "r1");
        old.revision_name = String::new();
        let cache = RevisionCache::default();
        assert!(cache.missing(std::slice::from_ref(&old)).is_empty());
        let message = cache.resolve(&[old])[0].manifest.clone().unwrap_err();
        assert!(message.contains("names no StaticPodRevision"), "{message}");
    }

    #[test]
    fn revisions_no_entry_names_are_forgotten() {
        let both = vec![entry("a", "r1"), entry("a", "r2")];
        let mut cache = RevisionCache::default();
        for rev in ["r1", "r2"] {
            assert!(cache
                .record(key("a", rev), Ok(Some(revision("a", rev))), &both)
                .is_ok());
        }
        assert_eq!(cache.len(), 2);
        cache.retain(&[entry("a", "r2")]);
        assert_eq!(cache.len(), 1);
        assert!(cache.missing(&[entry("a", "r2")]).is_empty());
        assert_eq!(cache.missing(&[entry("a", "r1")]).len(), 1);
    }
}
