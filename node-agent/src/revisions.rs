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
//! for its set, whatever is on disk stays, and the report says why (phase Pending). A failed read is
//! retried with an exponential backoff (5 s doubling to 5 min, spread a little per node), so that a
//! revision missing cluster-wide does not turn thousands of agents into a steady stream of reads.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use staticpodset_api::keys::ANNOTATION_REVISION;
use staticpodset_api::{AssignedPod, StaticPodRevision};

use crate::dir_plan::Assignment;

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

/// The first retry after a failed read; it doubles with every further failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between reads of a revision that keeps failing.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why the last read of a revision did not yield a usable one, and when to read it again.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    message: String,
    attempts: u32,
    retry_at: Instant,
}

/// Revisions read so far and still named by an entry.
#[derive(Debug, Default)]
pub struct RevisionCache {
    cached: BTreeMap<RevisionKey, Cached>,
    /// Cleared when a read yields a usable revision.
    failures: BTreeMap<RevisionKey, Failure>,
    /// Spreads retries of different nodes apart: 0 to 25 % more per delay.
    spread_percent: u32,
}

impl RevisionCache {
    /// A cache for the agent of node `node`, whose retries are spread by a hash of its name.
    pub fn for_node(node: &str) -> Self {
        let mut h = DefaultHasher::new();
        node.hash(&mut h);
        Self {
            spread_percent: u32::try_from(h.finish() % 26).unwrap_or(0),
            ..Self::default()
        }
    }

    /// The revisions `entries` name that are not kept yet and are due for a read at `now`: what
    /// to read from the API server. Entries without a revision name are left out (there is
    /// nothing to read).
    pub fn missing(&self, entries: &[AssignedPod], now: Instant) -> BTreeSet<RevisionKey> {
        entries
            .iter()
            .filter(|e| !e.revision_name.is_empty())
            .map(key_of)
            .filter(|k| !self.cached.contains_key(k))
            .filter(|k| self.failures.get(k).is_none_or(|f| f.retry_at <= now))
            .collect()
    }

    /// When the next failed read is due again, if any failed.
    pub fn next_retry(&self) -> Option<Instant> {
        self.failures.values().map(|f| f.retry_at).min()
    }

    /// Takes the result of reading revision `key`: `Ok(None)` when it does not exist, `Err` with
    /// the error's text when the read failed. The revision is kept only if it matches every entry
    /// of `entries` that names it; otherwise the returned text says why not.
    pub fn record(
        &mut self,
        key: RevisionKey,
        result: Result<Option<StaticPodRevision>, String>,
        entries: &[AssignedPod],
        now: Instant,
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
                let attempts = self
                    .failures
                    .get(&key)
                    .map_or(1, |f| f.attempts.saturating_add(1));
                let retry_at = now + retry_delay(attempts, self.spread_percent);
                self.failures.insert(
                    key,
                    Failure {
                        message: message.clone(),
                        attempts,
                        retry_at,
                    },
                );
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
            None => Err(self.failures.get(&key).map(|f| f.message.clone()).unwrap_or_else(|| {
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

/// The wait before read number `attempts + 1` of a revision: [`FIRST_RETRY`] doubling per failure up
/// to [`MAX_RETRY`], then `spread_percent` more.
pub fn retry_delay(attempts: u32, spread_percent: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    let base = FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY);
    base + base * spread_percent.min(100) / 100
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
            ..Default::default()
        }
    }

    pub(crate) fn manifest(set: &str, rev: &str) -> Value {
        manifest_with(
            set,
            rev,
            json!([{"name": "c", "image": "registry.k8s.io/pause:3.10"}]),
        )
    }

    /// A revision's manifest with the given containers.
    pub(crate) fn manifest_with(set: &str, rev: &str, containers: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": set,
                "namespace": "ns",
                "annotations": {ANNOTATION_SET: format!("ns/{set}"), ANNOTATION_REVISION: rev},
            },
            "spec": {"containers": containers},
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
                digest: None,
            },
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn key(set: &str, rev: &str) -> RevisionKey {
        ("ns".into(), format!("{set}-{rev}"))
    }

    #[test]
    fn a_read_revision_is_kept_and_resolves_its_entries() {
        let entries = vec![entry("a", "r1"), entry("b", "r1")];
        let mut cache = RevisionCache::default();
        assert_eq!(
            cache.missing(&entries, now()),
            BTreeSet::from([key("a", "r1"), key("b", "r1")])
        );
        assert_eq!(
            cache.record(
                key("a", "r1"),
                Ok(Some(revision("a", "r1"))),
                &entries,
                now()
            ),
            Ok(())
        );
        assert_eq!(
            cache.missing(&entries, now()),
            BTreeSet::from([key("b", "r1")])
        );
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
        assert!(cache
            .record(key("a", "r1"), Ok(None), &entries, now())
            .is_err());
        assert!(cache
            .record(
                key("b", "r1"),
                Err("connection refused".into()),
                &entries,
                now()
            )
            .is_err());
        let resolved = cache.resolve(&entries);
        let a = resolved[0].manifest.as_ref().unwrap_err();
        assert!(a.contains("ns/a-r1 does not exist"), "{a}");
        assert!(a.contains("kept"), "{a}");
        let b = resolved[1].manifest.as_ref().unwrap_err();
        assert!(b.contains("connection refused"), "{b}");
        // Nothing is kept, so both are read again, after the first retry delay.
        assert!(cache.missing(&entries, now()).is_empty());
        let later = now() + FIRST_RETRY;
        assert_eq!(cache.missing(&entries, later).len(), 2);
        assert!(cache.next_retry().is_some_and(|t| t <= later));
        assert!(cache.is_empty());
        // A later successful read clears the failure.
        assert!(cache
            .record(
                key("a", "r1"),
                Ok(Some(revision("a", "r1"))),
                &entries,
                now()
            )
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
                .record(key("a", "r1"), Ok(Some(bad)), &entries, now())
                .is_err());
            let message = cache.resolve(&entries)[0].manifest.clone().unwrap_err();
            assert!(message.contains(want), "{want}: {message}");
            assert!(message.contains("nothing is written"), "{message}");
            assert!(cache.is_empty(), "{want}");
            assert_eq!(
                cache.missing(&entries, now() + FIRST_RETRY).len(),
                1,
                "read again: {want}"
            );
        }
    }

    #[test]
    fn an_entry_naming_a_kept_revision_with_another_hash_is_unavailable() {
        let mut cache = RevisionCache::default();
        let good = vec![entry("a", "r1")];
        assert!(cache
            .record(key("a", "r1"), Ok(Some(revision("a", "r1"))), &good, now())
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
        assert!(cache.missing(std::slice::from_ref(&old), now()).is_empty());
        let message = cache.resolve(&[old])[0].manifest.clone().unwrap_err();
        assert!(message.contains("names no StaticPodRevision"), "{message}");
    }

    #[test]
    fn revisions_no_entry_names_are_forgotten() {
        let both = vec![entry("a", "r1"), entry("a", "r2")];
        let mut cache = RevisionCache::default();
        for rev in ["r1", "r2"] {
            assert!(cache
                .record(key("a", rev), Ok(Some(revision("a", rev))), &both, now())
                .is_ok());
        }
        assert_eq!(cache.len(), 2);
        cache.retain(&[entry("a", "r2")]);
        assert_eq!(cache.len(), 1);
        assert!(cache.missing(&[entry("a", "r2")], now()).is_empty());
        assert_eq!(cache.missing(&[entry("a", "r1")], now()).len(), 1);
    }

    #[test]
    fn failed_reads_back_off_exponentially_and_reset_on_success() {
        assert_eq!(retry_delay(1, 0), Duration::from_secs(5));
        assert_eq!(retry_delay(2, 0), Duration::from_secs(10));
        assert_eq!(retry_delay(3, 0), Duration::from_secs(20));
        assert_eq!(retry_delay(7, 0), Duration::from_secs(300));
        assert_eq!(retry_delay(u32::MAX, 0), Duration::from_secs(300));
        assert_eq!(retry_delay(1, 20), Duration::from_secs(6));
        assert!(RevisionCache::for_node("node-1").spread_percent <= 25);

        let entries = vec![entry("a", "r1")];
        let mut cache = RevisionCache::default();
        let t0 = now();
        let mut t = t0;
        for attempt in 1..=3u32 {
            assert_eq!(cache.missing(&entries, t).len(), 1, "attempt {attempt}");
            assert!(cache.record(key("a", "r1"), Ok(None), &entries, t).is_err());
            let due = cache.next_retry().expect("a retry");
            assert_eq!(due - t, retry_delay(attempt, 0));
            assert!(cache
                .missing(&entries, due - Duration::from_millis(1))
                .is_empty());
            t = due;
        }
        assert!(cache
            .record(key("a", "r1"), Ok(Some(revision("a", "r1"))), &entries, t)
            .is_ok());
        assert_eq!(cache.next_retry(), None);
        // Forgotten failures do not hold up a revision named again later.
        assert!(cache
            .record(key("a", "r2"), Ok(None), &[entry("a", "r2")], t)
            .is_err());
        cache.retain(&entries);
        assert_eq!(cache.next_retry(), None);
    }
}
