//! The manifests of the revisions the node's entries name, as the agent has them. Pure: the agent
//! fetches what [`RevisionCache::missing`] lists and feeds the results in.
//!
//! NodeStaticPods entries name a StaticPodRevision instead of carrying the manifest. Revisions never
//! change (the API server rejects any change of their hash or manifest), so a revision is read once
//! by namespace and name and kept in memory while an entry names it: no watch, and a drifted file is
//! restored from memory while the API server is down. Only a revision that matches the entry naming
//! it is kept; one that does not (created by hand in the revision's place, say) is refused and read
//! again later, so replacing it fixes the node without restarting the agent. A kept revision is
//! never replaced by a later read that does not match.
//!
//! Matching means content, not only names: whoever may create StaticPodRevisions (or delete one and
//! create another of the same name) must not be able to choose what nodes run. The agent recomputes
//! the digest of every manifest it reads ([`staticpodset_api::digest`]) and keeps it only if it is
//! the entry's `digest`, which only the operator writes. An entry without a digest (handed out by an
//! operator from before digests, or for a revision object that never had one) is checked against
//! its 10-character `revision` only: 40 bits, which a forger with ~2^40 hashes to spare can match.
//! That gap closes as the operator hands every node a revision it renders itself.
//!
//! An entry whose revision the agent does not have is *unavailable*: nothing is written or removed
//! for its set, whatever is on disk stays, and the report says why (phase Pending, or Error when the
//! revision was read and refused). A failed read is retried with an exponential backoff (5 s
//! doubling to 5 min, spread a little per node), so that a revision missing cluster-wide does not
//! turn thousands of agents into a steady stream of reads.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use staticpodset_api::digest::{manifest_digest, REVISION_LEN};
use staticpodset_api::keys::ANNOTATION_REVISION;
use staticpodset_api::{AssignedPod, StaticPodRevision};

use crate::dir_plan::{Assignment, Unavailable};
use crate::last_known::SavedRevision;

/// A StaticPodRevision by `(namespace, name)`.
pub use crate::last_known::RevisionKey;

/// The revision an entry names: `(set namespace, revision name)`.
pub fn key_of(entry: &AssignedPod) -> RevisionKey {
    (entry.set_namespace.clone(), entry.revision_name.clone())
}

/// A verified revision: its hash, the digest of its manifest (computed here, not taken from the
/// object) and its manifest.
#[derive(Debug, Clone, PartialEq)]
struct Cached {
    hash: String,
    digest: String,
    manifest: Arc<Value>,
}

impl Cached {
    /// Whether this is what `entry` asks for: its revision and, when the entry carries one, its
    /// digest.
    fn serves(&self, entry: &AssignedPod) -> bool {
        self.hash == entry.revision && entry.digest.as_ref().is_none_or(|d| *d == self.digest)
    }
}

/// The first retry after a failed read; it doubles with every further failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between reads of a revision that keeps failing.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why the last read of a revision did not yield a usable one, and when to read it again.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    problem: Unavailable,
    attempts: u32,
    retry_at: Instant,
}

/// Why a read of a revision yielded nothing the agent keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The revision does not exist (yet), or the read failed; the text says which.
    #[error("{0}")]
    Unavailable(String),
    /// The revision was read and is not what its entries ask for.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl ReadError {
    /// What the entries naming the revision report meanwhile.
    fn problem(&self) -> Unavailable {
        match self {
            ReadError::Unavailable(m) => Unavailable::Waiting(m.clone()),
            ReadError::Refused(r) => Unavailable::Refused(r.to_string()),
        }
    }
}

/// Why a StaticPodRevision the agent read is not what the entry naming it asks for. Such a revision
/// is never written or served. Each message names the revision object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It is a revision of another set.
    #[error(
        "StaticPodRevision {revision} belongs to set {owner}, not to {set}; nothing is written"
    )]
    OtherSet {
        /// `<namespace>/<name>` of the revision object.
        revision: String,
        /// `<namespace>/<set name>` the revision says it belongs to.
        owner: String,
        /// `<namespace>/<name>` of the set the entry is for.
        set: String,
    },
    /// Its `spec.hash` is not the entry's revision.
    #[error(
        "StaticPodRevision {revision} has hash {hash}, but the entry asks for revision {asked}; \
         nothing is written"
    )]
    OtherHash {
        /// `<namespace>/<name>` of the revision object.
        revision: String,
        /// Its `spec.hash`.
        hash: String,
        /// The entry's revision.
        asked: String,
    },
    /// Its manifest's content is not the one the operator rendered: its digest (or, for an
    /// entry without a digest, its revision) is another.
    #[error(
        "the manifest of StaticPodRevision {revision} has {what} {actual}, but the operator asked \
         for {expected}: it is not the pod the operator rendered, so it is refused; nothing is \
         written or served and the node keeps what it runs"
    )]
    Digest {
        /// `<namespace>/<name>` of the revision object.
        revision: String,
        /// `digest` (the entry's full digest was compared) or `revision` (the entry has no digest,
        /// so only the 10-character revision was).
        what: &'static str,
        /// What the entry asks for.
        expected: String,
        /// What the manifest hashes to.
        actual: String,
    },
    /// Its manifest lacks the revision annotation the mirror pod would show, or has another.
    #[error(
        "the manifest of StaticPodRevision {revision} does not carry the annotation \
         {annotation}: {asked}; nothing is written",
        annotation = ANNOTATION_REVISION
    )]
    Unstamped {
        /// `<namespace>/<name>` of the revision object.
        revision: String,
        /// The entry's revision.
        asked: String,
    },
}

impl Refusal {
    /// Whether the manifest's content is the problem (not its metadata).
    pub fn is_digest_mismatch(&self) -> bool {
        matches!(self, Refusal::Digest { .. })
    }
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
    ///
    /// A kept revision is read again only when an entry asks for its revision with another digest
    /// (the operator now knows the full digest of a revision it first handed out without one, say).
    pub fn missing(&self, entries: &[AssignedPod], now: Instant) -> BTreeSet<RevisionKey> {
        entries
            .iter()
            .filter(|e| !e.revision_name.is_empty())
            .filter(|e| {
                self.cached
                    .get(&key_of(e))
                    .is_none_or(|c| c.hash == e.revision && !c.serves(e))
            })
            .map(key_of)
            .filter(|k| self.failures.get(k).is_none_or(|f| f.retry_at <= now))
            .collect()
    }

    /// When the next failed read is due again, if any failed.
    pub fn next_retry(&self) -> Option<Instant> {
        self.failures.values().map(|f| f.retry_at).min()
    }

    /// Takes the result of reading revision `key`: `Ok(None)` when it does not exist, `Err` with
    /// the error's text when the read failed. The revision is kept only if it matches every entry
    /// of `entries` that names it ([`verify`]); otherwise the error says why not, and what was kept
    /// before stays as it was.
    pub fn record(
        &mut self,
        key: RevisionKey,
        result: Result<Option<StaticPodRevision>, String>,
        entries: &[AssignedPod],
        now: Instant,
    ) -> Result<(), ReadError> {
        let (namespace, name) = &key;
        let outcome = match result {
            Ok(Some(revision)) => {
                let digest = manifest_digest(&revision.spec.manifest);
                entries
                    .iter()
                    .filter(|e| key_of(e) == key)
                    .try_for_each(|e| verify_with(e, &revision, &digest))
                    .map_err(ReadError::from)
                    .map(|()| Cached {
                        hash: revision.spec.hash.clone(),
                        digest,
                        manifest: Arc::new(revision.spec.manifest),
                    })
            }
            Ok(None) => Err(ReadError::Unavailable(format!(
                "StaticPodRevision {namespace}/{name} does not exist (yet); the manifest on disk, \
                 if any, is kept"
            ))),
            Err(error) => Err(ReadError::Unavailable(format!(
                "cannot read StaticPodRevision {namespace}/{name}: {error}; the manifest on disk, \
                 if any, is kept"
            ))),
        };
        match outcome {
            Ok(cached) => {
                self.failures.remove(&key);
                self.cached.insert(key, cached);
                Ok(())
            }
            Err(error) => {
                let attempts = self
                    .failures
                    .get(&key)
                    .map_or(1, |f| f.attempts.saturating_add(1));
                let retry_at = now + retry_delay(attempts, self.spread_percent);
                self.failures.insert(
                    key,
                    Failure {
                        problem: error.problem(),
                        attempts,
                        retry_at,
                    },
                );
                Err(error)
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

    fn manifest_for(&self, entry: &AssignedPod) -> Result<Arc<Value>, Unavailable> {
        if entry.revision_name.is_empty() {
            return Err(Unavailable::Waiting(format!(
                "the entry names no StaticPodRevision (written by an operator from before \
                 revisions?); the manifest on disk, if any, is kept until it names revision {}",
                entry.revision
            )));
        }
        let key = key_of(entry);
        let cached = self.cached.get(&key);
        match cached {
            Some(cached) if cached.serves(entry) => return Ok(cached.manifest.clone()),
            Some(cached) if cached.hash != entry.revision => {
                return Err(Unavailable::Waiting(format!(
                    "StaticPodRevision {}/{} is revision {}, but the entry asks for revision {}; \
                     nothing is written",
                    key.0, key.1, cached.hash, entry.revision
                )))
            }
            _ => {}
        }
        if let Some(failure) = self.failures.get(&key) {
            return Err(failure.problem.clone());
        }
        Err(match (cached, &entry.digest) {
            // Kept for another entry's digest, and not read again yet.
            (Some(cached), Some(expected)) => Unavailable::Refused(
                Refusal::Digest {
                    revision: format!("{}/{}", key.0, key.1),
                    what: "digest",
                    expected: expected.clone(),
                    actual: cached.digest.clone(),
                }
                .to_string(),
            ),
            _ => Unavailable::Waiting(format!(
                "waiting to read StaticPodRevision {}/{}; the manifest on disk, if any, is kept",
                key.0, key.1
            )),
        })
    }

    /// Forgets revisions no entry names any more, so memory follows what the node runs.
    pub fn retain(&mut self, entries: &[AssignedPod]) {
        let named: BTreeSet<RevisionKey> = entries.iter().map(key_of).collect();
        self.cached.retain(|k, _| named.contains(k));
        self.failures.retain(|k, _| named.contains(k));
    }

    /// The kept revisions `entries` name and that serve them, for the node's saved state.
    pub fn saved(&self, entries: &[AssignedPod]) -> Vec<SavedRevision> {
        let mut saved: BTreeMap<RevisionKey, SavedRevision> = BTreeMap::new();
        for entry in entries {
            let key = key_of(entry);
            match self.cached.get(&key) {
                Some(cached) if cached.serves(entry) => {
                    saved.entry(key.clone()).or_insert_with(|| SavedRevision {
                        namespace: key.0,
                        name: key.1,
                        set_name: entry.set_name.clone(),
                        hash: cached.hash.clone(),
                        digest: cached.digest.clone(),
                        manifest: Value::clone(&cached.manifest),
                    });
                }
                _ => {}
            }
        }
        saved.into_values().collect()
    }

    /// Takes in revisions from the node's saved state, verified against `entries` exactly as a
    /// read from the API server is; returns the refusals.
    pub fn restore(
        &mut self,
        saved: &[SavedRevision],
        entries: &[AssignedPod],
        now: Instant,
    ) -> Vec<ReadError> {
        saved
            .iter()
            .filter_map(|r| {
                self.record(r.key(), Ok(Some(r.to_object())), entries, now)
                    .err()
            })
            .collect()
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

/// Whether `revision` is what `entry` asks for: the same set, the entry's revision hash, the
/// content the operator rendered (the manifest's digest is the entry's `digest`, or, for an entry
/// without one, begins with the entry's revision), and a manifest stamped with that revision (the
/// stamp is what the mirror pod shows, and the one part of the manifest the digest leaves out).
pub fn verify(entry: &AssignedPod, revision: &StaticPodRevision) -> Result<(), Refusal> {
    verify_with(entry, revision, &manifest_digest(&revision.spec.manifest))
}

/// [`verify`] with the manifest's digest already computed.
fn verify_with(
    entry: &AssignedPod,
    revision: &StaticPodRevision,
    digest: &str,
) -> Result<(), Refusal> {
    let namespace = revision.metadata.namespace.as_deref().unwrap_or_default();
    let name = revision.metadata.name.as_deref().unwrap_or_default();
    let at = format!("{namespace}/{name}");
    if namespace != entry.set_namespace || revision.spec.set_name != entry.set_name {
        return Err(Refusal::OtherSet {
            revision: at,
            owner: format!("{namespace}/{}", revision.spec.set_name),
            set: format!("{}/{}", entry.set_namespace, entry.set_name),
        });
    }
    if revision.spec.hash != entry.revision {
        return Err(Refusal::OtherHash {
            revision: at,
            hash: revision.spec.hash.clone(),
            asked: entry.revision.clone(),
        });
    }
    let content = match &entry.digest {
        Some(expected) if digest != expected => Err(("digest", expected.clone(), digest)),
        Some(_) => Ok(()),
        None => {
            let actual = digest.get(..REVISION_LEN).unwrap_or(digest);
            if actual == entry.revision {
                Ok(())
            } else {
                Err(("revision", entry.revision.clone(), actual))
            }
        }
    };
    if let Err((what, expected, actual)) = content {
        return Err(Refusal::Digest {
            revision: at,
            what,
            expected,
            actual: actual.to_string(),
        });
    }
    let stamped = revision
        .spec
        .manifest
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANNOTATION_REVISION))
        .and_then(Value::as_str);
    if stamped != Some(entry.revision.as_str()) {
        return Err(Refusal::Unstamped {
            revision: at,
            asked: entry.revision.clone(),
        });
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

    /// The entry for `set` at `rev`, with the digest of [`manifest`]`(set, rev)` as the operator
    /// would hand it out.
    pub(crate) fn entry(set: &str, rev: &str) -> AssignedPod {
        AssignedPod {
            set_namespace: "ns".into(),
            set_name: set.into(),
            revision: rev.into(),
            revision_name: format!("{set}-{rev}"),
            digest: Some(manifest_digest(&manifest(set, rev))),
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

    /// The StaticPodRevision `<set>-<rev>` holding [`manifest`]`(set, rev)`.
    pub(crate) fn revision(set: &str, rev: &str) -> StaticPodRevision {
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
            .message()
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
        let a = resolved[0].manifest.as_ref().unwrap_err().message();
        assert!(a.contains("ns/a-r1 does not exist"), "{a}");
        assert!(a.contains("kept"), "{a}");
        let b = resolved[1].manifest.as_ref().unwrap_err().message();
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
            let message = cache.resolve(&entries)[0]
                .manifest
                .clone()
                .unwrap_err()
                .message()
                .to_string();
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
        let message = cache.resolve(&[edited])[0]
            .manifest
            .clone()
            .unwrap_err()
            .message()
            .to_string();
        assert!(message.contains("asks for revision r2"), "{message}");
    }

    #[test]
    fn an_entry_without_a_revision_name_is_unavailable_and_not_read() {
        let mut old = entry("a", "r1");
        old.revision_name = String::new();
        let cache = RevisionCache::default();
        assert!(cache.missing(std::slice::from_ref(&old), now()).is_empty());
        let message = cache.resolve(&[old])[0]
            .manifest
            .clone()
            .unwrap_err()
            .message()
            .to_string();
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

    /// `revision(set, rev)` with `containers` instead: another pod under the same name and hash,
    /// as someone who deleted the revision and created their own would make it.
    pub(crate) fn forged(set: &str, rev: &str, containers: Value) -> StaticPodRevision {
        let mut r = revision(set, rev);
        r.spec.manifest = manifest_with(set, rev, containers);
        r
    }

    fn evil() -> Value {
        json!([{"name": "c", "image": "registry.example/evil:1"}])
    }

    /// A manifest of set `set` whose revision is really its hash, and that revision.
    fn real(set: &str) -> (Value, String) {
        let rev = staticpodset_api::digest::revision_of(&manifest(set, "unstamped"));
        (manifest(set, &rev), rev)
    }

    #[test]
    fn verification_checks_the_full_digest_when_the_entry_has_one() {
        // Match: the content is the operator's, whatever the revision's name says.
        assert_eq!(verify(&entry("a", "r1"), &revision("a", "r1")), Ok(()));
        // Mismatch: same name, hash and stamp, other content.
        let refusal = verify(&entry("a", "r1"), &forged("a", "r1", evil())).unwrap_err();
        assert!(refusal.is_digest_mismatch(), "{refusal:?}");
        let message = refusal.to_string();
        let expected = entry("a", "r1").digest.unwrap();
        let actual = manifest_digest(&manifest_with("a", "r1", evil()));
        for part in [
            "StaticPodRevision ns/a-r1",
            &expected,
            &actual,
            "nothing is written",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        // The digest leaves the stamp out, so the stamp is checked on its own.
        let mut restamped = revision("a", "r1");
        restamped.spec.manifest["metadata"]["annotations"][ANNOTATION_REVISION] = json!("r0");
        assert!(matches!(
            verify(&entry("a", "r1"), &restamped),
            Err(Refusal::Unstamped { .. })
        ));
    }

    #[test]
    fn an_entry_without_a_digest_checks_the_revision_only() {
        let (good, rev) = real("a");
        let mut old_entry = entry("a", &rev);
        old_entry.digest = None;
        let mut object = revision("a", &rev);
        object.spec.manifest = good;
        assert_eq!(verify(&old_entry, &object), Ok(()));
        // Another content hashes to another revision: refused, naming both revisions.
        let mut other = object.clone();
        other.spec.manifest = manifest_with("a", &rev, evil());
        let refusal = verify(&old_entry, &other).unwrap_err();
        assert!(refusal.is_digest_mismatch(), "{refusal:?}");
        let message = refusal.to_string();
        let actual = staticpodset_api::digest::revision_of(&other.spec.manifest);
        assert!(
            message.contains(&format!(
                "has revision {actual}, but the operator asked for {rev}"
            )),
            "{message}"
        );
        // The fake revisions of the other tests are no hashes: without a digest, nothing matches.
        let mut fake = entry("a", "r1");
        fake.digest = None;
        assert!(verify(&fake, &revision("a", "r1")).is_err());
    }

    #[test]
    fn a_forged_revision_is_refused_and_not_kept() {
        let entries = vec![entry("a", "r1")];
        let mut cache = RevisionCache::default();
        let error = cache
            .record(
                key("a", "r1"),
                Ok(Some(forged("a", "r1", evil()))),
                &entries,
                now(),
            )
            .unwrap_err();
        assert!(
            matches!(&error, ReadError::Refused(r) if r.is_digest_mismatch()),
            "{error:?}"
        );
        assert!(cache.is_empty());
        let problem = cache.resolve(&entries)[0].manifest.clone().unwrap_err();
        assert!(matches!(problem, Unavailable::Refused(_)), "{problem:?}");
        assert_eq!(problem.phase(), staticpodset_api::ManifestPhase::Error);
        assert!(problem.message().contains("ns/a-r1"), "{problem}");
        // Read again later: the operator's own revision, once restored, is taken.
        assert_eq!(cache.missing(&entries, now() + FIRST_RETRY).len(), 1);
        assert_eq!(
            cache.record(
                key("a", "r1"),
                Ok(Some(revision("a", "r1"))),
                &entries,
                now()
            ),
            Ok(())
        );
        assert!(cache.resolve(&entries)[0].manifest.is_ok());
    }

    #[test]
    fn a_kept_revision_is_never_replaced_by_a_forged_one() {
        let entries = vec![entry("a", "r1")];
        let mut cache = RevisionCache::default();
        assert_eq!(
            cache.record(
                key("a", "r1"),
                Ok(Some(revision("a", "r1"))),
                &entries,
                now()
            ),
            Ok(())
        );
        // Kept: not read again, so a forgery made since is never even seen.
        assert!(cache.missing(&entries, now()).is_empty());
        // And were it read, it is refused and what was kept stays.
        assert!(cache
            .record(
                key("a", "r1"),
                Ok(Some(forged("a", "r1", evil()))),
                &entries,
                now()
            )
            .is_err());
        assert_eq!(
            *cache.resolve(&entries)[0].manifest.clone().unwrap(),
            manifest("a", "r1")
        );
    }

    #[test]
    fn a_kept_revision_is_read_again_when_the_entry_asks_for_another_digest() {
        let mut cache = RevisionCache::default();
        // Kept under an entry without a digest (revision check only)...
        let (good, rev) = real("a");
        let mut object = revision("a", &rev);
        object.spec.manifest = good.clone();
        let mut old_entry = entry("a", &rev);
        old_entry.digest = None;
        assert_eq!(
            cache.record(
                key("a", &rev),
                Ok(Some(object.clone())),
                &[old_entry.clone()],
                now()
            ),
            Ok(())
        );
        // ...the same entry with the digest of what is kept needs nothing more.
        let mut with_digest = old_entry.clone();
        with_digest.digest = Some(manifest_digest(&good));
        assert!(cache
            .missing(std::slice::from_ref(&with_digest), now())
            .is_empty());
        assert!(cache.resolve(std::slice::from_ref(&with_digest))[0]
            .manifest
            .is_ok());
        // An entry asking for another digest does not get what is kept, and it is read again.
        let mut other = old_entry.clone();
        other.digest = Some("0".repeat(64));
        let entries = vec![other];
        assert_eq!(cache.missing(&entries, now()).len(), 1);
        let problem = cache.resolve(&entries)[0].manifest.clone().unwrap_err();
        assert!(matches!(problem, Unavailable::Refused(_)), "{problem:?}");
        assert!(cache
            .record(key("a", &rev), Ok(Some(object)), &entries, now())
            .is_err());
        let problem = cache.resolve(&entries)[0].manifest.clone().unwrap_err();
        assert!(problem.message().contains(&"0".repeat(64)), "{problem}");
    }
}
